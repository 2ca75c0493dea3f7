//! The node configuration file (TOML). See docs/CONFIGURATION.md.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    /// A private key others could read or change: refused, as ssh does.
    #[error(
        "private key {path} has mode {mode:04o}: group and others must have no access \
         (chmod 600 {path})"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("certificate {path}: {msg}")]
    Cert { path: PathBuf, msg: String },
    /// The config and the node's own certificate name different nodes.
    #[error(
        "{field} mismatch: the config says {field} = {config}, but the certificate {cert_path} \
         is for {field} {cert}"
    )]
    Identity {
        field: &'static str,
        config: String,
        cert: String,
        cert_path: PathBuf,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node name: a DNS label, unique in the cluster.
    pub name: String,
    /// Node id, 1 to 511, unique in the cluster: the high bits of the gpids of
    /// the processes whose home is this node. Default: the id in the node's
    /// certificate (the daemon fills it in, see `identity::check`), else
    /// derived from the name (set it explicitly to rule out collisions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    /// UDP address the node's QUIC endpoint listens on; peers reach it here.
    pub listen: SocketAddr,
    /// Any known members to join through. One live one is enough.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    pub tls: TlsConfig,
    /// Where the /mosix namespace is mounted.
    #[serde(default = "default_mountpoint")]
    pub mountpoint: PathBuf,
    /// Unix socket the local CLI (`mosix status`) talks to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// The tree this node offers to the cluster as /mosix/nodes/<name>.
    #[serde(default)]
    pub export: Export,
    /// Whether to mount /mosix at all (a pure file server can skip it).
    #[serde(default = "yes")]
    pub mount: bool,
    /// Caching of other nodes' files.
    #[serde(default)]
    pub cache: Cache,
    /// The file this config was loaded from (not a key of the file): the
    /// daemon never exports it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate, signed by the CA (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Export {
    #[serde(default = "root_path")]
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub root_squash: bool,
}

/// `[cache]`: caching of other nodes' files under their leases
/// (`fs/src/cached.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// Whether other nodes' files are cached under leases at all (also
    /// switched on by `MOSIX_CACHE=1` in the daemon's environment). Off by
    /// default until the coherence stress test runs to its end (see
    /// docs/SEMANTICS.md, Consistency).
    #[serde(default)]
    pub enabled: bool,
    /// Memory for cached attributes and names, per serving node, in MiB.
    /// File data is cached by the kernel's page cache, outside this limit.
    #[serde(default = "default_cache_mib")]
    pub memory_mib: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            enabled: false,
            memory_mib: default_cache_mib(),
        }
    }
}

fn default_cache_mib() -> u64 {
    64
}

pub fn default_mountpoint() -> PathBuf {
    PathBuf::from("/mosix")
}

pub fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/mosix/control.sock")
}

fn root_path() -> PathBuf {
    PathBuf::from("/")
}

fn yes() -> bool {
    true
}

impl Default for Export {
    fn default() -> Self {
        Export {
            path: root_path(),
            read_only: false,
            root_squash: false,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        // Relative paths are relative to the config file, so a config
        // directory can be moved as a whole.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.tls.ca, &mut cfg.tls.cert, &mut cfg.tls.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate().map_err(|msg| ConfigError::Invalid {
            path: path.to_owned(),
            msg,
        })?;
        cfg.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_owned()));
        Ok(cfg)
    }

    /// This node's id (see [`Config::id`]).
    pub fn node_id(&self) -> u16 {
        self.id.unwrap_or_else(|| {
            // FNV-1a of the name, folded into 1..=511.
            let h = self.name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
            (h % mosix_proto::proc::MAX_NODE_ID as u64) as u16 + 1
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        mosix_proto::validate_node_name(&self.name)?;
        if let Some(id) = self.id {
            if !(1..=mosix_proto::proc::MAX_NODE_ID).contains(&id) {
                return Err(format!(
                    "id {id} out of range 1..={}",
                    mosix_proto::proc::MAX_NODE_ID
                ));
            }
        }
        if self.peers.contains(&self.listen) {
            return Err("peers must not list this node's own listen address".into());
        }
        if !self.export.path.is_absolute() {
            return Err(format!(
                "export path {} is not absolute",
                self.export.path.display()
            ));
        }
        if !self.mountpoint.is_absolute() {
            return Err("mountpoint must be an absolute path".into());
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults_and_relative_paths_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n1.toml");
        std::fs::write(
            &p,
            r#"
name = "n1"
listen = "127.0.0.1:7700"
peers = ["127.0.0.2:7700"]
[tls]
ca = "certs/ca.pem"
cert = "certs/n1.pem"
key = "/abs/n1.key"
"#,
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.mountpoint, PathBuf::from("/mosix"));
        assert_eq!(c.export, Export::default());
        assert!(c.mount);
        assert_eq!(c.tls.ca, dir.path().join("certs/ca.pem"));
        assert_eq!(c.tls.key, PathBuf::from("/abs/n1.key"));
        // What we write, we read back.
        std::fs::write(&p, c.to_toml()).unwrap();
        assert_eq!(Config::load(&p).unwrap(), c);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        let base = "listen = \"127.0.0.1:7700\"\n[tls]\nca=\"a\"\ncert=\"b\"\nkey=\"c\"\n";
        std::fs::write(&p, format!("name = \"N 1\"\n{base}")).unwrap();
        assert!(Config::load(&p)
            .unwrap_err()
            .to_string()
            .contains("invalid node name"));
        std::fs::write(&p, format!("name = \"n1\"\nbogus = 1\n{base}")).unwrap();
        assert!(Config::load(&p).unwrap_err().to_string().contains("bogus"));
        assert!(Config::load(&dir.path().join("missing.toml")).is_err());
    }
}
