//! `/mosix/proc`: one directory per process of every live node, named by its
//! gpid, with procfs-format files rendered on the process's node at open
//! (each open reads one consistent snapshot, see [`crate::snapshots`]) and
//! the MOSIX control files.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use mosix_proto::proc::{
    gpid, split_gpid, NodeFile, ProcEntry, ProcFile, CLUSTER_ROOT_GPID, GPID_PID_BITS,
};

use crate::attr::{listing, Kind, ListEntry, NodeAttr};
use crate::callers::Caller;
use crate::error::{FsError, FsResult};
use crate::ino::{self, Ino, PROC_MOUNT_POINTS};
use crate::reach::Reach;
use crate::ttl::PROC_LIST;

/// The entries of a process directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir,
    File(ProcFile),
    /// MOSIX control files (where, home, nmigs, cantmove, lock), answered
    /// by the process's node; writing a node name to `where` moves it, and
    /// 1 to `lock` pins it.
    Control(ProcFile),
    /// /mosix/proc/{stat,meminfo,...}: the whole cluster as one machine.
    Node(NodeFile),
    /// `cwd` and `exe`: symlinks into /mosix/nodes/<node>/.
    Link(ProcFile),
}

const CONTROL: [ProcFile; 5] = [
    ProcFile::Lock,
    ProcFile::Where,
    ProcFile::Home,
    ProcFile::Nmigs,
    ProcFile::Cantmove,
];

impl Entry {
    fn index(self) -> u8 {
        let pos =
            |all: &[ProcFile], f: ProcFile| all.iter().position(|x| *x == f).unwrap_or(0) as u8;
        match self {
            Entry::Dir => 0,
            Entry::File(f) => 1 + pos(&ProcFile::ALL, f),
            Entry::Link(f) => 12 + pos(&ProcFile::LINKS, f),
            Entry::Control(ProcFile::Lock) => 14,
            Entry::Control(f) => 19 + pos(&CONTROL, f),
            Entry::Node(f) => 24 + NodeFile::ALL.iter().position(|x| *x == f).unwrap_or(0) as u8,
        }
    }

    fn from_index(i: u8) -> Option<Entry> {
        let i = i as usize;
        match i {
            0 => Some(Entry::Dir),
            1..=9 => ProcFile::ALL.get(i - 1).map(|f| Entry::File(*f)),
            12..=13 => ProcFile::LINKS.get(i - 12).map(|f| Entry::Link(*f)),
            14 => Some(Entry::Control(ProcFile::Lock)),
            20..=23 => CONTROL.get(i - 19).map(|f| Entry::Control(*f)),
            24..=28 => NodeFile::ALL.get(i - 24).map(|f| Entry::Node(*f)),
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
                    .find(|f| f.name().as_bytes() == name)
                    .map(|f| Entry::Control(*f))
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
        v.extend(CONTROL.iter().map(|f| (f.name(), Entry::Control(*f))));
        v.extend(ProcFile::LINKS.iter().map(|f| (f.name(), Entry::Link(*f))));
        v
    }
}

fn proc_ino(g: u32, e: Entry) -> u64 {
    ino::proc_entry(g, e.index())
}

fn decode(i: u64) -> Option<(u32, Entry)> {
    match ino::classify(i) {
        Ino::Proc { gpid, entry } => Entry::from_index(entry).map(|e| (gpid, e)),
        _ => None,
    }
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

pub struct ProcDir {
    reach: Arc<Reach>,
    listing: tokio::sync::Mutex<Option<(Instant, Arc<Listing>)>>,
}

impl ProcDir {
    pub fn new(reach: Arc<Reach>) -> Self {
        ProcDir {
            reach,
            listing: Default::default(),
        }
    }

    /// Whether `ino` belongs to a process of this node (or is /mosix/proc's
    /// lookup of one, by `name`): its files are read from this node's /proc
    /// without the network.
    pub fn is_local(&self, ino: u64, name: Option<&[u8]>) -> bool {
        let g = match name {
            Some(name) if ino == ino::PROC => {
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
        split_gpid(g).0 == self.reach.self_id()
    }

    /// Whether the cached listing can answer a lookup without the network.
    pub fn listing_fresh(&self) -> bool {
        self.listing
            .try_lock()
            .is_ok_and(|l| l.as_ref().is_some_and(|(at, _)| at.elapsed() < PROC_LIST))
    }

    /// The cluster's processes: one request per live node, all at once;
    /// reused for [`PROC_LIST`].
    async fn processes(&self, refresh: bool) -> Arc<Listing> {
        let mut cached = self.listing.lock().await;
        if let Some((at, l)) = cached.as_ref() {
            if !refresh && at.elapsed() < PROC_LIST {
                return l.clone();
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for n in self.reach.live_nodes() {
            let procs = self.reach.procs(&n);
            set.spawn(async move {
                let r = match procs {
                    Ok(p) => p.list().await,
                    Err(e) => Err(e),
                };
                (n, r)
            });
        }
        let mut listing = Listing::default();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((node, Ok((id, procs)))) => {
                    for p in procs {
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
                node: self.reach.self_name.clone(),
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
        if let Some(p) = self.processes(false).await.by_gpid.get(&g) {
            return Ok(p.clone());
        }
        // Not in the (possibly old) listing: ask again before saying no.
        self.processes(true)
            .await
            .by_gpid
            .get(&g)
            .cloned()
            .ok_or(FsError::Os(libc::ENOENT))
    }

    fn attr(&self, g: u32, e: Entry, p: &Proc) -> NodeAttr {
        let (kind, perm) = match e {
            Entry::Dir => (Kind::Dir, 0o555),
            Entry::File(f) if f.private() => (Kind::File, 0o400),
            Entry::Control(ProcFile::Where | ProcFile::Lock) => (Kind::File, 0o644),
            Entry::Link(_) => (Kind::Symlink, 0o777),
            _ => (Kind::File, 0o444),
        };
        let mut a = self.reach.virtual_attr(proc_ino(g, e), kind, perm, 0);
        a.uid = p.entry.uid;
        a.gid = p.entry.gid;
        a
    }

    fn self_target(&self, caller: Caller) -> Vec<u8> {
        gpid(self.reach.self_id(), caller.pid)
            .to_string()
            .into_bytes()
    }

    pub async fn lookup(&self, caller: Caller, parent: u64, name: &[u8]) -> FsResult<NodeAttr> {
        if parent == ino::PROC {
            if let Some(f) = NodeFile::ALL.iter().find(|f| f.name().as_bytes() == name) {
                // gpid 0 belongs to no process: node ids start at 1.
                return Ok(self.reach.virtual_attr(
                    proc_ino(0, Entry::Node(*f)),
                    Kind::File,
                    0o444,
                    0,
                ));
            }
            if let Some((_, i)) = PROC_MOUNT_POINTS.iter().find(|(n, _)| n.as_bytes() == name) {
                return Ok(self.reach.virtual_attr(*i, Kind::Dir, 0o555, 0));
            }
            if name == b"self" {
                let len = self.self_target(caller).len() as u64;
                return Ok(self
                    .reach
                    .virtual_attr(ino::PROC_SELF, Kind::Symlink, 0o777, len));
            }
            let n: u32 = std::str::from_utf8(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(FsError::Os(libc::ENOENT))?;
            // A plain pid (no node id) names this node's process: what
            // getpid() returns, so `/proc/$$` and tools that look themselves
            // up keep working. Not listed, so nothing shows twice.
            let g = if n >> GPID_PID_BITS == 0 && n != CLUSTER_ROOT_GPID {
                gpid(self.reach.self_id(), n)
            } else {
                n
            };
            let p = self.proc_of(g).await?;
            return Ok(self.attr(g, Entry::Dir, &p));
        }
        let (g, _) = decode(parent).ok_or(FsError::Os(libc::ENOENT))?;
        let e = Entry::from_name(name).ok_or(FsError::Os(libc::ENOENT))?;
        let p = self.proc_of(g).await?;
        Ok(self.attr(g, e, &p))
    }

    pub async fn getattr(&self, caller: Caller, ino: u64) -> FsResult<NodeAttr> {
        if ino == ino::PROC {
            return Ok(self.reach.virtual_attr(ino, Kind::Dir, 0o555, 0));
        }
        if let Some((_, i)) = PROC_MOUNT_POINTS.iter().find(|(_, i)| *i == ino) {
            return Ok(self.reach.virtual_attr(*i, Kind::Dir, 0o555, 0));
        }
        if ino == ino::PROC_SELF {
            return self.lookup(caller, ino::PROC, b"self").await;
        }
        let (g, e) = decode(ino).ok_or(FsError::Os(libc::ENOENT))?;
        if let Entry::Node(_) = e {
            return Ok(self.reach.virtual_attr(ino, Kind::File, 0o444, 0));
        }
        let p = self.proc_of(g).await?;
        Ok(self.attr(g, e, &p))
    }

    pub async fn readdir(&self, ino: u64, offset: u64) -> FsResult<Vec<ListEntry>> {
        let mut names: Vec<(u64, Kind, Vec<u8>)> = Vec::new();
        if ino == ino::PROC {
            names.push((ino::PROC, Kind::Dir, b".".to_vec()));
            names.push((ino::ROOT, Kind::Dir, b"..".to_vec()));
            names.push((ino::PROC_SELF, Kind::Symlink, b"self".to_vec()));
            for (n, i) in PROC_MOUNT_POINTS {
                names.push((i, Kind::Dir, n.as_bytes().to_vec()));
            }
            for f in NodeFile::ALL {
                names.push((
                    proc_ino(0, Entry::Node(f)),
                    Kind::File,
                    f.name().as_bytes().to_vec(),
                ));
            }
            for g in self.processes(offset == 0).await.by_gpid.keys() {
                names.push((
                    proc_ino(*g, Entry::Dir),
                    Kind::Dir,
                    g.to_string().into_bytes(),
                ));
            }
        } else if PROC_MOUNT_POINTS.iter().any(|(_, i)| *i == ino) {
            names.push((ino, Kind::Dir, b".".to_vec()));
            names.push((ino::PROC, Kind::Dir, b"..".to_vec()));
        } else {
            let (g, _) = decode(ino).ok_or(FsError::Os(libc::ENOENT))?;
            names.push((ino, Kind::Dir, b".".to_vec()));
            names.push((ino::PROC, Kind::Dir, b"..".to_vec()));
            for (n, e) in Entry::names() {
                let kind = if matches!(e, Entry::Link(_)) {
                    Kind::Symlink
                } else {
                    Kind::File
                };
                names.push((proc_ino(g, e), kind, n.as_bytes().to_vec()));
            }
        }
        Ok(listing(names, offset))
    }

    /// The content of file `ino` as of now, for one open.
    pub async fn render(&self, caller: Caller, ino: u64, flags: i32) -> FsResult<Vec<u8>> {
        let (g, e) = decode(ino).ok_or(FsError::Os(libc::ENOENT))?;
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY;
        if let Entry::Node(f) = e {
            if writing {
                return Err(FsError::Os(libc::EACCES));
            }
            return Ok(self.cluster_file(f).await);
        }
        if writing && !matches!(e, Entry::Control(ProcFile::Where | ProcFile::Lock)) {
            return Err(FsError::Os(libc::EACCES));
        }
        let file = match e {
            Entry::Dir => return Err(FsError::Os(libc::EISDIR)),
            Entry::File(f) | Entry::Control(f) => f,
            Entry::Node(_) => return Err(FsError::Os(libc::EINVAL)),
            Entry::Link(_) => return Err(FsError::Os(libc::ELOOP)),
        };
        if g == CLUSTER_ROOT_GPID {
            // It runs nowhere and never moves.
            if writing {
                return Err(FsError::Os(libc::EPERM));
            }
            return mosix_procview::cluster_root(file).map_err(FsError::Os);
        }
        let p = self.proc_of(g).await?;
        if writing && caller.uid != 0 && caller.uid != p.entry.uid {
            return Err(FsError::Os(libc::EACCES));
        }
        let creds = self.reach.creds(caller);
        self.reach
            .procs(&p.node)?
            .read(&creds, p.entry.pid, file)
            .await
    }

    /// A node-wide file for the whole cluster: every live node's own, asked
    /// for at once and combined in node order.
    async fn cluster_file(&self, f: NodeFile) -> Vec<u8> {
        let nodes = self.reach.live_nodes();
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in nodes.iter().enumerate() {
            let procs = self.reach.procs(n);
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
        mosix_procview::aggregate(f, &parts)
    }

    /// `self`, `cwd` and `exe`. `cwd` and `exe` point where they do on the
    /// process's node, as a path under /mosix, so they resolve the same on
    /// every node.
    pub async fn readlink(&self, caller: Caller, ino: u64) -> FsResult<Vec<u8>> {
        if ino == ino::PROC_SELF {
            return Ok(self.self_target(caller));
        }
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
            .reach
            .procs(&p.node)?
            .read(&self.reach.creds(caller), p.entry.pid, f)
            .await?;
        let mut out = format!("/mosix/nodes/{}", p.node).into_bytes();
        out.extend_from_slice(&target);
        Ok(out)
    }

    /// A write to a control file: `lock` takes 1 or 0; `where` takes a node
    /// name (or `home`) and asks the process's node to move it there.
    pub async fn write(&self, caller: Caller, ino: u64, data: &[u8]) -> FsResult<u32> {
        let Some((g, e)) = decode(ino) else {
            return Err(FsError::Os(libc::EBADF));
        };
        if g == CLUSTER_ROOT_GPID {
            return Err(FsError::Os(libc::EPERM));
        }
        let text = std::str::from_utf8(data)
            .map(str::trim)
            .map_err(|_| FsError::Os(libc::EINVAL))?;
        match e {
            Entry::Control(ProcFile::Where) => {
                if text.is_empty() {
                    return Err(FsError::Os(libc::EINVAL));
                }
                let p = self.proc_of(g).await?;
                let creds = self.reach.creds(caller);
                self.reach
                    .procs(&p.node)?
                    .migrate(&creds, p.entry.pid, text)
                    .await?;
                Ok(data.len() as u32)
            }
            Entry::Control(ProcFile::Lock) => {
                let on = match text {
                    "1" => true,
                    "0" => false,
                    _ => return Err(FsError::Os(libc::EINVAL)),
                };
                let p = self.proc_of(g).await?;
                let creds = self.reach.creds(caller);
                self.reach
                    .procs(&p.node)?
                    .set_lock(&creds, p.entry.pid, on)
                    .await?;
                Ok(data.len() as u32)
            }
            _ => Err(FsError::Os(libc::EBADF)),
        }
    }
}
