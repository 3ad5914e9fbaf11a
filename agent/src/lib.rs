//! The Outpost agent: dials the controller over mTLS, announces free slots, runs assigned DataHub tasks with the
//! real `datahub` CLI and reports their results. [`run`] is the whole agent; `main` only parses and wires signals.

pub mod config;
pub mod entry;
pub mod metrics;
pub mod runner;
pub mod secrets;
pub mod session;
pub mod venv;

use anyhow::Context;
use outpost_common::ids::{PoolId, WorkerId};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::config::Config;
use crate::runner::{ProcessConfig, Runner};
use crate::session::SessionConfig;
use crate::venv::Venvs;

/// Runs the agent until `shutdown` is cancelled and its work is finished or handed back.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let worker_id = WorkerId::parse(&config.worker_id).context("--worker-id")?;
    let pools =
        config.pools.iter().map(|p| PoolId::parse(p.trim())).collect::<Result<Vec<_>, _>>().context("--pool")?;
    anyhow::ensure!(config.slots > 0, "--slots must be at least 1");
    let labels = config
        .labels
        .iter()
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect::<Option<_>>()
        .context("--label must be KEY=VALUE")?;
    let tls_files = config.tls.files();
    let tls = tls_files.load()?;
    let server_name = match &config.tls_server_name {
        Some(name) => name.clone(),
        None => outpost_common::tls::server_name_of(&config.controller)
            .context("--controller must look like https://HOST:PORT")?,
    };
    let work_dir =
        config.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("outpost-agent-{worker_id}")));
    std::fs::create_dir_all(&work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let secrets_config = secrets::Config {
        dir: config.secrets_dir.clone(),
        max_file_bytes: config.secret_max_file_bytes,
        mappings: config.secrets.iter().cloned().collect(),
        prefix: config.secret_prefix.clone(),
        cache_ttl: config.secret_cache_ttl,
    };
    let secrets_manager = if secrets::Resolver::uses_secrets_manager(&secrets_config) {
        Some(secrets::secrets_manager_client(config.secrets_manager_endpoint.as_deref()).await)
    } else {
        None
    };
    let venvs = Venvs::new(config.datahub_cli.clone(), config.venv_root.clone(), config.venv_python.clone());
    let (runner, events) = Runner::new(ProcessConfig {
        worker_id: worker_id.to_string(),
        venvs: Arc::new(venvs),
        secrets: Arc::new(secrets::Resolver::new(secrets_config, secrets_manager)),
        work_dir,
        cancel_grace: config.cancel_grace,
        output_drain_timeout: config.output_drain_timeout,
        max_log_lines: config.max_log_lines,
        max_line_chars: config.max_line_chars,
        max_report_chars: config.max_report_bytes,
    });
    let session = SessionConfig {
        controller: config.controller.clone(),
        server_name,
        tls_files,
        tls,
        worker_id,
        pools,
        slots: config.slots,
        labels,
        drain_timeout: config.drain_timeout,
        reconnect_min: config.reconnect_min,
        reconnect_max: config.reconnect_max,
        connect_timeout: config.connect_timeout,
    };
    let metrics = metrics::Metrics::default();
    metrics.set_slots(config.slots);
    let http_stop = CancellationToken::new();
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let answering = metrics.clone();
        let handler: outpost_common::metrics::Handler = Arc::new(move |path: String| {
            let answer = answering.answer(&path);
            Box::pin(async move { answer })
        });
        tokio::spawn(outpost_common::metrics::serve(listener, handler, http_stop.clone()));
    }
    let result = session::run(session, runner, events, metrics, shutdown).await;
    http_stop.cancel();
    result?;
    Ok(())
}
