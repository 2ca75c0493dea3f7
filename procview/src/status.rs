//! The one reader of `/proc/<pid>/status` on this node, through the procfs
//! crate: credentials, groups and signal state all come from here.
pub use procfs::process::Status;

/// The status of process `pid` of this node; ESRCH once it is gone.
pub fn of(pid: u32) -> Result<Status, i32> {
    let pid = i32::try_from(pid).map_err(|_| libc::ESRCH)?;
    procfs::process::Process::new(pid)
        .and_then(|p| p.status())
        .map_err(|_| libc::ESRCH)
}

/// Supplementary groups of `pid`; empty if it is gone.
pub fn groups(pid: u32) -> Vec<u32> {
    of(pid).map(|s| s.groups).unwrap_or_default()
}

/// True if process `pid` has a signal to handle (pending and not blocked,
/// or SIGKILL), or is gone: a wait on its behalf should end with EINTR, as
/// a local one would.
pub fn signal_pending(pid: u32) -> bool {
    let Ok(s) = of(pid) else {
        return true;
    };
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    (s.sigpnd | s.shdpnd) & (!s.sigblk | SIGKILL_BIT) != 0
}

/// The real and saved uids of `pid` (kill(2)'s notion of its owner).
pub fn owner_uids(pid: u32) -> Result<(u32, u32), i32> {
    of(pid).map(|s| (s.ruid, s.suid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let (r, _) = owner_uids(me).unwrap();
        // SAFETY: plain syscall.
        assert_eq!(r, unsafe { libc::getuid() });
        assert!(!signal_pending(me));
        assert!(
            signal_pending(u32::MAX - 1),
            "a pid that is gone counts as pending"
        );
    }
}
