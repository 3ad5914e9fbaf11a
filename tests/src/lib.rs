//! The integration-test harness: starts the real controller, agent and outpostctl programs (built in this crate
//! from the current code) on 127.0.0.1 with real mTLS certificates in a temp dir, and the real `datahub` CLI from
//! the project's venv. Waits are polls with deadlines, never sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use outpost_common::pb::admin_service_client::AdminServiceClient;
use outpost_common::tls::TlsFiles;
use tonic::transport::{Channel, Endpoint};

/// The programs under test.
#[derive(Clone, Debug)]
pub struct Bins {
    pub controller: PathBuf,
    pub agent: PathBuf,
    pub ctl: PathBuf,
}

/// The programs of this crate; expands in the test file, where cargo sets their paths.
#[macro_export]
macro_rules! bins {
    () => {
        $crate::Bins {
            controller: env!("CARGO_BIN_EXE_test-outpost-controller").into(),
            agent: env!("CARGO_BIN_EXE_test-outpost-agent").into(),
            ctl: env!("CARGO_BIN_EXE_test-outpostctl").into(),
        }
    };
}

/// How long a real `datahub ingest` run may take under a loaded test machine.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// The `datahub` CLI the tests run: `OUTPOST_TEST_DATAHUB_CLI`, else the project's `.venv` (scripts/setup-python.sh).
pub fn datahub_cli() -> PathBuf {
    let path = std::env::var_os("OUTPOST_TEST_DATAHUB_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/datahub"));
    assert!(path.exists(), "no datahub CLI at {}: run scripts/setup-python.sh (scripts/test.sh does)", path.display());
    path
}

/// A file → blackhole recipe over the example MCPs, as the JSON text of DataHub's `recipe` arg.
pub fn file_recipe() -> String {
    let path = repo_root().join("examples/sample_mcps.json");
    serde_json::json!({"source": {"type": "file", "config": {"path": path}}, "sink": {"type": "blackhole"}}).to_string()
}

/// A recipe whose `datahub ingest` exits 1: its input file does not exist.
pub fn failing_recipe() -> String {
    serde_json::json!({"source": {"type": "file", "config": {"path": "/nonexistent/outpost/missing.json"}},
                       "sink": {"type": "blackhole"}})
    .to_string()
}

/// Polls `probe` every 50 ms until it yields a value; panics naming `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running program; killed (SIGKILL) when dropped. Its output goes to a log file, printed if the test panics.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("create log file");
        command.stdout(file.try_clone().expect("clone log handle")).stderr(file).stdin(Stdio::null());
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_owned(), child, log, exited: None }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits for the program to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let name = self.name.clone();
        let status = wait_until(&format!("{name} to exit"), timeout, || {
            let status = self.child.try_wait().expect("try_wait");
            async move { status }
        })
        .await;
        self.exited = Some(status);
        status
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        kill_cli_groups(&self.log());
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("----- last lines of {} -----", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// How to start an agent.
#[derive(Clone, Copy, Debug)]
pub struct AgentSpec<'a> {
    /// Whose certificate it presents.
    pub cert_worker: &'a str,
    /// The worker ID its Hello claims.
    pub worker: &'a str,
    pub pool: &'a str,
    pub slots: u32,
    pub extra: &'a [&'a str],
    pub env: &'a [(&'a str, &'a str)],
}

/// A controller process and where it listens.
pub struct Controller {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Controller {
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// A test's world: a temp dir with a CA, the controller's and an admin's certificates, and the programs.
pub struct Cluster {
    pub bins: Bins,
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
}

impl Cluster {
    pub fn new(bins: Bins) -> Cluster {
        outpost_common::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let cluster = Cluster { bins, dir, certs };
        cluster.certs_command(&["init"]);
        cluster.certs_command(&["admin", "--name", "ops"]);
        cluster
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn certs_command(&self, args: &[&str]) {
        let output = Command::new(&self.bins.controller)
            .arg("certs")
            .args(args)
            .arg("--out")
            .arg(&self.certs)
            .output()
            .expect("run certs");
        assert!(output.status.success(), "certs {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// (certificate, key) of an agent, issued on first use.
    pub fn agent_cert(&self, worker: &str) -> (PathBuf, PathBuf) {
        let cert = self.certs.join(format!("agent-{worker}.pem"));
        if !cert.exists() {
            self.certs_command(&["agent", "--worker-id", worker]);
        }
        (cert, self.certs.join(format!("agent-{worker}.key")))
    }

    pub fn admin_tls(&self) -> TlsFiles {
        TlsFiles {
            cert: self.certs.join("admin-ops.pem"),
            key: self.certs.join("admin-ops.key"),
            ca: self.certs.join("ca.pem"),
        }
    }

    /// Starts a controller on 127.0.0.1 (port 0 unless `--listen` is in `extra`) over `db_name` in the temp dir.
    pub async fn controller(&self, db_name: &str, extra: &[&str]) -> Controller {
        let addr_file = self.path(&format!("{db_name}.addr"));
        let _ = std::fs::remove_file(&addr_file);
        let mut command = Command::new(&self.bins.controller);
        command.arg("run");
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .arg("--listen-addr-file")
            .arg(&addr_file)
            .arg("--db")
            .arg(self.path(db_name))
            .arg("--tls-cert")
            .arg(self.certs.join("controller.pem"))
            .arg("--tls-key")
            .arg(self.certs.join("controller.key"))
            .arg("--tls-ca")
            .arg(self.certs.join("ca.pem"))
            .args(extra)
            .env("RUST_LOG", "info,outpost_controller=debug")
            // AWS: static credentials, a fixed region, never instance metadata.
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        let log = self.path(&format!("controller-{db_name}-{}.log", unique()));
        let mut proc = Proc::spawn("controller", command, log);
        let addr = wait_until("the controller to listen", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&addr_file).ok();
            let exited = proc.child.try_wait().ok().flatten();
            async move {
                assert!(exited.is_none(), "the controller exited early: {exited:?}");
                text.and_then(|t| t.parse().ok())
            }
        })
        .await;
        Controller { proc, addr }
    }

    /// Starts an agent with its own certificate, serving `pool` with `slots`.
    pub fn agent(&self, controller: &Controller, worker: &str, pool: &str, slots: u32, extra: &[&str]) -> Proc {
        self.spawn_agent(controller, &AgentSpec { cert_worker: worker, worker, pool, slots, extra, env: &[] })
    }

    /// An agent with extra environment variables.
    pub fn agent_with_env(
        &self,
        controller: &Controller,
        worker: &str,
        slots: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        self.spawn_agent(controller, &AgentSpec { cert_worker: worker, worker, pool: "default", slots, extra, env })
    }

    /// Starts an agent with the certificate of `cert_worker` that claims to be `worker` in its Hello.
    pub fn agent_claiming(&self, controller: &Controller, cert_worker: &str, worker: &str) -> Proc {
        self.spawn_agent(
            controller,
            &AgentSpec { cert_worker, worker, pool: "default", slots: 1, extra: &[], env: &[] },
        )
    }

    /// Starts an agent process.
    pub fn spawn_agent(&self, controller: &Controller, spec: &AgentSpec<'_>) -> Proc {
        let AgentSpec { cert_worker, worker, pool, slots, extra, env } = *spec;
        let (cert, key) = self.agent_cert(cert_worker);
        let mut command = Command::new(&self.bins.agent);
        command
            .args(["--controller", &controller.url(), "--worker-id", worker, "--pool", pool])
            .args(["--slots", &slots.to_string()])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--tls-ca")
            .arg(self.certs.join("ca.pem"))
            .arg("--datahub-cli")
            .arg(datahub_cli())
            .arg("--work-dir")
            .arg(self.path(&format!("work-{worker}")))
            .args(["--reconnect-min", "50ms", "--reconnect-max", "1s"])
            .args(extra)
            .env("DATAHUB_TELEMETRY_ENABLED", "false")
            .env("OUTPOST_EXAMPLES", repo_root().join("examples"))
            .env("RUST_LOG", "info,outpost_agent=debug")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied());
        Proc::spawn(&format!("agent {worker}"), command, self.path(&format!("agent-{worker}-{}.log", unique())))
    }

    /// An admin client over mTLS.
    pub async fn admin(&self, controller: &Controller) -> AdminServiceClient<Channel> {
        let channel = channel(&controller.url(), &self.admin_tls()).await.expect("admin connects");
        AdminServiceClient::new(channel)
    }

    /// Runs outpostctl against the controller with the admin certificate.
    pub fn ctl(&self, controller: &Controller, args: &[&str]) -> Output {
        let tls = self.admin_tls();
        Command::new(&self.bins.ctl)
            .args(["--controller", &controller.url()])
            .arg("--tls-cert")
            .arg(tls.cert)
            .arg("--tls-key")
            .arg(tls.key)
            .arg("--tls-ca")
            .arg(tls.ca)
            .args(args)
            .output()
            .expect("run outpostctl")
    }
}

/// A TLS channel to `url` with the given client files (server name: the URL's host).
pub async fn channel(url: &str, tls: &TlsFiles) -> Result<Channel, tonic::transport::Error> {
    let material = tls.load().expect("load TLS files");
    Endpoint::from_shared(url.to_owned())?.tls_config(material.client_config("127.0.0.1"))?.connect().await
}

/// A channel that trusts the CA but presents no client certificate.
pub async fn channel_without_client_cert(url: &str, ca: &Path) -> Result<Channel, tonic::transport::Error> {
    let ca = std::fs::read(ca).expect("read CA");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("127.0.0.1");
    Endpoint::from_shared(url.to_owned())?.tls_config(tls)?.connect().await
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Opens a raw TLS connection to `addr` trusting `ca`, optionally presenting a client certificate, and returns
/// the error the server's verdict produces (a TLS alert), or "accepted" when the server took the connection.
/// Under TLS 1.3 the client finishes its handshake before the server has checked its certificate, so the
/// server's alert arrives on the first read.
pub async fn tls_verdict(addr: SocketAddr, ca: &Path, client: Option<(&Path, &Path)>) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain: Vec<_> =
                CertificateDer::pem_file_iter(cert).expect("read cert").map(|c| c.expect("cert")).collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).expect("read key"))
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp connect");
    let mut tls = match connector.connect(ServerName::try_from("127.0.0.1").expect("name"), tcp).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    // An HTTP/2 preface and SETTINGS frame: an accepting server answers with its own SETTINGS.
    if let Err(e) = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await {
        return e.to_string();
    }
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await {
        Ok(0) => "closed without an alert".to_owned(),
        Ok(_) => "accepted".to_owned(),
        Err(e) => e.to_string(),
    }
}

/// A DataHub mock-data recipe (offline) whose size sets how long the run takes: (6, 5) ≈ 7 s, (7, 5) ≈ 13 s,
/// (6, 6) ≈ 35 s of CLI time on an idle 2-core machine.
pub fn mock_recipe(fan_out: u32, hops: u32) -> String {
    serde_json::json!({
        "source": {"type": "datahub-mock-data",
                   "config": {"gen_1": {"enabled": true, "lineage_fan_out": fan_out, "lineage_hops": hops}}},
        "sink": {"type": "blackhole"}
    })
    .to_string()
}

/// Process-group ids of the `datahub` CLIs an agent started, read from its log.
pub fn cli_process_groups(agent_log: &str) -> Vec<i32> {
    agent_log
        .lines()
        .filter(|line| line.contains("datahub CLI started"))
        .filter_map(|line| line.split("pid=Some(").nth(1)?.split(')').next()?.parse().ok())
        .collect()
}

/// Live processes (not zombies) whose process group is `pgid`, from /proc.
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command name in parentheses: state, ppid, pgrp, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            found.push(pid);
        }
    }
    found
}

/// Kills whatever is left of the CLIs an agent started (an agent killed with SIGKILL leaves them running).
pub fn kill_cli_groups(agent_log: &str) {
    for pgid in cli_process_groups(agent_log) {
        // SAFETY: killpg(2) has no memory-safety preconditions.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// A hand-driven agent session (in the test process, with a real agent certificate): it says exactly what a
/// test makes it say, to reproduce agents that never ack or vanish mid-run.
pub struct Ghost {
    outbound: tokio::sync::mpsc::Sender<outpost_common::pb::AgentMessage>,
    inbound: tonic::Streaming<outpost_common::pb::ControllerMessage>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Ghost {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }
}

impl Ghost {
    /// Connects as `worker`, serving `pool` with `slots`, and grants `slots` credits.
    pub async fn connect(cluster: &Cluster, controller: &Controller, worker: &str, pool: &str, slots: u32) -> Ghost {
        use outpost_common::pb::{self, agent_message::Msg};
        let (cert, key) = cluster.agent_cert(worker);
        let tls = TlsFiles { cert, key, ca: cluster.certs.join("ca.pem") };
        let channel = channel(&controller.url(), &tls).await.expect("ghost connects");
        let (outbound, rx) = tokio::sync::mpsc::channel(16);
        let hello = pb::Hello { worker_id: worker.into(), pools: vec![pool.into()], slots, ..Default::default() };
        outbound.send(pb::AgentMessage { msg: Some(Msg::Hello(hello)) }).await.unwrap();
        let mut inbound = pb::agent_service_client::AgentServiceClient::new(channel)
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("ghost session accepted")
            .into_inner();
        let first = inbound.message().await.expect("welcome").expect("welcome");
        assert!(matches!(first.msg, Some(pb::controller_message::Msg::Welcome(_))), "{first:?}");
        outbound.send(pb::AgentMessage { msg: Some(Msg::Credit(pb::Credit { credits: slots })) }).await.unwrap();
        Ghost { outbound, inbound, heartbeat: None }
    }

    /// Like [`Ghost::connect`], but it heartbeats every 200 ms (until dropped), so its lease never expires.
    pub async fn connect_alive(
        cluster: &Cluster,
        controller: &Controller,
        worker: &str,
        pool: &str,
        slots: u32,
    ) -> Ghost {
        use outpost_common::pb::{self, agent_message::Msg};
        let mut ghost = Ghost::connect(cluster, controller, worker, pool, slots).await;
        let outbound = ghost.outbound.clone();
        ghost.heartbeat = Some(tokio::spawn(async move {
            loop {
                let beat = pb::AgentMessage { msg: Some(Msg::Heartbeat(pb::Heartbeat { attempts: vec![] })) };
                if outbound.send(beat).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
        ghost
    }

    /// The next assignment, skipping keepalives.
    pub async fn next_assign(&mut self) -> outpost_common::pb::Assign {
        use outpost_common::pb::controller_message::Msg;
        let deadline = Duration::from_secs(30);
        loop {
            let message = tokio::time::timeout(deadline, self.inbound.message())
                .await
                .expect("an assignment within 30 s")
                .expect("stream open")
                .expect("a message");
            match message.msg {
                Some(Msg::Assign(assign)) => return assign,
                Some(Msg::Keepalive(_)) => continue,
                other => panic!("unexpected message to the ghost: {other:?}"),
            }
        }
    }

    pub async fn ack(&self, assign: &outpost_common::pb::Assign) {
        use outpost_common::pb::{self, agent_message::Msg};
        let ack = pb::Ack { attempt: assign.attempt.clone() };
        self.outbound.send(pb::AgentMessage { msg: Some(Msg::Ack(ack)) }).await.unwrap();
    }
}

// Admin API helpers.

use outpost_common::pb;

/// Submits a RUN_INGEST task with `recipe` to pool `default` under execution request id `id`.
pub async fn submit(admin: &mut AdminServiceClient<Channel>, id: &str, recipe: String) -> pb::Task {
    let request = pb::SubmitTaskRequest {
        task: "RUN_INGEST".into(),
        args: std::collections::HashMap::from([("recipe".to_owned(), recipe)]),
        pool: "default".into(),
        execution_request_id: id.into(),
        source_type: String::new(),
    };
    let response = admin.submit_task(request).await.expect("submit").into_inner();
    assert!(response.created, "{id} is new");
    response.task.expect("task in response")
}

pub async fn get(admin: &mut AdminServiceClient<Channel>, id: &str) -> pb::Task {
    admin.get_task(pb::GetTaskRequest { id: id.into() }).await.expect("get task").into_inner()
}

pub fn is_terminal(state: i32) -> bool {
    use pb::TaskState::*;
    matches!(pb::TaskState::try_from(state), Ok(Succeeded | Failed | Cancelled | TimedOut | Aborted))
}

pub async fn wait_terminal(admin: &AdminServiceClient<Channel>, id: &str) -> pb::Task {
    wait_until(&format!("task {id} to finish"), RUN_TIMEOUT, || {
        let mut admin = admin.clone();
        let id = id.to_owned();
        async move {
            let task = get(&mut admin, &id).await;
            is_terminal(task.state).then_some(task)
        }
    })
    .await
}

pub async fn wait_workers(admin: &AdminServiceClient<Channel>, ready: usize) {
    wait_until(&format!("{ready} connected workers"), Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let workers = admin.list_workers(pb::ListWorkersRequest {}).await.ok()?.into_inner().workers;
            let connected = workers.iter().filter(|w| w.state == pb::WorkerState::Ready as i32).count();
            (connected == ready).then_some(())
        }
    })
    .await
}

/// Polls GetTask until `accept` holds for the task (up to a run's timeout).
pub async fn wait_task(
    admin: &AdminServiceClient<Channel>,
    id: &str,
    what: &str,
    accept: impl Fn(&pb::Task) -> bool,
) -> pb::Task {
    wait_until(&format!("task {id}: {what}"), RUN_TIMEOUT, || {
        let mut admin = admin.clone();
        let id = id.to_owned();
        let task = async move { admin.get_task(pb::GetTaskRequest { id }).await.ok().map(|r| r.into_inner()) };
        let accept = &accept;
        async move { task.await.filter(|task| accept(task)) }
    })
    .await
}

/// Command-line flags: `base` with `overrides` replacing same-named flags or added after them.
pub fn merge_flags(base: &[(&str, &str)], overrides: &[(&str, &str)]) -> Vec<String> {
    let mut flags: Vec<(&str, &str)> = base.to_vec();
    for (flag, value) in overrides {
        match flags.iter_mut().find(|(f, _)| f == flag) {
            Some(entry) => entry.1 = value,
            None => flags.push((flag, value)),
        }
    }
    flags.into_iter().flat_map(|(f, v)| [f.to_owned(), v.to_owned()]).collect()
}

/// Waits until the task runs (acknowledged) and returns the worker running it.
pub async fn wait_running(admin: &AdminServiceClient<Channel>, id: &str) -> String {
    wait_task(admin, id, "running", |t| t.state == pb::TaskState::Running as i32).await.worker_id
}

/// The GMS stand-in (tests/gms_standin.py): records every request, validates each payload with DataHub's own
/// schema classes, serves signals and inputs, fails on demand.
pub struct Gms {
    pub proc: Proc,
    pub base: String,
    http: reqwest::Client,
}

impl Cluster {
    /// Starts the stand-in; `extra` goes to its command line (e.g. `--max-payload`).
    pub async fn gms(&self, extra: &[&str]) -> Gms {
        let port_file = self.path(&format!("gms-{}.port", unique()));
        let mut command = Command::new(repo_root().join(".venv/bin/python"));
        command.arg(repo_root().join("tests/gms_standin.py")).arg("--port-file").arg(&port_file).args(extra);
        let mut proc = Proc::spawn("gms stand-in", command, self.path(&format!("gms-{}.log", unique())));
        let port: u16 = wait_until("the GMS stand-in to listen", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&port_file).ok();
            let exited = proc.child.try_wait().ok().flatten();
            async move {
                assert!(exited.is_none(), "the GMS stand-in exited early: {exited:?}");
                text.and_then(|t| t.trim().parse().ok())
            }
        })
        .await;
        outpost_common::tls::install_crypto_provider();
        Gms { proc, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
    }
}

impl Gms {
    async fn control(&self, what: &str, body: serde_json::Value) {
        let response = self.http.post(format!("{}/__control/{what}", self.base)).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "control {what}: {}", response.status());
    }

    /// Every request the stand-in saw.
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        self.http.get(format!("{}/__control/requests", self.base)).send().await.unwrap().json().await.unwrap()
    }

    /// The next `count` calls whose path contains `path` answer `status` (0 = the connection drops).
    pub async fn fail(&self, status: u16, count: u32, path: &str) {
        self.control("fail", serde_json::json!({"status": status, "count": count, "path": path})).await;
    }

    /// Ends every injected failure.
    pub async fn heal(&self) {
        self.control("clear", serde_json::json!({})).await;
    }

    pub async fn signal(&self, urn: &str) {
        self.control("signal", serde_json::json!({"urn": urn, "signal": "KILL"})).await;
    }

    pub async fn input(&self, urn: &str, input: serde_json::Value) {
        self.control("input", serde_json::json!({"urn": urn, "input": input})).await;
    }

    /// The Bearer token GMS accepts from now on (`None`: any).
    pub async fn accept_token(&self, token: Option<&str>) {
        self.control("token", serde_json::json!({"token": token})).await;
    }

    /// The `dataHubExecutionRequestResult` aspects written for `urn`, in order, with the HTTP status of each.
    pub async fn result_writes(&self, urn: &str) -> Vec<(u16, serde_json::Value)> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/aspects?action=ingestProposal")))
            .filter_map(|r| {
                let body: serde_json::Value = serde_json::from_str(r["body"].as_str()?).ok()?;
                let proposal = &body["proposal"];
                (proposal["entityUrn"] == urn).then(|| {
                    let aspect = serde_json::from_str(proposal["aspect"]["value"].as_str().unwrap_or("null"));
                    (r["status"].as_u64().unwrap_or(0) as u16, aspect.unwrap_or_default())
                })
            })
            .collect()
    }

    /// Requests whose payload failed DataHub's schema validation.
    pub async fn invalid(&self) -> Vec<serde_json::Value> {
        self.requests().await.into_iter().filter(|r| r["valid"] == false).collect()
    }
}

/// A moto server: a real SQS (and Secrets Manager) API on loopback, from the project venv.
pub struct Moto {
    pub proc: Proc,
    pub endpoint: String,
    pub sqs: aws_sdk_sqs::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl Cluster {
    pub async fn moto(&self) -> Moto {
        // moto_server takes a port, not 0: borrow a free one from the kernel.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        self.moto_on(port).await
    }

    /// A moto server on a given port (a restart on the same address starts with no queues).
    pub async fn moto_on(&self, port: u16) -> Moto {
        let mut command = Command::new(repo_root().join(".venv/bin/moto_server"));
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut proc = Proc::spawn("moto", command, self.path(&format!("moto-{}.log", unique())));
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_until("moto to answer", Duration::from_secs(60), || {
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            let exited = proc.child.try_wait().ok().flatten();
            async move {
                assert!(exited.is_none(), "moto exited early: {exited:?}");
                up.then_some(())
            }
        })
        .await;
        outpost_common::tls::install_crypto_provider();
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("testing", "testing", None, None, "static"))
            .http_client(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https(),
            )
            .load()
            .await;
        Moto {
            proc,
            endpoint,
            sqs: aws_sdk_sqs::Client::new(&config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
        }
    }
}

impl Moto {
    pub async fn queue(&self, name: &str) -> String {
        self.sqs.create_queue().queue_name(name).send().await.expect("create queue").queue_url.expect("queue url")
    }

    pub async fn send(&self, queue: &str, body: &str) {
        self.sqs.send_message().queue_url(queue).message_body(body).send().await.expect("send message");
    }

    /// (visible, in flight) message counts.
    pub async fn counts(&self, queue: &str) -> (u64, u64) {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .unwrap_or_default();
        let count = |name: &A| attributes.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        (count(&A::ApproximateNumberOfMessages), count(&A::ApproximateNumberOfMessagesNotVisible))
    }

    /// Waits until the queue holds no message at all (visible or in flight).
    pub async fn wait_empty(&self, queue: &str) {
        wait_until("the queue to empty", RUN_TIMEOUT, || async { (self.counts(queue).await == (0, 0)).then_some(()) })
            .await;
    }
}

/// Execution request messages as DataHub and DataHub Cloud put them on SQS.
pub mod messages {
    use base64::Engine;
    use serde_json::{Value, json};

    /// A `dataHubExecutionRequestInput` for `recipe` on pool `executor_id`.
    pub fn input(recipe: &str, executor_id: &str) -> Value {
        json!({
            "task": "RUN_INGEST",
            "args": {"recipe": recipe, "version": "native", "debug_mode": "false"},
            "executorId": executor_id,
            "source": {"type": "SCHEDULED_INGESTION_SOURCE", "ingestionSource": "urn:li:dataHubIngestionSource:nightly"},
            "requestedAt": 1732550000000i64,
            "actorUrn": "urn:li:corpuser:datahub",
        })
    }

    /// A MetadataChangeLog of the input aspect, shaped as DataHub's MCL (the aspect as a JSON string).
    pub fn mcl_input(id: &str, input: &Value) -> String {
        json!({
            "entityType": "dataHubExecutionRequest",
            "entityUrn": format!("urn:li:dataHubExecutionRequest:{id}"),
            "entityKeyAspect": {"value": json!({"id": id}).to_string(), "contentType": "application/json"},
            "changeType": "UPSERT",
            "aspectName": "dataHubExecutionRequestInput",
            "aspect": {"value": input.to_string(), "contentType": "application/json"},
            "systemMetadata": {"lastObserved": 1732550000000i64, "runId": "no-run-id-provided"},
            "created": {"time": 1732550000000i64, "actor": "urn:li:corpuser:datahub"},
        })
        .to_string()
    }

    /// A MetadataChangeLog of a KILL signal.
    pub fn mcl_kill(id: &str) -> String {
        let signal = json!({"signal": "KILL", "executorId": "default",
                            "createdAt": {"time": 1732550100000i64, "actor": "urn:li:corpuser:admin"}});
        json!({
            "entityType": "dataHubExecutionRequest",
            "entityUrn": format!("urn:li:dataHubExecutionRequest:{id}"),
            "changeType": "UPSERT",
            "aspectName": "dataHubExecutionRequestSignal",
            "aspect": {"value": signal.to_string(), "contentType": "application/json"},
        })
        .to_string()
    }

    /// DataHub Cloud's Celery/kombu envelope (base64 JSON; the pickled body is never read).
    pub fn celery(id: &str, pool: &str) -> String {
        let urn = format!("urn:li:dataHubExecutionRequest:{id}");
        let envelope = json!({
            "body": base64::engine::general_purpose::STANDARD.encode(b"\x80\x04\x95 not unpickled"),
            "content-encoding": "binary",
            "content-type": "application/x-python-serialize",
            "headers": {"lang": "py", "task": "datahub_executor.worker.celery_sqs.app.ingestion_request",
                        "id": urn, "root_id": urn, "parent_id": null, "group": null, "retries": 0,
                        "eta": null, "expires": null, "timelimit": [null, null],
                        "argsrepr": "[MetadataChangeLogClass({...})]", "kwargsrepr": "{}", "origin": "gen1@coordinator"},
            "properties": {"correlation_id": urn, "reply_to": "0b3c0f3e-1111-4222-8333-444455556666",
                           "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": pool},
                           "priority": 0, "body_encoding": "base64", "delivery_tag": "5c3f0f3e-1111-4222-8333-444455556666"},
        });
        base64::engine::general_purpose::STANDARD.encode(envelope.to_string())
    }

    /// The plain form for producers of one's own.
    pub fn plain(id: &str, input: &Value) -> String {
        json!({"executionRequestUrn": format!("urn:li:dataHubExecutionRequest:{id}"), "input": input}).to_string()
    }
}

/// Submits a task of any kind with the given args to pool `default`.
pub async fn submit_args(
    admin: &mut AdminServiceClient<Channel>,
    id: &str,
    task: &str,
    args: &[(&str, String)],
) -> pb::Task {
    let request = pb::SubmitTaskRequest {
        task: task.into(),
        args: args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        pool: "default".into(),
        execution_request_id: id.into(),
        source_type: String::new(),
    };
    let response = admin.submit_task(request).await.expect("submit").into_inner();
    response.task.expect("task in response")
}

/// Writes the first `records` MCPs of the example file to `path` (for recipes whose input differs per run).
pub fn write_mcps(path: &Path, records: usize) {
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("examples/sample_mcps.json")).unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string(&all[..records]).unwrap()).unwrap();
}

/// Whether `needle` occurs anywhere in the bytes of `path` (false when the file does not exist).
pub fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path).map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes())).unwrap_or(false)
}

/// A free loopback port (borrowed from the kernel; free again when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET over plain HTTP: (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    outpost_common::tls::install_crypto_provider();
    let response = reqwest::get(url).await.expect("http get");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Parses Prometheus text with the reference parser (Python `prometheus_client`): every sample as
/// `{"family", "type", "name", "labels", "value"}`. Panics if the parser refuses the text.
pub fn parse_metrics(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the metrics parser");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "prometheus_client refused the text: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
pub fn metric(samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

impl Cluster {
    /// Runs grpcurl (from the project venv) with the admin certificate against the controller.
    pub fn grpcurl(&self, controller: &Controller, args: &[&str]) -> Output {
        let tls = self.admin_tls();
        Command::new(repo_root().join(".venv/bin/grpcurl"))
            .arg("-cacert")
            .arg(tls.ca)
            .arg("-cert")
            .arg(tls.cert)
            .arg("-key")
            .arg(tls.key)
            .args(args.iter().map(|a| a.replace("{addr}", &controller.addr.to_string())))
            .output()
            .expect("run grpcurl")
    }
}
