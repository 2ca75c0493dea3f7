//! Serving this node's export to the cluster, and mounting /mosix.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mosix_fs::export::{Export, ExportConfig};
use mosix_fs::MosixFs;

use crate::config::Config;
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
    v.push(proc_mountpoint(cfg));
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
    Export::new(ExportConfig {
        root: cfg.export.path.clone(),
        read_only: cfg.export.read_only,
        root_squash: cfg.export.root_squash,
        hide: hidden_paths(cfg),
    })
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

/// Checks `mountpoint` for a new daemon, early (before anything is bound):
/// refuses a mount that a live daemon serves and creates the directory if
/// missing, but leaves a dead mount of a crashed daemon in place;
/// [`clean_stale_mount`] removes it just before the new mount goes on, so
/// that meanwhile (the join may take seconds) /mosix answers ENOTCONN
/// rather than showing the bare directory below it.
pub fn check_mountpoint(mountpoint: &Path) -> std::io::Result<()> {
    settle(mountpoint, false)
}

/// Makes `mountpoint` ready for a new daemon: detaches a /mosix left by a
/// daemon that died (every access to it answers ENOTCONN, though stat may
/// still succeed), creates the directory if missing, and refuses a mount
/// that a live daemon serves.
pub fn clean_stale_mount(mountpoint: &Path) -> std::io::Result<()> {
    settle(mountpoint, true)
}

fn settle(mountpoint: &Path, detach: bool) -> std::io::Result<()> {
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
            Served::Dead if !detach => return Ok(()),
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
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) && !detach => Ok(()),
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

/// Mounts /mosix. The mount is ready when the returned task ends: it sets
/// the read-ahead, holding the mountpoint open meanwhile (an `umount` then
/// would fail busy), so the daemon says it is ready only after it.
pub fn mount(
    cfg: &Config,
    fs: Arc<MosixFs>,
) -> std::io::Result<(fuser::BackgroundSession, tokio::task::JoinHandle<()>)> {
    clean_stale_mount(&cfg.mountpoint)?;
    let session = mosix_fs::fuse::mount(fs, tokio::runtime::Handle::current(), &cfg.mountpoint)?;
    // stat() of our own mount is served by our own FUSE threads: never from
    // a runtime worker, which those threads may need.
    let mountpoint = cfg.mountpoint.clone();
    let ready = tokio::task::spawn_blocking(move || {
        if let Err(e) = set_read_ahead(&mountpoint, READ_AHEAD_KB) {
            tracing::warn!(error = %e, "cannot widen read-ahead of /mosix; remote reads will be slower");
        }
    });
    Ok((session, ready))
}

/// Where the process view is mounted (`/mosix/proc` is a symlink to it):
/// beside the control socket, in the daemon's own directory, named after
/// the node (two daemons of one host, as `mosix up` runs, never share it).
/// Not inside /mosix: a mount there would make `umount /mosix` fail busy.
pub fn proc_mountpoint(cfg: &Config) -> PathBuf {
    cfg.control_socket
        .parent()
        .unwrap_or(Path::new("/run/mosix"))
        .join(format!("proc-{}", cfg.name))
}

/// Mounts the process view (a FUSE session of its own, with the kernel
/// flags that suit it, see `mosix_procview::fuse`) and points `/mosix/proc`
/// at it.
pub fn mount_proc(
    cfg: &Config,
    fs: &MosixFs,
    procs: Arc<mosix_procview::fs::ProcFs>,
) -> std::io::Result<fuser::BackgroundSession> {
    let at = proc_mountpoint(cfg);
    clean_stale_mount(&at)?;
    let counters = Arc::default();
    let session =
        mosix_procview::fuse::mount(procs, tokio::runtime::Handle::current(), &at, counters)?;
    fs.set_proc_link(&at);
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
