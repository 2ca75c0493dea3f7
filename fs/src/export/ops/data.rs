//! open, create, read, write, flush, fsync, release, fallocate: file data
//! through handles.
use std::fs::File;
use std::os::fd::AsRawFd;

use mosix_proto::fs::{Attr, FileKind, RemoteFh, RemoteIno};

use super::super::appends;
use super::super::attr::kind_of;
use super::super::handles::Handle;
use super::super::inodes::Reached;
use super::super::policy::Intent;
use super::super::sys::{cvt, cvt_size, fd_name, fstat, io_errno, openat, retry, to_off_t};
use super::super::{Export, Res};
use crate::service::Who;

/// Largest read reply: what fits in one frame with room for the envelope.
/// A smaller cap would look like EOF to a FUSE client.
const MAX_IO: usize = mosix_proto::MAX_FRAME - 4096;

/// Open flags a client may pass; the rest (O_CREAT, O_EXCL, O_NOCTTY,
/// O_PATH, O_TMPFILE, O_DIRECTORY, O_NOFOLLOW, ...) are either decided by
/// the server or meaningless for a reopen through /proc.
const OPEN_FLAGS_ALLOWED: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_TRUNC
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_NOATIME
    | libc::O_LARGEFILE;

/// Opens file `ino` with open(2) `flags`, with the thread's credentials.
/// The read-only rule was applied by the caller.
pub(in super::super) fn open_inode(
    export: &Export,
    ino: RemoteIno,
    flags: i32,
) -> Res<(File, Reached)> {
    let mut flags = flags & OPEN_FLAGS_ALLOWED;
    let inode = export.inodes.get(ino)?;
    match inode.kind {
        FileKind::File => {}
        FileKind::Dir if Intent::of_open(flags) == Intent::Read => flags |= libc::O_DIRECTORY,
        FileKind::Dir => return Err(libc::EISDIR),
        FileKind::Symlink => return Err(libc::ELOOP),
        // Opening a fifo would block a server thread, opening a device
        // would run its driver on this node on a remote caller's behalf.
        _ => return Err(libc::ENXIO),
    }
    let file = File::from(export.reopen(&inode, flags)?);
    Ok((file, inode))
}

impl Export {
    /// `flags` are open(2)'s; O_CREAT and O_EXCL mean nothing here.
    pub fn open(&self, who: &Who, ino: RemoteIno, flags: i32) -> Res<RemoteFh> {
        let call = self.begin(who, Intent::of_open(flags & OPEN_FLAGS_ALLOWED))?;
        let ticket = self.fd_ticket(&call, who)?;
        let (file, inode) = open_inode(self, ino, flags)?;
        self.handles
            .add(&call.session, file, (inode.dev, inode.ino), false, ticket)
    }

    /// Creates `name` and opens it; without O_EXCL in `flags` an existing
    /// regular file is opened instead.
    pub fn create(
        &self,
        who: &Who,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Res<(Attr, RemoteFh)> {
        let call = self.begin(who, Intent::Write)?;
        let ticket = self.fd_ticket(&call, who)?;
        let (parent, name) = self.new_name(parent, name)?;
        let excl = flags & libc::O_EXCL != 0;
        let flags = flags & OPEN_FLAGS_ALLOWED;
        let mode = mode & !umask & 0o7777;
        // O_EXCL first, so an existing fifo or device is never opened with
        // O_CREAT; only if it already exists (and the caller allowed that)
        // is it looked up and opened like open would.
        let mut attempts = 0;
        let file = loop {
            attempts += 1;
            match openat(
                parent.fd.as_raw_fd(),
                &name,
                flags | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            ) {
                Ok(fd) => break fd,
                Err(libc::EEXIST) if !excl => {}
                Err(e) => return Err(e),
            }
            let existing = match openat(
                parent.fd.as_raw_fd(),
                &name,
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0,
            ) {
                Ok(fd) => fd,
                // Removed in between: try creating again, a few times.
                Err(libc::ENOENT) if attempts < 3 => continue,
                Err(e) => return Err(e),
            };
            let st = fstat(existing.as_raw_fd())?;
            match kind_of(st.st_mode) {
                FileKind::File => {}
                FileKind::Dir => return Err(libc::EISDIR),
                FileKind::Symlink => return Err(libc::ELOOP),
                _ => return Err(libc::ENXIO),
            }
            let en = fd_name(existing.as_raw_fd())?;
            break openat(self.proc_fd.as_raw_fd(), &en, flags | libc::O_CLOEXEC, 0)?;
        };
        // An O_PATH fd to exactly the inode we opened (no second name lookup
        // that a concurrent rename could redirect).
        let fname = fd_name(file.as_raw_fd())?;
        let path_fd = openat(
            self.proc_fd.as_raw_fd(),
            &fname,
            libc::O_PATH | libc::O_CLOEXEC,
            0,
        )?;
        let st = fstat(path_fd.as_raw_fd())?;
        let attr = self.enter_file(&call.session, path_fd, &st)?;
        let fh = self.handles.add(
            &call.session,
            File::from(file),
            (st.st_dev, st.st_ino),
            false,
            ticket,
        )?;
        Ok((attr, fh))
    }

    /// Up to `size` bytes (capped to a frame) from `offset`; short only at
    /// end of file or on an error after some data.
    pub fn read(&self, who: &Who, fh: RemoteFh, offset: u64, size: u32) -> Res<Vec<u8>> {
        let call = self.begin(who, Intent::Read)?;
        let h = self.handles.get(&call.session, fh)?;
        let off = to_off_t(offset)?;
        let size = (size as usize).min(MAX_IO);
        // Not zeroed first: pread fills it, and only what it filled counts.
        let mut buf: Vec<u8> = Vec::with_capacity(size);
        while buf.len() < size {
            let at = off.checked_add(buf.len() as i64).ok_or(libc::EINVAL)?;
            let rest = buf.spare_capacity_mut();
            // SAFETY: rest is valid for writes of rest.len() bytes.
            let n = retry(|| {
                cvt_size(unsafe {
                    libc::pread(h.file.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len(), at)
                })
            });
            match n {
                Ok(0) => break,
                // SAFETY: pread initialized the n bytes after the current length.
                Ok(n) => unsafe { buf.set_len(buf.len() + n) },
                Err(e) if buf.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(buf)
    }

    /// Writes `data` at `offset` as the caller (so the serving kernel
    /// clears set-ID bits as it would for that caller); how much made it.
    pub fn write(&self, who: &Who, fh: RemoteFh, offset: u64, data: &[u8]) -> Res<u32> {
        let call = self.begin(who, Intent::Write)?;
        let h = self.handles.get(&call.session, fh)?;
        let off = to_off_t(offset)?;
        if h.append {
            let key = (h.dev, h.ino);
            self.appends.enter(&call.session, key);
            let r = self.write_at(&h, off, data);
            let more = matches!(r, Ok(n) if n as usize == data.len())
                && appends::may_continue(offset, data.len());
            self.appends.leave(&call.session, key, more);
            return r;
        }
        self.write_at(&h, off, data)
    }

    /// pwrite until all of `data` is written or an error; how much made it.
    fn write_at(&self, h: &Handle, off: libc::off_t, data: &[u8]) -> Res<u32> {
        let mut done = 0;
        while done < data.len() {
            let at = off.checked_add(done as i64).ok_or(libc::EINVAL)?;
            let rest = &data[done..];
            // SAFETY: rest is valid for rest.len() bytes.
            let n = retry(|| {
                cvt_size(unsafe {
                    libc::pwrite(h.file.as_raw_fd(), rest.as_ptr().cast(), rest.len(), at)
                })
            });
            match n {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if done == 0 => return Err(e),
                // Report what made it, like write(2) does.
                Err(_) => break,
            }
        }
        Ok(u32::try_from(done).unwrap_or(u32::MAX))
    }

    /// Nothing is buffered here; only says whether the handle is valid.
    pub fn flush(&self, who: &Who, fh: RemoteFh) -> Res<()> {
        let call = self.begin(who, Intent::Read)?;
        self.handles.get(&call.session, fh).map(drop)
    }

    pub fn fsync(&self, who: &Who, fh: RemoteFh, datasync: bool) -> Res<()> {
        let call = self.begin(who, Intent::Read)?;
        let h = self.handles.get(&call.session, fh)?;
        let r = if datasync {
            h.file.sync_data()
        } else {
            h.file.sync_all()
        };
        r.map_err(io_errno)
    }

    /// Closes a file handle (EBADF if the caller's client has no such).
    pub fn release(&self, who: &Who, fh: RemoteFh) -> Res<()> {
        let call = self.begin(who, Intent::Read)?;
        let h = self.handles.remove(&call.session, fh)?;
        if h.append {
            // Closing ends any append of this client's still under way.
            self.appends.leave(&call.session, (h.dev, h.ino), false);
        }
        // Closed outside the table's lock: a last close can be slow.
        drop(h);
        Ok(())
    }

    pub fn fallocate(
        &self,
        who: &Who,
        fh: RemoteFh,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Res<()> {
        let call = self.begin(who, Intent::Write)?;
        let h = self.handles.get(&call.session, fh)?;
        let (off, len) = (to_off_t(offset)?, to_off_t(length)?);
        retry(|| {
            // SAFETY: plain syscall on an fd we own.
            cvt(unsafe { libc::fallocate(h.file.as_raw_fd(), mode, off, len) })
        })?;
        Ok(())
    }
}
