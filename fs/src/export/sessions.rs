//! Client sessions: what each client node holds on this serving node.
//!
//! Everything a client acquires here (open handles, lookup references,
//! byte-range locks) belongs to its session, keyed by the client's node name
//! as the transport authenticated it ([`ClientId`]), never by anything a
//! request says about itself. A session ends when the client is declared
//! dead ([`super::Export::drop_client`]) or when the same node shows up
//! with another run (its daemon restarted, so whatever the old run held is
//! unreachable), and ending it gives back all it held: otherwise the tables
//! of a long-lived serving daemon would grow with every client crash, and a
//! dead client's locks would block everyone forever.
//!
//! The tables themselves stay global and fast (a read or write is one map
//! lookup); each entry names its session, and ending a session sweeps them.
//! An operation already under way when its session ends may race with the
//! sweep, so every table refuses to add to a session once it has
//! [`Session::ended`], checked under the same lock the sweep takes.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use mosix_proto::fs::RemoteIno;

use super::{lock, Res};
use crate::service::ClientId;

#[derive(Debug)]
pub(super) struct Session {
    pub client: ClientId,
    ended: AtomicBool,
    /// Lookup references this client holds, per inode (the inode store's
    /// counts are these summed over sessions). Changed only under the inode
    /// store's lock.
    pub refs: Mutex<HashMap<RemoteIno, u64>>,
    /// Whether the quotas apply: every client's session but this node's own.
    pub quotas: bool,
    /// Descriptors held for this client, in all and per calling user
    /// (counted by [`super::limits::FdBudget`]).
    pub fds: Mutex<FdCount>,
    // Leases (for the client cache) will belong here too, so that they end
    // with the client.
}

#[derive(Debug, Default)]
pub(super) struct FdCount {
    pub total: usize,
    pub by_uid: HashMap<u32, usize>,
}

impl Session {
    fn new(client: ClientId, quotas: bool) -> Session {
        Session {
            client,
            ended: AtomicBool::new(false),
            refs: Mutex::new(HashMap::new()),
            quotas,
            fds: Mutex::default(),
        }
    }

    /// Once true, nothing more may be added to this session anywhere.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Marked before the tables are swept (see the module docs).
    pub fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
    }

    /// Whether `other` is this very session (not merely the same client).
    pub fn is(&self, other: &Session) -> bool {
        std::ptr::eq(self, other)
    }
}

#[derive(Debug, Default)]
pub(super) struct Sessions {
    by_node: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    /// Runs that a newer run of the same node replaced: a late request from
    /// one must not end its successor's session.
    retired: Mutex<HashSet<(Arc<str>, u64)>>,
    /// This node's own name: its session is not subject to quotas.
    pub local: std::sync::OnceLock<Arc<str>>,
}

impl Sessions {
    /// The session of `client`, created on first contact. Also returns the
    /// session it replaced when `client` is a new run of its node; the caller
    /// ends that one. A retired run gets ESTALE: its daemon is gone.
    pub fn enter(&self, client: &ClientId) -> Res<(Arc<Session>, Option<Arc<Session>>)> {
        {
            let map = self.by_node.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = map.get(&client.node) {
                if s.client.run == client.run {
                    return Ok((s.clone(), None));
                }
            }
        }
        let mut map = self.by_node.write().unwrap_or_else(|e| e.into_inner());
        let mut retired = lock(&self.retired);
        if retired.contains(&(client.node.clone(), client.run)) {
            return Err(libc::ESTALE);
        }
        if let Some(s) = map.get(&client.node) {
            // Another thread of the same run got here first.
            if s.client.run == client.run {
                return Ok((s.clone(), None));
            }
        }
        let local = self.local.get().is_some_and(|l| *l == client.node);
        let new = Arc::new(Session::new(client.clone(), !local));
        let old = map.insert(client.node.clone(), new.clone());
        if let Some(old) = &old {
            retired.insert((old.client.node.clone(), old.client.run));
        }
        Ok((new, old))
    }

    /// Takes `node`'s session out of the table if it belongs to a run other
    /// than `run` (membership saw the node come back as `run`), and retires
    /// that run; the caller ends it.
    pub fn remove_other_run(&self, node: &str, run: u64) -> Option<Arc<Session>> {
        let mut map = self.by_node.write().unwrap_or_else(|e| e.into_inner());
        if map.get(node).is_none_or(|s| s.client.run == run) {
            return None;
        }
        let old = map.remove(node)?;
        lock(&self.retired).insert((old.client.node.clone(), old.client.run));
        Some(old)
    }

    /// Takes `node`'s session out of the table; the caller ends it.
    pub fn remove(&self, node: &str) -> Option<Arc<Session>> {
        self.by_node
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use crate::service::{ClientId, Lock, Who};
    use mosix_proto::fs::ROOT_INO;

    fn client(node: &str, run: u64) -> Who {
        Who {
            client: ClientId {
                node: node.into(),
                run,
            },
            creds: root_creds(),
        }
    }

    fn wrlock(owner: u64) -> Lock {
        Lock {
            owner,
            start: 0,
            end: 99,
            typ: libc::F_WRLCK,
            pid: 1,
        }
    }

    #[test]
    fn drop_client_releases_handles_references_and_locks() {
        let (dir, e) = setup();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        let (a, b) = (client("a", 1), client("b", 1));
        let f = e.lookup(&a, ROOT_INO, b"f").unwrap();
        let fh = e.open(&a, f.ino, libc::O_RDWR).unwrap();
        let dfh = e.opendir(&a, ROOT_INO).unwrap();
        e.setlk(&a, f.ino, wrlock(7)).unwrap();
        // While a holds it, b conflicts.
        let fb = e.lookup(&b, ROOT_INO, b"f").unwrap();
        assert_eq!(e.setlk(&b, fb.ino, wrlock(7)), Err(libc::EAGAIN));
        assert_eq!(e.getlk(&b, fb.ino, wrlock(7)).unwrap().typ, libc::F_WRLCK);
        e.forget(&b, &[(fb.ino, 1)]);

        e.drop_client("a");
        // The lock is free for another client.
        assert_eq!(
            e.setlk(&b, f.ino, wrlock(7)),
            Err(libc::ESTALE),
            "b forgot f"
        );
        let fb = e.lookup(&b, ROOT_INO, b"f").unwrap();
        assert_eq!(fb.ino, f.ino);
        e.setlk(&b, fb.ino, wrlock(7)).unwrap();
        // a's handles are closed (a new run of a would get a new session,
        // but even the same run finds nothing).
        assert_eq!(e.read(&a, fh, 0, 4), Err(libc::EBADF));
        assert_eq!(e.readdir(&a, dfh, 0, 4096), Err(libc::EBADF));
        // a's reference went: once b forgets its own, the inode is free.
        e.forget(&b, &[(fb.ino, 1)]);
        assert_eq!(e.getattr(&b, f.ino), Err(libc::ESTALE));
        assert_eq!(e.held_inodes(), 1, "only the root is left");
    }

    #[test]
    fn a_client_cannot_forget_or_use_what_another_holds() {
        let (dir, e) = setup();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        let (a, b) = (client("a", 1), client("b", 1));
        let f = e.lookup(&a, ROOT_INO, b"f").unwrap();
        let fh = e.open(&a, f.ino, libc::O_RDONLY).unwrap();
        assert_eq!(e.read(&b, fh, 0, 4), Err(libc::EBADF));
        assert_eq!(e.write(&b, fh, 0, b"x"), Err(libc::EBADF));
        assert_eq!(e.flush(&b, fh), Err(libc::EBADF));
        assert_eq!(e.release(&b, fh), Err(libc::EBADF));
        // b's forget of references it never took changes nothing.
        e.forget(&b, &[(f.ino, 100)]);
        assert!(e.getattr(&a, f.ino).is_ok());
        assert_eq!(e.read(&a, fh, 0, 4).unwrap(), b"data");
        e.release(&a, fh).unwrap();
        e.forget(&a, &[(f.ino, 1)]);
        assert_eq!(e.getattr(&a, f.ino), Err(libc::ESTALE));
    }

    #[test]
    fn a_new_run_of_a_client_drops_the_old_session() {
        let (dir, e) = setup();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        let (old, new, other) = (client("a", 1), client("a", 2), client("b", 1));
        let f = e.lookup(&old, ROOT_INO, b"f").unwrap();
        let fh = e.open(&old, f.ino, libc::O_RDONLY).unwrap();
        e.setlk(&old, f.ino, wrlock(7)).unwrap();
        let fo = e.lookup(&other, ROOT_INO, b"f").unwrap();
        assert_eq!(e.setlk(&other, fo.ino, wrlock(7)), Err(libc::EAGAIN));

        // The restarted daemon's first request ends the old run's session.
        let _ = e.getattr(&new, ROOT_INO).unwrap();
        assert_eq!(e.read(&new, fh, 0, 4), Err(libc::EBADF));
        e.setlk(&other, fo.ino, wrlock(7)).unwrap();
        e.forget(&other, &[(fo.ino, 1)]);
        assert_eq!(e.getattr(&new, f.ino), Err(libc::ESTALE));
        // A late request of the old run cannot take the node back.
        assert_eq!(e.getattr(&old, ROOT_INO), Err(libc::ESTALE));
        assert!(e.getattr(&new, ROOT_INO).is_ok());
    }

    #[test]
    fn membership_seeing_a_new_run_ends_the_old_session_without_a_request() {
        let (dir, e) = setup();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        let (old, other) = (client("a", 1), client("b", 1));
        let f = e.lookup(&old, ROOT_INO, b"f").unwrap();
        let fh = e.open(&old, f.ino, libc::O_RDONLY).unwrap();
        e.setlk(&old, f.ino, wrlock(7)).unwrap();
        let fo = e.lookup(&other, ROOT_INO, b"f").unwrap();
        // The same run changes nothing.
        e.client_run_is("a", 1);
        assert_eq!(e.setlk(&other, fo.ino, wrlock(7)), Err(libc::EAGAIN));
        // Run 2 came up: run 1's handle and lock are gone.
        e.client_run_is("a", 2);
        e.setlk(&other, fo.ino, wrlock(7)).unwrap();
        assert_eq!(e.read(&old, fh, 0, 4), Err(libc::ESTALE));
        assert!(e.getattr(&client("a", 2), ROOT_INO).is_ok());
    }
}
