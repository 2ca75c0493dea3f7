//! `/mosix/proc` without FUSE: what each operation of the process view's
//! own mount answers, from this node's /proc, from batched snapshots of the
//! other nodes, or from the process's node. The FUSE adapter
//! ([`crate::fuse`]) only translates to and from this.
//!
//! ```text
//! /mosix/proc/                 every process of every live node, by gpid
//!   <gpid>/stat status ...     procfs files, rendered at lookup (see below)
//!   <gpid>/where home ...      MOSIX control files
//!   self -> <gpid of caller>   sys/ tty/ (mount points)   stat meminfo ... (cluster totals)
//! ```
//!
//! **Freshness.** A listing (reading the directory from its start) fetches
//! every live node's processes at once, paged, with the content of their
//! most read files ([`mosix_proto::proc::SNAPSHOT_FILES`]). While that
//! listing is being read, and for [`PROC_LIST`] after its last read, a file
//! of another node's process listed there is served from that snapshot; any
//! other file (this node's processes, a file not in the snapshot, or any
//! file once the listing is older) is rendered at lookup on the process's
//! node. A file's content is therefore as old as the listing being read
//! (plus at most [`PROC_LIST`]), and current when no listing was read in the
//! last [`PROC_LIST`]. A reader that scans the cluster (`ps`) gets one
//! picture of it, as of its listing, however long its scan takes.
//!
//! **No torn files.** Each lookup of a file hands the kernel an inode that
//! stands for one immutable content ([`crate::versions`]).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use mosix_proto::fs::Creds;
use mosix_proto::proc::{
    gpid, split_gpid, NodeFile, ProcEntry, ProcFile, CLUSTER_ROOT_GPID, GPID_PID_BITS,
};

use crate::error::{ProcError, ProcResult};
use crate::ino::{self, Ino, PROC_FILES};
use crate::node::LocalNode;
use crate::service::{Cluster, LocalProcs, Processes};
use crate::versions::{Key, Meta, Miss, Versions};

/// How long a listing (and the snapshot of files that came with it) is
/// used: a process shows up or goes away at most this late, and a file
/// served from the snapshot is at most this old.
pub const PROC_LIST: Duration = Duration::from_secs(1);
/// Names that never change while the daemon runs (the top's fixed entries,
/// and the absence of any other name in a process directory: `ctty`,
/// `task`...), kept by the kernel this long.
pub const FIXED: Duration = Duration::from_secs(60);
/// Most processes remembered from direct lookups (older ones go first).
const PROBED_MAX: usize = 4096;
/// Most names one readdir call hands the adapter (a reply holds fewer).
const READDIR_RUN: usize = 512;
/// A listing this young is reused by the next one (two readers listing at
/// once share one round of requests).
const LISTING_REUSE: Duration = Duration::from_millis(50);

/// Who is asking, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    fn creds(self) -> Creds {
        Creds {
            uid: self.uid,
            gid: self.gid,
            groups: Vec::new(),
            pid: self.pid,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// Attributes as the kernel is told them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u16,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// A lookup's answer: attributes and how long the kernel may keep them and
/// the name, or (`attr` None) that the name does not exist, kept `entry_ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub attr: Option<Attr>,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

/// One name of a listing, with the entry the kernel keeps as if looked up
/// (READDIRPLUS; `.` and `..` are not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: Vec<u8>,
    pub entry: Option<Entry>,
}

impl Listing {
    fn fresh(&self) -> bool {
        let read = Duration::from_millis(self.read_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.at.elapsed() < read + PROC_LIST
    }

    fn touch(&self) {
        let ms = self.at.elapsed().as_millis() as u64;
        self.read_ms
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The files of one process as its node sent them with a listing.
type Snapshot = HashMap<ProcFile, Result<Vec<u8>, i32>>;

/// Where a process lives, who owns it, and (for another node's process in
/// a fresh listing) the snapshot of its files.
#[derive(Debug, Clone)]
struct Proc {
    node: String,
    entry: ProcEntry,
    files: Option<Arc<Snapshot>>,
}

struct Listing {
    at: Instant,
    /// When a reader last read this listing (any offset), as an offset from
    /// `at` in milliseconds: it stays fresh while it is being read, and for
    /// [`PROC_LIST`] after.
    read_ms: std::sync::atomic::AtomicU64,
    by_gpid: BTreeMap<u32, Proc>,
    /// The top directory's names, built once per listing.
    names: Vec<DirEntry>,
}

pub struct ProcFs {
    self_name: String,
    node: Arc<LocalNode>,
    local: Arc<dyn Processes>,
    cluster: Arc<dyn Cluster>,
    /// The newest listing (read without waiting by the fast paths).
    listing: RwLock<Option<Arc<Listing>>>,
    /// Held while a listing is fetched: readers at once share one.
    fetching: tokio::sync::Mutex<()>,
    /// Listings being read, by directory handle: offsets stay stable.
    open_dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: std::sync::atomic::AtomicU64,
    /// Node ids learned from listings, for gpids looked up directly.
    ids: Mutex<HashMap<u16, String>>,
    /// Processes asked of their node directly (not in a fresh listing),
    /// reused for [`PROC_LIST`], as a listing is.
    probed: Mutex<HashMap<u32, (Instant, Proc)>>,
    /// Processes written to since the listing: their snapshot is not used.
    written: Mutex<HashSet<u32>>,
    versions: Versions,
    started: SystemTime,
}

fn file_of(name: &[u8]) -> Option<ProcFile> {
    PROC_FILES
        .iter()
        .copied()
        .find(|f| f.name().as_bytes() == name)
}

fn is_link(f: ProcFile) -> bool {
    ProcFile::LINKS.contains(&f)
}

fn perm_of(f: ProcFile) -> u16 {
    match f {
        f if f.private() && !is_link(f) => 0o400,
        ProcFile::Where | ProcFile::Lock => 0o644,
        f if is_link(f) => 0o777,
        _ => 0o444,
    }
}

/// Errors rendering a file: a process that is gone is ENOENT, whatever the
/// node said.
fn gone(e: ProcError) -> ProcError {
    match e {
        ProcError::Os(libc::ESRCH) => ProcError::Os(libc::ENOENT),
        e => e,
    }
}

impl ProcFs {
    pub fn new(self_name: String, node: Arc<LocalNode>, cluster: Arc<dyn Cluster>) -> Self {
        ProcFs {
            self_name,
            local: Arc::new(LocalProcs(node.clone())),
            node,
            cluster,
            listing: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            open_dirs: Mutex::default(),
            next_fh: 1.into(),
            ids: Mutex::default(),
            written: Mutex::default(),
            probed: Mutex::default(),
            versions: Versions::default(),
            started: SystemTime::now(),
        }
    }

    fn self_id(&self) -> u16 {
        self.node.node_id()
    }

    fn procs(&self, node: &str) -> ProcResult<Arc<dyn Processes>> {
        if node == self.self_name {
            Ok(self.local.clone())
        } else {
            self.cluster.procs(node)
        }
    }

    fn live_nodes(&self) -> Vec<String> {
        let mut v = self.cluster.alive_nodes();
        v.push(self.self_name.clone());
        v.sort();
        v.dedup();
        v
    }

    fn fixed(&self, ino: u64, kind: Kind, perm: u16, size: u64) -> Attr {
        Attr {
            ino,
            kind,
            perm,
            size,
            uid: 0,
            gid: 0,
            mtime: self.started,
        }
    }

    fn dir_attr(&self, g: u32, alias: bool, e: &ProcEntry) -> Attr {
        Attr {
            uid: e.uid,
            gid: e.gid,
            ..self.fixed(ino::dir(g, alias), Kind::Dir, 0o555, 0)
        }
    }

    fn fresh(&self) -> Option<Arc<Listing>> {
        self.listing
            .read()
            .expect("listing")
            .clone()
            .filter(|l| l.fresh())
    }

    fn self_target(&self, caller: Caller) -> Vec<u8> {
        gpid(self.self_id(), caller.pid).to_string().into_bytes()
    }

    // ---- the listing ------------------------------------------------------

    /// Every live node's processes, another node's with the snapshot of
    /// their files: one paged request sequence per node, all nodes at once.
    async fn list_all(&self) -> Arc<Listing> {
        let _one = self.fetching.lock().await;
        if let Some(l) = self.listing.read().expect("listing").clone() {
            if l.at.elapsed() < LISTING_REUSE {
                return l;
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for n in self.live_nodes() {
            if n == self.self_name {
                continue;
            }
            let procs = self.cluster.procs(&n);
            set.spawn(async move {
                let procs = match procs {
                    Ok(p) => p,
                    Err(e) => return (n, Err(e)),
                };
                let mut pages = Vec::new();
                let mut after = 0;
                loop {
                    match procs.snapshot(after).await {
                        Ok(page) => {
                            let next = page.next;
                            pages.push(page);
                            match next {
                                Some(a) if a > after => after = a,
                                _ => break,
                            }
                        }
                        Err(e) => return (n, Err(e)),
                    }
                }
                (n, Ok(pages))
            });
        }
        let mut by_gpid = BTreeMap::new();
        let id = self.self_id();
        for p in self.node.list() {
            by_gpid.insert(
                gpid(id, p.pid),
                Proc {
                    node: self.self_name.clone(),
                    entry: p,
                    files: None,
                },
            );
        }
        let mut ids = HashMap::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((node, Ok(pages))) => {
                    for page in pages {
                        ids.insert(page.node_id, node.clone());
                        for s in page.procs {
                            let files = s
                                .files
                                .into_iter()
                                .map(|(f, r)| (f, r.map(|b| b.into_vec())))
                                .collect();
                            by_gpid.insert(
                                gpid(page.node_id, s.entry.pid),
                                Proc {
                                    node: node.clone(),
                                    entry: s.entry,
                                    files: Some(Arc::new(files)),
                                },
                            );
                        }
                    }
                }
                // A node that does not answer has no processes to show.
                Ok((node, Err(e))) => tracing::debug!(%node, error = %e, "no process list"),
                Err(e) => tracing::warn!(error = %e, "process list task failed"),
            }
        }
        by_gpid.insert(
            CLUSTER_ROOT_GPID,
            Proc {
                node: self.self_name.clone(),
                entry: ProcEntry {
                    pid: CLUSTER_ROOT_GPID,
                    uid: 0,
                    gid: 0,
                },
                files: None,
            },
        );
        self.ids.lock().expect("ids").extend(ids);
        let names = self.top_names(&by_gpid);
        let l = Arc::new(Listing {
            at: Instant::now(),
            read_ms: 0.into(),
            by_gpid,
            names,
        });
        *self.listing.write().expect("listing") = Some(l.clone());
        self.written.lock().expect("written").clear();
        l
    }

    /// Process `pid` of node `node`, asked of its node alone: its `status`
    /// names its owner (the effective uid and gid, as /proc/<pid> has).
    async fn probe(&self, node: String, pid: u32) -> ProcResult<Proc> {
        let root = Creds {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            pid: 0,
        };
        let status = self
            .procs(&node)?
            .read(&root, pid, ProcFile::Status)
            .await
            .map_err(gone)?;
        let status = String::from_utf8_lossy(&status);
        let id = |key: &str| -> Option<u32> {
            let line = status.lines().find_map(|l| l.strip_prefix(key))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        let (uid, gid) = id("Uid:")
            .zip(id("Gid:"))
            .ok_or(ProcError::Os(libc::ENOENT))?;
        Ok(Proc {
            node,
            entry: ProcEntry { pid, uid, gid },
            files: None,
        })
    }

    fn top_names(&self, by_gpid: &BTreeMap<u32, Proc>) -> Vec<DirEntry> {
        let fixed = |attr: Attr| {
            Some(Entry {
                attr: Some(attr),
                attr_ttl: FIXED,
                entry_ttl: FIXED,
            })
        };
        let root = fixed(self.fixed(ino::ROOT, Kind::Dir, 0o555, 0));
        let mut v = vec![
            DirEntry {
                ino: ino::ROOT,
                kind: Kind::Dir,
                name: b".".to_vec(),
                entry: root.clone(),
            },
            DirEntry {
                ino: ino::ROOT,
                kind: Kind::Dir,
                name: b"..".to_vec(),
                entry: root,
            },
            // Its target depends on the caller: looked up each time.
            DirEntry {
                ino: ino::SELF,
                kind: Kind::Symlink,
                name: b"self".to_vec(),
                entry: Some(Entry {
                    attr: Some(self.fixed(ino::SELF, Kind::Symlink, 0o777, 0)),
                    attr_ttl: Duration::ZERO,
                    entry_ttl: Duration::ZERO,
                }),
            },
        ];
        for (n, i) in ino::MOUNT_POINTS {
            v.push(DirEntry {
                ino: i,
                kind: Kind::Dir,
                name: n.as_bytes().to_vec(),
                entry: fixed(self.fixed(i, Kind::Dir, 0o555, 0)),
            });
        }
        // Rendered at lookup: listed without content.
        for f in NodeFile::ALL {
            let i = ino::node_file(f, ino::LISTED);
            v.push(DirEntry {
                ino: i,
                kind: Kind::File,
                name: f.name().as_bytes().to_vec(),
                entry: Some(self.listed(self.fixed(i, Kind::File, 0o444, 0))),
            });
        }
        for (g, p) in by_gpid {
            v.push(DirEntry {
                ino: ino::dir(*g, false),
                kind: Kind::Dir,
                name: g.to_string().into_bytes(),
                entry: Some(Entry {
                    attr: Some(self.dir_attr(*g, false, &p.entry)),
                    attr_ttl: PROC_LIST,
                    entry_ttl: PROC_LIST,
                }),
            });
        }
        v
    }

    /// A name as a listing gives it: no content, looked up again when used.
    fn listed(&self, attr: Attr) -> Entry {
        Entry {
            attr: Some(attr),
            attr_ttl: Duration::ZERO,
            entry_ttl: Duration::ZERO,
        }
    }

    /// The node serving gpid `g`'s home node id, learning ids from every
    /// live node if it is not known yet.
    async fn node_of(&self, id: u16) -> Option<String> {
        if id == self.self_id() {
            return Some(self.self_name.clone());
        }
        if let Some(n) = self.ids.lock().expect("ids").get(&id) {
            return Some(n.clone());
        }
        let mut set = tokio::task::JoinSet::new();
        for n in self.live_nodes() {
            if n == self.self_name {
                continue;
            }
            let procs = self.cluster.procs(&n);
            set.spawn(async move {
                match procs {
                    Ok(p) => (n, p.list().await),
                    Err(e) => (n, Err(e)),
                }
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok((n, Ok((i, _)))) = r {
                self.ids.lock().expect("ids").insert(i, n);
            }
        }
        self.ids.lock().expect("ids").get(&id).cloned()
    }

    /// Process `g`: from the fresh listing, else asked of its node now.
    async fn proc_of(&self, g: u32) -> ProcResult<Proc> {
        if let Some(p) = self.fresh().and_then(|l| l.by_gpid.get(&g).cloned()) {
            return Ok(p);
        }
        if g == CLUSTER_ROOT_GPID {
            return Ok(Proc {
                node: self.self_name.clone(),
                entry: ProcEntry {
                    pid: g,
                    uid: 0,
                    gid: 0,
                },
                files: None,
            });
        }
        let (id, pid) = split_gpid(g);
        if id == self.self_id() {
            return self.local_proc(pid).ok_or(ProcError::Os(libc::ENOENT));
        }
        let node = self.node_of(id).await.ok_or(ProcError::Os(libc::ENOENT))?;
        // Listed live by membership, or it is gone with its node.
        if !self.cluster.alive_nodes().contains(&node) {
            return Err(ProcError::Os(libc::ENOENT));
        }
        if let Some((at, p)) = self.probed.lock().expect("probed").get(&g) {
            if at.elapsed() < PROC_LIST {
                return Ok(p.clone());
            }
        }
        let p = self
            .probe(node, pid)
            .await
            .map_err(|_| ProcError::Os(libc::ENOENT))?;
        let mut probed = self.probed.lock().expect("probed");
        if probed.len() >= PROBED_MAX {
            probed.retain(|_, (at, _)| at.elapsed() < PROC_LIST);
        }
        probed.insert(g, (Instant::now(), p.clone()));
        Ok(p)
    }

    fn local_proc(&self, pid: u32) -> Option<Proc> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(format!("/proc/{pid}")).ok()?;
        Some(Proc {
            node: self.self_name.clone(),
            entry: ProcEntry {
                pid,
                uid: m.uid(),
                gid: m.gid(),
            },
            files: None,
        })
    }

    // ---- fast-path predicates (the adapter answers these on its thread) ---

    /// Whether a lookup of `name` in `parent` needs no other node now.
    pub fn lookup_is_local(&self, parent: u64, name: &[u8]) -> bool {
        match ino::classify(parent) {
            Ino::Root => {
                if NodeFile::ALL.iter().any(|f| f.name().as_bytes() == name) {
                    return false;
                }
                match std::str::from_utf8(name)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                {
                    None => true,
                    Some(n) if n >> GPID_PID_BITS == 0 || n == CLUSTER_ROOT_GPID => true,
                    Some(n) => {
                        split_gpid(n).0 == self.self_id()
                            || self.fresh().is_some_and(|l| l.by_gpid.contains_key(&n))
                    }
                }
            }
            Ino::Dir { gpid: g, .. } => {
                let Some(f) = file_of(name) else {
                    return true;
                };
                if g == CLUSTER_ROOT_GPID || split_gpid(g).0 == self.self_id() {
                    return true;
                }
                !is_link(f) && self.snapshot_of(g, f).is_some()
            }
            _ => true,
        }
    }

    /// Whether the other operations on `ino` need no other node now.
    pub fn is_local(&self, ino: u64) -> bool {
        match ino::classify(ino) {
            Ino::Dir { gpid: g, .. } | Ino::File { gpid: g, .. } => {
                g == CLUSTER_ROOT_GPID
                    || split_gpid(g).0 == self.self_id()
                    || self.fresh().is_some_and(|l| l.by_gpid.contains_key(&g))
            }
            _ => true,
        }
    }

    /// Whether a listing from `offset` needs the other nodes.
    pub fn readdir_is_local(&self, ino: u64, fh: u64, offset: u64) -> bool {
        ino != ino::ROOT || (offset > 0 && self.open_dirs.lock().expect("dirs").contains_key(&fh))
    }

    fn snapshot_of(&self, g: u32, f: ProcFile) -> Option<Result<Vec<u8>, i32>> {
        if self.written.lock().expect("written").contains(&g) {
            return None;
        }
        let l = self.fresh()?;
        l.by_gpid.get(&g)?.files.as_ref()?.get(&f).cloned()
    }

    // ---- operations ---------------------------------------------------------

    pub async fn lookup(&self, caller: Caller, parent: u64, name: &[u8]) -> ProcResult<Entry> {
        let negative = Entry {
            attr: None,
            attr_ttl: Duration::ZERO,
            entry_ttl: FIXED,
        };
        match ino::classify(parent) {
            Ino::Root => {
                if let Some(f) = NodeFile::ALL.iter().find(|f| f.name().as_bytes() == name) {
                    let content = self.cluster_file(*f).await;
                    let (i, m) = self
                        .versions
                        .publish(Key::Node(*f), content, 0, 0, |v| ino::node_file(*f, v));
                    return Ok(self.versioned(i, &m, 0o444));
                }
                if let Some((_, i)) = ino::MOUNT_POINTS.iter().find(|(n, _)| n.as_bytes() == name) {
                    return Ok(Entry {
                        attr: Some(self.fixed(*i, Kind::Dir, 0o555, 0)),
                        attr_ttl: FIXED,
                        entry_ttl: FIXED,
                    });
                }
                if name == b"self" {
                    let len = self.self_target(caller).len() as u64;
                    return Ok(Entry {
                        attr: Some(self.fixed(ino::SELF, Kind::Symlink, 0o777, len)),
                        attr_ttl: Duration::ZERO,
                        entry_ttl: Duration::ZERO,
                    });
                }
                let Some(n) = std::str::from_utf8(name)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    // Only numbers come and go here.
                    return Ok(negative);
                };
                // A plain pid (no node id) names this node's process: what
                // getpid() returns, so `/proc/$$` and tools that look
                // themselves up keep working. Not listed, so nothing shows
                // twice.
                let (g, alias) = if n >> GPID_PID_BITS == 0 && n != CLUSTER_ROOT_GPID {
                    (gpid(self.self_id(), n), true)
                } else {
                    (n, false)
                };
                let p = self.proc_of(g).await?;
                Ok(Entry {
                    attr: Some(self.dir_attr(g, alias, &p.entry)),
                    attr_ttl: PROC_LIST,
                    entry_ttl: PROC_LIST,
                })
            }
            Ino::Dir { gpid: g, .. } => {
                let Some(f) = file_of(name) else {
                    // A process directory holds the same names for as long
                    // as it exists: `ctty`, `task`... never appear.
                    return Ok(negative);
                };
                let p = self.proc_of(g).await?;
                if is_link(f) {
                    return Ok(Entry {
                        attr: Some(Attr {
                            uid: p.entry.uid,
                            gid: p.entry.gid,
                            ..self.fixed(ino::file(g, f, 0), Kind::Symlink, 0o777, 0)
                        }),
                        attr_ttl: Duration::ZERO,
                        entry_ttl: Duration::ZERO,
                    });
                }
                let key = Key::Proc(g, f);
                let (uid, gid) = (p.entry.uid, p.entry.gid);
                if f.private() && caller.uid != 0 && caller.uid != uid {
                    let i = ino::file(g, f, 0);
                    let m = self.versions.denied(key, i, uid, gid);
                    return Ok(self.versioned(i, &m, perm_of(f)));
                }
                let content = match self.render(caller, g, &p, f).await {
                    Ok(c) => c,
                    Err(ProcError::Os(libc::EACCES)) => {
                        let i = ino::file(g, f, 0);
                        let m = self.versions.denied(key, i, uid, gid);
                        return Ok(self.versioned(i, &m, perm_of(f)));
                    }
                    Err(e) => return Err(gone(e)),
                };
                let (i, m) = self
                    .versions
                    .publish(key, content, uid, gid, |v| ino::file(g, f, v));
                Ok(self.versioned(i, &m, perm_of(f)))
            }
            Ino::Unknown => Err(ProcError::Os(libc::ENOENT)),
            _ => Err(ProcError::Os(libc::ENOTDIR)),
        }
    }

    /// A file's entry: looked up at every open (entry TTL 0) so the open
    /// gets the content of now; its attributes describe that content for
    /// good, kept as long as a listing.
    fn versioned(&self, i: u64, m: &Meta, perm: u16) -> Entry {
        Entry {
            attr: Some(Attr {
                ino: i,
                kind: Kind::File,
                perm,
                size: m.size,
                uid: m.uid,
                gid: m.gid,
                mtime: m.mtime.max(self.started),
            }),
            attr_ttl: PROC_LIST,
            entry_ttl: Duration::ZERO,
        }
    }

    /// File `f` of process `g` as `caller` may see it now: from the
    /// snapshot of a fresh listing, or rendered on its node.
    async fn render(&self, caller: Caller, g: u32, p: &Proc, f: ProcFile) -> ProcResult<Vec<u8>> {
        if g == CLUSTER_ROOT_GPID {
            return Ok(crate::cluster_root(f)?);
        }
        if let Some(r) = self.snapshot_of(g, f) {
            return Ok(r?);
        }
        self.procs(&p.node)?
            .read(&caller.creds(), p.entry.pid, f)
            .await
    }

    pub async fn getattr(&self, caller: Caller, i: u64) -> ProcResult<Entry> {
        let fixed = |a: Attr| Entry {
            attr: Some(a),
            attr_ttl: FIXED,
            entry_ttl: FIXED,
        };
        match ino::classify(i) {
            Ino::Root => Ok(fixed(self.fixed(i, Kind::Dir, 0o555, 0))),
            Ino::MountPoint(_) => Ok(fixed(self.fixed(i, Kind::Dir, 0o555, 0))),
            Ino::SelfLink => self.lookup(caller, ino::ROOT, b"self").await,
            Ino::Dir { gpid: g, alias } => {
                let p = self.proc_of(g).await?;
                Ok(Entry {
                    attr: Some(self.dir_attr(g, alias, &p.entry)),
                    attr_ttl: PROC_LIST,
                    entry_ttl: PROC_LIST,
                })
            }
            Ino::File { gpid: g, file, .. } if is_link(file) => {
                let p = self.proc_of(g).await?;
                Ok(Entry {
                    attr: Some(Attr {
                        uid: p.entry.uid,
                        gid: p.entry.gid,
                        ..self.fixed(i, Kind::Symlink, 0o777, 0)
                    }),
                    attr_ttl: Duration::ZERO,
                    entry_ttl: Duration::ZERO,
                })
            }
            Ino::File {
                gpid: g,
                file,
                version: ino::LISTED,
            } => {
                let p = self.proc_of(g).await?;
                Ok(self.listed(Attr {
                    uid: p.entry.uid,
                    gid: p.entry.gid,
                    ..self.fixed(i, Kind::File, perm_of(file), 0)
                }))
            }
            Ino::Node {
                version: ino::LISTED,
                ..
            } => Ok(self.listed(self.fixed(i, Kind::File, 0o444, 0))),
            Ino::File { file, .. } => {
                let m = self.versions.meta(i).ok_or(ProcError::Os(libc::ENOENT))?;
                Ok(self.versioned(i, &m, perm_of(file)))
            }
            Ino::Node { .. } => {
                let m = self.versions.meta(i).ok_or(ProcError::Os(libc::ENOENT))?;
                Ok(self.versioned(i, &m, 0o444))
            }
            Ino::Unknown => Err(ProcError::Os(libc::ENOENT)),
        }
    }

    /// A new directory handle (the top's listing is kept per handle).
    pub fn opendir(&self, i: u64) -> ProcResult<u64> {
        match ino::classify(i) {
            Ino::Root | Ino::MountPoint(_) | Ino::Dir { .. } => Ok(self
                .next_fh
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            Ino::Unknown => Err(ProcError::Os(libc::ENOENT)),
            _ => Err(ProcError::Os(libc::ENOTDIR)),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.open_dirs.lock().expect("dirs").remove(&fh);
    }

    /// The names of directory `i` from position `offset`; reading the top
    /// from its start takes a new listing.
    pub async fn readdir(&self, i: u64, fh: u64, offset: u64) -> ProcResult<Vec<DirEntry>> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match ino::classify(i) {
            Ino::Root => {
                let kept = self.open_dirs.lock().expect("dirs").get(&fh).cloned();
                let l = match kept {
                    Some(l) if offset > 0 => l,
                    _ => {
                        let l = self.list_all().await;
                        self.open_dirs.lock().expect("dirs").insert(fh, l.clone());
                        l
                    }
                };
                l.touch();
                // One reply holds a few dozen names: hand over a bounded
                // run, not the whole rest of a 10,000-process listing.
                Ok(l.names
                    .iter()
                    .skip(start)
                    .take(READDIR_RUN)
                    .cloned()
                    .collect())
            }
            Ino::MountPoint(_) => {
                let dir = |i| Some(self.listed(self.fixed(i, Kind::Dir, 0o555, 0)));
                let v = [(i, b".".to_vec()), (ino::ROOT, b"..".to_vec())];
                Ok(v.into_iter()
                    .skip(start)
                    .map(|(ino, name)| DirEntry {
                        ino,
                        kind: Kind::Dir,
                        name,
                        entry: dir(ino),
                    })
                    .collect())
            }
            Ino::Dir { gpid: g, alias } => {
                let p = self.proc_of(g).await?;
                let (uid, gid) = (p.entry.uid, p.entry.gid);
                let owned = |a: Attr| Attr { uid, gid, ..a };
                let d = Some(self.listed(owned(self.dir_attr(g, alias, &p.entry))));
                let mut v = vec![
                    DirEntry {
                        ino: ino::dir(g, alias),
                        kind: Kind::Dir,
                        name: b".".to_vec(),
                        entry: d.clone(),
                    },
                    DirEntry {
                        ino: ino::ROOT,
                        kind: Kind::Dir,
                        name: b"..".to_vec(),
                        entry: d,
                    },
                ];
                // Contents are rendered at lookup: listed without content.
                for f in PROC_FILES {
                    let i = ino::file(g, f, ino::LISTED);
                    let kind = if is_link(f) {
                        Kind::Symlink
                    } else {
                        Kind::File
                    };
                    v.push(DirEntry {
                        ino: i,
                        kind,
                        name: f.name().as_bytes().to_vec(),
                        entry: Some(self.listed(owned(self.fixed(i, kind, perm_of(f), 0)))),
                    });
                }
                Ok(v.into_iter().skip(start).collect())
            }
            Ino::Unknown => Err(ProcError::Os(libc::ENOENT)),
            _ => Err(ProcError::Os(libc::ENOTDIR)),
        }
    }

    /// Bytes of version `i` of a file. `None`: its content was dropped
    /// under the memory cap; [`Self::read_again`] renders it again.
    pub fn read(
        &self,
        caller: Caller,
        i: u64,
        offset: u64,
        size: u32,
    ) -> Option<ProcResult<Vec<u8>>> {
        let (m, c) = match self.versions.content(i) {
            Ok(x) => x,
            Err(Miss::Dropped(_)) => return None,
            Err(Miss::Unknown) => {
                return Some(Err(match ino::classify(i) {
                    // Version 0: not readable by whoever looked it up.
                    Ino::File { version: 0, .. } => ProcError::Os(libc::EACCES),
                    Ino::File { .. } | Ino::Node { .. } => ProcError::Os(libc::ESTALE),
                    _ => ProcError::Os(libc::EISDIR),
                }));
            }
        };
        if let Key::Proc(_, f) = m.key {
            if f.private() && caller.uid != 0 && caller.uid != m.uid {
                return Some(Err(ProcError::Os(libc::EACCES)));
            }
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(c.len());
        let end = start.saturating_add(size as usize).min(c.len());
        Some(Ok(c[start..end].to_vec()))
    }

    /// A read of a version whose bytes were dropped: rendered again, served
    /// only if unchanged (the kernel was told its size), else EIO.
    pub async fn read_again(
        &self,
        caller: Caller,
        i: u64,
        offset: u64,
        size: u32,
    ) -> ProcResult<Vec<u8>> {
        let m = self.versions.meta(i).ok_or(ProcError::Os(libc::ESTALE))?;
        let content = match m.key {
            Key::Node(f) => self.cluster_file(f).await,
            Key::Proc(g, f) => {
                let p = self.proc_of(g).await?;
                self.render(caller, g, &p, f).await?
            }
        };
        self.versions
            .restore(i, content)
            .ok_or(ProcError::Os(libc::EIO))?;
        self.read(caller, i, offset, size)
            .unwrap_or(Err(ProcError::Os(libc::EIO)))
    }

    pub fn forget(&self, i: u64, n: u64) {
        self.versions.forget(i, n);
    }

    /// A node-wide file for the whole cluster: every live node's own, asked
    /// for at once and combined in node order.
    async fn cluster_file(&self, f: NodeFile) -> Vec<u8> {
        let nodes = self.live_nodes();
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let procs = self.procs(n);
            set.spawn(async move {
                match procs {
                    Ok(p) => (i, p.node_file(f).await),
                    Err(e) => (i, Err(e)),
                }
            });
        }
        let mut parts: Vec<(usize, Vec<u8>)> = Vec::new();
        while let Some(r) = set.join_next().await {
            // Unanswered nodes count for nothing, as their processes do.
            if let Ok((i, Ok(p))) = r {
                parts.push((i, p));
            }
        }
        parts.sort_by_key(|(i, _)| *i);
        let parts: Vec<Vec<u8>> = parts.into_iter().map(|(_, p)| p).collect();
        crate::aggregate(f, &parts)
    }

    /// `self`, `cwd` and `exe`. `cwd` and `exe` point where they do on the
    /// process's node, as a path under /mosix, so they resolve the same on
    /// every node.
    pub async fn readlink(&self, caller: Caller, i: u64) -> ProcResult<Vec<u8>> {
        let (g, f) = match ino::classify(i) {
            Ino::SelfLink => return Ok(self.self_target(caller)),
            Ino::File { gpid, file, .. } if is_link(file) => (gpid, file),
            _ => return Err(ProcError::Os(libc::EINVAL)),
        };
        if g == CLUSTER_ROOT_GPID {
            // Its cwd is the cluster's root; like a kernel thread, it has no
            // executable.
            return match f {
                ProcFile::Cwd => Ok(b"/mosix".to_vec()),
                _ => Err(ProcError::Os(libc::ENOENT)),
            };
        }
        let p = self.proc_of(g).await?;
        let target = self
            .procs(&p.node)?
            .read(&caller.creds(), p.entry.pid, f)
            .await
            .map_err(gone)?;
        let mut out = format!("/mosix/nodes/{}", p.node).into_bytes();
        out.extend_from_slice(&target);
        Ok(out)
    }

    /// `echo n2 > where` truncates before it writes: the owner (or root)
    /// may, so the write itself decides. Any other change: EPERM.
    pub async fn truncate(&self, caller: Caller, i: u64) -> ProcResult<Entry> {
        let Ino::File {
            gpid: g,
            file: ProcFile::Where | ProcFile::Lock,
            ..
        } = ino::classify(i)
        else {
            return Err(ProcError::Os(libc::EPERM));
        };
        if g == CLUSTER_ROOT_GPID {
            return Err(ProcError::Os(libc::EPERM));
        }
        let p = self.proc_of(g).await?;
        if caller.uid != 0 && caller.uid != p.entry.uid {
            return Err(ProcError::Os(libc::EACCES));
        }
        self.getattr(caller, i).await
    }

    /// A write to a control file: `lock` takes 1 or 0; `where` takes a node
    /// name (or `home`) and asks the process's node to move it there.
    pub async fn write(&self, caller: Caller, i: u64, data: &[u8]) -> ProcResult<u32> {
        let Ino::File { gpid: g, file, .. } = ino::classify(i) else {
            return Err(ProcError::Os(libc::EBADF));
        };
        if g == CLUSTER_ROOT_GPID {
            return Err(ProcError::Os(libc::EPERM));
        }
        let text = std::str::from_utf8(data)
            .map(str::trim)
            .map_err(|_| ProcError::Os(libc::EINVAL))?;
        let creds = caller.creds();
        match file {
            ProcFile::Where => {
                if text.is_empty() {
                    return Err(ProcError::Os(libc::EINVAL));
                }
                let p = self.proc_of(g).await?;
                self.procs(&p.node)?
                    .migrate(&creds, p.entry.pid, text)
                    .await?;
            }
            ProcFile::Lock => {
                let on = match text {
                    "1" => true,
                    "0" => false,
                    _ => return Err(ProcError::Os(libc::EINVAL)),
                };
                let p = self.proc_of(g).await?;
                self.procs(&p.node)?
                    .set_lock(&creds, p.entry.pid, on)
                    .await?;
            }
            _ => return Err(ProcError::Os(libc::EBADF)),
        }
        // This node reads its own write back: not from the snapshot, and
        // not from the kernel's pages of the version written to.
        self.written.lock().expect("written").insert(g);
        for f in [
            ProcFile::Where,
            ProcFile::Lock,
            ProcFile::Cantmove,
            ProcFile::Nmigs,
        ] {
            self.versions.invalidate(Key::Proc(g, f));
        }
        Ok(data.len() as u32)
    }

    /// Bytes of content kept and versions the kernel holds.
    pub fn usage(&self) -> (usize, usize) {
        self.versions.usage()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use mosix_proto::proc::{ProcSnap, SnapshotPage};

    use super::*;
    use crate::node::Stationary;

    /// Node n2 (id 2): processes 10 and 11 (11 owned by uid 1000), sent in
    /// pages of one process; its `stat` says what `state` holds.
    struct Remote {
        state: Mutex<&'static str>,
        reads: AtomicU32,
        pages: AtomicU32,
    }

    impl Remote {
        fn stat(&self, pid: u32) -> Vec<u8> {
            format!("{} (x) {} 1\n", gpid(2, pid), self.state.lock().unwrap()).into_bytes()
        }
        fn snap(&self, pid: u32) -> ProcSnap {
            let uid = if pid == 11 { 1000 } else { 0 };
            ProcSnap {
                entry: ProcEntry { pid, uid, gid: uid },
                files: vec![
                    (ProcFile::Stat, Ok(self.stat(pid).into())),
                    (ProcFile::Environ, Ok(b"SECRET=1\0".to_vec().into())),
                ],
            }
        }
    }

    #[async_trait]
    impl Processes for Remote {
        async fn list(&self) -> ProcResult<(u16, Vec<ProcEntry>)> {
            Ok((2, vec![self.snap(10).entry, self.snap(11).entry]))
        }
        async fn snapshot(&self, after: u32) -> ProcResult<SnapshotPage> {
            self.pages.fetch_add(1, Ordering::SeqCst);
            let pid = if after < 10 { 10 } else { 11 };
            Ok(SnapshotPage {
                node_id: 2,
                procs: vec![self.snap(pid)],
                next: (pid == 10).then_some(10),
            })
        }
        async fn read(&self, _: &Creds, pid: u32, f: ProcFile) -> ProcResult<Vec<u8>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let uid = self.snap(pid).entry.uid;
            match f {
                ProcFile::Stat => Ok(self.stat(pid)),
                ProcFile::Status => {
                    Ok(format!("Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n").into_bytes())
                }
                _ => Ok(b"other\n".to_vec()),
            }
        }
        async fn node_file(&self, _: NodeFile) -> ProcResult<Vec<u8>> {
            Ok(b"MemTotal: 1 kB\n".to_vec())
        }
        async fn set_lock(&self, _: &Creds, _: u32, _: bool) -> ProcResult<()> {
            Ok(())
        }
        async fn migrate(&self, _: &Creds, _: u32, _: &str) -> ProcResult<()> {
            Err(ProcError::Os(libc::EOPNOTSUPP))
        }
    }

    struct Two(Arc<Remote>);

    impl Cluster for Two {
        fn alive_nodes(&self) -> Vec<String> {
            vec!["n2".into()]
        }
        fn procs(&self, node: &str) -> ProcResult<Arc<dyn Processes>> {
            match node {
                "n2" => Ok(self.0.clone()),
                _ => Err(ProcError::NoSuchNode(node.into())),
            }
        }
    }

    const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
    };

    fn setup() -> (ProcFs, Arc<Remote>) {
        let remote = Arc::new(Remote {
            state: Mutex::new("S"),
            reads: 0.into(),
            pages: 0.into(),
        });
        let node = Arc::new(LocalNode::new(
            1,
            Arc::new(Stationary { node: "n1".into() }),
        ));
        let fs = ProcFs::new("n1".into(), node, Arc::new(Two(remote.clone())));
        (fs, remote)
    }

    fn names(v: &[DirEntry]) -> Vec<String> {
        v.iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect()
    }

    /// Every name of the top, read from `offset` on as the kernel does.
    async fn whole(fs: &ProcFs, fh: u64) -> Vec<DirEntry> {
        let mut all = fs.readdir(ino::ROOT, fh, 0).await.unwrap();
        loop {
            let more = fs.readdir(ino::ROOT, fh, all.len() as u64).await.unwrap();
            if more.is_empty() {
                return all;
            }
            all.extend(more);
        }
    }

    async fn read_all(fs: &ProcFs, c: Caller, parent: u64, name: &str) -> ProcResult<Vec<u8>> {
        let e = fs.lookup(c, parent, name.as_bytes()).await?;
        let a = e.attr.expect("exists");
        let data = fs.read(c, a.ino, 0, 4096).expect("kept")?;
        assert_eq!(data.len() as u64, a.size, "size and content disagree");
        Ok(data)
    }

    #[tokio::test]
    async fn a_listing_brings_every_node_in_pages_and_serves_opens_from_them() {
        let (fs, remote) = setup();
        let fh = fs.opendir(ino::ROOT).unwrap();
        let listed = names(&whole(&fs, fh).await);
        let me = gpid(1, std::process::id()).to_string();
        for want in [".", "..", "self", "sys", "tty", "meminfo", "1", &me] {
            assert!(listed.iter().any(|n| n == want), "{want} not in {listed:?}");
        }
        for pid in [10, 11] {
            assert!(listed.contains(&gpid(2, pid).to_string()), "{listed:?}");
        }
        assert_eq!(remote.pages.load(Ordering::SeqCst), 2);
        // Every name comes with attributes (READDIRPLUS).
        assert!(whole(&fs, fh)
            .await
            .iter()
            .all(|e| e.entry.as_ref().is_some_and(|e| e.attr.is_some())));
        // Reading on from an offset reuses the handle's listing.
        assert_eq!(remote.pages.load(Ordering::SeqCst), 2);

        // Opened while the listing is fresh: no round trip.
        let dir = ino::dir(gpid(2, 10), false);
        assert!(fs.lookup_is_local(ino::ROOT, gpid(2, 10).to_string().as_bytes()));
        assert!(fs.lookup_is_local(dir, b"stat"));
        let stat = read_all(&fs, ROOT, dir, "stat").await.unwrap();
        assert!(stat.starts_with(format!("{} (x) S", gpid(2, 10)).as_bytes()));
        assert_eq!(remote.reads.load(Ordering::SeqCst), 0);
        // Not in the snapshot: asked of the node.
        assert!(!fs.lookup_is_local(dir, b"limits"));
        assert_eq!(
            read_all(&fs, ROOT, dir, "limits").await.unwrap(),
            b"other\n"
        );
        assert_eq!(remote.reads.load(Ordering::SeqCst), 1);
        // Names a process never has are absent for good (negative entry).
        let ctty = fs.lookup(ROOT, dir, b"ctty").await.unwrap();
        assert_eq!((ctty.attr, ctty.entry_ttl), (None, FIXED));
    }

    #[tokio::test]
    async fn a_file_opened_without_a_listing_is_current_and_versions_follow_content() {
        let (fs, remote) = setup();
        let g = gpid(2, 10);
        let top = fs
            .lookup(ROOT, ino::ROOT, g.to_string().as_bytes())
            .await
            .unwrap();
        let dir = top.attr.unwrap().ino;
        // The directory: its node alone is asked (one read of `status`).
        assert_eq!(remote.reads.load(Ordering::SeqCst), 1);
        assert_eq!(remote.pages.load(Ordering::SeqCst), 0);
        let first = fs.lookup(ROOT, dir, b"stat").await.unwrap().attr.unwrap();
        assert_eq!(remote.reads.load(Ordering::SeqCst), 2);
        // Unchanged: the same inode (the kernel keeps its pages).
        let again = fs.lookup(ROOT, dir, b"stat").await.unwrap().attr.unwrap();
        assert_eq!(first.ino, again.ino);
        // Changed (stopped): a new inode with the new content; the old one
        // still reads whole as it was.
        *remote.state.lock().unwrap() = "T";
        let stopped = fs.lookup(ROOT, dir, b"stat").await.unwrap().attr.unwrap();
        assert_ne!(first.ino, stopped.ino);
        let now = fs.read(ROOT, stopped.ino, 0, 4096).unwrap().unwrap();
        assert!(String::from_utf8(now).unwrap().contains(" T "));
        let old = fs.read(ROOT, first.ino, 0, 4096).unwrap().unwrap();
        assert!(String::from_utf8(old).unwrap().contains(" S "));
        fs.forget(first.ino, 2);
        assert_eq!(
            fs.read(ROOT, first.ino, 0, 10).unwrap(),
            Err(ProcError::Os(libc::ESTALE))
        );
    }

    #[tokio::test]
    async fn another_users_environ_is_refused_even_from_the_snapshot() {
        let (fs, _) = setup();
        let fh = fs.opendir(ino::ROOT).unwrap();
        fs.readdir(ino::ROOT, fh, 0).await.unwrap();
        let dir = ino::dir(gpid(2, 11), false);
        let other = Caller {
            uid: 1001,
            gid: 1001,
            pid: 0,
        };
        let owner = Caller {
            uid: 1000,
            gid: 1000,
            pid: 0,
        };
        let e = fs
            .lookup(other, dir, b"environ")
            .await
            .unwrap()
            .attr
            .unwrap();
        assert_eq!(
            fs.read(other, e.ino, 0, 4096),
            Some(Err(ProcError::Os(libc::EACCES)))
        );
        assert_eq!(
            read_all(&fs, owner, dir, "environ").await.unwrap(),
            b"SECRET=1\0"
        );
        let mine = fs
            .lookup(owner, dir, b"environ")
            .await
            .unwrap()
            .attr
            .unwrap();
        // Even with the owner's version in hand, another user reads nothing.
        assert_eq!(
            fs.read(other, mine.ino, 0, 4096),
            Some(Err(ProcError::Os(libc::EACCES)))
        );
        assert_eq!(
            fs.truncate(other, ino::file(gpid(2, 11), ProcFile::Lock, 1))
                .await
                .unwrap_err(),
            ProcError::Os(libc::EACCES)
        );
    }
}
