//! Cluster certificates: one CA per cluster, one certificate per node.
//!
//! Layout of a certificate directory:
//! ```text
//! ca.pem  ca.key          the cluster CA (keep ca.key off the nodes)
//! <node>.pem <node>.key   one pair per node
//! ```
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{NetError, Result};

fn pki_err(e: impl std::fmt::Display) -> NetError {
    NetError::Pki(e.to_string())
}

fn write_file(path: &Path, data: &str, mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| NetError::Pki(format!("{}: {e}", path.display())))?;
    f.write_all(data.as_bytes())?;
    Ok(())
}

pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

pub fn node_paths(dir: &Path, node: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{node}.pem")),
        dir.join(format!("{node}.key")),
    )
}

/// Creates a new cluster CA in `dir`. Refuses to overwrite an existing one.
pub fn create_ca(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let (cert_path, key_path) = ca_paths(dir);
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mosix cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = params.self_signed(&key).map_err(pki_err)?;
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    Ok(())
}

/// Issues a certificate for `node`, signed by the CA in `dir`.
pub fn issue_node(dir: &Path, node: &str) -> Result<()> {
    mosix_proto::validate_node_name(node).map_err(NetError::Pki)?;
    let (ca_cert, ca_key) = ca_paths(dir);
    let ca_pem = fs::read_to_string(&ca_cert)
        .map_err(|e| NetError::Pki(format!("{}: {e}", ca_cert.display())))?;
    let ca_key = KeyPair::from_pem(
        &fs::read_to_string(&ca_key)
            .map_err(|e| NetError::Pki(format!("{}: {e}", ca_key.display())))?,
    )
    .map_err(pki_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(pki_err)?;

    let mut params =
        CertificateParams::new(vec![node.to_string(), mosix_proto::SERVER_NAME.to_string()])
            .map_err(pki_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
    let (cert_path, key_path) = node_paths(dir, node);
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    Ok(())
}

/// A CA plus one certificate per node.
pub fn init_cluster(dir: &Path, nodes: &[String]) -> Result<()> {
    create_ca(dir)?;
    for n in nodes {
        issue_node(dir, n)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_loadable_identities_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init_cluster(dir.path(), &["n1".into(), "n2".into()]).unwrap();
        let (c, k) = node_paths(dir.path(), "n2");
        let files = crate::TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: c,
            key: k.clone(),
        };
        crate::Tls::load(&files).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(create_ca(dir.path()).is_err());
        assert!(issue_node(dir.path(), "n1").is_err());
        assert!(issue_node(dir.path(), "Bad/Name").is_err());
    }
}
