//! The caller's identity, taken from the verified client certificate of its TLS connection.

use outpost_common::identity::{self, Identity};
use outpost_common::roles::{AdminRpc, LegacyAdmin, Role};
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

/// Who called an admin RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl std::fmt::Display for Caller {
    /// Its name, as the reasons recorded on tasks and tokens say who acted ("cancelled by ops").
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// A caller refused: who it was (as far as its certificate says) and the status to answer with.
#[derive(Debug)]
pub struct Denied {
    pub name: String,
    pub role: Option<Role>,
    pub status: Status,
}

/// The caller of `rpc` if its certificate's role is the one the role table asks for (or higher); else
/// PERMISSION_DENIED naming the role needed and the caller's (UNAUTHENTICATED without a certificate).
pub fn authorize<T>(
    request: &Request<T>,
    trust_domain: &str,
    legacy: &[LegacyAdmin],
    rpc: AdminRpc,
) -> Result<Caller, Denied> {
    let denied = |name: String, role: Option<Role>, status: Status| Denied { name, role, status };
    let (name, role) = match peer(request, trust_domain).map_err(|status| denied(String::new(), None, status))? {
        Identity::Admin { name, role: Some(role) } => (name, role),
        Identity::Admin { name, role: None } => match legacy.iter().find(|l| l.name == name) {
            Some(mapped) => (name, mapped.role),
            None => {
                let status = Status::permission_denied(format!(
                    "admin certificate {name} carries no role (it was issued before roles): reissue it with \
                     `outpost-controller certs admin --role viewer|operator|admin --name {name}`, or map it for now \
                     with --admin-role {name}=ROLE"
                ));
                return Err(denied(name, None, status));
            }
        },
        other => {
            let status = Status::permission_denied(format!("{other} may not call the admin service"));
            return Err(denied(other.to_string(), None, status));
        }
    };
    let needed = rpc.needs();
    if role < needed {
        let status =
            Status::permission_denied(format!("{} needs the {needed} role; {name} has the {role} role", rpc.name()));
        return Err(denied(name, Some(role), status));
    }
    Ok(Caller { name, role })
}
