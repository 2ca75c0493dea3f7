//! `/mosix/proc`: one directory per process of every live node, named by its
//! gpid, with procfs-format files rendered on the process's node at open
//! (each open reads one consistent snapshot, served from a buffer with
//! direct I/O, as lxcfs does) and the MOSIX control files.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mosix_proto::fs::FileKind;
use mosix_proto::proc::{
    gpid, split_gpid, NodeFile, ProcEntry, ProcFile, CLUSTER_ROOT_GPID, GPID_PID_BITS,
};

use crate::error::{FsError, FsResult};
use crate::namespace::{listing, Caller, ListEntry, MosixFs, NodeAttr, INO_PROC, INO_ROOT};

/// Inode numbers of /mosix/proc entries: this bit, the gpid, and the file.
pub const PROC_BASE: u64 = 1 << 40;
/// /mosix/proc/self.
pub const INO_PROC_SELF: u64 = 7;
/// Empty directories `sys` and `tty`: where `mosix shell` mounts the node's
/// own /proc/sys and /proc/tty, which tools read beside the process list.
pub const MOUNT_POINTS: [(&str, u64); 2] = [("sys", 10), ("tty", 11)];
const FILE_BITS: u32 = 5;
/// How old a listing of the cluster's processes may be when reused: a
/// process shows up or goes away in /mosix/proc at most this late.
pub const PROC_LIST_TTL: Duration = Duration::from_secs(1);

/// The entries of a process directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir,
    File(ProcFile),
    /// MOSIX: where the process runs now; writing a node name moves it.
    Where,
    /// MOSIX: its home node.
    Home,
    /// MOSIX: how many times it migrated.
    Nmigs,
    /// MOSIX: empty, or why it cannot migrate.
    Cantmove,
    /// MOSIX: 1 pins the process to its node.
    Lock,
    /// /mosix/proc/{stat,meminfo,...}: the whole cluster as one machine.
    Node(NodeFile),
    /// `cwd` and `exe`: symlinks into /mosix/nodes/<node>/.
    Link(ProcFile),
}

const CONTROL: [(&str, Entry); 5] = [
    ("lock", Entry::Lock),
    ("where", Entry::Where),
    ("home", Entry::Home),
    ("nmigs", Entry::Nmigs),
    ("cantmove", Entry::Cantmove),
];

impl Entry {
    fn index(self) -> u64 {
        match self {
            Entry::Dir => 0,
            Entry::File(f) => 1 + ProcFile::ALL.iter().position(|x| *x == f).unwrap_or(0) as u64,
            Entry::Where => 20,
            Entry::Home => 21,
            Entry::Nmigs => 22,
            Entry::Cantmove => 23,
            Entry::Lock => 14,
            Entry::Node(f) => 24 + NodeFile::ALL.iter().position(|x| *x == f).unwrap_or(0) as u64,
            Entry::Link(f) => 12 + ProcFile::LINKS.iter().position(|x| *x == f).unwrap_or(0) as u64,
        }
    }

    fn from_index(i: u64) -> Option<Entry> {
        match i {
            0 => Some(Entry::Dir),
            1..=9 => ProcFile::ALL.get(i as usize - 1).map(|f| Entry::File(*f)),
            12..=13 => ProcFile::LINKS
                .get(i as usize - 12)
                .map(|f| Entry::Link(*f)),
            14 => Some(Entry::Lock),
            20 => Some(Entry::Where),
            21 => Some(Entry::Home),
            22 => Some(Entry::Nmigs),
            23 => Some(Entry::Cantmove),
            24..=28 => NodeFile::ALL.get(i as usize - 24).map(|f| Entry::Node(*f)),
            _ => None,
        }
    }

    fn from_name(name: &[u8]) -> Option<Entry> {
        ProcFile::ALL
            .iter()
            .find(|f| f.name().as_bytes() == name)
            .map(|f| Entry::File(*f))
            .or_else(|| {
                CONTROL
                    .iter()
                    .find(|(n, _)| n.as_bytes() == name)
                    .map(|(_, e)| *e)
            })
            .or_else(|| {
                ProcFile::LINKS
                    .iter()
                    .find(|f| f.name().as_bytes() == name)
                    .map(|f| Entry::Link(*f))
            })
    }

    fn names() -> Vec<(&'static str, Entry)> {
        let mut v: Vec<(&str, Entry)> = ProcFile::ALL
            .iter()
            .map(|f| (f.name(), Entry::File(*f)))
            .collect();
        v.extend(CONTROL);
        v.extend(ProcFile::LINKS.iter().map(|f| (f.name(), Entry::Link(*f))));
        v
    }
}

fn proc_ino(g: u32, e: Entry) -> u64 {
    PROC_BASE | ((g as u64) << FILE_BITS) | e.index()
}

pub fn is_proc(ino: u64) -> bool {
    ino >> 48 == 0
        && (ino & PROC_BASE != 0
            || ino == INO_PROC_SELF
            || MOUNT_POINTS.iter().any(|(_, i)| *i == ino))
}

/// Files whose content is rendered at open (/mosix/proc and /mosix/cluster).
pub fn is_generated(ino: u64) -> bool {
    is_proc(ino) || crate::clusterdir::is_cluster(ino)
}

/// Where a process lives and who owns it.
#[derive(Debug, Clone)]
struct Proc {
    node: String,
    entry: ProcEntry,
}

#[derive(Default)]
struct Listing {
    by_gpid: BTreeMap<u32, Proc>,
}

#[derive(Default)]
pub struct ProcState {
    listing: tokio::sync::Mutex<Option<(Instant, Arc<Listing>)>>,
    handles: Mutex<HashMap<u64, Vec<u8>>>,
    next_fh: AtomicU64,
}

impl MosixFs {
    /// Whether `ino` belongs to a process of this node (or is /mosix/proc's
    /// lookup of one, by `name`): its files are read from this node's /proc
    /// without the network, so the FUSE thread can answer at once.
    pub fn proc_is_local(&self, ino: u64, name: Option<&[u8]>) -> bool {
        let g = match name {
            Some(name) if ino == INO_PROC => {
                match std::str::from_utf8(name)
                    .ok()
                    .and_then(|s| s.parse::<u32>().ok())
                {
                    Some(n) if n >> GPID_PID_BITS == 0 => return true,
                    Some(n) => n,
                    None => return false,
                }
            }
            _ => match decode(ino) {
                Some((g, e)) if !matches!(e, Entry::Node(_)) => g,
                _ => return false,
            },
        };
        split_gpid(g).0 == self.cluster.self_id()
    }

    /// Whether the cached listing can answer a lookup without the network.
    pub fn proc_listing_fresh(&self) -> bool {
        self.procs.listing.try_lock().is_ok_and(|l| {
            l.as_ref()
                .is_some_and(|(at, _)| at.elapsed() < PROC_LIST_TTL)
        })
    }

    /// The cluster's processes: one request per live node, all at once;
    /// reused for [`PROC_LIST_TTL`].
    async fn proc_listing(&self, refresh: bool) -> Arc<Listing> {
        let mut cached = self.procs.listing.lock().await;
        if let Some((at, l)) = cached.as_ref() {
            if !refresh && at.elapsed() < PROC_LIST_TTL {
                return l.clone();
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for n in self.live_nodes() {
            let call = self.cluster.proc_list(&n);
            set.spawn(async move { (n, call.await) });
        }
        let mut listing = Listing::default();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((node, Ok((id, procs)))) => {
                    for p in procs {
                        // Until processes migrate, every process is at home
                        // where it runs.
                        listing.by_gpid.insert(
                            gpid(id, p.pid),
                            Proc {
                                node: node.clone(),
                                entry: p,
                            },
                        );
                    }
                }
                // A node that does not answer has no processes to show.
                Ok((node, Err(e))) => tracing::debug!(%node, error = %e, "no process list"),
                Err(e) => tracing::warn!(error = %e, "process list task failed"),
            }
        }
        listing.by_gpid.insert(
            CLUSTER_ROOT_GPID,
            Proc {
                node: self.self_name().to_string(),
                entry: ProcEntry {
                    pid: CLUSTER_ROOT_GPID,
                    uid: 0,
                    gid: 0,
                },
            },
        );
        let l = Arc::new(listing);
        *cached = Some((Instant::now(), l.clone()));
        l
    }

    async fn proc_of(&self, g: u32) -> FsResult<Proc> {
        if let Some(p) = self.proc_listing(false).await.by_gpid.get(&g) {
            return Ok(p.clone());
        }
        // Not in the (possibly old) listing: ask again before saying no.
        self.proc_listing(true)
            .await
            .by_gpid
            .get(&g)
            .cloned()
            .ok_or(FsError::Os(libc::ENOENT))
    }

    fn proc_attr(&self, g: u32, e: Entry, p: &Proc) -> NodeAttr {
        let (kind, perm) = match e {
            Entry::Dir => (FileKind::Dir, 0o555),
            Entry::File(f) if f.private() => (FileKind::File, 0o400),
            Entry::Where | Entry::Lock => (FileKind::File, 0o644),
            Entry::Link(_) => (FileKind::Symlink, 0o777),
            _ => (FileKind::File, 0o444),
        };
        let mut a = self.virtual_attr(proc_ino(g, e), kind, perm, 0);
        a.uid = p.entry.uid;
        a.gid = p.entry.gid;
        a
    }

    pub fn proc_self_target(&self, caller: Caller) -> Vec<u8> {
        gpid(self.cluster.self_id(), caller.pid)
            .to_string()
            .into_bytes()
    }

    pub async fn proc_lookup(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
    ) -> FsResult<NodeAttr> {
        if parent == INO_PROC {
            if let Some(f) = NodeFile::ALL.iter().find(|f| f.name().as_bytes() == name) {
                // gpid 0 belongs to no process: node ids start at 1.
                return Ok(self.virtual_attr(
                    proc_ino(0, Entry::Node(*f)),
                    FileKind::File,
                    0o444,
                    0,
                ));
            }
            if let Some((_, i)) = MOUNT_POINTS.iter().find(|(n, _)| n.as_bytes() == name) {
                return Ok(self.virtual_attr(*i, FileKind::Dir, 0o555, 0));
            }
            if name == b"self" {
                let len = self.proc_self_target(caller).len() as u64;
                return Ok(self.virtual_attr(INO_PROC_SELF, FileKind::Symlink, 0o777, len));
            }
            let n: u32 = std::str::from_utf8(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(FsError::Os(libc::ENOENT))?;
            // A plain pid (no node id) names this node's process: what
            // getpid() returns, so `/proc/$$` and tools that look themselves
            // up keep working. Not listed, so nothing shows twice.
            let g = if n >> GPID_PID_BITS == 0 && n != CLUSTER_ROOT_GPID {
                gpid(self.cluster.self_id(), n)
            } else {
                n
            };
            let p = self.proc_of(g).await?;
            return Ok(self.proc_attr(g, Entry::Dir, &p));
        }
        let (g, _) = decode(parent).ok_or(FsError::Os(libc::ENOENT))?;
        let e = Entry::from_name(name).ok_or(FsError::Os(libc::ENOENT))?;
        let p = self.proc_of(g).await?;
        Ok(self.proc_attr(g, e, &p))
    }

    pub async fn proc_getattr(&self, caller: Caller, ino: u64) -> FsResult<NodeAttr> {
        if let Some((_, i)) = MOUNT_POINTS.iter().find(|(_, i)| *i == ino) {
            return Ok(self.virtual_attr(*i, FileKind::Dir, 0o555, 0));
        }
        if ino == INO_PROC_SELF {
            return self.proc_lookup(caller, INO_PROC, b"self").await;
        }
        let (g, e) = decode(ino).ok_or(FsError::Os(libc::ENOENT))?;
        if let Entry::Node(_) = e {
            return Ok(self.virtual_attr(ino, FileKind::File, 0o444, 0));
        }
        let p = self.proc_of(g).await?;
        Ok(self.proc_attr(g, e, &p))
    }

    pub async fn proc_readdir(&self, ino: u64, offset: u64) -> FsResult<Vec<ListEntry>> {
        let mut names: Vec<(u64, FileKind, Vec<u8>)> = Vec::new();
        if ino == INO_PROC {
            names.push((INO_PROC, FileKind::Dir, b".".to_vec()));
            names.push((INO_ROOT, FileKind::Dir, b"..".to_vec()));
            names.push((INO_PROC_SELF, FileKind::Symlink, b"self".to_vec()));
            for (n, i) in MOUNT_POINTS {
                names.push((i, FileKind::Dir, n.as_bytes().to_vec()));
            }
            for f in NodeFile::ALL {
                names.push((
                    proc_ino(0, Entry::Node(f)),
                    FileKind::File,
                    f.name().as_bytes().to_vec(),
                ));
            }
            for g in self.proc_listing(offset == 0).await.by_gpid.keys() {
                names.push((
                    proc_ino(*g, Entry::Dir),
                    FileKind::Dir,
                    g.to_string().into_bytes(),
                ));
            }
        } else if MOUNT_POINTS.iter().any(|(_, i)| *i == ino) {
            names.push((ino, FileKind::Dir, b".".to_vec()));
            names.push((INO_PROC, FileKind::Dir, b"..".to_vec()));
        } else {
            let (g, _) = decode(ino).ok_or(FsError::Os(libc::ENOENT))?;
            names.push((ino, FileKind::Dir, b".".to_vec()));
            names.push((INO_PROC, FileKind::Dir, b"..".to_vec()));
            for (n, e) in Entry::names() {
                let kind = if matches!(e, Entry::Link(_)) {
                    FileKind::Symlink
                } else {
                    FileKind::File
                };
                names.push((proc_ino(g, e), kind, n.as_bytes().to_vec()));
            }
        }
        Ok(listing(names, offset))
    }

    /// Renders the file now, once for this open; reads are served from it.
    pub async fn proc_open(&self, caller: Caller, ino: u64, flags: i32) -> FsResult<u64> {
        if crate::clusterdir::is_cluster(ino) {
            if flags & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(FsError::Os(libc::EACCES));
            }
            let content = self.cluster_render(caller, ino)?;
            return Ok(self.keep_generated(content));
        }
        let (g, e) = decode(ino).ok_or(FsError::Os(libc::ENOENT))?;
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if let Entry::Node(f) = e {
            if writing {
                return Err(FsError::Os(libc::EACCES));
            }
            let content = self.cluster_file(f).await;
            return Ok(self.keep_generated(content));
        }
        if writing && e != Entry::Where && e != Entry::Lock {
            return Err(FsError::Os(libc::EACCES));
        }
        if g == CLUSTER_ROOT_GPID {
            return self
                .cluster_root_open(e, writing)
                .map(|c| self.keep_generated(c));
        }
        let p = self.proc_of(g).await?;
        let content = match e {
            Entry::Dir => return Err(FsError::Os(libc::EISDIR)),
            Entry::File(f) => {
                let creds = self.creds(caller);
                self.cluster
                    .proc_read(&p.node, creds, p.entry.pid, f)
                    .await?
            }
            Entry::Where | Entry::Home => {
                if writing && caller.uid != 0 && caller.uid != p.entry.uid {
                    return Err(FsError::Os(libc::EACCES));
                }
                format!("{}\n", p.node).into_bytes()
            }
            Entry::Nmigs => b"0\n".to_vec(),
            Entry::Cantmove | Entry::Lock => {
                let f = if e == Entry::Lock {
                    ProcFile::Lock
                } else {
                    ProcFile::Cantmove
                };
                let creds = self.creds(caller);
                self.cluster
                    .proc_read(&p.node, creds, p.entry.pid, f)
                    .await?
            }
            Entry::Node(_) => return Err(FsError::Os(libc::EINVAL)),
            Entry::Link(_) => return Err(FsError::Os(libc::ELOOP)),
        };
        Ok(self.keep_generated(content))
    }

    /// The cluster root's files: it runs nowhere and never moves.
    fn cluster_root_open(&self, e: Entry, writing: bool) -> FsResult<Vec<u8>> {
        if writing {
            return Err(FsError::Os(libc::EPERM));
        }
        let file = match e {
            Entry::File(f) => f,
            Entry::Cantmove => ProcFile::Cantmove,
            Entry::Lock => ProcFile::Lock,
            Entry::Nmigs => return Ok(b"0\n".to_vec()),
            Entry::Where | Entry::Home => return Ok(b"\n".to_vec()),
            Entry::Dir => return Err(FsError::Os(libc::EISDIR)),
            Entry::Node(_) => return Err(FsError::Os(libc::EINVAL)),
            Entry::Link(_) => return Err(FsError::Os(libc::ELOOP)),
        };
        mosix_procview::cluster_root(file).map_err(FsError::Os)
    }

    /// A node-wide file for the whole cluster: every live node's own, asked
    /// for at once and combined in node order.
    async fn cluster_file(&self, f: NodeFile) -> Vec<u8> {
        let nodes = self.live_nodes();
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let call = self.cluster.node_file(n, f);
            set.spawn(async move { (i, call.await) });
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
        mosix_procview::aggregate(f, &parts)
    }

    /// Keeps one open's snapshot of a generated file; reads are served from it.
    fn keep_generated(&self, content: Vec<u8>) -> u64 {
        let fh = self.procs.next_fh.fetch_add(1, Ordering::Relaxed);
        self.procs
            .handles
            .lock()
            .expect("proc handles")
            .insert(fh, content);
        fh
    }

    /// `cwd` and `exe`: where they point on the process's node, as a path
    /// under /mosix, so they resolve the same on every node.
    pub async fn proc_readlink(&self, caller: Caller, ino: u64) -> FsResult<Vec<u8>> {
        let Some((g, Entry::Link(f))) = decode(ino) else {
            return Err(FsError::Os(libc::EINVAL));
        };
        if g == CLUSTER_ROOT_GPID {
            // Its cwd is the cluster's root; like a kernel thread, it has no
            // executable.
            return match f {
                ProcFile::Cwd => Ok(b"/mosix".to_vec()),
                _ => Err(FsError::Os(libc::ENOENT)),
            };
        }
        let p = self.proc_of(g).await?;
        let target = self
            .cluster
            .proc_read(&p.node, self.creds(caller), p.entry.pid, f)
            .await?;
        let mut out = format!("/mosix/nodes/{}", p.node).into_bytes();
        out.extend_from_slice(&target);
        Ok(out)
    }

    pub fn proc_read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let handles = self.procs.handles.lock().expect("proc handles");
        let data = handles.get(&fh).ok_or(FsError::Os(libc::EBADF))?;
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }

    pub fn proc_release(&self, fh: u64) {
        self.procs.handles.lock().expect("proc handles").remove(&fh);
    }

    /// A write to a control file: `lock` takes 1 or 0; `where` asks for a
    /// migration, which does not exist yet.
    pub async fn proc_write(&self, caller: Caller, ino: u64, data: &[u8]) -> FsResult<u32> {
        let Some((g, e)) = decode(ino) else {
            return Err(FsError::Os(libc::EBADF));
        };
        if g == CLUSTER_ROOT_GPID {
            return Err(FsError::Os(libc::EPERM));
        }
        match e {
            Entry::Where => Err(FsError::Unsupported(
                "process migration is not available yet",
            )),
            Entry::Lock => {
                let on = match std::str::from_utf8(data).map(str::trim) {
                    Ok("1") => true,
                    Ok("0") => false,
                    _ => return Err(FsError::Os(libc::EINVAL)),
                };
                let p = self.proc_of(g).await?;
                let creds = self.creds(caller);
                self.cluster
                    .set_lock(&p.node, creds, p.entry.pid, on)
                    .await?;
                Ok(data.len() as u32)
            }
            _ => Err(FsError::Os(libc::EBADF)),
        }
    }
}

fn decode(ino: u64) -> Option<(u32, Entry)> {
    if ino & PROC_BASE == 0 {
        return None;
    }
    let rest = ino & !PROC_BASE;
    let g = (rest >> FILE_BITS) as u32;
    Entry::from_index(rest & ((1 << FILE_BITS) - 1)).map(|e| (g, e))
}
