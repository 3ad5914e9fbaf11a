//! The controller's command line (clap derive; every flag also reads an environment variable). Durations are
//! humantime (`5s`, `2m`). Validated once, here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use outpost_common::duration;
use outpost_common::identity::DEFAULT_TRUST_DOMAIN;
use outpost_common::telemetry::LogFormat;
use outpost_common::tls::TlsArgs;

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
    /// An admin certificate admin-N.pem / admin-N.key (SAN URI spiffe://<trust-domain>/admin/N), signed by the CA in --out.
    Admin {
        #[arg(long, env = "OUTPOST_CERTS_DIR")]
        out: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, env = "OUTPOST_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
}

/// Everything `outpost-controller run` is told.
#[derive(Clone, Debug, Args)]
pub struct RunConfig {
    /// Address for gRPC (agents, admin, health, reflection), mTLS only. Port 0 picks a free port.
    #[arg(long, env = "OUTPOST_LISTEN", default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// Write the bound gRPC address to this file once serving (for scripts that listen on port 0).
    #[arg(long, env = "OUTPOST_LISTEN_ADDR_FILE")]
    pub listen_addr_file: Option<PathBuf>,
    /// The SQLite database file (created if missing).
    #[arg(long, env = "OUTPOST_DB", default_value = "./outpost.db")]
    pub db: PathBuf,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The trust domain of SPIFFE URIs in client certificates.
    #[arg(long, env = "OUTPOST_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// How often agents heartbeat.
    #[arg(long, env = "OUTPOST_HEARTBEAT_INTERVAL", value_parser = duration::parse, default_value = "5s")]
    pub heartbeat_interval: Duration,
    /// A lease expires when its agent is silent this long.
    #[arg(long, env = "OUTPOST_LEASE_TTL", value_parser = duration::parse, default_value = "30s")]
    pub lease_ttl: Duration,
    /// Application-level keepalive cadence on agent streams, both ways.
    #[arg(long, env = "OUTPOST_KEEPALIVE_INTERVAL", value_parser = duration::parse, default_value = "15s")]
    pub keepalive_interval: Duration,
    /// An agent stream that sends no Hello within this time is closed.
    #[arg(long, env = "OUTPOST_HELLO_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub hello_timeout: Duration,
    /// An assignment not acknowledged within this time is revoked and re-queued.
    #[arg(long, env = "OUTPOST_ACK_DEADLINE", value_parser = duration::parse, default_value = "10s")]
    pub ack_deadline: Duration,
    /// A cancel the agent never confirms ends CANCELLED after this time.
    #[arg(long, env = "OUTPOST_CANCEL_TIMEOUT", value_parser = duration::parse, default_value = "60s")]
    pub cancel_timeout: Duration,
    /// How often leases, deadlines and backoffs are checked and heartbeats persisted (one transaction each time).
    #[arg(long, env = "OUTPOST_SWEEP_INTERVAL", value_parser = duration::parse, default_value = "500ms")]
    pub sweep_interval: Duration,
    /// Attempts a task may make; after that an infrastructure failure ends it ABORTED.
    #[arg(long, env = "OUTPOST_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Backoff before a retry: this, doubled per attempt, with full jitter.
    #[arg(long, env = "OUTPOST_RETRY_BACKOFF", value_parser = duration::parse, default_value = "1s")]
    pub retry_backoff: Duration,
    /// The longest retry backoff.
    #[arg(long, env = "OUTPOST_RETRY_BACKOFF_MAX", value_parser = duration::parse, default_value = "60s")]
    pub retry_backoff_max: Duration,
    /// Also retry runs that failed on their own (CLI exit code not 0); by default they end FAILED.
    #[arg(long, env = "OUTPOST_RETRY_TASK_FAILURES")]
    pub retry_task_failures: bool,
    /// DataHub's metadata service, e.g. https://tenant.acryl.io/gms or http://datahub-gms:8080. Without it
    /// nothing is reported to DataHub (results stay in SQLite).
    #[arg(long, env = "DATAHUB_GMS_URL")]
    pub gms_url: Option<String>,
    /// The access token for GMS (a DataHub Remote Executor token).
    #[arg(long, env = "DATAHUB_GMS_TOKEN", hide_env_values = true)]
    pub gms_token: Option<crate::gms::Token>,
    /// Timeout of one GMS call.
    #[arg(long, env = "OUTPOST_GMS_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub gms_timeout: Duration,
    /// How often running tasks report RUNNING with their log tail.
    #[arg(long, env = "OUTPOST_PROGRESS_INTERVAL", value_parser = duration::parse, default_value = "5s")]
    pub progress_interval: Duration,
    /// How often KILL signals are read from GMS for unfinished tasks.
    #[arg(long, env = "DATAHUB_EXECUTOR_INGESTION_SIGNAL_POLL_INTERVAL", value_parser = duration::parse, default_value = "2s")]
    pub signal_poll_interval: Duration,
    /// First retry backoff of a failed GMS write (doubled per try, jittered).
    #[arg(long, env = "OUTPOST_GMS_RETRY_BACKOFF", value_parser = duration::parse, default_value = "1s")]
    pub gms_retry_backoff: Duration,
    /// Longest retry backoff of a failed GMS write.
    #[arg(long, env = "OUTPOST_GMS_RETRY_BACKOFF_MAX", value_parser = duration::parse, default_value = "60s")]
    pub gms_retry_backoff_max: Duration,
    /// Cap on the report text sent to GMS (longer ones are cut in the middle, with a marker).
    #[arg(long, env = "OUTPOST_GMS_MAX_REPORT_BYTES", default_value_t = 1024 * 1024)]
    pub gms_max_report_bytes: usize,
    /// Cap on the structured report sent to GMS (a larger one is left out, and the report says so).
    #[arg(long, env = "OUTPOST_GMS_MAX_STRUCTURED_BYTES", default_value_t = 800 * 1000)]
    pub gms_max_structured_bytes: usize,
    /// How long shutdown waits for each subsystem.
    #[arg(long, env = "OUTPOST_SHUTDOWN_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("--heartbeat-interval ({heartbeat:?}) must be shorter than --lease-ttl ({lease:?})")]
    HeartbeatNotUnderLease { heartbeat: Duration, lease: Duration },
}

impl RunConfig {
    pub fn validate(&self) -> Result<(), Error> {
        for (name, value) in [
            ("--heartbeat-interval", self.heartbeat_interval),
            ("--lease-ttl", self.lease_ttl),
            ("--keepalive-interval", self.keepalive_interval),
            ("--hello-timeout", self.hello_timeout),
            ("--ack-deadline", self.ack_deadline),
            ("--cancel-timeout", self.cancel_timeout),
            ("--sweep-interval", self.sweep_interval),
            ("--progress-interval", self.progress_interval),
            ("--signal-poll-interval", self.signal_poll_interval),
            ("--gms-timeout", self.gms_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Zero(name));
            }
        }
        if self.max_attempts == 0 {
            return Err(Error::Zero("--max-attempts"));
        }
        if self.heartbeat_interval >= self.lease_ttl {
            return Err(Error::HeartbeatNotUnderLease { heartbeat: self.heartbeat_interval, lease: self.lease_ttl });
        }
        Ok(())
    }
}
