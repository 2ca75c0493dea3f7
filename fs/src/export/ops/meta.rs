//! lookup, forget, getattr, setattr, readlink, access, statfs.
use std::os::fd::AsRawFd;

use mosix_proto::fs::{Attr, FileKind, RemoteIno, SetAttr, StatFs};

use super::super::attr::{attr_of, utime};
use super::super::inodes::Reached;
use super::super::policy::Intent;
use super::super::sys::{
    component, cvt, cvt_long, cvt_size, fd_name, fstat, fstatfs, retry, to_off_t, AT_EACCESS,
};
use super::super::{Export, Res};
use super::xattr::MAX_XATTR;
use crate::service::Who;

impl Export {
    /// Looks `name` (one component) up in `parent`; the caller's client
    /// holds one more reference to the result.
    pub fn lookup(&self, who: &Who, parent: RemoteIno, name: &[u8]) -> Res<Attr> {
        let call = self.begin(who, Intent::Read)?;
        let parent = self.dir_inside(parent)?;
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
    ///
    /// One chmod is allowed beyond what the caller could do locally: clearing
    /// the set-user-ID bit (and the set-group-ID bit of a group-executable
    /// file), and nothing else, by a caller who may write the file. A FUSE
    /// client kernel sends exactly that before it writes or truncates for a
    /// writer without CAP_FSETID (its `file_remove_privs`), as the writer;
    /// the serving kernel would refuse the non-owner's chmod, failing the
    /// write itself. The bits go because a write by that caller would clear
    /// them here anyway.
    pub fn setattr(&self, who: &Who, ino: RemoteIno, set: &SetAttr) -> Res<Attr> {
        let mut call = self.begin(who, Intent::Write)?;
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
            match chmod() {
                Err(libc::EPERM) if self.may_kill_privs(&inode, mode)? => {
                    call.as_daemon(self, who, chmod)??;
                }
                r => {
                    r?;
                }
            }
        }
        if let Some(size) = set.size {
            let size = to_off_t(size)?;
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

    /// Whether chmod to `mode` only clears what the kernel's own
    /// `file_remove_privs` would on a write (set-user-ID; set-group-ID if
    /// group-executable), and the caller may write the file. Asked as the
    /// caller.
    fn may_kill_privs(&self, inode: &Reached, mode: u32) -> Res<bool> {
        if inode.kind != FileKind::File {
            return Ok(false);
        }
        let cur = fstat(inode.fd.as_raw_fd())?.st_mode & 0o7777;
        let mut killable = cur & libc::S_ISUID;
        if cur & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
            killable |= libc::S_ISGID;
        }
        let want = mode & 0o7777;
        let only_clears_killable = want & !cur == 0 && (cur & !want) & !killable == 0;
        if want == cur || !only_clears_killable {
            return Ok(false);
        }
        Ok(self.access_as_caller(inode, libc::W_OK).is_ok())
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

    fn access_as_caller(&self, inode: &Reached, mask: i32) -> Res<()> {
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use mosix_proto::fs::{Creds, SetAttr, ROOT_INO};

    use super::super::super::testutil::*;
    use crate::service::Who;

    fn user(uid: u32) -> Who {
        who(Creds {
            uid,
            gid: uid,
            groups: vec![],
            pid: 3,
        })
    }

    /// A file of uid/gid 1000 with `mode`, made as root.
    fn owned_file(path: &Path, mode: u32) {
        std::fs::write(path, b"0123456789").unwrap();
        std::os::unix::fs::chown(path, Some(1000), Some(1000)).unwrap();
        // After the chown, which clears set-ID bits.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn chmod(mode: u32) -> SetAttr {
        SetAttr {
            mode: Some(libc::S_IFREG | mode),
            ..Default::default()
        }
    }

    #[test]
    fn a_write_by_a_non_owner_clears_set_id_bits() {
        require_root("writes as uid 2000 to a file of uid 1000");
        let (dir, e) = setup();
        let writer = user(2000);
        for (name, mode) in [("suid", 0o4777), ("sgid", 0o2777), ("both", 0o6777)] {
            let path = dir.path().join(name);
            owned_file(&path, mode);
            let f = e.lookup(&writer, ROOT_INO, name.as_bytes()).unwrap();
            let fh = e.open(&writer, f.ino, libc::O_WRONLY).unwrap();
            assert_eq!(e.write(&writer, fh, 0, b"x"), Ok(1));
            assert_eq!(mode_of(&path), 0o777, "{name}: stat after the write");
            assert_eq!(e.getattr(&writer, f.ino).unwrap().perm, 0o777, "{name}");
            e.release(&writer, fh).unwrap();
        }
    }

    /// What a FUSE client kernel without FUSE_HANDLE_KILLPRIV sends before
    /// a non-owner's write or truncate: a chmod that only clears the set-ID
    /// bits, as the writer.
    #[test]
    fn a_writer_may_clear_set_id_bits_and_nothing_more() {
        require_root("acts as uids 1000 and 2000 on a file of uid 1000");
        let (dir, e) = setup();
        let (owner, writer) = (user(1000), user(2000));
        let path = dir.path().join("f");
        let f = |e: &crate::export::Export| e.lookup(&writer, ROOT_INO, b"f").unwrap().ino;

        for (mode, killed) in [(0o4777, 0o777), (0o2777, 0o777), (0o6777, 0o777)] {
            owned_file(&path, mode);
            let a = e.setattr(&writer, f(&e), &chmod(killed)).unwrap();
            assert_eq!(a.perm as u32, killed, "{mode:o}");
            assert_eq!(mode_of(&path), killed, "{mode:o}");
        }
        // Together with a truncate, as truncate(2) by a non-owner sends it.
        owned_file(&path, 0o4777);
        let set = SetAttr {
            size: Some(0),
            ..chmod(0o777)
        };
        let a = e.setattr(&writer, f(&e), &set).unwrap();
        assert_eq!((a.perm, a.size), (0o777, 0));

        // Anything else stays the owner's: more than the set-ID bits...
        owned_file(&path, 0o4777);
        assert_eq!(e.setattr(&writer, f(&e), &chmod(0o775)), Err(libc::EPERM));
        assert_eq!(e.setattr(&writer, f(&e), &chmod(0o4775)), Err(libc::EPERM));
        assert_eq!(e.setattr(&writer, f(&e), &chmod(0o6777)), Err(libc::EPERM));
        // ...set-group-ID without group execute, which a write keeps...
        owned_file(&path, 0o2767);
        assert_eq!(e.setattr(&writer, f(&e), &chmod(0o767)), Err(libc::EPERM));
        // ...and anything by someone who may not write the file.
        owned_file(&path, 0o4755);
        assert_eq!(e.setattr(&writer, f(&e), &chmod(0o755)), Err(libc::EPERM));
        assert_eq!(mode_of(&path), 0o4755);
        // The owner's own chmod is unchanged.
        assert!(e.setattr(&owner, f(&e), &chmod(0o700)).is_ok());
        assert_eq!(mode_of(&path), 0o700);
        // And the thread is root again afterwards.
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
    }
}
