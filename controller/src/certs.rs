//! `outpost-controller certs`: development certificates with rcgen, so a newcomer needs no openssl. A CA,
//! the controller's server certificate, and client certificates whose SAN URI carries the identity.

use std::path::{Path, PathBuf};

use outpost_common::identity::{admin_uri, agent_uri};
use outpost_common::ids::WorkerId;
use outpost_common::roles::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; remove it or choose another --out")]
    Exists { path: PathBuf },
    #[error("invalid name: {0}")]
    Name(#[from] outpost_common::ids::Error),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { action, path, source }
}

/// Writes `<stem>.key` (0600) and then `<stem>.pem` into `dir`, each replaced atomically (a reader sees the old
/// file or the new one, never a part).
pub(crate) fn write_pair(dir: &Path, stem: &str, cert_pem: &str, key: &KeyPair) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    write_private(&key_path, &key.serialize_pem())?;
    write_private(&cert_path, cert_pem)?;
    Ok(vec![cert_path, key_path])
}

/// Writes a 0600 file through a temporary file in the same directory and a rename.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.new"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io("write", &temporary))?;
    file.write_all(contents.as_bytes()).map_err(io("write", &temporary))?;
    file.sync_all().map_err(io("write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io("write", path))
}

fn ca_params(common_name: &str) -> Result<CertificateParams, Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    ca.distinguished_name = name;
    Ok(ca)
}

pub(crate) fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, Error> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
    let key_pem = std::fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
    let key = KeyPair::from_pem(&key_pem)?;
    Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?)
}

/// Writes ca.pem, ca.key, controller.pem, controller.key into `dir`. Refuses to overwrite an existing CA.
pub fn init(dir: &Path, extra_sans: &[String]) -> Result<Vec<PathBuf>, Error> {
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() {
        return Err(Error::Exists { path: ca_path });
    }
    let mut written = new_ca(dir, "ca", "Outpost development CA")?;
    written.extend(server(dir, extra_sans, None)?);
    Ok(written)
}

/// A new CA in `dir` (`<stem>.pem`, `<stem>.key`) named `common_name`.
pub(crate) fn new_ca(dir: &Path, stem: &str, common_name: &str) -> Result<Vec<PathBuf>, Error> {
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params(common_name)?.self_signed(&ca_key)?;
    write_pair(dir, stem, &ca_cert.pem(), &ca_key)
}

/// A name no other CA the controller made has: which CA issued a certificate is told by its issuer's name.
pub(crate) fn unique_ca_name() -> String {
    let suffix: String = (0..8).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
    format!("Outpost CA {suffix}")
}

/// A certificate valid from a minute ago (clock skew) for `lifetime`; rcgen's default (no end) when `None`.
fn valid_for(params: &mut CertificateParams, lifetime: Option<std::time::Duration>) {
    if let Some(lifetime) = lifetime {
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(60)).into();
        params.not_after = (now + lifetime).into();
    }
}

/// The controller's server certificate (controller.pem, controller.key) for localhost, 127.0.0.1 and
/// `extra_sans`, signed by the CA in `dir`.
pub(crate) fn server(
    dir: &Path,
    extra_sans: &[String],
    lifetime: Option<std::time::Duration>,
) -> Result<Vec<PathBuf>, Error> {
    let issuer = load_issuer(dir)?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(extra_sans.iter().filter(|n| !names.contains(n)).cloned().collect::<Vec<_>>());
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "outpost-controller");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    valid_for(&mut params, lifetime);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(dir, "controller", &cert.pem(), &key)
}

fn client(
    dir: &Path,
    stem: &str,
    common_name: &str,
    uri: String,
    lifetime: Option<std::time::Duration>,
) -> Result<Vec<PathBuf>, Error> {
    let issuer = load_issuer(dir)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    valid_for(&mut params, lifetime);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(dir, stem, &cert.pem(), &key)
}

/// Writes agent-W.pem / agent-W.key, signed by the CA in `dir`.
pub fn agent(dir: &Path, worker_id: &str, trust_domain: &str) -> Result<Vec<PathBuf>, Error> {
    let worker = WorkerId::parse(worker_id)?;
    client(dir, &format!("agent-{worker}"), &format!("agent {worker}"), agent_uri(trust_domain, &worker), None)
}

/// Writes admin-N.pem / admin-N.key for an operator with `role`, signed by the CA in `dir`. `None` writes the form
/// from before roles (`spiffe://<td>/admin/N`), which the controller refuses unless `--admin-role` maps it: only for
/// testing a migration; `outpost-controller certs admin` always names a role.
pub fn admin(dir: &Path, name: &str, role: Option<Role>, trust_domain: &str) -> Result<Vec<PathBuf>, Error> {
    admin_for(dir, name, role, trust_domain, None)
}

/// The same, valid for `lifetime` (rcgen's default when `None`).
pub(crate) fn admin_for(
    dir: &Path,
    name: &str,
    role: Option<Role>,
    trust_domain: &str,
    lifetime: Option<std::time::Duration>,
) -> Result<Vec<PathBuf>, Error> {
    WorkerId::parse(name)?;
    let uri = match role {
        Some(role) => admin_uri(trust_domain, role, name),
        None => format!("spiffe://{trust_domain}/admin/{name}"),
    };
    client(dir, &format!("admin-{name}"), &format!("admin {name}"), uri, lifetime)
}

#[cfg(test)]
mod tests {
    use outpost_common::identity::{self, Identity};

    use super::*;

    fn leaf_der(path: &Path) -> Vec<u8> {
        let pem = std::fs::read_to_string(path).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&body)
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut buffer, mut bits) = (0u32, 0);
        for byte in text.bytes().filter(|b| *b != b'=') {
            let value = ALPHABET.iter().position(|c| *c == byte).and_then(|v| u32::try_from(v).ok()).unwrap();
            buffer = (buffer << 6) | value;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push(u8::try_from((buffer >> bits) & 0xff).unwrap());
                buffer &= (1 << bits) - 1;
            }
        }
        out
    }

    #[test]
    fn issued_certificates_carry_their_identity() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[]).unwrap();
        agent(dir.path(), "w-1", "outpost").unwrap();
        admin(dir.path(), "ops", Some(Role::Operator), "outpost").unwrap();
        let agent_id = identity::from_certificate("outpost", &leaf_der(&dir.path().join("agent-w-1.pem"))).unwrap();
        assert_eq!(agent_id, Identity::Agent(WorkerId::parse("w-1").unwrap()));
        let admin_id = identity::from_certificate("outpost", &leaf_der(&dir.path().join("admin-ops.pem"))).unwrap();
        assert_eq!(admin_id, Identity::Admin { name: "ops".into(), role: Some(Role::Operator) });
        assert_eq!(
            identity::from_certificate("outpost", &leaf_der(&dir.path().join("controller.pem"))),
            Err(identity::Error::NoIdentity { trust_domain: "outpost".into() })
        );
        assert!(matches!(init(dir.path(), &[]), Err(Error::Exists { .. })));
    }
}
