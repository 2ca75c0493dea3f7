//! The serving side of the `/mosix` network filesystem: runs [`FsRequest`]s
//! from remote nodes on one directory tree of this node.
//!
//! Security model (the reasons behind the shape of this module):
//!
//! - **No path is ever resolved on the server.** Every file is reached by
//!   single-component `openat(parent_fd, name, O_PATH | O_NOFOLLOW)` lookups
//!   starting at the export root, and names containing `/`, NUL, or equal to
//!   `.`/`..` are refused (`EINVAL`; the client kernel resolves `.` and `..`
//!   itself). A symlink is served as a symlink and only read by `ReadLink`, so
//!   `..`, absolute or relative symlinks and rename/symlink swap races cannot
//!   lead outside the export. Operations on an already looked-up file go
//!   through its `O_PATH` fd, or through its `/proc/self/fd/N` magic link
//!   where the kernel has no fd-based call: that link jumps to the inode
//!   itself and a symlink found there is not followed further.
//! - **Every operation runs as the caller** (see [`crate::creds`]): the
//!   thread's fsuid, fsgid and groups are switched for the duration of one
//!   request, so EACCES/EPERM decisions are made by the real kernel on the
//!   real filesystem, including ACLs and LSMs. `root_squash` maps uid/gid 0
//!   to 65534 first.
//! - **Things that must not be served look absent**: configured `hide` paths
//!   (e.g. `/proc`, `/sys`, `/dev`, the `/mosix` mountpoint) and any
//!   directory on procfs, sysfs or a FUSE mount (serving `/mosix` through
//!   itself would recurse across the cluster).
//! - **Ids are opaque and never reused**, so a stale id from a client gives
//!   `ESTALE`, never another file; unknown handles give `EBADF`.
//! - Nothing here trusts request contents: every size, offset, name and id
//!   is checked and every failure becomes an errno; no request can panic the
//!   server or make it allocate more than a frame's worth of memory.
//!
//! [`Export::open`] sets the process umask to 0: the kernel would otherwise
//! apply the *daemon's* umask to every file created on behalf of callers. The
//! export applies the caller's umask (sent with Mknod/Mkdir/Create) itself.
//! (Like any server that does so, this differs from local semantics when the
//! parent directory has a default ACL, where the kernel would ignore umask.)
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use mosix_proto::fs::{
    Attr, Creds, DirEntry, FileKind, FsReply, FsRequest, FsResult, LockRange, RemoteFh, RemoteIno,
    SetAttr, SetTime, StatFs, Timespec, ROOT_INO,
};

use crate::creds::become_caller;

// The plain libc calls below take off_t; make sure it is 64-bit.
const _: () = assert!(std::mem::size_of::<libc::off_t>() == 8);

/// Errno-or-value; every failure on the wire is an errno.
type Res<T> = Result<T, i32>;

const NOBODY: u32 = 65534;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
const AT_EACCESS: libc::c_int = 0x200;
/// Largest read or xattr reply: what fits in one frame with room for the
/// envelope. A smaller cap would look like EOF to a FUSE client.
const MAX_IO: usize = mosix_proto::MAX_FRAME - 4096;
/// Linux's XATTR_SIZE_MAX / XATTR_LIST_MAX.
const MAX_XATTR: usize = 65536;
/// Budget for one ReadDir reply: a DirEntry costs up to about twice the
/// estimate used for `size`, so this keeps replies well inside a frame.
const MAX_READDIR: usize = mosix_proto::MAX_FRAME / 4;
/// Estimated per-entry overhead besides the name, for the ReadDir budget.
const DIRENT_OVERHEAD: usize = 24;
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

/// What one export serves.
#[derive(Debug, Clone, Default)]
pub struct ExportConfig {
    /// Absolute directory on this node to export.
    pub root: PathBuf,
    /// Every mutating op, and opening with write access, gives EROFS.
    pub read_only: bool,
    /// Caller uid 0 becomes 65534 and gid 0 (also among the supplementary
    /// groups, as nfsd does) becomes 65534.
    pub root_squash: bool,
    /// Absolute paths on this node never served: they look absent (ENOENT on
    /// lookup, missing in readdir). A path whose parent exists is hidden by
    /// name even if it does not exist yet (e.g. a mountpoint created later).
    pub hide: Vec<PathBuf>,
}

/// A looked-up file: the O_PATH fd pins the inode, so (dev, ino) stays
/// unique for as long as the entry lives.
#[derive(Debug)]
struct Inode {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
    kind: FileKind,
}

#[derive(Debug)]
struct InodeEntry {
    inode: Arc<Inode>,
    nlookup: u64,
}

#[derive(Debug, Default)]
struct Inodes {
    /// Files some client holds a reference to.
    by_id: HashMap<RemoteIno, InodeEntry>,
    /// Every (st_dev, st_ino) ever given an id, kept for the life of the
    /// daemon so a file keeps its id (and so its inode number under /mosix)
    /// across forgets; about 40 bytes per file ever seen.
    by_key: HashMap<(u64, u64), RemoteIno>,
}

#[derive(Debug)]
struct Handle {
    file: File,
    dev: u64,
    ino: u64,
    /// For directories: serialises lseek + getdents64, which share the
    /// file position.
    dir: Option<Mutex<()>>,
}

/// One exported tree. Send + Sync: every method may be called from many
/// threads at once (each call switches only its own thread's credentials).
#[derive(Debug)]
pub struct Export {
    /// Identifies this run of the export: ids mean nothing to another run.
    epoch: u64,
    read_only: bool,
    root_squash: bool,
    /// `/proc/self/fd`, for reaching an O_PATH fd's inode by its magic link.
    proc_fd: OwnedFd,
    inodes: Mutex<Inodes>,
    next_ino: AtomicU64,
    handles: RwLock<HashMap<RemoteFh, Arc<Handle>>>,
    next_fh: AtomicU64,
    /// (parent st_dev, parent st_ino) -> names hidden in that directory.
    hidden_names: HashMap<(u64, u64), Vec<Vec<u8>>>,
    /// (st_dev, st_ino) of hide paths that existed at open time, so a bind
    /// mount of one elsewhere is refused too.
    hidden_files: Vec<(u64, u64)>,
    /// POSIX locks of remote lock owners: one open file description per
    /// (client node, lock owner, file), locked with OFD locks, so owners
    /// conflict with each other and with local processes' own locks.
    locks: Mutex<HashMap<(String, u64, RemoteIno), File>>,
}

/// The kernel's "to the end of the file" for a lock's last byte.
const OFFSET_MAX: u64 = i64::MAX as u64;

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn cvt(r: libc::c_int) -> Res<libc::c_int> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

fn cvt_long(r: libc::c_long) -> Res<libc::c_long> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> Res<usize> {
    if r < 0 {
        Err(last_errno())
    } else {
        Ok(r as usize)
    }
}

/// Retries a syscall interrupted by a signal.
fn retry<T>(mut f: impl FnMut() -> Res<T>) -> Res<T> {
    loop {
        match f() {
            Err(libc::EINTR) => continue,
            r => return r,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole export down with it; the
    // tables stay consistent at every unlock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One path component from the wire.
fn component(name: &[u8]) -> Res<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(libc::EINVAL);
    }
    CString::new(name).map_err(|_| libc::EINVAL)
}

fn cstring(bytes: &[u8]) -> Res<CString> {
    CString::new(bytes).map_err(|_| libc::EINVAL)
}

/// The name of `fd` inside `/proc/self/fd`.
fn fd_name(fd: RawFd) -> Res<CString> {
    cstring(fd.to_string().as_bytes())
}

/// Absolute magic-link path for calls that take no directory fd (xattrs).
fn fd_path(fd: RawFd) -> Res<CString> {
    cstring(format!("/proc/self/fd/{fd}").as_bytes())
}

fn fstat(fd: RawFd) -> Res<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: valid C string and out-pointer.
    cvt(unsafe {
        libc::fstatat(
            fd,
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded and filled it in (and it was zeroed anyway).
    Ok(unsafe { st.assume_init() })
}

fn fstatfs(fd: RawFd) -> Res<libc::statfs> {
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid out-pointer.
    cvt(unsafe { libc::fstatfs(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded.
    Ok(unsafe { st.assume_init() })
}

fn openat(dirfd: RawFd, name: &CStr, flags: i32, mode: libc::mode_t) -> Res<OwnedFd> {
    // SAFETY: valid C string; the returned fd is new and owned by us.
    let fd = retry(|| cvt(unsafe { libc::openat(dirfd, name.as_ptr(), flags, mode) }))?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn kind_of(mode: libc::mode_t) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDev,
        libc::S_IFBLK => FileKind::BlockDev,
        _ => FileKind::File,
    }
}

fn dtype_kind(d_type: u8) -> Option<FileKind> {
    Some(match d_type {
        libc::DT_REG => FileKind::File,
        libc::DT_DIR => FileKind::Dir,
        libc::DT_LNK => FileKind::Symlink,
        libc::DT_FIFO => FileKind::Fifo,
        libc::DT_SOCK => FileKind::Socket,
        libc::DT_CHR => FileKind::CharDev,
        libc::DT_BLK => FileKind::BlockDev,
        _ => return None,
    })
}

fn ts(secs: i64, nsecs: i64) -> Timespec {
    Timespec {
        secs,
        nsecs: u32::try_from(nsecs).unwrap_or(0),
    }
}

fn attr_of(id: RemoteIno, st: &libc::stat) -> Attr {
    Attr {
        ino: id,
        dev: st.st_dev,
        st_ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: ts(st.st_atime, st.st_atime_nsec),
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
    }
}

fn offset(off: u64) -> Res<libc::off_t> {
    libc::off_t::try_from(off).map_err(|_| libc::EINVAL)
}

fn utime(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) => libc::timespec {
            tv_sec: t.secs,
            // An out-of-range value must not turn into UTIME_NOW/OMIT.
            tv_nsec: if t.nsecs < 1_000_000_000 {
                t.nsecs as libc::c_long
            } else {
                -1
            },
        },
    }
}

fn is_write_open(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl Export {
    /// Opens the export root and records what to hide. Sets the process
    /// umask to 0 (see the module docs).
    pub fn open(cfg: ExportConfig) -> std::io::Result<Export> {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(0) };
        let root_path = CString::new(cfg.root.as_os_str().as_bytes())?;
        let root_fd = openat(
            libc::AT_FDCWD,
            &root_path,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )
        .map_err(std::io::Error::from_raw_os_error)?;
        let st = fstat(root_fd.as_raw_fd()).map_err(std::io::Error::from_raw_os_error)?;
        let proc_fd = openat(
            libc::AT_FDCWD,
            c"/proc/self/fd",
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )
        .map_err(std::io::Error::from_raw_os_error)?;

        let mut hidden_names: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
        let mut hidden_files = Vec::new();
        for path in &cfg.hide {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                hidden_files.push((m.dev(), m.ino()));
            }
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                tracing::warn!(path = %path.display(), "hide path has no parent; ignored");
                continue;
            };
            // stat follows symlinks in the parent, like the lookups that
            // reach it from the export root do.
            match std::fs::metadata(parent) {
                Ok(m) => hidden_names
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(name.as_bytes().to_vec()),
                Err(e) => {
                    tracing::debug!(path = %path.display(), "hide path's parent: {e}")
                }
            }
        }

        let root_inode = Arc::new(Inode {
            fd: root_fd,
            dev: st.st_dev,
            ino: st.st_ino,
            kind: FileKind::Dir,
        });
        let mut inodes = Inodes::default();
        inodes.by_key.insert((st.st_dev, st.st_ino), ROOT_INO);
        inodes.by_id.insert(
            ROOT_INO,
            InodeEntry {
                inode: root_inode,
                nlookup: 1,
            },
        );
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 32);
        Ok(Export {
            epoch,
            read_only: cfg.read_only,
            root_squash: cfg.root_squash,
            proc_fd,
            inodes: Mutex::new(inodes),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            handles: RwLock::new(HashMap::new()),
            // Handles of different runs do not overlap either.
            next_fh: AtomicU64::new(1 + (epoch >> 24)),
            hidden_names,
            hidden_files,
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Runs one operation as the caller. Blocking. Never panics on any input.
    /// This run's identity; clients drop ids from another run.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn handle(&self, creds: &Creds, op: FsRequest) -> FsResult {
        let (uid, gid, groups) = self.effective(creds);
        let _guard = become_caller(uid, gid, &groups).map_err(|e| e as i32)?;
        self.dispatch(op)
    }

    /// Opens file `ino` with open(2) `flags` as the caller and returns the
    /// real fd (used on the local node for kernel FUSE passthrough). Same
    /// checks as Open.
    pub fn open_file(&self, creds: &Creds, ino: RemoteIno, flags: i32) -> Result<File, i32> {
        let (uid, gid, groups) = self.effective(creds);
        let _guard = become_caller(uid, gid, &groups).map_err(|e| e as i32)?;
        self.open_inode(ino, flags).map(|(file, _)| file)
    }

    /// The file that kernel passthrough reads and writes for every local
    /// open of regular file `ino`. The kernel allows one backing file per
    /// inode, shared by all its opens, so it is opened once, by the daemon,
    /// read-write where possible; each open's own access was already checked
    /// by [`Export::open_file`] as the caller, and the kernel enforces that
    /// open's mode (O_APPEND, read-only...) on the FUSE file.
    pub fn open_backing(&self, ino: RemoteIno, writable: bool) -> Result<File, i32> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::File {
            return Err(libc::EINVAL);
        }
        let mode = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let fd = self.reopen(&inode, mode)?;
        Ok(File::from(fd))
    }

    /// The open file description that holds `lock`'s owner's locks on `ino`.
    /// Opened by the daemon: the client's kernel already checked that the
    /// caller's own descriptor allows the lock type.
    fn lock_file<'a>(
        &self,
        locks: &'a mut HashMap<(String, u64, RemoteIno), File>,
        ino: RemoteIno,
        lk: &LockRange,
    ) -> Res<&'a File> {
        let key = (lk.client.clone(), lk.owner, ino);
        if !locks.contains_key(&key) {
            let inode = self.inode(ino)?;
            if inode.kind != FileKind::File {
                return Err(libc::EINVAL);
            }
            let fd = self
                .reopen(&inode, libc::O_RDWR)
                .or_else(|_| self.reopen(&inode, libc::O_RDONLY))?;
            locks.insert(key.clone(), File::from(fd));
        }
        locks.get(&key).ok_or(libc::EIO)
    }

    fn flock_of(lk: &LockRange) -> Res<libc::flock> {
        let start = offset(lk.start)?;
        let len = if lk.end >= OFFSET_MAX {
            0
        } else {
            offset(lk.end.checked_sub(lk.start).ok_or(libc::EINVAL)? + 1)?
        };
        // SAFETY: flock is plain data.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = lk.typ as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start;
        fl.l_len = len;
        Ok(fl)
    }

    fn setlk(&self, ino: RemoteIno, lk: &LockRange) -> Res<()> {
        if !matches!(lk.typ, libc::F_RDLCK | libc::F_WRLCK | libc::F_UNLCK) {
            return Err(libc::EINVAL);
        }
        let mut fl = Self::flock_of(lk)?;
        let mut locks = lock(&self.locks);
        let key = (lk.client.clone(), lk.owner, ino);
        if lk.typ == libc::F_UNLCK && !locks.contains_key(&key) {
            return Ok(());
        }
        let fresh = !locks.contains_key(&key);
        let f = self.lock_file(&mut locks, ino, lk)?;
        // SAFETY: fcntl on a file we own with a valid flk.
        let r = cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) });
        if let Err(e) = r {
            // A refused first lock leaves nothing to hold on to.
            if fresh {
                locks.remove(&key);
            }
            return Err(e);
        }
        // Unlocking the whole file is what close() sends: the owner is done
        // with this file, so its description goes.
        if lk.typ == libc::F_UNLCK && lk.start == 0 && lk.end >= OFFSET_MAX {
            locks.remove(&key);
        }
        Ok(())
    }

    fn getlk(&self, ino: RemoteIno, lk: &LockRange) -> FsResult {
        let mut fl = Self::flock_of(lk)?;
        let mut locks = lock(&self.locks);
        let key = (lk.client.clone(), lk.owner, ino);
        // The owner's own description if it holds locks (they never conflict
        // with themselves), else a throwaway one: a query keeps nothing open.
        let held = locks.contains_key(&key);
        let f = self.lock_file(&mut locks, ino, lk)?;
        // SAFETY: fcntl on a file we own with a valid flk.
        let r = cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) });
        if !held {
            locks.remove(&key);
        }
        r?;
        let start = fl.l_start.max(0) as u64;
        let end = if fl.l_len == 0 {
            OFFSET_MAX
        } else {
            start + fl.l_len as u64 - 1
        };
        Ok(FsReply::Lock {
            start,
            end,
            typ: fl.l_type as i32,
            // OFD locks have no owning process; -1 is what F_OFD_GETLK says.
            pid: if fl.l_pid > 0 { fl.l_pid as u32 } else { 0 },
        })
    }

    /// Drops every lock a client node holds (it died or restarted).
    pub fn drop_locks_of(&self, client: &str) {
        lock(&self.locks).retain(|(c, _, _), _| c != client);
    }

    fn effective(&self, c: &Creds) -> (u32, u32, Vec<u32>) {
        if !self.root_squash {
            return (c.uid, c.gid, c.groups.clone());
        }
        let squash = |id: u32| if id == 0 { NOBODY } else { id };
        (
            squash(c.uid),
            squash(c.gid),
            c.groups.iter().copied().map(squash).collect(),
        )
    }

    fn dispatch(&self, op: FsRequest) -> FsResult {
        use FsRequest as R;
        if self.read_only {
            match &op {
                R::SetAttr { .. }
                | R::Mknod { .. }
                | R::Mkdir { .. }
                | R::Unlink { .. }
                | R::Rmdir { .. }
                | R::Symlink { .. }
                | R::Rename { .. }
                | R::Link { .. }
                | R::Create { .. }
                | R::Write { .. }
                | R::SetXattr { .. }
                | R::RemoveXattr { .. }
                | R::Fallocate { .. } => return Err(libc::EROFS),
                R::Open { flags, .. } if is_write_open(*flags) => return Err(libc::EROFS),
                _ => {}
            }
        }
        match op {
            R::Lookup { parent, name } => {
                let parent = self.inode(parent)?;
                let name = component(&name)?;
                self.lookup_at(&parent, &name).map(FsReply::Entry)
            }
            R::Forget { items } => {
                self.forget(&items);
                Ok(FsReply::Ok)
            }
            R::GetAttr { ino } => {
                let inode = self.inode(ino)?;
                Ok(FsReply::Attr(attr_of(ino, &fstat(inode.fd.as_raw_fd())?)))
            }
            R::SetAttr { ino, set } => self.setattr(ino, &set).map(FsReply::Attr),
            R::ReadLink { ino } => self.readlink(ino).map(FsReply::Data),
            R::Mknod {
                parent,
                name,
                mode,
                rdev,
                umask,
            } => self.mknod(parent, &name, mode, rdev, umask),
            R::Mkdir {
                parent,
                name,
                mode,
                umask,
            } => {
                let (parent, name) = self.new_name(parent, &name)?;
                let mode = mode & !umask & 0o7777;
                // SAFETY: valid C string.
                cvt(unsafe { libc::mkdirat(parent.fd.as_raw_fd(), name.as_ptr(), mode) })?;
                self.lookup_at(&parent, &name).map(FsReply::Entry)
            }
            R::Unlink { parent, name } => self.remove(parent, &name, 0),
            R::Rmdir { parent, name } => self.remove(parent, &name, libc::AT_REMOVEDIR),
            R::Symlink {
                parent,
                name,
                target,
            } => {
                let (parent, name) = self.new_name(parent, &name)?;
                let target = cstring(&target)?;
                // SAFETY: valid C strings.
                cvt(unsafe {
                    libc::symlinkat(target.as_ptr(), parent.fd.as_raw_fd(), name.as_ptr())
                })?;
                self.lookup_at(&parent, &name).map(FsReply::Entry)
            }
            R::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => self.rename(parent, &name, new_parent, &new_name, flags),
            R::Link {
                ino,
                new_parent,
                new_name,
            } => {
                let src = self.inode(ino)?;
                let (parent, name) = self.new_name(new_parent, &new_name)?;
                let src_name = fd_name(src.fd.as_raw_fd())?;
                // Through the magic link rather than AT_EMPTY_PATH, which
                // would need CAP_DAC_READ_SEARCH.
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
                self.lookup_at(&parent, &name).map(FsReply::Entry)
            }
            R::Open { ino, flags } => {
                let (file, inode) = self.open_inode(ino, flags)?;
                let fh = self.add_handle(Handle {
                    file,
                    dev: inode.dev,
                    ino: inode.ino,
                    dir: None,
                });
                Ok(FsReply::Opened { fh })
            }
            R::Create {
                parent,
                name,
                mode,
                umask,
                flags,
            } => self.create(parent, &name, mode, umask, flags),
            R::Read { fh, offset, size } => self.read(fh, offset, size).map(FsReply::Data),
            R::Write { fh, offset, data } => self.write(fh, offset, &data).map(FsReply::Written),
            R::Flush { fh } => self.handle_of(fh).map(|_| FsReply::Ok),
            R::Fsync { fh, datasync } => {
                let h = self.handle_of(fh)?;
                let r = if datasync {
                    h.file.sync_data()
                } else {
                    h.file.sync_all()
                };
                r.map_err(io_errno).map(|_| FsReply::Ok)
            }
            R::Release { fh } | R::ReleaseDir { fh } => {
                let h = self
                    .handles
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&fh);
                // Closed outside the lock: a last close can be slow.
                match h {
                    Some(h) => {
                        drop(h);
                        Ok(FsReply::Ok)
                    }
                    None => Err(libc::EBADF),
                }
            }
            R::OpenDir { ino } => {
                let inode = self.inode(ino)?;
                if inode.kind != FileKind::Dir {
                    return Err(libc::ENOTDIR);
                }
                let fd =
                    self.reopen(&inode, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
                let fh = self.add_handle(Handle {
                    file: File::from(fd),
                    dev: inode.dev,
                    ino: inode.ino,
                    dir: Some(Mutex::new(())),
                });
                Ok(FsReply::Opened { fh })
            }
            R::ReadDir { fh, offset, size } => self.readdir(fh, offset, size).map(FsReply::Entries),
            R::StatFs { ino } => {
                let inode = self.inode(ino)?;
                let s = fstatfs(inode.fd.as_raw_fd())?;
                Ok(FsReply::StatFs(StatFs {
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    bsize: u32::try_from(s.f_bsize).unwrap_or(4096),
                    namelen: u32::try_from(s.f_namelen).unwrap_or(255),
                    frsize: u32::try_from(s.f_frsize).unwrap_or(4096),
                }))
            }
            R::SetXattr {
                ino,
                name,
                value,
                flags,
            } => {
                let inode = self.inode(ino)?;
                let path = fd_path(inode.fd.as_raw_fd())?;
                let name = cstring(&name)?;
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
                Ok(FsReply::Ok)
            }
            R::GetXattr { ino, name, size } => {
                let inode = self.inode(ino)?;
                let path = fd_path(inode.fd.as_raw_fd())?;
                let name = cstring(&name)?;
                xattr_read(size, |buf, len| {
                    // SAFETY: buf is valid for len bytes (or null with len 0).
                    unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf, len) }
                })
            }
            R::ListXattr { ino, size } => {
                let inode = self.inode(ino)?;
                let path = fd_path(inode.fd.as_raw_fd())?;
                xattr_read(size, |buf, len| {
                    // SAFETY: buf is valid for len bytes (or null with len 0).
                    unsafe { libc::listxattr(path.as_ptr(), buf.cast(), len) }
                })
            }
            R::RemoveXattr { ino, name } => {
                let inode = self.inode(ino)?;
                let path = fd_path(inode.fd.as_raw_fd())?;
                let name = cstring(&name)?;
                // SAFETY: valid C strings.
                cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })?;
                Ok(FsReply::Ok)
            }
            R::Fallocate {
                fh,
                offset: off,
                length,
                mode,
            } => {
                let h = self.handle_of(fh)?;
                let (off, len) = (offset(off)?, offset(length)?);
                retry(|| {
                    // SAFETY: plain syscall on an fd we own.
                    cvt(unsafe { libc::fallocate(h.file.as_raw_fd(), mode, off, len) })
                })?;
                Ok(FsReply::Ok)
            }
            R::GetLk { ino, lock: lk } => self.getlk(ino, &lk),
            R::SetLk { ino, lock: lk } => self.setlk(ino, &lk).map(|()| FsReply::Ok),
            R::Access { ino, mask } => {
                let inode = self.inode(ino)?;
                if self.read_only
                    && mask & libc::W_OK != 0
                    && matches!(
                        inode.kind,
                        FileKind::File | FileKind::Dir | FileKind::Symlink
                    )
                {
                    return Err(libc::EROFS);
                }
                let name = fd_name(inode.fd.as_raw_fd())?;
                // faccessat2 with AT_EACCESS checks with the fs credentials
                // set for this thread; plain access(2) would use the real
                // uid (root). glibc's faccessat would emulate AT_EACCESS in
                // user space, so this is the raw syscall.
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
                Ok(FsReply::Ok)
            }
        }
    }

    fn inode(&self, id: RemoteIno) -> Res<Arc<Inode>> {
        lock(&self.inodes)
            .by_id
            .get(&id)
            .map(|e| e.inode.clone())
            .ok_or(libc::ESTALE)
    }

    fn handle_of(&self, fh: RemoteFh) -> Res<Arc<Handle>> {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)
    }

    fn add_handle(&self, h: Handle) -> RemoteFh {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(h));
        fh
    }

    fn is_hidden(&self, parent: &Inode, name: &[u8]) -> bool {
        self.hidden_names
            .get(&(parent.dev, parent.ino))
            .is_some_and(|names| names.iter().any(|n| n == name))
    }

    /// Parent and validated name for an operation that creates `name`.
    /// A hidden name cannot be created or replaced.
    fn new_name(&self, parent: RemoteIno, name: &[u8]) -> Res<(Arc<Inode>, CString)> {
        let parent = self.inode(parent)?;
        let name = component(name)?;
        if self.is_hidden(&parent, name.as_bytes()) {
            return Err(libc::EACCES);
        }
        Ok((parent, name))
    }

    /// Parent and validated name for an operation on an existing `name`.
    /// A hidden name does not exist.
    fn old_name(&self, parent: RemoteIno, name: &[u8]) -> Res<(Arc<Inode>, CString)> {
        let parent = self.inode(parent)?;
        let name = component(name)?;
        if self.is_hidden(&parent, name.as_bytes()) {
            return Err(libc::ENOENT);
        }
        Ok((parent, name))
    }

    /// Single-component, no-follow lookup; adds one reference to the result.
    fn lookup_at(&self, parent: &Inode, name: &CStr) -> Res<Attr> {
        if self.is_hidden(parent, name.to_bytes()) {
            return Err(libc::ENOENT);
        }
        let fd = openat(
            parent.fd.as_raw_fd(),
            name,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )?;
        let st = fstat(fd.as_raw_fd())?;
        self.insert(fd, &st)
    }

    /// Enters a file into the inode table (or adds a reference to its
    /// existing entry, so hard links share one id).
    fn insert(&self, fd: OwnedFd, st: &libc::stat) -> Res<Attr> {
        let key = (st.st_dev, st.st_ino);
        if self.hidden_files.contains(&key) {
            return Err(libc::ENOENT);
        }
        let kind = kind_of(st.st_mode);
        if kind == FileKind::Dir {
            // f_type's C type differs between architectures.
            #[allow(clippy::unnecessary_cast)]
            let f_type = fstatfs(fd.as_raw_fd())?.f_type as i64;
            if matches!(f_type, PROC_SUPER_MAGIC | SYSFS_MAGIC | FUSE_SUPER_MAGIC) {
                return Err(libc::ENOENT);
            }
        }
        let mut t = lock(&self.inodes);
        let id = match t.by_key.get(&key).copied() {
            Some(id) => {
                if let Some(e) = t.by_id.get_mut(&id) {
                    e.nlookup = e.nlookup.saturating_add(1);
                    // The new fd is a duplicate; dropping it closes it.
                    return Ok(attr_of(id, st));
                }
                id
            }
            None => {
                let id = self.next_ino.fetch_add(1, Ordering::Relaxed);
                t.by_key.insert(key, id);
                id
            }
        };
        t.by_id.insert(
            id,
            InodeEntry {
                inode: Arc::new(Inode {
                    fd,
                    dev: st.st_dev,
                    ino: st.st_ino,
                    kind,
                }),
                nlookup: 1,
            },
        );
        Ok(attr_of(id, st))
    }

    fn forget(&self, items: &[(RemoteIno, u64)]) {
        let mut freed = Vec::new();
        {
            let mut t = lock(&self.inodes);
            for &(id, n) in items {
                if id == ROOT_INO {
                    continue;
                }
                let Some(e) = t.by_id.get_mut(&id) else {
                    continue;
                };
                e.nlookup = e.nlookup.saturating_sub(n);
                if e.nlookup == 0 {
                    // The id stays reserved for this file in `by_key`.
                    if let Some(e) = t.by_id.remove(&id) {
                        freed.push(e);
                    }
                }
            }
        }
        // Last close of an unlinked file frees its blocks: not under the lock.
        drop(freed);
    }

    /// Opens the inode behind an O_PATH fd through its magic link, as the
    /// caller (so the kernel checks permission for `flags`).
    fn reopen(&self, inode: &Inode, flags: i32) -> Res<OwnedFd> {
        let name = fd_name(inode.fd.as_raw_fd())?;
        openat(self.proc_fd.as_raw_fd(), &name, flags | libc::O_CLOEXEC, 0)
    }

    fn open_inode(&self, ino: RemoteIno, flags: i32) -> Res<(File, Arc<Inode>)> {
        let mut flags = flags & OPEN_FLAGS_ALLOWED;
        if self.read_only && is_write_open(flags) {
            return Err(libc::EROFS);
        }
        let inode = self.inode(ino)?;
        match inode.kind {
            FileKind::File => {}
            FileKind::Dir if !is_write_open(flags) => flags |= libc::O_DIRECTORY,
            FileKind::Dir => return Err(libc::EISDIR),
            FileKind::Symlink => return Err(libc::ELOOP),
            // Opening a fifo would block a server thread, opening a device
            // would run its driver on this node on a remote caller's behalf.
            _ => return Err(libc::ENXIO),
        }
        let file = File::from(self.reopen(&inode, flags)?);
        Ok((file, inode))
    }

    fn create(
        &self,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult {
        let (parent, name) = self.new_name(parent, name)?;
        let excl = flags & libc::O_EXCL != 0;
        let flags = flags & OPEN_FLAGS_ALLOWED;
        let mode = mode & !umask & 0o7777;
        // O_EXCL first, so an existing fifo or device is never opened with
        // O_CREAT; only if it already exists (and the caller allowed that)
        // is it looked up and opened like Open would.
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
        let attr = self.insert(path_fd, &st)?;
        let fh = self.add_handle(Handle {
            file: File::from(file),
            dev: st.st_dev,
            ino: st.st_ino,
            dir: None,
        });
        Ok(FsReply::Created { attr, fh })
    }

    fn mknod(&self, parent: RemoteIno, name: &[u8], mode: u32, rdev: u64, umask: u32) -> FsResult {
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
        self.lookup_at(&parent, &name).map(FsReply::Entry)
    }

    fn remove(&self, parent: RemoteIno, name: &[u8], flags: i32) -> FsResult {
        let (parent, name) = self.old_name(parent, name)?;
        // SAFETY: valid C string.
        cvt(unsafe { libc::unlinkat(parent.fd.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(FsReply::Ok)
    }

    fn rename(
        &self,
        parent: RemoteIno,
        name: &[u8],
        new_parent: RemoteIno,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult {
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
        Ok(FsReply::Ok)
    }

    fn readlink(&self, ino: RemoteIno) -> Res<Vec<u8>> {
        let inode = self.inode(ino)?;
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

    fn setattr(&self, ino: RemoteIno, set: &SetAttr) -> Res<Attr> {
        let inode = self.inode(ino)?;
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
            // SAFETY: valid C string.
            cvt(unsafe {
                libc::fchmodat(self.proc_fd.as_raw_fd(), name.as_ptr(), mode & 0o7777, 0)
            })?;
        }
        if let Some(size) = set.size {
            let size = offset(size)?;
            let via_handle = set
                .fh
                .and_then(|fh| self.handle_of(fh).ok())
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

    fn read(&self, fh: RemoteFh, off: u64, size: u32) -> Res<Vec<u8>> {
        let h = self.handle_of(fh)?;
        let off = offset(off)?;
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

    fn write(&self, fh: RemoteFh, off: u64, data: &[u8]) -> Res<u32> {
        let h = self.handle_of(fh)?;
        let off = offset(off)?;
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

    fn readdir(&self, fh: RemoteFh, off: u64, size: u32) -> Res<Vec<DirEntry>> {
        let h = self.handle_of(fh)?;
        let Some(dir_lock) = &h.dir else {
            return Err(libc::ENOTDIR);
        };
        let _pos = lock(dir_lock);
        let fd = h.file.as_raw_fd();
        let off = offset(off)?;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } < 0 {
            return Err(last_errno());
        }
        let hidden = self.hidden_names.get(&(h.dev, h.ino));
        let mut ids = Vec::new();
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
                if hidden.is_some_and(|names| names.iter().any(|h| h.as_slice() == d.name)) {
                    continue;
                }
                let cost = d.name.len() + DIRENT_OVERHEAD;
                if !out.is_empty() && used + cost > budget {
                    break 'fill;
                }
                used += cost;
                let kind = match dtype_kind(d.d_type) {
                    Some(k) => k,
                    None => self.kind_at(fd, d.name),
                };
                ids.push(d.ino);
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
        let mut t = lock(&self.inodes);
        for (e, st_ino) in out.iter_mut().zip(ids) {
            e.ino = match t.by_key.get(&(h.dev, st_ino)) {
                Some(&id) => id,
                None => {
                    let id = self.next_ino.fetch_add(1, Ordering::Relaxed);
                    t.by_key.insert((h.dev, st_ino), id);
                    id
                }
            };
        }
        Ok(out)
    }

    /// File type of `name` in `dirfd`, for filesystems that give DT_UNKNOWN.
    fn kind_at(&self, dirfd: RawFd, name: &[u8]) -> FileKind {
        let Ok(c) = CString::new(name) else {
            return FileKind::File;
        };
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: valid C string and out-pointer.
        let r = unsafe {
            libc::fstatat(
                dirfd,
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r < 0 {
            return FileKind::File;
        }
        // SAFETY: fstatat succeeded.
        kind_of(unsafe { st.assume_init() }.st_mode)
    }
}

struct RawDirent<'a> {
    ino: u64,
    off: i64,
    reclen: usize,
    d_type: u8,
    name: &'a [u8],
}

/// One `struct linux_dirent64` at `pos`, bounds-checked.
fn parse_dirent(buf: &[u8], pos: usize) -> Option<RawDirent<'_>> {
    const NAME_AT: usize = 19;
    let head = buf.get(pos..pos.checked_add(NAME_AT)?)?;
    let ino = u64::from_ne_bytes(head.get(0..8)?.try_into().ok()?);
    let off = i64::from_ne_bytes(head.get(8..16)?.try_into().ok()?);
    let reclen = u16::from_ne_bytes(head.get(16..18)?.try_into().ok()?) as usize;
    let d_type = *head.get(18)?;
    if reclen < NAME_AT {
        return None;
    }
    let raw = buf.get(pos + NAME_AT..pos.checked_add(reclen)?)?;
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    Some(RawDirent {
        ino,
        off,
        reclen,
        d_type,
        name: &raw[..len],
    })
}

/// The size-0 / ERANGE / data protocol shared by getxattr and listxattr.
fn xattr_read(size: u32, call: impl Fn(*mut libc::c_void, usize) -> libc::ssize_t) -> FsResult {
    if size == 0 {
        let n = cvt_size(call(std::ptr::null_mut(), 0))?;
        return Ok(FsReply::XattrSize(u32::try_from(n).unwrap_or(u32::MAX)));
    }
    let mut buf = vec![0u8; (size as usize).min(MAX_XATTR)];
    let n = cvt_size(call(buf.as_mut_ptr().cast(), buf.len()))?;
    buf.truncate(n);
    Ok(FsReply::Data(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    const _: fn() = || {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Export>();
    };

    fn root() -> Creds {
        Creds {
            uid: 0,
            gid: 0,
            groups: vec![],
            pid: 1,
        }
    }

    fn nobody() -> Creds {
        Creds {
            uid: NOBODY,
            gid: NOBODY,
            groups: vec![],
            pid: 2,
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// An export of a fresh tempdir that anyone may traverse.
    fn setup_with(f: impl FnOnce(&Path, &mut ExportConfig)) -> (tempfile::TempDir, Export) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cfg = ExportConfig {
            root: dir.path().to_path_buf(),
            ..Default::default()
        };
        f(dir.path(), &mut cfg);
        let e = Export::open(cfg).unwrap();
        (dir, e)
    }

    fn setup() -> (tempfile::TempDir, Export) {
        setup_with(|_, _| {})
    }

    fn entry(r: FsResult) -> Attr {
        match r {
            Ok(FsReply::Entry(a)) | Ok(FsReply::Attr(a)) => a,
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    fn lookup(e: &Export, c: &Creds, parent: RemoteIno, name: &str) -> FsResult {
        e.handle(
            c,
            FsRequest::Lookup {
                parent,
                name: name.as_bytes().to_vec(),
            },
        )
    }

    fn fh(r: FsResult) -> RemoteFh {
        match r {
            Ok(FsReply::Opened { fh }) => fh,
            other => panic!("expected a handle, got {other:?}"),
        }
    }

    fn create(e: &Export, c: &Creds, parent: RemoteIno, name: &str, mode: u32) -> FsResult {
        e.handle(
            c,
            FsRequest::Create {
                parent,
                name: name.as_bytes().to_vec(),
                mode,
                umask: 0o022,
                flags: libc::O_RDWR,
            },
        )
    }

    fn created(r: FsResult) -> (Attr, RemoteFh) {
        match r {
            Ok(FsReply::Created { attr, fh }) => (attr, fh),
            other => panic!("expected Created, got {other:?}"),
        }
    }

    fn data(r: FsResult) -> Vec<u8> {
        match r {
            Ok(FsReply::Data(d)) => d,
            other => panic!("expected data, got {other:?}"),
        }
    }

    fn read_all_dir(e: &Export, c: &Creds, ino: RemoteIno, size: u32) -> Vec<DirEntry> {
        let dfh = fh(e.handle(c, FsRequest::OpenDir { ino }));
        let mut all = Vec::new();
        let mut offset = 0;
        let mut calls = 0;
        loop {
            let r = e.handle(
                c,
                FsRequest::ReadDir {
                    fh: dfh,
                    offset,
                    size,
                },
            );
            let Ok(FsReply::Entries(batch)) = r else {
                panic!("readdir: {r:?}");
            };
            if batch.is_empty() {
                break;
            }
            calls += 1;
            assert!(calls < 10_000);
            offset = batch.last().unwrap().next_offset;
            all.extend(batch);
        }
        assert_eq!(
            e.handle(c, FsRequest::ReleaseDir { fh: dfh }),
            Ok(FsReply::Ok)
        );
        all
    }

    #[test]
    fn lookup_getattr_readdir_with_cookies() {
        let (dir, e) = setup();
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        for i in 0..200 {
            std::fs::write(d.join(format!("file-{i:03}")), b"x").unwrap();
        }
        std::fs::create_dir(d.join("sub")).unwrap();
        let a = entry(lookup(&e, &root(), ROOT_INO, "d"));
        assert_eq!(a.kind, FileKind::Dir);
        assert_ne!(a.ino, ROOT_INO);
        let meta = std::fs::metadata(&d).unwrap();
        assert_eq!((a.dev, a.st_ino), (meta.dev(), meta.ino()));
        let g = entry(e.handle(&root(), FsRequest::GetAttr { ino: a.ino }));
        assert_eq!(g.st_ino, a.st_ino);
        assert_eq!(g.ino, a.ino);
        let root_attr = entry(e.handle(&root(), FsRequest::GetAttr { ino: ROOT_INO }));
        assert_eq!(root_attr.ino, ROOT_INO);
        assert_eq!(root_attr.kind, FileKind::Dir);

        // Small replies force many calls, each resuming from a cookie.
        let all = read_all_dir(&e, &root(), a.ino, 300);
        let mut names: Vec<String> = all
            .iter()
            .map(|d| String::from_utf8(d.name.clone()).unwrap())
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicates across readdir calls");
        assert_eq!(n, 203);
        assert!(names.contains(&".".to_string()) && names.contains(&"..".to_string()));
        let sub = all.iter().find(|d| d.name == b"sub").unwrap();
        assert_eq!(sub.kind, FileKind::Dir);
        let f = all.iter().find(|d| d.name == b"file-007").unwrap();
        assert_eq!(f.kind, FileKind::File);
        assert_eq!(f.ino, entry(lookup(&e, &root(), a.ino, "file-007")).ino);

        // Resuming from a cookie in the middle gives exactly the rest.
        let dfh = fh(e.handle(&root(), FsRequest::OpenDir { ino: a.ino }));
        let cookie = all[99].next_offset;
        let mut rest = Vec::new();
        let mut offset = cookie;
        loop {
            let Ok(FsReply::Entries(b)) = e.handle(
                &root(),
                FsRequest::ReadDir {
                    fh: dfh,
                    offset,
                    size: 4096,
                },
            ) else {
                panic!()
            };
            if b.is_empty() {
                break;
            }
            offset = b.last().unwrap().next_offset;
            rest.extend(b.into_iter().map(|d| d.name));
        }
        let expect: Vec<Vec<u8>> = all[100..].iter().map(|d| d.name.clone()).collect();
        assert_eq!(rest, expect);
        // Reading from 0 again restarts.
        let Ok(FsReply::Entries(again)) = e.handle(
            &root(),
            FsRequest::ReadDir {
                fh: dfh,
                offset: 0,
                size: 1,
            },
        ) else {
            panic!()
        };
        assert_eq!(again.len(), 1, "a tiny size still makes progress");
        assert_eq!(again[0].name, all[0].name);
        e.handle(&root(), FsRequest::ReleaseDir { fh: dfh })
            .unwrap();
        assert_eq!(
            e.handle(&root(), FsRequest::ReleaseDir { fh: dfh }),
            Err(libc::EBADF)
        );
    }

    #[test]
    fn create_write_read_truncate() {
        let (dir, e) = setup();
        let (attr, h) = created(create(&e, &root(), ROOT_INO, "f", 0o666));
        assert_eq!(attr.kind, FileKind::File);
        assert_eq!(attr.perm, 0o644, "caller's umask applied");
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Write {
                    fh: h,
                    offset: 0,
                    data: b"hello world".to_vec(),
                },
            ),
            Ok(FsReply::Written(11))
        );
        let got = data(e.handle(
            &root(),
            FsRequest::Read {
                fh: h,
                offset: 6,
                size: 100,
            },
        ));
        assert_eq!(got, b"world");
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello world");
        // Truncate through the handle, then without one.
        let a = entry(e.handle(
            &root(),
            FsRequest::SetAttr {
                ino: attr.ino,
                set: SetAttr {
                    size: Some(5),
                    fh: Some(h),
                    ..Default::default()
                },
            },
        ));
        assert_eq!(a.size, 5);
        let a = entry(e.handle(
            &root(),
            FsRequest::SetAttr {
                ino: attr.ino,
                set: SetAttr {
                    size: Some(2),
                    ..Default::default()
                },
            },
        ));
        assert_eq!(a.size, 2);
        let got = data(e.handle(
            &root(),
            FsRequest::Read {
                fh: h,
                offset: 0,
                size: 100,
            },
        ));
        assert_eq!(got, b"he");
        assert_eq!(
            e.handle(&root(), FsRequest::Flush { fh: h }),
            Ok(FsReply::Ok)
        );
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Fsync {
                    fh: h,
                    datasync: true
                }
            ),
            Ok(FsReply::Ok)
        );
        assert_eq!(
            e.handle(&root(), FsRequest::Release { fh: h }),
            Ok(FsReply::Ok)
        );
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Read {
                    fh: h,
                    offset: 0,
                    size: 1
                }
            ),
            Err(libc::EBADF)
        );
        // Create of an existing name: O_EXCL fails, without it opens.
        let r = e.handle(
            &root(),
            FsRequest::Create {
                parent: ROOT_INO,
                name: b"f".to_vec(),
                mode: 0o600,
                umask: 0,
                flags: libc::O_RDWR | libc::O_EXCL,
            },
        );
        assert_eq!(r, Err(libc::EEXIST));
        let (a2, h2) = created(create(&e, &root(), ROOT_INO, "f", 0o600));
        assert_eq!(a2.ino, attr.ino);
        assert_eq!(a2.perm, 0o644, "existing file's mode kept");
        e.handle(&root(), FsRequest::Release { fh: h2 }).unwrap();
        // Open + open_file.
        let h3 = fh(e.handle(
            &root(),
            FsRequest::Open {
                ino: attr.ino,
                flags: libc::O_RDONLY | libc::O_CREAT | libc::O_NOCTTY,
            },
        ));
        assert_eq!(
            data(e.handle(
                &root(),
                FsRequest::Read {
                    fh: h3,
                    offset: 0,
                    size: 10
                }
            )),
            b"he"
        );
        let mut f = e.open_file(&root(), attr.ino, libc::O_RDONLY).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!(s, "he");
        // Explicit times and "now".
        let a = entry(e.handle(
            &root(),
            FsRequest::SetAttr {
                ino: attr.ino,
                set: SetAttr {
                    atime: Some(SetTime::At(Timespec {
                        secs: 1_000_000,
                        nsecs: 5,
                    })),
                    mtime: Some(SetTime::At(Timespec {
                        secs: 2_000_000,
                        nsecs: 7,
                    })),
                    ..Default::default()
                },
            },
        ));
        assert_eq!(
            a.atime,
            Timespec {
                secs: 1_000_000,
                nsecs: 5
            }
        );
        assert_eq!(
            a.mtime,
            Timespec {
                secs: 2_000_000,
                nsecs: 7
            }
        );
        let a = entry(e.handle(
            &root(),
            FsRequest::SetAttr {
                ino: attr.ino,
                set: SetAttr {
                    mtime: Some(SetTime::Now),
                    mode: Some(0o4711),
                    uid: Some(123),
                    gid: Some(456),
                    ..Default::default()
                },
            },
        ));
        assert!(a.mtime.secs > 2_000_000);
        assert_eq!(
            a.atime,
            Timespec {
                secs: 1_000_000,
                nsecs: 5
            },
            "omitted"
        );
        assert_eq!((a.uid, a.gid, a.perm), (123, 456, 0o4711));
    }

    #[test]
    fn hard_link_shares_id() {
        let (_dir, e) = setup();
        let (a, h) = created(create(&e, &root(), ROOT_INO, "a", 0o644));
        e.handle(&root(), FsRequest::Release { fh: h }).unwrap();
        let l = entry(e.handle(
            &root(),
            FsRequest::Link {
                ino: a.ino,
                new_parent: ROOT_INO,
                new_name: b"b".to_vec(),
            },
        ));
        assert_eq!(l.ino, a.ino);
        assert_eq!(l.nlink, 2);
        assert_eq!(entry(lookup(&e, &root(), ROOT_INO, "b")).ino, a.ino);
    }

    #[test]
    fn rename_noreplace_and_exchange() {
        let (dir, e) = setup();
        std::fs::write(dir.path().join("a"), b"A").unwrap();
        std::fs::write(dir.path().join("b"), b"B").unwrap();
        let rename = |from: &str, to: &str, flags: u32| {
            e.handle(
                &root(),
                FsRequest::Rename {
                    parent: ROOT_INO,
                    name: from.as_bytes().to_vec(),
                    new_parent: ROOT_INO,
                    new_name: to.as_bytes().to_vec(),
                    flags,
                },
            )
        };
        assert_eq!(rename("a", "b", libc::RENAME_NOREPLACE), Err(libc::EEXIST));
        assert_eq!(rename("a", "b", libc::RENAME_EXCHANGE), Ok(FsReply::Ok));
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"B");
        assert_eq!(std::fs::read(dir.path().join("b")).unwrap(), b"A");
        assert_eq!(rename("a", "c", 0), Ok(FsReply::Ok));
        assert_eq!(std::fs::read(dir.path().join("c")).unwrap(), b"B");
        assert_eq!(rename("a", "d", 0), Err(libc::ENOENT));
        assert_eq!(rename("c", "..", 0), Err(libc::EINVAL));
    }

    #[test]
    fn symlinks_never_lead_outside() {
        let (dir, e) = setup();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"outside content").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("esc")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("escdir")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("../..", dir.path().join("up")).unwrap();

        let secret_mode = std::fs::metadata(&secret).unwrap().mode();
        let l = entry(lookup(&e, &root(), ROOT_INO, "esc"));
        assert_eq!(l.kind, FileKind::Symlink);
        let lmeta = std::fs::symlink_metadata(dir.path().join("esc")).unwrap();
        assert_eq!(l.st_ino, lmeta.ino());
        assert_eq!(
            data(e.handle(&root(), FsRequest::ReadLink { ino: l.ino })),
            secret.as_os_str().as_bytes()
        );
        // Not openable, not truncatable, not chmod-able through the link.
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Open {
                    ino: l.ino,
                    flags: libc::O_RDWR | libc::O_TRUNC
                }
            ),
            Err(libc::ELOOP)
        );
        assert!(e.open_file(&root(), l.ino, libc::O_RDONLY).is_err());
        assert!(e
            .handle(
                &root(),
                FsRequest::SetAttr {
                    ino: l.ino,
                    set: SetAttr {
                        size: Some(0),
                        ..Default::default()
                    }
                }
            )
            .is_err());
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::SetAttr {
                    ino: l.ino,
                    set: SetAttr {
                        mode: Some(0o777),
                        ..Default::default()
                    }
                }
            ),
            Err(libc::EOPNOTSUPP)
        );
        // Xattrs of the link are the link's own.
        let xattrs = xattr_supported(outside.path());
        if xattrs {
            xattr_set(&secret, "user.mark", b"target");
            assert_eq!(
                e.handle(
                    &root(),
                    FsRequest::GetXattr {
                        ino: l.ino,
                        name: b"user.mark".to_vec(),
                        size: 64
                    }
                ),
                Err(libc::ENODATA)
            );
        }
        // Chown of the link changes the link, not the target.
        entry(e.handle(
            &root(),
            FsRequest::SetAttr {
                ino: l.ino,
                set: SetAttr {
                    uid: Some(4242),
                    ..Default::default()
                },
            },
        ));
        assert_eq!(std::fs::metadata(&secret).unwrap().uid(), 0);
        let m = std::fs::metadata(&secret).unwrap();
        assert_eq!(m.len(), 15);
        assert_eq!(m.mode(), secret_mode);
        assert_eq!(std::fs::read(&secret).unwrap(), b"outside content");

        // A symlink as a parent does not resolve.
        for (link, name) in [("escdir", "secret"), ("etc", "passwd"), ("up", "etc")] {
            let l = entry(lookup(&e, &root(), ROOT_INO, link));
            assert_eq!(l.kind, FileKind::Symlink);
            let r = lookup(&e, &root(), l.ino, name);
            assert!(
                matches!(r, Err(libc::ENOTDIR) | Err(libc::ESTALE)),
                "{link}/{name}: {r:?}"
            );
            assert!(matches!(
                e.handle(&root(), FsRequest::OpenDir { ino: l.ino }),
                Err(libc::ENOTDIR)
            ));
        }
        // Multi-component and dot names are refused outright.
        for name in [
            "x/../..",
            "..",
            ".",
            "",
            "etc/passwd",
            "/etc",
            "esc/",
            "a\0b",
        ] {
            assert_eq!(
                lookup(&e, &root(), ROOT_INO, name),
                Err(libc::EINVAL),
                "{name:?}"
            );
        }
        // Creating through a symlinked directory cannot escape either.
        let etc = entry(lookup(&e, &root(), ROOT_INO, "escdir"));
        assert!(create(&e, &root(), etc.ino, "planted", 0o644).is_err());
        assert!(!outside.path().join("planted").exists());
        // Creating over a dangling symlink does not follow it.
        std::os::unix::fs::symlink(outside.path().join("new"), dir.path().join("dangling"))
            .unwrap();
        assert!(create(&e, &root(), ROOT_INO, "dangling", 0o644).is_err());
        assert!(!outside.path().join("new").exists());
    }

    #[test]
    fn nobody_gets_the_kernels_permission_checks() {
        if !is_root() {
            eprintln!("note: not root, skipping");
            return;
        }
        let (dir, e) = setup();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"s").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = entry(lookup(&e, &nobody(), ROOT_INO, "secret"));
        assert_eq!(
            e.handle(
                &nobody(),
                FsRequest::Open {
                    ino: s.ino,
                    flags: libc::O_RDONLY
                }
            ),
            Err(libc::EACCES)
        );
        assert_eq!(
            e.open_file(&nobody(), s.ino, libc::O_RDONLY).unwrap_err(),
            libc::EACCES
        );
        assert_eq!(
            e.handle(
                &nobody(),
                FsRequest::Access {
                    ino: s.ino,
                    mask: libc::R_OK
                }
            ),
            Err(libc::EACCES)
        );
        assert_eq!(
            e.handle(
                &nobody(),
                FsRequest::Access {
                    ino: s.ino,
                    mask: libc::F_OK
                }
            ),
            Ok(FsReply::Ok)
        );
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Access {
                    ino: s.ino,
                    mask: libc::R_OK | libc::W_OK
                }
            ),
            Ok(FsReply::Ok)
        );
        assert_eq!(
            create(&e, &nobody(), ROOT_INO, "new", 0o644),
            Err(libc::EACCES)
        );
        assert_eq!(
            e.handle(
                &nobody(),
                FsRequest::Mkdir {
                    parent: ROOT_INO,
                    name: b"d".to_vec(),
                    mode: 0o755,
                    umask: 0
                }
            ),
            Err(libc::EACCES)
        );
        // Truncate without a handle checks write permission.
        assert_eq!(
            e.handle(
                &nobody(),
                FsRequest::SetAttr {
                    ino: s.ino,
                    set: SetAttr {
                        size: Some(0),
                        ..Default::default()
                    }
                }
            ),
            Err(libc::EACCES)
        );
        // Chown and chmod of someone else's file.
        for set in [
            SetAttr {
                uid: Some(NOBODY),
                ..Default::default()
            },
            SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
            SetAttr {
                mtime: Some(SetTime::At(Timespec { secs: 5, nsecs: 0 })),
                ..Default::default()
            },
        ] {
            assert_eq!(
                e.handle(&nobody(), FsRequest::SetAttr { ino: s.ino, set }),
                Err(libc::EPERM)
            );
        }
        // Privileged xattr namespaces are refused for non-root callers, even
        // on their own file.
        let pubdir = dir.path().join("pub");
        std::fs::create_dir(&pubdir).unwrap();
        std::fs::set_permissions(&pubdir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = entry(lookup(&e, &nobody(), ROOT_INO, "pub"));
        let (mine, h) = created(create(&e, &nobody(), p.ino, "mine", 0o644));
        assert_eq!((mine.uid, mine.gid), (NOBODY, NOBODY));
        e.handle(&nobody(), FsRequest::Release { fh: h }).unwrap();
        for name in ["trusted.x", "security.capability"] {
            let r = e.handle(
                &nobody(),
                FsRequest::SetXattr {
                    ino: mine.ino,
                    name: name.as_bytes().to_vec(),
                    value: vec![1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    flags: 0,
                },
            );
            assert!(
                matches!(r, Err(libc::EPERM) | Err(libc::EINVAL)),
                "{name}: {r:?}"
            );
        }
        // ...and the thread is root again afterwards.
        assert_eq!(std::fs::read(&secret).unwrap(), b"s");
    }

    #[test]
    fn concurrent_callers_keep_their_own_identity() {
        if !is_root() {
            return;
        }
        let (dir, e) = setup();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"s").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = entry(lookup(&e, &root(), ROOT_INO, "secret")).ino;
        std::thread::scope(|scope| {
            for t in 0..8 {
                let e = &e;
                scope.spawn(move || {
                    let (c, want) = if t % 2 == 0 {
                        (root(), Ok(FsReply::Ok))
                    } else {
                        (nobody(), Err(libc::EACCES))
                    };
                    for _ in 0..300 {
                        let r = e.handle(
                            &c,
                            FsRequest::Access {
                                ino: s,
                                mask: libc::R_OK,
                            },
                        );
                        assert_eq!(r, want);
                    }
                });
            }
        });
    }

    #[test]
    fn root_squash_makes_root_nobody() {
        if !is_root() {
            return;
        }
        let (dir, e) = setup_with(|_, cfg| cfg.root_squash = true);
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"s").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = entry(lookup(&e, &root(), ROOT_INO, "secret"));
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Open {
                    ino: s.ino,
                    flags: libc::O_RDONLY
                }
            ),
            Err(libc::EACCES)
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let (a, _) = created(create(&e, &root(), ROOT_INO, "made", 0o644));
        assert_eq!((a.uid, a.gid), (NOBODY, NOBODY));
        // Non-root callers are untouched.
        let c = Creds {
            uid: 1000,
            gid: 1000,
            groups: vec![],
            pid: 3,
        };
        let (a, _) = created(create(&e, &c, ROOT_INO, "made2", 0o644));
        assert_eq!((a.uid, a.gid), (1000, 1000));
    }

    #[test]
    fn read_only_export() {
        let (dir, e) = setup_with(|_, cfg| cfg.read_only = true);
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        let f = entry(lookup(&e, &root(), ROOT_INO, "f"));
        let ro = Err(libc::EROFS);
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
            assert_eq!(e.handle(&root(), FsRequest::Open { ino: f.ino, flags }), ro);
            assert_eq!(e.open_file(&root(), f.ino, flags).unwrap_err(), libc::EROFS);
        }
        let h = fh(e.handle(
            &root(),
            FsRequest::Open {
                ino: f.ino,
                flags: libc::O_RDONLY,
            },
        ));
        assert_eq!(
            data(e.handle(
                &root(),
                FsRequest::Read {
                    fh: h,
                    offset: 0,
                    size: 10
                }
            )),
            b"data"
        );
        let n = || b"n".to_vec();
        let ops = vec![
            FsRequest::SetAttr {
                ino: f.ino,
                set: SetAttr::default(),
            },
            FsRequest::Mknod {
                parent: ROOT_INO,
                name: n(),
                mode: libc::S_IFREG | 0o644,
                rdev: 0,
                umask: 0,
            },
            FsRequest::Mkdir {
                parent: ROOT_INO,
                name: n(),
                mode: 0o755,
                umask: 0,
            },
            FsRequest::Unlink {
                parent: ROOT_INO,
                name: b"f".to_vec(),
            },
            FsRequest::Rmdir {
                parent: ROOT_INO,
                name: n(),
            },
            FsRequest::Symlink {
                parent: ROOT_INO,
                name: n(),
                target: n(),
            },
            FsRequest::Rename {
                parent: ROOT_INO,
                name: b"f".to_vec(),
                new_parent: ROOT_INO,
                new_name: n(),
                flags: 0,
            },
            FsRequest::Link {
                ino: f.ino,
                new_parent: ROOT_INO,
                new_name: n(),
            },
            FsRequest::Create {
                parent: ROOT_INO,
                name: n(),
                mode: 0o644,
                umask: 0,
                flags: libc::O_RDONLY,
            },
            FsRequest::Write {
                fh: h,
                offset: 0,
                data: n(),
            },
            FsRequest::SetXattr {
                ino: f.ino,
                name: b"user.x".to_vec(),
                value: n(),
                flags: 0,
            },
            FsRequest::RemoveXattr {
                ino: f.ino,
                name: b"user.x".to_vec(),
            },
            FsRequest::Fallocate {
                fh: h,
                offset: 0,
                length: 10,
                mode: 0,
            },
        ];
        for op in ops {
            assert_eq!(e.handle(&root(), op.clone()), ro, "{op:?}");
        }
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Access {
                    ino: f.ino,
                    mask: libc::W_OK
                }
            ),
            ro
        );
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"data");
        assert!(!dir.path().join("n").exists());
    }

    #[test]
    fn hidden_paths_look_absent() {
        let (dir, e) = setup_with(|root, cfg| {
            std::fs::create_dir(root.join("hidden")).unwrap();
            std::fs::create_dir(root.join("shown")).unwrap();
            cfg.hide = vec![root.join("hidden"), root.join("shown/later")];
        });
        assert_eq!(lookup(&e, &root(), ROOT_INO, "hidden"), Err(libc::ENOENT));
        let names: Vec<Vec<u8>> = read_all_dir(&e, &root(), ROOT_INO, 4096)
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert!(names.contains(&b"shown".to_vec()));
        assert!(!names.contains(&b"hidden".to_vec()));
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Rmdir {
                    parent: ROOT_INO,
                    name: b"hidden".to_vec()
                }
            ),
            Err(libc::ENOENT)
        );
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Rename {
                    parent: ROOT_INO,
                    name: b"shown".to_vec(),
                    new_parent: ROOT_INO,
                    new_name: b"hidden".to_vec(),
                    flags: 0
                }
            ),
            Err(libc::EACCES)
        );
        assert!(dir.path().join("hidden").is_dir());
        // A hide path that did not exist at open time is hidden once created.
        let shown = entry(lookup(&e, &root(), ROOT_INO, "shown"));
        std::fs::create_dir(dir.path().join("shown/later")).unwrap();
        assert_eq!(lookup(&e, &root(), shown.ino, "later"), Err(libc::ENOENT));
        // A bind of procfs is never served.
        let procdir = dir.path().join("shown/proc");
        std::fs::create_dir(&procdir).unwrap();
        if is_root()
            && nix::mount::mount(
                Some("proc"),
                &procdir,
                Some("proc"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .is_ok()
        {
            let r = lookup(&e, &root(), shown.ino, "proc");
            let _ = nix::mount::umount2(&procdir, nix::mount::MntFlags::MNT_DETACH);
            eprintln!("note: lookup of a procfs mount gave {r:?}");
            assert_eq!(r, Err(libc::ENOENT));
        }
    }

    #[test]
    fn forget_frees_the_inode_but_the_id_stays_the_files() {
        let (dir, e) = setup();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let a = entry(lookup(&e, &root(), ROOT_INO, "f"));
        assert_eq!(entry(lookup(&e, &root(), ROOT_INO, "f")).ino, a.ino);
        let forget = |n| {
            e.handle(
                &root(),
                FsRequest::Forget {
                    items: vec![(a.ino, n), (ROOT_INO, 100), (999_999, 1)],
                },
            )
        };
        assert_eq!(forget(1), Ok(FsReply::Ok));
        assert_eq!(
            entry(e.handle(&root(), FsRequest::GetAttr { ino: a.ino })).ino,
            a.ino
        );
        assert_eq!(forget(1), Ok(FsReply::Ok));
        assert_eq!(
            e.handle(&root(), FsRequest::GetAttr { ino: a.ino }),
            Err(libc::ESTALE)
        );
        assert_eq!(lookup(&e, &root(), a.ino, "x"), Err(libc::ESTALE));
        // A file keeps its id for the life of the export.
        let b = entry(lookup(&e, &root(), ROOT_INO, "f"));
        assert_eq!(b.ino, a.ino);
        std::fs::write(dir.path().join("g"), b"").unwrap();
        assert!(entry(lookup(&e, &root(), ROOT_INO, "g")).ino > a.ino);
        // The root is never forgotten.
        assert!(e
            .handle(&root(), FsRequest::GetAttr { ino: ROOT_INO })
            .is_ok());
        assert_eq!(
            e.handle(&root(), FsRequest::GetAttr { ino: 0 }),
            Err(libc::ESTALE)
        );
    }

    #[test]
    fn mknod_mkdir_symlink_unlink_rmdir() {
        let (dir, e) = setup();
        let fifo = entry(e.handle(
            &root(),
            FsRequest::Mknod {
                parent: ROOT_INO,
                name: b"fifo".to_vec(),
                mode: libc::S_IFIFO | 0o666,
                rdev: 0,
                umask: 0o022,
            },
        ));
        assert_eq!(fifo.kind, FileKind::Fifo);
        assert_eq!(fifo.perm, 0o644);
        // Opening it would block the server thread: refused instead.
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Open {
                    ino: fifo.ino,
                    flags: libc::O_RDONLY
                }
            ),
            Err(libc::ENXIO)
        );
        assert_eq!(
            create(&e, &root(), ROOT_INO, "fifo", 0o644),
            Err(libc::ENXIO)
        );
        let reg = entry(e.handle(
            &root(),
            FsRequest::Mknod {
                parent: ROOT_INO,
                name: b"reg".to_vec(),
                mode: 0o600,
                rdev: 0,
                umask: 0,
            },
        ));
        assert_eq!(reg.kind, FileKind::File);
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Mknod {
                    parent: ROOT_INO,
                    name: b"d".to_vec(),
                    mode: libc::S_IFDIR | 0o755,
                    rdev: 0,
                    umask: 0
                }
            ),
            Err(libc::EINVAL)
        );
        let d = entry(e.handle(
            &root(),
            FsRequest::Mkdir {
                parent: ROOT_INO,
                name: b"d".to_vec(),
                mode: 0o1777,
                umask: 0o027,
            },
        ));
        assert_eq!((d.kind, d.perm), (FileKind::Dir, 0o1750));
        let s = entry(e.handle(
            &root(),
            FsRequest::Symlink {
                parent: d.ino,
                name: b"s".to_vec(),
                target: b"../../../etc/passwd".to_vec(),
            },
        ));
        assert_eq!(s.kind, FileKind::Symlink);
        assert_eq!(
            std::fs::read_link(dir.path().join("d/s")).unwrap(),
            Path::new("../../../etc/passwd")
        );
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Rmdir {
                    parent: ROOT_INO,
                    name: b"d".to_vec()
                }
            ),
            Err(libc::ENOTEMPTY)
        );
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Unlink {
                    parent: d.ino,
                    name: b"s".to_vec()
                }
            ),
            Ok(FsReply::Ok)
        );
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Rmdir {
                    parent: ROOT_INO,
                    name: b"d".to_vec()
                }
            ),
            Ok(FsReply::Ok)
        );
        assert!(!dir.path().join("d").exists());
        // The removed directory's id still answers (the fd pins it).
        assert!(e.handle(&root(), FsRequest::GetAttr { ino: d.ino }).is_ok());
        assert!(matches!(
            e.handle(&root(), FsRequest::StatFs { ino: ROOT_INO }),
            Ok(FsReply::StatFs(StatFs { bsize, namelen, .. })) if bsize > 0 && namelen > 0
        ));
    }

    fn xattr_supported(dir: &Path) -> bool {
        let probe = dir.join(".xattr-probe");
        std::fs::write(&probe, b"").unwrap();
        let p = CString::new(probe.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                c"user.probe".as_ptr(),
                c"".as_ptr().cast(),
                0,
                0,
            )
        };
        let ok = r == 0 || last_errno() != libc::EOPNOTSUPP;
        std::fs::remove_file(&probe).unwrap();
        ok
    }

    fn xattr_set(path: &Path, name: &str, value: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: valid C strings and buffer.
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    }

    #[test]
    fn xattrs_on_a_file() {
        let (dir, e) = setup();
        if !xattr_supported(dir.path()) {
            eprintln!("note: user xattrs unsupported on the tempdir filesystem, skipping");
            return;
        }
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let f = entry(lookup(&e, &root(), ROOT_INO, "f")).ino;
        let name = || b"user.test".to_vec();
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::SetXattr {
                    ino: f,
                    name: name(),
                    value: b"value!".to_vec(),
                    flags: 0
                }
            ),
            Ok(FsReply::Ok)
        );
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::SetXattr {
                    ino: f,
                    name: name(),
                    value: b"v".to_vec(),
                    flags: libc::XATTR_CREATE
                }
            ),
            Err(libc::EEXIST)
        );
        let get = |size| {
            e.handle(
                &root(),
                FsRequest::GetXattr {
                    ino: f,
                    name: name(),
                    size,
                },
            )
        };
        assert_eq!(get(0), Ok(FsReply::XattrSize(6)));
        assert_eq!(get(3), Err(libc::ERANGE));
        assert_eq!(get(100), Ok(FsReply::Data(b"value!".to_vec())));
        let list = |size| e.handle(&root(), FsRequest::ListXattr { ino: f, size });
        let Ok(FsReply::XattrSize(n)) = list(0) else {
            panic!()
        };
        assert!(n >= 10);
        let l = data(list(n));
        assert!(l.split(|&b| b == 0).any(|n| n == b"user.test"), "{l:?}");
        assert_eq!(list(1), Err(libc::ERANGE));
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::RemoveXattr {
                    ino: f,
                    name: name()
                }
            ),
            Ok(FsReply::Ok)
        );
        assert_eq!(get(100), Err(libc::ENODATA));
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::RemoveXattr {
                    ino: f,
                    name: name()
                }
            ),
            Err(libc::ENODATA)
        );
        // Directories work the same way.
        let r = e.handle(
            &root(),
            FsRequest::SetXattr {
                ino: ROOT_INO,
                name: name(),
                value: b"d".to_vec(),
                flags: 0,
            },
        );
        assert_eq!(r, Ok(FsReply::Ok));
    }

    #[test]
    fn fallocate_extends() {
        let (_dir, e) = setup();
        let (a, h) = created(create(&e, &root(), ROOT_INO, "f", 0o644));
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Fallocate {
                    fh: h,
                    offset: 0,
                    length: 1 << 20,
                    mode: 0
                }
            ),
            Ok(FsReply::Ok)
        );
        let g = entry(e.handle(&root(), FsRequest::GetAttr { ino: a.ino }));
        assert_eq!(g.size, 1 << 20);
        assert!(g.blocks >= 2048);
        assert_eq!(
            e.handle(
                &root(),
                FsRequest::Fallocate {
                    fh: h,
                    offset: u64::MAX,
                    length: 1,
                    mode: 0
                }
            ),
            Err(libc::EINVAL)
        );
    }

    /// xorshift64*, enough for junk.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn bytes(&mut self) -> Vec<u8> {
            // Half short names that often exist (".", "..", "a", "ab.")...
            if self.next() & 1 == 0 {
                let len = 1 + (self.next() % 3) as usize;
                return (0..len)
                    .map(|_| b"ab."[(self.next() % 3) as usize])
                    .collect();
            }
            // ...half junk.
            let len = (self.next() % 300) as usize;
            let alphabet = b"./\0a.b/..\xff~";
            (0..len)
                .map(|_| {
                    let r = self.next();
                    if r % 3 == 1 {
                        alphabet[(r >> 8) as usize % alphabet.len()]
                    } else {
                        (r >> 16) as u8
                    }
                })
                .collect()
        }
    }

    #[test]
    fn junk_never_panics_or_escapes() {
        let (dir, e) = setup();
        let parent = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let before: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let sub = entry(lookup(&e, &root(), ROOT_INO, "sub")).ino;
        let mut oks = 0;
        for i in 0..3000 {
            let name = rng.bytes();
            let ino = [ROOT_INO, sub, rng.next(), rng.next() % 16][i % 4];
            let fh = rng.next() % 8;
            let creds = if i % 3 == 0 { nobody() } else { root() };
            let ops = [
                FsRequest::Lookup {
                    parent: ino,
                    name: name.clone(),
                },
                FsRequest::Mknod {
                    parent: ino,
                    name: name.clone(),
                    mode: rng.next() as u32,
                    rdev: rng.next(),
                    umask: 0,
                },
                FsRequest::Mkdir {
                    parent: ino,
                    name: name.clone(),
                    mode: rng.next() as u32,
                    umask: rng.next() as u32,
                },
                FsRequest::Symlink {
                    parent: ino,
                    name: name.clone(),
                    target: rng.bytes(),
                },
                FsRequest::Create {
                    parent: ino,
                    name: name.clone(),
                    mode: rng.next() as u32,
                    umask: 0,
                    flags: rng.next() as i32,
                },
                FsRequest::Open {
                    ino,
                    flags: rng.next() as i32,
                },
                FsRequest::Read {
                    fh,
                    offset: rng.next(),
                    size: rng.next() as u32,
                },
                FsRequest::Write {
                    fh,
                    offset: rng.next() >> (rng.next() % 64),
                    data: name.clone(),
                },
                FsRequest::ReadDir {
                    fh,
                    offset: rng.next() >> (rng.next() % 64),
                    size: rng.next() as u32,
                },
                FsRequest::OpenDir { ino },
                FsRequest::GetXattr {
                    ino,
                    name: name.clone(),
                    size: rng.next() as u32,
                },
                FsRequest::SetXattr {
                    ino,
                    name: name.clone(),
                    value: rng.bytes(),
                    flags: rng.next() as i32,
                },
                FsRequest::ListXattr {
                    ino,
                    size: rng.next() as u32,
                },
                FsRequest::SetAttr {
                    ino,
                    set: SetAttr {
                        size: Some(rng.next() >> (rng.next() % 64)),
                        atime: Some(SetTime::At(Timespec {
                            secs: rng.next() as i64,
                            nsecs: rng.next() as u32,
                        })),
                        ..Default::default()
                    },
                },
                FsRequest::Rename {
                    parent: ino,
                    name: name.clone(),
                    new_parent: ROOT_INO,
                    new_name: rng.bytes(),
                    flags: rng.next() as u32,
                },
                FsRequest::Unlink {
                    parent: ino,
                    name: name.clone(),
                },
                FsRequest::Access {
                    ino,
                    mask: rng.next() as i32,
                },
                FsRequest::Fallocate {
                    fh,
                    offset: rng.next(),
                    length: rng.next(),
                    mode: rng.next() as i32,
                },
                FsRequest::ReadLink { ino },
                FsRequest::Forget {
                    items: vec![(rng.next() % 16, rng.next())],
                },
                FsRequest::Release { fh: rng.next() },
            ];
            let op = ops[(rng.next() as usize) % ops.len()].clone();
            if e.handle(&creds, op).is_ok() {
                oks += 1;
            }
            let _ = e.open_file(&creds, ino, rng.next() as i32);
        }
        eprintln!("note: {oks} of 3000 junk requests succeeded");
        assert!(oks > 100);
        let after: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
        assert_eq!(before.len(), after.len());
        // Whatever was made is inside the export, and the server still works.
        assert!(e
            .handle(&root(), FsRequest::GetAttr { ino: ROOT_INO })
            .is_ok());
        assert!(read_all_dir(&e, &root(), ROOT_INO, 4096).len() >= 3);
    }
}
