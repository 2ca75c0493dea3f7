//! What the export's tests share: a fresh export, and callers.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mosix_proto::fs::Creds;

use super::{Export, ExportConfig, NOBODY};
use crate::service::{ClientId, Who};

pub fn root_creds() -> Creds {
    Creds {
        uid: 0,
        gid: 0,
        groups: vec![],
        pid: 1,
    }
}

/// `creds` on the one client node most tests need.
pub fn who(creds: Creds) -> Who {
    Who {
        client: ClientId {
            node: "client".into(),
            run: 1,
        },
        creds,
    }
}

pub fn root() -> Who {
    who(root_creds())
}

pub fn nobody() -> Who {
    who(Creds {
        uid: NOBODY,
        gid: NOBODY,
        groups: vec![],
        pid: 2,
    })
}

/// Fails the test unless it runs as root: a test that passed by doing
/// nothing would hide exactly the permission checks it exists for. CI runs
/// as root; elsewhere run these with sudo or skip them by name.
pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({why}); run it as root or skip it by name"
    );
}

/// An export of a fresh tempdir that anyone may traverse.
pub fn setup_with(f: impl FnOnce(&Path, &mut ExportConfig)) -> (tempfile::TempDir, Export) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = ExportConfig {
        root: dir.path().to_path_buf(),
        ..Default::default()
    };
    f(dir.path(), &mut cfg);
    let e = Export::new(cfg).unwrap();
    (dir, e)
}

pub fn setup() -> (tempfile::TempDir, Export) {
    setup_with(|_, _| {})
}
