//! Quotas and descriptor use: what one client can hold on a serving node.
use std::os::unix::fs::PermissionsExt;

use mosix_proto::fs::{Creds, ROOT_INO};

use super::limits::Limits;
use super::testutil::*;
use super::{Export, ExportConfig};
use crate::service::{ClientId, Who};

fn export_with(limits: Limits) -> (tempfile::TempDir, Export) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = ExportConfig {
        root: dir.path().to_path_buf(),
        ..Default::default()
    };
    let e = Export::with_limits(cfg, limits).unwrap();
    (dir, e)
}

fn caller(node: &str, uid: u32) -> Who {
    Who {
        client: ClientId {
            node: node.into(),
            run: 1,
        },
        creds: Creds {
            uid,
            gid: uid,
            groups: vec![],
            pid: 5,
        },
    }
}

fn small() -> Limits {
    Limits {
        nofile: 64,
        fd_cache: 8,
        remote_fds: 12,
        session_fds: 8,
        user_fds: 4,
        session_inodes: 100,
    }
}

#[test]
fn looked_up_files_cost_no_descriptor_each() {
    require_root("reopens file handles as a non-root caller");
    let (dir, e) = export_with(small());
    for i in 0..60 {
        std::fs::write(dir.path().join(format!("f{i}")), format!("{i}")).unwrap();
    }
    std::os::unix::fs::symlink("f0", dir.path().join("link")).unwrap();
    let users = [caller("a", 0), caller("a", 1000)];
    let mut ids = Vec::new();
    for i in 0..60 {
        let u = &users[i % 2];
        ids.push(
            e.lookup(u, ROOT_INO, format!("f{i}").as_bytes())
                .unwrap()
                .ino,
        );
    }
    let link = e.lookup(&users[1], ROOT_INO, b"link").unwrap().ino;
    // The root's, plus at most the cache.
    assert!(e.inodes.open_fds() <= 1 + 8, "{}", e.inodes.open_fds());
    // Every file is still reachable, by root and by a user without
    // CAP_DAC_READ_SEARCH, through a descriptor reopened from its handle.
    for (i, &id) in ids.iter().enumerate() {
        let u = &users[(i + 1) % 2];
        assert_eq!(e.getattr(u, id).unwrap().size, format!("{i}").len() as u64);
        let fh = e.open(u, id, libc::O_RDONLY).unwrap();
        assert_eq!(e.read(u, fh, 0, 10).unwrap(), format!("{i}").as_bytes());
        e.release(u, fh).unwrap();
    }
    assert_eq!(e.readlink(&users[1], link).unwrap(), b"f0");
    assert!(e.inodes.open_fds() <= 1 + 8);
    // A file deleted while only its handle was kept is stale, not another.
    std::fs::remove_file(dir.path().join("f1")).unwrap();
    for id in &ids[2..20] {
        e.getattr(&users[0], *id).unwrap();
    }
    assert_eq!(e.getattr(&users[0], ids[1]), Err(libc::ESTALE));
}

#[test]
fn a_client_over_its_descriptor_quota_gets_emfile_and_nobody_else_does() {
    require_root("opens as several uids");
    let (dir, e) = export_with(small());
    e.set_local_node("here");
    for i in 0..30 {
        let p = dir.path().join(format!("f{i}"));
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let open = |w: &Who, i: usize| {
        let f = e.lookup(w, ROOT_INO, format!("f{i}").as_bytes())?;
        e.open(w, f.ino, libc::O_RDONLY)
    };
    let (a1, a2, a3) = (caller("a", 1001), caller("a", 1002), caller("a", 1003));
    let mut held = Vec::new();
    for i in 0..4 {
        held.push(open(&a1, i).unwrap());
    }
    // The user's quota: EMFILE for that user only.
    assert_eq!(open(&a1, 4), Err(libc::EMFILE));
    assert_eq!(e.opendir(&a1, ROOT_INO), Err(libc::EMFILE));
    // Another user of the same client still opens, up to the session's quota.
    for i in 0..4 {
        held.push(open(&a2, 10 + i).unwrap());
    }
    assert_eq!(open(&a3, 20), Err(libc::EMFILE), "session quota");
    // Another client is not affected by a's quota, but all remote clients
    // share the node's remote budget (12): ENFILE past it.
    let b = caller("b", 1001);
    for i in 0..4 {
        held.push(open(&b, i).unwrap());
    }
    let c = caller("c", 1001);
    assert_eq!(open(&c, 0), Err(libc::ENFILE));
    // The node's own users are not counted at all.
    let local = caller("here", 1001);
    let mut mine = Vec::new();
    for i in 0..20 {
        mine.push(open(&local, i).unwrap());
    }
    // Closing gives the quota back.
    e.release(&a1, held[0]).unwrap();
    let again = open(&a1, 5).unwrap();
    assert_eq!(e.read(&a1, again, 0, 1).unwrap(), b"x");
    // A client that goes away gives back everything it held.
    e.drop_client("a");
    assert_eq!(e.remote_fds_in_use(), 4, "only b's are left");
    for i in 0..4 {
        open(&c, i).unwrap();
    }
}

#[test]
fn a_client_over_its_inode_quota_gets_enfile() {
    let (dir, e) = export_with(small());
    for i in 0..101 {
        std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
    }
    let a = root();
    for i in 0..100 {
        e.lookup(&a, ROOT_INO, format!("f{i}").as_bytes()).unwrap();
    }
    assert_eq!(e.lookup(&a, ROOT_INO, b"f100"), Err(libc::ENFILE));
    // Another lookup of what it holds already is fine.
    assert!(e.lookup(&a, ROOT_INO, b"f3").is_ok());
    assert!(e.lookup(&caller("b", 0), ROOT_INO, b"f100").is_ok());
}

#[test]
fn a_directory_moved_out_of_the_export_is_out_of_reach() {
    require_root("acts as a non-root caller too");
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("export");
    std::fs::create_dir_all(root.join("d/sub")).unwrap();
    std::fs::write(root.join("d/f"), b"in").unwrap();
    std::fs::create_dir(top.path().join("outside")).unwrap();
    for p in [&root, &root.join("d"), &root.join("d/sub")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let e = Export::new(ExportConfig {
        root: root.clone(),
        ..Default::default()
    })
    .unwrap();
    for w in [root_who(), caller("a", 1000)] {
        let d = e.lookup(&w, ROOT_INO, b"d").unwrap().ino;
        let sub = e.lookup(&w, d, b"sub").unwrap().ino;
        assert!(e.lookup(&w, d, b"f").is_ok());
        // A local user moves d out of the export, while the client holds d
        // and d/sub (as a remote process with its cwd there would).
        std::fs::rename(root.join("d"), top.path().join("outside/d")).unwrap();
        assert_eq!(e.lookup(&w, d, b"f"), Err(libc::ENOENT));
        assert_eq!(e.lookup(&w, sub, b"x"), Err(libc::ENOENT));
        assert_eq!(e.mkdir(&w, d, b"new", 0o755, 0), Err(libc::ENOENT));
        assert_eq!(
            e.create(&w, sub, b"new", 0o644, 0, libc::O_RDWR)
                .map(|_| ()),
            Err(libc::ENOENT)
        );
        assert_eq!(e.unlink(&w, d, b"f"), Err(libc::ENOENT));
        assert_eq!(e.opendir(&w, d), Err(libc::ENOENT));
        assert!(!top.path().join("outside/d/new").exists());
        assert!(top.path().join("outside/d/f").exists());
        // Moved back, it is reachable again.
        std::fs::rename(top.path().join("outside/d"), root.join("d")).unwrap();
        assert!(e.lookup(&w, sub, b"x") == Err(libc::ENOENT));
        assert!(e.lookup(&w, d, b"f").is_ok());
    }
}

fn root_who() -> Who {
    caller("a", 0)
}
