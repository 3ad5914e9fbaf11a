//! [`run`]: the controller's subsystems, each started by a function here from its flags and the pieces it needs,
//! under one [`Supervisor`] whose phases stop them in order. Wiring only: nothing here decides anything about
//! tasks, and every task it starts is supervised and awaited at shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::RunConfig;
use crate::logs::LogTails;
use crate::metrics::{Listener, Metrics};
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::supervisor::{Failed, Phase, Supervisor};
use crate::trust::Trust;
use crate::{admin, enroll, gms, grpc, reporter, sources, ui};

/// Runs the controller until `token` is cancelled, or until a critical subsystem stops on its own (then it
/// returns that as the error, for a non-zero exit). Health comes up first (`/readyz` answers 503 until gRPC
/// serves); then the store, the scheduler, the GMS reporter and KILL-signal poller (with a GMS URL), the intake
/// (SQS, GMS channels), enrollment, the status page and the gRPC server. Shutdown stops the supervisor's phases in
/// order, each awaited under the shutdown timeout: intake first (gRPC and agent sessions, the page, signal
/// polling, SQS), the scheduler next (its last turn is committed), the reporter's last delivery pass, health, and
/// the store last.
pub async fn run(config: RunConfig, token: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let metrics = Metrics::default();
    let mut services = Supervisor::default();
    let opened = health(&config, &metrics, &mut services).await?;
    let listener = bind(config.listen).await?;
    let trust = config.trust.resolve(&config.db, &config.grpc.trust_domain)?;
    let tls = Arc::new(grpc::tls::Reloading::load(trust.files.clone())?.counted(metrics.clone(), Listener::Grpc));
    metrics.watch_controller_certificate(trust.files.cert.clone());
    let gms = gms_client(&config).await?;
    let core = Core::start(&config, gms.is_some(), metrics, &opened, &mut services).await?;
    let claims = reporting(&config, &core, gms.as_ref(), &mut services).await?;
    intake(&config, &core, gms.as_ref(), claims, &mut services).await;
    let bound = announce(&config, &listener)?;
    executor_status(&config, gms.as_ref(), bound, &mut services);
    let (enrollment, ca) = enrollment(&config, &core, &trust, &tls, gms.is_some(), &mut services).await?;
    housekeeping(&config, &core, &mut services);
    status_page(&config, &core, &trust, &enrollment, &mut services).await?;
    grpc_server(&config, tls, listener, &core, enrollment, ca, &mut services);
    let failed = supervise(token, &core.metrics, &mut services).await;
    shutdown(config.shutdown_timeout, &core.store, &mut services).await;
    failed.map_or(Ok(()), |failed| Err(failed.into()))
}

/// What most subsystems share: the store, the engine's handle, metrics, log tails and status-page logins.
struct Core {
    store: Store,
    scheduler: Scheduler,
    metrics: Metrics,
    logs: LogTails,
    logins: ui::Logins,
}

impl Core {
    /// Opens the store (its writer supervised until the store closes) and starts the scheduler.
    async fn start(
        config: &RunConfig,
        reporting: bool,
        metrics: Metrics,
        opened: &OnceLock<Store>,
        services: &mut Supervisor,
    ) -> anyhow::Result<Core> {
        let store =
            Store::open(&config.db, reporting).await.with_context(|| format!("opening {}", config.db.display()))?;
        let _ = opened.set(store.clone());
        let writer = store.clone();
        services.spawn("SQLite writer", true, Phase::Store, async move { writer.writer_stopped().await });
        let token = services.token(Phase::Scheduler);
        let (scheduler, engine) =
            Scheduler::start(store.clone(), config.scheduler.clone(), metrics.clone(), token).await?;
        services.watch("scheduler", true, Phase::Scheduler, engine);
        let logs = LogTails::new(config.reporter.max_report_bytes, config.reporter.log_tails_max_bytes);
        let logins = ui::Logins::new(store.clone(), config.ui.ui_session_ttl);
        Ok(Core { store, scheduler, metrics, logs, logins })
    }
}

/// `/metrics` and the health probes on `--metrics-listen`; returns where the store will be once it is open.
async fn health(
    config: &RunConfig,
    metrics: &Metrics,
    services: &mut Supervisor,
) -> anyhow::Result<Arc<OnceLock<Store>>> {
    let opened: Arc<OnceLock<Store>> = Arc::new(OnceLock::new());
    if let Some(addr) = config.metrics_listen {
        let listener = bind(addr).await?;
        info!(addr = %listener.local_addr()?, "metrics and health on http");
        let router = outpost_common::metrics::router(probes(metrics.clone(), opened.clone()));
        let token = services.token(Phase::Health);
        let serve = outpost_common::http::serve(listener, router, config.metrics_read_timeout, None, token);
        services.spawn("metrics endpoint", false, Phase::Health, serve);
    }
    Ok(opened)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))
}

/// The GMS client (with `--gms-url`), after checking the server can serve `--gms-channel` pools.
async fn gms_client(config: &RunConfig) -> anyhow::Result<Option<gms::Client>> {
    let client = config.gms.client()?;
    if let Some(client) = &client
        && !config.gms_channel.pools.is_empty()
    {
        sources::gms_channel::check_server(client).await?;
    }
    Ok(client)
}

/// With GMS: claims, the reporter and the KILL-signal poller. Returns the claims (the intake needs them).
async fn reporting(
    config: &RunConfig,
    core: &Core,
    gms: Option<&gms::Client>,
    services: &mut Supervisor,
) -> anyhow::Result<Option<Arc<sources::claims::Claims>>> {
    let Some(client) = gms else {
        info!("no --gms-url: results are recorded in SQLite only");
        return Ok(None);
    };
    let holder = core.store.controller_id(controller_id()).await.context("reading the controller's identity")?;
    let claim_ttl = config.gms_channel.claim_ttl;
    let claims = Arc::new(sources::claims::Claims::start(client.clone(), holder.clone(), claim_ttl).await);
    let reporter = reporter::Reporter::new(
        core.store.clone(),
        reporter::Destination { gms: client.clone(), holder, claim_ttl },
        core.logs.clone(),
        core.metrics.clone(),
        config.reporter.clone(),
    );
    services.spawn("GMS reporter", true, Phase::Reporter, reporter.run(services.token(Phase::Reporter)));
    let signals = sources::kill_signals::run(
        core.scheduler.clone(),
        core.store.clone(),
        client.clone(),
        config.gms.signal_poll_interval,
        services.token(Phase::Intake),
    );
    services.spawn("KILL-signal poller", true, Phase::Intake, signals);
    info!(gms = config.gms.url.as_deref().unwrap_or_default(), "reporting to DataHub GMS");
    Ok(Some(claims))
}

/// The ways requests come in: SQS queues (the operator's or DataHub Cloud's) and GMS channels.
async fn intake(
    config: &RunConfig,
    core: &Core,
    gms: Option<&gms::Client>,
    claims: Option<Arc<sources::claims::Claims>>,
    services: &mut Supervisor,
) {
    let intake = sources::Intake {
        store: core.store.clone(),
        scheduler: core.scheduler.clone(),
        gms: gms.cloned(),
        claims: claims.clone(),
        metrics: core.metrics.clone(),
    };
    if !config.sqs.all_queues().is_empty() || !config.sqs.gms_pools(gms.is_some()).is_empty() {
        let client = sources::sqs::client(config.sqs.endpoint.as_deref()).await;
        let bridge = sources::sqs::run(config.sqs.clone(), client, intake, services.token(Phase::Intake));
        services.spawn("SQS bridge", true, Phase::Intake, bridge);
    }
    if let (Some(client), Some(claims)) = (gms, claims)
        && !config.gms_channel.pools.is_empty()
    {
        let channel = sources::gms_channel::run(
            config.gms_channel.clone(),
            client.clone(),
            claims,
            core.scheduler.clone(),
            core.store.clone(),
            core.metrics.clone(),
            services.token(Phase::Intake),
        );
        services.spawn("GMS channel", true, Phase::Intake, channel);
    }
}

/// Logs the gRPC address (the start-up line) and writes it to `--listen-addr-file`, atomically.
fn announce(config: &RunConfig, listener: &TcpListener) -> anyhow::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    info!(addr = %bound, db = %config.db.display(), "controller listening");
    if let Some(path) = &config.listen_addr_file {
        // Written atomically so a reader never sees a half-written address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bound.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(bound)
}

/// This controller shown in DataHub as an executor of its DataHub Cloud pools.
fn executor_status(config: &RunConfig, gms: Option<&gms::Client>, bound: SocketAddr, services: &mut Supervisor) {
    let Some(client) = gms else { return };
    let pools = config.sqs.gms_pools(true);
    if pools.is_empty() {
        return;
    }
    let nonce = (0..8).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
    let instance =
        reporter::executors::Instance { address: bound.to_string(), hostname: reporter::executors::hostname(), nonce };
    let timing = reporter::executors::Timing {
        interval: config.gms.executor_status_interval,
        retry_backoff: config.reporter.retry_backoff,
        retry_backoff_max: config.reporter.retry_backoff_max,
    };
    let status = reporter::executors::run(client.clone(), pools, instance, timing, services.token(Phase::Intake));
    services.spawn("executor status", false, Phase::Intake, status);
}

/// Joins and certificates: the signing authority, the controller's own certificate renewal, CA rotation (both
/// listeners reload at each step), the bootstrap token and the join listener.
async fn enrollment(
    config: &RunConfig,
    core: &Core,
    trust: &Trust,
    tls: &Arc<grpc::tls::Reloading>,
    reporting: bool,
    services: &mut Supervisor,
) -> anyhow::Result<(enroll::Enrollment, enroll::CaRotation)> {
    let ca_key = config.enroll.ca_key.clone().or_else(|| trust.own_ca_key().map(|p| p.to_string_lossy().into_owned()));
    let authority = match &ca_key {
        Some(source) => {
            let key = enroll::read_ca_key(source).await?;
            Some(enroll::Authority::load(&trust.files.ca, &key, source)?)
        }
        None => None,
    };
    if let Some(own) = trust.own.clone() {
        let renew = own.renew(config.trust.own_cert_check_interval, services.token(Phase::Intake));
        services.spawn("certificate renewal", false, Phase::Intake, renew);
    }
    let enrollment = enroll::Enrollment::new(
        core.store.clone(),
        core.scheduler.clone(),
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
            .counted(core.metrics.clone(), Listener::Join),
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
    let overlap = ca.clone().run(config.enroll.ca_check_interval, services.token(Phase::Intake));
    services.spawn("CA overlap", false, Phase::Intake, overlap);
    // The pools served from outside: the bootstrap token's pool when none is named.
    let served: Vec<outpost_common::ids::PoolId> = (config.sqs.all_queues().into_iter().map(|(pool, _)| pool))
        .chain(config.sqs.gms_pools(reporting))
        .chain(config.gms_channel.pools.iter().cloned())
        .collect();
    enrollment.bootstrap(&config.enroll, &served).await?;
    if let (Some(addr), Some(tls)) = (config.enroll.join_listen, join_tls) {
        let listener = bind(addr).await?;
        info!(addr = %listener.local_addr()?, "joining served (TLS, no client certificate)");
        let timing = (config.grpc.tls_handshake_timeout, config.grpc.tls_reload_interval);
        let token = services.token(Phase::Intake);
        let join = grpc::join_service::serve(listener, tls, timing, enrollment.clone(), token);
        services.spawn("join listener", true, Phase::Intake, join);
    }
    Ok((enrollment, ca))
}

/// Audit retention and the sweep of finished runs' log tails.
fn housekeeping(config: &RunConfig, core: &Core, services: &mut Supervisor) {
    let retain = admin::retain(core.store.clone(), config.audit.clone(), services.token(Phase::Intake));
    services.spawn("audit retention", false, Phase::Intake, retain);
    let interval = config.reporter.log_tails_sweep_interval;
    let sweep = grpc::sweep_tails(core.store.clone(), core.logs.clone(), interval, services.token(Phase::Intake));
    services.spawn("log tails sweep", false, Phase::Intake, sweep);
}

/// The status page on `--ui-listen`.
async fn status_page(
    config: &RunConfig,
    core: &Core,
    trust: &Trust,
    enrollment: &enroll::Enrollment,
    services: &mut Supervisor,
) -> anyhow::Result<()> {
    let Some(addr) = config.ui.ui_listen else { return Ok(()) };
    let listener = bind(addr).await?;
    let tls = match config.ui.ui_tls {
        true => Some(trust.files.load()?.rustls_web_server_config()?),
        false => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(url = %format!("{scheme}://{}", listener.local_addr()?), "status page served");
    let page = ui::Ui {
        scheduler: core.scheduler.clone(),
        enrollment: enrollment.clone(),
        logs: core.logs.clone(),
        logins: core.logins.clone(),
        datahub_url: config.ui.datahub_url.clone(),
        refresh: config.ui.ui_refresh_interval,
        secure: tls.is_some(),
        metrics: core.metrics.clone(),
        store: core.store.clone(),
        login_limit: ui::LoginLimiter::new(
            config.ui.ui_login_attempts_per_address,
            config.ui.ui_login_attempts_total,
            config.ui.ui_login_window,
        ),
    };
    let serve = ui::serve(listener, page, config.ui.ui_read_timeout, tls, services.token(Phase::Intake));
    services.spawn("status page", false, Phase::Intake, serve);
    Ok(())
}

/// The gRPC server (agents, admin, health, reflection); the controller is ready once it serves.
fn grpc_server(
    config: &RunConfig,
    tls: Arc<grpc::tls::Reloading>,
    listener: TcpListener,
    core: &Core,
    enrollment: enroll::Enrollment,
    ca: enroll::CaRotation,
    services: &mut Supervisor,
) {
    let ready = core.metrics.clone();
    let serving = move || ready.set_ready(true);
    let cores = grpc::Cores {
        scheduler: core.scheduler.clone(),
        enrollment,
        logs: core.logs.clone(),
        logins: core.logins.clone(),
        metrics: core.metrics.clone(),
        store: core.store.clone(),
        ca,
    };
    let serve = grpc::serve(config.grpc.clone(), tls, listener, serving, cores, services.token(Phase::Intake));
    services.spawn("gRPC server", true, Phase::Intake, serve);
}

/// Waits for `token` or a critical subsystem's end; the controller is not ready from then on.
async fn supervise(token: CancellationToken, metrics: &Metrics, services: &mut Supervisor) -> Option<Failed> {
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
    failed
}

/// Stops the phases in order, each awaited (at most `limit` per service), and closes the store last.
async fn shutdown(limit: Duration, store: &Store, services: &mut Supervisor) {
    for phase in [Phase::Intake, Phase::Scheduler, Phase::Reporter, Phase::Health] {
        services.stop(phase, limit).await;
    }
    store.close().await;
    services.stop(Phase::Store, limit).await;
    info!("stopped");
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
