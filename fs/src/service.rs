//! The file service of one node: every file operation `/mosix` can ask of
//! the node that serves a file, with typed arguments and results.
//!
//! [`FileService`] is the seam between the namespace (which decides *which*
//! node serves an inode) and the ways of reaching that node:
//!
//! ```text
//! MosixFs ──► dyn FileService ─┬─ LocalService  (this node: the Export, in-process)
//!                              ├─ RemoteService (daemon: QUIC request to the node)
//!                              ├─ cache decorator (later: leases over a RemoteService)
//!                              └─ Faulty        (tests: fails on a countdown)
//! ```
//!
//! The wire enum (`FsRequest`/`FsReply`) appears only where a service meets
//! the transport: encoded once in the remote service, decoded once in
//! `Export::handle` on the serving node.
//!
//! Ids are only meaningful within one run of the serving daemon, so every
//! call but [`FileService::root`] names the run it expects ([`At::run`]). A
//! service whose node is in another run answers [`FsError::Stale`] before
//! doing anything.
use std::sync::Arc;

use async_trait::async_trait;
use mosix_proto::fs::{Attr, Creds, DirEntry, RemoteFh, RemoteIno, SetAttr, StatFs};

use crate::error::FsResult;

/// One run of a serving daemon (its export's epoch).
pub type Run = u64;

/// Which client node a request comes from, as the serving node knows it:
/// the name proven by the client's certificate and the run of the client's
/// daemon. Everything a client holds on a serving node (handles, lookup
/// references, locks) belongs to its `ClientId`, and goes when that client
/// is declared dead or comes back with a new run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    pub node: Arc<str>,
    pub run: u64,
}

/// The caller of one operation on the serving node: the client node and the
/// process's credentials there.
#[derive(Debug, Clone)]
pub struct Who {
    pub client: ClientId,
    pub creds: Creds,
}

/// The caller of one operation as the namespace sends it: its credentials,
/// and the serving node's run its ids come from.
#[derive(Debug, Clone)]
pub struct At {
    pub run: Run,
    pub creds: Creds,
}

/// getxattr/listxattr answer the size when asked with size 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

/// F_GETLK's answer: the first conflicting lock, or `typ == F_UNLCK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockInfo {
    pub start: u64,
    pub end: u64,
    pub typ: i32,
    pub pid: u32,
}

/// A byte-range lock request on the serving node. Locks belong to the
/// calling client node (from its session, never from the request) and to
/// `owner`, the kernel's lock owner there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub owner: u64,
    pub start: u64,
    /// Inclusive; `i64::MAX` or more means "to the end of the file".
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    pub pid: u32,
}

/// How the kernel may cache the data of one open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCache {
    /// Within the open only: pages read are kept until the next open
    /// (close-to-open), the kernel's default. This node's own files.
    Plain,
    /// Across opens (`FOPEN_KEEP_CACHE`): a lease says nobody else changes
    /// the file without recalling it first.
    Keep,
    /// Not at all (`FOPEN_DIRECT_IO`): another node may change it at any
    /// time, so every read asks the serving node.
    Direct,
}

/// Every file operation one node serves. Methods mirror the FUSE operations
/// they serve; each fails with the serving kernel's errno
/// ([`crate::FsError::Os`]) or with why the node could not be asked.
#[async_trait]
pub trait FileService: Send + Sync + 'static {
    /// First contact: the serving node's run and its export root.
    async fn root(&self, creds: &Creds) -> FsResult<(Run, Attr)>;
    async fn lookup(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<Attr>;
    /// Drops lookup references; nobody waits for the answer.
    async fn forget(&self, run: Run, items: Vec<(RemoteIno, u64)>) -> FsResult<()>;
    async fn getattr(&self, at: &At, ino: RemoteIno) -> FsResult<Attr>;
    async fn setattr(&self, at: &At, ino: RemoteIno, set: SetAttr) -> FsResult<Attr>;
    async fn readlink(&self, at: &At, ino: RemoteIno) -> FsResult<Vec<u8>>;
    async fn mknod(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        rdev: u64,
        umask: u32,
    ) -> FsResult<Attr>;
    async fn mkdir(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Attr>;
    async fn unlink(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()>;
    async fn rmdir(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()>;
    async fn symlink(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Attr>;
    async fn rename(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        new_parent: RemoteIno,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()>;
    async fn link(
        &self,
        at: &At,
        ino: RemoteIno,
        new_parent: RemoteIno,
        new_name: &[u8],
    ) -> FsResult<Attr>;
    async fn open(&self, at: &At, ino: RemoteIno, flags: i32) -> FsResult<RemoteFh>;
    async fn create(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Attr, RemoteFh)>;
    async fn read(&self, at: &At, fh: RemoteFh, offset: u64, size: u32) -> FsResult<Vec<u8>>;
    async fn write(&self, at: &At, fh: RemoteFh, offset: u64, data: Vec<u8>) -> FsResult<u32>;
    async fn flush(&self, at: &At, fh: RemoteFh) -> FsResult<()>;
    async fn fsync(&self, at: &At, fh: RemoteFh, datasync: bool) -> FsResult<()>;
    /// Closing cannot fail for the kernel; a node that is gone has dropped
    /// the handle anyway.
    async fn release(&self, run: Run, fh: RemoteFh);
    async fn opendir(&self, at: &At, ino: RemoteIno) -> FsResult<RemoteFh>;
    async fn readdir(
        &self,
        at: &At,
        fh: RemoteFh,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<DirEntry>>;
    async fn releasedir(&self, run: Run, fh: RemoteFh);
    async fn statfs(&self, at: &At, ino: RemoteIno) -> FsResult<StatFs>;
    async fn setxattr(
        &self,
        at: &At,
        ino: RemoteIno,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> FsResult<()>;
    async fn getxattr(&self, at: &At, ino: RemoteIno, name: &[u8], size: u32) -> FsResult<Xattr>;
    async fn listxattr(&self, at: &At, ino: RemoteIno, size: u32) -> FsResult<Xattr>;
    async fn removexattr(&self, at: &At, ino: RemoteIno, name: &[u8]) -> FsResult<()>;
    async fn fallocate(
        &self,
        at: &At,
        fh: RemoteFh,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()>;
    async fn getlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<LockInfo>;
    /// F_SETLK: never waits; a conflict is `EAGAIN` (F_SETLKW is retried
    /// by the caller, so no serving thread ever blocks on a lock).
    async fn setlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<()>;
    async fn access(&self, at: &At, ino: RemoteIno, mask: i32) -> FsResult<()>;

    /// How long the kernel may keep the attributes of `ino` of run `run`
    /// that the last call returned (none unless a lease covers them).
    fn kernel_ttl(&self, _run: Run, _ino: RemoteIno) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// How long the kernel may keep the name `name` in `parent` (it names
    /// `child`).
    fn entry_ttl(
        &self,
        _run: Run,
        _parent: RemoteIno,
        _name: &[u8],
        _child: RemoteIno,
    ) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// How the kernel may cache the data of the open `fh`.
    fn open_cache(&self, _fh: RemoteFh) -> OpenCache {
        OpenCache::Plain
    }
}
