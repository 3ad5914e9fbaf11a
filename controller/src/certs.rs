//! `outpost-controller certs`: development certificates with rcgen, so a newcomer needs no openssl. A CA,
//! the controller's server certificate, and client certificates whose SAN URI carries the identity.

use std::path::{Path, PathBuf};

use outpost_common::identity::{admin_uri, agent_uri};
use outpost_common::ids::WorkerId;
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

fn write_pair(dir: &Path, stem: &str, cert_pem: &str, key: &KeyPair) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert_pem).map_err(io("write", &cert_path))?;
    write_private(&key_path, &key.serialize_pem())?;
    Ok(vec![cert_path, key_path])
}

fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("write", path))?;
    file.write_all(contents.as_bytes()).map_err(io("write", path))
}

fn ca_params() -> Result<CertificateParams, Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Outpost development CA");
    ca.distinguished_name = name;
    Ok(ca)
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, Error> {
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
    let ca_key = KeyPair::generate()?;
    let ca = ca_params()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut written = write_pair(dir, "ca", &ca_cert.pem(), &ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(extra_sans.iter().cloned());
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "outpost-controller");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    written.extend(write_pair(dir, "controller", &cert.pem(), &key)?);
    Ok(written)
}

fn client(dir: &Path, stem: &str, common_name: &str, uri: String) -> Result<Vec<PathBuf>, Error> {
    let issuer = load_issuer(dir)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(dir, stem, &cert.pem(), &key)
}

/// Writes agent-W.pem / agent-W.key, signed by the CA in `dir`.
pub fn agent(dir: &Path, worker_id: &str, trust_domain: &str) -> Result<Vec<PathBuf>, Error> {
    let worker = WorkerId::parse(worker_id)?;
    client(dir, &format!("agent-{worker}"), &format!("agent {worker}"), agent_uri(trust_domain, &worker))
}

/// Writes admin-N.pem / admin-N.key, signed by the CA in `dir`.
pub fn admin(dir: &Path, name: &str, trust_domain: &str) -> Result<Vec<PathBuf>, Error> {
    WorkerId::parse(name)?;
    client(dir, &format!("admin-{name}"), &format!("admin {name}"), admin_uri(trust_domain, name))
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
            let value = ALPHABET.iter().position(|c| *c == byte).unwrap() as u32;
            buffer = (buffer << 6) | value;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buffer >> bits) as u8);
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
        admin(dir.path(), "ops", "outpost").unwrap();
        let agent_id = identity::from_certificate("outpost", &leaf_der(&dir.path().join("agent-w-1.pem"))).unwrap();
        assert_eq!(agent_id, Identity::Agent(WorkerId::parse("w-1").unwrap()));
        let admin_id = identity::from_certificate("outpost", &leaf_der(&dir.path().join("admin-ops.pem"))).unwrap();
        assert_eq!(admin_id, Identity::Admin("ops".into()));
        assert_eq!(
            identity::from_certificate("outpost", &leaf_der(&dir.path().join("controller.pem"))),
            Err(identity::Error::NoIdentity { trust_domain: "outpost".into() })
        );
        assert!(matches!(init(dir.path(), &[]), Err(Error::Exists { .. })));
    }
}
