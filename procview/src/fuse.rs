//! The FUSE adapter of `/mosix/proc`: each handler turns the kernel's
//! request into one call of [`ProcFs`] and its result into the reply.
//! Answers from memory or this node's /proc run on the FUSE thread (cheaper
//! than any hand-off); anything that waits on another node runs as a task.
//!
//! The kernel flags, chosen for what `ps` and `top` do (one listing, then a
//! few files of every process) and measured in docs/BENCHMARKS.md:
//! - `FUSE_DO_READDIRPLUS` (not `_AUTO`): a listing hands the kernel every
//!   process directory with its attributes, kept [`crate::fs::PROC_LIST`],
//!   so walking into a process costs no lookup;
//! - zero-message open: `open` answers `ENOSYS`, so the kernel sends no more
//!   `open` or `release` for this mount, and `flush` answers `ENOSYS` too.
//!   Reads go through the page cache, which is safe because every inode
//!   stands for one immutable content (see [`crate::versions`]);
//! - files of a process directory are looked up at every open (entry TTL 0)
//!   and each lookup hands out the inode of the content of now: the same
//!   inode when it did not change (the kernel reads nothing), a new one
//!   when it did. So `FUSE_AUTO_INVAL_DATA` and an mtime that follows the
//!   content are not needed: a reader can never pair one content's size
//!   with another's bytes, even with readers racing on one file;
//! - names that never exist in a process directory (`ctty`, `task`...) are
//!   answered with negative entries kept [`crate::fs::FIXED`];
//! - `FUSE_PARALLEL_DIROPS`: lookups in one directory do not wait on each
//!   other (a remote lookup may wait on the network).
//!
//! The adapter counts the requests it gets by kind; `getxattr
//! user.mosix.requests` on the mount's root returns the counts (the
//! benchmark's requests per process).
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::error::ProcError;
use crate::fs::{Attr, Caller, DirEntry, Entry, Kind, ProcFs};

/// The extended attribute of the root that reports the request counts.
pub const REQUESTS_XATTR: &str = "user.mosix.requests";

/// Kinds of requests counted.
const KINDS: [&str; 13] = [
    "lookup", "forget", "getattr", "setattr", "readlink", "open", "read", "write", "flush",
    "release", "opendir", "readdir", "other",
];

#[derive(Default)]
pub struct Counters([AtomicU64; KINDS.len()]);

impl Counters {
    fn count(&self, kind: &str) {
        let i = KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(KINDS.len() - 1);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// `total N` then one `kind N` line per kind.
    pub fn render(&self) -> String {
        let v: Vec<u64> = self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let mut out = format!("total {}\n", v.iter().sum::<u64>());
        for (k, n) in KINDS.iter().zip(&v) {
            out.push_str(&format!("{k} {n}\n"));
        }
        out
    }
}

pub struct ProcFuse {
    fs: Arc<ProcFs>,
    rt: tokio::runtime::Handle,
    counters: Arc<Counters>,
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn errno(e: &ProcError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

/// A negative entry: node id 0 with a lifetime (the kernel keeps the
/// absence of the name that long).
fn negative() -> FileAttr {
    file_attr(&Attr {
        ino: 0,
        kind: Kind::File,
        perm: 0,
        size: 0,
        uid: 0,
        gid: 0,
        mtime: SystemTime::UNIX_EPOCH,
    })
}

fn reply_entry(r: Result<Entry, ProcError>, reply: ReplyEntry) {
    match r {
        Ok(Entry {
            attr: Some(a),
            attr_ttl,
            entry_ttl,
        }) => reply.entry_with_ttls(&attr_ttl, &entry_ttl, &file_attr(&a), Generation(0)),
        Ok(Entry {
            attr: None,
            entry_ttl,
            ..
        }) if !entry_ttl.is_zero() => {
            reply.entry_with_ttls(&Duration::ZERO, &entry_ttl, &negative(), Generation(0))
        }
        Ok(Entry { attr: None, .. }) => reply.error(Errno::ENOENT),
        Err(e) => reply.error(errno(&e)),
    }
}

impl ProcFuse {
    pub fn new(fs: Arc<ProcFs>, rt: tokio::runtime::Handle, counters: Arc<Counters>) -> Self {
        ProcFuse { fs, rt, counters }
    }

    /// Runs a request's work: here on the FUSE thread if it needs no other
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
}

impl Filesystem for ProcFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_background(64);
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            if let Err(e) = config.add_capabilities(flag) {
                tracing::warn!(flags = ?e, "kernel lacks a FUSE capability; /mosix/proc will be slower");
            }
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counters.count("lookup");
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.fs.lookup_is_local(parent.0, &name), async move {
            reply_entry(fs.lookup(c, parent.0, &name).await, reply)
        });
    }

    /// Counted per inode: fuser hands a BATCH_FORGET (one request for many
    /// inodes) over one inode at a time.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.counters.count("forget");
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.counters.count("getattr");
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.fs.is_local(ino.0), async move {
            match fs.getattr(c, ino.0).await {
                Ok(Entry {
                    attr: Some(a),
                    attr_ttl,
                    ..
                }) => reply.attr(&attr_ttl, &file_attr(&a)),
                Ok(_) => reply.error(Errno::ENOENT),
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
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.counters.count("setattr");
        if size != Some(0) || mode.is_some() || uid.is_some() || gid.is_some() {
            return reply.error(Errno::EPERM);
        }
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.fs.is_local(ino.0), async move {
            match fs.truncate(c, ino.0).await {
                Ok(Entry {
                    attr: Some(a),
                    attr_ttl,
                    ..
                }) => reply.attr(&attr_ttl, &file_attr(&a)),
                Ok(_) => reply.error(Errno::ENOENT),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.counters.count("readlink");
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.fs.is_local(ino.0), async move {
            match fs.readlink(c, ino.0).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// No open at all: from the first ENOSYS on, the kernel opens and
    /// releases files of this mount without asking.
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counters.count("open");
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.counters.count("read");
        let c = caller(req);
        match self.fs.read(c, ino.0, offset, size) {
            Some(Ok(d)) => reply.data(&d),
            Some(Err(e)) => reply.error(errno(&e)),
            None => {
                let fs = self.fs.clone();
                self.rt.spawn(async move {
                    match fs.read_again(c, ino.0, offset, size).await {
                        Ok(d) => reply.data(&d),
                        Err(e) => reply.error(errno(&e)),
                    }
                });
            }
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.counters.count("write");
        let (fs, c, data) = (self.fs.clone(), caller(req), data.to_vec());
        self.rt.spawn(async move {
            match fs.write(c, ino.0, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// Nothing to flush: from the first ENOSYS on, close costs nothing.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.counters.count("flush");
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.counters.count("release");
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.counters.count("opendir");
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.counters.count("readdir");
        let fs = self.fs.clone();
        self.run(self.fs.readdir_is_local(ino.0, fh.0, offset), async move {
            match fs.readdir(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    for (i, e) in entries.into_iter().enumerate() {
                        let next = offset + i as u64 + 1;
                        if reply.add(
                            INodeNo(e.ino),
                            next,
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

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.counters.count("readdir");
        let fs = self.fs.clone();
        self.run(self.fs.readdir_is_local(ino.0, fh.0, offset), async move {
            match fs.readdir(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    for (i, e) in entries.into_iter().enumerate() {
                        if add_plus(&mut reply, offset + i as u64 + 1, e) {
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
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.counters.count("other");
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.counters.count("other");
        // Never ENOSYS: that would turn extended attributes off for the
        // whole mount, this one included.
        if ino.0 != crate::ino::ROOT || name.as_bytes() != REQUESTS_XATTR.as_bytes() {
            return reply.error(Errno::ENODATA);
        }
        let v = self.counters.render();
        if size == 0 {
            reply.size(v.len() as u32)
        } else if (size as usize) < v.len() {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(v.as_bytes())
        }
    }
}

/// One entry of a READDIRPLUS reply, with its attributes: the kernel keeps
/// the name and its inode as if looked up. Returns true when the buffer is
/// full.
fn add_plus(reply: &mut ReplyDirectoryPlus, next: u64, e: DirEntry) -> bool {
    let name = OsStr::from_bytes(&e.name);
    match e.entry {
        Some(Entry {
            attr: Some(a),
            entry_ttl,
            ..
        }) => reply.add(
            INodeNo(a.ino),
            next,
            name,
            &entry_ttl,
            &file_attr(&a),
            Generation(0),
        ),
        // Every name of a listing has attributes; none is lost if not.
        _ => false,
    }
}

/// Mounts the process view at `mountpoint`. The mount lives until the
/// returned session is dropped or the process dies.
pub fn mount(
    fs: Arc<ProcFs>,
    rt: tokio::runtime::Handle,
    mountpoint: &Path,
    counters: Arc<Counters>,
) -> std::io::Result<fuser::BackgroundSession> {
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("mosix".into()),
        MountOption::CUSTOM("subtype=mosix-proc".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
    ];
    // Every user of the node sees the cluster's processes; access to each
    // file is decided per caller.
    cfg.acl = fuser::SessionACL::All;
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    fuser::spawn_mount(ProcFuse::new(fs, rt, counters), mountpoint, &cfg)
}
