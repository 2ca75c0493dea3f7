use super::*;
use crate::ino;

#[tokio::test]
async fn a_restarted_node_never_aliases_old_inodes() {
    let s = setup();
    let fs = &s.fs;
    let root = fs.lookup(ROOT, ino::NODES, b"n2").await.unwrap().attr;
    let f = fs.lookup(ROOT, root.ino, b"f").await.unwrap().attr;
    assert_eq!(f.size, 3);
    assert_eq!(fs.getattr(ROOT, f.ino).await.unwrap().attr.ino, f.ino);

    // n2's daemon restarts: its ids start over.
    s.cluster.n2.inner().restart(export(s.d2.path()));
    assert_eq!(fs.getattr(ROOT, f.ino).await, Err(FsError::Stale));
    assert_eq!(fs.lookup(ROOT, root.ino, b"f").await, Err(FsError::Stale));

    // A fresh walk works, under new inode numbers.
    let root2 = fs.lookup(ROOT, ino::NODES, b"n2").await.unwrap().attr;
    assert_ne!(root2.ino, root.ino);
    let f2 = fs.lookup(ROOT, root2.ino, b"f").await.unwrap().attr;
    assert_ne!(f2.ino, f.ino);
    assert_eq!(fs.getattr(ROOT, f2.ino).await.unwrap().attr.size, 3);
    // And the old numbers stay dead, without asking n2.
    assert_eq!(fs.getattr(ROOT, f.ino).await, Err(FsError::Stale));
}

#[tokio::test]
async fn virtual_part_is_read_only_and_routes_here() {
    let s = setup();
    let fs = &s.fs;
    assert_eq!(fs.readlink(ROOT, ino::HERE).await.unwrap(), b"nodes/n1");
    assert_eq!(fs.readlink(ROOT, ino::HOME).await.unwrap(), b"nodes/n1");
    assert_eq!(
        fs.mkdir(ROOT, ino::ROOT, b"x", 0o755, 0).await,
        Err(FsError::ReadOnly)
    );
    assert_eq!(
        fs.lookup(ROOT, ino::NODES, b"n9").await,
        Err(FsError::Os(libc::ENOENT))
    );
    let names: Vec<Vec<u8>> = fs
        .readdir(ROOT, ino::NODES, 0, 0, 4096)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [
            b".".to_vec(),
            b"..".to_vec(),
            b"n1".to_vec(),
            b"n2".to_vec()
        ]
    );
    // This node's files are served in-process, the other's through the
    // transport; the namespace treats both alike.
    let here = fs.lookup(ROOT, ino::NODES, b"n1").await.unwrap().attr;
    let g = fs.lookup(ROOT, here.ino, b"g").await.unwrap().attr;
    assert!(fs.runs_here(g.ino));
    let o = fs.open(ROOT, g.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(fs.read(ROOT, g.ino, o.fh, 0, 100).await.unwrap(), b"local");
    fs.release(g.ino, o.fh).await;
    let there = fs.lookup(ROOT, ino::NODES, b"n2").await.unwrap().attr;
    let f = fs.lookup(ROOT, there.ino, b"f").await.unwrap().attr;
    assert!(!fs.runs_here(f.ino));
    let o = fs.open(ROOT, f.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(fs.read(ROOT, f.ino, o.fh, 0, 100).await.unwrap(), b"one");
}
