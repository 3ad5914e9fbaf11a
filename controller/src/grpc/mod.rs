//! The controller's gRPC edge: the mTLS server carrying `AgentService`, `AdminService`, health and reflection
//! (v1 and v1alpha, for grpcurl 1.8.6). Identity comes from the verified client certificate. This is the only
//! module tree (with `admin`) that knows protobuf types; it holds no business rules.

mod agent_service;
mod convert;
pub mod join_service;
pub mod tls;

#[cfg(test)]
pub(crate) use convert::{MAX_SLOTS, hello as convert_hello, outcome as convert_outcome};

use std::time::Duration;

use outpost_common::duration;

use outpost_common::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::admin::AdminService;
use crate::logs::LogTails;
use crate::scheduler::Scheduler;
use crate::sources::local::LocalQueue;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// The gRPC edge's flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "grpc")]
#[command(next_help_heading = "gRPC and TLS")]
pub struct Args {
    /// The trust domain of SPIFFE URIs in client certificates.
    #[arg(long, env = "OUTPOST_TRUST_DOMAIN", default_value = outpost_common::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// How often the TLS certificate, key and CA files are checked for changes (a rotation needs no restart).
    #[arg(long, env = "OUTPOST_TLS_RELOAD_INTERVAL", value_parser = duration::parse, default_value = "30s")]
    pub tls_reload_interval: Duration,
    /// A TLS handshake not finished within this time is dropped.
    #[arg(long, env = "OUTPOST_TLS_HANDSHAKE_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub tls_handshake_timeout: Duration,
    /// An agent stream that sends no Hello within this time is closed.
    #[arg(long, env = "OUTPOST_HELLO_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub hello_timeout: Duration,
    /// The role of an admin certificate issued before roles (`spiffe://<td>/admin/<name>`), as NAME=ROLE
    /// (repeatable), for a migration period; such a certificate not named here is refused with how to reissue it.
    #[arg(long = "admin-role", env = "OUTPOST_ADMIN_ROLES", value_delimiter = ',')]
    pub admin_roles: Vec<outpost_common::roles::LegacyAdmin>,
    /// The largest message an agent or admin client may send (a larger one ends its call with RESOURCE_EXHAUSTED).
    #[arg(long, env = "OUTPOST_GRPC_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub grpc_max_message_bytes: usize,
}

impl Args {
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--tls-reload-interval", self.tls_reload_interval)?;
        duration::positive("--tls-handshake-timeout", self.tls_handshake_timeout)?;
        duration::positive("--hello-timeout", self.hello_timeout)
    }
}

/// The cores the services call.
pub struct Cores {
    pub scheduler: Scheduler,
    pub enrollment: crate::enroll::Enrollment,
    pub logs: LogTails,
    pub logins: crate::ui::Logins,
    pub metrics: crate::metrics::Metrics,
    /// The audit trail's reads and lone rows.
    pub store: crate::store::Store,
    pub ca: crate::enroll::CaRotation,
}

/// Serves until `token` is cancelled, then ends every agent session and returns once the server has stopped.
/// `serving` is called once the server accepts connections.
pub async fn serve(
    config: Args,
    tls: std::sync::Arc<tls::Reloading>,
    listener: TcpListener,
    serving: impl FnOnce() + Send,
    cores: Cores,
    token: CancellationToken,
) -> Result<(), Error> {
    let Cores { scheduler, enrollment, logs, logins, metrics, store, ca } = cores;
    let logs_for_admin = logs.clone();
    let max_message = config.grpc_max_message_bytes;
    let agent = pb::agent_service_server::AgentServiceServer::new(agent_service::AgentService {
        scheduler: scheduler.clone(),
        enrollment: enrollment.clone(),
        logs,
        trust_domain: config.trust_domain.clone(),
        hello_timeout: config.hello_timeout,
        shutdown: token.clone(),
    })
    .max_decoding_message_size(max_message);
    let admin = pb::admin_service_server::AdminServiceServer::new(AdminService {
        local_queue: LocalQueue::new(scheduler.clone()),
        enrollment,
        logs: logs_for_admin,
        logins,
        metrics,
        scheduler,
        trust_domain: config.trust_domain,
        legacy_admins: config.admin_roles,
        store,
        ca,
    })
    .max_decoding_message_size(max_message);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::agent_service_server::AgentServiceServer<agent_service::AgentService>>().await;
    health_reporter.set_serving::<pb::admin_service_server::AdminServiceServer<AdminService>>().await;
    // Both reflection versions (grpcurl 1.8.6 speaks only v1alpha), each describing every service on the port.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            // Only what this port serves (JoinService lives on the join listener).
            .with_service_name("outpost.v1.AgentService")
            .with_service_name("outpost.v1.AdminService")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let incoming =
        tls::incoming(listener, tls, config.tls_handshake_timeout, config.tls_reload_interval, token.clone());
    let server = Server::builder()
        .add_service(agent)
        .add_service(admin)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, token.cancelled_owned());
    serving();
    server.await.map_err(Error::Serve)
}

/// Every `interval` until `token` is cancelled, drops the log tails of tasks that are no longer live (tails are
/// opened here, at assignment, and dropped at once when a result is accepted or delivered; a task that ends
/// otherwise — its lease lost for good, a cancel nobody answered — is caught by this sweep).
pub async fn sweep_tails(store: crate::store::Store, logs: LogTails, interval: Duration, token: CancellationToken) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let listed = std::time::Instant::now();
        match store.live_task_ids().await {
            Ok(live) => logs.retain_live(&live.into_iter().collect(), listed),
            Err(e) => tracing::warn!(error = %e, "cannot list live tasks to sweep log tails; trying again later"),
        }
    }
}
