//! getlk, setlk: the operations; the lock server itself is `../locks.rs`.
use std::fs::File;

use mosix_proto::fs::{FileKind, RemoteIno};

use super::super::policy::Intent;
use super::super::{Export, Res};
use crate::service::{Lock, LockInfo, Who};

impl Export {
    /// F_GETLK: the first lock that would conflict with `lock`, or
    /// `typ == F_UNLCK`.
    pub fn getlk(&self, who: &Who, ino: RemoteIno, lock: Lock) -> Res<LockInfo> {
        let call = self.begin(who, Intent::Read)?;
        self.locks
            .getlk(&call.session, ino, &lock, || self.lock_file(ino))
    }

    /// F_SETLK: sets or clears (`F_UNLCK`) a lock without waiting; a
    /// conflict is EAGAIN.
    pub fn setlk(&self, who: &Who, ino: RemoteIno, lock: Lock) -> Res<()> {
        let call = self.begin(who, Intent::Read)?;
        self.locks.setlk(&call.session, ino, &lock, || {
            let ticket = self.fd_ticket(&call, who)?;
            Ok((self.lock_file(ino)?, ticket))
        })
    }

    /// A new description of file `ino` to hold locks with. The client's
    /// kernel already checked that the caller's own descriptor allows the
    /// lock type, so a read-only description will do if that is all the
    /// caller may open.
    fn lock_file(&self, ino: RemoteIno) -> Res<File> {
        let inode = self.inodes.get(ino)?;
        if inode.kind != FileKind::File {
            return Err(libc::EINVAL);
        }
        let fd = self
            .reopen(&inode, libc::O_RDWR)
            .or_else(|_| self.reopen(&inode, libc::O_RDONLY))?;
        Ok(File::from(fd))
    }
}
