//! The open-handle table: files and directories clients have open.
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use mosix_proto::fs::RemoteFh;

use super::limits::FdTicket;
use super::sessions::Session;
use super::Res;

#[derive(Debug)]
pub(super) struct Handle {
    pub file: File,
    /// st_dev and st_ino of the open file.
    pub dev: u64,
    pub ino: u64,
    /// For directories: serialises lseek + getdents64, which share the
    /// file position.
    pub dir: Option<Mutex<()>>,
    /// Opened with O_APPEND: its writes take turns (see `appends.rs`).
    pub append: bool,
    /// Only the session that opened a handle may use it.
    owner: Arc<Session>,
    /// The descriptor counted against its session's quotas.
    _ticket: FdTicket,
}

#[derive(Debug)]
pub(super) struct Handles {
    map: RwLock<HashMap<RemoteFh, Arc<Handle>>>,
    next_fh: AtomicU64,
}

impl Handles {
    /// Handle numbers start from a run-specific point, so that handles of
    /// different runs do not overlap either.
    pub fn new(epoch: u64) -> Handles {
        Handles {
            map: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1 + (epoch >> 24)),
        }
    }

    pub fn add(
        &self,
        owner: &Arc<Session>,
        file: File,
        (dev, ino): (u64, u64),
        dir: bool,
        ticket: FdTicket,
    ) -> Res<RemoteFh> {
        // SAFETY: plain fcntl on a file we own.
        let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        let append = fl >= 0 && fl & libc::O_APPEND != 0;
        let h = Arc::new(Handle {
            append,
            file,
            dev,
            ino,
            dir: dir.then(|| Mutex::new(())),
            owner: owner.clone(),
            _ticket: ticket,
        });
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock that ending a session's sweep takes.
        if owner.ended() {
            return Err(libc::EBADF);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        map.insert(fh, h);
        Ok(fh)
    }

    /// `session`'s handle `fh`; another session's is EBADF, as if it did
    /// not exist.
    pub fn get(&self, session: &Session, fh: RemoteFh) -> Res<Arc<Handle>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .filter(|h| h.owner.is(session))
            .cloned()
            .ok_or(libc::EBADF)
    }

    /// Takes `session`'s handle `fh` out of the table; dropping the result
    /// closes it (outside the lock: a last close can be slow).
    pub fn remove(&self, session: &Session, fh: RemoteFh) -> Res<Arc<Handle>> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        match map.get(&fh) {
            Some(h) if h.owner.is(session) => map.remove(&fh).ok_or(libc::EBADF),
            _ => Err(libc::EBADF),
        }
    }

    /// Takes out every handle of a session that has ended.
    pub fn remove_all(&self, session: &Session) -> Vec<Arc<Handle>> {
        debug_assert!(session.ended());
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mine: Vec<RemoteFh> = map
            .iter()
            .filter(|(_, h)| h.owner.is(session))
            .map(|(&fh, _)| fh)
            .collect();
        mine.iter().filter_map(|fh| map.remove(fh)).collect()
    }
}
