//! The controller's command line (clap derive; every flag also reads an environment variable). Durations are
//! humantime (`5s`, `2m`). Validated once, here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use outpost_common::duration;
use outpost_common::identity::DEFAULT_TRUST_DOMAIN;
use outpost_common::ids::PoolId;
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
    /// Address for HTTP `/metrics` (Prometheus), `/healthz` and `/readyz`; off when unset.
    #[arg(long, env = "OUTPOST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
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
    /// How often the TLS certificate, key and CA files are checked for changes (a rotation needs no restart).
    #[arg(long, env = "OUTPOST_TLS_RELOAD_INTERVAL", value_parser = duration::parse, default_value = "30s")]
    pub tls_reload_interval: Duration,
    /// A TLS handshake not finished within this time is dropped.
    #[arg(long, env = "OUTPOST_TLS_HANDSHAKE_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub tls_handshake_timeout: Duration,
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
    /// Stop a run still going after this long; it ends TIMED_OUT (unset: no limit, as in DataHub).
    #[arg(long, env = "OUTPOST_TASK_TIMEOUT", value_parser = duration::parse)]
    pub task_timeout: Option<Duration>,
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
    /// How many GMS writes may be in flight at once (writes of one task are always sent one after another).
    #[arg(long, env = "OUTPOST_GMS_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub gms_concurrency: u32,
    /// Cap on the report text sent to GMS (longer ones are cut in the middle, with a marker).
    #[arg(long, env = "OUTPOST_GMS_MAX_REPORT_BYTES", default_value_t = 1024 * 1024)]
    pub gms_max_report_bytes: usize,
    /// Cap on the structured report sent to GMS (a larger one is left out, and the report says so).
    #[arg(long, env = "OUTPOST_GMS_MAX_STRUCTURED_BYTES", default_value_t = 800 * 1000)]
    pub gms_max_structured_bytes: usize,
    /// An SQS queue and the pool (DataHub executor ID) its requests are for, as POOL=URL; repeatable.
    #[arg(long = "queue", env = "OUTPOST_QUEUES", value_delimiter = ',', value_parser = parse_queue)]
    pub queues: Vec<(PoolId, String)>,
    /// The SQS queue of the pool named by --pool-id (DataHub's single-queue style).
    #[arg(long, env = "OUTPOST_QUEUE_URL", requires = "pool_id")]
    pub queue_url: Option<String>,
    /// The pool of --queue-url.
    #[arg(long, env = "DATAHUB_EXECUTOR_POOL_ID")]
    pub pool_id: Option<String>,
    /// SQS endpoint override (e.g. a local SQS API); otherwise the AWS default chain decides.
    #[arg(long, env = "OUTPOST_SQS_ENDPOINT")]
    pub sqs_endpoint: Option<String>,
    /// Unusable messages are copied here before they are deleted (they are always quarantined in SQLite).
    #[arg(long, env = "OUTPOST_DEAD_LETTER_QUEUE")]
    pub dead_letter_queue: Option<String>,
    /// Long-poll wait of an SQS receive (at most 20 s).
    #[arg(long, env = "OUTPOST_SQS_WAIT", value_parser = duration::parse, default_value = "20s")]
    pub sqs_wait: Duration,
    /// Visibility timeout set on receive and renewed while a task lives.
    #[arg(long, env = "OUTPOST_SQS_VISIBILITY_TIMEOUT", value_parser = duration::parse, default_value = "60s")]
    pub sqs_visibility_timeout: Duration,
    /// How often held messages' visibility is renewed (under the visibility timeout).
    #[arg(long, env = "OUTPOST_SQS_KEEP_INTERVAL", value_parser = duration::parse, default_value = "20s")]
    pub sqs_keep_interval: Duration,
    /// Messages taken beyond the pool's free agent slots.
    #[arg(long, env = "OUTPOST_SQS_PREFETCH", default_value_t = 1)]
    pub sqs_prefetch: u32,
    /// How often a pool without free slots checks again before receiving.
    #[arg(long, env = "OUTPOST_SQS_IDLE_POLL", value_parser = duration::parse, default_value = "500ms")]
    pub sqs_idle_poll: Duration,
    /// Message bodies longer than this are quarantined.
    #[arg(long, env = "OUTPOST_SQS_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024)]
    pub sqs_max_message_bytes: usize,
    /// How much of a quarantined body is kept.
    #[arg(long, env = "OUTPOST_QUARANTINE_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub quarantine_max_body_bytes: usize,
    /// Visibility given back to a message for a pool no queue here serves (0 = at once).
    #[arg(long, env = "OUTPOST_SQS_FOREIGN_VISIBILITY", value_parser = duration::parse, default_value = "0s")]
    pub sqs_foreign_visibility: Duration,
    /// First backoff after an SQS error (doubled per failure, jittered).
    #[arg(long, env = "OUTPOST_SQS_RETRY_BACKOFF", value_parser = duration::parse, default_value = "1s")]
    pub sqs_retry_backoff: Duration,
    /// Longest backoff after SQS errors.
    #[arg(long, env = "OUTPOST_SQS_RETRY_BACKOFF_MAX", value_parser = duration::parse, default_value = "30s")]
    pub sqs_retry_backoff_max: Duration,
    /// How long shutdown waits for each subsystem.
    #[arg(long, env = "OUTPOST_SHUTDOWN_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub shutdown_timeout: Duration,
}

/// `POOL=URL`.
fn parse_queue(value: &str) -> Result<(PoolId, String), String> {
    let (pool, url) = value.split_once('=').ok_or_else(|| format!("{value:?} is not POOL=URL"))?;
    let pool = PoolId::parse(pool.trim()).map_err(|e| e.to_string())?;
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!("{url:?} is not a queue URL"));
    }
    Ok((pool, url.trim().to_owned()))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("--heartbeat-interval ({heartbeat:?}) must be shorter than --lease-ttl ({lease:?})")]
    HeartbeatNotUnderLease { heartbeat: Duration, lease: Duration },
    #[error("--sqs-keep-interval ({keep:?}) must be shorter than --sqs-visibility-timeout ({visibility:?})")]
    KeepNotUnderVisibility { keep: Duration, visibility: Duration },
    #[error("--sqs-wait must be at most 20s (SQS's limit), not {0:?}")]
    WaitTooLong(Duration),
    #[error("--pool-id: {0}")]
    PoolId(outpost_common::ids::Error),
}

impl RunConfig {
    /// Every (pool, queue URL): the --queue pairs plus --pool-id/--queue-url.
    pub fn all_queues(&self) -> Result<Vec<(PoolId, String)>, Error> {
        let mut queues = self.queues.clone();
        if let (Some(url), Some(pool)) = (&self.queue_url, &self.pool_id) {
            queues.push((PoolId::parse(pool).map_err(Error::PoolId)?, url.clone()));
        }
        Ok(queues)
    }

    pub fn validate(&self) -> Result<(), Error> {
        for (name, value) in [
            ("--heartbeat-interval", self.heartbeat_interval),
            ("--lease-ttl", self.lease_ttl),
            ("--keepalive-interval", self.keepalive_interval),
            ("--hello-timeout", self.hello_timeout),
            ("--tls-reload-interval", self.tls_reload_interval),
            ("--tls-handshake-timeout", self.tls_handshake_timeout),
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
        if self.sqs_keep_interval >= self.sqs_visibility_timeout {
            return Err(Error::KeepNotUnderVisibility {
                keep: self.sqs_keep_interval,
                visibility: self.sqs_visibility_timeout,
            });
        }
        if self.sqs_wait > Duration::from_secs(20) {
            return Err(Error::WaitTooLong(self.sqs_wait));
        }
        if self.heartbeat_interval >= self.lease_ttl {
            return Err(Error::HeartbeatNotUnderLease { heartbeat: self.heartbeat_interval, lease: self.lease_ttl });
        }
        Ok(())
    }
}
