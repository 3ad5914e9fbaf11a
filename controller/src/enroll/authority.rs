//! The certificate authority that signs agents' certificates: the CA certificate (the first in `--tls-ca`) and
//! its private key (`--ca-key`). Signs a certificate signing request with the worker's SPIFFE identity, client
//! auth only, a random serial and the agent certificate TTL; whatever else the request asks for is ignored.

use std::path::Path;
use std::time::{Duration, SystemTime};

use outpost_common::identity::agent_uri;
use outpost_common::ids::WorkerId;
use rcgen::{
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;

use super::Error;

/// A certificate made for a worker.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    /// Hex.
    pub serial: String,
    pub expires_at_ms: i64,
}

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The whole CA bundle agents are to trust (the `--tls-ca` file).
    pub ca_pem: String,
    /// The signing CA's certificate (the first of `ca_pem`) and its fingerprint.
    pub signer_pem: String,
    pub fingerprint: String,
}

/// The CAs agents are to trust, signed with the signing CA's key (see `outpost_common::bundle`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    pub ca_pem: String,
    pub signer_pem: String,
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(<CA key redacted>)")
    }
}

impl Authority {
    /// The CA certificate from `ca_file` and its private key (`key_pem`, read by [`super::read_ca_key`]).
    pub fn load(ca_file: &Path, key_pem: &str, key_source: &str) -> Result<Authority, Error> {
        let ca_pem = std::fs::read_to_string(ca_file)
            .map_err(|e| Error::Authority(format!("cannot read {}: {e}", ca_file.display())))?;
        let cert = crate::trust::pem_blocks(&ca_pem)
            .into_iter()
            .next()
            .ok_or_else(|| Error::Authority(format!("{} holds no certificate", ca_file.display())))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| Error::Authority(format!("{key_source} is not a private key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key)
            .map_err(|e| Error::Authority(format!("the CA certificate in {}: {e}", ca_file.display())))?;
        let fingerprint = outpost_common::bundle::first_fingerprint(&cert).unwrap_or_default();
        Ok(Authority { issuer, ca_pem, signer_pem: cert, fingerprint })
    }

    /// The CA bundle, signed with the signing CA's key.
    pub fn trust_bundle(&self) -> Result<TrustBundle, Error> {
        use rcgen::SigningKey;
        let signature =
            self.issuer.key().sign(self.ca_pem.as_bytes()).map_err(|e| Error::Authority(format!("signing: {e}")))?;
        Ok(TrustBundle { ca_pem: self.ca_pem.clone(), signer_pem: self.signer_pem.clone(), signature })
    }

    /// Signs `csr_pem` for `worker`, valid from a little before now (clock skew) until `ttl` from now.
    pub fn sign(&self, csr_pem: &str, trust_domain: &str, worker: &WorkerId, ttl: Duration) -> Result<Issued, Error> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::BadRequest(format!("the certificate signing request: {e}")))?;
        let mut serial = [0u8; 16];
        ring::rand::SystemRandom::new().fill(&mut serial).map_err(|_| Error::Authority("no randomness".into()))?;
        serial[0] &= 0x7f; // a positive number
        let now = SystemTime::now();
        let expires = now + ttl;
        let params = &mut csr.params;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("agent {worker}"));
        let uri = agent_uri(trust_domain, worker)
            .try_into()
            .map_err(|e: rcgen::Error| Error::BadRequest(format!("worker id: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        // Backdated a little for clocks that lag (at most a minute, and never a big share of a short life).
        params.not_before = (now - (ttl / 4).min(Duration::from_secs(60))).into();
        params.not_after = expires.into();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.custom_extensions.clear();
        let cert = csr.signed_by(&self.issuer).map_err(|e| Error::Authority(format!("signing: {e}")))?;
        let expires_at_ms =
            outpost_common::duration::signed_millis(expires.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
        Ok(Issued { cert_pem: cert.pem(), serial: outpost_common::identity::serial_text(&serial), expires_at_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_serial_is_the_one_in_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init(dir.path(), &[]).unwrap();
        let key_pem = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
        let authority = Authority::load(&dir.path().join("ca.pem"), &key_pem, "ca.key").unwrap();
        let worker = WorkerId::parse("w-1").unwrap();
        // Many signings: some serials start with a zero nibble or byte, which DER and the record must agree on.
        for _ in 0..64 {
            let key = KeyPair::generate().unwrap();
            let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap();
            let issued = authority.sign(&csr.pem().unwrap(), "outpost", &worker, Duration::from_secs(60)).unwrap();
            use rustls::pki_types::pem::PemObject;
            let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
            assert_eq!(outpost_common::identity::serial_of(&der), Some(issued.serial.clone()));
        }
    }
}
