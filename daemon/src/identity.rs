//! A node is its certificate. Before it starts, the daemon refuses a
//! private key that others could read (as ssh does) and a config that names
//! another node than its own certificate does.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::{Config, ConfigError};

/// Permission bits a private key must not have: any access by group or others.
pub const KEY_FORBIDDEN_MODE: u32 = 0o077;

/// Refuses a key file that group or others may read or change.
pub fn check_key_mode(path: &Path) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & KEY_FORBIDDEN_MODE != 0 {
        return Err(ConfigError::KeyMode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Checks `cfg` against the node's own certificate: the names must match,
/// and so must the ids when both say one. A config without `id` takes the
/// certificate's.
pub fn check_certificate(cfg: &mut Config) -> Result<(), ConfigError> {
    let path = &cfg.tls.cert;
    let (name, id) =
        mosix_net::pki::node_identity_of_file(path).map_err(|e| ConfigError::Cert {
            path: path.clone(),
            msg: match e {
                mosix_net::NetError::Pki(m) => m,
                e => e.to_string(),
            },
        })?;
    if name != cfg.name {
        return Err(ConfigError::Identity {
            field: "name",
            config: format!("{:?}", cfg.name),
            cert: format!("{name:?}"),
            cert_path: path.clone(),
        });
    }
    match (cfg.id, id) {
        (Some(mine), Some(theirs)) if mine != theirs => Err(ConfigError::Identity {
            field: "id",
            config: mine.to_string(),
            cert: theirs.to_string(),
            cert_path: path.clone(),
        }),
        (None, Some(theirs)) => {
            cfg.id = Some(theirs);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Both checks, key first (a readable key is the more urgent news).
pub fn check(cfg: &mut Config) -> Result<(), ConfigError> {
    check_key_mode(&cfg.tls.key)?;
    check_certificate(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Export, TlsConfig};

    fn node(dir: &Path, name: &str, id: Option<u16>, cert_of: &str) -> Config {
        let (cert, key) = mosix_net::pki::node_paths(dir, cert_of);
        Config {
            name: name.into(),
            id,
            listen: "127.0.0.1:7700".parse().unwrap(),
            peers: vec![],
            tls: TlsConfig {
                ca: dir.join("ca.pem"),
                cert,
                key,
            },
            mountpoint: "/mosix".into(),
            control_socket: "/run/mosix/control.sock".into(),
            export: Export::default(),
            mount: true,
            cache: Default::default(),
            source: None,
        }
    }

    #[test]
    fn a_key_others_can_read_is_refused_naming_file_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        mosix_net::pki::init_cluster(dir.path(), &["n1".into()]).unwrap();
        let mut cfg = node(dir.path(), "n1", Some(1), "n1");
        check(&mut cfg).unwrap();
        let key = cfg.tls.key.clone();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o601] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = check(&mut cfg).unwrap_err().to_string();
            assert!(
                e.contains(&key.display().to_string()) && e.contains(&format!("{mode:04o}")),
                "{e}"
            );
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        check(&mut cfg).unwrap();
        std::fs::remove_file(&key).unwrap();
        assert!(check(&mut cfg).unwrap_err().to_string().contains("n1.key"));
    }

    #[test]
    fn a_config_that_disagrees_with_its_certificate_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        mosix_net::pki::init_cluster(dir.path(), &["n1".into(), "n2".into()]).unwrap();
        // Another node's certificate.
        let e = check(&mut node(dir.path(), "n1", Some(1), "n2"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("name mismatch"), "{e}");
        assert!(e.contains("\"n1\"") && e.contains("\"n2\"") && e.contains("n2.pem"));
        // Its own certificate, but another id.
        let e = check(&mut node(dir.path(), "n2", Some(7), "n2"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("id mismatch"), "{e}");
        assert!(e.contains("id = 7") && e.contains("id 2"), "{e}");
        // No id in the config: the certificate's is taken.
        let mut cfg = node(dir.path(), "n2", None, "n2");
        check(&mut cfg).unwrap();
        assert_eq!(cfg.node_id(), 2);
        // Not a certificate at all.
        std::fs::write(dir.path().join("n1.pem"), "junk").unwrap();
        let e = check(&mut node(dir.path(), "n1", None, "n1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("n1.pem"), "{e}");
    }
}
