//! The POSIX lock server: byte-range locks of remote lock owners.
//!
//! Each (client node, lock owner, file) gets its own open file description,
//! locked with OFD locks, so owners conflict with each other and with local
//! processes' own locks exactly as the serving kernel decides. The client
//! node is the session's (authenticated), never one a request names; its
//! run is part of the key too, so a restarted client's new locks are never
//! swept with its old run's.
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use mosix_proto::fs::RemoteIno;

use super::limits::FdTicket;
use super::sessions::Session;
use super::sys::{cvt, to_off_t};
use super::{lock, Res};
use crate::service::{ClientId, Lock, LockInfo};

/// The kernel's "to the end of the file" for a lock's last byte.
const OFFSET_MAX: u64 = i64::MAX as u64;

type Key = (ClientId, u64, RemoteIno);

#[derive(Debug, Default)]
pub(super) struct LockServer {
    /// Each description with its descriptor's ticket (it counts against
    /// the session's quotas like an open file).
    files: Mutex<HashMap<Key, (File, FdTicket)>>,
}

fn flock_of(lk: &Lock) -> Res<libc::flock> {
    let start = to_off_t(lk.start)?;
    let len = if lk.end >= OFFSET_MAX {
        0
    } else {
        to_off_t(lk.end.checked_sub(lk.start).ok_or(libc::EINVAL)? + 1)?
    };
    // SAFETY: flock is plain data.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = lk.typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    Ok(fl)
}

impl LockServer {
    /// F_SETLK for `session`'s lock owner `lk.owner` on file `ino`. `open`
    /// gives a new description of the file, for an owner's first lock on it.
    pub fn setlk(
        &self,
        session: &Session,
        ino: RemoteIno,
        lk: &Lock,
        open: impl FnOnce() -> Res<(File, FdTicket)>,
    ) -> Res<()> {
        if !matches!(lk.typ, libc::F_RDLCK | libc::F_WRLCK | libc::F_UNLCK) {
            return Err(libc::EINVAL);
        }
        let mut fl = flock_of(lk)?;
        let mut files = lock(&self.files);
        let key = (session.client.clone(), lk.owner, ino);
        let fresh = !files.contains_key(&key);
        if lk.typ == libc::F_UNLCK && fresh {
            return Ok(());
        }
        // Checked under the lock that ending a session's sweep takes.
        if session.ended() {
            return Err(libc::ESTALE);
        }
        if fresh {
            files.insert(key.clone(), open()?);
        }
        let (f, _) = files.get(&key).ok_or(libc::EIO)?;
        // SAFETY: fcntl on a file we own with a valid flock.
        let r = cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) });
        if let Err(e) = r {
            // A refused first lock leaves nothing to hold on to.
            if fresh {
                files.remove(&key);
            }
            return Err(e);
        }
        // Unlocking the whole file is what close() sends: the owner is done
        // with this file, so its description goes.
        if lk.typ == libc::F_UNLCK && lk.start == 0 && lk.end >= OFFSET_MAX {
            files.remove(&key);
        }
        Ok(())
    }

    /// F_GETLK: the first lock that would conflict with `lk`.
    pub fn getlk(
        &self,
        session: &Session,
        ino: RemoteIno,
        lk: &Lock,
        open: impl FnOnce() -> Res<File>,
    ) -> Res<LockInfo> {
        let mut fl = flock_of(lk)?;
        let files = lock(&self.files);
        let key = (session.client.clone(), lk.owner, ino);
        // The owner's own description if it holds locks (they never conflict
        // with themselves), else a throwaway one: a query keeps nothing open.
        let throwaway;
        let f = match files.get(&key) {
            Some((f, _)) => f,
            None => {
                throwaway = open()?;
                &throwaway
            }
        };
        // SAFETY: fcntl on a file we own with a valid flock.
        cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) })?;
        let start = fl.l_start.max(0) as u64;
        let end = if fl.l_len == 0 {
            OFFSET_MAX
        } else {
            start + fl.l_len as u64 - 1
        };
        Ok(LockInfo {
            start,
            end,
            typ: fl.l_type as i32,
            // OFD locks have no owning process; -1 is what F_OFD_GETLK says.
            pid: if fl.l_pid > 0 { fl.l_pid as u32 } else { 0 },
        })
    }

    /// Drops every lock of a session that has ended (its descriptions
    /// close outside the lock).
    pub fn release(&self, session: &Session) -> Vec<(File, FdTicket)> {
        debug_assert!(session.ended());
        let mut files = lock(&self.files);
        let keys: Vec<Key> = files
            .keys()
            .filter(|(client, _, _)| *client == session.client)
            .cloned()
            .collect();
        keys.iter().filter_map(|k| files.remove(k)).collect()
    }
}
