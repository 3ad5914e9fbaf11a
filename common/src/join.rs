//! Join tokens and the trust an agent builds from one (shared by the controller, which makes and checks them,
//! and the agent, which uses them). A token is `<id>.<secret>` (6 and 16 characters of `[a-z0-9]`, as kubeadm's
//! bootstrap tokens), or the same 22 characters without the dot (what a secrets store's generator makes, e.g. the
//! ECS stack's bootstrap secret); the controller keeps two digests of the secret, never the secret: one to check joins, one
//! to sign the CA bundle for agents that have nothing but the token. Pure functions; `Debug` never shows a secret.

use std::fmt;

use ring::{digest, hmac, rand::SecureRandom};

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A whole join token. `Debug` shows only its id.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}.<redacted>)", self.id)
    }
}

/// Why a token cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a join token is <id>.<secret> (6 and 16 characters of a-z and 0-9), or those 22 characters without the dot")]
pub struct BadToken;

/// The bytes given for a CA pin are not a DER certificate.
#[derive(Debug, thiserror::Error)]
#[error("not a certificate: {0}")]
pub struct NotACertificate(x509_parser::error::X509Error);

/// `len` random characters of `[a-z0-9]` from the system's secure random source.
pub fn random_text(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

fn well_formed(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| ALPHABET.contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in parts {
        context.update(part);
    }
    hex(context.finish().as_ref())
}

impl JoinToken {
    /// A fresh token from the system's secure random source.
    pub fn generate() -> JoinToken {
        JoinToken { id: random_text(6), secret: random_text(16) }
    }

    pub fn parse(text: &str) -> Result<JoinToken, BadToken> {
        let text = text.trim();
        let (id, secret) = match text.split_once('.') {
            Some(parts) => parts,
            None if text.len() == 22 && text.is_ascii() => text.split_at(6),
            None => return Err(BadToken),
        };
        if !well_formed(id, 6) || !well_formed(secret, 16) {
            return Err(BadToken);
        }
        Ok(JoinToken { id: id.to_owned(), secret: secret.to_owned() })
    }

    /// `<id>.<secret>`: for the operator, once.
    pub fn reveal(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// What the controller keeps to check joins.
    pub fn secret_hash(&self) -> String {
        sha256_hex(&[b"outpost-join-token:", self.secret.as_bytes()])
    }

    /// What the controller keeps to check logins to the status page (a token of that kind, same form).
    pub fn ui_secret_hash(&self) -> String {
        sha256_hex(&[b"outpost-ui-token:", self.secret.as_bytes()])
    }

    /// What the controller keeps to sign the CA bundle for this token's holders.
    pub fn bundle_key(&self) -> String {
        sha256_hex(&[b"outpost-ca-bundle:", self.secret.as_bytes()])
    }

    /// Whether `signature` is the controller's signature of `ca_pem` for this token.
    pub fn verifies_bundle(&self, ca_pem: &str, signature: &str) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.bundle_key().as_bytes());
        let Some(tag) = unhex(signature) else { return false };
        hmac::verify(&key, ca_pem.as_bytes(), &tag).is_ok()
    }
}

/// The controller's signature of its CA bundle with a token's bundle key (hex HMAC-SHA256).
pub fn sign_bundle(bundle_key: &str, ca_pem: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, bundle_key.as_bytes());
    hex(hmac::sign(&key, ca_pem.as_bytes()).as_ref())
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// A CA pin as kubeadm writes its discovery hash: `sha256:` and the hex SHA-256 of the certificate's DER
/// SubjectPublicKeyInfo.
pub fn ca_pin(cert_der: &[u8]) -> Result<String, NotACertificate> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| NotACertificate(e.into()))?;
    Ok(format!("sha256:{}", sha256_hex(&[cert.public_key().raw])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_show_their_secret() {
        let token = JoinToken::generate();
        let text = token.reveal();
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        assert!(!format!("{token:?}").contains(&text[7..]), "{token:?}");
        // The 22 characters without the dot are the same token.
        assert_eq!(JoinToken::parse(&text.replace('.', "")).unwrap(), token);
        for bad in [
            "",
            "abc",
            "abcdef.short",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde!",
            "abcdef0123456789abcde",
            "abcdef0123456789abcdeF",
            "abcdef0123456789abcdefg",
            "abcdé0123456789abcdef",
        ] {
            assert_eq!(JoinToken::parse(bad), Err(BadToken), "{bad}");
        }
        assert_ne!(token.secret_hash(), token.bundle_key(), "two different digests");
    }

    #[test]
    fn a_bundle_verifies_only_with_its_tokens_signature() {
        let token = JoinToken::parse("abcdef.0123456789abcdef").unwrap();
        let other = JoinToken::parse("abcdef.fedcba9876543210").unwrap();
        let signature = sign_bundle(&token.bundle_key(), "CA PEM");
        assert!(token.verifies_bundle("CA PEM", &signature));
        assert!(!token.verifies_bundle("CA PEM tampered", &signature));
        assert!(!other.verifies_bundle("CA PEM", &signature));
        assert!(!token.verifies_bundle("CA PEM", "zz"));
    }
}
