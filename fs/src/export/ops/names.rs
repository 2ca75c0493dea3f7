//! mknod, mkdir, unlink, rmdir, symlink, rename, link: operations on names.
use std::os::fd::AsRawFd;

use mosix_proto::fs::{Attr, RemoteIno};

use super::super::policy::Intent;
use super::super::sys::{cstring, cvt, cvt_long, fd_name};
use super::super::{Export, Res};
use crate::service::Who;

impl Export {
    /// Regular files, fifos, sockets and device nodes; `mode` includes the
    /// file type, `umask` is the caller's.
    pub fn mknod(
        &self,
        who: &Who,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        rdev: u64,
        umask: u32,
    ) -> Res<Attr> {
        let call = self.begin(who, Intent::Write)?;
        let (parent, name) = self.new_name(parent, name)?;
        let fmt = match mode & libc::S_IFMT {
            0 => libc::S_IFREG,
            f
            @ (libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK) => f,
            _ => return Err(libc::EINVAL),
        };
        let mode = fmt | (mode & !umask & 0o7777);
        // SAFETY: valid C string.
        cvt(unsafe { libc::mknodat(parent.fd.as_raw_fd(), name.as_ptr(), mode, rdev) })?;
        self.lookup_at(&call.session, &parent, &name)
    }

    pub fn mkdir(
        &self,
        who: &Who,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> Res<Attr> {
        let call = self.begin(who, Intent::Write)?;
        let (parent, name) = self.new_name(parent, name)?;
        let mode = mode & !umask & 0o7777;
        // SAFETY: valid C string.
        cvt(unsafe { libc::mkdirat(parent.fd.as_raw_fd(), name.as_ptr(), mode) })?;
        self.lookup_at(&call.session, &parent, &name)
    }

    pub fn unlink(&self, who: &Who, parent: RemoteIno, name: &[u8]) -> Res<()> {
        self.remove(who, parent, name, 0)
    }

    pub fn rmdir(&self, who: &Who, parent: RemoteIno, name: &[u8]) -> Res<()> {
        self.remove(who, parent, name, libc::AT_REMOVEDIR)
    }

    fn remove(&self, who: &Who, parent: RemoteIno, name: &[u8], flags: i32) -> Res<()> {
        let _call = self.begin(who, Intent::Write)?;
        let (parent, name) = self.old_name(parent, name)?;
        // SAFETY: valid C string.
        cvt(unsafe { libc::unlinkat(parent.fd.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(())
    }

    pub fn symlink(&self, who: &Who, parent: RemoteIno, name: &[u8], target: &[u8]) -> Res<Attr> {
        let call = self.begin(who, Intent::Write)?;
        let (parent, name) = self.new_name(parent, name)?;
        let target = cstring(target)?;
        // SAFETY: valid C strings.
        cvt(unsafe { libc::symlinkat(target.as_ptr(), parent.fd.as_raw_fd(), name.as_ptr()) })?;
        self.lookup_at(&call.session, &parent, &name)
    }

    /// `flags` are renameat2's (RENAME_NOREPLACE, RENAME_EXCHANGE).
    pub fn rename(
        &self,
        who: &Who,
        parent: RemoteIno,
        name: &[u8],
        new_parent: RemoteIno,
        new_name: &[u8],
        flags: u32,
    ) -> Res<()> {
        let _call = self.begin(who, Intent::Write)?;
        let (parent, name) = self.old_name(parent, name)?;
        let (new_parent, new_name) = self.new_name(new_parent, new_name)?;
        // SAFETY: valid C strings.
        cvt_long(unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                parent.fd.as_raw_fd(),
                name.as_ptr(),
                new_parent.fd.as_raw_fd(),
                new_name.as_ptr(),
                flags,
            )
        })?;
        Ok(())
    }

    pub fn link(
        &self,
        who: &Who,
        ino: RemoteIno,
        new_parent: RemoteIno,
        new_name: &[u8],
    ) -> Res<Attr> {
        let call = self.begin(who, Intent::Write)?;
        let src = self.inodes.get(ino)?;
        let (parent, name) = self.new_name(new_parent, new_name)?;
        let src_name = fd_name(src.fd.as_raw_fd())?;
        // Through the magic link rather than AT_EMPTY_PATH, which would need
        // CAP_DAC_READ_SEARCH.
        // SAFETY: valid C strings.
        cvt(unsafe {
            libc::linkat(
                self.proc_fd.as_raw_fd(),
                src_name.as_ptr(),
                parent.fd.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        })?;
        self.lookup_at(&call.session, &parent, &name)
    }
}
