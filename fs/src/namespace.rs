//! The `/mosix` namespace, without FUSE: what each operation means and where
//! it goes. The FUSE adapter (`fuse.rs`) only translates to and from this.
//!
//! ```text
//! /mosix/             virtual, read-only
//!   nodes/<node>/     the export of each live node (served by that node)
//!   here  -> nodes/<this node>
//!   home  -> nodes/<home node of the calling process>
//!   cluster/  proc/   reserved (empty for now)
//! ```
//!
//! Inode numbers: virtual entries are small constants. A file served by a node
//! is `node_index << 48 | id`, where `id` is the serving node's stable id for
//! the file and `node_index` names one run of one node (a restarted node gets a
//! new index, so ids from its previous run can never alias new files).
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mosix_proto::fs::{
    Attr, Creds, DirEntry, FileKind, FsReply, FsRequest, RemoteFh, RemoteIno, SetAttr, StatFs,
    Timespec, ROOT_INO,
};

use mosix_proto::proc::{ProcEntry, ProcFile};

use crate::error::{FsError, FsResult};
use crate::export::Export;

pub const INO_ROOT: u64 = 1;
pub const INO_NODES: u64 = 2;
pub const INO_HERE: u64 = 3;
pub const INO_HOME: u64 = 4;
pub const INO_CLUSTER: u64 = 5;
pub const INO_PROC: u64 = 6;
const NODE_SHIFT: u32 = 48;
const ID_MASK: u64 = (1 << NODE_SHIFT) - 1;

thread_local! {
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this node's own file operations done inline on the current
/// thread instead of on the blocking pool. For threads that may block (the
/// FUSE threads), never for runtime workers.
pub fn inline<R>(f: impl FnOnce() -> R) -> R {
    INLINE.with(|i| i.set(true));
    let r = f();
    INLINE.with(|i| i.set(false));
    r
}

/// Kernel cache lifetime of the virtual entries (the root's children):
/// they never change while the daemon runs.
pub const VIRTUAL_TTL: Duration = Duration::from_secs(60);
/// Kernel cache lifetime of the `nodes/<node>` names. Membership changes are
/// seen at most this late in path walks; operations on a dead node's files
/// fail at once regardless.
pub const NODE_ENTRY_TTL: Duration = Duration::from_secs(1);

/// (attribute, entry) cache lifetimes the kernel may use for `ino`, found
/// in `parent`. Files of nodes get zero: nothing tells this node when another
/// node changes them (coherent caching is a later step).
pub fn ttls(parent: u64, ino: u64) -> (Duration, Duration) {
    if ino == crate::procdir::INO_PROC_SELF || crate::clusterdir::is_cluster(ino) {
        // The caller's own gpid; nodes and their loads change.
        (Duration::ZERO, Duration::ZERO)
    } else if crate::procdir::is_proc(ino) {
        // Processes come and go, but the listing that says so may already
        // be this old: caching names as long saves a round trip per path
        // component (a scan of /proc walks every process's directory).
        let t = crate::procdir::PROC_LIST_TTL;
        (t, t)
    } else if ino >> NODE_SHIFT == 0 {
        // /mosix/home's target, and so its size, depends on the caller.
        let attr = if ino == INO_HOME {
            Duration::ZERO
        } else {
            VIRTUAL_TTL
        };
        (attr, VIRTUAL_TTL)
    } else if parent == INO_NODES {
        (Duration::ZERO, NODE_ENTRY_TTL)
    } else {
        (Duration::ZERO, Duration::ZERO)
    }
}

/// How long a process's supplementary groups are reused before /proc is read
/// again. A `newgrp` takes effect on /mosix at most this late.
pub const GROUPS_TTL: Duration = Duration::from_secs(1);

/// A remote file operation in flight: the serving node's epoch and the
/// operation's own result.
pub type RemoteCall =
    Pin<Box<dyn Future<Output = FsResult<(u64, mosix_proto::fs::FsResult)>> + Send>>;

/// What the namespace needs from the rest of the daemon.
pub trait Cluster: Send + Sync + 'static {
    /// Names of the live members, this node included.
    fn alive_nodes(&self) -> Vec<String>;
    /// Runs a file operation on another node; returns that node's epoch and
    /// the operation's result.
    /// `epoch` is the run of the node that the ids in `op` come from (None:
    /// no ids but the export root); the node refuses with ESTALE if it is
    /// not its own, before it touches anything.
    fn call(&self, node: &str, epoch: Option<u64>, creds: Creds, op: FsRequest) -> RemoteCall;
    /// The home node of a local process (where `/mosix/home` points for it).
    fn home_node(&self, pid: u32) -> Option<String>;
    /// This node's id: the high bits of its processes' gpids.
    fn self_id(&self) -> u16;
    /// The membership table as this node sees it, with load records.
    fn members(&self) -> Vec<mosix_proto::MemberInfo>;
    /// A node's id and its processes (this node's too).
    fn proc_list(&self, node: &str) -> BoxFuture<FsResult<(u16, Vec<ProcEntry>)>>;
    /// Pins process `pid` of `node` to it, or frees it (`lock`).
    fn set_lock(&self, node: &str, creds: Creds, pid: u32, on: bool) -> BoxFuture<FsResult<()>>;
    /// One of a node's node-wide procfs files (meminfo, stat...), raw.
    fn node_file(
        &self,
        node: &str,
        file: mosix_proto::proc::NodeFile,
    ) -> BoxFuture<FsResult<Vec<u8>>>;
    /// One per-process file, rendered on the process's node.
    fn proc_read(
        &self,
        node: &str,
        creds: Creds,
        pid: u32,
        file: ProcFile,
    ) -> BoxFuture<FsResult<Vec<u8>>>;
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Attributes as the caller sees them through /mosix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAttr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: FileKind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub ino: u64,
    pub next_offset: u64,
    pub kind: FileKind,
    pub name: Vec<u8>,
}

/// Who is asking, as the kernel reported it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

#[derive(Default)]
struct NodeTable {
    /// index -> (node name, epoch of the run this index stands for)
    by_index: Vec<(String, Option<u64>)>,
    /// node name -> its current index
    current: HashMap<String, usize>,
    /// Runs that have ended: a late reply from one must not start yet
    /// another index.
    retired: std::collections::HashSet<(String, u64)>,
}

impl NodeTable {
    fn index_of(&mut self, name: &str) -> usize {
        if let Some(&i) = self.current.get(name) {
            return i;
        }
        self.by_index.push((name.to_string(), None));
        // Index 0 is the virtual part of the namespace.
        let i = self.by_index.len();
        self.current.insert(name.to_string(), i);
        i
    }
}

fn to_systime(t: Timespec) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(t.nsecs as u64)
    }
}

/// (pid, uid, gid) -> when read, and the supplementary groups.
type GroupsCache = lru::LruCache<(u32, u32, u32), (Instant, Vec<u32>)>;

pub struct MosixFs {
    pub(crate) procs: crate::procdir::ProcState,
    self_name: String,
    local: Arc<Export>,
    pub(crate) cluster: Arc<dyn Cluster>,
    nodes: Mutex<NodeTable>,
    /// Keyed by (pid, uid, gid): a reused pid of another user never gets
    /// the previous process's groups.
    groups: Mutex<GroupsCache>,
    started: SystemTime,
}

/// Where a file lives: which node, and that node's id for it.
#[derive(Debug, Clone)]
pub struct Location {
    pub node: String,
    pub index: usize,
    pub id: RemoteIno,
}

impl MosixFs {
    pub fn new(self_name: String, local: Arc<Export>, cluster: Arc<dyn Cluster>) -> Self {
        MosixFs {
            procs: Default::default(),
            self_name,
            local,
            cluster,
            nodes: Mutex::default(),
            groups: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(4096).expect("nonzero"),
            )),
            started: SystemTime::now(),
        }
    }

    pub fn self_name(&self) -> &str {
        &self.self_name
    }

    pub fn local_export(&self) -> &Arc<Export> {
        &self.local
    }

    /// `creds` as this node's own export sees them: a client like any other,
    /// whose run is the export's.
    pub fn local_who(&self, creds: Creds) -> crate::service::Who {
        crate::service::Who {
            client: crate::service::ClientId {
                node: self.self_name.as_str().into(),
                run: self.local.epoch(),
            },
            creds,
        }
    }

    /// The caller's full credentials: the kernel gives uid, gid and pid; the
    /// supplementary groups come from the caller's /proc entry.
    pub fn creds(&self, c: Caller) -> Creds {
        let groups = if c.pid == 0 {
            Vec::new()
        } else {
            let mut cache = self.groups.lock().expect("groups cache");
            let key = (c.pid, c.uid, c.gid);
            match cache.get(&key) {
                Some((at, g)) if at.elapsed() < GROUPS_TTL => g.clone(),
                _ => {
                    let g = read_groups(c.pid);
                    cache.put(key, (Instant::now(), g.clone()));
                    g
                }
            }
        };
        Creds {
            uid: c.uid,
            gid: c.gid,
            groups,
            pid: c.pid,
        }
    }

    /// A stable small number for node `name` (also its index in inode numbers).
    pub(crate) fn node_slot(&self, name: &str) -> usize {
        self.nodes.lock().expect("node table").index_of(name)
    }

    pub(crate) fn node_name_of(&self, slot: usize) -> Option<String> {
        let nodes = self.nodes.lock().expect("node table");
        nodes
            .by_index
            .get(slot.checked_sub(1)?)
            .map(|(n, _)| n.clone())
    }

    /// Decodes an inode number into the node and id it stands for.
    pub fn locate(&self, ino: u64) -> FsResult<Location> {
        let index = (ino >> NODE_SHIFT) as usize;
        if index == 0 {
            return Err(FsError::Invalid("virtual inode"));
        }
        let nodes = self.nodes.lock().expect("node table");
        let (name, _) = nodes.by_index.get(index - 1).ok_or(FsError::Stale)?;
        if nodes.current.get(name) != Some(&index) {
            // A run of that node that has ended.
            return Err(FsError::Stale);
        }
        Ok(Location {
            node: name.clone(),
            index,
            id: ino & ID_MASK,
        })
    }

    pub fn is_local(&self, loc: &Location) -> bool {
        loc.node == self.self_name
    }

    fn ino_of(index: usize, id: RemoteIno) -> u64 {
        ((index as u64) << NODE_SHIFT) | (id & ID_MASK)
    }

    fn node_attr(&self, index: usize, a: &Attr) -> NodeAttr {
        NodeAttr {
            ino: Self::ino_of(index, a.ino),
            size: a.size,
            blocks: a.blocks,
            atime: to_systime(a.atime),
            mtime: to_systime(a.mtime),
            ctime: to_systime(a.ctime),
            kind: a.kind,
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: a.blksize,
        }
    }

    pub(crate) fn virtual_attr(&self, ino: u64, kind: FileKind, perm: u16, size: u64) -> NodeAttr {
        NodeAttr {
            ino,
            size,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            kind,
            perm,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }

    fn home_target(&self, pid: u32) -> String {
        let home = self
            .cluster
            .home_node(pid)
            .unwrap_or_else(|| self.self_name.clone());
        format!("nodes/{home}")
    }

    fn virtual_getattr(&self, ino: u64, pid: u32) -> FsResult<NodeAttr> {
        match ino {
            INO_ROOT | INO_NODES | INO_CLUSTER | INO_PROC => {
                Ok(self.virtual_attr(ino, FileKind::Dir, 0o555, 0))
            }
            INO_HERE => Ok(self.virtual_attr(
                ino,
                FileKind::Symlink,
                0o777,
                format!("nodes/{}", self.self_name).len() as u64,
            )),
            INO_HOME => Ok(self.virtual_attr(
                ino,
                FileKind::Symlink,
                0o777,
                self.home_target(pid).len() as u64,
            )),
            _ => Err(FsError::Os(libc::ENOENT)),
        }
    }

    /// Runs `op` on `node` as `creds`, on this node directly or over the
    /// transport, and checks that the answer comes from the run of the node
    /// that `index` stands for.
    async fn call(
        &self,
        node: &str,
        index: Option<usize>,
        creds: Creds,
        op: FsRequest,
    ) -> FsResult<FsReply> {
        let expect = {
            let mut nodes = self.nodes.lock().expect("node table");
            let i = index.unwrap_or_else(|| nodes.index_of(node));
            nodes.by_index.get(i - 1).and_then(|(_, e)| *e)
        };
        let (epoch, result) = if node == self.self_name {
            let export = self.local.clone();
            let epoch = export.epoch();
            let who = self.local_who(creds);
            let r = if INLINE.with(|i| i.get()) {
                export.handle(&who, op)
            } else {
                tokio::task::spawn_blocking(move || export.handle(&who, op))
                    .await
                    .map_err(|e| FsError::Transport(e.to_string()))?
            };
            (epoch, r)
        } else {
            self.cluster.call(node, expect, creds, op).await?
        };
        {
            let mut nodes = self.nodes.lock().expect("node table");
            let cur = nodes.index_of(node);
            let expected = index.unwrap_or(cur);
            if nodes.retired.contains(&(node.to_string(), epoch)) {
                return Err(FsError::Stale);
            }
            let slot = &mut nodes.by_index[cur - 1].1;
            match slot {
                None => *slot = Some(epoch),
                Some(e) if *e == epoch => {}
                Some(old) => {
                    // The node restarted: everything it handed out before is
                    // gone. Start a new index for its new run.
                    let old = *old;
                    nodes.retired.insert((node.to_string(), old));
                    nodes.by_index.push((node.to_string(), Some(epoch)));
                    let n = nodes.by_index.len();
                    nodes.current.insert(node.to_string(), n);
                    return Err(FsError::Stale);
                }
            }
            if expected != cur {
                return Err(FsError::Stale);
            }
        }
        result.map_err(FsError::Os)
    }

    async fn call_at(&self, caller: Caller, loc: &Location, op: FsRequest) -> FsResult<FsReply> {
        let creds = self.creds(caller);
        self.call(&loc.node, Some(loc.index), creds, op).await
    }

    fn entry(&self, loc: &Location, reply: FsReply) -> FsResult<NodeAttr> {
        match reply {
            FsReply::Entry(a) | FsReply::Attr(a) => Ok(self.node_attr(loc.index, &a)),
            other => Err(FsError::Transport(format!("unexpected reply {other:?}"))),
        }
    }

    /// Every live node, this one included, in name order.
    pub(crate) fn live_nodes(&self) -> Vec<String> {
        let mut v = self.cluster.alive_nodes();
        v.push(self.self_name.clone());
        v.sort();
        v.dedup();
        v
    }

    fn node_alive(&self, name: &str) -> bool {
        name == self.self_name || self.cluster.alive_nodes().iter().any(|n| n == name)
    }

    pub async fn lookup(&self, caller: Caller, parent: u64, name: &[u8]) -> FsResult<NodeAttr> {
        match parent {
            INO_ROOT => {
                let ino = match name {
                    b"nodes" => INO_NODES,
                    b"here" => INO_HERE,
                    b"home" => INO_HOME,
                    b"cluster" => INO_CLUSTER,
                    b"proc" => INO_PROC,
                    _ => return Err(FsError::Os(libc::ENOENT)),
                };
                self.virtual_getattr(ino, caller.pid)
            }
            INO_NODES => {
                let node = std::str::from_utf8(name).map_err(|_| FsError::Os(libc::ENOENT))?;
                if !self.node_alive(node) {
                    return Err(FsError::Os(libc::ENOENT));
                }
                let creds = self.creds(caller);
                let reply = self
                    .call(node, None, creds, FsRequest::GetAttr { ino: ROOT_INO })
                    .await?;
                let index = self.nodes.lock().expect("node table").index_of(node);
                let loc = Location {
                    node: node.to_string(),
                    index,
                    id: ROOT_INO,
                };
                self.entry(&loc, reply)
            }
            INO_PROC => self.proc_lookup(caller, parent, name).await,
            INO_CLUSTER => self.cluster_lookup(parent, name),
            p if crate::clusterdir::is_cluster(p) => self.cluster_lookup(parent, name),
            p if crate::procdir::is_proc(p) => self.proc_lookup(caller, parent, name).await,
            INO_HERE | INO_HOME => Err(FsError::Os(libc::ENOENT)),
            _ => {
                let loc = self.locate(parent)?;
                let reply = self
                    .call_at(
                        caller,
                        &loc,
                        FsRequest::Lookup {
                            parent: loc.id,
                            name: name.to_vec(),
                        },
                    )
                    .await?;
                self.entry(&loc, reply)
            }
        }
    }

    /// The kernel dropped `n` references to `ino`. Forwarded to the serving
    /// node in the background: nobody waits for a forget.
    pub fn forget(self: &Arc<Self>, items: Vec<(u64, u64)>) {
        let mut per_node: HashMap<(String, usize), Vec<(RemoteIno, u64)>> = HashMap::new();
        for (ino, n) in items {
            let Ok(loc) = self.locate(ino) else { continue };
            // Node roots are pinned on the serving side.
            if loc.id == ROOT_INO {
                continue;
            }
            per_node
                .entry((loc.node.clone(), loc.index))
                .or_default()
                .push((loc.id, n));
        }
        for ((node, index), items) in per_node {
            let me = self.clone();
            tokio::spawn(async move {
                let op = FsRequest::Forget { items };
                if let Err(e) = me.call(&node, Some(index), Creds::default(), op).await {
                    tracing::debug!(%node, error = %e, "forget not delivered");
                }
            });
        }
    }

    pub async fn getattr(&self, caller: Caller, ino: u64) -> FsResult<NodeAttr> {
        if crate::procdir::is_proc(ino) {
            return self.proc_getattr(caller, ino).await;
        }
        if crate::clusterdir::is_cluster(ino) {
            return self.cluster_getattr(ino);
        }
        if ino >> NODE_SHIFT == 0 {
            return self.virtual_getattr(ino, caller.pid);
        }
        let loc = self.locate(ino)?;
        let reply = self
            .call_at(caller, &loc, FsRequest::GetAttr { ino: loc.id })
            .await?;
        self.entry(&loc, reply)
    }

    pub async fn setattr(&self, caller: Caller, ino: u64, set: SetAttr) -> FsResult<NodeAttr> {
        if crate::procdir::is_generated(ino) {
            // `echo n2 > where` truncates before it writes: let that through,
            // so the caller hears about the write itself.
            let truncate_only =
                set.size == Some(0) && set.mode.is_none() && set.uid.is_none() && set.gid.is_none();
            return if truncate_only {
                self.proc_getattr(caller, ino).await
            } else {
                Err(FsError::Os(libc::EPERM))
            };
        }
        let loc = self.writable(ino)?;
        let reply = self
            .call_at(caller, &loc, FsRequest::SetAttr { ino: loc.id, set })
            .await?;
        self.entry(&loc, reply)
    }

    /// Location of a file that a mutation targets; the virtual parts refuse.
    fn writable(&self, ino: u64) -> FsResult<Location> {
        if ino >> NODE_SHIFT == 0 {
            return Err(FsError::ReadOnly);
        }
        self.locate(ino)
    }

    pub async fn readlink(&self, caller: Caller, ino: u64) -> FsResult<Vec<u8>> {
        match ino {
            INO_HERE => return Ok(format!("nodes/{}", self.self_name).into_bytes()),
            INO_HOME => return Ok(self.home_target(caller.pid).into_bytes()),
            crate::procdir::INO_PROC_SELF => return Ok(self.proc_self_target(caller)),
            i if crate::procdir::is_proc(i) => return self.proc_readlink(caller, i).await,
            _ if ino >> NODE_SHIFT == 0 => return Err(FsError::Os(libc::EINVAL)),
            _ => {}
        }
        let loc = self.locate(ino)?;
        match self
            .call_at(caller, &loc, FsRequest::ReadLink { ino: loc.id })
            .await?
        {
            FsReply::Data(d) => Ok(d),
            other => Err(FsError::Transport(format!("unexpected reply {other:?}"))),
        }
    }

    /// Operations that create a name in `parent` and answer with its entry.
    pub async fn make(
        &self,
        caller: Caller,
        parent: u64,
        build: impl FnOnce(RemoteIno) -> FsRequest,
    ) -> FsResult<NodeAttr> {
        let loc = self.writable(parent)?;
        let reply = self.call_at(caller, &loc, build(loc.id)).await?;
        self.entry(&loc, reply)
    }

    /// Operations on names in `parent` that answer with nothing.
    pub async fn change(
        &self,
        caller: Caller,
        parent: u64,
        build: impl FnOnce(RemoteIno) -> FsRequest,
    ) -> FsResult<()> {
        let loc = self.writable(parent)?;
        self.call_at(caller, &loc, build(loc.id)).await.map(|_| ())
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
        let from = self.writable(parent)?;
        let to = self.writable(new_parent)?;
        if from.index != to.index {
            // Across nodes there is no atomic rename; the caller (mv) copies.
            return Err(FsError::Os(libc::EXDEV));
        }
        let op = FsRequest::Rename {
            parent: from.id,
            name: name.to_vec(),
            new_parent: to.id,
            new_name: new_name.to_vec(),
            flags,
        };
        self.call_at(caller, &from, op).await.map(|_| ())
    }

    pub async fn link(
        &self,
        caller: Caller,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> FsResult<NodeAttr> {
        let src = self.writable(ino)?;
        let dst = self.writable(new_parent)?;
        if src.index != dst.index {
            return Err(FsError::Os(libc::EXDEV));
        }
        let op = FsRequest::Link {
            ino: src.id,
            new_parent: dst.id,
            new_name: new_name.to_vec(),
        };
        let reply = self.call_at(caller, &src, op).await?;
        self.entry(&src, reply)
    }

    pub async fn open(&self, caller: Caller, ino: u64, flags: i32) -> FsResult<RemoteFh> {
        if ino >> NODE_SHIFT == 0 {
            return Err(FsError::Os(libc::EISDIR));
        }
        let loc = self.locate(ino)?;
        match self
            .call_at(caller, &loc, FsRequest::Open { ino: loc.id, flags })
            .await?
        {
            FsReply::Opened { fh } => Ok(fh),
            other => Err(FsError::Transport(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(NodeAttr, RemoteFh)> {
        let loc = self.writable(parent)?;
        let op = FsRequest::Create {
            parent: loc.id,
            name: name.to_vec(),
            mode,
            umask,
            flags,
        };
        match self.call_at(caller, &loc, op).await? {
            FsReply::Created { attr, fh } => Ok((self.node_attr(loc.index, &attr), fh)),
            other => Err(FsError::Transport(format!("unexpected reply {other:?}"))),
        }
    }

    /// A request on an open handle of file `ino`.
    pub async fn on_handle(&self, caller: Caller, ino: u64, op: FsRequest) -> FsResult<FsReply> {
        let loc = self.locate(ino)?;
        self.call_at(caller, &loc, op).await
    }

    pub async fn opendir(&self, caller: Caller, ino: u64) -> FsResult<RemoteFh> {
        if ino >> NODE_SHIFT == 0 {
            return match ino {
                INO_ROOT | INO_NODES | INO_CLUSTER | INO_PROC => Ok(0),
                i if crate::procdir::is_proc(i) || crate::clusterdir::is_cluster(i) => Ok(0),
                _ => Err(FsError::Os(libc::ENOTDIR)),
            };
        }
        let loc = self.locate(ino)?;
        match self
            .call_at(caller, &loc, FsRequest::OpenDir { ino: loc.id })
            .await?
        {
            FsReply::Opened { fh } => Ok(fh),
            other => Err(FsError::Transport(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn readdir(
        &self,
        caller: Caller,
        ino: u64,
        fh: RemoteFh,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<ListEntry>> {
        if ino == INO_PROC || crate::procdir::is_proc(ino) {
            return self.proc_readdir(ino, offset).await;
        }
        if ino == INO_CLUSTER || crate::clusterdir::is_cluster(ino) {
            return self.cluster_readdir(ino, offset);
        }
        if ino >> NODE_SHIFT == 0 {
            return Ok(self.virtual_readdir(ino, offset));
        }
        let loc = self.locate(ino)?;
        match self
            .call_at(caller, &loc, FsRequest::ReadDir { fh, offset, size })
            .await?
        {
            FsReply::Entries(es) => Ok(es
                .into_iter()
                .map(|e: DirEntry| ListEntry {
                    ino: Self::ino_of(loc.index, e.ino),
                    next_offset: e.next_offset,
                    kind: e.kind,
                    name: e.name,
                })
                .collect()),
            other => Err(FsError::Transport(format!("unexpected reply {other:?}"))),
        }
    }

    fn virtual_readdir(&self, ino: u64, offset: u64) -> Vec<ListEntry> {
        let mut names: Vec<(u64, FileKind, Vec<u8>)> = vec![
            (ino, FileKind::Dir, b".".to_vec()),
            (INO_ROOT, FileKind::Dir, b"..".to_vec()),
        ];
        match ino {
            INO_ROOT => {
                names.push((INO_NODES, FileKind::Dir, b"nodes".to_vec()));
                names.push((INO_HERE, FileKind::Symlink, b"here".to_vec()));
                names.push((INO_HOME, FileKind::Symlink, b"home".to_vec()));
                names.push((INO_CLUSTER, FileKind::Dir, b"cluster".to_vec()));
                names.push((INO_PROC, FileKind::Dir, b"proc".to_vec()));
            }
            INO_NODES => {
                let alive = self.live_nodes();
                let mut nodes = self.nodes.lock().expect("node table");
                for n in alive {
                    let i = nodes.index_of(&n);
                    names.push((Self::ino_of(i, ROOT_INO), FileKind::Dir, n.into_bytes()));
                }
            }
            _ => {}
        }
        listing(names, offset)
    }

    pub async fn release_handle(&self, ino: u64, op: FsRequest) {
        if ino >> NODE_SHIFT == 0 {
            return;
        }
        let Ok(loc) = self.locate(ino) else { return };
        // A release cannot fail from the kernel's point of view; a node that
        // is gone has dropped the handle anyway.
        let _ = self
            .call(&loc.node, Some(loc.index), Creds::default(), op)
            .await;
    }

    pub async fn statfs(&self, caller: Caller, ino: u64) -> FsResult<StatFs> {
        if ino >> NODE_SHIFT == 0 {
            return Ok(StatFs {
                blocks: 0,
                bfree: 0,
                bavail: 0,
                files: 0,
                ffree: 0,
                bsize: 4096,
                namelen: 255,
                frsize: 4096,
            });
        }
        let loc = self.locate(ino)?;
        match self
            .call_at(caller, &loc, FsRequest::StatFs { ino: loc.id })
            .await?
        {
            FsReply::StatFs(s) => Ok(s),
            other => Err(FsError::Transport(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn access(&self, caller: Caller, ino: u64, mask: i32) -> FsResult<()> {
        if ino >> NODE_SHIFT == 0 {
            return if mask & libc::W_OK != 0 {
                Err(FsError::ReadOnly)
            } else {
                Ok(())
            };
        }
        let loc = self.locate(ino)?;
        self.call_at(caller, &loc, FsRequest::Access { ino: loc.id, mask })
            .await
            .map(|_| ())
    }

    /// An inode operation whose reply the adapter interprets (xattrs).
    pub async fn on_inode(
        &self,
        caller: Caller,
        ino: u64,
        build: impl FnOnce(RemoteIno) -> FsRequest,
    ) -> FsResult<FsReply> {
        if ino >> NODE_SHIFT == 0 {
            return Err(FsError::Os(libc::ENODATA));
        }
        let loc = self.locate(ino)?;
        self.call_at(caller, &loc, build(loc.id)).await
    }
}

/// A directory listing from `names`, starting after cookie `offset` (the
/// cookies of generated directories are positions).
pub(crate) fn listing(names: Vec<(u64, FileKind, Vec<u8>)>, offset: u64) -> Vec<ListEntry> {
    names
        .into_iter()
        .enumerate()
        .skip(offset as usize)
        .map(|(i, (ino, kind, name))| ListEntry {
            ino,
            next_offset: i as u64 + 1,
            kind,
            name,
        })
        .collect()
}

/// Supplementary groups of `pid` from /proc; empty if it is gone.
fn read_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::ExportConfig;

    /// Node "n2" served in-process by a real export, which the test can
    /// replace to simulate a restart of n2's daemon. The epoch check is the
    /// daemon's (see daemon/src/lib.rs).
    struct FakeCluster {
        n2: Mutex<Arc<Export>>,
    }

    impl Cluster for FakeCluster {
        fn alive_nodes(&self) -> Vec<String> {
            vec!["n1".into(), "n2".into()]
        }
        fn call(&self, _node: &str, epoch: Option<u64>, creds: Creds, op: FsRequest) -> RemoteCall {
            let e = self.n2.lock().unwrap().clone();
            Box::pin(async move {
                if epoch.is_some_and(|x| x != e.epoch()) {
                    return Ok((e.epoch(), Err(libc::ESTALE)));
                }
                let who = crate::service::Who {
                    client: crate::service::ClientId {
                        node: "n1".into(),
                        run: 1,
                    },
                    creds,
                };
                Ok((e.epoch(), e.handle(&who, op)))
            })
        }
        fn home_node(&self, _pid: u32) -> Option<String> {
            None
        }
        fn self_id(&self) -> u16 {
            1
        }
        fn members(&self) -> Vec<mosix_proto::MemberInfo> {
            Vec::new()
        }
        fn proc_list(&self, _node: &str) -> BoxFuture<FsResult<(u16, Vec<ProcEntry>)>> {
            Box::pin(async { Ok((2, Vec::new())) })
        }
        fn set_lock(&self, _: &str, _: Creds, _: u32, _: bool) -> BoxFuture<FsResult<()>> {
            Box::pin(async { Ok(()) })
        }
        fn node_file(
            &self,
            _: &str,
            _: mosix_proto::proc::NodeFile,
        ) -> BoxFuture<FsResult<Vec<u8>>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn proc_read(
            &self,
            _: &str,
            _: Creds,
            _: u32,
            _: ProcFile,
        ) -> BoxFuture<FsResult<Vec<u8>>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn export(dir: &std::path::Path) -> Arc<Export> {
        Arc::new(
            Export::new(ExportConfig {
                root: dir.to_path_buf(),
                ..Default::default()
            })
            .unwrap(),
        )
    }

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };

    #[tokio::test]
    async fn a_restarted_node_never_aliases_old_inodes() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(d2.path().join("f"), b"one").unwrap();
        let cluster = Arc::new(FakeCluster {
            n2: Mutex::new(export(d2.path())),
        });
        let fs = MosixFs::new("n1".into(), export(d1.path()), cluster.clone());

        let root = fs.lookup(ROOT, INO_NODES, b"n2").await.unwrap();
        let f = fs.lookup(ROOT, root.ino, b"f").await.unwrap();
        assert_eq!(f.size, 3);
        assert_eq!(fs.getattr(ROOT, f.ino).await.unwrap().ino, f.ino);

        // n2's daemon restarts: its ids start over.
        *cluster.n2.lock().unwrap() = export(d2.path());
        assert_eq!(fs.getattr(ROOT, f.ino).await, Err(FsError::Stale));
        assert_eq!(fs.lookup(ROOT, root.ino, b"f").await, Err(FsError::Stale));

        // A fresh walk works, under new inode numbers.
        let root2 = fs.lookup(ROOT, INO_NODES, b"n2").await.unwrap();
        assert_ne!(root2.ino, root.ino);
        let f2 = fs.lookup(ROOT, root2.ino, b"f").await.unwrap();
        assert_ne!(f2.ino, f.ino);
        assert_eq!(fs.getattr(ROOT, f2.ino).await.unwrap().size, 3);
        // And the old numbers stay dead.
        assert_eq!(fs.getattr(ROOT, f.ino).await, Err(FsError::Stale));
    }

    #[tokio::test]
    async fn virtual_part_is_read_only_and_routes_here() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cluster = Arc::new(FakeCluster {
            n2: Mutex::new(export(d2.path())),
        });
        let fs = MosixFs::new("n1".into(), export(d1.path()), cluster);
        assert_eq!(fs.readlink(ROOT, INO_HERE).await.unwrap(), b"nodes/n1");
        assert_eq!(fs.readlink(ROOT, INO_HOME).await.unwrap(), b"nodes/n1");
        assert_eq!(
            fs.make(ROOT, INO_ROOT, |p| FsRequest::Mkdir {
                parent: p,
                name: b"x".to_vec(),
                mode: 0o755,
                umask: 0
            })
            .await,
            Err(FsError::ReadOnly)
        );
        assert_eq!(
            fs.lookup(ROOT, INO_NODES, b"n9").await,
            Err(FsError::Os(libc::ENOENT))
        );
        let names: Vec<Vec<u8>> = fs
            .readdir(ROOT, INO_NODES, 0, 0, 4096)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            [
                b".".to_vec(),
                b"..".to_vec(),
                b"n1".to_vec(),
                b"n2".to_vec()
            ]
        );
    }
}
