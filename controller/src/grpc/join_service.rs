//! `outpost.v1.JoinService` on its own listener (`--join-listen`): TLS with the controller's certificate and no
//! client certificate, and nothing else served there, so a client without a certificate reaches only joining.
//! Thin handlers: convert, call the enrollment core, map the error.

use outpost_common::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use crate::edge::status;
use crate::enroll::Enrollment;

pub struct JoinService {
    pub enrollment: Enrollment,
}

#[tonic::async_trait]
impl pb::join_service_server::JoinService for JoinService {
    async fn get_ca_bundle(&self, request: Request<pb::GetCaBundleRequest>) -> Result<Response<pb::CaBundle>, Status> {
        let (ca_pem, signature) =
            self.enrollment.ca_bundle(&request.get_ref().token_id).await.map_err(status::from_enrollment)?;
        Ok(Response::new(pb::CaBundle { ca_pem, signature }))
    }

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let address = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let r = request.into_inner();
        let joined = self
            .enrollment
            .join(&r.token, &r.worker_id, &r.csr_pem, &address)
            .await
            .map_err(status::from_enrollment)?;
        Ok(Response::new(pb::JoinResponse {
            worker_id: joined.worker.to_string(),
            pool: joined.pool,
            cert_pem: joined.issued.cert_pem,
            ca_pem: joined.ca_pem,
            expires_unix_ms: joined.issued.expires_at_ms,
        }))
    }
}

/// Serves joining until `token` is cancelled, with the controller's certificate as its files are now (a certificate
/// made again — renewed, or under a new CA — is served from the next check on).
pub async fn serve(
    listener: TcpListener,
    tls: std::sync::Arc<super::tls::Reloading>,
    timing: (std::time::Duration, std::time::Duration),
    enrollment: Enrollment,
    token: CancellationToken,
) -> Result<(), super::Error> {
    let (handshake_timeout, reload_interval) = timing;
    let incoming = super::tls::incoming(listener, tls, handshake_timeout, reload_interval, token.clone());
    Server::builder()
        // A join carries a token and a CSR: a few kilobytes.
        .add_service(
            pb::join_service_server::JoinServiceServer::new(JoinService { enrollment })
                .max_decoding_message_size(64 * 1024),
        )
        .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
        .await
        .map_err(super::Error::Serve)
}
