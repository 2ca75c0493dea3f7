//! Namespace and process plumbing for the local cluster.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// Brings up `lo` in the current network namespace; a fresh namespace starts
/// with it down, and every node listens on 127.0.0.i.
pub fn loopback_up() -> anyhow::Result<()> {
    // SAFETY: plain ioctls on a socket we own, with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if r == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            let r2 = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if r2 != 0 {
                bail!("bringing up lo: {err}");
            }
        } else {
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            bail!("reading lo flags: {err}");
        }
    }
    Ok(())
}

/// Joins every namespace of `pid` that makes a node: network, UTS, PID (for
/// children) and mount. Must run before the process starts any thread.
pub fn join_namespaces(pid: i32) -> anyhow::Result<()> {
    let open = |ns: &str| {
        File::open(format!("/proc/{pid}/ns/{ns}"))
            .with_context(|| format!("opening {ns} namespace of {pid}"))
    };
    // Open all first: after joining the mount namespace, /proc is the node's.
    let files = [
        (open("net")?, CloneFlags::CLONE_NEWNET),
        (open("uts")?, CloneFlags::CLONE_NEWUTS),
        (open("pid")?, CloneFlags::CLONE_NEWPID),
        (open("mnt")?, CloneFlags::CLONE_NEWNS),
    ];
    for (f, flag) in &files {
        setns(f, *flag).with_context(|| format!("joining {flag:?} of pid {pid}"))?;
    }
    Ok(())
}

/// The signals the supervisor and node init handle synchronously.
pub fn control_signals() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGINT);
    s.add(Signal::SIGCHLD);
    s
}

/// Blocks the control signals so `sigwait` can take them; children get them
/// unblocked again through [`unblock_in_child`].
pub fn block_control_signals() -> anyhow::Result<()> {
    control_signals().thread_block().context("blocking signals")
}

/// For `Command::pre_exec`: children must not inherit our blocked mask.
pub fn unblock_in_child() -> std::io::Result<()> {
    SigSet::empty()
        .thread_set_mask()
        .map_err(std::io::Error::from)
}

/// Waits for SIGTERM or SIGINT, reaping exited children meanwhile and
/// reporting each to `on_exit`. The control signals must be blocked.
pub fn reap_until_stopped(mut on_exit: impl FnMut(WaitStatus)) -> anyhow::Result<()> {
    let signals = control_signals();
    while signals.wait().context("waiting for signals")? == Signal::SIGCHLD {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(st) => on_exit(st),
            }
        }
    }
    Ok(())
}

/// True if `pid` is a live (not zombie) process whose command line contains `marker`.
pub fn alive_with(pid: i32, marker: &str) -> bool {
    let Ok(p) = procfs::process::Process::new(pid) else {
        return false;
    };
    let zombie = p.stat().map(|s| s.state == 'Z').unwrap_or(true);
    let matches = p
        .cmdline()
        .map(|c| c.iter().any(|a| a == marker))
        .unwrap_or(false);
    !zombie && matches
}

pub fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Writes a pid file atomically, so a reader never sees it half written.
pub fn write_pid(path: &Path, pid: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Runs `prog` with `args` and returns its exit code as a shell reports it
/// (128 + signal number when a signal ended it).
pub fn run_status(prog: &str, args: &[String], what: &str) -> anyhow::Result<i32> {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new(prog)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {prog:?} {what}"))?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

pub fn raw_fd_path(f: &File) -> String {
    format!("/proc/self/fd/{}", f.as_raw_fd())
}
