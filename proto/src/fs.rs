//! File operations between a node's `/mosix` mount (the client) and the node
//! that exports the file (the server). One request per operation; the server
//! runs it with the caller's credentials.
//!
//! Files are named by [`RemoteIno`]: an id the serving node gives each file
//! (by its st_dev and st_ino) and keeps for the life of the serving daemon.
//! A lookup takes a reference that [`FsRequest::Forget`] drops; an id with no
//! reference left gives `ESTALE` until it is looked up again. The export root
//! is always [`ROOT_INO`]. Responses carry the daemon's epoch, so ids from
//! an earlier run are never mistaken for new ones.
use serde::{Deserialize, Serialize};

pub type RemoteIno = u64;
/// Open file or directory handle on the serving node.
pub type RemoteFh = u64;

pub const ROOT_INO: RemoteIno = 1;

/// Who asks: the caller's identity as the kernel reported it on the client
/// node, plus its supplementary groups (read from the client's /proc).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Caller's pid on the client node (for logs and locks; not an identity).
    pub pid: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timespec {
    pub secs: i64,
    pub nsecs: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// What stat(2) says about a file on the serving node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// The serving node's id for this file.
    pub ino: RemoteIno,
    /// st_dev and st_ino on the serving node.
    pub dev: u64,
    pub st_ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (mode & 0o7777).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub blksize: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Timespec),
}

/// A setattr: each `Some` field is changed, in the order chown, chmod,
/// truncate, utimens (as the kernel's own setattr does).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// The open handle the change came through (ftruncate), if any.
    pub fh: Option<RemoteFh>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub kind: FileKind,
    /// The serving node's id for the entry, as lookup would give it.
    pub ino: RemoteIno,
    /// Cookie to pass as `offset` to continue after this entry.
    pub next_offset: u64,
}

/// A POSIX byte-range lock as FUSE gives it: `end` is inclusive, and
/// `i64::MAX` (the kernel's OFFSET_MAX) or more means "to the end of the
/// file". Locks belong to (client node, `owner`): the node the serving side
/// authenticated the request from (never one the request names, which any
/// node could forge), and the kernel's lock owner of the calling process.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LockRange {
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    /// The calling process on the client (reported back by GetLk).
    pub pid: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FsRequest {
    /// Looks `name` (one path component, never `/`, `.` or `..`) up in
    /// `parent`. Each successful lookup adds one reference to the result.
    Lookup {
        parent: RemoteIno,
        name: Vec<u8>,
    },
    /// Drops `nlookup` references; the server frees the id at zero.
    Forget {
        items: Vec<(RemoteIno, u64)>,
    },
    GetAttr {
        ino: RemoteIno,
    },
    SetAttr {
        ino: RemoteIno,
        set: SetAttr,
    },
    ReadLink {
        ino: RemoteIno,
    },
    /// Regular files, fifos, sockets and device nodes. `mode` includes the
    /// file type bits; `umask` is the caller's.
    Mknod {
        parent: RemoteIno,
        name: Vec<u8>,
        mode: u32,
        rdev: u64,
        umask: u32,
    },
    Mkdir {
        parent: RemoteIno,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
    },
    Unlink {
        parent: RemoteIno,
        name: Vec<u8>,
    },
    Rmdir {
        parent: RemoteIno,
        name: Vec<u8>,
    },
    Symlink {
        parent: RemoteIno,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    /// `flags` are renameat2 flags (RENAME_NOREPLACE, RENAME_EXCHANGE).
    Rename {
        parent: RemoteIno,
        name: Vec<u8>,
        new_parent: RemoteIno,
        new_name: Vec<u8>,
        flags: u32,
    },
    Link {
        ino: RemoteIno,
        new_parent: RemoteIno,
        new_name: Vec<u8>,
    },
    /// `flags` are open(2) flags (O_CREAT and O_EXCL never appear here).
    Open {
        ino: RemoteIno,
        flags: i32,
    },
    Create {
        parent: RemoteIno,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        flags: i32,
    },
    Read {
        fh: RemoteFh,
        offset: u64,
        size: u32,
    },
    Write {
        fh: RemoteFh,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Flush {
        fh: RemoteFh,
    },
    Fsync {
        fh: RemoteFh,
        datasync: bool,
    },
    Release {
        fh: RemoteFh,
    },
    OpenDir {
        ino: RemoteIno,
    },
    /// Entries after the cookie `offset` (0 = from the start), as many as fit
    /// in about `size` bytes of names.
    ReadDir {
        fh: RemoteFh,
        offset: u64,
        size: u32,
    },
    ReleaseDir {
        fh: RemoteFh,
    },
    StatFs {
        ino: RemoteIno,
    },
    SetXattr {
        ino: RemoteIno,
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: i32,
    },
    /// `size` 0 asks for the value's size only.
    GetXattr {
        ino: RemoteIno,
        name: Vec<u8>,
        size: u32,
    },
    ListXattr {
        ino: RemoteIno,
        size: u32,
    },
    RemoveXattr {
        ino: RemoteIno,
        name: Vec<u8>,
    },
    Fallocate {
        fh: RemoteFh,
        offset: u64,
        length: u64,
        mode: i32,
    },
    /// access(2) check of `mask` (R_OK, W_OK, X_OK, F_OK) for the caller.
    /// F_GETLK: the first lock that would conflict with `typ` over
    /// [start, end] for lock owner `owner` of the calling client node.
    GetLk {
        ino: RemoteIno,
        lock: LockRange,
    },
    /// F_SETLK: sets or clears (`F_UNLCK`) a lock without waiting; a
    /// conflicting lock gives `EAGAIN`. Blocking locks (F_SETLKW) are retried
    /// by the client, so no serving thread ever waits on a lock.
    SetLk {
        ino: RemoteIno,
        lock: LockRange,
    },
    Access {
        ino: RemoteIno,
        mask: i32,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FsReply {
    Ok,
    /// Lookup, Mknod, Mkdir, Symlink, Link: the file, with one new reference.
    Entry(Attr),
    Attr(Attr),
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Written(u32),
    Opened {
        fh: RemoteFh,
    },
    Created {
        attr: Attr,
        fh: RemoteFh,
    },
    Entries(Vec<DirEntry>),
    StatFs(StatFs),
    /// GetXattr/ListXattr with size 0.
    XattrSize(u32),
    /// GetLk: the conflicting lock, or `typ == F_UNLCK` if there is none.
    Lock {
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
    },
    /// `reply`, with the leases the serving node granted the asking node
    /// on the way (see [`crate::lease`]): on the file a getattr, open or
    /// create names, and on a lookup's directory and its result.
    Leased {
        grants: Vec<(RemoteIno, crate::lease::Grant)>,
        reply: Box<FsReply>,
    },
}

/// The outcome of a file operation: a reply, or the errno the operation
/// failed with on the serving node.
pub type FsResult = Result<FsReply, i32>;
