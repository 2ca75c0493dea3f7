//! Cluster certificates: one CA per cluster, one certificate per node.
//!
//! Layout of a certificate directory:
//! ```text
//! ca.pem  ca.key          the cluster CA (keep ca.key off the nodes)
//! <node>.pem <node>.key   one pair per node
//! ```
//!
//! A node certificate names its node twice (common name and DNS name) and
//! its node id as the DNS name `id-<N>.mosix`, so that a node is its
//! certificate: [`node_identity`] reads both back.
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

/// The DNS name that records a node id in its certificate. Node names are
/// single DNS labels, so no node name can look like it.
pub fn id_dns_name(id: u16) -> String {
    format!("id-{id}.mosix")
}

fn parse_id_dns_name(name: &str) -> Option<u16> {
    name.strip_prefix("id-")?
        .strip_suffix(".mosix")?
        .parse()
        .ok()
}

/// The node name and node id a node certificate (DER) was issued for. The
/// id is `None` for certificates made before ids were recorded. Fails for a
/// certificate that is not a node certificate (no common name, or a common
/// name that is not also one of its DNS names, or two ids).
pub fn node_identity(cert_der: &[u8]) -> Result<(String, Option<u16>)> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| NetError::Pki(format!("not an X.509 certificate: {e}")))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| NetError::Pki("certificate has no common name".into()))?
        .to_string();
    let dns: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(d) => Some(*d),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(NetError::Pki(format!("bad subject alternative names: {e}"))),
    };
    if !dns.contains(&name.as_str()) {
        return Err(NetError::Pki(format!(
            "certificate for {name:?} does not carry its name as a DNS name: not a node certificate"
        )));
    }
    let ids: Vec<u16> = dns.iter().filter_map(|d| parse_id_dns_name(d)).collect();
    match ids[..] {
        [] => Ok((name, None)),
        [id] => Ok((name, Some(id))),
        _ => Err(NetError::Pki(format!(
            "certificate for {name:?} carries several node ids {ids:?}"
        ))),
    }
}

/// [`node_identity`] of the first certificate in a PEM file.
pub fn node_identity_of_file(path: &Path) -> Result<(String, Option<u16>)> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path)
        .map_err(|e| NetError::Pki(format!("{}: {e}", path.display())))?;
    node_identity(&der).map_err(|e| NetError::Pki(format!("{}: {e}", path.display())))
}

/// Ids of the node certificates in `dir`, by node name.
fn ids_in(dir: &Path) -> Vec<(String, u16)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != "ca.pem")
        .filter(|e| e.path().extension().is_some_and(|x| x == "pem"))
        .filter_map(|e| match node_identity_of_file(&e.path()) {
            Ok((name, Some(id))) => Some((name, id)),
            _ => None,
        })
        .collect()
}

/// The lowest node id above every id already issued in `dir`.
pub fn next_free_id(dir: &Path) -> Result<u16> {
    let next = ids_in(dir).iter().map(|(_, id)| *id).max().unwrap_or(0) + 1;
    if next > mosix_proto::proc::MAX_NODE_ID {
        return Err(NetError::Pki(format!(
            "no node id left above {}: name one with --id",
            next - 1
        )));
    }
    Ok(next)
}

/// Issues a certificate for `node` with the next free node id (see
/// [`next_free_id`]), signed by the CA in `dir`. Returns the id.
pub fn issue_node(dir: &Path, node: &str) -> Result<u16> {
    let id = next_free_id(dir)?;
    issue_node_with_id(dir, node, id)?;
    Ok(id)
}

/// Issues a certificate for `node` with node id `id`, signed by the CA in
/// `dir`. Refuses an id that another certificate in `dir` already has.
pub fn issue_node_with_id(dir: &Path, node: &str, id: u16) -> Result<()> {
    mosix_proto::validate_node_name(node).map_err(NetError::Pki)?;
    if !(1..=mosix_proto::proc::MAX_NODE_ID).contains(&id) {
        return Err(NetError::Pki(format!(
            "node id {id} out of range 1..={}",
            mosix_proto::proc::MAX_NODE_ID
        )));
    }
    if let Some((other, _)) = ids_in(dir).into_iter().find(|(n, i)| *i == id && n != node) {
        return Err(NetError::Pki(format!(
            "node id {id} is already {other}'s (in {})",
            dir.display()
        )));
    }
    let (ca_cert, ca_key) = ca_paths(dir);
    let ca_pem = fs::read_to_string(&ca_cert)
        .map_err(|e| NetError::Pki(format!("{}: {e}", ca_cert.display())))?;
    let ca_key = KeyPair::from_pem(
        &fs::read_to_string(&ca_key)
            .map_err(|e| NetError::Pki(format!("{}: {e}", ca_key.display())))?,
    )
    .map_err(pki_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(pki_err)?;

    let mut params = CertificateParams::new(vec![
        node.to_string(),
        id_dns_name(id),
        mosix_proto::SERVER_NAME.to_string(),
    ])
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

/// A CA plus one certificate per node; the nodes get ids 1, 2, ... in order.
pub fn init_cluster(dir: &Path, nodes: &[String]) -> Result<()> {
    create_ca(dir)?;
    for (i, n) in nodes.iter().enumerate() {
        let id = u16::try_from(i + 1)
            .ok()
            .filter(|id| *id <= mosix_proto::proc::MAX_NODE_ID)
            .ok_or_else(|| NetError::Pki("too many nodes".into()))?;
        issue_node_with_id(dir, n, id)?;
    }
    Ok(())
}

/// The SHA-256 fingerprint of a certificate (DER), in lowercase hex: what
/// the revocation list holds (`openssl x509 -noout -fingerprint -sha256`
/// prints the same bytes, upper case with colons).
pub fn fingerprint(cert_der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, cert_der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// [`fingerprint`] of the first certificate in a PEM file.
pub fn fingerprint_of_file(path: &Path) -> Result<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path)
        .map_err(|e| NetError::Pki(format!("{}: {e}", path.display())))?;
    Ok(fingerprint(&der))
}

/// Whether `s` looks like a [`fingerprint`].
pub fn is_fingerprint(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The node certificates this node refuses although the CA signed them,
/// kept in a file (one fingerprint per line, then optionally the node's
/// name; `#` starts a comment) so a revocation outlives restarts. Checked at
/// every TLS handshake, both ways.
#[derive(Debug, Default)]
pub struct Revocations {
    path: Option<PathBuf>,
    /// Fingerprint -> node name (as far as known).
    set: std::sync::RwLock<std::collections::BTreeMap<String, String>>,
}

impl Revocations {
    /// An empty list that lives only in memory.
    pub fn none() -> std::sync::Arc<Self> {
        std::sync::Arc::default()
    }

    /// The list in `path`; a missing file is an empty list, a line that is
    /// not a fingerprint an error naming the line.
    pub fn load(path: &Path) -> Result<std::sync::Arc<Self>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(NetError::Pki(format!("{}: {e}", path.display()))),
        };
        let mut set = std::collections::BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut words = line.split_whitespace();
            let Some(fp) = words.next() else { continue };
            let fp = fp.to_ascii_lowercase();
            if !is_fingerprint(&fp) {
                return Err(NetError::Pki(format!(
                    "{}:{}: not a SHA-256 certificate fingerprint: {fp:?}",
                    path.display(),
                    i + 1
                )));
            }
            set.insert(fp, words.next().unwrap_or("").to_string());
        }
        Ok(std::sync::Arc::new(Revocations {
            path: Some(path.to_owned()),
            set: std::sync::RwLock::new(set),
        }))
    }

    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.set
            .read()
            .expect("revocations")
            .contains_key(fingerprint)
    }

    /// Every revoked fingerprint and the node it was for.
    pub fn list(&self) -> Vec<(String, String)> {
        let set = self.set.read().expect("revocations");
        set.iter().map(|(f, n)| (f.clone(), n.clone())).collect()
    }

    /// Adds `fingerprint` (of node `node`) and rewrites the file atomically.
    /// Returns false if it was already revoked.
    pub fn revoke(&self, fingerprint: &str, node: &str) -> Result<bool> {
        if !is_fingerprint(fingerprint) {
            return Err(NetError::Pki(format!(
                "not a SHA-256 certificate fingerprint: {fingerprint:?}"
            )));
        }
        let mut set = self.set.write().expect("revocations");
        if set.contains_key(fingerprint) {
            return Ok(false);
        }
        set.insert(fingerprint.to_string(), node.to_string());
        if let Some(path) = &self.path {
            let mut text = String::from(
                "# Revoked node certificates: SHA-256 fingerprint, node name.\n\
                 # Written by the mosix daemon (mosix cluster remove-node --revoke).\n",
            );
            for (f, n) in set.iter() {
                text.push_str(&format!("{f} {n}\n"));
            }
            let tmp = path.with_extension("tmp");
            let write = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path));
            if let Err(e) = write {
                set.remove(fingerprint);
                return Err(NetError::Pki(format!("{}: {e}", path.display())));
            }
        }
        Ok(true)
    }

    /// `Err` naming the node if the end-entity certificate is revoked; the
    /// refusal is logged (at most every few seconds: a revoked node keeps
    /// trying).
    fn check(
        &self,
        cert: &rustls::pki_types::CertificateDer<'_>,
    ) -> std::result::Result<(), rustls::Error> {
        let fp = fingerprint(cert);
        if !self.is_revoked(&fp) {
            return Ok(());
        }
        static LOG: std::sync::OnceLock<crate::limits::LogLimit> = std::sync::OnceLock::new();
        let log =
            LOG.get_or_init(|| crate::limits::LogLimit::new(std::time::Duration::from_secs(5)));
        if let Some(left_out) = log.allow() {
            let who = node_identity(cert)
                .map(|(n, _)| n)
                .unwrap_or_else(|_| "?".into());
            tracing::warn!(
                node = %who,
                fingerprint = %fp,
                left_out,
                "refused a revoked certificate at the handshake"
            );
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked,
        ))
    }
}

/// The CA's client-certificate check, plus the revocation list.
#[derive(Debug)]
pub(crate) struct RevokingClientVerifier {
    pub inner: std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>,
    pub revoked: std::sync::Arc<Revocations>,
}

impl rustls::server::danger::ClientCertVerifier for RevokingClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.revoked.check(end_entity)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The CA's server-certificate check, plus the revocation list: a node
/// dialing a revoked member refuses it too.
#[derive(Debug)]
pub(crate) struct RevokingServerVerifier {
    pub inner: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
    pub revoked: std::sync::Arc<Revocations>,
}

impl rustls::client::danger::ServerCertVerifier for RevokingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.revoked.check(end_entity)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

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

    #[test]
    fn a_node_certificate_names_its_node_and_id() {
        let dir = tempfile::tempdir().unwrap();
        init_cluster(dir.path(), &["a".into(), "b".into()]).unwrap();
        let who = |n: &str| node_identity_of_file(&node_paths(dir.path(), n).0).unwrap();
        assert_eq!(who("a"), ("a".to_string(), Some(1)));
        assert_eq!(who("b"), ("b".to_string(), Some(2)));
        // add-node takes the next free id, or the one asked for if free.
        assert_eq!(issue_node(dir.path(), "c").unwrap(), 3);
        assert_eq!(who("c"), ("c".to_string(), Some(3)));
        issue_node_with_id(dir.path(), "e", 9).unwrap();
        assert_eq!(who("e"), ("e".to_string(), Some(9)));
        assert_eq!(issue_node(dir.path(), "f").unwrap(), 10);
        let taken = issue_node_with_id(dir.path(), "g", 2).unwrap_err();
        assert!(taken.to_string().contains("already b's"), "{taken}");
        assert!(issue_node_with_id(dir.path(), "g", 0).is_err());
        // The CA certificate is not a node certificate.
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let ca = rustls::pki_types::CertificateDer::from_pem_slice(&ca).unwrap();
        assert!(node_identity(&ca).is_err());
        assert!(node_identity(b"junk").is_err());
    }

    #[test]
    fn a_revocation_list_survives_a_reload_and_refuses_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        init_cluster(dir.path(), &["a".into()]).unwrap();
        let fp = fingerprint_of_file(&node_paths(dir.path(), "a").0).unwrap();
        assert!(is_fingerprint(&fp), "{fp}");
        let path = dir.path().join("revoked");
        let r = Revocations::load(&path).unwrap();
        assert!(!r.is_revoked(&fp));
        assert!(r.revoke(&fp, "a").unwrap());
        assert!(!r.revoke(&fp, "a").unwrap());
        let again = Revocations::load(&path).unwrap();
        assert!(again.is_revoked(&fp));
        assert_eq!(again.list(), vec![(fp, "a".to_string())]);
        std::fs::write(&path, "nonsense\n").unwrap();
        let e = Revocations::load(&path).unwrap_err().to_string();
        assert!(e.contains("revoked:1"), "{e}");
    }
}
