//! The agent's command line (clap derive; every flag also reads an environment variable, DataHub's names where
//! they exist). Durations are humantime (`5s`, `2m`).

use std::path::PathBuf;

use clap::Parser;
use outpost_common::telemetry::LogFormat;

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
    /// This agent's worker ID; must match its certificate. When joining: the one asked for (default: the host
    /// name, which is the pod name on Kubernetes).
    #[arg(long, env = "DATAHUB_EXECUTOR_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Pools (DataHub executor IDs) to serve; repeat or separate with commas.
    #[arg(long = "pool", env = "DATAHUB_EXECUTOR_POOL_ID", value_delimiter = ',', required = true)]
    pub pools: Vec<String>,
    /// How many tasks run at once.
    #[arg(long, env = "DATAHUB_EXECUTOR_INGESTION_MAX_WORKERS", default_value_t = 4)]
    pub slots: u32,
    /// This agent's certificate (PEM); without it the agent uses its state directory or joins with a token.
    #[arg(long, env = "OUTPOST_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    #[arg(long, env = "OUTPOST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) the controller's certificate must be signed by.
    #[arg(long, env = "OUTPOST_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    #[command(flatten)]
    pub enroll: crate::enroll::Args,
    #[command(flatten)]
    pub session: crate::session::Timings,
    #[command(flatten)]
    pub runner: crate::runner::Limits,
    #[command(flatten)]
    pub secrets: crate::secrets::Config,
    #[command(flatten)]
    pub venvs: crate::venv::Args,
    /// Per-run working directories go here (default: <tmp>/outpost-agent-<worker-id>).
    #[arg(long, env = "OUTPOST_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Labels shown by the admin API, as KEY=VALUE; repeatable.
    #[arg(long = "label", env = "OUTPOST_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Address for HTTP `/metrics` (Prometheus), `/healthz` and `/readyz`; off when unset.
    #[arg(long, env = "OUTPOST_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A client of `--metrics-listen` that has not sent its request within this time is disconnected.
    #[arg(long, env = "OUTPOST_METRICS_READ_TIMEOUT", value_parser = outpost_common::duration::parse,
          default_value = "10s")]
    pub metrics_read_timeout: std::time::Duration,
    /// How long the agent waits, once its session has ended, for each of its other services to stop (a venv
    /// warm-up under way, the metrics endpoint's open requests).
    #[arg(long, env = "OUTPOST_SHUTDOWN_TIMEOUT", value_parser = outpost_common::duration::parse,
          default_value = "10s")]
    pub shutdown_timeout: std::time::Duration,
    /// Log line format.
    #[arg(long, env = "OUTPOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// The certificate files given on the command line, if any.
    pub fn given_tls(&self) -> Option<outpost_common::tls::TlsFiles> {
        Some(outpost_common::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone()?,
        })
    }

    /// Every group's checks; the first refusal, naming its flag.
    pub fn validate(&self) -> Result<(), outpost_common::duration::Invalid> {
        if self.slots == 0 {
            return Err(outpost_common::duration::Invalid("--slots must be at least 1".into()));
        }
        outpost_common::duration::positive("--metrics-read-timeout", self.metrics_read_timeout)?;
        outpost_common::duration::positive("--shutdown-timeout", self.shutdown_timeout)?;
        self.session.validate()?;
        self.runner.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let base = ["outpost-agent", "--controller", "https://c:1", "--worker-id", "w", "--pool", "p"];
        let base = base.iter().chain(["--tls-cert", "c", "--tls-key", "k", "--tls-ca", "a"].iter());
        let config = Config::try_parse_from(base.chain(args)).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn the_groups_are_the_subsystems_configs_and_refuse_what_cannot_work() {
        let config = parse(&["--secret", "PW=arn:x", "--drain-timeout", "5s", "--max-log-lines", "10"]).unwrap();
        assert_eq!(config.secrets.mappings, [("PW".to_owned(), "arn:x".to_owned())]);
        assert_eq!(config.session.drain_timeout, std::time::Duration::from_secs(5));
        assert_eq!(config.runner.max_log_lines, 10);
        assert_eq!(parse(&["--slots", "0"]).err().as_deref(), Some("--slots must be at least 1"));
        assert_eq!(
            parse(&["--reconnect-min", "2s", "--reconnect-max", "1s"]).err().as_deref(),
            Some("--reconnect-max (1s) must not be shorter than --reconnect-min (2s)")
        );
        assert_eq!(
            parse(&["--connect-timeout", "0s"]).err().as_deref(),
            Some("--connect-timeout must be greater than zero")
        );
    }
}
