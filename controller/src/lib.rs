//! The Outpost controller: takes execution requests in, leases them to agents over mTLS gRPC streams, records
//! attempts and results in SQLite. [`run`] wires the subsystems under one cancellation token and shuts them down
//! in order.

pub mod admin;
pub mod certs;
pub mod config;
pub mod ctl;
pub mod entry;
pub mod gms;
pub mod grpc;
pub mod logs;
pub mod metrics;
pub mod reporter;
pub mod scheduler;
pub mod sources;
pub mod store;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RunConfig;
use crate::logs::LogTails;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// Runs the controller until `token` is cancelled: opens the store, starts the scheduler, the GMS reporter and
/// the KILL-signal poller (when a GMS URL is set), serves gRPC; then stops intake first (gRPC and agent sessions,
/// signal polling), the scheduler next, lets the reporter make a last delivery pass, and closes the store last,
/// waiting for each under the shutdown timeout.
pub async fn run(config: RunConfig, token: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let tls = std::sync::Arc::new(grpc::tls::Reloading::load(config.tls.files())?);
    let reporting = config.gms_url.is_some();
    let store = Store::open(&config.db, reporting).await.with_context(|| format!("opening {}", config.db.display()))?;
    let logs = LogTails::new(config.gms_max_report_bytes);
    let metrics = Metrics::default();
    let scheduler_token = token.child_token();
    let (scheduler, scheduler_task) = Scheduler::start(
        store.clone(),
        scheduler::Config {
            heartbeat_interval: config.heartbeat_interval,
            lease_ttl: config.lease_ttl,
            keepalive_interval: config.keepalive_interval,
            ack_deadline: config.ack_deadline,
            cancel_timeout: config.cancel_timeout,
            sweep_interval: config.sweep_interval,
            task_timeout: config.task_timeout,
            retry: scheduler::RetryPolicy {
                max_attempts: config.max_attempts,
                backoff_base: config.retry_backoff,
                backoff_max: config.retry_backoff_max,
                retry_task_failures: config.retry_task_failures,
            },
        },
        metrics.clone(),
        scheduler_token.clone(),
    )
    .await?;

    let reporter_token = token.child_token();
    let sources_token = token.child_token();
    let mut reporter = None;
    let mut signals = None;
    let gms_client = match &config.gms_url {
        Some(url) => Some(gms::Client::new(url, config.gms_token.clone(), config.gms_timeout)?),
        None => None,
    };
    if let (Some(url), Some(client)) = (&config.gms_url, gms_client.clone()) {
        let reporter_config = reporter::Config {
            progress_interval: config.progress_interval,
            retry_backoff: config.gms_retry_backoff,
            retry_backoff_max: config.gms_retry_backoff_max,
            max_report_bytes: config.gms_max_report_bytes,
            max_structured_bytes: config.gms_max_structured_bytes,
            concurrency: config.gms_concurrency as usize,
        };
        let task =
            reporter::Reporter::new(store.clone(), client.clone(), logs.clone(), metrics.clone(), reporter_config);
        reporter = Some(tokio::spawn(task.run(reporter_token.clone())));
        signals = Some(tokio::spawn(sources::kill_signals::run(
            scheduler.clone(),
            client,
            config.signal_poll_interval,
            sources_token.clone(),
        )));
        info!(gms = %url, "reporting to DataHub GMS");
    } else {
        info!("no --gms-url: results are recorded in SQLite only");
    }
    let queues = config.all_queues()?;
    let mut bridge = None;
    if !queues.is_empty() {
        let sqs_config = sources::sqs::Config {
            queues,
            dead_letter_queue: config.dead_letter_queue.clone(),
            wait: config.sqs_wait,
            visibility_timeout: config.sqs_visibility_timeout,
            keep_interval: config.sqs_keep_interval,
            prefetch: config.sqs_prefetch,
            idle_poll: config.sqs_idle_poll,
            max_message_bytes: config.sqs_max_message_bytes,
            quarantine_max_body_bytes: config.quarantine_max_body_bytes,
            foreign_visibility: config.sqs_foreign_visibility,
            retry_backoff: config.sqs_retry_backoff,
            retry_backoff_max: config.sqs_retry_backoff_max,
        };
        let client = sources::sqs::client(config.sqs_endpoint.as_deref()).await;
        bridge = Some(tokio::spawn(sources::sqs::run(
            sqs_config,
            client,
            store.clone(),
            scheduler.clone(),
            gms_client.clone(),
            metrics.clone(),
            sources_token.clone(),
        )));
    }

    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let bound = listener.local_addr()?;
    info!(addr = %bound, db = %config.db.display(), "controller listening");
    if let Some(path) = &config.listen_addr_file {
        // Written atomically so a reader never sees a half-written address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bound.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }

    let http_token = token.child_token();
    let mut http = None;
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        info!(addr = %listener.local_addr()?, "metrics and health on http");
        let (metrics, store) = (metrics.clone(), store.clone());
        let handler: outpost_common::metrics::Handler = std::sync::Arc::new(move |path: String| {
            let (metrics, store) = (metrics.clone(), store.clone());
            Box::pin(async move { http_answer(&path, &metrics, &store).await })
        });
        http = Some(tokio::spawn(outpost_common::metrics::serve(listener, handler, http_token.clone())));
    }
    metrics.set_ready(true);
    let grpc_token = token.child_token();
    let serve_config = grpc::ServeConfig {
        tls,
        tls_reload_interval: config.tls_reload_interval,
        tls_handshake_timeout: config.tls_handshake_timeout,
        trust_domain: config.trust_domain.clone(),
        hello_timeout: config.hello_timeout,
    };
    let serve = grpc::serve(serve_config, listener, scheduler, logs, metrics.clone(), grpc_token.clone());
    let server = tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });

    token.cancelled().await;
    info!("shutting down");
    metrics.set_ready(false);
    let limit = config.shutdown_timeout;
    // 1. Intake: gRPC (agent sessions, admin) and signal polling.
    grpc_token.cancel();
    sources_token.cancel();
    wait("gRPC server", limit, server).await;
    if let Some(signals) = signals {
        wait("signal poller", limit, signals).await;
    }
    if let Some(bridge) = bridge {
        wait("SQS bridge", limit, bridge).await;
    }
    // 2. The scheduler.
    scheduler_token.cancel();
    wait("scheduler", limit, scheduler_task).await;
    // 3. The reporter's last delivery pass.
    reporter_token.cancel();
    if let Some(reporter) = reporter {
        wait("GMS reporter", limit, reporter).await;
    }
    // 4. Metrics and health, then the store.
    http_token.cancel();
    if let Some(http) = http {
        wait("metrics endpoint", limit, http).await;
    }
    store.close().await;
    info!("stopped");
    Ok(())
}

/// Answers `/metrics`, `/healthz` (the process is up) and `/readyz` (the store answers and gRPC is serving).
async fn http_answer(path: &str, metrics: &Metrics, store: &Store) -> outpost_common::metrics::Answer {
    use outpost_common::metrics::PROMETHEUS_TEXT;
    match path {
        "/metrics" => (200, PROMETHEUS_TEXT, metrics.render(store).await),
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" => match store.ping().await {
            Ok(()) if metrics.is_ready() => (200, "text/plain", "ready\n".to_owned()),
            Ok(()) => (503, "text/plain", "not serving\n".to_owned()),
            Err(e) => (503, "text/plain", format!("store: {e}\n")),
        },
        _ => (404, "text/plain", "not found\n".to_owned()),
    }
}

/// Waits for a subsystem's task to end, at most `limit`.
async fn wait<T>(name: &str, limit: std::time::Duration, task: tokio::task::JoinHandle<T>) {
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(subsystem = name, error = %e, "task failed"),
        Err(_) => warn!(subsystem = name, "did not stop within the shutdown timeout"),
    }
}
