//! Who is on the other end of a connection: the SPIFFE URI in a client certificate's SAN
//! (`spiffe://<trust-domain>/agent/<worker-id>`, or `spiffe://<trust-domain>/admin/<role>/<name>` for an operator;
//! `…/admin/<name>`, issued before roles, carries none). Pure parsing, no I/O.

use std::fmt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::ids::WorkerId;
use crate::roles::Role;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "outpost";

/// A proven peer identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Agent(WorkerId),
    /// An operator's certificate: its name, and its role (`None`: a certificate from before roles).
    Admin {
        name: String,
        role: Option<Role>,
    },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Agent(worker) => write!(f, "agent {worker}"),
            Identity::Admin { name, role: Some(role) } => write!(f, "{role} {name}"),
            Identity::Admin { name, role: None } => write!(f, "admin certificate {name} (no role)"),
        }
    }
}

/// Why a certificate carries no usable identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the connection presented no client certificate")]
    NoCertificate,
    #[error("the client certificate cannot be parsed: {0}")]
    BadCertificate(String),
    #[error("the client certificate has no spiffe://{trust_domain}/agent/.. or /admin/.. URI")]
    NoIdentity { trust_domain: String },
    #[error("the client certificate names {uri:?}, which is not a valid Outpost identity: {reason}")]
    BadUri { uri: String, reason: String },
}

/// The SAN URI for an agent certificate.
pub fn agent_uri(trust_domain: &str, worker: &WorkerId) -> String {
    format!("spiffe://{trust_domain}/agent/{worker}")
}

/// The SAN URI for an operator's certificate with a role.
pub fn admin_uri(trust_domain: &str, role: Role, name: &str) -> String {
    format!("spiffe://{trust_domain}/admin/{role}/{name}")
}

/// A certificate serial as Outpost writes it: lowercase hex without leading zeros.
pub fn serial_text(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() { "0".to_owned() } else { trimmed.to_owned() }
}

/// The serial of a DER certificate ([`serial_text`]), if it parses.
pub fn serial_of(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(serial_text(cert.raw_serial()))
}

/// (not before, not after) of the first certificate in a PEM text; `None` when there is none or it does not parse.
pub fn pem_validity(pem: &str) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let at = |t: x509_parser::time::ASN1Time| crate::clock::system_time_secs(t.timestamp());
    Some((at(cert.validity().not_before), at(cert.validity().not_after)))
}

/// Parses one SAN URI; `Ok(None)` when it belongs to another trust domain or scheme.
pub fn parse_uri(trust_domain: &str, uri: &str) -> Result<Option<Identity>, Error> {
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return Ok(None);
    };
    let Some(path) = rest.strip_prefix(trust_domain).and_then(|p| p.strip_prefix('/')) else {
        return Ok(None);
    };
    let bad = |reason: String| Error::BadUri { uri: uri.to_owned(), reason };
    match path.split_once('/') {
        Some(("agent", worker)) => {
            WorkerId::parse(worker).map(|w| Some(Identity::Agent(w))).map_err(|e| bad(e.to_string()))
        }
        Some(("admin", rest)) => {
            let (role, name) = match rest.split_once('/') {
                Some((role, name)) => (Some(role.parse::<Role>().map_err(|e| bad(e.to_string()))?), name),
                None => (None, rest),
            };
            WorkerId::parse(name).map_err(|e| bad(e.to_string()))?;
            Ok(Some(Identity::Admin { name: name.to_owned(), role }))
        }
        _ => Err(bad("the path must be /agent/<worker-id> or /admin/<role>/<name>".into())),
    }
}

/// The identity in a DER certificate (the leaf of a peer's chain).
pub fn from_certificate(trust_domain: &str, der: &[u8]) -> Result<Identity, Error> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::BadCertificate(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| Error::BadCertificate(e.to_string()))?;
    let mut found = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else { continue };
        let Some(identity) = parse_uri(trust_domain, uri)? else { continue };
        if found.is_some() {
            return Err(Error::BadUri {
                uri: (*uri).to_owned(),
                reason: "the certificate names more than one identity".into(),
            });
        }
        found = Some(identity);
    }
    found.ok_or_else(|| Error::NoIdentity { trust_domain: trust_domain.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_agent_and_admin_uris() {
        assert_eq!(
            parse_uri("outpost", "spiffe://outpost/agent/w-1").unwrap(),
            Some(Identity::Agent(WorkerId::parse("w-1").unwrap()))
        );
        assert_eq!(
            parse_uri("outpost", "spiffe://outpost/admin/operator/ops").unwrap(),
            Some(Identity::Admin { name: "ops".into(), role: Some(Role::Operator) })
        );
        assert_eq!(
            parse_uri("outpost", "spiffe://outpost/admin/ops").unwrap(),
            Some(Identity::Admin { name: "ops".into(), role: None }),
            "a certificate from before roles"
        );
        assert!(matches!(parse_uri("outpost", "spiffe://outpost/admin/root/ops"), Err(Error::BadUri { .. })));
        assert_eq!(parse_uri("outpost", "spiffe://other/agent/w-1").unwrap(), None);
        assert_eq!(parse_uri("outpost", "https://outpost/agent/w-1").unwrap(), None);
        assert!(matches!(parse_uri("outpost", "spiffe://outpost/robot/x"), Err(Error::BadUri { .. })));
        assert!(matches!(parse_uri("outpost", "spiffe://outpost/agent/a/b"), Err(Error::BadUri { .. })));
    }
}

#[cfg(test)]
mod serials {
    #[test]
    fn serials_are_hex_without_leading_zeros() {
        assert_eq!(super::serial_text(&[0x03, 0xa6]), "3a6");
        assert_eq!(super::serial_text(&[0x00, 0x10, 0x00]), "1000");
        assert_eq!(super::serial_text(&[0x00]), "0");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// Any SAN URI a certificate may carry is an identity, another domain's, or a refusal with words.
        #[test]
        fn any_san_uri_is_read_or_refused(uri in "(spiffe://)?[ -~]{0,80}") {
            if let Err(e) = super::parse_uri("outpost", &uri) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        /// Any bytes as a certificate: refused with words, never a panic.
        #[test]
        fn any_bytes_as_a_certificate_are_refused(der in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Err(e) = super::from_certificate("outpost", &der) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        #[test]
        fn any_identifier_and_token_text_is_read_or_refused(text in "\\PC{0,80}") {
            let _ = crate::ids::TaskId::parse_id_or_urn(&text);
            let _ = crate::ids::WorkerId::parse(&text);
            let _ = crate::ids::PoolId::parse(&text);
            let _ = crate::join::JoinToken::parse(&text);
        }
    }
}
