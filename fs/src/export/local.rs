//! What only this node's own FUSE adapter asks: real files for kernel
//! passthrough, so that local reads and writes never reach the daemon.
use std::fs::File;

use mosix_proto::fs::{FileKind, RemoteIno};

use super::ops::open_inode;
use super::policy::Intent;
use super::{Export, Res};
use crate::service::Who;

impl Export {
    /// Opens file `ino` with open(2) `flags` as the caller and returns the
    /// real file, with the same checks as [`Export::open`] (so the errno of
    /// a local open is the real one). No handle is kept.
    pub fn open_file(&self, who: &Who, ino: RemoteIno, flags: i32) -> Res<File> {
        let _call = self.begin(who, Intent::of_open(flags))?;
        open_inode(self, ino, flags).map(|(file, _)| file)
    }

    /// The file that kernel passthrough reads and writes for every local
    /// open of regular file `ino`. The kernel allows one backing file per
    /// inode, shared by all its opens, so it is opened once, by the daemon,
    /// read-write where possible; each open's own access was already checked
    /// by [`Export::open_file`] as the caller, and the kernel enforces that
    /// open's mode (O_APPEND, read-only...) on the FUSE file.
    pub fn open_backing(&self, ino: RemoteIno, writable: bool) -> Res<File> {
        let inode = self.inodes.get(ino)?;
        if inode.kind != FileKind::File {
            return Err(libc::EINVAL);
        }
        let mode = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let fd = self.reopen(&inode, mode)?;
        Ok(File::from(fd))
    }
}
