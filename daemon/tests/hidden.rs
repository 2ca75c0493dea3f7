//! The daemon's secrets and state are hidden from its export whatever the
//! export path says; directories are hidden only when they are the daemon's own.
use std::path::{Path, PathBuf};

use mosix_daemon::config::{Config, Export, TlsConfig};
use mosix_daemon::mount::{hidden_paths, private_dir};

#[test]
fn secrets_and_their_own_directories_are_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let etc = root.join("etc/mosix");
    std::fs::create_dir_all(&etc).unwrap();
    let cfg = Config {
        name: "n1".into(),
        id: None,
        listen: "127.0.0.1:7700".parse().unwrap(),
        peers: vec![],
        tls: TlsConfig {
            ca: etc.join("ca.pem"),
            cert: etc.join("n1.pem"),
            key: etc.join("n1.key"),
        },
        mountpoint: "/mosix".into(),
        control_socket: root.join("run/mosix/control.sock"),
        export: Export::default(),
        mount: true,
        cache: Default::default(),
        source: Some(etc.join("node.toml")),
    };
    let hidden = hidden_paths(&cfg);
    for p in [
        "/proc",
        "/sys",
        "/dev",
        "/mosix",
        etc.join("node.toml").to_str().unwrap(),
        etc.join("ca.pem").to_str().unwrap(),
        etc.join("n1.pem").to_str().unwrap(),
        etc.join("n1.key").to_str().unwrap(),
        etc.to_str().unwrap(),
        root.join("run/mosix").to_str().unwrap(),
        root.join("run/mosix/control.sock").to_str().unwrap(),
    ] {
        assert!(
            hidden.contains(&PathBuf::from(p)),
            "{p} not hidden: {hidden:?}"
        );
    }
}

#[test]
fn a_shared_directory_is_not_hidden_for_holding_a_key() {
    let p = Path::new;
    assert_eq!(
        private_dir(p("/etc/mosix/n1.key"), p("/")),
        Some("/etc/mosix".into())
    );
    // Directly under /: only the file itself is hidden.
    assert_eq!(private_dir(p("/etc/n1.key"), p("/")), None);
    assert_eq!(private_dir(p("/root/n1.key"), p("/")), None);
    // The export root or one of its ancestors would hide the export.
    assert_eq!(private_dir(p("/srv/data/n1.key"), p("/srv/data")), None);
    assert_eq!(private_dir(p("/srv/data/n1.key"), p("/srv/data/pub")), None);
    assert_eq!(
        private_dir(p("/srv/data/keys/n1.key"), p("/srv/data")),
        Some("/srv/data/keys".into())
    );
}
