//! Where the controller's TLS trust comes from: the files an operator gives (`--tls-cert`, `--tls-key`,
//! `--tls-ca`), or, when none is given, trust the controller makes itself on first start and keeps in
//! `--trust-dir` (beside the SQLite file): a CA, its server certificate and a local admin identity, each key 0600,
//! reused after a restart, the certificates renewed before they expire (and made again when the signing CA
//! changed: `rotation.rs` rotates the CA in phases). Never replaces a CA agents trust outside a rotation, and never
//! logs or returns a private key's contents.

mod rotation;

pub use rotation::{Error as RotationError, Phase, pem_blocks};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use outpost_common::duration;
use outpost_common::tls::TlsFiles;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::certs;

/// The local admin identity's name: `spiffe://<trust-domain>/admin/local`.
pub const LOCAL_ADMIN: &str = "local";

/// The directory holding the database file `db` (`.` for a bare file name).
pub fn db_dir(db: &Path) -> &Path {
    db.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The trust flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "trust")]
#[command(next_help_heading = "TLS trust")]
pub struct Config {
    /// This controller's certificate (PEM). Give all of --tls-cert, --tls-key and --tls-ca, or none: then the
    /// controller makes its own CA and certificate in --trust-dir.
    #[arg(long, env = "OUTPOST_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This controller's private key (PEM).
    #[arg(long, env = "OUTPOST_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM): only clients it signed are accepted.
    #[arg(long, env = "OUTPOST_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Where the trust the controller makes itself is kept (ca.pem/.key, controller.pem/.key, admin-local.pem/.key;
    /// keys 0600). Default: `trust/` in the directory of --db.
    #[arg(long, env = "OUTPOST_TRUST_DIR")]
    pub trust_dir: Option<PathBuf>,
    /// DNS names or IP addresses the certificate the controller makes itself is valid for, besides localhost and
    /// 127.0.0.1 (the names agents dial: a Service's names, a load balancer's). Repeatable or comma-separated; a
    /// changed list gets a new certificate at the next start.
    #[arg(long = "tls-san", env = "OUTPOST_TLS_SANS", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// How long the certificates the controller makes itself live (the CA excepted); each is made again when a
    /// third of its life is left.
    #[arg(long, env = "OUTPOST_OWN_CERT_TTL", value_parser = duration::parse, default_value = "90d")]
    pub own_cert_ttl: Duration,
    /// How often the controller checks whether its own certificates are due for renewal.
    #[arg(long, env = "OUTPOST_OWN_CERT_CHECK_INTERVAL", value_parser = duration::parse, default_value = "1h")]
    pub own_cert_check_interval: Duration,
}

impl Config {
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--own-cert-ttl", self.own_cert_ttl)?;
        duration::positive("--own-cert-check-interval", self.own_cert_check_interval)?;
        let given = [&self.tls_cert, &self.tls_key, &self.tls_ca].iter().filter(|f| f.is_some()).count();
        if given != 0 && given != 3 {
            return Err(duration::Invalid(
                "give all of --tls-cert, --tls-key and --tls-ca, or none of them (the controller then makes its own \
                 in --trust-dir)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The files given, or `None` when the controller makes its own.
    fn given(&self) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
            }
            _ => None,
        }
    }

    /// Where the controller's own trust is kept: --trust-dir, or `trust/` in the directory of `db`.
    pub fn dir(&self, db: &Path) -> PathBuf {
        self.trust_dir.clone().unwrap_or_else(|| db_dir(db).join("trust"))
    }

    /// The trust to serve with: the files given, or the controller's own (made or renewed now as needed) in
    /// --trust-dir, or beside `db`.
    pub fn resolve(&self, db: &Path, trust_domain: &str) -> Result<Trust, RotationError> {
        if let Some(files) = self.given() {
            return Ok(Trust { files, own: None });
        }
        let dir = self.trust_dir.clone().unwrap_or_else(|| {
            let parent = db.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            parent.join("trust")
        });
        let own =
            Own { dir, sans: self.tls_san.clone(), lifetime: self.own_cert_ttl, trust_domain: trust_domain.to_owned() };
        for done in own.ensure(SystemTime::now())? {
            info!(dir = %own.dir.display(), "{done}");
        }
        Ok(Trust { files: own.server_files(), own: Some(own) })
    }
}

/// What the controller serves with.
#[derive(Clone, Debug)]
pub struct Trust {
    pub files: TlsFiles,
    /// Set when the controller made the trust itself.
    pub own: Option<Own>,
}

impl Trust {
    /// The CA key's file when the controller made its own CA (so it can join agents with no --ca-key).
    pub fn own_ca_key(&self) -> Option<PathBuf> {
        self.own.as_ref().map(|own| own.dir.join("ca.key"))
    }
}

/// Trust the controller made itself, kept in `dir`.
#[derive(Clone, Debug)]
pub struct Own {
    pub dir: PathBuf,
    sans: Vec<String>,
    lifetime: Duration,
    trust_domain: String,
}

impl Own {
    fn server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("controller.pem"),
            key: self.dir.join("controller.key"),
            ca: self.dir.join("ca.pem"),
        }
    }

    /// The local admin identity's files (for `outpostctl` run beside the controller).
    pub fn admin_files(&self) -> TlsFiles {
        let stem = format!("admin-{LOCAL_ADMIN}");
        TlsFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
            ca: self.dir.join("ca.pem"),
        }
    }

    /// Whether the certificate in `path` is missing, unreadable, or has less than a third of its life left at `now`.
    fn due(path: &Path, now: SystemTime) -> bool {
        let Ok(pem) = std::fs::read_to_string(path) else { return true };
        let Some((not_before, not_after)) = outpost_common::identity::pem_validity(&pem) else { return true };
        let life = not_after.duration_since(not_before).unwrap_or_default();
        not_after.duration_since(now).map_or(true, |left| left < life / 3)
    }

    /// Makes what is missing and renews what is due (a certificate the signing CA did not issue is due); finishes
    /// a CA rotation step cut short; says what it did.
    pub fn ensure(&self, now: SystemTime) -> Result<Vec<String>, RotationError> {
        let mut done = Vec::new();
        if !self.dir.join("ca.pem").exists() {
            certs::new_ca(&self.dir, "ca", &certs::unique_ca_name())?;
            done.push("made a new CA for this controller (no --tls-* files given)".to_owned());
        }
        done.extend(self.repair()?);
        let signing = self.signing_fingerprint()?;
        // Each marker says what its certificate was made for: the names and the CA.
        let sans_file = self.dir.join("controller.sans");
        let made_for = format!("{}\nca={signing}", self.sans.join(","));
        let remade =
            |marker: &Path, made_for: &str| std::fs::read_to_string(marker).map_or(true, |old| old != made_for);
        if remade(&sans_file, &made_for) || Self::due(&self.dir.join("controller.pem"), now) {
            certs::server(&self.dir, &self.sans, Some(self.lifetime))?;
            certs::write_private(&sans_file, &made_for)?;
            let names: Vec<&str> =
                ["localhost", "127.0.0.1"].into_iter().chain(self.sans.iter().map(String::as_str)).collect();
            done.push(format!("made the controller's certificate (names: {}; CA {signing})", names.join(", ")));
        }
        let admin_marker = self.dir.join(format!("admin-{LOCAL_ADMIN}.ca"));
        if remade(&admin_marker, &signing) || Self::due(&self.admin_files().cert, now) {
            let role = Some(outpost_common::roles::Role::Admin);
            certs::admin_for(&self.dir, LOCAL_ADMIN, role, &self.trust_domain, Some(self.lifetime))?;
            certs::write_private(&admin_marker, &signing)?;
            done.push(format!("made the local admin identity (admin-{LOCAL_ADMIN}.pem)"));
        }
        Ok(done)
    }

    /// Renews the certificates when due, every `interval`, until `token` is cancelled. The gRPC server's reloader
    /// serves a renewed certificate from its next check on.
    pub async fn renew(self, interval: Duration, token: CancellationToken) {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let own = self.clone();
            match tokio::task::spawn_blocking(move || own.ensure(SystemTime::now())).await {
                Ok(Ok(done)) => done.iter().for_each(|d| info!(dir = %self.dir.display(), "{d}")),
                Ok(Err(e)) => {
                    warn!(dir = %self.dir.display(), error = %e, "cannot renew the controller's certificates")
                }
                Err(e) => warn!(error = %e, "the certificate renewal task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(dir: &Path, sans: &[&str]) -> Own {
        Own {
            dir: dir.to_owned(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            lifetime: Duration::from_secs(90 * 86_400),
            trust_domain: "outpost".into(),
        }
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn made_once_reused_and_renewed_when_a_third_of_the_life_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let trust = own(dir.path(), &["outpost-controller.ns.svc"]);
        let now = SystemTime::now();
        assert_eq!(trust.ensure(now).unwrap().len(), 3, "CA, server certificate, local admin");
        for key in ["ca.key", "controller.key", "admin-local.key"] {
            assert_eq!(mode(&dir.path().join(key)), 0o600, "{key}");
        }
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let server = std::fs::read(dir.path().join("controller.pem")).unwrap();
        assert_eq!(trust.ensure(now).unwrap(), Vec::<String>::new(), "a restart reuses everything");
        assert_eq!(std::fs::read(dir.path().join("controller.pem")).unwrap(), server);

        // 61 days on, less than a third of 90 days is left: both leaf certificates are made again, the CA kept.
        let later = now + Duration::from_secs(61 * 86_400);
        assert_eq!(trust.ensure(later).unwrap().len(), 2);
        assert_ne!(std::fs::read(dir.path().join("controller.pem")).unwrap(), server);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca, "the CA agents trust never changes");

        // A new name: a new server certificate at once.
        let renamed = own(dir.path(), &["outpost-controller.ns.svc", "outpost.example.com"]);
        let done = renamed.ensure(now).unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].contains("outpost.example.com"), "{done:?}");
    }

    #[test]
    fn given_files_are_used_as_they_are_and_a_partial_set_is_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            trust: Config,
        }
        let partial = Cli::parse_from(["x", "--tls-cert", "c.pem"]).trust;
        assert_eq!(
            partial.validate().unwrap_err().0,
            "give all of --tls-cert, --tls-key and --tls-ca, or none of them (the controller then makes its own in \
             --trust-dir)"
        );
        let given = Cli::parse_from(["x", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-ca", "ca.pem"]).trust;
        let trust = given.resolve(Path::new("/nonexistent/outpost.db"), "outpost").unwrap();
        assert!(trust.own.is_none());
        assert_eq!(trust.files.cert, PathBuf::from("c.pem"));

        let dir = tempfile::tempdir().unwrap();
        let none = Cli::parse_from(["x"]).trust;
        let trust = none.resolve(&dir.path().join("outpost.db"), "outpost").unwrap();
        assert_eq!(trust.files.ca, dir.path().join("trust/ca.pem"));
        assert_eq!(trust.own_ca_key(), Some(dir.path().join("trust/ca.key")));
        assert!(trust.files.load().is_ok(), "the made files load as a server identity");
    }
}
