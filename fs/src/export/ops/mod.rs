//! The operations, one typed method each on [`Export`], grouped as FUSE
//! groups them; and the ways every operation reaches its files.
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};

use mosix_proto::fs::{Attr, RemoteIno};

use super::attr::attr_of;
use super::inodes::Reached;
use super::sessions::Session;
use super::sys::{component, fstat, fstatfs, openat};
use super::{Export, Res};

mod data;
mod dir;
mod locks;
mod meta;
mod names;
mod xattr;

pub(super) use data::open_inode;

impl Export {
    /// Parent and validated name for an operation that creates `name`.
    /// A hidden name cannot be created or replaced.
    fn new_name(&self, parent: RemoteIno, name: &[u8]) -> Res<(Reached, CString)> {
        let parent = self.inodes.get(parent)?;
        let name = component(name)?;
        if self
            .policy
            .hides_name(parent.dev, parent.ino, name.as_bytes())
        {
            return Err(libc::EACCES);
        }
        Ok((parent, name))
    }

    /// Parent and validated name for an operation on an existing `name`.
    /// A hidden name does not exist.
    fn old_name(&self, parent: RemoteIno, name: &[u8]) -> Res<(Reached, CString)> {
        let parent = self.inodes.get(parent)?;
        let name = component(name)?;
        if self
            .policy
            .hides_name(parent.dev, parent.ino, name.as_bytes())
        {
            return Err(libc::ENOENT);
        }
        Ok((parent, name))
    }

    /// Single-component, no-follow lookup; adds one reference for
    /// `session` to the result.
    fn lookup_at(&self, session: &Session, parent: &Reached, name: &CStr) -> Res<Attr> {
        if self
            .policy
            .hides_name(parent.dev, parent.ino, name.to_bytes())
        {
            return Err(libc::ENOENT);
        }
        let fd = openat(
            parent.fd.as_raw_fd(),
            name,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )?;
        let st = fstat(fd.as_raw_fd())?;
        self.enter_file(session, fd, &st)
    }

    /// Gives a file reached by lookup its id, unless it must look absent.
    fn enter_file(&self, session: &Session, fd: OwnedFd, st: &libc::stat) -> Res<Attr> {
        // f_type's C type differs between architectures.
        #[allow(clippy::unnecessary_cast)]
        let hidden = self
            .policy
            .hides_file(st, || Ok(fstatfs(fd.as_raw_fd())?.f_type as i64))?;
        if hidden {
            return Err(libc::ENOENT);
        }
        let id = self.inodes.insert(session, fd, st)?;
        Ok(attr_of(id, st))
    }
}
