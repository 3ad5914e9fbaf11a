//! mTLS material for clients and servers: the three PEM files every Outpost process is given, and the process-wide
//! rustls crypto provider (ring, the only one in the workspace).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("unusable TLS material: {0}")]
    Invalid(String),
}

/// The PEM files of one side of an mTLS connection.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The loaded PEM bytes. `Debug` never shows the key.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert: Vec<u8>,
    key: Vec<u8>,
    pub ca: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("key", &"<redacted>").finish_non_exhaustive()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read { what, path: path.to_owned(), source })
}

impl TlsFiles {
    pub fn load(&self) -> Result<TlsMaterial, Error> {
        Ok(TlsMaterial {
            cert: read("certificate", &self.cert)?,
            key: read("private key", &self.key)?,
            ca: read("CA certificate", &self.ca)?,
        })
    }
}

impl TlsMaterial {
    /// Our certificate chain and private key, parsed from PEM.
    fn certificate_and_key(
        &self,
    ) -> Result<(Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>), Error>
    {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Invalid(format!("certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key).map_err(|e| Error::Invalid(format!("private key: {e}")))?;
        Ok((certs, key))
    }

    /// Server side as a rustls configuration (for an acceptor of our own): our identity, HTTP/2, and client
    /// certificates required, signed by the CA.
    pub fn rustls_server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, Error> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let invalid = |what: &str, e: &dyn std::fmt::Display| Error::Invalid(format!("{what}: {e}"));
        let (certs, key) = self.certificate_and_key()?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.ca) {
            roots.add(ca.map_err(|e| invalid("CA certificate", &e))?).map_err(|e| invalid("CA certificate", &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .map_err(|e| invalid("client verifier", &e))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| invalid("certificate and key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(std::sync::Arc::new(config))
    }

    /// Server side for browsers (the status page): our identity, HTTP/1.1, no client certificate asked for.
    pub fn rustls_web_server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, Error> {
        let (certs, key) = self.certificate_and_key()?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::Invalid(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(std::sync::Arc::new(config))
    }

    /// Server side without client certificates (the join listener): our identity, HTTP/2.
    pub fn rustls_join_server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, Error> {
        let (certs, key) = self.certificate_and_key()?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::Invalid(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(std::sync::Arc::new(config))
    }

    /// Client side: trust only the CA, present our certificate, expect `server_name` in the server's SANs.
    pub fn client_config(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(server_name)
    }
}

/// The host part of `https://HOST:PORT[/...]` (brackets of an IPv6 literal removed): the name a controller's
/// certificate must carry unless one is given explicitly.
pub fn server_name_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority)
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// Installs ring as the process-wide rustls provider. Idempotent; call at the top of every binary and test harness.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::server_name_of;

    #[test]
    fn server_names_of_controller_urls() {
        assert_eq!(server_name_of("https://localhost:7443").as_deref(), Some("localhost"));
        assert_eq!(server_name_of("https://127.0.0.1:7443/").as_deref(), Some("127.0.0.1"));
        assert_eq!(server_name_of("https://[::1]:7443").as_deref(), Some("::1"));
        assert_eq!(server_name_of("https://:7443"), None);
    }
}
