//! `check_movable`: can this process move, and if not, why. Reads /proc only;
//! never stops or signals the process.

use crate::error::CantMove;
use crate::proc::{classify_fd, classify_vma, read_fds, read_status_field, read_vmas};
use std::io;

const PF_KTHREAD: u32 = 0x0020_0000;

/// `Ok(())` when the process can move now. Racy by nature (the process keeps
/// running); `Checkpoint::take` checks again once the process is frozen.
pub fn check_movable(pid: i32) -> Result<(), CantMove> {
    check(pid, None)
}

fn gone(pid: i32) -> impl Fn(io::Error) -> CantMove {
    move |_| CantMove::NoSuchProcess { pid }
}

/// `our_tracer`: the tid that may legitimately trace the process (us, once
/// the checkpoint has seized it).
pub(crate) fn check(pid: i32, our_tracer: Option<i32>) -> Result<(), CantMove> {
    let proc = procfs::process::Process::new(pid).map_err(|_| CantMove::NoSuchProcess { pid })?;
    let stat = proc.stat().map_err(|_| CantMove::NoSuchProcess { pid })?;
    if stat.flags & PF_KTHREAD != 0 {
        return Err(CantMove::KernelThread { pid });
    }
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return Err(CantMove::Exiting { pid });
    }
    // A group-stopped task would re-enter its stop in the middle of our
    // injected syscalls; and moving a stopped job is pointless anyway.
    if stat.state == 'T' {
        return Err(CantMove::Stopped);
    }
    let tracer: i32 = read_status_field(pid, "TracerPid")
        .map_err(gone(pid))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if tracer != 0 && Some(tracer) != our_tracer {
        return Err(CantMove::AlreadyTraced { tracer });
    }
    let seccomp = read_status_field(pid, "Seccomp").map_err(gone(pid))?;
    if seccomp.is_some_and(|m| m != "0") {
        return Err(CantMove::Seccomp);
    }
    for v in read_vmas(pid).map_err(gone(pid))? {
        classify_vma(&v)?;
    }
    for f in read_fds(pid).map_err(gone(pid))? {
        classify_fd(&f)?;
    }
    Ok(())
}
