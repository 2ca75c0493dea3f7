//! opendir, readdir, releasedir.
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use mosix_proto::fs::{DirEntry, FileKind, RemoteFh, RemoteIno};

use super::super::attr::{dtype_kind, kind_of};
use super::super::dirent::parse_dirent;
use super::super::policy::Intent;
use super::super::sys::{cvt_long, fstatat, last_errno, retry, to_off_t};
use super::super::{lock, Export, Res};
use crate::service::Who;

/// Budget for one readdir reply: a DirEntry costs up to about twice the
/// estimate used for `size`, so this keeps replies well inside a frame.
const MAX_READDIR: usize = mosix_proto::MAX_FRAME / 4;
/// Estimated per-entry overhead besides the name, for the readdir budget.
const DIRENT_OVERHEAD: usize = 24;

impl Export {
    pub fn opendir(&self, who: &Who, ino: RemoteIno) -> Res<RemoteFh> {
        let call = self.begin(who, Intent::Read)?;
        let inode = self.inodes.get(ino)?;
        if inode.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        let inode = self.dir_inside(ino)?;
        let ticket = self.fd_ticket(&call, who)?;
        let fd = self.reopen(&inode, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
        self.handles.add(
            &call.session,
            File::from(fd),
            (inode.dev, inode.ino),
            true,
            ticket,
        )
    }

    /// Entries after the cookie `offset` (0 = from the start), as many as
    /// fit in about `size` bytes of names, but at least one.
    pub fn readdir(&self, who: &Who, fh: RemoteFh, offset: u64, size: u32) -> Res<Vec<DirEntry>> {
        let call = self.begin(who, Intent::Read)?;
        let h = self.handles.get(&call.session, fh)?;
        let Some(dir_lock) = &h.dir else {
            return Err(libc::ENOTDIR);
        };
        let _pos = lock(dir_lock);
        let fd = h.file.as_raw_fd();
        let off = to_off_t(offset)?;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } < 0 {
            return Err(last_errno());
        }
        let hidden = self.policy.hidden_in(h.dev, h.ino);
        let mut st_inos = Vec::new();
        let budget = (size as usize).min(MAX_READDIR);
        let mut used = 0usize;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        'fill: loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = retry(|| {
                cvt_long(unsafe {
                    libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len())
                })
            })? as usize;
            if n == 0 {
                break;
            }
            let data = buf.get(..n).ok_or(libc::EIO)?;
            let mut pos = 0;
            while pos < n {
                let d = parse_dirent(data, pos).ok_or(libc::EIO)?;
                pos += d.reclen;
                if hidden.iter().any(|h| h.as_slice() == d.name) {
                    continue;
                }
                let cost = d.name.len() + DIRENT_OVERHEAD;
                if !out.is_empty() && used + cost > budget {
                    break 'fill;
                }
                used += cost;
                let kind = match dtype_kind(d.d_type) {
                    Some(k) => k,
                    None => kind_at(fd, d.name),
                };
                st_inos.push(d.ino);
                out.push(DirEntry {
                    name: d.name.to_vec(),
                    kind,
                    ino: 0,
                    next_offset: d.off as u64,
                });
            }
        }
        // The same ids lookup gives, so readdir's d_ino matches stat's st_ino
        // (except on mount points, where d_ino is the covered directory's).
        let ids = self.inodes.ids_of(h.dev, st_inos.into_iter());
        for (e, id) in out.iter_mut().zip(ids) {
            e.ino = id;
        }
        Ok(out)
    }

    pub fn releasedir(&self, who: &Who, fh: RemoteFh) -> Res<()> {
        self.release(who, fh)
    }
}

/// File type of `name` in `dirfd`, for filesystems that give DT_UNKNOWN.
fn kind_at(dirfd: RawFd, name: &[u8]) -> FileKind {
    let Ok(c) = std::ffi::CString::new(name) else {
        return FileKind::File;
    };
    fstatat(dirfd, &c).map_or(FileKind::File, |st| kind_of(st.st_mode))
}
