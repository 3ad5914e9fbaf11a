//! The CAs a joined agent trusts across a CA rotation: a bundle the controller sends is taken only when a CA the
//! agent trusts now signed it (then it is used from the next connection, and a certificate the new signing CA did
//! not issue is renewed at once); and a controller the agent no longer trusts (its CA was rotated while the agent
//! was away) is told from any other failure to connect. Never trusts a CA on the controller's word alone.

use std::time::Duration;

use anyhow::Context;
use outpost_common::bundle;
use outpost_common::pb;
use outpost_common::tls::TlsFiles;
use tonic::transport::Endpoint;

/// What became of a bundle.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// The agent holds these CAs already.
    Unchanged,
    /// Kept for the next connection; `renew`: the signing CA did not issue the agent's certificate.
    Updated { cas: usize, renew: bool },
}

/// Checks `offered` against the CAs trusted now (`trusted_pem`) and says what to keep: the new CA text, and
/// whether the agent's certificate (`cert_pem`) must be renewed from the new signing CA.
pub fn check(trusted_pem: &str, cert_pem: &str, offered: &pb::TrustBundle) -> Result<Taken, bundle::Error> {
    let cas = bundle::verify(trusted_pem, &offered.ca_pem, &offered.signer_pem, &offered.signature)?;
    if bundle::certificates(trusted_pem) == bundle::certificates(&offered.ca_pem) {
        return Ok(Taken::Unchanged);
    }
    Ok(Taken::Updated { cas, renew: !bundle::issued_by(cert_pem, &offered.ca_pem) })
}

/// Whether an error (anywhere in its chain) is TLS saying the other side's certificate comes from a CA not
/// trusted: the controller's, by this agent, or this agent's, by the controller.
pub fn untrusted(error: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::{AlertDescription, CertificateError};
    let mut next = Some(error);
    while let Some(e) = next {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).and_then(|inner| inner.downcast_ref())
        });
        if let Some(tls) = tls {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)
                    | rustls::Error::AlertReceived(AlertDescription::UnknownCA | AlertDescription::BadCertificate)
            );
        }
        next = e.source();
    }
    false
}

/// Whether the controller at `controller` can be reached but its certificate is signed by no CA in `files` (or it
/// refuses this agent's certificate). Unreachable is not "untrusted".
pub async fn controller_untrusted(
    files: &TlsFiles,
    controller: &str,
    server_name: &str,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let tls = files.load()?;
    let endpoint = Endpoint::from_shared(controller.to_owned())
        .context("--controller")?
        .tls_config(tls.client_config(server_name))?
        .connect_timeout(timeout);
    Ok(match endpoint.connect().await {
        Ok(_) => false,
        Err(e) => untrusted(&e),
    })
}
