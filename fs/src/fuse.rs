//! The FUSE adapter: translates kernel requests into [`MosixFs`] calls and
//! their results into replies. It holds no filesystem logic. Every handler
//! spawns its work on the tokio runtime and replies from there, so a slow
//! node never blocks the FUSE threads and many requests are in flight at once.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use mosix_proto::fs::{FileKind, FsReply, FsRequest, LockRange, SetAttr, SetTime, Timespec};

use crate::error::FsError;
use crate::namespace::{Caller, MosixFs, NodeAttr};

/// Attributes and entries are not cached by the kernel: without coherent
/// invalidation (a later issue), any caching could serve stale metadata.
const TTL: Duration = Duration::ZERO;
/// File handles with this bit are local kernel-passthrough opens.
const PASSTHROUGH_FH: u64 = 1 << 63;
/// How often a blocked F_SETLKW asks again: starting fast for short
/// critical sections, backing off for long ones.
const LOCK_RETRY_MIN: Duration = Duration::from_millis(5);
const LOCK_RETRY_MAX: Duration = Duration::from_millis(200);
/// Largest read and write the kernel sends in one request.
pub const MAX_IO: u32 = 1 << 20;

pub struct FuseAdapter {
    fs: Arc<MosixFs>,
    rt: tokio::runtime::Handle,
    passthrough: AtomicBool,
    pt: Arc<Passthrough>,
    next_fh: AtomicU64,
    /// (inode, lock owner) pairs that took a POSIX lock and have not closed
    /// the file since: only those need an unlock at close.
    locked: Arc<Mutex<std::collections::HashSet<(u64, u64)>>>,
    /// Lock owners seen on each open file: OFD locks (and flock) belong to
    /// the open file, so its release drops them.
    fh_owners: Arc<Mutex<HashMap<u64, std::collections::HashSet<u64>>>>,
}

/// A backing file registered with the kernel for passthrough.
struct Backing {
    ino: u64,
    id: BackingId,
    file: std::fs::File,
    /// Opened read-write. A backing file is opened with the access its
    /// first open asked for: a read-write one would make exec of the same
    /// file by its real path fail with ETXTBSY while only readers have it
    /// open through /mosix.
    writable: bool,
}

/// The kernel allows one backing file per inode, shared by all its
/// passthrough opens: `by_ino` finds it while any open holds it.
#[derive(Default)]
struct Passthrough {
    by_ino: Mutex<HashMap<u64, Weak<Backing>>>,
    by_fh: Mutex<HashMap<u64, Arc<Backing>>>,
    /// Daemon-served handles (a writer beside a read-only backing file)
    /// that name the inode's backing file, keeping it registered. Keyed by
    /// (inode, handle): handles of different nodes' exports may coincide.
    beside: Mutex<HashMap<(u64, u64), Arc<Backing>>>,
}

/// How a local open is served.
enum Serve {
    /// The kernel reads and writes the backing file.
    Through(Arc<Backing>),
    /// Every open of an inode with a backing file must name it, but this one
    /// writes and the readers' backing file does not: its reads and writes
    /// go through the daemon (direct I/O), only its mmap uses the backing.
    Beside(Arc<Backing>),
    /// No passthrough (refused by the kernel): the daemon serves it.
    Daemon,
}

impl Passthrough {
    /// The inode's backing file, opened with the first open's access.
    fn serve(
        &self,
        ino: u64,
        writes: bool,
        open: impl FnOnce(bool) -> Result<std::fs::File, i32>,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Serve {
        let mut m = self.by_ino.lock().expect("backing table");
        if let Some(b) = m.get(&ino).and_then(Weak::upgrade) {
            return if writes && !b.writable {
                Serve::Beside(b)
            } else {
                Serve::Through(b)
            };
        }
        let registered = open(writes).and_then(|file| {
            let id = register(&file).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            Ok((file, id))
        });
        match registered {
            Ok((file, id)) => {
                let b = Arc::new(Backing {
                    ino,
                    id,
                    file,
                    writable: writes,
                });
                m.insert(ino, Arc::downgrade(&b));
                Serve::Through(b)
            }
            Err(e) => {
                tracing::debug!(errno = e, "passthrough refused; serving through the daemon");
                Serve::Daemon
            }
        }
    }

    /// Keeps `b` registered while open file `fh` of `ino` names it.
    fn keep(&self, ino: u64, fh: u64, b: &Arc<Backing>) {
        if fh & PASSTHROUGH_FH != 0 {
            self.by_fh
                .lock()
                .expect("backing table")
                .insert(fh, b.clone());
        } else {
            self.beside
                .lock()
                .expect("backing table")
                .insert((ino, fh), b.clone());
        }
    }

    fn get(&self, fh: u64) -> Option<Arc<Backing>> {
        self.by_fh.lock().expect("backing table").get(&fh).cloned()
    }

    fn release(&self, ino: u64, fh: u64) {
        let held = if fh & PASSTHROUGH_FH != 0 {
            self.by_fh.lock().expect("backing table").remove(&fh)
        } else {
            self.beside
                .lock()
                .expect("backing table")
                .remove(&(ino, fh))
        };
        let Some(b) = held else {
            return;
        };
        let mut m = self.by_ino.lock().expect("backing table");
        if Arc::strong_count(&b) == 1 {
            m.remove(&b.ino);
        }
    }
}

fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
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

fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
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

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => {
            let (secs, nsecs) = match st.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                Err(e) => {
                    let d = e.duration();
                    if d.subsec_nanos() == 0 {
                        (-(d.as_secs() as i64), 0)
                    } else {
                        (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                    }
                }
            };
            SetTime::At(Timespec { secs, nsecs })
        }
    })
}

impl FuseAdapter {
    pub fn new(fs: Arc<MosixFs>, rt: tokio::runtime::Handle) -> Self {
        FuseAdapter {
            fs,
            rt,
            passthrough: AtomicBool::new(false),
            pt: Arc::default(),
            next_fh: AtomicU64::new(1),
            locked: Arc::default(),
            fh_owners: Arc::default(),
        }
    }

    fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.rt.spawn(fut);
    }

    /// Runs a request's work. Work on this node's own files is a few
    /// syscalls: it runs right here on the FUSE thread, which saves the
    /// hand-offs to and from the runtime that would cost more than the
    /// work. Work on other nodes' files waits on the network: it runs as a
    /// task, so many requests are in flight at once.
    fn run<F>(&self, local: bool, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if local {
            crate::namespace::inline(|| self.rt.block_on(fut));
        } else {
            self.rt.spawn(fut);
        }
    }

    fn is_local(&self, ino: u64) -> bool {
        // /mosix/proc asks every node, except for this node's processes.
        if crate::procdir::is_proc(ino) {
            return self.fs.proc_is_local(ino, None);
        }
        if ino == crate::namespace::INO_PROC || crate::procdir::is_generated(ino) {
            return false;
        }
        match self.fs.locate(ino) {
            Ok(l) => self.fs.is_local(&l),
            // The virtual part of /mosix is answered without the network.
            Err(_) => ino >> 48 == 0,
        }
    }

    fn note_lock(&self, ino: u64, fh: u64, owner: u64) {
        self.locked
            .lock()
            .expect("lock owners")
            .insert((ino, owner));
        self.fh_owners
            .lock()
            .expect("lock owners")
            .entry(fh)
            .or_default()
            .insert(owner);
    }

    fn lookup_is_local(&self, parent: u64, name: &[u8]) -> bool {
        if parent == crate::namespace::INO_ROOT {
            return true;
        }
        if parent == crate::namespace::INO_NODES {
            name == self.fs.self_name().as_bytes()
        } else if crate::procdir::is_proc(parent) || parent == crate::namespace::INO_PROC {
            // Names of processes come from the listing: while it is fresh,
            // no node is asked.
            self.fs.proc_is_local(parent, Some(name)) || self.fs.proc_listing_fresh()
        } else {
            self.is_local(parent)
        }
    }

    fn reply_entry(r: Result<NodeAttr, FsError>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn reply_empty(r: Result<(), FsError>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// A lock of this node's process with kernel lock owner `owner`.
fn lock_range(_fs: &MosixFs, owner: u64, start: u64, end: u64, typ: i32, pid: u32) -> LockRange {
    LockRange {
        owner,
        start,
        end,
        typ,
        pid,
    }
}

/// Drops every lock `owner` holds on `ino` (at close, for fcntl locks; at the
/// last close of the open file description, for flock).
async fn release_locks(fs: &MosixFs, c: Caller, ino: u64, owner: u64) {
    let lock = lock_range(fs, owner, 0, i64::MAX as u64, libc::F_UNLCK, c.pid);
    // A lost unlock would block every other node's waiter forever: keep
    // trying while the failure is in transit; a node that is down, or has
    // restarted, holds no locks of ours any more.
    for attempt in 0u32.. {
        let l = lock.clone();
        match fs
            .on_inode(c, ino, |i| FsRequest::SetLk { ino: i, lock: l })
            .await
        {
            Err(FsError::Transport(e)) => {
                if attempt % 30 == 0 {
                    tracing::warn!(error = %e, "unlock at close not delivered yet; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            _ => return,
        }
    }
}

/// True if process `pid` (of this node) has a signal to handle: a waiting
/// F_SETLKW then returns EINTR, as a local one would. Without a pid the
/// waiter cannot be checked, and waits.
fn signal_pending(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        // Gone.
        return true;
    };
    let mask = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & (!mask("SigBlk:") | SIGKILL_BIT) != 0
}

fn unexpected(r: FsReply) -> Errno {
    tracing::warn!(reply = ?r, "unexpected reply");
    Errno::EIO
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
        self.run(self.lookup_is_local(parent.0, &name), async move {
            match fs.lookup(c, parent.0, &name).await {
                Ok(a) => {
                    let (attr_ttl, entry_ttl) = crate::namespace::ttls(parent.0, a.ino);
                    reply.entry_with_ttls(&attr_ttl, &entry_ttl, &file_attr(&a), Generation(0))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let fs = self.fs.clone();
        let _g = self.rt.enter();
        fs.forget(vec![(ino.0, nlookup)]);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (fs, c) = (self.fs.clone(), caller(req));
        let local = self.is_local(ino.0)
            || (crate::procdir::is_proc(ino.0) && self.fs.proc_listing_fresh());
        self.run(local, async move {
            match fs.getattr(c, ino.0).await {
                Ok(a) => reply.attr(&crate::namespace::ttls(0, a.ino).0, &file_attr(&a)),
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
        let pt_file = fh.and_then(|f| self.pt.get(f.0));
        let set = SetAttr {
            mode,
            uid,
            gid,
            // ftruncate on a passthrough open: the kernel checked that the
            // open allows writing; the backing file does it.
            size: if pt_file.is_some() { None } else { size },
            atime: set_time(atime),
            mtime: set_time(mtime),
            // A passthrough handle is not known to the export; the change
            // is then made by inode, with the same permission checks.
            fh: fh.map(|f| f.0).filter(|f| f & PASSTHROUGH_FH == 0),
        };
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.is_local(ino.0), async move {
            if let (Some(b), Some(size)) = (pt_file, size) {
                let r = tokio::task::spawn_blocking(move || b.file.set_len(size)).await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return reply.error(Errno::from(e)),
                    Err(_) => return reply.error(Errno::EIO),
                }
            }
            match fs.setattr(c, ino.0, set).await {
                Ok(a) => reply.attr(&TTL, &file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.is_local(ino.0), async move {
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
        self.run(self.is_local(parent.0), async move {
            let r = fs
                .make(c, parent.0, |p| FsRequest::Mknod {
                    parent: p,
                    name,
                    mode,
                    rdev: rdev as u64,
                    umask,
                })
                .await;
            Self::reply_entry(r, reply)
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
        self.run(self.is_local(parent.0), async move {
            let r = fs
                .make(c, parent.0, |p| FsRequest::Mkdir {
                    parent: p,
                    name,
                    mode,
                    umask,
                })
                .await;
            Self::reply_entry(r, reply)
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.is_local(parent.0), async move {
            let r = fs
                .change(c, parent.0, |p| FsRequest::Unlink { parent: p, name })
                .await;
            Self::reply_empty(r, reply)
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.is_local(parent.0), async move {
            let r = fs
                .change(c, parent.0, |p| FsRequest::Rmdir { parent: p, name })
                .await;
            Self::reply_empty(r, reply)
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
        self.run(self.is_local(parent.0), async move {
            let r = fs
                .make(c, parent.0, |p| FsRequest::Symlink {
                    parent: p,
                    name,
                    target,
                })
                .await;
            Self::reply_entry(r, reply)
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
        self.run(self.is_local(parent.0), async move {
            let r = fs
                .rename(c, parent.0, &name, newparent.0, &newname, flags.bits())
                .await;
            Self::reply_empty(r, reply)
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
        self.run(self.is_local(ino.0), async move {
            Self::reply_entry(fs.link(c, ino.0, newparent.0, &name).await, reply)
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (fs, c) = (self.fs.clone(), caller(req));
        if crate::procdir::is_generated(ino.0) {
            // Generated content: its size is unknown until read, so the
            // kernel must not cache or trust st_size (lxcfs does the same).
            // Nothing to flush and no locks: close costs no round trip.
            self.run(self.is_local(ino.0), async move {
                match fs.proc_open(c, ino.0, flags.0).await {
                    Ok(fh) => reply.opened(
                        FileHandle(fh),
                        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
                    ),
                    Err(e) => reply.error(errno(&e)),
                }
            });
            return;
        }
        let local = self.passthrough.load(Ordering::Relaxed)
            && fs.locate(ino.0).is_ok_and(|l| fs.is_local(&l));
        if !local {
            self.run(self.is_local(ino.0), async move {
                match fs.open(c, ino.0, flags.0).await {
                    Ok(rfh) => reply.opened(FileHandle(rfh), FopenFlags::empty()),
                    Err(e) => reply.error(errno(&e)),
                }
            });
            return;
        }
        // Local data I/O bypasses the daemon: the kernel reads and writes the
        // real file. The caller's open is made first, as the caller, so the
        // permission check, O_TRUNC and every errno are the real ones.
        let (pt, rt) = (self.pt.clone(), self.rt.clone());
        let fh = PASSTHROUGH_FH | self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.rt.spawn_blocking(move || {
            let Ok(loc) = fs.locate(ino.0) else {
                return reply.error(Errno::ESTALE);
            };
            let export = fs.local_export().clone();
            if let Err(e) = export.open_file(&fs.local_who(fs.creds(c)), loc.id, flags.0) {
                return reply.error(Errno::from_i32(e));
            }
            let serve = pt.serve(
                ino.0,
                writes(flags.0),
                |w| export.open_backing(loc.id, w),
                |f| reply.open_backing(f),
            );
            if let Serve::Through(b) = &serve {
                pt.keep(ino.0, fh, b);
                return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b.id);
            }
            let rfh = match rt.block_on(fs.open(c, ino.0, flags.0)) {
                Ok(rfh) => rfh,
                Err(e) => return reply.error(errno(&e)),
            };
            match serve {
                Serve::Beside(b) => {
                    pt.keep(ino.0, rfh, &b);
                    reply.opened_passthrough(FileHandle(rfh), FopenFlags::FOPEN_DIRECT_IO, &b.id);
                }
                _ => reply.opened(FileHandle(rfh), FopenFlags::empty()),
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
        let local = self.passthrough.load(Ordering::Relaxed)
            && fs.locate(parent.0).is_ok_and(|l| fs.is_local(&l));
        let pt = self.pt.clone();
        let fh = PASSTHROUGH_FH | self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.run(self.is_local(parent.0), async move {
            let (a, rfh) = match fs.create(c, parent.0, &name, mode, umask, flags).await {
                Ok(r) => r,
                Err(e) => return reply.error(errno(&e)),
            };
            if !local {
                let attr = file_attr(&a);
                return reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(rfh),
                    FopenFlags::empty(),
                );
            }
            // A local file: all opens of one inode must agree on passthrough,
            // so the new file switches to its backing file at once.
            let fs2 = fs.clone();
            tokio::task::spawn_blocking(move || {
                let attr = file_attr(&a);
                let Ok(loc) = fs2.locate(a.ino) else {
                    return reply.error(Errno::ESTALE);
                };
                let export = fs2.local_export().clone();
                let serve = pt.serve(
                    a.ino,
                    writes(flags),
                    |w| export.open_backing(loc.id, w),
                    |f| reply.open_backing(f),
                );
                let (handle, fopen, backing) = match serve {
                    Serve::Through(b) => {
                        // The daemon's own open is not needed after all.
                        let _ = export.release(&fs2.local_who(Default::default()), rfh);
                        (fh, FopenFlags::empty(), b)
                    }
                    Serve::Beside(b) => (rfh, FopenFlags::FOPEN_DIRECT_IO, b),
                    Serve::Daemon => {
                        let h = FileHandle(rfh);
                        return reply.created(&TTL, &attr, Generation(0), h, FopenFlags::empty());
                    }
                };
                pt.keep(a.ino, handle, &backing);
                reply.created_passthrough(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(handle),
                    fopen,
                    &backing.id,
                );
            });
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
        if crate::procdir::is_generated(ino.0) {
            return match self.fs.proc_read(fh.0, offset, size) {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            };
        }
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.is_local(ino.0), async move {
            match fs
                .on_handle(
                    c,
                    ino.0,
                    FsRequest::Read {
                        fh: fh.0,
                        offset,
                        size,
                    },
                )
                .await
            {
                Ok(FsReply::Data(d)) => reply.data(&d),
                Ok(other) => reply.error(unexpected(other)),
                Err(e) => reply.error(errno(&e)),
            }
        });
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
        if crate::procdir::is_generated(ino.0) {
            self.spawn(async move {
                match fs.proc_write(c, ino.0, &data).await {
                    Ok(n) => reply.written(n),
                    Err(e) => reply.error(errno(&e)),
                }
            });
            return;
        }
        self.run(self.is_local(ino.0), async move {
            match fs
                .on_handle(
                    c,
                    ino.0,
                    FsRequest::Write {
                        fh: fh.0,
                        offset,
                        data,
                    },
                )
                .await
            {
                Ok(FsReply::Written(n)) => reply.written(n),
                Ok(other) => reply.error(unexpected(other)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if crate::procdir::is_generated(ino.0) {
            return reply.ok();
        }
        // close() drops the closing process's POSIX locks on this file. The
        // kernel keeps no record of locks held on the serving node, so it
        // leaves that to us, here.
        let had_locks = self
            .locked
            .lock()
            .expect("lock owners")
            .remove(&(ino.0, lock_owner.0));
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.is_local(ino.0), async move {
            if had_locks {
                release_locks(&fs, c, ino.0, lock_owner.0).await;
            }
            if fh.0 & PASSTHROUGH_FH != 0 {
                return reply.ok();
            }
            let r = fs.on_handle(c, ino.0, FsRequest::Flush { fh: fh.0 }).await;
            Self::reply_empty(r.map(|_| ()), reply)
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
        // The last close of an open file drops the locks it owns (flock and
        // OFD locks); fcntl locks of processes went at their close (flush).
        let owners = self
            .fh_owners
            .lock()
            .expect("lock owners")
            .remove(&fh.0)
            .unwrap_or_default();
        let held: Vec<u64> = {
            let mut locked = self.locked.lock().expect("lock owners");
            owners
                .into_iter()
                .filter(|o| locked.remove(&(ino.0, *o)))
                .collect()
        };
        if !held.is_empty() {
            let (fs, c) = (self.fs.clone(), caller(req));
            self.spawn(async move {
                for owner in held {
                    release_locks(&fs, c, ino.0, owner).await;
                }
            });
        }
        self.pt.release(ino.0, fh.0);
        if fh.0 & PASSTHROUGH_FH != 0 {
            return reply.ok();
        }
        if crate::procdir::is_generated(ino.0) {
            self.fs.proc_release(fh.0);
            return reply.ok();
        }
        let fs = self.fs.clone();
        self.run(self.is_local(ino.0), async move {
            fs.release_handle(ino.0, FsRequest::Release { fh: fh.0 })
                .await;
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
        if let Some(b) = self.pt.get(fh.0) {
            self.rt.spawn_blocking(move || {
                let r = if datasync {
                    b.file.sync_data()
                } else {
                    b.file.sync_all()
                };
                match r {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(Errno::from(e)),
                }
            });
            return;
        }
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.is_local(ino.0), async move {
            let r = fs
                .on_handle(c, ino.0, FsRequest::Fsync { fh: fh.0, datasync })
                .await;
            Self::reply_empty(r.map(|_| ()), reply)
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.is_local(ino.0), async move {
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
        self.run(self.is_local(ino.0), async move {
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
        self.run(self.is_local(ino.0), async move {
            fs.release_handle(ino.0, FsRequest::ReleaseDir { fh: fh.0 })
                .await;
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
        self.run(self.is_local(ino.0), async move {
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
        self.run(self.is_local(ino.0), async move {
            let r = fs
                .on_inode(c, ino.0, |i| FsRequest::SetXattr {
                    ino: i,
                    name,
                    value,
                    flags,
                })
                .await;
            Self::reply_empty(r.map(|_| ()), reply)
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.is_local(ino.0), async move {
            match fs
                .on_inode(c, ino.0, |i| FsRequest::GetXattr { ino: i, name, size })
                .await
            {
                Ok(FsReply::XattrSize(n)) => reply.size(n),
                Ok(FsReply::Data(d)) => reply.data(&d),
                Ok(other) => reply.error(unexpected(other)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.is_local(ino.0), async move {
            match fs
                .on_inode(c, ino.0, |i| FsRequest::ListXattr { ino: i, size })
                .await
            {
                Ok(FsReply::XattrSize(n)) => reply.size(n),
                Ok(FsReply::Data(d)) => reply.data(&d),
                Ok(other) => reply.error(unexpected(other)),
                // The virtual directories have no attributes at all.
                Err(FsError::Os(libc::ENODATA)) if size == 0 => reply.size(0),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (fs, c, name) = (self.fs.clone(), caller(req), name.as_bytes().to_vec());
        self.run(self.is_local(ino.0), async move {
            let r = fs
                .on_inode(c, ino.0, |i| FsRequest::RemoveXattr { ino: i, name })
                .await;
            Self::reply_empty(r.map(|_| ()), reply)
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.is_local(ino.0), async move {
            Self::reply_empty(fs.access(c, ino.0, mask.bits()).await, reply)
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
        let lock = lock_range(&fs, lock_owner.0, start, end, typ, pid);
        self.run(self.is_local(ino.0), async move {
            match fs
                .on_inode(c, ino.0, |i| FsRequest::GetLk { ino: i, lock })
                .await
            {
                Ok(FsReply::Lock {
                    start,
                    end,
                    typ,
                    pid,
                }) => reply.locked(start, end, typ, pid),
                Ok(other) => reply.error(unexpected(other)),
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
        let lock = lock_range(&fs, lock_owner.0, start, end, typ, pid);
        if typ != libc::F_UNLCK {
            // Recorded before asking, so that even a lock whose answer is
            // lost in transit is released at close.
            self.note_lock(ino.0, fh.0, lock_owner.0);
        }
        self.spawn(async move {
            // F_SETLKW: retry until granted, so no serving thread blocks on a
            // lock; give up when the waiter has a signal to handle.
            let mut backoff = LOCK_RETRY_MIN;
            loop {
                let op = |i| FsRequest::SetLk {
                    ino: i,
                    lock: lock.clone(),
                };
                match fs.on_inode(c, ino.0, op).await {
                    Err(FsError::Os(libc::EAGAIN)) if sleep => {
                        if signal_pending(c.pid) {
                            return reply.error(Errno::EINTR);
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(LOCK_RETRY_MAX);
                    }
                    r => return Self::reply_empty(r.map(|_| ()), reply),
                }
            }
        });
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
        if let Some(b) = self.pt.get(fh.0) {
            self.rt.spawn_blocking(move || {
                use std::os::fd::AsRawFd;
                let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(length)) else {
                    return reply.error(Errno::EINVAL);
                };
                // SAFETY: plain syscall on a file we own.
                let r = unsafe { libc::fallocate(b.file.as_raw_fd(), mode, off, len) };
                if r == 0 {
                    reply.ok()
                } else {
                    reply.error(Errno::from(std::io::Error::last_os_error()))
                }
            });
            return;
        }
        let (fs, c) = (self.fs.clone(), caller(req));
        self.run(self.is_local(ino.0), async move {
            let op = FsRequest::Fallocate {
                fh: fh.0,
                offset,
                length,
                mode,
            };
            Self::reply_empty(fs.on_handle(c, ino.0, op).await.map(|_| ()), reply)
        });
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
    ];
    // Every user of the node sees /mosix; the serving node checks each
    // request against the caller's own identity.
    cfg.acl = fuser::SessionACL::All;
    // Local requests run on these threads (see FuseAdapter::run).
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    fuser::spawn_mount(FuseAdapter::new(fs, rt), mountpoint, &cfg)
}
