//! Builders that start the controller and agent programs for a test: what every process of a kind gets (a
//! loopback listener, the cluster's certificates, static AWS credentials, fast reconnects) is set here once, and a
//! test names only what it changes. Never waits by sleeping: `start` polls for the controller's address file.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Cluster, Controller, Proc, datahub_cli, repo_root, unique, wait_until};

/// A controller to start: `cluster.controller("outpost.db").args(&["--lease-ttl", "2s"]).start().await`.
#[must_use = "a builder does nothing until start() or spawn()"]
pub struct ControllerBuilder<'c> {
    cluster: &'c Cluster,
    db_name: String,
    extra: Extra,
    given_tls: bool,
}

/// How the agent proves who it is.
enum Identity {
    /// The cluster CA's certificate for this worker ID (issued on first use).
    Certificate { of: String },
    /// No certificate: it joins with the token (as `OUTPOST_JOIN_TOKEN`), if any, and keeps its identity in the
    /// state dir.
    Joins { token: Option<String>, state_dir: PathBuf },
}

/// An agent to start: `cluster.agent("w-1").pool("p").slots(2).start(&controller)`. By default it serves pool
/// `default` with one slot and presents the cluster CA's certificate for its own worker ID.
#[must_use = "a builder does nothing until start()"]
pub struct AgentBuilder<'c> {
    cluster: &'c Cluster,
    name: String,
    pool: String,
    slots: u32,
    extra: Extra,
    identity: Identity,
}

impl Cluster {
    /// A controller over `db_name` in the temp dir, listening on 127.0.0.1:0 (unless `--listen` is among its
    /// arguments) with the cluster's certificate files.
    pub fn controller(&self, db_name: &str) -> ControllerBuilder<'_> {
        ControllerBuilder { cluster: self, db_name: db_name.to_owned(), extra: Extra::default(), given_tls: true }
    }

    /// Agent `name` (its worker ID, log label and work dir `work-<name>`).
    pub fn agent(&self, name: &str) -> AgentBuilder<'_> {
        AgentBuilder {
            cluster: self,
            name: name.to_owned(),
            pool: "default".to_owned(),
            slots: 1,
            extra: Extra::default(),
            identity: Identity::Certificate { of: name.to_owned() },
        }
    }
}

/// What a test adds to a process's defaults: arguments after them (so they win where a flag is given twice) and
/// environment variables.
#[derive(Default)]
pub struct Extra {
    args: Vec<OsString>,
    env: Vec<(String, String)>,
}

/// The builders' common methods.
pub trait Configure: Sized {
    #[doc(hidden)]
    fn extra(&mut self) -> &mut Extra;

    /// More command-line arguments (after the defaults, so they win where a flag is given twice).
    fn args<S: AsRef<OsStr>>(mut self, args: &[S]) -> Self {
        self.extra().args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Extra environment variables (e.g. `FAILPOINTS` for the test build's fail points).
    fn env(mut self, vars: &[(&str, &str)]) -> Self {
        self.extra().env.extend(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self
    }
}

impl Configure for ControllerBuilder<'_> {
    fn extra(&mut self) -> &mut Extra {
        &mut self.extra
    }
}

impl Configure for AgentBuilder<'_> {
    fn extra(&mut self) -> &mut Extra {
        &mut self.extra
    }
}

/// Static AWS credentials and a fixed region; never instance metadata.
fn offline_aws(command: &mut Command) {
    command
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

impl ControllerBuilder<'_> {
    /// Given no certificate files: the controller makes and keeps its own trust (in `trust/` of the temp dir,
    /// beside its database; see [`Cluster::local_admin_tls`]), or refuses to start when the TLS flags it is
    /// given are incomplete.
    pub fn own_trust(mut self) -> Self {
        self.given_tls = false;
        self
    }

    /// Starts the process and returns at once (for tests of how it starts, or fails to). It writes its address
    /// to `<db_name>.addr` once it listens.
    pub fn spawn(self) -> Proc {
        let cluster = self.cluster;
        let addr_file = cluster.path(&format!("{}.addr", self.db_name));
        let _ = std::fs::remove_file(&addr_file);
        let mut command = Command::new(&cluster.bins.controller);
        command.arg("run");
        if !self.extra.args.iter().any(|a| a == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command.arg("--listen-addr-file").arg(&addr_file).arg("--db").arg(cluster.path(&self.db_name));
        if self.given_tls {
            command
                .arg("--tls-cert")
                .arg(cluster.certs.join("controller.pem"))
                .arg("--tls-key")
                .arg(cluster.certs.join("controller.key"))
                .arg("--tls-ca")
                .arg(cluster.certs.join("ca.pem"));
        }
        command.args(&self.extra.args).env("RUST_LOG", "info,outpost_controller=debug");
        offline_aws(&mut command);
        command.envs(self.extra.env);
        let log = cluster.path(&format!("controller-{}-{}.log", self.db_name, unique()));
        Proc::spawn("controller", command, log)
    }

    /// Starts the process and returns once it listens; panics if it exits first.
    pub async fn start(self) -> Controller {
        let addr_file = self.cluster.path(&format!("{}.addr", self.db_name));
        let mut proc = self.spawn();
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
}

impl AgentBuilder<'_> {
    pub fn pool(mut self, pool: &str) -> Self {
        self.pool = pool.to_owned();
        self
    }

    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// Presents the certificate of `worker` while claiming its own name in its Hello (an impostor).
    pub fn certificate_of(mut self, worker: &str) -> Self {
        self.identity = Identity::Certificate { of: worker.to_owned() };
        self
    }

    /// No certificate: joins with `token` (through the environment, as `OUTPOST_JOIN_TOKEN`), if any, and keeps
    /// its identity in `state_dir`.
    pub fn joins(mut self, token: Option<&str>, state_dir: &Path) -> Self {
        self.identity = Identity::Joins { token: token.map(str::to_owned), state_dir: state_dir.to_owned() };
        self
    }

    /// Starts the agent dialling `controller`.
    pub fn start(self, controller: &Controller) -> Proc {
        self.start_at(&controller.url())
    }

    /// Starts the agent dialling `url` (a fault proxy in front of the controller, or a controller not started
    /// yet).
    pub fn start_at(self, url: &str) -> Proc {
        let cluster = self.cluster;
        let work_dir = cluster.path(&format!("work-{}", self.name));
        let mut command = Command::new(&cluster.bins.agent);
        command
            .args(["--controller", url, "--pool", &self.pool])
            .args(["--slots", &self.slots.to_string()])
            .arg("--datahub-cli")
            .arg(datahub_cli())
            .arg("--work-dir")
            .arg(&work_dir)
            .args(["--reconnect-min", "50ms", "--reconnect-max", "1s"])
            .env("DATAHUB_TELEMETRY_ENABLED", "false")
            .env("OUTPOST_EXAMPLES", repo_root().join("examples"))
            .env("RUST_LOG", "info,outpost_agent=debug");
        offline_aws(&mut command);
        match self.identity {
            Identity::Certificate { of } => {
                let (cert, key) = cluster.agent_cert(&of);
                command
                    .args(["--worker-id", &self.name])
                    .arg("--tls-cert")
                    .arg(cert)
                    .arg("--tls-key")
                    .arg(key)
                    .arg("--tls-ca")
                    .arg(cluster.certs.join("ca.pem"));
            }
            Identity::Joins { token, state_dir } => {
                command.arg("--state-dir").arg(state_dir);
                if let Some(token) = token {
                    command.env("OUTPOST_JOIN_TOKEN", token);
                }
            }
        }
        command.args(&self.extra.args).envs(self.extra.env);
        let log = cluster.path(&format!("agent-{}-{}.log", self.name, unique()));
        let mut proc = Proc::spawn(&format!("agent {}", self.name), command, log);
        proc.work_dir = Some(work_dir);
        proc
    }
}
