//! The Outpost controller: takes execution requests in, leases them to agents over mTLS gRPC streams, records
//! attempts and results in SQLite. [`run`] wires the subsystems under one cancellation token and shuts them down
//! in order.

pub(crate) mod admin;
pub(crate) mod aws;
pub mod certs;
pub(crate) mod config;
pub(crate) mod doctor;
pub(crate) mod edge;
pub(crate) mod enroll;
pub mod entry;
pub mod gms;
pub(crate) mod grpc;
pub(crate) mod lifecycle;
pub(crate) mod logs;
pub(crate) mod metrics;
#[cfg(test)]
mod parsers_properties;
pub(crate) mod reporter;
pub(crate) mod scheduler;
pub mod sources;
pub(crate) mod store;
pub(crate) mod supervisor;
pub(crate) mod trust;
pub(crate) mod ui;

use std::sync::{Arc, OnceLock};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::RunConfig;
use crate::logs::LogTails;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::supervisor::Supervisor;

/// Runs the controller until `token` is cancelled, or until a critical subsystem stops on its own (then it
/// returns that as the error, for a non-zero exit). Health comes up first (`/readyz` answers 503 until gRPC
/// serves); then the store, the scheduler, the GMS reporter and KILL-signal poller (with a GMS URL), the SQS
/// bridge, and the gRPC server, each supervised. Shutdown is ordered, each step awaited under the shutdown
/// timeout: intake first (gRPC and agent sessions, signal polling, SQS), the scheduler next (its last turn is
/// committed), the reporter's last delivery pass, health, and the store last. Each subsystem has its own token,
/// cancelled in that order (a child of the root would stop with it, all at once).
pub async fn run(config: RunConfig, token: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let metrics = Metrics::default();
    let opened: Arc<OnceLock<Store>> = Arc::new(OnceLock::new());
    let mut services = Supervisor::default();
    let http_token = CancellationToken::new();
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        info!(addr = %listener.local_addr()?, "metrics and health on http");
        let router = outpost_common::metrics::router(probes(metrics.clone(), opened.clone()));
        let serve =
            outpost_common::http::serve(listener, router, config.metrics_read_timeout, None, http_token.clone());
        services.spawn("metrics endpoint", false, async move {
            serve.await;
            Ok::<(), String>(())
        });
    }
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let trust = config.trust.resolve(&config.db, &config.grpc.trust_domain)?;
    let tls = Arc::new(grpc::tls::Reloading::load(trust.files.clone())?.counted(metrics.clone(), "grpc"));
    metrics.watch_controller_certificate(trust.files.cert.clone());
    let gms_client = config.gms.client()?;
    if let Some(client) = &gms_client
        && !config.gms_channel.pools.is_empty()
    {
        sources::gms_channel::check_server(client).await.map_err(anyhow::Error::msg)?;
    }
    let store = Store::open(&config.db, gms_client.is_some())
        .await
        .with_context(|| format!("opening {}", config.db.display()))?;
    let _ = opened.set(store.clone());
    let writer = store.clone();
    services.spawn("SQLite writer", true, async move { writer.writer_stopped().await });
    let logs = LogTails::new(config.reporter.max_report_bytes, config.reporter.log_tails_max_bytes);
    let logins = ui::Logins::new(store.clone(), config.ui.ui_session_ttl);

    let scheduler_token = CancellationToken::new();
    let (scheduler, engine) =
        Scheduler::start(store.clone(), config.scheduler.clone(), metrics.clone(), scheduler_token.clone()).await?;
    services.watch("scheduler", true, engine);

    let reporter_token = CancellationToken::new();
    let sources_token = CancellationToken::new();
    let mut claims = None;
    match &gms_client {
        Some(client) => {
            let holder = store.controller_id(controller_id()).await.context("reading the controller's identity")?;
            let claim_ttl = config.gms_channel.claim_ttl;
            claims = Some(Arc::new(sources::claims::Claims::start(client.clone(), holder.clone(), claim_ttl).await));
            let reporter = reporter::Reporter::new(
                store.clone(),
                reporter::Destination { gms: client.clone(), holder, claim_ttl },
                logs.clone(),
                metrics.clone(),
                config.reporter.clone(),
            );
            services.spawn("GMS reporter", true, reporter.run(reporter_token.clone()));
            let signals = sources::kill_signals::run(
                scheduler.clone(),
                store.clone(),
                client.clone(),
                config.gms.signal_poll_interval,
                sources_token.clone(),
            );
            services.spawn("KILL-signal poller", true, signals);
            info!(gms = config.gms.url.as_deref().unwrap_or_default(), "reporting to DataHub GMS");
        }
        None => info!("no --gms-url: results are recorded in SQLite only"),
    }
    let intake = sources::Intake {
        store: store.clone(),
        scheduler: scheduler.clone(),
        gms: gms_client.clone(),
        claims: claims.clone(),
        metrics: metrics.clone(),
    };
    if !config.sqs.all_queues().is_empty() || !config.sqs.gms_pools(gms_client.is_some()).is_empty() {
        let client = sources::sqs::client(config.sqs.endpoint.as_deref()).await;
        let bridge = sources::sqs::run(config.sqs.clone(), client, intake.clone(), sources_token.clone());
        services.spawn("SQS bridge", true, bridge);
    }
    if let (Some(client), Some(claims)) = (&gms_client, &claims)
        && !config.gms_channel.pools.is_empty()
    {
        let channel = sources::gms_channel::run(
            config.gms_channel.clone(),
            client.clone(),
            claims.clone(),
            scheduler.clone(),
            store.clone(),
            metrics.clone(),
            sources_token.clone(),
        );
        services.spawn("GMS channel", true, channel);
    }

    let bound = listener.local_addr()?;
    info!(addr = %bound, db = %config.db.display(), "controller listening");
    if let Some(path) = &config.listen_addr_file {
        // Written atomically so a reader never sees a half-written address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bound.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    let status_token = CancellationToken::new();
    if let Some(client) = &gms_client {
        let pools = config.sqs.gms_pools(true);
        if !pools.is_empty() {
            let nonce = (0..8).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
            let instance = reporter::executors::Instance {
                address: bound.to_string(),
                hostname: reporter::executors::hostname(),
                nonce,
            };
            let timing = reporter::executors::Timing {
                interval: config.gms.executor_status_interval,
                retry_backoff: config.reporter.retry_backoff,
                retry_backoff_max: config.reporter.retry_backoff_max,
            };
            let status = reporter::executors::run(client.clone(), pools, instance, timing, status_token.clone());
            services.spawn("executor status", false, status);
        }
    }
    let grpc_token = CancellationToken::new();
    let ca_key = config.enroll.ca_key.clone().or_else(|| trust.own_ca_key().map(|p| p.to_string_lossy().into_owned()));
    let authority = match &ca_key {
        Some(source) => {
            let key = enroll::read_ca_key(source).await?;
            Some(enroll::Authority::load(&trust.files.ca, &key, source)?)
        }
        None => None,
    };
    if let Some(own) = trust.own.clone() {
        let renew = own.renew(config.trust.own_cert_check_interval, grpc_token.clone());
        services.spawn("certificate renewal", false, async move {
            renew.await;
            Ok::<(), String>(())
        });
    }
    let enrollment = enroll::Enrollment::new(
        store.clone(),
        scheduler.clone(),
        authority,
        config.grpc.trust_domain.clone(),
        config.enroll.agent_cert_ttl,
    );
    let join_tls = match config.enroll.join_listen {
        Some(_) => Some(Arc::new(
            grpc::tls::Reloading::load_with(
                trust.files.clone(),
                outpost_common::tls::TlsMaterial::rustls_join_server_config,
            )?
            .counted(metrics.clone(), "join"),
        )),
        None => None,
    };
    // A CA rotation step changes the files: both listeners read them again at once.
    let reload_tls: Arc<dyn Fn() + Send + Sync> = {
        let (tls, join_tls) = (tls.clone(), join_tls.clone());
        Arc::new(move || {
            tls.reload_if_changed();
            if let Some(join_tls) = &join_tls {
                join_tls.reload_if_changed();
            }
        })
    };
    let ca = enroll::CaRotation::new(trust.own.clone(), enrollment.clone(), config.enroll.ca_overlap, reload_tls);
    let overlap = ca.clone().run(config.enroll.ca_check_interval, grpc_token.clone());
    services.spawn("CA overlap", false, async move {
        overlap.await;
        Ok::<(), String>(())
    });
    // The pools served from outside: the bootstrap token's pool when none is named.
    let served: Vec<outpost_common::ids::PoolId> = (config.sqs.all_queues().into_iter().map(|(pool, _)| pool))
        .chain(config.sqs.gms_pools(gms_client.is_some()))
        .chain(config.gms_channel.pools.iter().cloned())
        .collect();
    enrollment.bootstrap(&config.enroll, &served).await?;
    if let (Some(addr), Some(tls)) = (config.enroll.join_listen, join_tls) {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        info!(addr = %listener.local_addr()?, "joining served (TLS, no client certificate)");
        let timing = (config.grpc.tls_handshake_timeout, config.grpc.tls_reload_interval);
        let join = grpc::join_service::serve(listener, tls, timing, enrollment.clone(), grpc_token.clone());
        services.spawn("join listener", true, join);
    }
    let retain = admin::retain(store.clone(), config.audit.clone(), grpc_token.clone());
    services.spawn("audit retention", false, async move {
        retain.await;
        Ok::<(), String>(())
    });
    let sweep =
        grpc::sweep_tails(store.clone(), logs.clone(), config.reporter.log_tails_sweep_interval, grpc_token.clone());
    services.spawn("log tails sweep", false, sweep);
    let ui_token = CancellationToken::new();
    if let Some(addr) = config.ui.ui_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let tls = match config.ui.ui_tls {
            true => Some(trust.files.load()?.rustls_web_server_config()?),
            false => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!(url = %format!("{scheme}://{}", listener.local_addr()?), "status page served");
        let page = ui::Ui {
            scheduler: scheduler.clone(),
            enrollment: enrollment.clone(),
            logs: logs.clone(),
            logins: logins.clone(),
            datahub_url: config.ui.datahub_url.clone(),
            refresh: config.ui.ui_refresh_interval,
            secure: tls.is_some(),
            metrics: metrics.clone(),
            store: store.clone(),
            login_limit: ui::LoginLimiter::new(
                config.ui.ui_login_attempts_per_address,
                config.ui.ui_login_attempts_total,
                config.ui.ui_login_window,
            ),
        };
        let serve = ui::serve(listener, page, config.ui.ui_read_timeout, tls, ui_token.clone());
        services.spawn("status page", false, serve);
    }
    let ready = metrics.clone();
    let serving = move || ready.set_ready(true);
    let serve = grpc::serve(
        config.grpc,
        tls,
        listener,
        serving,
        grpc::Cores { scheduler, enrollment, logs, logins, metrics: metrics.clone(), store: store.clone(), ca },
        grpc_token.clone(),
    );
    services.spawn("gRPC server", true, serve);

    let failed = tokio::select! {
        biased;
        _ = token.cancelled() => None,
        failed = services.failed() => Some(failed),
    };
    metrics.set_ready(false);
    match &failed {
        Some(failed) => error!(service = failed.name, reason = %failed.reason, "a subsystem stopped; shutting down"),
        None => info!("shutting down"),
    }
    let limit = config.shutdown_timeout;
    // 1. Intake: gRPC (agent sessions, admin), signal polling, SQS; the executor status says it stopped.
    grpc_token.cancel();
    ui_token.cancel();
    sources_token.cancel();
    status_token.cancel();
    for name in [
        "gRPC server",
        "log tails sweep",
        "join listener",
        "KILL-signal poller",
        "SQS bridge",
        "GMS channel",
        "executor status",
    ] {
        services.stopped(name, limit).await;
    }
    // 2. The scheduler (it commits its last turn).
    scheduler_token.cancel();
    services.stopped("scheduler", limit).await;
    // 3. The reporter's last delivery pass.
    reporter_token.cancel();
    services.stopped("GMS reporter", limit).await;
    // 4. Health, then the store.
    http_token.cancel();
    services.stopped("metrics endpoint", limit).await;
    store.close().await;
    info!("stopped");
    match failed {
        Some(failed) => Err(failed.into()),
        None => Ok(()),
    }
}

/// A crash point of the test build: with the `failpoints` feature and `FAILPOINTS=<name>=return` (or
/// `1*return`: the first time only), the controller aborts right there, as a power cut would stop it. Compiles to
/// nothing without the feature; inert unless a test configures it.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| {
            eprintln!("outpost-controller: crash point {} reached: aborting", $name);
            std::process::abort()
        })
    };
}

/// A fresh name for this controller at GMS (kept in the database from then on): host name and a random part.
fn controller_id() -> String {
    let random: String = (0..8).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
    format!("{}-{random}", reporter::executors::hostname())
}

/// The probes of `/metrics` and `/readyz` (gRPC serves and the store answers); `/healthz` says the process is up.
fn probes(metrics: Metrics, opened: Arc<OnceLock<Store>>) -> outpost_common::metrics::Probes {
    let (scraped, ready_metrics, ready_store) = (metrics.clone(), metrics, opened.clone());
    outpost_common::metrics::Probes {
        exposition: Arc::new(move || {
            let (metrics, store) = (scraped.clone(), opened.get().cloned());
            Box::pin(async move {
                match store {
                    Some(store) => metrics.render(&store).await,
                    None => "# the store is not open yet\n# EOF\n".to_owned(),
                }
            })
        }),
        ready: Arc::new(move || {
            let (metrics, store) = (ready_metrics.clone(), ready_store.get().cloned());
            Box::pin(async move {
                let Some(store) = store else { return (false, "starting: the store is not open yet".to_owned()) };
                match store.ping().await {
                    Ok(()) if metrics.is_ready() => (true, "ready".to_owned()),
                    Ok(()) => (false, "not serving".to_owned()),
                    Err(e) => (false, format!("store: {e}")),
                }
            })
        }),
    }
}
