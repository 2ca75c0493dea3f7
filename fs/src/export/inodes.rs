//! The inode store: which files clients may name, by which id.
//!
//! A looked-up file is pinned by an `O_PATH` fd, so its (st_dev, st_ino)
//! stays unique for as long as some client holds a reference to it. Ids are
//! handed out once per file and never reused within a run, so a stale id
//! gives ESTALE, never another file.
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mosix_proto::fs::{FileKind, RemoteIno, ROOT_INO};

use super::attr::kind_of;
use super::sessions::Session;
use super::{lock, Res};

/// A looked-up file.
#[derive(Debug)]
pub(super) struct Inode {
    pub fd: OwnedFd,
    pub dev: u64,
    pub ino: u64,
    pub kind: FileKind,
}

#[derive(Debug)]
struct Entry {
    inode: Arc<Inode>,
    /// The sum of every session's references (see [`Session::refs`]).
    nlookup: u64,
}

#[derive(Debug, Default)]
struct Table {
    /// Files some client holds a reference to.
    by_id: HashMap<RemoteIno, Entry>,
    /// Every (st_dev, st_ino) ever given an id, kept for the life of the
    /// daemon so a file keeps its id (and so its inode number under /mosix)
    /// across forgets; about 40 bytes per file ever seen.
    by_key: HashMap<(u64, u64), RemoteIno>,
}

#[derive(Debug)]
pub(super) struct Inodes {
    table: Mutex<Table>,
    next_ino: AtomicU64,
}

impl Inodes {
    /// A store holding only the export root, which is never forgotten and
    /// belongs to no session.
    pub fn new(root_fd: OwnedFd, st: &libc::stat) -> Inodes {
        let mut t = Table::default();
        t.by_key.insert((st.st_dev, st.st_ino), ROOT_INO);
        t.by_id.insert(
            ROOT_INO,
            Entry {
                inode: Arc::new(Inode {
                    fd: root_fd,
                    dev: st.st_dev,
                    ino: st.st_ino,
                    kind: FileKind::Dir,
                }),
                nlookup: 1,
            },
        );
        Inodes {
            table: Mutex::new(t),
            next_ino: AtomicU64::new(ROOT_INO + 1),
        }
    }

    pub fn get(&self, id: RemoteIno) -> Res<Arc<Inode>> {
        lock(&self.table)
            .by_id
            .get(&id)
            .map(|e| e.inode.clone())
            .ok_or(libc::ESTALE)
    }

    /// Enters a file into the store with one reference for `session` (or
    /// adds one to its existing entry, so hard links share one id).
    pub fn insert(&self, session: &Session, fd: OwnedFd, st: &libc::stat) -> Res<RemoteIno> {
        let key = (st.st_dev, st.st_ino);
        let mut t = lock(&self.table);
        // Checked under the table lock, which ending a session takes too.
        if session.ended() {
            return Err(libc::ESTALE);
        }
        let id = match t.by_key.get(&key).copied() {
            Some(id) => {
                if let Some(e) = t.by_id.get_mut(&id) {
                    e.nlookup = e.nlookup.saturating_add(1);
                    // The new fd is a duplicate; dropping it closes it.
                    add_ref(session, id, 1);
                    return Ok(id);
                }
                id
            }
            None => {
                let id = self.next_ino.fetch_add(1, Ordering::Relaxed);
                t.by_key.insert(key, id);
                id
            }
        };
        t.by_id.insert(
            id,
            Entry {
                inode: Arc::new(Inode {
                    fd,
                    dev: st.st_dev,
                    ino: st.st_ino,
                    kind: kind_of(st.st_mode),
                }),
                nlookup: 1,
            },
        );
        add_ref(session, id, 1);
        Ok(id)
    }

    /// Drops up to `n` references per item, but only ones `session` holds:
    /// one client cannot free what another looked up.
    pub fn forget(&self, session: &Session, items: &[(RemoteIno, u64)]) {
        let freed = {
            let mut t = lock(&self.table);
            let mut refs = lock(&session.refs);
            let mut freed = Vec::new();
            for &(id, n) in items {
                let Some(held) = refs.get_mut(&id) else {
                    continue;
                };
                let n = n.min(*held);
                *held -= n;
                if *held == 0 {
                    refs.remove(&id);
                }
                freed.extend(t.unref(id, n));
            }
            freed
        };
        // Last close of an unlinked file frees its blocks: not under the lock.
        drop(freed);
    }

    /// Gives back every reference of a session that has ended.
    pub fn release(&self, session: &Session) {
        debug_assert!(session.ended());
        let freed = {
            let mut t = lock(&self.table);
            let refs = std::mem::take(&mut *lock(&session.refs));
            refs.into_iter()
                .filter_map(|(id, n)| t.unref(id, n))
                .collect::<Vec<_>>()
        };
        drop(freed);
    }

    /// The ids lookup would give the files `st_inos` of device `dev`
    /// (without taking references), so readdir's d_ino matches stat's.
    pub fn ids_of(&self, dev: u64, st_inos: impl Iterator<Item = u64>) -> Vec<RemoteIno> {
        let mut t = lock(&self.table);
        st_inos
            .map(|st_ino| match t.by_key.get(&(dev, st_ino)) {
                Some(&id) => id,
                None => {
                    let id = self.next_ino.fetch_add(1, Ordering::Relaxed);
                    t.by_key.insert((dev, st_ino), id);
                    id
                }
            })
            .collect()
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        lock(&self.table).by_id.len()
    }
}

fn add_ref(session: &Session, id: RemoteIno, n: u64) {
    // The root is never forgotten, so nobody's references to it count.
    if id != ROOT_INO {
        let mut refs = lock(&session.refs);
        let held = refs.entry(id).or_insert(0);
        *held = held.saturating_add(n);
    }
}

impl Table {
    /// Removes `n` references; the entry, if that was its last, for the
    /// caller to drop outside the lock.
    fn unref(&mut self, id: RemoteIno, n: u64) -> Option<Entry> {
        if id == ROOT_INO {
            return None;
        }
        let e = self.by_id.get_mut(&id)?;
        e.nlookup = e.nlookup.saturating_sub(n);
        if e.nlookup > 0 {
            return None;
        }
        // The id stays reserved for this file in `by_key`.
        self.by_id.remove(&id)
    }
}
