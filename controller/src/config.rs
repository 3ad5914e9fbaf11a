//! The controller's command line (clap derive; every flag also reads an environment variable). Durations are
//! humantime (`5s`, `2m`). `run`'s flags are grouped per subsystem; each group is validated by its owner.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use outpost_common::duration;
use outpost_common::identity::DEFAULT_TRUST_DOMAIN;
use outpost_common::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "outpost-controller",
    version,
    about = "Outpost controller: leases DataHub execution requests to agents"
)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, env = "OUTPOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve agents and the admin API.
    Run(Box<RunConfig>),
    /// Check, with the same flags as `run` and before a first start, whether what they name can work (TLS, the
    /// database's directory, GMS and its version, each channel, each queue). Only reads. Exits 1 if a check fails.
    Doctor(Box<RunConfig>),
    /// Make development certificates (a CA, the controller's, agents', admins').
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// A new CA and the controller's certificate: ca.pem ca.key controller.pem controller.key.
    Init {
        #[arg(long, env = "OUTPOST_CERTS_DIR")]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the controller certificate (localhost and 127.0.0.1 are always in).
        #[arg(long)]
        san: Vec<String>,
    },
    /// An agent certificate agent-W.pem / agent-W.key (SAN URI spiffe://<trust-domain>/agent/W), signed by the CA in --out.
    Agent {
        #[arg(long, env = "OUTPOST_CERTS_DIR")]
        out: PathBuf,
        #[arg(long, env = "DATAHUB_EXECUTOR_WORKER_ID")]
        worker_id: String,
        #[arg(long, env = "OUTPOST_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
    /// An operator's certificate admin-N.pem / admin-N.key (SAN URI spiffe://<trust-domain>/admin/<role>/N), signed by
    /// the CA in --out.
    Admin {
        #[arg(long, env = "OUTPOST_CERTS_DIR")]
        out: PathBuf,
        #[arg(long)]
        name: String,
        /// What it may do: viewer (read), operator (also submit, cancel, retry, drain, replay, warm venvs) or admin
        /// (also join and login tokens, revocation).
        #[arg(long)]
        role: outpost_common::roles::Role,
        #[arg(long, env = "OUTPOST_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
}

/// Everything `outpost-controller run` is told: a few flags of the program itself, and each subsystem's flag
/// group, which is that subsystem's config and validates itself.
#[derive(Clone, Debug, Args)]
pub struct RunConfig {
    /// Address for gRPC (agents, admin, health, reflection), mTLS only. Port 0 picks a free port.
    #[arg(long, env = "OUTPOST_LISTEN", default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// Address for HTTP `/metrics` (Prometheus), `/healthz` and `/readyz`; off when unset.
    #[arg(long, env = "OUTPOST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// A client of `--metrics-listen` that has not sent its request within this time is disconnected.
    #[arg(long, env = "OUTPOST_METRICS_READ_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub metrics_read_timeout: Duration,
    /// Write the bound gRPC address to this file once serving (for scripts that listen on port 0).
    #[arg(long, env = "OUTPOST_LISTEN_ADDR_FILE")]
    pub listen_addr_file: Option<PathBuf>,
    /// The SQLite database file (created if missing).
    #[arg(long, env = "OUTPOST_DB", default_value = "./outpost.db")]
    pub db: PathBuf,
    /// How long shutdown waits for each subsystem.
    #[arg(long, env = "OUTPOST_SHUTDOWN_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub trust: crate::trust::Config,
    #[command(flatten)]
    pub grpc: crate::grpc::Args,
    #[command(flatten)]
    pub scheduler: crate::scheduler::Config,
    #[command(flatten)]
    pub gms: crate::gms::Args,
    #[command(flatten)]
    pub reporter: crate::reporter::Config,
    #[command(flatten)]
    pub sqs: crate::sources::sqs::Config,
    #[command(flatten)]
    pub gms_channel: crate::sources::gms_channel::Config,
    #[command(flatten)]
    pub enroll: crate::enroll::Config,
    #[command(flatten)]
    pub ui: crate::ui::Args,
    #[command(flatten)]
    pub audit: crate::admin::AuditConfig,
}

impl RunConfig {
    /// Every group's checks; the first refusal, naming its flag.
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--shutdown-timeout", self.shutdown_timeout)?;
        duration::positive("--metrics-read-timeout", self.metrics_read_timeout)?;
        self.trust.validate()?;
        self.grpc.validate()?;
        self.scheduler.validate()?;
        self.gms.validate()?;
        self.reporter.validate()?;
        self.sqs.validate()?;
        self.gms_channel.validate(self.reporter.progress_interval)?;
        self.enroll.validate()?;
        if self.enroll.join_listen.is_some() && self.enroll.ca_key.is_none() && self.trust.tls_ca.is_some() {
            return Err(duration::Invalid(
                "--join-listen needs --ca-key (the key of the --tls-ca that signs agents' certificates)".into(),
            ));
        }
        self.ui.validate()?;
        self.audit.validate()?;
        if !self.sqs.from_gms.is_empty() && self.gms.url.is_none() {
            return Err(duration::Invalid("--queue-from-gms needs --gms-url (the queue comes from GMS)".into()));
        }
        if !self.gms_channel.pools.is_empty() && self.gms.url.is_none() {
            return Err(duration::Invalid("--gms-channel needs --gms-url (the requests come from GMS)".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn run(args: &[&str]) -> Result<RunConfig, String> {
        let base = ["outpost-controller", "run", "--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a"];
        let cli = Cli::try_parse_from(base.iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Run(config) = cli.command else { unreachable!() };
        config.validate().map_err(|e| e.to_string())?;
        Ok(*config)
    }

    #[test]
    fn each_group_refuses_what_cannot_work_with_a_clear_message() {
        let table = [
            (&["--sqs-keep-interval", "0s"][..], "--sqs-keep-interval must be greater than zero"),
            (
                &["--sqs-wait", "1500ms"],
                "--sqs-wait must be a whole number of seconds (SQS counts in seconds), not 1.5s",
            ),
            (
                &["--sqs-visibility-timeout", "30.5"],
                "--sqs-visibility-timeout must be a whole number of seconds (SQS counts in seconds), not 30.5s",
            ),
            (&["--sqs-wait", "21s"], "--sqs-wait must be at most 20s (SQS's limit), not 21s"),
            (
                &["--sqs-keep-interval", "60s"],
                "--sqs-keep-interval (60s) must be shorter than --sqs-visibility-timeout (60s)",
            ),
            (&["--lease-ttl", "0s"], "--lease-ttl must be greater than zero"),
            (&["--heartbeat-interval", "30s"], "--heartbeat-interval (30s) must be shorter than --lease-ttl (30s)"),
            (&["--max-attempts", "0"], "--max-attempts must be greater than zero"),
            (&["--gms-concurrency", "0"], "--gms-concurrency must be 1 to 256, not 0"),
            (&["--hello-timeout", "0s"], "--hello-timeout must be greater than zero"),
            (&["--signal-poll-interval", "0"], "--signal-poll-interval must be greater than zero"),
            (&["--queue-from-gms", "p"], "--queue-from-gms needs --gms-url (the queue comes from GMS)"),
        ];
        for (args, want) in table {
            assert_eq!(run(args).err().as_deref(), Some(want), "{args:?}");
        }
    }

    #[test]
    fn the_groups_are_the_subsystems_configs() {
        let config = run(&[
            "--queue",
            "remote=http://127.0.0.1:1/q",
            "--queue-url",
            "http://127.0.0.1:1/r",
            "--pool-id",
            "other",
            "--sqs-wait",
            "2s",
            "--retry-backoff",
            "3s",
            "--gms-retry-backoff",
            "4s",
            "--sqs-retry-backoff",
            "5s",
        ])
        .unwrap();
        let pools: Vec<String> = config.sqs.all_queues().iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(pools, ["remote", "other"]);
        assert_eq!(config.sqs.wait, Duration::from_secs(2));
        assert_eq!(config.scheduler.retry.backoff_base, Duration::from_secs(3));
        assert_eq!(config.reporter.retry_backoff, Duration::from_secs(4));
        assert_eq!(config.sqs.retry_backoff, Duration::from_secs(5));
        assert_eq!(config.scheduler.lease_ttl, Duration::from_secs(30));
        assert!(config.sqs.gms_pools(true).is_empty(), "queues named: no pool from GMS by default");
        // DataHub's chart sets DATAHUB_EXECUTOR_POOL_ID: with GMS and no queue named, that pool's queue comes from GMS.
        let cloud = run(&["--pool-id", "remote", "--gms-url", "https://t.acryl.io/gms"]).unwrap();
        let pools: Vec<String> = cloud.sqs.gms_pools(true).iter().map(ToString::to_string).collect();
        assert_eq!(pools, ["remote"]);
        let named = run(&["--queue-from-gms", "a,b", "--gms-url", "https://t.acryl.io/gms"]).unwrap();
        assert_eq!(named.sqs.gms_pools(true).len(), 2);
    }
}
