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

mod api;
mod ghost;
mod gms;
mod held;
pub mod history;
mod moto;
mod ops;
mod processes;
mod prometheus;
mod proxy;
mod recorder;
mod start;

pub use api::*;
pub use ghost::*;
pub use gms::*;
pub use held::*;
pub use moto::*;
pub use ops::*;
pub use processes::*;
pub use prometheus::Prometheus;
pub use proxy::Proxy;
pub use recorder::{SqsCall, SqsRecorder};
pub use start::{AgentBuilder, Configure, ControllerBuilder};

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

/// How long a task of the tests may take from submission to its end: the product's own steps (placement, a lease
/// expiry and retry under the tests' short flags, a few seconds at most) plus the starts of a few `datahub` CLIs
/// (3 s each idle, up to 15 s beside a CPU hog) over small, fixed inputs. Never a run whose length depends on the
/// CPU (runs that must last are held: [`HeldRun`]) nor a download (the setup script fetches those).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

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
    pub(crate) child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
    /// An agent's --work-dir: the CLIs it started are killed with it.
    work_dir: Option<PathBuf>,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut command: Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).expect("create log file");
        command.stdout(file.try_clone().expect("clone log handle")).stderr(file).stdin(Stdio::null());
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_owned(), child, log, exited: None, work_dir: None }
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
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
        if let Some(dir) = &self.work_dir {
            kill_processes_under(dir);
        }
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

impl Drop for Cluster {
    /// A failed test's logs (every process it started) are kept under `target/test-logs/<test>/` for reading
    /// afterwards; the temp dir itself goes.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let test = std::thread::current().name().unwrap_or("unnamed").replace("::", "__");
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
        let kept = target.join("test-logs").join(format!("{test}-{}", unique()));
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else { return };
        if std::fs::create_dir_all(&kept).is_err() {
            return;
        }
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".log") {
                let _ = std::fs::copy(entry.path(), kept.join(&name));
            }
        }
        eprintln!("----- the logs of this test's processes are kept in {} -----", kept.display());
    }
}

impl Cluster {
    pub fn new(bins: Bins) -> Cluster {
        outpost_common::tls::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let cluster = Cluster { bins, dir, certs };
        cluster.certs_command(&["init"]);
        cluster.certs_command(&["admin", "--name", "ops", "--role", "admin"]);
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

    /// A second, unrelated CA (with the same CA name) in a temp dir, with the certificates `issue` asks for
    /// (`certs` subcommands, e.g. `["agent", "--worker-id", "w-1"]`): certificates this cluster must refuse.
    pub fn other_ca(&self, issue: &[&[&str]]) -> tempfile::TempDir {
        let other = tempfile::tempdir().expect("temp dir");
        for args in std::iter::once(&["init"][..]).chain(issue.iter().copied()) {
            let output = Command::new(&self.bins.controller)
                .arg("certs")
                .args(args)
                .arg("--out")
                .arg(other.path())
                .output()
                .expect("run certs");
            assert!(output.status.success(), "certs {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        other
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

    /// The local admin identity a controller started with `controller_with_own_trust` keeps in `trust/`.
    pub fn local_admin_tls(&self) -> TlsFiles {
        let trust = self.path("trust");
        TlsFiles { cert: trust.join("admin-local.pem"), key: trust.join("admin-local.key"), ca: trust.join("ca.pem") }
    }

    /// Runs the project venv's Python with `args` (its output in a log file of the temp dir).
    pub fn python(&self, name: &str, args: &[&str]) -> Proc {
        let mut command = Command::new(repo_root().join(".venv/bin/python"));
        command.args(args);
        Proc::spawn(name, command, self.path(&format!("{name}-{}.log", unique())))
    }

    /// An admin client over mTLS.
    pub async fn admin(&self, controller: &Controller) -> AdminServiceClient<Channel> {
        admin_client(controller, &self.admin_tls()).await
    }

    /// Runs outpostctl against the controller with the admin certificate.
    pub fn ctl(&self, controller: &Controller, args: &[&str]) -> Output {
        self.ctl_as(controller, &self.admin_tls(), args)
    }

    /// Runs outpostctl against the controller with the given client files.
    pub fn ctl_as(&self, controller: &Controller, tls: &TlsFiles, args: &[&str]) -> Output {
        let tls = tls.clone();
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

/// An admin client over mTLS with the given client files.
pub async fn admin_client(controller: &Controller, tls: &TlsFiles) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel(&controller.url(), tls).await.expect("admin connects"))
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

pub(crate) fn unique() -> u128 {
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
