//! CA rotation of the trust the controller made itself, kept as files in --trust-dir so that the phase is what the
//! files say and a step cut short (a crash) is finished or undone at the next look ([`Own::repair`]):
//! - steady: `ca.pem` holds the signing CA, `ca.key` its key;
//! - prepared (`ca-next.key` present): a new CA in `ca-next.pem`/`.key`, and `ca.pem` = signing + next (both
//!   trusted, the current one still signs);
//! - activated (`ca-previous.pem` present): the new CA signs (`ca.key`), and `ca.pem` = new + previous;
//! - retired: steady again, with the new CA alone.
//!
//! Never drops a key while its CA still signs; never logs or returns a key.

use std::path::Path;
use std::time::SystemTime;

use outpost_common::bundle;

use super::Own;
use crate::certs;

const CA: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const NEXT: &str = "ca-next.pem";
const NEXT_KEY: &str = "ca-next.key";
const PREVIOUS: &str = "ca-previous.pem";

/// Where a rotation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Steady,
    /// A new CA is trusted beside the signing one, which still signs.
    Prepared {
        since: SystemTime,
    },
    /// The new CA signs; the previous one is still trusted.
    Activated {
        since: SystemTime,
    },
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::Prepared { .. } => "prepared",
            Phase::Activated { .. } => "activated",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Certs(#[from] certs::Error),
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: String, source: std::io::Error },
    /// The step does not follow from the phase the rotation is in.
    #[error("{0}")]
    Phase(String),
}

/// The PEM blocks of certificates in `text`, in order, each with its markers.
pub fn pem_blocks(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else { break };
        let stop = start + end + END.len();
        blocks.push(format!("{}\n", &rest[start..stop]));
        rest = &rest[stop..];
    }
    blocks
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Own {
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    fn has(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    fn read(&self, name: &str) -> Result<String, Error> {
        let path = self.path(name);
        std::fs::read_to_string(&path).map_err(|source| Error::Io {
            action: "read",
            path: path.display().to_string(),
            source,
        })
    }

    fn remove(&self, name: &str) -> Result<(), Error> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Io { action: "remove", path: path.display().to_string(), source: e })
            }
            _ => Ok(()),
        }
    }

    /// The signing CA's certificate (the first in `ca.pem`).
    pub fn signing_pem(&self) -> Result<String, Error> {
        let blocks = pem_blocks(&self.read(CA)?);
        blocks
            .into_iter()
            .next()
            .ok_or_else(|| Error::Phase(format!("{} holds no certificate", self.path(CA).display())))
    }

    /// The prepared CA and the previous one, when the phase has them.
    pub fn next_pem(&self) -> Option<String> {
        self.has(NEXT_KEY).then(|| self.read(NEXT).ok()).flatten()
    }

    pub fn previous_pem(&self) -> Option<String> {
        self.read(PREVIOUS).ok()
    }

    /// The phase, as the files say.
    pub fn phase(&self) -> Phase {
        match (self.has(NEXT_KEY), self.has(PREVIOUS)) {
            (true, false) => Phase::Prepared { since: modified(&self.path(NEXT_KEY)) },
            (_, true) => Phase::Activated { since: modified(&self.path(PREVIOUS)) },
            (false, false) => Phase::Steady,
        }
    }

    /// Finishes a step cut short and makes `ca.pem` what the phase says; says what it did.
    pub fn repair(&self) -> Result<Vec<String>, Error> {
        let mut done = Vec::new();
        if self.has(NEXT_KEY) && !self.has(NEXT) {
            // A rotation cut short before its certificate was written: undone.
            self.remove(NEXT_KEY)?;
            done.push("undid a CA rotation that was cut short before its CA was written".to_owned());
        }
        if self.has(NEXT_KEY) && self.has(PREVIOUS) {
            // An activation cut short after it noted the previous CA: finished.
            let bundle = self.read(NEXT)? + &self.read(PREVIOUS)?;
            certs::write_private(&self.path(CA), &bundle)?;
            std::fs::rename(self.path(NEXT_KEY), self.path(CA_KEY)).map_err(|source| Error::Io {
                action: "rename",
                path: self.path(NEXT_KEY).display().to_string(),
                source,
            })?;
            done.push("finished an activation of the new CA that was cut short".to_owned());
        }
        if !self.has(NEXT_KEY) && self.has(NEXT) {
            self.remove(NEXT)?;
        }
        let signing = self.signing_pem()?;
        let expected = match self.phase() {
            Phase::Steady => signing,
            Phase::Prepared { .. } => signing + &self.read(NEXT)?,
            Phase::Activated { .. } => signing + &self.read(PREVIOUS)?,
        };
        if pem_blocks(&self.read(CA)?) != pem_blocks(&expected) {
            certs::write_private(&self.path(CA), &expected)?;
            done.push(format!("wrote the trusted CAs for the {} phase", self.phase().name()));
        }
        Ok(done)
    }

    /// Prepares a new CA: trusted from now on beside the signing one, which still signs.
    pub fn rotate(&self) -> Result<(), Error> {
        if self.phase() != Phase::Steady {
            return Err(Error::Phase(format!(
                "a CA rotation is already under way ({}): activate or retire it first",
                self.phase().name()
            )));
        }
        certs::new_ca(&self.dir, "ca-next", &certs::unique_ca_name())?;
        self.repair()?;
        Ok(())
    }

    /// The prepared CA signs from now on; the previous one stays trusted.
    pub fn activate(&self) -> Result<(), Error> {
        if !matches!(self.phase(), Phase::Prepared { .. }) {
            return Err(Error::Phase(format!(
                "there is no prepared CA to activate (the rotation is {}): `outpostctl ca rotate` first",
                self.phase().name()
            )));
        }
        certs::write_private(&self.path(PREVIOUS), &self.signing_pem()?)?;
        // The rest is what finishing an activation cut short at this point does.
        self.repair()?;
        Ok(())
    }

    /// Drops the previous CA: only the signing one is trusted from now on.
    pub fn retire(&self) -> Result<(), Error> {
        if !matches!(self.phase(), Phase::Activated { .. }) {
            return Err(Error::Phase(format!(
                "there is no previous CA to retire (the rotation is {}): `outpostctl ca activate` first",
                self.phase().name()
            )));
        }
        self.remove(PREVIOUS)?;
        self.repair()?;
        Ok(())
    }

    /// The signing CA's fingerprint.
    pub fn signing_fingerprint(&self) -> Result<String, Error> {
        let pem = self.signing_pem()?;
        bundle::first_fingerprint(&pem).ok_or_else(|| Error::Phase("the signing CA does not parse".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(dir: &Path) -> Own {
        Own {
            dir: dir.to_owned(),
            sans: Vec::new(),
            lifetime: std::time::Duration::from_secs(90 * 86_400),
            trust_domain: "outpost".into(),
        }
    }

    fn trusted(own: &Own) -> Vec<String> {
        pem_blocks(&std::fs::read_to_string(own.dir.join(CA)).unwrap())
    }

    #[test]
    fn prepare_activate_retire_and_each_step_in_order_only() {
        let dir = tempfile::tempdir().unwrap();
        let own = own(dir.path());
        own.ensure(SystemTime::now()).unwrap();
        let old = own.signing_pem().unwrap();
        assert_eq!(own.phase(), Phase::Steady);
        assert!(own.activate().unwrap_err().to_string().contains("`outpostctl ca rotate` first"));
        assert!(own.retire().is_err());

        own.rotate().unwrap();
        assert!(matches!(own.phase(), Phase::Prepared { .. }));
        let next = own.next_pem().unwrap();
        assert_eq!(trusted(&own), [old.clone(), next.clone()], "both trusted, the old one first (it signs)");
        assert!(own.rotate().unwrap_err().to_string().contains("already under way (prepared)"));
        assert!(own.retire().is_err());
        assert_ne!(bundle::first_fingerprint(&next), bundle::first_fingerprint(&old));

        own.activate().unwrap();
        assert!(matches!(own.phase(), Phase::Activated { .. }));
        assert_eq!(trusted(&own), [next.clone(), old.clone()], "the new one signs, the old one is still trusted");
        assert_eq!(own.previous_pem().unwrap(), old);
        // The key that signs is the new CA's.
        let key = std::fs::read_to_string(dir.path().join(CA_KEY)).unwrap();
        assert!(rcgen::Issuer::from_ca_cert_pem(&next, rcgen::KeyPair::from_pem(&key).unwrap()).is_ok());
        assert!(!dir.path().join(NEXT).exists() && !dir.path().join(NEXT_KEY).exists());
        // ensure() makes the server certificate and the local admin again, under the new CA.
        let done = own.ensure(SystemTime::now()).unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        let server = std::fs::read_to_string(dir.path().join("controller.pem")).unwrap();
        assert!(bundle::issued_by(&server, &next) && !bundle::issued_by(&server, &old));
        let admin = std::fs::read_to_string(dir.path().join("admin-local.pem")).unwrap();
        assert!(bundle::issued_by(&admin, &next));

        own.retire().unwrap();
        assert_eq!(own.phase(), Phase::Steady);
        assert_eq!(trusted(&own), [next]);
    }

    #[test]
    fn a_step_cut_short_is_finished_or_undone_at_the_next_look() {
        let dir = tempfile::tempdir().unwrap();
        let own = own(dir.path());
        own.ensure(SystemTime::now()).unwrap();
        let old = own.signing_pem().unwrap();
        // A rotation that wrote its key and died: undone.
        std::fs::write(dir.path().join(NEXT_KEY), "half").unwrap();
        assert_eq!(own.repair().unwrap().len(), 1);
        assert_eq!(own.phase(), Phase::Steady);
        assert_eq!(trusted(&own), std::slice::from_ref(&old));

        // An activation that noted the previous CA and died before anything else: finished.
        own.rotate().unwrap();
        let next = own.next_pem().unwrap();
        certs::write_private(&dir.path().join(PREVIOUS), &old).unwrap();
        let done = own.repair().unwrap();
        assert!(done[0].contains("finished an activation"), "{done:?}");
        assert!(matches!(own.phase(), Phase::Activated { .. }));
        assert_eq!(trusted(&own), [next.clone(), old]);

        // A retirement that dropped the previous CA's note and died: ca.pem follows.
        std::fs::remove_file(dir.path().join(PREVIOUS)).unwrap();
        own.repair().unwrap();
        assert_eq!(trusted(&own), [next]);
    }

    #[test]
    fn a_bundle_signed_by_a_trusted_ca_verifies_and_nothing_else_does() {
        use rcgen::SigningKey;
        let dir = tempfile::tempdir().unwrap();
        let own = own(dir.path());
        own.ensure(SystemTime::now()).unwrap();
        let old = own.signing_pem().unwrap();
        own.rotate().unwrap();
        let bundle_pem = std::fs::read_to_string(dir.path().join(CA)).unwrap();
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join(CA_KEY)).unwrap()).unwrap();
        let signature = key.sign(bundle_pem.as_bytes()).unwrap();
        assert_eq!(bundle::verify(&old, &bundle_pem, &old, &signature), Ok(2));
        let next = own.next_pem().unwrap();
        // Signed by a CA the agent does not trust, or tampered with: refused.
        assert_eq!(bundle::verify(&next, &bundle_pem, &old, &signature), Err(bundle::Error::UnknownSigner));
        let tampered =
            bundle_pem.replace("-----END CERTIFICATE-----\n-----BEGIN", "-----END CERTIFICATE-----\n\n-----BEGIN");
        assert_eq!(bundle::verify(&old, &tampered, &old, &signature), Err(bundle::Error::BadSignature));
        let next_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join(NEXT_KEY)).unwrap()).unwrap();
        let wrong = next_key.sign(bundle_pem.as_bytes()).unwrap();
        assert_eq!(bundle::verify(&old, &bundle_pem, &old, &wrong), Err(bundle::Error::BadSignature));
    }
}
