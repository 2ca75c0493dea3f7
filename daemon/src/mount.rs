//! Serving this node's export to the cluster, and mounting /mosix.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mosix_fs::export::{Export, ExportConfig};
use mosix_fs::MosixFs;

use crate::config::Config;

/// Paths never served to other nodes, whatever the export says: the node's
/// kernel interfaces, and /mosix itself (serving it would loop).
pub fn hidden_paths(cfg: &Config) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["/proc", "/sys", "/dev"]
        .iter()
        .map(PathBuf::from)
        .collect();
    v.push(cfg.mountpoint.clone());
    v
}

pub fn open_export(cfg: &Config) -> std::io::Result<Export> {
    Export::new(ExportConfig {
        root: cfg.export.path.clone(),
        read_only: cfg.export.read_only,
        root_squash: cfg.export.root_squash,
        hide: hidden_paths(cfg),
    })
}

/// Unmounts a /mosix left by a daemon that died (its mount answers ENOTCONN),
/// so a restarted daemon can mount again.
pub fn clean_stale_mount(mountpoint: &Path) -> std::io::Result<()> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "removing stale mount");
            nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH)
                .map_err(std::io::Error::from)?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(mountpoint),
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
pub async fn wait_unmounted(mountpoint: PathBuf) {
    use std::os::unix::fs::MetadataExt;
    let dev_of = |p: PathBuf| async move {
        tokio::task::spawn_blocking(move || std::fs::metadata(p).map(|m| m.dev()).ok())
            .await
            .ok()
            .flatten()
    };
    let Some(ours) = dev_of(mountpoint.clone()).await else {
        return;
    };
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if dev_of(mountpoint.clone()).await != Some(ours) {
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
