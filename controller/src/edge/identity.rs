//! The caller's identity, taken from the verified client certificate of its TLS connection.

use outpost_common::identity::{self, Identity};
use tonic::{Request, Status};

/// The identity in the request's peer certificate; UNAUTHENTICATED when there is none.
pub fn peer<T>(request: &Request<T>, trust_domain: &str) -> Result<Identity, Status> {
    let certs =
        request.peer_certs().ok_or_else(|| Status::unauthenticated(identity::Error::NoCertificate.to_string()))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated(identity::Error::NoCertificate.to_string()))?;
    identity::from_certificate(trust_domain, leaf.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// The serial of the peer's certificate (see `identity::serial_text`).
pub fn peer_serial<T>(request: &Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    identity::serial_of(certs.first()?.as_ref())
}

/// The admin name, or PERMISSION_DENIED for any other identity.
pub fn require_admin<T>(request: &Request<T>, trust_domain: &str) -> Result<String, Status> {
    match peer(request, trust_domain)? {
        Identity::Admin(name) => Ok(name),
        other => Err(Status::permission_denied(format!("{other} may not call the admin service"))),
    }
}
