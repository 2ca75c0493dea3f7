//! Serving this node's export to the cluster, and mounting /mosix.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mosix_fs::export::{Export, ExportConfig};
use mosix_fs::{FsError, MosixFs};
use mosix_net::{NetError, Peers};
use mosix_proto::fs::{Creds, FsRequest};
use mosix_proto::proc::{ProcEntry, ProcFile};
use mosix_proto::{MemberState, Request, Response};

use crate::config::Config;
use crate::membership::Membership;
use crate::mounttable::{mount_at, parse_mountinfo, MountEntry};

/// Paths never served to other nodes, whatever the export says: the node's
/// kernel interfaces, /mosix itself (serving it would loop), and the
/// daemon's secrets and state: its config file, its TLS files and control
/// socket, and the directories holding its key and its control socket
/// (see [`private_dir`]).
pub fn hidden_paths(cfg: &Config) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["/proc", "/sys", "/dev"]
        .iter()
        .map(PathBuf::from)
        .collect();
    v.push(cfg.mountpoint.clone());
    v.extend(cfg.source.iter().cloned());
    v.extend([
        cfg.tls.ca.clone(),
        cfg.tls.cert.clone(),
        cfg.tls.key.clone(),
        cfg.control_socket.clone(),
    ]);
    for file in [&cfg.tls.key, &cfg.control_socket] {
        if let Some(dir) = private_dir(file, &cfg.export.path) {
            v.push(dir);
        }
    }
    // The export matches hidden paths by name in their real parent.
    let mut v: Vec<PathBuf> = v
        .into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .map(|p| match (p.parent(), p.file_name()) {
            (Some(dir), Some(name)) => std::fs::canonicalize(dir)
                .map(|d| d.join(name))
                .unwrap_or(p),
            _ => p,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The directory holding `file`, if it is the daemon's own: not a directory
/// directly under `/` (like `/etc`, `/root` or `/tmp`), and not the export
/// root or one of its ancestors (hiding those would hide the export).
pub fn private_dir(file: &Path, export: &Path) -> Option<PathBuf> {
    let dir = std::path::absolute(file.parent()?).ok()?;
    let depth = dir
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count();
    (depth >= 2 && !export.starts_with(&dir)).then_some(dir)
}

pub fn open_export(cfg: &Config) -> std::io::Result<Export> {
    Export::open(ExportConfig {
        root: cfg.export.path.clone(),
        read_only: cfg.export.read_only,
        root_squash: cfg.export.root_squash,
        hide: hidden_paths(cfg),
    })
}

/// How the namespace reaches other nodes: through membership (who is alive,
/// where) and the peer connections.
/// Processes pinned to this node (`/mosix/proc/<gpid>/lock`): the migrator
/// must leave them here.
#[derive(Default)]
pub struct Pins(std::sync::Mutex<std::collections::HashSet<u32>>);

impl Pins {
    /// The per-process files this node's daemon renders itself.
    pub fn renders(file: ProcFile) -> bool {
        matches!(file, ProcFile::Lock | ProcFile::Cantmove)
    }

    /// One per-process file of this node, as its daemon serves it: the
    /// control files it keeps itself, or /proc read inline (served from
    /// memory in microseconds, less than a hop to the blocking pool).
    pub fn read(
        &self,
        node_id: u16,
        creds: &Creds,
        pid: u32,
        file: ProcFile,
    ) -> Result<Vec<u8>, i32> {
        if Self::renders(file) {
            self.render(pid, file)
        } else {
            mosix_procview::read(node_id, creds, pid, file)
        }
    }

    fn render(&self, pid: u32, file: ProcFile) -> Result<Vec<u8>, i32> {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(libc::ENOENT);
        }
        let pinned = self.0.lock().expect("pins").contains(&pid);
        Ok(match (file, pinned) {
            (ProcFile::Lock, p) => format!("{}\n", p as u8),
            (_, true) => "locked to its node (lock = 1)\n".to_string(),
            (_, false) => String::new(),
        }
        .into_bytes())
    }

    pub fn set(&self, creds: &Creds, pid: u32, on: bool) -> Result<(), i32> {
        mosix_procview::check_owner(creds, pid)?;
        let mut p = self.0.lock().expect("pins");
        // Pins of processes that are gone go with them.
        p.retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if on {
            p.insert(pid);
        } else {
            p.remove(&pid);
        }
        Ok(())
    }
}

pub struct ClusterLink {
    pub pins: Arc<Pins>,
    pub name: String,
    pub node_id: u16,
    pub membership: Membership,
    pub peers: Arc<Peers>,
}

impl ClusterLink {
    /// `None` for this node, else how to reach `node`; a dead or unknown
    /// node fails at once.
    fn target(&self, node: &str) -> Result<Option<(Arc<Peers>, std::net::SocketAddr)>, FsError> {
        if node == self.name {
            return Ok(None);
        }
        match self.membership.member(node) {
            None => Err(FsError::NoSuchNode(node.to_string())),
            Some((_, MemberState::Dead)) => Err(FsError::NodeDown(node.to_string())),
            Some((addr, _)) => Ok(Some((self.peers.clone(), addr))),
        }
    }
}

fn net_error(node: &str, e: NetError) -> FsError {
    match e {
        NetError::Connect { .. } => FsError::NodeDown(node.to_string()),
        e => FsError::Transport(e.to_string()),
    }
}

impl mosix_fs::Cluster for ClusterLink {
    fn alive_nodes(&self) -> Vec<String> {
        self.membership.alive_names()
    }

    fn call(
        &self,
        node: &str,
        epoch: Option<u64>,
        creds: Creds,
        op: FsRequest,
    ) -> mosix_fs::namespace::RemoteCall {
        let member = self.membership.member(node);
        let peers = self.peers.clone();
        let node = node.to_string();
        Box::pin(async move {
            let addr = match member {
                None => return Err(FsError::NoSuchNode(node)),
                // Known dead: fail at once instead of waiting on a handshake.
                Some((_, MemberState::Dead)) => return Err(FsError::NodeDown(node)),
                Some((addr, _)) => addr,
            };
            match peers.request(addr, &Request::Fs { creds, op, epoch }).await {
                Ok(Response::Fs { epoch, result }) => Ok((epoch, result)),
                Ok(other) => Err(FsError::Transport(format!("unexpected response {other:?}"))),
                Err(NetError::Connect { .. }) => Err(FsError::NodeDown(node)),
                Err(e) => Err(FsError::Transport(e.to_string())),
            }
        })
    }

    fn home_node(&self, _pid: u32) -> Option<String> {
        // Until processes migrate, every process is at home here.
        None
    }

    fn self_id(&self) -> u16 {
        self.node_id
    }

    fn members(&self) -> Vec<mosix_proto::MemberInfo> {
        self.membership.snapshot()
    }

    fn proc_list(
        &self,
        node: &str,
    ) -> mosix_fs::namespace::BoxFuture<Result<(u16, Vec<ProcEntry>), FsError>> {
        let (target, node, id) = (self.target(node), node.to_string(), self.node_id);
        Box::pin(async move {
            match target? {
                None => tokio::task::spawn_blocking(mosix_procview::list)
                    .await
                    .map(|p| (id, p))
                    .map_err(|e| FsError::Transport(e.to_string())),
                Some((peers, addr)) => match peers.request(addr, &Request::ProcList).await {
                    Ok(Response::Procs { node_id, procs }) => Ok((node_id, procs)),
                    Ok(other) => Err(FsError::Transport(format!("unexpected response {other:?}"))),
                    Err(e) => Err(net_error(&node, e)),
                },
            }
        })
    }

    fn set_lock(
        &self,
        node: &str,
        creds: Creds,
        pid: u32,
        on: bool,
    ) -> mosix_fs::namespace::BoxFuture<Result<(), FsError>> {
        let (target, node, pins) = (self.target(node), node.to_string(), self.pins.clone());
        Box::pin(async move {
            match target? {
                None => pins.set(&creds, pid, on).map_err(FsError::Os),
                Some((peers, addr)) => match peers
                    .request(addr, &Request::SetLock { creds, pid, on })
                    .await
                {
                    Ok(Response::Killed(r)) => r.map_err(FsError::Os),
                    Ok(other) => Err(FsError::Transport(format!("unexpected response {other:?}"))),
                    Err(e) => Err(net_error(&node, e)),
                },
            }
        })
    }

    fn node_file(
        &self,
        node: &str,
        file: mosix_proto::proc::NodeFile,
    ) -> mosix_fs::namespace::BoxFuture<Result<Vec<u8>, FsError>> {
        let (target, node) = (self.target(node), node.to_string());
        Box::pin(async move {
            match target? {
                None => tokio::task::spawn_blocking(move || mosix_procview::node_file(file))
                    .await
                    .map_err(|e| FsError::Transport(e.to_string()))?
                    .map_err(FsError::Os),
                Some((peers, addr)) => match peers.request(addr, &Request::NodeFile { file }).await
                {
                    Ok(Response::ProcData(r)) => r.map(|b| b.into_vec()).map_err(FsError::Os),
                    Ok(other) => Err(FsError::Transport(format!("unexpected response {other:?}"))),
                    Err(e) => Err(net_error(&node, e)),
                },
            }
        })
    }

    fn proc_read(
        &self,
        node: &str,
        creds: Creds,
        pid: u32,
        file: ProcFile,
    ) -> mosix_fs::namespace::BoxFuture<Result<Vec<u8>, FsError>> {
        let (target, node, id) = (self.target(node), node.to_string(), self.node_id);
        let pins = self.pins.clone();
        Box::pin(async move {
            match target? {
                None => pins.read(id, &creds, pid, file).map_err(FsError::Os),
                Some((peers, addr)) => {
                    match peers
                        .request(addr, &Request::ProcRead { creds, pid, file })
                        .await
                    {
                        Ok(Response::ProcData(r)) => r.map(|b| b.into_vec()).map_err(FsError::Os),
                        Ok(other) => {
                            Err(FsError::Transport(format!("unexpected response {other:?}")))
                        }
                        Err(e) => Err(net_error(&node, e)),
                    }
                }
            }
        })
    }
}

/// How long a mount at the mountpoint may take to answer before a starting
/// daemon gives up on it.
pub const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the mount at `path` has a server that answers.
#[derive(Debug)]
enum Served {
    Yes,
    /// Its daemon is gone: the kernel answers ENOTCONN (or ECONNABORTED
    /// once the connection was aborted by hand).
    Dead,
    NoAnswer,
    Unknown(std::io::Error),
}

fn probe(path: &Path) -> Served {
    // statfs reaches the file system's server and, unlike stat, is never
    // answered from the kernel's caches. It runs on a thread of its own: a
    // stopped server would keep it waiting.
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(nix::sys::statfs::statfs(&p));
    });
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(_)) => Served::Yes,
        Ok(Err(nix::errno::Errno::ENOTCONN | nix::errno::Errno::ECONNABORTED)) => Served::Dead,
        Ok(Err(e)) => Served::Unknown(e.into()),
        Err(_) => Served::NoAnswer,
    }
}

/// Makes `mountpoint` ready for a new daemon: detaches a /mosix left by a
/// daemon that died (every access to it answers ENOTCONN, though stat may
/// still succeed), creates the directory if missing, and refuses a mount
/// that a live daemon serves.
pub fn clean_stale_mount(mountpoint: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    // A daemon that died more than once may have left dead mounts stacked.
    for _ in 0..16 {
        let Some(m) = mount_at(mountpoint)? else {
            break;
        };
        if !m.is_mosix() {
            // Someone else's mount: mounting over it is theirs to decide.
            break;
        }
        match probe(mountpoint) {
            Served::Dead => {
                tracing::warn!(mountpoint = %mountpoint.display(), "removing the dead mount of a daemon that died");
                nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(Error::from)?;
            }
            Served::Yes => {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    "already mounted, served by a running mosix daemon (umount it first)",
                ))
            }
            Served::NoAnswer => {
                return Err(Error::new(
                    ErrorKind::AddrInUse,
                    format!(
                        "already mounted, and its daemon did not answer in {PROBE_TIMEOUT:?} \
                         (stopped?); stop it, or `umount -l` the mount"
                    ),
                ))
            }
            Served::Unknown(e) => return Err(e),
        }
    }
    match std::fs::metadata(mountpoint) {
        Err(e) if e.kind() == ErrorKind::NotFound => std::fs::create_dir_all(mountpoint),
        // A dead mount the mount table did not show us (another path to it).
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "removing stale mount");
            nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(Error::from)
        }
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// Read-ahead window of the /mosix mount. The kernel starts FUSE mounts at
/// 128 KiB, which keeps at most one or two reads in flight to a remote node;
/// a wide window lets the kernel pipeline many 1 MiB reads.
pub const READ_AHEAD_KB: u32 = 16 << 10;

pub fn mount(cfg: &Config, fs: Arc<MosixFs>) -> std::io::Result<fuser::BackgroundSession> {
    clean_stale_mount(&cfg.mountpoint)?;
    let session = mosix_fs::fuse::mount(fs, tokio::runtime::Handle::current(), &cfg.mountpoint)?;
    // stat() of our own mount is served by our own FUSE threads: never from
    // a runtime worker, which those threads may need.
    let mountpoint = cfg.mountpoint.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = set_read_ahead(&mountpoint, READ_AHEAD_KB) {
            tracing::warn!(error = %e, "cannot widen read-ahead of /mosix; remote reads will be slower");
        }
    });
    Ok(session)
}

/// Returns once `mountpoint` no longer holds our mount (someone ran umount).
/// Evented: the kernel flags /proc/self/mountinfo (POLLPRI) whenever the
/// mount table changes, so this returns within milliseconds of the umount,
/// and a daemon started right after finds the port free. A slow tick covers
/// a kernel that would not flag it.
pub async fn wait_unmounted(mountpoint: PathBuf) {
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;
    let mp = mountpoint.clone();
    let ours = tokio::task::spawn_blocking(move || mount_at(&mp).ok().flatten())
        .await
        .ok()
        .flatten();
    let Some(ours) = ours.filter(MountEntry::is_mosix) else {
        return;
    };
    let table = std::fs::File::open("/proc/self/mountinfo")
        .ok()
        // SAFETY: the AsyncFd owns the file, so its descriptor stays open
        // for as long as it is registered.
        .and_then(|f| unsafe { AsyncFd::register_with_interest(f, Interest::PRIORITY) }.ok());
    let tick = if table.is_some() {
        std::time::Duration::from_secs(1)
    } else {
        std::time::Duration::from_millis(100)
    };
    loop {
        match &table {
            Some(fd) => {
                tokio::select! {
                    r = fd.ready(Interest::PRIORITY) => {
                        if let Ok(mut g) = r {
                            g.clear_ready();
                        }
                    }
                    _ = tokio::time::sleep(tick) => {}
                }
            }
            None => tokio::time::sleep(tick).await,
        }
        // Reading the mount table never touches our own mount, so no FUSE
        // request (served by our threads) is involved.
        let still = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| {
                parse_mountinfo(&t).iter().any(|e| {
                    e.id == ours.id && e.dev == ours.dev && e.mountpoint == ours.mountpoint
                })
            })
            .unwrap_or(true);
        if !still {
            return;
        }
    }
}

fn set_read_ahead(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // The kernel caps the window when it processes FUSE_INIT; a real request
    // (opendir) returns only after that, so our setting comes last.
    std::fs::read_dir(mountpoint)?;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        kb.to_string(),
    )
}
