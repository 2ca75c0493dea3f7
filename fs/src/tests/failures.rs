//! One test per row of the failure table in docs/SEMANTICS.md ("Failures").
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::attr::NodeAttr;
use crate::faulty::Fault;
use crate::ino;

async fn remote_file(fs: &MosixFs) -> (NodeAttr, NodeAttr) {
    let root = fs.lookup(ROOT, ino::NODES, b"n2").await.unwrap().attr;
    let f = fs.lookup(ROOT, root.ino, b"f").await.unwrap().attr;
    (root, f)
}

fn errno<T: std::fmt::Debug>(r: FsResult<T>) -> i32 {
    r.expect_err("must fail").errno()
}

#[tokio::test]
async fn a_dead_node_leaves_nodes_and_its_files_fail_at_once() {
    let s = setup();
    let (_, f) = remote_file(&s.fs).await;
    s.cluster.n2_alive.store(false, Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(
        errno(s.fs.lookup(ROOT, ino::NODES, b"n2").await),
        libc::ENOENT
    );
    assert_eq!(errno(s.fs.getattr(ROOT, f.ino).await), libc::EHOSTDOWN);
    assert_eq!(
        errno(s.fs.open(ROOT, f.ino, libc::O_RDONLY).await),
        libc::EHOSTDOWN
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "at once: {:?}",
        t.elapsed()
    );
    let names: Vec<Vec<u8>> =
        s.fs.readdir(ROOT, ino::NODES, 0, 0, 4096)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
    assert!(!names.contains(&b"n2".to_vec()), "no longer listed");
}

#[tokio::test]
async fn an_unreachable_node_gives_ehostdown_within_the_connect_bound() {
    let s = setup();
    let (_, f) = remote_file(&s.fs).await;
    // The daemon's transport gives up a handshake after CONNECT_TIMEOUT
    // (2 s); here the fault stands for it, shorter.
    s.cluster
        .n2
        .fail_after(0, Fault::Unreachable(Duration::from_millis(200)));
    let t = Instant::now();
    assert_eq!(errno(s.fs.getattr(ROOT, f.ino).await), libc::EHOSTDOWN);
    assert!(t.elapsed() >= Duration::from_millis(200));
    // Once it answers again, nothing was lost.
    s.cluster.n2.heal();
    assert_eq!(s.fs.getattr(ROOT, f.ino).await.unwrap().attr.size, 3);
}

#[tokio::test]
async fn a_request_without_an_answer_gives_eio() {
    let s = setup();
    let (_, f) = remote_file(&s.fs).await;
    let o = s.fs.open(ROOT, f.ino, libc::O_RDONLY).await.unwrap();
    s.cluster
        .n2
        .fail_after(0, Fault::NoAnswer(Duration::from_millis(50)));
    assert_eq!(errno(s.fs.read(ROOT, f.ino, o.fh, 0, 10).await), libc::EIO);
    s.cluster.n2.heal();
    assert_eq!(s.fs.read(ROOT, f.ino, o.fh, 0, 10).await.unwrap(), b"one");
}

#[tokio::test]
async fn a_restarted_server_gives_estale_and_new_lookups_work() {
    let s = setup();
    let (root, f) = remote_file(&s.fs).await;
    let o = s.fs.open(ROOT, f.ino, libc::O_RDONLY).await.unwrap();
    s.cluster.n2.inner().restart(export(s.d2.path()));
    assert_eq!(
        errno(s.fs.read(ROOT, f.ino, o.fh, 0, 10).await),
        libc::ESTALE
    );
    assert_eq!(errno(s.fs.lookup(ROOT, root.ino, b"f").await), libc::ESTALE);
    let (_, f2) = remote_file(&s.fs).await;
    let o2 = s.fs.open(ROOT, f2.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(s.fs.read(ROOT, f2.ino, o2.fh, 0, 10).await.unwrap(), b"one");
}

#[tokio::test]
async fn rename_and_link_across_nodes_give_exdev() {
    let s = setup();
    let (there, f) = remote_file(&s.fs).await;
    let here = s.fs.lookup(ROOT, ino::NODES, b"n1").await.unwrap().attr;
    assert_eq!(
        errno(s.fs.rename(ROOT, there.ino, b"f", here.ino, b"f", 0).await),
        libc::EXDEV
    );
    assert_eq!(
        errno(s.fs.link(ROOT, f.ino, here.ino, b"h").await),
        libc::EXDEV
    );
    assert!(s.d2.path().join("f").exists() && !s.d1.path().join("f").exists());
}

#[tokio::test]
async fn an_unknown_node_is_enoent() {
    let s = setup();
    assert_eq!(
        errno(s.fs.lookup(ROOT, ino::NODES, b"zz").await),
        libc::ENOENT
    );
}
