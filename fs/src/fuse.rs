//! The FUSE adapter: every handler turns the kernel's request into one call
//! of the namespace ([`MosixFs`]) and its result into the reply, nothing
//! else. Work that stays on this node runs right on the FUSE thread (it is
//! a few syscalls, cheaper than any hand-off); work that waits on the
//! network runs as a task, so a slow node never blocks the FUSE threads and
//! many requests are in flight at once ([`MosixFs::runs_here`] decides).
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::attr::{Change, Entry, Kind, NodeAttr, TimeSet};
use crate::callers::Caller;
use crate::error::FsError;
use crate::invalidate::{Inval, Sink};
use crate::namespace::{MosixFs, Opened};
use crate::passthrough::{LocalOpen, Passthrough};
use crate::service::{Lock, OpenCache, Xattr};

/// Largest read and write the kernel sends in one request.
pub const MAX_IO: u32 = 1 << 20;

pub struct FuseAdapter {
    fs: Arc<MosixFs>,
    rt: tokio::runtime::Handle,
    passthrough: AtomicBool,
    pt: Arc<Passthrough<BackingId>>,
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn file_attr(a: &NodeAttr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        flags: 0,
        blksize: a.blksize,
    }
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(st) => TimeSet::At(st),
    })
}

fn open_flags(o: &Opened) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if o.direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    }
    if o.noflush {
        f |= FopenFlags::FOPEN_NOFLUSH;
    }
    if o.keep_cache {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    f
}

/// A create's open flags: how its node lets the kernel cache the new file.
fn create_flags(fs: &MosixFs, ino: u64, fh: u64) -> FopenFlags {
    match fs.open_cache(ino, fh) {
        OpenCache::Plain => FopenFlags::empty(),
        OpenCache::Keep => FopenFlags::FOPEN_KEEP_CACHE,
        OpenCache::Direct => FopenFlags::FOPEN_DIRECT_IO,
    }
}

fn entry(r: Result<Entry, FsError>, reply: ReplyEntry) {
    match r {
        Ok(e) => reply.entry_with_ttls(
            &e.attr_ttl,
            &e.entry_ttl,
            &file_attr(&e.attr),
            Generation(0),
        ),
        Err(e) => reply.error(errno(&e)),
    }
}

fn empty(r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn xattr(r: Result<Xattr, FsError>, reply: ReplyXattr) {
    match r {
        Ok(Xattr::Size(n)) => reply.size(n),
        Ok(Xattr::Data(d)) => reply.data(&d),
        Err(e) => reply.error(errno(&e)),
    }
}

fn opened_local(o: LocalOpen<BackingId>, reply: ReplyOpen) {
    match o {
        LocalOpen::Through { fh, backing } => {
            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing.id)
        }
        LocalOpen::Beside { fh, backing } => {
            reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO, &backing.id)
        }
        LocalOpen::Daemon { fh } => reply.opened(FileHandle(fh), FopenFlags::empty()),
    }
}

impl FuseAdapter {
    pub fn new(fs: Arc<MosixFs>, rt: tokio::runtime::Handle) -> Self {
        FuseAdapter {
            fs,
            rt,
            passthrough: AtomicBool::new(false),
            pt: Arc::default(),
        }
    }

    /// Runs a request's work: here on the FUSE thread if it stays on this
    /// node, else as a task.
    fn run<F>(&self, here: bool, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if here {
            self.rt.block_on(fut);
        } else {
            self.rt.spawn(fut);
        }
    }

    fn on(&self, ino: INodeNo) -> bool {
        self.fs.runs_here(ino.0)
    }

    /// Whether an open of `ino` may be a kernel passthrough open.
    fn passthrough_of(&self, ino: u64) -> Option<u64> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        self.fs.local_id(ino)
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        // POSIX locks go to the serving node, so they hold across nodes.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS);
        // flock arrives as a whole-file lock whose owner is the open file
        // description; the serving node holds it the same way (an OFD lock).
        let _ = config.add_capabilities(InitFlags::FUSE_FLOCK_LOCKS);
        // Files another node may change at any time are opened direct
        // (no page cache, see cached.rs); shared mappings of them must still
        // work, as they do over NFS.
        let _ = config.add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        // Passthrough needs kernel support (6.9+) and CAP_SYS_ADMIN; without
        // it, local files go through the daemon like remote ones.
        if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        } else {
            tracing::warn!(
                "kernel FUSE passthrough unavailable; local files are served by the daemon"
            );
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.fs.lookup_runs_here(parent.0, &name), async move {
            entry(fs.lookup(c, parent.0, &name).await, reply)
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _g = self.rt.enter();
        self.fs.forget(vec![(ino.0, nlookup)]);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            match fs.getattr(c, ino.0).await {
                Ok(e) => reply.attr(&e.attr_ttl, &file_attr(&e.attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // A passthrough handle is not known to the export: its truncate goes
        // to the backing file, and the rest is changed by inode, with the
        // same permission checks.
        let through = fh.filter(|f| self.pt.is_through(f.0)).map(|f| f.0);
        let change = Change {
            mode,
            uid,
            gid,
            size: if through.is_some() { None } else { size },
            atime: time_set(atime),
            mtime: time_set(mtime),
            fh: fh.map(|f| f.0).filter(|_| through.is_none()),
        };
        let (fs, c, pt) = (self.fs.clone(), caller(req), self.pt.clone());
        self.run(self.on(ino), async move {
            if let (Some(fh), Some(size)) = (through, size) {
                if let Some(Err(e)) = pt.truncate(fh, size) {
                    return reply.error(errno(&e));
                }
            }
            match fs.setattr(c, ino.0, change).await {
                Ok(e) => reply.attr(&e.attr_ttl, &file_attr(&e.attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            match fs.readlink(c, ino.0).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.on(parent), async move {
            entry(fs.mknod(c, parent.0, &name, mode, umask, rdev).await, reply)
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.on(parent), async move {
            entry(fs.mkdir(c, parent.0, &name, mode, umask).await, reply)
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.on(parent), async move {
            empty(fs.unlink(c, parent.0, &name).await, reply)
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.on(parent), async move {
            empty(fs.rmdir(c, parent.0, &name).await, reply)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (fs, c) = (self.fs.clone(), caller(req));
        let name = link_name.as_bytes().to_vec();
        let target = target.as_os_str().as_bytes().to_vec();
        self.run(self.on(parent), async move {
            entry(fs.symlink(c, parent.0, &name, &target).await, reply)
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (fs, c) = (self.fs.clone(), caller(req));
        let (name, newname) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        self.run(self.on(parent), async move {
            let r = fs.rename(c, parent.0, &name, newparent.0, &newname, flags.bits());
            empty(r.await, reply)
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (fs, c, name) = (self.fs.clone(), caller(req), newname.as_bytes().to_vec());
        self.run(self.on(ino), async move {
            entry(fs.link(c, ino.0, newparent.0, &name).await, reply)
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (fs, c) = (self.fs.clone(), caller(req));
        if self.passthrough_of(ino.0).is_some() {
            // Opening may block (a fifo): not on a FUSE thread.
            let (pt, rt) = (self.pt.clone(), self.rt.clone());
            self.rt.spawn_blocking(move || {
                match pt.open(&fs, &rt, c, ino.0, flags.0, |f| reply.open_backing(f)) {
                    Ok(o) => opened_local(o, reply),
                    Err(e) => reply.error(errno(&e)),
                }
            });
            return;
        }
        self.run(self.on(ino), async move {
            match fs.open(c, ino.0, flags.0).await {
                Ok(o) => reply.opened(FileHandle(o.fh), open_flags(&o)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        if self.passthrough_of(parent.0).is_some() {
            let (pt, rt) = (self.pt.clone(), self.rt.clone());
            self.rt.spawn_blocking(move || {
                let (e, rfh) = match rt.block_on(fs.create(c, parent.0, &name, mode, umask, flags))
                {
                    Ok(r) => r,
                    Err(e) => return reply.error(errno(&e)),
                };
                let attr = file_attr(&e.attr);
                let (ttl, g) = (e.attr_ttl, Generation(0));
                match pt.created(&fs, &rt, &e, rfh, flags, |f| reply.open_backing(f)) {
                    Ok(LocalOpen::Through { fh, backing }) => reply.created_passthrough(
                        &ttl,
                        &attr,
                        g,
                        FileHandle(fh),
                        FopenFlags::empty(),
                        &backing.id,
                    ),
                    Ok(LocalOpen::Beside { fh, backing }) => reply.created_passthrough(
                        &ttl,
                        &attr,
                        g,
                        FileHandle(fh),
                        FopenFlags::FOPEN_DIRECT_IO,
                        &backing.id,
                    ),
                    Ok(LocalOpen::Daemon { fh }) => {
                        reply.created(&ttl, &attr, g, FileHandle(fh), FopenFlags::empty())
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            });
            return;
        }
        self.run(self.on(parent), async move {
            match fs.create(c, parent.0, &name, mode, umask, flags).await {
                Ok((e, fh)) => reply.created(
                    &e.attr_ttl,
                    &file_attr(&e.attr),
                    Generation(0),
                    FileHandle(fh),
                    create_flags(&fs, e.attr.ino, fh),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(
            self.on(ino) || crate::ino::is_generated(ino.0),
            async move {
                match fs.read(c, ino.0, fh.0, offset, size).await {
                    Ok(d) => reply.data(&d),
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (fs, c, data) = (self.fs.clone(), caller(req), data.to_vec());
        self.run(
            self.on(ino) && !crate::ino::is_generated(ino.0),
            async move {
                match fs.write(c, ino.0, fh.0, offset, data).await {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(errno(&e)),
                }
            },
        );
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            empty(fs.flush(c, ino.0, fh.0, lock_owner.0).await, reply)
        });
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.pt.release(ino.0, fh.0);
        let (fs, c) = (self.fs.clone(), caller(req));
        let _g = self.rt.enter();
        fs.release_locks_of(c, ino.0, fh.0);
        self.run(self.on(ino), async move {
            fs.release(ino.0, fh.0).await;
            reply.ok();
        });
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.pt.is_through(fh.0) {
            let pt = self.pt.clone();
            self.rt
                .spawn_blocking(move || empty(pt.fsync(fh.0, datasync).unwrap_or(Ok(())), reply));
            return;
        }
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            empty(fs.fsync(c, ino.0, fh.0, datasync).await, reply)
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            match fs.opendir(c, ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            match fs.readdir(c, ino.0, fh.0, offset, 64 << 10).await {
                Ok(entries) => {
                    for e in entries {
                        if reply.add(
                            INodeNo(e.ino),
                            e.next_offset,
                            file_type(e.kind),
                            OsStr::from_bytes(&e.name),
                        ) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let fs = self.fs.clone();
        self.run(self.on(ino), async move {
            fs.releasedir(ino.0, fh.0).await;
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory operations are synchronous on the serving node already.
        reply.ok();
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            match fs.statfs(c, ino.0).await {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (fs, c) = (self.fs.clone(), caller(req));
        let (name, value) = (name.as_bytes().to_vec(), value.to_vec());
        self.run(self.on(ino), async move {
            empty(fs.setxattr(c, ino.0, &name, &value, flags).await, reply)
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.on(ino), async move {
            xattr(fs.getxattr(c, ino.0, &name, size).await, reply)
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            xattr(fs.listxattr(c, ino.0, size).await, reply)
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.on(ino), async move {
            empty(fs.removexattr(c, ino.0, &name).await, reply)
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            empty(fs.access(c, ino.0, mask.bits()).await, reply)
        });
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let (fs, c) = (self.fs.clone(), caller(req));
        let lock = Lock {
            owner: lock_owner.0,
            start,
            end,
            typ,
            pid,
        };
        self.run(self.on(ino), async move {
            match fs.getlk(c, ino.0, lock).await {
                Ok(l) => reply.locked(l.start, l.end, l.typ, l.pid),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let (fs, c) = (self.fs.clone(), caller(req));
        let lock = Lock {
            owner: lock_owner.0,
            start,
            end,
            typ,
            pid,
        };
        // A wait may last: never on a FUSE thread.
        self.rt
            .spawn(async move { empty(fs.setlk(c, ino.0, fh.0, lock, sleep).await, reply) });
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if self.pt.is_through(fh.0) {
            let pt = self.pt.clone();
            self.rt.spawn_blocking(move || {
                empty(
                    pt.fallocate(fh.0, offset, length, mode).unwrap_or(Ok(())),
                    reply,
                )
            });
            return;
        }
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.on(ino), async move {
            empty(
                fs.fallocate(c, ino.0, fh.0, offset, length, mode).await,
                reply,
            )
        });
    }
}

/// Delivers the core's invalidations to the kernel, from the one thread
/// that may block on them (see [`crate::invalidate`]).
struct KernelSink(fuser::Notifier);

impl Sink for KernelSink {
    fn deliver(&mut self, what: &Inval) -> std::io::Result<()> {
        match what {
            Inval::Entry { parent, name } => self
                .0
                .inval_entry(INodeNo(*parent), OsStr::from_bytes(name)),
            Inval::Inode { ino, offset, len } => self.0.inval_inode(INodeNo(*ino), *offset, *len),
        }
    }
}

/// Mounts the namespace at `mountpoint`. The mount lives until the returned
/// session is dropped or the process dies (then the kernel answers ENOTCONN).
pub fn mount(
    fs: Arc<MosixFs>,
    rt: tokio::runtime::Handle,
    mountpoint: &Path,
) -> std::io::Result<fuser::BackgroundSession> {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("mosix".into()),
        // Passed to the kernel itself (fuser would keep Subtype for
        // fusermount), so the mount shows as fuse.mosix.
        MountOption::CUSTOM("subtype=mosix".into()),
        MountOption::CUSTOM(format!("max_read={MAX_IO}")),
        // A device node served by another node would open this node's
        // device with that node's numbers.
        MountOption::NoDev,
    ];
    // Every user of the node sees /mosix; the serving node checks each
    // request against the caller's own identity.
    cfg.acl = fuser::SessionACL::All;
    // Local requests run on these threads (see FuseAdapter::run).
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    let session = fuser::spawn_mount(FuseAdapter::new(fs.clone(), rt), mountpoint, &cfg)?;
    fs.set_invalidator(Arc::new(crate::invalidate::spawn(KernelSink(
        session.notifier(),
    ))));
    Ok(session)
}
