//! The inode store: which files clients may name, by which id.
//!
//! A looked-up file is kept as a kernel file handle (`name_to_handle_at`),
//! which costs no descriptor: a client's kernel may cache as many inodes as
//! it likes without pinning descriptors here. The O_PATH descriptors the
//! operations work on are opened on demand (`open_by_handle_at`) and kept in
//! an LRU of bounded size. Files on a filesystem that gives no handles, and
//! the export root, keep their descriptor for as long as they are held.
//!
//! Ids are handed out once per file and never reused within a run, so a
//! stale id gives ESTALE, never another file. A file's handle carries its
//! generation, so when a deleted file's inode number is reused by a new
//! file, the new one gets a new id and the old id stays stale.
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mosix_proto::fs::{FileKind, RemoteIno, ROOT_INO};

use super::attr::kind_of;
use super::sessions::Session;
use super::sys::{fstat, name_to_handle, open_by_handle, open_dir_again, KernelHandle};
use super::{lock, Res};

/// A looked-up file.
#[derive(Debug)]
pub(super) struct Inode {
    pub dev: u64,
    pub ino: u64,
    pub kind: FileKind,
    reach: Reach,
}

/// How an inode's O_PATH descriptor is had.
#[derive(Debug)]
enum Reach {
    /// Kept open for as long as the inode is held.
    Pinned(Arc<OwnedFd>),
    /// Reopened from its handle when not in the cache.
    Handle {
        handle: KernelHandle,
        mount: Arc<OwnedFd>,
    },
}

/// An inode together with an O_PATH descriptor of it, for one operation.
#[derive(Debug, Clone)]
pub(super) struct Reached {
    pub inode: Arc<Inode>,
    pub fd: Arc<OwnedFd>,
}

impl Deref for Reached {
    type Target = Inode;
    fn deref(&self) -> &Inode {
        &self.inode
    }
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
    /// A descriptor on each mount that handles were taken on (by mount id),
    /// which `open_by_handle_at` needs.
    mounts: HashMap<i32, Arc<OwnedFd>>,
}

#[derive(Debug)]
pub(super) struct Inodes {
    table: Mutex<Table>,
    next_ino: AtomicU64,
    /// O_PATH descriptors of recently used handle inodes.
    cache: Mutex<lru::LruCache<RemoteIno, Arc<OwnedFd>>>,
    /// Whether this process may reopen handles (CAP_DAC_READ_SEARCH);
    /// without it every inode keeps its descriptor, as before.
    handles: bool,
    /// Most inodes one session may hold references to.
    session_inodes: usize,
}

impl Inodes {
    /// A store holding only the export root, which is never forgotten and
    /// belongs to no session; `cache` O_PATH descriptors are kept for
    /// inodes used recently.
    pub fn new(root_fd: OwnedFd, st: &libc::stat, cache: usize, session_inodes: usize) -> Inodes {
        let handles = can_reopen(&root_fd, st);
        if !handles {
            tracing::warn!(
                "cannot reopen file handles (no CAP_DAC_READ_SEARCH?): every file a client \
                 holds keeps a descriptor open"
            );
        }
        let mut t = Table::default();
        if handles {
            // The root's mount, which most handles will be taken on.
            if let (Ok((_, mount_id)), Ok(m)) = (
                name_to_handle(root_fd.as_raw_fd()),
                open_dir_again(root_fd.as_raw_fd()),
            ) {
                t.mounts.insert(mount_id, Arc::new(m));
            }
        }
        t.by_key.insert((st.st_dev, st.st_ino), ROOT_INO);
        t.by_id.insert(
            ROOT_INO,
            Entry {
                inode: Arc::new(Inode {
                    dev: st.st_dev,
                    ino: st.st_ino,
                    kind: FileKind::Dir,
                    reach: Reach::Pinned(Arc::new(root_fd)),
                }),
                nlookup: 1,
            },
        );
        Inodes {
            table: Mutex::new(t),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(cache.max(1)).expect("nonzero"),
            )),
            handles,
            session_inodes,
        }
    }

    /// Inode `id` with a descriptor to work on.
    pub fn get(&self, id: RemoteIno) -> Res<Reached> {
        let inode = lock(&self.table)
            .by_id
            .get(&id)
            .map(|e| e.inode.clone())
            .ok_or(libc::ESTALE)?;
        let (handle, mount) = match &inode.reach {
            Reach::Pinned(fd) => {
                let fd = fd.clone();
                return Ok(Reached { inode, fd });
            }
            Reach::Handle { handle, mount } => (handle, mount),
        };
        if let Some(fd) = lock(&self.cache).get(&id) {
            let fd = fd.clone();
            return Ok(Reached { inode, fd });
        }
        let fd = open_by_handle(mount.as_raw_fd(), handle).map_err(|e| match e {
            // Deleted since (and its last descriptor gone): a stale name.
            libc::ENOENT => libc::ESTALE,
            e => e,
        })?;
        // The handle names exactly this file, but its mount may have been
        // replaced under the same mount id: never hand out another file.
        let st = fstat(fd.as_raw_fd())?;
        if (st.st_dev, st.st_ino) != (inode.dev, inode.ino) {
            return Err(libc::ESTALE);
        }
        let fd = Arc::new(fd);
        self.cache_fd(id, fd.clone());
        Ok(Reached { inode, fd })
    }

    fn cache_fd(&self, id: RemoteIno, fd: Arc<OwnedFd>) {
        let evicted = lock(&self.cache).push(id, fd);
        // Closed outside the lock.
        drop(evicted);
    }

    /// Enters a file into the store with one reference for `session` (or
    /// adds one to its existing entry, so hard links share one id). ENFILE
    /// when the session holds its quota of inodes already.
    pub fn insert(&self, session: &Session, fd: OwnedFd, st: &libc::stat) -> Res<RemoteIno> {
        let key = (st.st_dev, st.st_ino);
        // Taken before the lock: a syscall, and only the first sighting of
        // a file needs it, but which one is first is known only under it.
        let handle = if self.handles {
            name_to_handle(fd.as_raw_fd()).ok()
        } else {
            None
        };
        let mut t = lock(&self.table);
        // Checked under the table lock, which ending a session takes too.
        if session.ended() {
            return Err(libc::ESTALE);
        }
        let known = t.by_key.get(&key).copied();
        if let Some(id) = known {
            if let Some(e) = t.by_id.get_mut(&id) {
                // The same file, unless the inode number was reused after
                // the held one was deleted (handles differ in generation).
                let same = match (&e.inode.reach, &handle) {
                    (Reach::Handle { handle: held, .. }, Some((h, _))) => held == h,
                    _ => true,
                };
                if same {
                    add_ref(session, id, 1, self.session_inodes)?;
                    e.nlookup = e.nlookup.saturating_add(1);
                    let pinned = matches!(e.inode.reach, Reach::Pinned(_));
                    drop(t);
                    if !pinned {
                        // A fresh descriptor in hand: keep it if none is.
                        let mut c = lock(&self.cache);
                        if !c.contains(&id) {
                            let evicted = c.push(id, Arc::new(fd));
                            drop(c);
                            drop(evicted);
                        }
                    }
                    return Ok(id);
                }
            }
        }
        let id = match known {
            Some(id) if !t.by_id.contains_key(&id) => id,
            _ => {
                let id = self.next_ino.fetch_add(1, Ordering::Relaxed);
                t.by_key.insert(key, id);
                id
            }
        };
        add_ref(session, id, 1, self.session_inodes)?;
        let fd = Arc::new(fd);
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let mount = handle.as_ref().and_then(|(_, mount_id)| {
            match t.mounts.get(mount_id) {
                Some(m) if fstat(m.as_raw_fd()).is_ok_and(|m| m.st_dev == st.st_dev) => {
                    Some(m.clone())
                }
                // A mount seen for the first time is named by a directory
                // on it (a file is reached through its directory first,
                // except a file mounted over another: that one is pinned).
                _ if is_dir => {
                    let m = Arc::new(open_dir_again(fd.as_raw_fd()).ok()?);
                    t.mounts.insert(*mount_id, m.clone());
                    Some(m)
                }
                _ => None,
            }
        });
        let reach = match (handle, mount) {
            (Some((handle, _)), Some(mount)) => Reach::Handle { handle, mount },
            _ => Reach::Pinned(fd.clone()),
        };
        let pinned = matches!(reach, Reach::Pinned(_));
        t.by_id.insert(
            id,
            Entry {
                inode: Arc::new(Inode {
                    dev: st.st_dev,
                    ino: st.st_ino,
                    kind: kind_of(st.st_mode),
                    reach,
                }),
                nlookup: 1,
            },
        );
        drop(t);
        if !pinned {
            self.cache_fd(id, fd);
        }
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
                freed.extend(t.unref(id, n).map(|e| (id, e)));
            }
            freed
        };
        self.uncache(freed);
    }

    /// Gives back every reference of a session that has ended.
    pub fn release(&self, session: &Session) {
        debug_assert!(session.ended());
        let freed = {
            let mut t = lock(&self.table);
            let refs = std::mem::take(&mut *lock(&session.refs));
            refs.into_iter()
                .filter_map(|(id, n)| t.unref(id, n).map(|e| (id, e)))
                .collect::<Vec<_>>()
        };
        self.uncache(freed);
    }

    /// Closes the cached descriptors of inodes nobody holds any more (a
    /// last close of an unlinked file frees its blocks: not under a lock).
    fn uncache(&self, freed: Vec<(RemoteIno, Entry)>) {
        if freed.is_empty() {
            return;
        }
        let fds: Vec<_> = {
            let mut c = lock(&self.cache);
            freed.iter().filter_map(|(id, _)| c.pop(id)).collect()
        };
        drop(fds);
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

    /// The id of file (`dev`, `st_ino`) if any client ever named it (only
    /// those can be cached anywhere).
    pub fn known_id(&self, dev: u64, st_ino: u64) -> Option<RemoteIno> {
        lock(&self.table).by_key.get(&(dev, st_ino)).copied()
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        lock(&self.table).by_id.len()
    }

    /// O_PATH descriptors this store keeps open (cached and pinned).
    #[cfg(test)]
    pub fn open_fds(&self) -> usize {
        let pinned = lock(&self.table)
            .by_id
            .values()
            .filter(|e| matches!(e.inode.reach, Reach::Pinned(_)))
            .count();
        pinned + lock(&self.cache).len()
    }
}

/// Whether a handle of the export root can be taken and opened again.
fn can_reopen(root: &OwnedFd, st: &libc::stat) -> bool {
    let Ok((h, _)) = name_to_handle(root.as_raw_fd()) else {
        return false;
    };
    let Ok(mount) = open_dir_again(root.as_raw_fd()) else {
        return false;
    };
    open_by_handle(mount.as_raw_fd(), &h)
        .and_then(|fd| fstat(fd.as_raw_fd()))
        .is_ok_and(|s| (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino))
}

fn add_ref(session: &Session, id: RemoteIno, n: u64, quota: usize) -> Res<()> {
    // The root is never forgotten, so nobody's references to it count.
    if id != ROOT_INO {
        let mut refs = lock(&session.refs);
        if !refs.contains_key(&id) && refs.len() >= quota && session.quotas {
            return Err(libc::ENFILE);
        }
        let held = refs.entry(id).or_insert(0);
        *held = held.saturating_add(n);
    }
    Ok(())
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
