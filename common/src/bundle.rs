//! CA bundles for a CA rotation: the CAs an agent is to trust, handed over its live stream and signed with the key
//! of a CA the agent already trusts (so nobody but the controller holding that key could have made it). Which CA
//! issued a certificate, and a CA's fingerprint. Pure functions over PEM text, no I/O.

use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::join::sha256_hex;

/// Why a bundle is not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the bundle holds no certificate")]
    Empty,
    #[error("the bundle's signer is not a CA this agent trusts")]
    UnknownSigner,
    #[error("the bundle's signature does not verify with its signer's key")]
    BadSignature,
    #[error("a certificate does not parse: {0}")]
    Unreadable(String),
}

/// The certificates (DER) of a PEM text, in order.
pub fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok).collect()
}

/// A certificate's fingerprint: the hex SHA-256 of its DER, first 16 characters (how status output names CAs).
pub fn fingerprint(der: &[u8]) -> String {
    sha256_hex(&[der])[..16].to_owned()
}

/// The fingerprint of the first certificate of a PEM text (the signing CA of a bundle).
pub fn first_fingerprint(pem: &str) -> Option<String> {
    certificates(pem).first().map(|der| fingerprint(der))
}

fn parse<'a>(der: &'a [u8]) -> Result<X509Certificate<'a>, Error> {
    X509Certificate::from_der(der).map(|(_, cert)| cert).map_err(|e| Error::Unreadable(e.to_string()))
}

/// Whether the first certificate of `cert_pem` names the first certificate of `ca_pem` as its issuer (CAs the
/// controller makes have distinct names).
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (Some(cert), Some(ca)) = (certificates(cert_pem).into_iter().next(), certificates(ca_pem).into_iter().next())
    else {
        return false;
    };
    match (parse(&cert), parse(&ca)) {
        (Ok(cert), Ok(ca)) => cert.issuer().as_raw() == ca.subject().as_raw(),
        _ => false,
    }
}

/// Checks a bundle: `signer_pem` is one of the CAs in `trusted_pem` (what the agent trusts now), and `signature`
/// (ECDSA P-256 with SHA-256, DER) over `ca_pem` verifies with its key. Returns how many CAs the bundle holds.
pub fn verify(trusted_pem: &str, ca_pem: &str, signer_pem: &str, signature: &[u8]) -> Result<usize, Error> {
    let count = certificates(ca_pem).len();
    if count == 0 {
        return Err(Error::Empty);
    }
    let signer = certificates(signer_pem).into_iter().next().ok_or(Error::UnknownSigner)?;
    if !certificates(trusted_pem).iter().any(|trusted| trusted.as_ref() == signer.as_ref()) {
        return Err(Error::UnknownSigner);
    }
    let signer = parse(&signer)?;
    let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, signer.public_key().subject_public_key.data.as_ref());
    key.verify(ca_pem.as_bytes(), signature).map_err(|_| Error::BadSignature)?;
    Ok(count)
}

/// The first certificate's subject (as text) and when it expires (Unix ms).
pub fn describe(pem: &str) -> Option<(String, i64)> {
    let der = certificates(pem).into_iter().next()?;
    let cert = parse(&der).ok()?;
    Some((cert.subject().to_string(), cert.validity().not_after.timestamp().saturating_mul(1000)))
}
