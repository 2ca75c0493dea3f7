//! lookup, forget, getattr, setattr, readlink, access, statfs.
use std::os::fd::AsRawFd;

use mosix_proto::fs::{Attr, FileKind, RemoteIno, SetAttr, StatFs};

use super::super::attr::{attr_of, utime};
use super::super::inodes::Inode;
use super::super::policy::Intent;
use super::super::sys::{
    component, cvt, cvt_long, cvt_size, fd_name, fstat, fstatfs, offset, retry, AT_EACCESS,
};
use super::super::{Export, Res};
use super::xattr::MAX_XATTR;
use crate::service::Who;

impl Export {
    /// Looks `name` (one component) up in `parent`; the caller's client
    /// holds one more reference to the result.
    pub fn lookup(&self, who: &Who, parent: RemoteIno, name: &[u8]) -> Res<Attr> {
        let call = self.begin(who, Intent::Read)?;
        let parent = self.inodes.get(parent)?;
        let name = component(name)?;
        self.lookup_at(&call.session, &parent, &name)
    }

    /// Drops references the caller's client holds; an id nobody holds any
    /// more gives ESTALE until looked up again.
    pub fn forget(&self, who: &Who, items: &[(RemoteIno, u64)]) {
        if let Ok(call) = self.begin(who, Intent::Read) {
            self.inodes.forget(&call.session, items);
        }
    }

    pub fn getattr(&self, who: &Who, ino: RemoteIno) -> Res<Attr> {
        let _call = self.begin(who, Intent::Read)?;
        let inode = self.inodes.get(ino)?;
        Ok(attr_of(ino, &fstat(inode.fd.as_raw_fd())?))
    }

    /// Changes each `Some` field, in the order chown, chmod, truncate,
    /// utimens, as the caller.
    pub fn setattr(&self, who: &Who, ino: RemoteIno, set: &SetAttr) -> Res<Attr> {
        let call = self.begin(who, Intent::Write)?;
        let inode = self.inodes.get(ino)?;
        let fd = inode.fd.as_raw_fd();
        if set.uid.is_some() || set.gid.is_some() {
            // SAFETY: valid C string.
            cvt(unsafe {
                libc::fchownat(
                    fd,
                    c"".as_ptr(),
                    set.uid.unwrap_or(u32::MAX),
                    set.gid.unwrap_or(u32::MAX),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if let Some(mode) = set.mode {
            // What fchmodat(AT_SYMLINK_NOFOLLOW) says on Linux; the magic
            // link would otherwise chmod the symlink inode itself.
            if inode.kind == FileKind::Symlink {
                return Err(libc::EOPNOTSUPP);
            }
            let name = fd_name(fd)?;
            let chmod = || {
                // SAFETY: valid C string.
                cvt(unsafe {
                    libc::fchmodat(self.proc_fd.as_raw_fd(), name.as_ptr(), mode & 0o7777, 0)
                })
            };
            chmod()?;
        }
        if let Some(size) = set.size {
            let size = offset(size)?;
            let via_handle = set
                .fh
                .and_then(|fh| self.handles.get(&call.session, fh).ok())
                .filter(|h| h.dev == inode.dev && h.ino == inode.ino && h.dir.is_none());
            let opened;
            let raw = match &via_handle {
                Some(h) => h.file.as_raw_fd(),
                None => {
                    opened = match inode.kind {
                        // Opening for write makes the kernel check the
                        // caller's write permission, as truncate(2) does.
                        FileKind::File => self.reopen(&inode, libc::O_WRONLY)?,
                        FileKind::Dir => return Err(libc::EISDIR),
                        _ => return Err(libc::EINVAL),
                    };
                    opened.as_raw_fd()
                }
            };
            // SAFETY: plain syscall on an fd we own.
            retry(|| cvt(unsafe { libc::ftruncate(raw, size) }))?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = [utime(set.atime), utime(set.mtime)];
            // Raw syscall: glibc rejects a NULL path, and an O_PATH fd needs
            // the empty path + AT_EMPTY_PATH form anyway.
            // SAFETY: valid C string and a 2-element timespec array.
            cvt_long(unsafe {
                libc::syscall(
                    libc::SYS_utimensat,
                    fd,
                    c"".as_ptr(),
                    times.as_ptr(),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        Ok(attr_of(ino, &fstat(fd)?))
    }

    pub fn readlink(&self, who: &Who, ino: RemoteIno) -> Res<Vec<u8>> {
        let _call = self.begin(who, Intent::Read)?;
        let inode = self.inodes.get(ino)?;
        let mut len = 4096;
        loop {
            let mut buf = vec![0u8; len];
            // SAFETY: buf is valid for len bytes.
            let n = cvt_size(unsafe {
                libc::readlinkat(
                    inode.fd.as_raw_fd(),
                    c"".as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            })?;
            if n < len {
                buf.truncate(n);
                return Ok(buf);
            }
            if len >= MAX_XATTR {
                return Err(libc::ENAMETOOLONG);
            }
            len *= 4;
        }
    }

    /// access(2) of `mask` (R_OK, W_OK, X_OK, F_OK) for the caller.
    pub fn access(&self, who: &Who, ino: RemoteIno, mask: i32) -> Res<()> {
        let _call = self.begin(who, Intent::Read)?;
        let inode = self.inodes.get(ino)?;
        self.policy.allows(Intent::of_access(inode.kind, mask))?;
        self.access_as_caller(&inode, mask)
    }

    fn access_as_caller(&self, inode: &Inode, mask: i32) -> Res<()> {
        let name = fd_name(inode.fd.as_raw_fd())?;
        // faccessat2 with AT_EACCESS checks with the fs credentials set for
        // this thread; plain access(2) would use the real uid (root). glibc's
        // faccessat would emulate AT_EACCESS in user space, so this is the
        // raw syscall.
        // SAFETY: valid C string.
        cvt_long(unsafe {
            libc::syscall(
                libc::SYS_faccessat2,
                self.proc_fd.as_raw_fd(),
                name.as_ptr(),
                mask,
                AT_EACCESS,
            )
        })?;
        Ok(())
    }

    pub fn statfs(&self, who: &Who, ino: RemoteIno) -> Res<StatFs> {
        let _call = self.begin(who, Intent::Read)?;
        let inode = self.inodes.get(ino)?;
        let s = fstatfs(inode.fd.as_raw_fd())?;
        Ok(StatFs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: u32::try_from(s.f_bsize).unwrap_or(4096),
            namelen: u32::try_from(s.f_namelen).unwrap_or(255),
            frsize: u32::try_from(s.f_frsize).unwrap_or(4096),
        })
    }
}
