//! The Outpost controller: takes execution requests in, leases them to agents over mTLS gRPC streams, records
//! attempts and results in SQLite. [`run`] wires the subsystems under one cancellation token and shuts them down
//! in order.

pub mod admin;
pub mod certs;
pub mod config;
pub mod ctl;
pub mod entry;
pub mod grpc;
pub mod scheduler;
pub mod sources;
pub mod store;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RunConfig;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// Runs the controller until `token` is cancelled: opens the store, starts the scheduler, serves gRPC; then stops
/// intake first, the scheduler next, and closes the store last, waiting for each.
pub async fn run(config: RunConfig, token: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let tls = config.tls.files().load()?;
    let store = Store::open(&config.db).await.with_context(|| format!("opening {}", config.db.display()))?;
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
            retry: scheduler::RetryPolicy {
                max_attempts: config.max_attempts,
                backoff_base: config.retry_backoff,
                backoff_max: config.retry_backoff_max,
                retry_task_failures: config.retry_task_failures,
            },
        },
        scheduler_token.clone(),
    )
    .await?;

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

    let grpc_token = token.child_token();
    let serve_config =
        grpc::ServeConfig { tls, trust_domain: config.trust_domain.clone(), hello_timeout: config.hello_timeout };
    let server = tokio::spawn(grpc::serve(serve_config, listener, scheduler, grpc_token.clone()));

    token.cancelled().await;
    info!("shutting down");
    // 1. Intake and agent sessions.
    grpc_token.cancel();
    match tokio::time::timeout(config.shutdown_timeout, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "gRPC server task failed"),
        Err(_) => warn!("gRPC server did not stop within the shutdown timeout"),
    }
    // 2. The scheduler.
    scheduler_token.cancel();
    if tokio::time::timeout(config.shutdown_timeout, scheduler_task).await.is_err() {
        warn!("scheduler did not stop within the shutdown timeout");
    }
    // 3. The store.
    store.close().await;
    info!("stopped");
    Ok(())
}
