//! The Outpost agent: dials the controller over mTLS, announces free slots, runs assigned DataHub tasks with the
//! real `datahub` CLI and reports their results. [`run`] is the whole agent; `main` only parses and wires signals.

pub mod config;
pub mod enroll;
pub mod entry;
pub mod metrics;
pub mod runner;
pub mod secrets;
pub mod session;
mod trust;
pub mod venv;

use anyhow::Context;
use outpost_common::ids::{PoolId, WorkerId};
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::config::Config;
use crate::runner::{ProcessConfig, Runner};
use crate::session::SessionConfig;
use crate::venv::Venvs;
use outpost_common::supervisor::Supervisor;

/// Runs the agent until `shutdown` is cancelled and its work is finished or handed back.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let asked = config.worker_id.clone().or_else(|| config.given_tls().is_none().then(hostname));
    let server_name = match &config.tls_server_name {
        Some(name) => name.clone(),
        None => outpost_common::tls::server_name_of(&config.controller)
            .context("--controller must look like https://HOST:PORT")?,
    };
    let join = |again| {
        enroll::credentials(
            &config.enroll,
            config.given_tls(),
            asked.as_deref(),
            &config.pools,
            &config.controller,
            again,
        )
    };
    let mut credentials = join(false).await?;
    // A certificate kept from an earlier join is useless if the controller's CA was rotated while the agent was away.
    let timeout = config.session.connect_timeout;
    if credentials.from_earlier_join
        && trust::controller_untrusted(&credentials.files, &config.controller, &server_name, timeout).await?
    {
        if !config.enroll.has_token() {
            return Err(session::Error::Untrusted("seen before connecting".into()).into());
        }
        tracing::warn!("the controller's CA was rotated while this agent was away: joining again with the join token");
        credentials = join(true).await?;
    }
    let worker_id: WorkerId = credentials.worker.clone();
    let pools =
        config.pools.iter().map(|p| PoolId::parse(p.trim())).collect::<Result<Vec<_>, _>>().context("--pool")?;
    let labels = config
        .labels
        .iter()
        .map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect::<Option<_>>()
        .context("--label must be KEY=VALUE")?;
    let tls_files = credentials.files.clone();
    let tls = tls_files.load()?;
    let work_dir =
        config.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("outpost-agent-{worker_id}")));
    std::fs::create_dir_all(&work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let secrets_manager = if secrets::Resolver::uses_secrets_manager(&config.secrets) {
        Some(secrets::secrets_manager_client(config.secrets.secrets_manager_endpoint.as_deref()).await)
    } else {
        None
    };
    let metrics = metrics::Metrics::default();
    let warm = config.venvs.warm.clone();
    let venvs = Venvs::new(config.venvs, metrics.clone());
    venvs.check_root()?;
    let venvs = Arc::new(venvs);
    venvs.refresh().await;
    // Every task the agent starts besides its session is supervised, and awaited when it stops.
    let mut services = Supervisor::<Phase>::default();
    let (warm_asked, asked) = tokio::sync::mpsc::unbounded_channel();
    for spec in warm {
        let _ = warm_asked.send(spec);
    }
    let warm_ups = venvs.clone().warm_ups(asked, services.token(Phase::Work));
    services.spawn("venv warm-ups", false, Phase::Work, warm_ups);
    let (runner, events) = Runner::new(ProcessConfig {
        worker_id: worker_id.to_string(),
        venvs: venvs.clone(),
        secrets: Arc::new(secrets::Resolver::new(config.secrets, secrets_manager)),
        work_dir,
        limits: config.runner,
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
        timings: config.session,
    };
    metrics.set_slots(config.slots);
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let router = outpost_common::metrics::router(metrics.probes());
        let timeout = config.metrics_read_timeout;
        let serve = outpost_common::http::serve(listener, router, timeout, None, services.token(Phase::Health));
        services.spawn("metrics endpoint", false, Phase::Health, serve);
    }
    let venvs = (venvs.as_ref(), warm_asked);
    let result = session::run(session, credentials.renewal, runner, events, venvs, metrics, shutdown).await;
    // The session has ended (its work finished or handed back): warm-ups, then health, each awaited.
    for phase in [Phase::Work, Phase::Health] {
        services.stop(phase, config.shutdown_timeout).await;
    }
    result?;
    Ok(())
}

/// When the agent's services stop, after its session has ended: its own work first, then its health endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Venv warm-ups (builds under way are waited for, up to `--shutdown-timeout`).
    Work,
    /// `/metrics` and the health probes.
    Health,
}

/// The host name (the pod name on Kubernetes): the worker id an agent asks for when joining without --worker-id.
fn hostname() -> String {
    let name = outpost_common::host::name().unwrap_or_default();
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' { c } else { '-' })
        .collect();
    if cleaned.is_empty() { "agent".to_owned() } else { cleaned }
}
