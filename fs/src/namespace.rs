//! The `/mosix` namespace, without FUSE: what each operation means and which
//! node serves it. The FUSE adapter (`fuse.rs`) only translates to and from
//! this.
//!
//! ```text
//! /mosix/             virtual, read-only                  (root.rs)
//!   nodes/<node>/     the export of each live node        (served by that node's FileService)
//!   here  -> nodes/<this node>
//!   home  -> nodes/<home node of the calling process>
//!   proc -> the process view's own mount (mosix_procview)
//!   cluster/          members and their load              (clusterdir.rs)
//! ```
//!
//! Every operation classifies its inode number once ([`crate::ino`]) and
//! goes to the part of the tree that owns it. Files of nodes go to the
//! [`FileService`] of the node that serves them: this node's export
//! in-process, or another node's over the transport, with no difference
//! here.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mosix_procview::node::LocalNode;
use mosix_proto::fs::{Attr, RemoteFh, RemoteIno};

use crate::attr::{Change, Entry, FsStats, ListEntry, NodeAttr};
use crate::callers::Caller;
use crate::clusterdir::ClusterDir;
use crate::error::{FsError, FsResult};
use crate::export::Export;
use crate::ino::{self, Ino};
use crate::invalidate::Invalidator;
use crate::local::LocalService;
use crate::nodes::{Located, Nodes};
use crate::posix_locks::LockOwners;
use crate::reach::{ClusterView, Connector, Reach};
use crate::service::{At, FileService, Lock, LockInfo, OpenCache, Run, Xattr};
use crate::snapshots::Snapshots;
use crate::ttl;

/// How often a blocked F_SETLKW asks again: starting fast for short
/// critical sections, backing off for long ones.
const LOCK_RETRY_MIN: Duration = Duration::from_millis(5);
const LOCK_RETRY_MAX: Duration = Duration::from_millis(200);

/// How an open is served: the handle, and what the kernel may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub fh: u64,
    /// Generated content: its size is unknown until read, so the kernel
    /// must not cache or trust st_size (lxcfs does the same).
    pub direct_io: bool,
    /// Nothing to flush and no locks: close costs no round trip.
    pub noflush: bool,
    /// The kernel may keep the file's pages across opens: a lease covers
    /// them.
    pub keep_cache: bool,
}

/// A node file bound to the service that serves it.
struct Bound {
    svc: Arc<dyn FileService>,
    at: At,
    slot: usize,
}

pub struct MosixFs {
    reach: Arc<Reach>,
    local: Arc<LocalService>,
    nodes: Nodes,
    cluster: ClusterDir,
    snapshots: Snapshots,
    pub(crate) locks: LockOwners,
    inval: std::sync::OnceLock<Arc<dyn Invalidator>>,
}

impl MosixFs {
    pub fn new(
        self_name: String,
        export: Arc<Export>,
        local_node: Arc<LocalNode>,
        view: Arc<dyn ClusterView>,
        connect: Arc<dyn Connector>,
    ) -> Self {
        let local = Arc::new(LocalService::new(export.clone(), &self_name));
        let reach = Arc::new(Reach::new(
            self_name,
            local.clone(),
            local_node,
            view,
            connect,
        ));
        MosixFs {
            cluster: ClusterDir::new(reach.clone()),
            reach,
            local,
            nodes: Nodes::default(),
            snapshots: Snapshots::default(),
            locks: LockOwners::default(),
            inval: std::sync::OnceLock::new(),
        }
    }

    /// The path to the kernel's caches (set once the mount exists).
    pub fn set_invalidator(&self, inval: Arc<dyn Invalidator>) {
        let _ = self.inval.set(inval);
    }

    /// Makes `/mosix/proc` a symlink to `target`, where the daemon mounted
    /// the process view (a mount of its own, so that `umount /mosix` keeps
    /// working: a mount inside /mosix would make it busy).
    pub fn set_proc_link(&self, target: &std::path::Path) {
        use std::os::unix::ffi::OsStrExt;
        let _ = self
            .reach
            .proc_link
            .set(target.as_os_str().as_bytes().to_vec());
    }

    pub fn self_name(&self) -> &str {
        &self.reach.self_name
    }

    pub(crate) fn local(&self) -> &LocalService {
        &self.local
    }

    pub(crate) fn creds(&self, c: Caller) -> mosix_proto::fs::Creds {
        self.reach.creds(c)
    }

    /// The id of `ino` in this node's export, if it is one of this node's
    /// files (which the kernel may then read and write directly).
    pub fn local_id(&self, ino: u64) -> Option<RemoteIno> {
        match ino::classify(ino) {
            Ino::Node { slot, id } => self
                .nodes
                .locate(slot)
                .ok()
                .filter(|l| self.reach.is_self(&l.node))
                .map(|_| id),
            _ => None,
        }
    }

    /// Whether the work on `ino` stays on this node: no network, only a few
    /// syscalls or memory, so it can be done on the thread that asks. The
    /// one place that decides it.
    pub fn runs_here(&self, ino: u64) -> bool {
        match ino::classify(ino) {
            Ino::Root(_) | Ino::Cluster(_) => true,
            Ino::Node { .. } => self.local_id(ino).is_some(),
            Ino::Unknown => true,
        }
    }

    /// [`Self::runs_here`] for a lookup of `name` in `parent`.
    pub fn lookup_runs_here(&self, parent: u64, name: &[u8]) -> bool {
        match ino::classify(parent) {
            Ino::Root(ino::ROOT) => true,
            Ino::Root(ino::NODES) => self.reach.is_self_bytes(name),
            _ => self.runs_here(parent),
        }
    }

    fn node_attr(slot: usize, a: &Attr) -> NodeAttr {
        NodeAttr {
            ino: ino::node_file(slot, a.ino),
            size: a.size,
            blocks: a.blocks,
            atime: crate::attr::to_systime(a.atime),
            mtime: crate::attr::to_systime(a.mtime),
            ctime: crate::attr::to_systime(a.ctime),
            kind: a.kind.into(),
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: a.blksize,
        }
    }

    /// First contact with node `node`'s export: its root, in the slot of
    /// the run that answered.
    async fn node_root(&self, caller: Caller, node: &str) -> FsResult<(usize, Attr)> {
        let svc = self.reach.files(node)?;
        let (run, attr) = svc.root(&self.reach.creds(caller)).await?;
        let slot = self.nodes.bind(node, run)?;
        Ok((slot, attr))
    }

    /// The service and run that serve `slot`'s files.
    async fn bind(&self, caller: Caller, slot: usize) -> FsResult<Bound> {
        let Located { node, run, .. } = self.nodes.locate(slot)?;
        let run = match run {
            Some(r) => r,
            // Listed in nodes/ but never asked yet: learn its run.
            None => {
                let (s, _) = self.node_root(caller, &node).await?;
                if s != slot {
                    return Err(FsError::Stale);
                }
                self.nodes.locate(slot)?.run.ok_or(FsError::Stale)?
            }
        };
        Ok(Bound {
            svc: self.reach.files(&node)?,
            at: At {
                run,
                creds: self.reach.creds(caller),
            },
            slot,
        })
    }

    /// The node file `ino` stands for, bound to its service; the virtual
    /// parts refuse changes with `EROFS`.
    async fn file(&self, caller: Caller, i: u64) -> FsResult<(Bound, RemoteIno)> {
        match ino::classify(i) {
            Ino::Node { slot, id } => Ok((self.bind(caller, slot).await?, id)),
            _ => Err(FsError::ReadOnly),
        }
    }

    fn entry(parent: Option<u64>, slot: usize, a: &Attr) -> Entry {
        ttl::entry(parent, Self::node_attr(slot, a))
    }

    /// A node file's attributes, kept by the kernel as long as its node's
    /// lease allows.
    fn leased(b: &Bound, a: &Attr) -> Entry {
        Entry {
            attr: Self::node_attr(b.slot, a),
            attr_ttl: b.svc.kernel_ttl(b.at.run, a.ino),
            entry_ttl: Duration::ZERO,
        }
    }

    /// How the kernel may cache the data of the daemon-served open `fh` of
    /// `i` (a create's, which [`Self::open`] did not answer).
    pub fn open_cache(&self, i: u64, fh: u64) -> OpenCache {
        let Ino::Node { slot, .. } = ino::classify(i) else {
            return OpenCache::Plain;
        };
        match self
            .nodes
            .locate(slot)
            .and_then(|l| self.reach.files(&l.node))
        {
            Ok(svc) => svc.open_cache(fh),
            Err(_) => OpenCache::Plain,
        }
    }

    pub async fn lookup(&self, caller: Caller, parent: u64, name: &[u8]) -> FsResult<Entry> {
        let attr = match ino::classify(parent) {
            Ino::Root(ino::ROOT) => {
                let i = crate::root::child(&self.reach, name)?;
                crate::root::getattr(&self.reach, i, caller.pid)?
            }
            Ino::Root(ino::NODES) => {
                let node = std::str::from_utf8(name).map_err(|_| FsError::Os(libc::ENOENT))?;
                if !self.reach.is_alive(node) {
                    return Err(FsError::Os(libc::ENOENT));
                }
                let (slot, a) = self.node_root(caller, node).await?;
                Self::node_attr(slot, &a)
            }
            Ino::Root(_) => return Err(FsError::Os(libc::ENOTDIR)),
            Ino::Node { slot, id } => {
                let b = self.bind(caller, slot).await?;
                let a = b.svc.lookup(&b.at, id, name).await?;
                return Ok(Entry {
                    attr: Self::node_attr(b.slot, &a),
                    attr_ttl: b.svc.kernel_ttl(b.at.run, a.ino),
                    entry_ttl: b.svc.entry_ttl(b.at.run, id, name, a.ino),
                });
            }
            Ino::Cluster(_) => self.cluster.lookup(parent, name)?,
            Ino::Unknown => return Err(FsError::Os(libc::ENOENT)),
        };
        Ok(ttl::entry(Some(parent), attr))
    }

    /// The kernel dropped references to inodes. Forwarded to the serving
    /// nodes in the background: nobody waits for a forget.
    pub fn forget(&self, items: Vec<(u64, u64)>) {
        let mut per_slot: HashMap<usize, Vec<(RemoteIno, u64)>> = HashMap::new();
        for (i, n) in items {
            // Node roots are pinned on the serving side.
            if let Ino::Node { slot, id } = ino::classify(i) {
                if id != mosix_proto::fs::ROOT_INO {
                    per_slot.entry(slot).or_default().push((id, n));
                }
            }
        }
        for (slot, items) in per_slot {
            let Ok(Located {
                node,
                run: Some(run),
                ..
            }) = self.nodes.locate(slot)
            else {
                continue;
            };
            let Ok(svc) = self.reach.files(&node) else {
                continue;
            };
            tokio::spawn(async move {
                if let Err(e) = svc.forget(run, items).await {
                    tracing::debug!(%node, error = %e, "forget not delivered");
                }
            });
        }
    }

    pub async fn getattr(&self, caller: Caller, i: u64) -> FsResult<Entry> {
        let attr = match ino::classify(i) {
            Ino::Root(_) => crate::root::getattr(&self.reach, i, caller.pid)?,
            Ino::Node { slot, id } => {
                let b = self.bind(caller, slot).await?;
                let a = b.svc.getattr(&b.at, id).await?;
                return Ok(Self::leased(&b, &a));
            }
            Ino::Cluster(_) => self.cluster.getattr(i)?,
            Ino::Unknown => return Err(FsError::Os(libc::ENOENT)),
        };
        Ok(ttl::entry(None, attr))
    }

    pub async fn setattr(&self, caller: Caller, i: u64, change: Change) -> FsResult<Entry> {
        if ino::is_generated(i) {
            // A truncate-only open of a generated file: let that through, so
            // the caller hears about the open itself (EACCES).
            let truncate_only = change.size == Some(0)
                && change.mode.is_none()
                && change.uid.is_none()
                && change.gid.is_none();
            return if truncate_only {
                self.getattr(caller, i).await
            } else {
                Err(FsError::Os(libc::EPERM))
            };
        }
        let (b, id) = self.file(caller, i).await?;
        let a = b.svc.setattr(&b.at, id, change.to_wire()).await?;
        Ok(Self::leased(&b, &a))
    }

    pub async fn readlink(&self, caller: Caller, i: u64) -> FsResult<Vec<u8>> {
        match ino::classify(i) {
            Ino::Root(ino::HERE) => Ok(crate::root::here_target(&self.reach)),
            Ino::Root(ino::HOME) => Ok(crate::root::home_target(&self.reach, caller.pid)),
            Ino::Root(ino::PROC) => self
                .reach
                .proc_link
                .get()
                .cloned()
                .ok_or(FsError::Os(libc::ENOENT)),
            Ino::Node { slot, id } => {
                let b = self.bind(caller, slot).await?;
                b.svc.readlink(&b.at, id).await
            }
            _ => Err(FsError::Os(libc::EINVAL)),
        }
    }

    pub async fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> FsResult<Entry> {
        let (b, p) = self.file(caller, parent).await?;
        let a = b
            .svc
            .mknod(&b.at, p, name, mode, rdev as u64, umask)
            .await?;
        Ok(Self::entry(Some(parent), b.slot, &a))
    }

    pub async fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        let (b, p) = self.file(caller, parent).await?;
        let a = b.svc.mkdir(&b.at, p, name, mode, umask).await?;
        Ok(Self::entry(Some(parent), b.slot, &a))
    }

    pub async fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Entry> {
        let (b, p) = self.file(caller, parent).await?;
        let a = b.svc.symlink(&b.at, p, name, target).await?;
        Ok(Self::entry(Some(parent), b.slot, &a))
    }

    pub async fn unlink(&self, caller: Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        let (b, p) = self.file(caller, parent).await?;
        b.svc.unlink(&b.at, p, name).await
    }

    pub async fn rmdir(&self, caller: Caller, parent: u64, name: &[u8]) -> FsResult<()> {
        let (b, p) = self.file(caller, parent).await?;
        b.svc.rmdir(&b.at, p, name).await
    }

    pub async fn rename(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let (b, p) = self.file(caller, parent).await?;
        let (to, np) = self.file(caller, new_parent).await?;
        if to.slot != b.slot {
            // Across nodes there is no atomic rename; the caller (mv) copies.
            return Err(FsError::Os(libc::EXDEV));
        }
        b.svc.rename(&b.at, p, name, np, new_name, flags).await
    }

    pub async fn link(
        &self,
        caller: Caller,
        i: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> FsResult<Entry> {
        let (b, id) = self.file(caller, i).await?;
        let (to, np) = self.file(caller, new_parent).await?;
        if to.slot != b.slot {
            return Err(FsError::Os(libc::EXDEV));
        }
        let a = b.svc.link(&b.at, id, np, new_name).await?;
        Ok(Self::entry(Some(new_parent), b.slot, &a))
    }

    /// An open served by the daemon (local passthrough opens are decided in
    /// [`crate::passthrough`]).
    pub async fn open(&self, caller: Caller, i: u64, flags: i32) -> FsResult<Opened> {
        let content = match ino::classify(i) {
            Ino::Node { slot, id } => {
                let b = self.bind(caller, slot).await?;
                let fh = b.svc.open(&b.at, id, flags).await?;
                let cache = b.svc.open_cache(fh);
                return Ok(Opened {
                    fh,
                    direct_io: cache == OpenCache::Direct,
                    noflush: false,
                    keep_cache: cache == OpenCache::Keep,
                });
            }
            Ino::Cluster(_) => self.cluster.render(i, flags)?,
            Ino::Root(_) | Ino::Unknown => return Err(FsError::Os(libc::EISDIR)),
        };
        Ok(Opened {
            fh: self.snapshots.keep(content),
            direct_io: true,
            noflush: true,
            keep_cache: false,
        })
    }

    pub async fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Entry, RemoteFh)> {
        let (b, p) = self.file(caller, parent).await?;
        let (a, fh) = b.svc.create(&b.at, p, name, mode, umask, flags).await?;
        Ok((Self::entry(Some(parent), b.slot, &a), fh))
    }

    pub async fn read(
        &self,
        caller: Caller,
        i: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<u8>> {
        if ino::is_generated(i) {
            return self.snapshots.read(fh, offset, size);
        }
        let (b, _) = self.file(caller, i).await?;
        b.svc.read(&b.at, fh, offset, size).await
    }

    pub async fn write(
        &self,
        caller: Caller,
        i: u64,
        fh: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> FsResult<u32> {
        if ino::is_generated(i) {
            return Err(FsError::Os(libc::EBADF));
        }
        let (b, _) = self.file(caller, i).await?;
        b.svc.write(&b.at, fh, offset, data).await
    }

    /// close(2) of one descriptor: drops the closing process's POSIX locks
    /// on the file (the kernel keeps no record of locks held on the serving
    /// node, so it leaves that to us), then flushes a daemon-served handle.
    pub async fn flush(&self, caller: Caller, i: u64, fh: u64, owner: u64) -> FsResult<()> {
        if ino::is_generated(i) {
            return Ok(());
        }
        if self.locks.closed(i, owner) {
            self.release_locks(caller, i, owner).await;
        }
        if crate::fh::is_passthrough(fh) {
            return Ok(());
        }
        let (b, _) = self.file(caller, i).await?;
        b.svc.flush(&b.at, fh).await
    }

    /// The last close of an open file drops the locks it owns (flock and
    /// OFD locks; fcntl locks of processes went at their close). In the
    /// background: an unlock in transit may need retries.
    pub fn release_locks_of(self: &Arc<Self>, caller: Caller, i: u64, fh: u64) {
        let owners = self.locks.released(i, fh);
        if owners.is_empty() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            for owner in owners {
                me.release_locks(caller, i, owner).await;
            }
        });
    }

    /// The last close of an open file: its handle goes.
    pub async fn release(&self, i: u64, fh: u64) {
        if crate::fh::is_passthrough(fh) {
            return;
        }
        if ino::is_generated(i) {
            return self.snapshots.release(fh);
        }
        if let Ino::Node { slot, .. } = ino::classify(i) {
            if let Ok(Located {
                node,
                run: Some(run),
                ..
            }) = self.nodes.locate(slot)
            {
                if let Ok(svc) = self.reach.files(&node) {
                    svc.release(run, fh).await;
                }
            }
        }
    }

    /// Drops every lock `owner` holds on `i`. A lost unlock would block every
    /// other node's waiter forever: keep trying while the failure is in
    /// transit; a node that is down, or has restarted, holds no locks of
    /// ours any more.
    async fn release_locks(&self, caller: Caller, i: u64, owner: u64) {
        let lock = Lock {
            owner,
            start: 0,
            end: i64::MAX as u64,
            typ: libc::F_UNLCK,
            pid: caller.pid,
        };
        for attempt in 0u32.. {
            let r = match self.file(caller, i).await {
                Ok((b, id)) => b.svc.setlk(&b.at, id, lock).await,
                Err(e) => Err(e),
            };
            match r {
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

    pub async fn fsync(&self, caller: Caller, i: u64, fh: u64, datasync: bool) -> FsResult<()> {
        let (b, _) = self.file(caller, i).await?;
        b.svc.fsync(&b.at, fh, datasync).await
    }

    pub async fn opendir(&self, caller: Caller, i: u64) -> FsResult<u64> {
        match ino::classify(i) {
            Ino::Node { slot, id } => {
                let b = self.bind(caller, slot).await?;
                b.svc.opendir(&b.at, id).await
            }
            Ino::Root(ino::ROOT | ino::NODES) | Ino::Cluster(_) => Ok(0),
            _ => Err(FsError::Os(libc::ENOTDIR)),
        }
    }

    pub async fn readdir(
        &self,
        caller: Caller,
        i: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<ListEntry>> {
        match ino::classify(i) {
            Ino::Root(_) => crate::root::readdir(&self.reach, &self.nodes, i, offset),
            Ino::Cluster(_) => self.cluster.readdir(i, offset),
            Ino::Node { slot, .. } => {
                let b = self.bind(caller, slot).await?;
                let entries = b.svc.readdir(&b.at, fh, offset, size).await?;
                Ok(entries
                    .into_iter()
                    .map(|e| ListEntry {
                        ino: ino::node_file(b.slot, e.ino),
                        next_offset: e.next_offset,
                        kind: e.kind.into(),
                        name: e.name,
                    })
                    .collect())
            }
            Ino::Unknown => Err(FsError::Os(libc::ENOENT)),
        }
    }

    pub async fn releasedir(&self, i: u64, fh: u64) {
        if let Ino::Node { slot, .. } = ino::classify(i) {
            if let Ok(Located {
                node,
                run: Some(run),
                ..
            }) = self.nodes.locate(slot)
            {
                if let Ok(svc) = self.reach.files(&node) {
                    svc.releasedir(run, fh).await;
                }
            }
        }
    }

    pub async fn statfs(&self, caller: Caller, i: u64) -> FsResult<FsStats> {
        match ino::classify(i) {
            Ino::Node { slot, id } => {
                let b = self.bind(caller, slot).await?;
                Ok(b.svc.statfs(&b.at, id).await?.into())
            }
            _ => Ok(FsStats {
                blocks: 0,
                bfree: 0,
                bavail: 0,
                files: 0,
                ffree: 0,
                bsize: 4096,
                namelen: 255,
                frsize: 4096,
            }),
        }
    }

    pub async fn access(&self, caller: Caller, i: u64, mask: i32) -> FsResult<()> {
        match ino::classify(i) {
            Ino::Node { slot, id } => {
                let b = self.bind(caller, slot).await?;
                b.svc.access(&b.at, id, mask).await
            }
            _ if mask & libc::W_OK != 0 => Err(FsError::ReadOnly),
            _ => Ok(()),
        }
    }

    /// A node file for an extended-attribute call; the virtual parts have
    /// no attributes at all.
    async fn xattr_file(&self, caller: Caller, i: u64) -> FsResult<(Bound, RemoteIno)> {
        match ino::classify(i) {
            Ino::Node { slot, id } => Ok((self.bind(caller, slot).await?, id)),
            _ => Err(FsError::Os(libc::ENODATA)),
        }
    }

    pub async fn setxattr(
        &self,
        caller: Caller,
        i: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        let (b, id) = self.xattr_file(caller, i).await?;
        b.svc.setxattr(&b.at, id, name, value, flags).await
    }

    pub async fn getxattr(
        &self,
        caller: Caller,
        i: u64,
        name: &[u8],
        size: u32,
    ) -> FsResult<Xattr> {
        let (b, id) = self.xattr_file(caller, i).await?;
        b.svc.getxattr(&b.at, id, name, size).await
    }

    pub async fn listxattr(&self, caller: Caller, i: u64, size: u32) -> FsResult<Xattr> {
        match self.xattr_file(caller, i).await {
            Ok((b, id)) => b.svc.listxattr(&b.at, id, size).await,
            Err(FsError::Os(libc::ENODATA)) if size == 0 => Ok(Xattr::Size(0)),
            Err(e) => Err(e),
        }
    }

    pub async fn removexattr(&self, caller: Caller, i: u64, name: &[u8]) -> FsResult<()> {
        let (b, id) = self.xattr_file(caller, i).await?;
        b.svc.removexattr(&b.at, id, name).await
    }

    pub async fn fallocate(
        &self,
        caller: Caller,
        i: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()> {
        let (b, _) = self.file(caller, i).await?;
        b.svc.fallocate(&b.at, fh, offset, length, mode).await
    }

    pub async fn getlk(&self, caller: Caller, i: u64, lock: Lock) -> FsResult<LockInfo> {
        let (b, id) = self.xattr_file(caller, i).await?;
        b.svc.getlk(&b.at, id, lock).await
    }

    /// F_SETLK, or F_SETLKW (`wait`): retried until granted, so no serving
    /// thread blocks on a lock; given up with `EINTR` when the waiting
    /// process has a signal to handle, as a local wait would be.
    pub async fn setlk(
        &self,
        caller: Caller,
        i: u64,
        fh: u64,
        lock: Lock,
        wait: bool,
    ) -> FsResult<()> {
        if lock.typ != libc::F_UNLCK {
            // Recorded before asking, so that even a lock whose answer is
            // lost in transit is released at close.
            self.locks.took(i, fh, lock.owner);
        }
        let mut backoff = LOCK_RETRY_MIN;
        loop {
            let (b, id) = self.xattr_file(caller, i).await?;
            match b.svc.setlk(&b.at, id, lock).await {
                Err(FsError::Os(libc::EAGAIN)) if wait => {
                    if caller.pid != 0 && mosix_procview::status::signal_pending(caller.pid) {
                        return Err(FsError::Os(libc::EINTR));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LOCK_RETRY_MAX);
                }
                r => return r,
            }
        }
    }
}

/// Invalidations of what the kernel caches of other nodes' files, by their
/// inode numbers here, for the caching decorator's recalls.
impl crate::cached::KernelCache for MosixFs {
    fn drop_file(&self, node: &str, run: Run, file: RemoteIno, names: Vec<Vec<u8>>) {
        let (Some(slot), Some(inval)) = (self.nodes.slot_of_run(node, run), self.inval.get())
        else {
            return;
        };
        let ino = ino::node_file(slot, file);
        for name in names {
            inval.invalidate(crate::invalidate::Inval::Entry { parent: ino, name });
        }
        inval.invalidate(crate::invalidate::Inval::Inode {
            ino,
            offset: 0,
            len: 0,
        });
    }

    fn drop_range(&self, node: &str, run: Run, file: RemoteIno, offset: u64, len: u64) {
        let (Some(slot), Some(inval)) = (self.nodes.slot_of_run(node, run), self.inval.get())
        else {
            return;
        };
        inval.invalidate(crate::invalidate::Inval::Inode {
            ino: ino::node_file(slot, file),
            offset: offset.min(i64::MAX as u64) as i64,
            len: len.min(i64::MAX as u64) as i64,
        });
    }

    fn barrier(&self) {
        if let Some(inval) = self.inval.get() {
            inval.barrier();
        }
    }
}
