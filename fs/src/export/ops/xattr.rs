//! setxattr, getxattr, listxattr, removexattr: through the magic link, as
//! the kernel has no xattr calls on an O_PATH fd.
use std::os::fd::AsRawFd;

use mosix_proto::fs::RemoteIno;

use super::super::policy::Intent;
use super::super::sys::{cstring, cvt, cvt_size, fd_path};
use super::super::{Export, Res};
use crate::service::{Who, Xattr};

/// Linux's XATTR_SIZE_MAX / XATTR_LIST_MAX.
pub(super) const MAX_XATTR: usize = 65536;

impl Export {
    pub fn setxattr(
        &self,
        who: &Who,
        ino: RemoteIno,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Res<()> {
        let _call = self.begin(who, Intent::Write)?;
        let inode = self.inodes.get(ino)?;
        let path = fd_path(inode.fd.as_raw_fd())?;
        let name = cstring(name)?;
        // SAFETY: valid C strings and value buffer.
        cvt(unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })?;
        Ok(())
    }

    /// `size` 0 asks for the value's size only.
    pub fn getxattr(&self, who: &Who, ino: RemoteIno, name: &[u8], size: u32) -> Res<Xattr> {
        let _call = self.begin(who, Intent::Read)?;
        let inode = self.inodes.get(ino)?;
        let path = fd_path(inode.fd.as_raw_fd())?;
        let name = cstring(name)?;
        xattr_read(size, |buf, len| {
            // SAFETY: buf is valid for len bytes (or null with len 0).
            unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf, len) }
        })
    }

    /// `size` 0 asks for the list's size only.
    pub fn listxattr(&self, who: &Who, ino: RemoteIno, size: u32) -> Res<Xattr> {
        let _call = self.begin(who, Intent::Read)?;
        let inode = self.inodes.get(ino)?;
        let path = fd_path(inode.fd.as_raw_fd())?;
        xattr_read(size, |buf, len| {
            // SAFETY: buf is valid for len bytes (or null with len 0).
            unsafe { libc::listxattr(path.as_ptr(), buf.cast(), len) }
        })
    }

    pub fn removexattr(&self, who: &Who, ino: RemoteIno, name: &[u8]) -> Res<()> {
        let _call = self.begin(who, Intent::Write)?;
        let inode = self.inodes.get(ino)?;
        let path = fd_path(inode.fd.as_raw_fd())?;
        let name = cstring(name)?;
        // SAFETY: valid C strings.
        cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })?;
        Ok(())
    }
}

/// The size-0 / ERANGE / data protocol shared by getxattr and listxattr.
fn xattr_read(size: u32, call: impl Fn(*mut libc::c_void, usize) -> libc::ssize_t) -> Res<Xattr> {
    if size == 0 {
        let n = cvt_size(call(std::ptr::null_mut(), 0))?;
        return Ok(Xattr::Size(u32::try_from(n).unwrap_or(u32::MAX)));
    }
    let mut buf = vec![0u8; (size as usize).min(MAX_XATTR)];
    let n = cvt_size(call(buf.as_mut_ptr().cast(), buf.len()))?;
    buf.truncate(n);
    Ok(Xattr::Data(buf))
}
