//! The agent's command line (clap derive; every flag also reads an environment variable, DataHub's names where
//! they exist). Durations are humantime (`5s`, `2m`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use outpost_common::duration;
use outpost_common::telemetry::LogFormat;
use outpost_common::tls::TlsArgs;

/// `NAME=ARN`.
fn parse_secret(value: &str) -> Result<(String, String), String> {
    let (name, id) = value.split_once('=').ok_or_else(|| format!("{value:?} is not NAME=ARN"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return Err(format!("{name:?} is not a secret name (word characters only)"));
    }
    if id.is_empty() {
        return Err(format!("secret {name} has no ARN"));
    }
    Ok((name.to_owned(), id.to_owned()))
}

#[derive(Clone, Debug, Parser)]
#[command(
    name = "outpost-agent",
    version,
    about = "Outpost agent: pulls DataHub ingestion work from a controller and runs it"
)]
pub struct Config {
    /// The controller's gRPC address, e.g. https://controller:7443.
    #[arg(long, env = "OUTPOST_CONTROLLER")]
    pub controller: String,
    /// The name the controller's certificate must carry (default: the host of --controller).
    #[arg(long, env = "OUTPOST_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// This agent's worker ID; must match its certificate.
    #[arg(long, env = "DATAHUB_EXECUTOR_WORKER_ID")]
    pub worker_id: String,
    /// Pools (DataHub executor IDs) to serve; repeat or separate with commas.
    #[arg(long = "pool", env = "DATAHUB_EXECUTOR_POOL_ID", value_delimiter = ',', required = true)]
    pub pools: Vec<String>,
    /// How many tasks run at once.
    #[arg(long, env = "DATAHUB_EXECUTOR_INGESTION_MAX_WORKERS", default_value_t = 4)]
    pub slots: u32,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// The `datahub` executable (default: `datahub` on PATH).
    #[arg(long, env = "OUTPOST_DATAHUB_CLI", default_value = "datahub")]
    pub datahub_cli: PathBuf,
    /// Where per-version virtualenvs are built and cached; without it every task uses --datahub-cli.
    #[arg(long, env = "OUTPOST_VENV_ROOT")]
    pub venv_root: Option<PathBuf>,
    /// The Python interpreter new virtualenvs are made from.
    #[arg(long, env = "OUTPOST_VENV_PYTHON", default_value = "python3")]
    pub venv_python: PathBuf,
    /// A directory of secret files: `${NAME}` resolves to the content of NAME (trailing whitespace stripped).
    #[arg(long, env = "DATAHUB_EXECUTOR_FILE_SECRET_BASEDIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Secret files larger than this are refused.
    #[arg(long, env = "DATAHUB_EXECUTOR_FILE_SECRET_MAXLEN", default_value_t = 1024 * 1024)]
    pub secret_max_file_bytes: u64,
    /// A secret in AWS Secrets Manager, as NAME=ARN (or NAME=secret-name); repeatable.
    #[arg(long = "secret", env = "OUTPOST_SECRETS", value_delimiter = ',', value_parser = parse_secret)]
    pub secrets: Vec<(String, String)>,
    /// Look names without a NAME=ARN mapping up in Secrets Manager as <prefix><NAME>.
    #[arg(long, env = "OUTPOST_SECRET_PREFIX")]
    pub secret_prefix: Option<String>,
    /// How long a Secrets Manager value is reused before it is read again (rotation needs no restart).
    #[arg(long, env = "OUTPOST_SECRET_CACHE_TTL", value_parser = duration::parse, default_value = "60s")]
    pub secret_cache_ttl: Duration,
    /// Secrets Manager endpoint override; otherwise the AWS default chain decides.
    #[arg(long, env = "OUTPOST_SECRETS_MANAGER_ENDPOINT")]
    pub secrets_manager_endpoint: Option<String>,
    /// Per-run working directories go here (default: <tmp>/outpost-agent-<worker-id>).
    #[arg(long, env = "OUTPOST_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Labels shown by the admin API, as KEY=VALUE; repeatable.
    #[arg(long = "label", env = "OUTPOST_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// On SIGTERM: how long running work may finish before it is stopped and handed back.
    #[arg(long, env = "OUTPOST_DRAIN_TIMEOUT", value_parser = duration::parse, default_value = "150s")]
    pub drain_timeout: Duration,
    /// On cancel: SIGTERM to the process group, then SIGKILL after this grace.
    #[arg(long, env = "OUTPOST_CANCEL_GRACE", value_parser = duration::parse, default_value = "30s")]
    pub cancel_grace: Duration,
    /// How long to keep reading a run's output after the CLI exited.
    #[arg(long, env = "OUTPOST_OUTPUT_DRAIN_TIMEOUT", value_parser = duration::parse, default_value = "2s")]
    pub output_drain_timeout: Duration,
    /// Shortest wait before reconnecting.
    #[arg(long, env = "OUTPOST_RECONNECT_MIN", value_parser = duration::parse, default_value = "200ms")]
    pub reconnect_min: Duration,
    /// Longest wait before reconnecting (jittered, exponential in between).
    #[arg(long, env = "OUTPOST_RECONNECT_MAX", value_parser = duration::parse, default_value = "30s")]
    pub reconnect_max: Duration,
    /// Timeout for establishing the connection.
    #[arg(long, env = "OUTPOST_CONNECT_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Lines of output kept per run for the report.
    #[arg(long, env = "OUTPOST_MAX_LOG_LINES", default_value_t = 2000)]
    pub max_log_lines: usize,
    /// Characters kept per output line.
    #[arg(long, env = "OUTPOST_MAX_LINE_CHARS", default_value_t = 4096)]
    pub max_line_chars: usize,
    /// Cap on the report text of one run, in bytes.
    #[arg(long, env = "OUTPOST_MAX_REPORT_BYTES", default_value_t = 1024 * 1024)]
    pub max_report_bytes: usize,
    /// Address for HTTP `/metrics` (Prometheus), `/healthz` and `/readyz`; off when unset.
    #[arg(long, env = "OUTPOST_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log line format.
    #[arg(long, env = "OUTPOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}
