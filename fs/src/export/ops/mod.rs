//! The operations, one typed method each on [`Export`], grouped as FUSE
//! groups them; and the ways every operation reaches its files.
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use mosix_proto::fs::{Attr, RemoteIno};

use super::attr::attr_of;
use super::inodes::Reached;
use super::sessions::Session;
use super::sys::{component, fstat, fstatfs, openat, with_cap, CAP_DAC_READ_SEARCH};
use super::{Export, Res};

mod data;
mod dir;
mod locks;
mod meta;
mod names;
mod xattr;

pub(super) use data::open_inode;

impl Export {
    /// Directory `ino`, to look up or change names in: ENOENT if it is no
    /// longer inside the export (a local user moved it, or one of its
    /// parents, out), so that no client reaches files outside the export
    /// through a directory it holds.
    pub(super) fn dir_inside(&self, ino: RemoteIno) -> Res<Reached> {
        let dir = self.inodes.get(ino)?;
        if self.confine && ino != mosix_proto::fs::ROOT_INO {
            match under(dir.fd.as_raw_fd(), self.root_key) {
                // The caller may lack search permission on some parent
                // above; where the directory is is not the caller's secret.
                Err(libc::EACCES) => with_cap(CAP_DAC_READ_SEARCH, || {
                    under(dir.fd.as_raw_fd(), self.root_key)
                })?,
                r => r?,
            }
        }
        Ok(dir)
    }

    /// Parent and validated name for an operation that creates `name`.
    /// A hidden name cannot be created or replaced.
    fn new_name(&self, parent: RemoteIno, name: &[u8]) -> Res<(Reached, CString)> {
        let parent = self.dir_inside(parent)?;
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
        let parent = self.dir_inside(parent)?;
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

/// Most directory levels walked up looking for the export root.
const MAX_DEPTH: usize = 4096;

/// Ok if directory `fd` is the directory `root` or below it: walks `..`
/// up until it meets `root` (Ok) or the top of the tree (ENOENT).
fn under(fd: RawFd, root: (u64, u64)) -> Res<()> {
    let mut st = fstat(fd)?;
    let mut cur: Option<OwnedFd> = None;
    for _ in 0..MAX_DEPTH {
        if (st.st_dev, st.st_ino) == root {
            return Ok(());
        }
        let at = cur.as_ref().map_or(fd, |c| c.as_raw_fd());
        let up = openat(
            at,
            c"..",
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )?;
        let up_st = fstat(up.as_raw_fd())?;
        if (up_st.st_dev, up_st.st_ino) == (st.st_dev, st.st_ino) {
            // The top: `..` of / is / itself.
            return Err(libc::ENOENT);
        }
        st = up_st;
        cur = Some(up);
    }
    Err(libc::ENOENT)
}
