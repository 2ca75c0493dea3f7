//! What one client may hold on this node, derived from the descriptor limit
//! the daemon runs with, so that no client (and no user of a client) can
//! take the node's descriptors from everyone else.
//!
//! A looked-up file costs no descriptor (it is kept as a kernel file
//! handle; see `inodes.rs`), only memory, so lookups are bounded by count per
//! session. An open file, a directory being read and a lock description each
//! hold a real descriptor: those are bounded per calling user within a
//! session, per session, and for all remote sessions together, and the
//! rest of the limit stays for the node's own work (its own users' files,
//! sockets, the cache of O_PATH descriptors).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::sessions::Session;
use super::{lock, Res};

/// The quotas of one export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The soft `RLIMIT_NOFILE` these were derived from.
    pub nofile: u64,
    /// O_PATH descriptors kept open for recently used inodes.
    pub fd_cache: usize,
    /// Descriptors all remote sessions together may hold open.
    pub remote_fds: usize,
    /// Descriptors one client session may hold open.
    pub session_fds: usize,
    /// Descriptors one calling user (uid) within a session may hold open.
    pub user_fds: usize,
    /// Inodes one client session may hold lookup references to.
    pub session_inodes: usize,
}

/// Most descriptors one session may hold however high the limit is.
pub const MAX_SESSION_FDS: usize = 65_536;
/// Most descriptors one user of a session may hold however high the limit is.
pub const MAX_USER_FDS: usize = 16_384;
/// Most inodes one session may hold references to (about 200 bytes each).
pub const MAX_SESSION_INODES: usize = 1 << 20;
/// Most O_PATH descriptors kept for recently used inodes.
pub const MAX_FD_CACHE: usize = 16_384;

impl Limits {
    /// The quotas for a process whose soft descriptor limit is `nofile`:
    /// a quarter of it is kept for the node's own work, an eighth (at most
    /// [`MAX_FD_CACHE`]) caches O_PATH descriptors, and the rest is what
    /// remote sessions may hold; one session gets a quarter of that (at most
    /// [`MAX_SESSION_FDS`]), one user of a session a quarter of the
    /// session's (at most [`MAX_USER_FDS`]).
    pub fn for_nofile(nofile: u64) -> Limits {
        let n = usize::try_from(nofile).unwrap_or(usize::MAX).min(1 << 30);
        let fd_cache = (n / 8).clamp(16, MAX_FD_CACHE);
        let remote_fds = n.saturating_sub(n / 4 + fd_cache).max(16);
        let session_fds = (remote_fds / 4).clamp(8, MAX_SESSION_FDS);
        let user_fds = (session_fds / 4).clamp(4, MAX_USER_FDS);
        Limits {
            nofile,
            fd_cache,
            remote_fds,
            session_fds,
            user_fds,
            session_inodes: MAX_SESSION_INODES,
        }
    }

    /// The quotas for this process's current soft descriptor limit.
    pub fn for_this_process() -> Limits {
        let mut rl = libc::rlimit {
            rlim_cur: 1024,
            rlim_max: 1024,
        };
        // SAFETY: valid out-pointer.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
        Limits::for_nofile(rl.rlim_cur)
    }
}

/// Counts the descriptors remote sessions hold against [`Limits`].
#[derive(Debug)]
pub(super) struct FdBudget {
    limits: Limits,
    remote: Arc<AtomicUsize>,
}

/// One descriptor a session holds on a user's behalf; dropping it (with
/// the descriptor it stands for) gives it back.
#[derive(Debug)]
pub(super) struct FdTicket {
    held: Option<(Arc<Session>, u32, Arc<AtomicUsize>)>,
}

impl FdBudget {
    pub fn new(limits: Limits) -> FdBudget {
        FdBudget {
            limits,
            remote: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Descriptors remote sessions hold now.
    pub fn remote_in_use(&self) -> usize {
        self.remote.load(Ordering::Relaxed)
    }

    /// A descriptor for `uid` of `session`: EMFILE when the user or the
    /// session holds its quota, ENFILE when remote sessions together hold
    /// theirs. This node's own session is not counted.
    pub fn take(&self, session: &Arc<Session>, uid: u32) -> Res<FdTicket> {
        if !session.quotas {
            return Ok(FdTicket { held: None });
        }
        let mut fds = lock(&session.fds);
        let user = fds.by_uid.get(&uid).copied().unwrap_or(0);
        if user >= self.limits.user_fds || fds.total >= self.limits.session_fds {
            return Err(libc::EMFILE);
        }
        let all = self.remote.fetch_add(1, Ordering::Relaxed);
        if all >= self.limits.remote_fds {
            self.remote.fetch_sub(1, Ordering::Relaxed);
            return Err(libc::ENFILE);
        }
        fds.total += 1;
        *fds.by_uid.entry(uid).or_insert(0) += 1;
        Ok(FdTicket {
            held: Some((session.clone(), uid, self.remote.clone())),
        })
    }
}

impl Drop for FdTicket {
    fn drop(&mut self) {
        let Some((session, uid, remote)) = self.held.take() else {
            return;
        };
        remote.fetch_sub(1, Ordering::Relaxed);
        let mut fds = lock(&session.fds);
        fds.total = fds.total.saturating_sub(1);
        if let Some(n) = fds.by_uid.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                fds.by_uid.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_leave_room_for_the_node_itself() {
        for n in [256u64, 1024, 20_000, 1 << 20] {
            let l = Limits::for_nofile(n);
            let n = n as usize;
            assert!(l.remote_fds + l.fd_cache <= n - n / 4, "{l:?}");
            assert!(l.user_fds < l.session_fds && l.session_fds < l.remote_fds);
        }
        let l = Limits::for_nofile(1 << 20);
        assert_eq!(
            (l.fd_cache, l.session_fds, l.user_fds),
            (MAX_FD_CACHE, MAX_SESSION_FDS, MAX_USER_FDS)
        );
    }
}
