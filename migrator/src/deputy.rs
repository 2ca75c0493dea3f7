//! The deputy: what stays at home of a process that runs elsewhere.
//!
//! MOSIX keeps the original process at home so that its parent, its pid,
//! its terminal and the signals sent to it keep working. Here the deputy is
//! the frozen source itself, still traced: it is parked in `pause()` with
//! every signal unblocked, so each signal sent to it stops it for the tracer
//! to see (and forward to the running copy) instead of running its handlers
//! on stale memory; the tracer suppresses the signal and the kernel restarts
//! the `pause()`. When the copy ends, the deputy ends the same way, so the
//! parent's `wait()` gets the real exit status or signal.
//!
//! A multi-threaded deputy has every thread parked that way: a signal sent
//! to the process is taken by whichever thread the kernel picks, and one
//! sent to a thread by that thread, so `poll` looks at each of them.
//!
//! Like everything ptrace, a `Deputy` belongs to the thread that seized the
//! process.
use std::io;
use std::marker::PhantomData;

use crate::checkpoint::FrozenSource;
use crate::ptrace::{decode_status, Group, Stop, Tracee};
use crate::state::Regs;

/// Something that happened to the deputy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeputyEvent {
    /// Signal `sig` was sent to the process at home (and suppressed there).
    Signal(i32),
    /// The deputy itself is gone: killed by this signal (SIGKILL cannot be
    /// intercepted), or exited.
    Killed(i32),
    Exited(i32),
}

/// How the copy ended, for the deputy to repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
}

pub struct Deputy {
    tracee: Option<Group>,
    /// Registers each thread (main first) parks from.
    bases: Vec<Regs>,
    /// Set once waitpid reported the deputy's death: nothing to kill.
    dead: std::cell::Cell<bool>,
    /// A `syscall` instruction in the deputy, and registers to start from.
    insn: u64,
    base: Regs,
    _not_send: PhantomData<*const ()>,
}

impl FrozenSource {
    /// Turns the frozen source into a deputy, parked until something
    /// happens to it. Its descriptors `close` are closed first: the copy
    /// reopened those files, and the deputy must not keep the POSIX locks
    /// the process held on them (the copy takes them again, and would find
    /// them held by itself at home).
    pub fn into_deputy(self, close: &[i32]) -> io::Result<Deputy> {
        self.into_deputy_then(close, || {})
    }

    /// [`into_deputy`](Self::into_deputy), calling `committed` as soon as
    /// the deputy holds nothing the copy needs (its reopened files closed),
    /// before it gives its memory back: freeing a 1 GiB address space
    /// takes tens of milliseconds, and the caller lets the copy run from
    /// `committed`, so the process's freeze does not include it. Once
    /// `committed` ran, shedding memory is best effort; only parking can
    /// still fail, and then the caller must end the copy it let run.
    pub fn into_deputy_then(
        mut self,
        close: &[i32],
        committed: impl FnOnce(),
    ) -> io::Result<Deputy> {
        let tracee = self
            .take_tracee()
            .ok_or_else(|| io::Error::other("source already let go"))?;
        let vmas = crate::proc::read_vmas(tracee.pid())?;
        let insn = crate::checkpoint::syscall_site(&tracee.main, &vmas)?
            .ok_or_else(|| io::Error::other("no syscall instruction in the deputy"))?;
        let base = tracee.main.regs()?;
        let mut bases = Vec::new();
        for t in tracee.all() {
            bases.push(t.regs()?);
            t.set_sigmask(!0)?;
        }
        let d = Deputy {
            tracee: Some(tracee),
            bases,
            dead: std::cell::Cell::new(false),
            insn,
            base,
            _not_send: PhantomData,
        };
        {
            let t = d.t();
            let inj = crate::inject::Injector { t, insn, base };
            for fd in close {
                inj.raw(libc::SYS_close, &[*fd as u64])?;
            }
            committed();
            if let Err(e) = d.shed_memory(&inj, &vmas) {
                tracing::warn!(pid = d.pid(), error = %e, "the deputy keeps its memory");
            }
        }
        d.park()?;
        Ok(d)
    }
}

impl Deputy {
    fn g(&self) -> &Group {
        self.tracee.as_ref().expect("deputy already ended")
    }

    fn t(&self) -> &Tracee {
        &self.g().main
    }

    pub fn pid(&self) -> i32 {
        self.t().pid
    }

    /// Gives back the process's private memory: the copy owns it now, and
    /// the deputy never runs the program's code again (its signals are the
    /// copy's, its ending is injected, and a process coming home is built
    /// anew beside it), so a deputy of a 1 GiB process would otherwise keep
    /// 1 GiB at home for nothing. The area holding the `syscall` it parks
    /// on stays: a restarted `pause()` executes it again. Areas the kernel
    /// will not drop (locked ones) are left as they are.
    fn shed_memory(
        &self,
        inj: &crate::inject::Injector,
        vmas: &[crate::proc::RawVma],
    ) -> io::Result<()> {
        let private = |v: &&crate::proc::RawVma| {
            !v.shared()
                && matches!(
                    crate::proc::classify_vma(v),
                    Ok(crate::state::VmaKind::Anon { .. } | crate::state::VmaKind::File { .. })
                )
        };
        // Its command line and environment stay readable: `ps` shows them
        // for the process at home (its /proc/<pid>/cmdline reads them there).
        let keep = args_and_env(self.pid()).unwrap_or((0, 0));
        for v in vmas.iter().filter(private) {
            if (v.start..v.end).contains(&self.insn) {
                continue;
            }
            let parts = [
                (v.start, v.end.min(keep.0).max(v.start)),
                (v.start.max(keep.1).min(v.end), v.end),
            ];
            for (start, end) in parts.into_iter().filter(|(s, e)| s < e) {
                let r = inj.raw(
                    libc::SYS_madvise,
                    &[start, end - start, libc::MADV_DONTNEED as u64],
                )?;
                if let Some(e) = crate::inject::errno_of(r) {
                    tracing::debug!(start, errno = e, "deputy keeps an area");
                }
            }
        }
        Ok(())
    }

    /// Every thread into `pause()`, every signal unblocked: the next signal
    /// stops one of them.
    fn park(&self) -> io::Result<()> {
        for (t, base) in self.g().all().zip(&self.bases) {
            let mut r = *base;
            r.rip = self.insn;
            r.rax = libc::SYS_pause as u64;
            // Not inside a syscall: nothing for the kernel to restart on resume.
            r.orig_rax = u64::MAX;
            t.set_regs(&r)?;
            t.set_sigmask(0)?;
            t.cont(0)?;
        }
        Ok(())
    }

    /// The next thing that happened to the deputy, if any, without waiting.
    pub fn poll(&self) -> io::Result<Option<DeputyEvent>> {
        // The other threads first: a signal may stop any of them, and the
        // main thread's death is reported only once they are reaped.
        for t in &self.g().others {
            match try_wait(t.pid)? {
                None => {}
                Some(Stop::Signal(sig)) => {
                    t.cont(self.delivered(sig))?;
                    return Ok(Some(DeputyEvent::Signal(sig)));
                }
                Some(Stop::Event(sig)) if is_stop_signal(sig) => t.listen()?,
                Some(Stop::Event(_) | Stop::OtherEvent(_)) => t.cont(0)?,
                // Gone with the whole process; the main thread says how.
                Some(Stop::Exited(_) | Stop::Killed(_)) => {}
            }
        }
        let t = self.t();
        let Some(stop) = try_wait(t.pid)? else {
            return Ok(None);
        };
        Ok(Some(match stop {
            // Suppressed: the signal is the running copy's business. The
            // interrupted pause() is restarted by the kernel, since no
            // handler ran.
            Stop::Signal(sig) => {
                t.cont(self.delivered(sig))?;
                DeputyEvent::Signal(sig)
            }
            // The group-stop of a stop signal let through: it stays
            // stopped, for its parent and shell to see, until SIGCONT.
            Stop::Event(sig) if is_stop_signal(sig) => {
                t.listen()?;
                return Ok(None);
            }
            Stop::Event(_) | Stop::OtherEvent(_) => {
                t.cont(0)?;
                return Ok(None);
            }
            Stop::Killed(sig) => {
                self.gone();
                DeputyEvent::Killed(sig)
            }
            Stop::Exited(code) => {
                self.gone();
                DeputyEvent::Exited(code)
            }
        }))
    }

    /// What of signal `sig`, seen at home, the deputy itself takes: only a
    /// stop that the program would not catch (SIGSTOP, or a terminal stop
    /// left at its default action), so that job control works on a moved
    /// job: Ctrl-Z stops the copy (forwarded) and the deputy, the shell sees
    /// the job stopped, and `fg`'s SIGCONT wakes both. Everything else is
    /// suppressed: handlers would run on stale memory. The dispositions are
    /// the ones the process had when it moved.
    fn delivered(&self, sig: i32) -> i32 {
        let default_stop = match sig {
            libc::SIGSTOP => true,
            libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => !catches(self.pid(), sig),
            _ => false,
        };
        if default_stop {
            sig
        } else {
            0
        }
    }

    fn gone(&self) {
        self.dead.set(true);
    }

    /// Stops the parked deputy so registers can be set.
    fn interrupt(&self) -> io::Result<()> {
        let t = self.t();
        // SAFETY: plain ptrace request.
        if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, t.pid, 0, 0) } == -1 {
            return Err(io::Error::last_os_error());
        }
        loop {
            match crate::ptrace::waitpid(t.pid)? {
                Stop::Event(_) => return Ok(()),
                // A signal raced in: it is the copy's, not the deputy's.
                Stop::Signal(_) | Stop::OtherEvent(_) => t.cont(0)?,
                Stop::Exited(c) => return Err(io::Error::other(format!("deputy exited ({c})"))),
                Stop::Killed(s) => return Err(io::Error::other(format!("deputy killed ({s})"))),
            }
        }
    }

    /// Ends the deputy the way the copy ended: the parent's `wait()` sees
    /// the same exit code or signal. Returns once it is gone.
    pub fn end_like(mut self, ending: Ending) -> io::Result<()> {
        self.interrupt()?;
        let g = self.tracee.take().expect("deputy already ended");
        let t = &g.main;
        let mut r = self.base;
        r.rip = self.insn;
        r.orig_rax = u64::MAX;
        match ending {
            Ending::Exited(code) => {
                r.rax = libc::SYS_exit_group as u64;
                r.rdi = code as u64;
                t.set_regs(&r)?;
                t.cont(0)?;
            }
            Ending::Signaled(sig) => {
                // Its handlers are the program's, on memory that is no
                // longer current: reset the disposition, then deliver.
                // struct kernel_sigaction {handler, flags, restorer, mask},
                // all zero: SIG_DFL. Written below the red zone.
                let at = (self.base.rsp - 4096) & !15;
                t.write_mem(at, &[0u8; 32])?;
                r.rax = libc::SYS_rt_sigaction as u64;
                r.rdi = sig as u64;
                r.rsi = at;
                r.rdx = 0;
                r.r10 = 8;
                t.set_regs(&r)?;
                loop {
                    t.step()?;
                    match crate::ptrace::waitpid(t.pid)? {
                        Stop::Signal(libc::SIGTRAP) => break,
                        // Another signal got in first: it is not ours to
                        // deliver; step again, suppressing it.
                        Stop::Signal(_) => t.set_regs(&r)?,
                        other => {
                            return Err(io::Error::other(format!("resetting {sig}: {other:?}")))
                        }
                    }
                }
                t.set_sigmask(0)?;
                t.cont(sig)?;
            }
        }
        // The whole group dies with it; the other threads are reaped first,
        // or the main thread's end is never reported.
        for o in &g.others {
            crate::ptrace::reap(o.pid);
        }
        loop {
            match crate::ptrace::waitpid(t.pid)? {
                Stop::Exited(_) | Stop::Killed(_) => return Ok(()),
                // A stop signal's group stop, or a late signal: keep going.
                Stop::Signal(s) if Some(s) == signal_of(ending) => t.cont(s)?,
                _ => t.cont(0)?,
            }
        }
    }
}

/// A stop or the end of traced thread `tid`, without waiting; `None` also
/// when it was already reaped (a thread that died with its process).
fn try_wait(tid: i32) -> io::Result<Option<Stop>> {
    let mut status = 0;
    // SAFETY: plain syscall with a valid out pointer.
    let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
    if r == 0 {
        return Ok(None);
    }
    if r == -1 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ECHILD) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(decode_status(status)))
}

/// The page-aligned span holding process `pid`'s arguments and
/// environment (`arg_start`..`env_end` of /proc/<pid>/stat).
fn args_and_env(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(45)
        .take(4)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (lo, hi) = (f[0].min(f[2]), f[1].max(f[3]));
    (lo < hi).then_some((lo & !0xfff, (hi + 0xfff) & !0xfff))
}

fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// Whether process `pid` has a handler for `sig` (its `SigCgt` mask).
pub fn catches(pid: i32, sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (sig - 1)) != 0)
}

fn signal_of(e: Ending) -> Option<i32> {
    match e {
        Ending::Signaled(s) => Some(s),
        Ending::Exited(_) => None,
    }
}

impl Drop for Deputy {
    /// A deputy dropped without an ending (its copy is lost): it dies, as
    /// the process did; letting it resume would run the process twice.
    fn drop(&mut self) {
        if let Some(g) = self.tracee.take() {
            if !self.dead.get() {
                g.kill_and_reap();
            }
        }
    }
}
