//! The guest's view of its home node's files: every path means on the
//! target what it meant at home.
use std::path::PathBuf;

/// Makes the calling thread (and the processes it creates) see its home
/// node's files at `/`, as the process saw them at home: a private mount
/// namespace whose root is a tmpfs holding a bind mount of each top-level
/// entry of `/mosix/nodes/<home>`, with this node's own `/proc`, `/sys`,
/// `/dev` and `/mosix`. So absolute paths (a database's journal, a config
/// file, `/tmp/x`) keep meaning what they meant at home, not only the cwd
/// and relative paths. Returns the directory to remove once the guest is
/// gone.
pub(super) fn enter_home_view(home: &str, tag: &str) -> std::io::Result<PathBuf> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let io = |e: nix::Error| std::io::Error::from(e);
    let root = guest_view_dir(tag);
    std::fs::create_dir_all(&root)?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).map_err(io)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io)?;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(io)?;
    let src = PathBuf::from("/mosix/nodes").join(home);
    let local = ["proc", "sys", "dev", "mosix"];
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        let name = entry.file_name();
        if local.iter().any(|l| name == *l) {
            continue;
        }
        let (from, to) = (entry.path(), root.join(&name));
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            continue;
        }
        if ft.is_dir() {
            std::fs::create_dir(&to)?;
        } else {
            std::fs::File::create(&to)?;
        }
        mount(
            Some(&from),
            &to,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io)?;
    }
    for l in local {
        let to = root.join(l);
        std::fs::create_dir_all(&to)?;
        let from = PathBuf::from("/").join(l);
        mount(
            Some(&from),
            &to,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(io)?;
    }
    nix::unistd::chroot(&root).map_err(io)?;
    std::env::set_current_dir("/")?;
    Ok(guest_view_dir(tag))
}

/// Where a guest's home view is built, in this node's own tree.
pub(super) fn guest_view_dir(tag: &str) -> PathBuf {
    PathBuf::from("/run/mosix/guests").join(tag)
}

/// Tells apart guests that arrive with the same home and pid (one that
/// moved away and came back).
pub(super) fn next_guest_tag() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
