//! What every benchmark needs: a controller process (the release binary next to this one) with fresh
//! certificates, agent sessions driven in this process, an admin client, and the controller's CPU and memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use outpost_common::pb::{self, agent_message::Msg as Out, controller_message::Msg as In};
use outpost_common::tls::TlsFiles;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// A controller process in a temp dir with fresh certificates.
pub struct ControllerProcess {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub metrics_addr: String,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no exe dir")?.join(name);
    if !path.exists() {
        bail!("{} is missing: build with `cargo build --release --workspace`", path.display());
    }
    Ok(path)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl ControllerProcess {
    pub fn start(extra: &[&str]) -> anyhow::Result<ControllerProcess> {
        Self::start_with(|_| extra.iter().map(|s| s.to_string()).collect())
    }

    /// Like [`ControllerProcess::start`], with flags that name files of the fresh certificate directory.
    pub fn start_with(extra: impl FnOnce(&Path) -> Vec<String>) -> anyhow::Result<ControllerProcess> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        outpost_controller::certs::init(&certs, &[])?;
        outpost_controller::certs::admin(&certs, "bench", Some(outpost_common::roles::Role::Admin), "outpost")?;
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let extra = extra(&certs);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (child, addr) = spawn(dir.path(), &metrics_addr, None, &extra, &[])?;
        Ok(ControllerProcess { child, addr, dir, metrics_addr })
    }

    /// A controller run under `wrapper` (e.g. `valgrind --tool=callgrind --callgrind-out-file=F`).
    pub fn start_wrapped(wrapper: &[String], extra: &[&str]) -> anyhow::Result<ControllerProcess> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        outpost_controller::certs::init(&certs, &[])?;
        outpost_controller::certs::admin(&certs, "bench", Some(outpost_common::roles::Role::Admin), "outpost")?;
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let (child, addr) = spawn(dir.path(), &metrics_addr, None, extra, wrapper)?;
        Ok(ControllerProcess { child, addr, dir, metrics_addr })
    }

    /// SIGTERM, then waits for the controller to exit (a wrapper writes its output then).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Kills the controller and starts it again on the same address and database.
    pub fn restart(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr) = spawn(self.dir.path(), &self.metrics_addr, Some(&self.addr), extra, &[])?;
        self.child = child;
        self.addr = addr;
        Ok(())
    }

    pub async fn admin(&self) -> anyhow::Result<pb::admin_service_client::AdminServiceClient<Channel>> {
        let certs = self.certs();
        let tls = TlsFiles {
            cert: certs.join("admin-bench.pem"),
            key: certs.join("admin-bench.key"),
            ca: certs.join("ca.pem"),
        };
        Ok(pb::admin_service_client::AdminServiceClient::new(channel(&tls, &self.addr).await?))
    }

    /// (user + system CPU seconds, resident memory in bytes) of the controller process.
    pub fn usage(&self) -> (f64, u64) {
        process_usage(self.child.id())
    }

    /// The controller's /metrics text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        http_get(&self.metrics_addr, "/metrics").await
    }
}

fn spawn(
    dir: &Path,
    metrics: &str,
    listen: Option<&str>,
    extra: &[&str],
    wrapper: &[String],
) -> anyhow::Result<(Child, String)> {
    let certs = dir.join("certs");
    let addr_file = dir.join("addr");
    let _ = std::fs::remove_file(&addr_file);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("controller.log"))?;
    let controller = sibling("outpost-controller")?;
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(controller);
            command
        }
        None => Command::new(controller),
    };
    let child = command
        .args(["run", "--listen", listen.unwrap_or("127.0.0.1:0"), "--metrics-listen", metrics])
        .arg("--listen-addr-file")
        .arg(&addr_file)
        .arg("--db")
        .arg(dir.join("bench.db"))
        .arg("--tls-cert")
        .arg(certs.join("controller.pem"))
        .arg("--tls-key")
        .arg(certs.join("controller.key"))
        .arg("--tls-ca")
        .arg(certs.join("ca.pem"))
        .args(extra)
        .env("RUST_LOG", "warn")
        // For benchmarks against a local SQS API: static credentials, never instance metadata.
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    // Under valgrind a start takes far longer.
    let deadline = Instant::now() + Duration::from_secs(if wrapper.is_empty() { 30 } else { 300 });
    loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            return Ok((child, addr));
        }
        if Instant::now() > deadline {
            bail!("the controller did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (CPU seconds, RSS bytes) of a process, from /proc.
pub fn process_usage(pid: u32) -> (f64, u64) {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    let cpu = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (cpu / ticks, rss_kb * 1024)
}

pub async fn channel(tls: &TlsFiles, addr: &str) -> anyhow::Result<Channel> {
    let tls = tls.load()?;
    Ok(Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.client_config("127.0.0.1"))?.connect().await?)
}

pub fn message(msg: Out) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

/// An agent session driven by a benchmark.
pub struct Session {
    pub outbound: mpsc::Sender<pb::AgentMessage>,
    pub inbound: tonic::Streaming<pb::ControllerMessage>,
}

impl Session {
    /// Issues a certificate for `worker` and opens its session (Hello, Welcome).
    pub async fn open(controller: &ControllerProcess, worker: &str, pool: &str, slots: u32) -> anyhow::Result<Session> {
        let certs = controller.certs();
        if !certs.join(format!("agent-{worker}.pem")).exists() {
            outpost_controller::certs::agent(&certs, worker, "outpost")?;
        }
        let tls = TlsFiles {
            cert: certs.join(format!("agent-{worker}.pem")),
            key: certs.join(format!("agent-{worker}.key")),
            ca: certs.join("ca.pem"),
        };
        let channel = channel(&tls, &controller.addr).await?;
        let (outbound, rx) = mpsc::channel(1024);
        let hello = pb::Hello { worker_id: worker.into(), pools: vec![pool.into()], slots, ..Default::default() };
        outbound.send(message(Out::Hello(hello))).await?;
        let mut inbound = pb::agent_service_client::AgentServiceClient::new(channel)
            .connect(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match inbound.message().await?.and_then(|m| m.msg) {
            Some(In::Welcome(_)) => Ok(Session { outbound, inbound }),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }

    pub async fn send(&self, msg: Out) -> anyhow::Result<()> {
        self.outbound.send(message(msg)).await.map_err(|_| anyhow::anyhow!("session closed"))
    }

    /// The next message that is not a keepalive.
    pub async fn next(&mut self) -> anyhow::Result<In> {
        loop {
            match self.inbound.message().await?.and_then(|m| m.msg) {
                Some(In::Keepalive(_)) => continue,
                Some(msg) => return Ok(msg),
                None => bail!("stream ended"),
            }
        }
    }

    /// The next Assign, skipping anything else.
    pub async fn next_assign(&mut self) -> anyhow::Result<pb::Assign> {
        loop {
            if let In::Assign(assign) = self.next().await? {
                return Ok(assign);
            }
        }
    }

    /// Completes an assignment (see [`Session::complete`]) and waits until the controller accepted a result.
    pub async fn complete_accepted(&mut self, attempt: &Option<pb::AttemptRef>) -> anyhow::Result<()> {
        self.complete(attempt).await?;
        loop {
            if let In::ResultAccepted(_) = self.next().await? {
                return Ok(());
            }
        }
    }

    /// Acks an assignment and reports it SUCCEEDED at once (a no-op run).
    pub async fn complete(&self, attempt: &Option<pb::AttemptRef>) -> anyhow::Result<()> {
        self.send(Out::Ack(pb::Ack { attempt: attempt.clone() })).await?;
        let result = pb::Result {
            attempt: attempt.clone(),
            status: pb::ResultStatus::Succeeded as i32,
            exit_code: Some(0),
            report: "no-op".into(),
            ..Default::default()
        };
        self.send(Out::Result(result)).await
    }
}

/// A SubmitTask request for a no-op task.
pub fn noop(id: String, pool: &str) -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest {
        task: "NOOP".into(),
        args: Default::default(),
        pool: pool.into(),
        execution_request_id: id,
        source_type: String::new(),
    }
}

/// The p-th percentile (0–100) of sorted durations, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

/// GET `path` from `addr` over plain HTTP/1.1; the body.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// The repository root (the bench binary lives in `<root>/target/release`).
pub fn repo_root() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.ancestors().nth(3).context("no repository root")?.to_owned())
}

/// A child process killed on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real `outpost-agent` process (the release binary next to this one) with its own certificate, serving `pool`
/// with `slots` slots and running `datahub` from the project venv; killed on drop.
pub fn agent_process(controller: &ControllerProcess, worker: &str, pool: &str, slots: u32) -> anyhow::Result<Guard> {
    agent_process_with(controller, worker, pool, slots, &[], &[])
}

/// An agent with extra flags and environment variables.
pub fn agent_process_with(
    controller: &ControllerProcess,
    worker: &str,
    pool: &str,
    slots: u32,
    extra: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Guard> {
    let certs = controller.certs();
    outpost_controller::certs::agent(&certs, worker, "outpost")?;
    let datahub = repo_root()?.join(".venv/bin/datahub");
    let child = Command::new(sibling("outpost-agent")?)
        .args(["--controller", &format!("https://{}", controller.addr), "--worker-id", worker])
        .args(["--pool", pool, "--slots", &slots.to_string()])
        .arg("--tls-cert")
        .arg(certs.join(format!("agent-{worker}.pem")))
        .arg("--tls-key")
        .arg(certs.join(format!("agent-{worker}.key")))
        .arg("--tls-ca")
        .arg(certs.join("ca.pem"))
        .arg("--datahub-cli")
        .arg(&datahub)
        .env("DATAHUB_TELEMETRY_ENABLED", "false")
        .env("RUST_LOG", "warn")
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Guard(child))
}
