//! Freezing the source and capturing its state. The source stays stopped
//! (and intact) while the image and the pages are taken, and until the caller
//! decides: `resume_source` (the migration failed: it continues exactly where
//! it was), `finish_source` (the copy runs elsewhere: kill it), or
//! `keep_frozen` (the deputy takes over).

use crate::error::{CantMove, CheckpointError};
use crate::inject::{errno_of, find_syscall_insn, Injector};
use crate::pages::{batch_buffer, BufPool, PageSink, DEFAULT_BATCH_BYTES};
use crate::proc::{self, RawVma};
use crate::ptrace::{Group, Tracee};
use crate::state::*;
use std::fs::File;
use std::marker::PhantomData;
use std::os::unix::fs::FileExt;

const PAGE: u64 = 4096;

pub struct Checkpoint {
    tracee: Option<Group>,
    image: ProcessImage,
    /// The tracer is a thread, not a process: keep the handle on it.
    _not_send: PhantomData<*const ()>,
}

/// A source kept stopped under ptrace after a successful migration, for the
/// deputy to own. Dropping it lets the process run again.
pub struct FrozenSource {
    tracee: Option<Group>,
    _not_send: PhantomData<*const ()>,
}

/// A copy of fd `fd` of process `pid` (pidfd_open + pidfd_getfd). On one
/// node this is how a pipe or tty end reaches the restored process: pass it
/// as a [`crate::FdReplacement`]. Across nodes the deputy relays instead.
pub fn grab_fd(pid: i32, fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain syscalls; each returned fd is fresh and owned here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(got as i32))
    }
}

fn gettid() -> i32 {
    // SAFETY: plain syscall.
    unsafe { libc::gettid() }
}

impl Checkpoint {
    /// Freeze `pid` and capture everything but its pages. Refuses without
    /// touching the process when it can't move; on any later failure the
    /// process is let go where it was.
    pub fn take(pid: i32) -> Result<Checkpoint, CheckpointError> {
        crate::movable::check(pid, None)?;
        let t = Tracee::seize(pid, 0).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH | libc::ENOENT) => {
                CheckpointError::CantMove(CantMove::NoSuchProcess { pid })
            }
            Some(libc::EPERM) => CheckpointError::CantMove(CantMove::AlreadyTraced { tracer: -1 }),
            _ => CheckpointError::sys("seizing the source", e),
        })?;
        if t.first_stop != libc::SIGTRAP {
            // It entered a group-stop between the check and the seize;
            // detaching leaves it stopped, as it was.
            let _ = t.detach();
            return Err(CantMove::Stopped.into());
        }
        let g = seize_threads(t)?;
        match capture(&g) {
            Ok(image) => {
                tracing::debug!(
                    pid,
                    threads = image.threads.len(),
                    vmas = image.mm.vmas.len(),
                    fds = image.fds.entries.len(),
                    "source frozen and captured"
                );
                Ok(Checkpoint {
                    tracee: Some(g),
                    image,
                    _not_send: PhantomData,
                })
            }
            Err(e) => {
                tracing::debug!(pid, error = %e, "capture failed; source let go");
                let _ = g.detach_all();
                Err(e)
            }
        }
    }

    pub fn image(&self) -> &ProcessImage {
        &self.image
    }

    pub fn pid(&self) -> i32 {
        self.image.pid
    }

    /// Pages, lazily read from the frozen process in batches of at most
    /// `batch_bytes`.
    pub fn pages(&self, batch_bytes: usize) -> Result<PageReader<'_>, CheckpointError> {
        let t = &self
            .tracee
            .as_ref()
            .expect("checkpoint already consumed")
            .main;
        let pagemap = File::open(format!("/proc/{}/pagemap", t.pid))
            .map_err(|e| CheckpointError::sys("opening pagemap", e))?;
        Ok(PageReader::new(
            t,
            pagemap,
            self.image
                .mm
                .vmas
                .iter()
                .filter(|v| v.carries_pages())
                .collect(),
            batch_bytes,
        ))
    }

    /// Creates a userfaultfd inside the frozen process (the kernel binds it
    /// to the creator's address space), takes a copy of it here and closes
    /// the process's own descriptor at once, so the process never sees it
    /// in its fd table. Tried first with kernel faults allowed, then user
    /// mode only (what `vm.unprivileged_userfaultfd = 0` permits).
    pub(crate) fn inject_userfaultfd(&self) -> Result<std::os::fd::OwnedFd, CheckpointError> {
        let sys = CheckpointError::sys;
        let g = self.tracee.as_ref().expect("checkpoint already consumed");
        let t = &g.main;
        let regs = t.regs().map_err(|e| sys("GETREGS", e))?;
        let mask = t.sigmask().map_err(|e| sys("GETSIGMASK", e))?;
        t.set_sigmask(!0).map_err(|e| sys("SETSIGMASK", e))?;
        let res = (|| {
            let vmas = proc::read_vmas(t.pid).map_err(|e| sys("reading maps", e))?;
            let insn = syscall_site(t, &vmas)
                .map_err(|e| sys("looking for a syscall instruction", e))?
                .ok_or_else(|| {
                    CheckpointError::Unexpected("no syscall instruction in the source".into())
                })?;
            let inj = Injector {
                t,
                insn,
                base: regs,
            };
            let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
            const UFFD_USER_MODE_ONLY: u64 = 1;
            let fd = match icall(&inj, libc::SYS_userfaultfd, &[flags]) {
                Err(CheckpointError::Injected { errno, .. }) if errno == libc::EPERM => {
                    icall(&inj, libc::SYS_userfaultfd, &[flags | UFFD_USER_MODE_ONLY])?
                }
                r => r?,
            };
            let ours = grab_fd(t.pid, fd as i32);
            icall(&inj, libc::SYS_close, &[fd as u64])?;
            ours.map_err(|e| sys("taking the userfaultfd", e))
        })();
        let back = t.set_regs(&regs).and_then(|_| t.set_sigmask(mask));
        let fd = res?;
        back.map_err(|e| sys("restoring source registers", e))?;
        Ok(fd)
    }

    /// The frozen source's memory, for pages read by pre-copy.
    pub(crate) fn reader(&self) -> &dyn ReadMem {
        &self
            .tracee
            .as_ref()
            .expect("checkpoint already consumed")
            .main
    }

    /// A copy of the source's fd `fd`; see [`grab_fd`].
    pub fn dup_source_fd(&self, fd: i32) -> std::io::Result<std::os::fd::OwnedFd> {
        grab_fd(self.image.pid, fd)
    }

    /// Push every page into `sink`, then `finish` it. Returns bytes sent.
    pub fn send_pages(&self, sink: &mut dyn PageSink) -> Result<u64, CheckpointError> {
        let mut total = 0;
        for b in self.pages(DEFAULT_BATCH_BYTES)?.with_pool(sink.pool()) {
            let b = b?;
            total += b.data.len() as u64;
            sink.put(b)?;
        }
        sink.finish()?;
        Ok(total)
    }

    /// The migration failed or was cancelled: let the source continue.
    pub fn resume_source(mut self) -> Result<(), CheckpointError> {
        let g = self.tracee.take().expect("checkpoint already consumed");
        g.detach_all()
            .map_err(|e| CheckpointError::sys("detaching the source", e))
    }

    /// The copy runs elsewhere now: kill the source and collect its exit
    /// (which also reaps it when the caller is its parent).
    pub fn finish_source(mut self) -> Result<(), CheckpointError> {
        let g = self.tracee.take().expect("checkpoint already consumed");
        g.kill_and_reap();
        Ok(())
    }

    /// Hand the still-stopped source to whoever will act as its deputy.
    pub fn keep_frozen(mut self) -> FrozenSource {
        FrozenSource {
            tracee: self.tracee.take(),
            _not_send: PhantomData,
        }
    }
}

impl Drop for Checkpoint {
    /// Never leave the source stuck: an abandoned checkpoint resumes it.
    fn drop(&mut self) {
        if let Some(g) = self.tracee.take() {
            let _ = g.detach_all();
        }
    }
}

impl FrozenSource {
    pub(crate) fn take_tracee(&mut self) -> Option<Group> {
        self.tracee.take()
    }

    pub fn pid(&self) -> i32 {
        self.tracee.as_ref().map(|g| g.pid()).unwrap_or(-1)
    }
    pub fn resume(mut self) -> Result<(), CheckpointError> {
        let g = self.tracee.take().expect("consumed");
        g.detach_all()
            .map_err(|e| CheckpointError::sys("detaching the source", e))
    }
}

impl Drop for FrozenSource {
    fn drop(&mut self) {
        if let Some(g) = self.tracee.take() {
            let _ = g.detach_all();
        }
    }
}

/// What the injected calls in the source found out.
struct Injected {
    actions: Vec<SigAction>,
    itimers: [ItimerVal; 3],
    brk: u64,
    dumpable: u32,
    rlimits: Vec<Rlimit>,
    /// Per thread, in the group's order (main first).
    threads: Vec<ThreadInjected>,
}

/// What only a thread itself can say about itself.
#[derive(Default, Clone, Copy)]
struct ThreadInjected {
    altstack: AltStack,
    clear_child_tid: u64,
    robust_list: (u64, u64),
}

/// Seize every other thread of the (already seized) main thread's process.
/// Threads still running may create new ones meanwhile, so the task list is
/// read again until a whole pass finds nobody new. A thread that exits
/// before it can be stopped is simply not part of the image.
fn seize_threads(main: Tracee) -> Result<Group, CheckpointError> {
    let pid = main.pid;
    let mut g = Group::single(main);
    for round in 0.. {
        let tids = match proc::read_tids(pid) {
            Ok(t) => t,
            Err(e) => {
                let _ = g.detach_all();
                return Err(CheckpointError::sys("listing threads", e));
            }
        };
        let mut found = false;
        for tid in tids {
            if tid == pid || g.others.iter().any(|t| t.pid == tid) {
                continue;
            }
            match Tracee::seize(tid, 0) {
                Ok(t) => {
                    g.others.push(t);
                    found = true;
                }
                Err(_) if !proc::thread_alive(pid, tid) => {}
                Err(e) => {
                    let _ = g.detach_all();
                    return Err(CheckpointError::sys(format!("seizing thread {tid}"), e));
                }
            }
        }
        if !found {
            break;
        }
        // A process that keeps spawning threads faster than we stop them.
        if round > 100 {
            let n = g.others.len() as u64 + 1;
            let _ = g.detach_all();
            return Err(CantMove::MultiThreaded { threads: n }.into());
        }
    }
    g.others.sort_by_key(|t| t.pid);
    Ok(g)
}

/// CPU and signal state of one stopped thread, read by ptrace.
struct ThreadRead {
    regs: Regs,
    xstate: Vec<u8>,
    blocked: u64,
    rseq: Option<RseqState>,
    pending: Vec<PendingSignal>,
}

fn read_thread(t: &Tracee) -> Result<ThreadRead, CheckpointError> {
    let sys = CheckpointError::sys;
    let mut regs = t.regs().map_err(|e| sys("GETREGS", e))?;
    let xstate = t.xstate().map_err(|e| sys("GETREGSET xstate", e))?;
    let blocked = t.sigmask().map_err(|e| sys("GETSIGMASK", e))?;
    let rseq = t
        .rseq_config()
        .map_err(|e| sys("GET_RSEQ_CONFIGURATION", e))?
        .map(|(addr, len, sig)| RseqState { addr, len, sig });
    if let Some(r) = rseq {
        rseq_abort_fixup(t, r.addr, &mut regs).map_err(|e| sys("reading the rseq area", e))?;
    }
    let pending = t
        .peek_siginfo(false)
        .map_err(|e| sys("PEEKSIGINFO", e))?
        .into_iter()
        .map(|siginfo| PendingSignal {
            shared: false,
            siginfo,
        })
        .collect();
    Ok(ThreadRead {
        regs,
        xstate,
        blocked,
        rseq,
        pending,
    })
}

fn capture(g: &Group) -> Result<ProcessImage, CheckpointError> {
    let t = &g.main;
    let pid = t.pid;
    crate::movable::check(pid, Some(gettid()))?;
    let sys = CheckpointError::sys;
    let mut reads = Vec::with_capacity(g.others.len() + 1);
    for th in g.all() {
        reads.push(read_thread(th)?);
    }
    let mut pending = Vec::new();
    for siginfo in t.peek_siginfo(true).map_err(|e| sys("PEEKSIGINFO", e))? {
        pending.push(PendingSignal {
            shared: true,
            siginfo,
        });
    }

    let raw_vmas = proc::read_vmas(pid).map_err(|e| sys("reading smaps", e))?;
    let inj = inject_queries(g, &reads, &raw_vmas);
    // Whatever happened inside, the source gets its own registers and masks
    // back before anything else can go wrong.
    let mut restored = Ok(());
    for (th, r) in g.all().zip(&reads) {
        let one = th.set_regs(&r.regs).and_then(|_| th.set_sigmask(r.blocked));
        if restored.is_ok() {
            restored = one;
        }
    }
    let inj = inj?;
    restored.map_err(|e| sys("restoring source registers", e))?;
    let mut threads = Vec::with_capacity(reads.len());
    for ((th, r), ti) in g.all().zip(reads).zip(&inj.threads) {
        threads.push(CoreState {
            tid: th.pid,
            regs: r.regs,
            xstate: r.xstate,
            blocked: r.blocked,
            rseq: r.rseq,
            robust_list: ti.robust_list,
            clear_child_tid: ti.clear_child_tid,
            altstack: ti.altstack,
            pending: r.pending,
            comm: std::fs::read_to_string(format!("/proc/{pid}/task/{}/comm", th.pid))
                .map(|s| s.trim_end_matches('\n').to_string())
                .unwrap_or_default(),
        });
    }

    // Read the layout again: the scratch page is gone now and nothing else
    // may have changed while the process was stopped.
    let raw_vmas = proc::read_vmas(pid).map_err(|e| sys("reading smaps", e))?;
    let mut vmas = Vec::with_capacity(raw_vmas.len());
    for v in &raw_vmas {
        vmas.push(Vma {
            start: v.start,
            end: v.end,
            prot: v.prot(),
            shared: v.shared(),
            offset: v.offset,
            kind: proc::classify_vma(v)?,
            growsdown: v.growsdown(),
        });
    }

    let p = procfs::process::Process::new(pid)
        .map_err(|e| CheckpointError::Unexpected(format!("procfs: {e}")))?;
    let stat = p
        .stat()
        .map_err(|e| CheckpointError::Unexpected(format!("stat: {e}")))?;
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).map_err(|e| sys("reading auxv", e))?;
    let mm = MmState {
        vmas,
        start_code: stat.startcode,
        end_code: stat.endcode,
        start_data: stat.start_data.unwrap_or(0),
        end_data: stat.end_data.unwrap_or(0),
        start_brk: stat.start_brk.unwrap_or(0),
        brk: inj.brk,
        start_stack: stat.startstack,
        arg_start: stat.arg_start.unwrap_or(0),
        arg_end: stat.arg_end.unwrap_or(0),
        env_start: stat.env_start.unwrap_or(0),
        env_end: stat.env_end.unwrap_or(0),
        auxv,
        exe: proc::read_link(format!("/proc/{pid}/exe")).ok(),
    };

    let mut fds = FdTable::default();
    for f in proc::read_fds(pid).map_err(|e| sys("reading fds", e))? {
        fds.entries.push(FdEntry {
            fd: f.fd,
            kind: proc::classify_fd(&f)?,
            flags: f.flags,
            pos: f.pos,
        });
    }

    let umask = proc::read_status_field(pid, "Umask")
        .map_err(|e| sys("reading status", e))?
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .unwrap_or(0o022);
    let misc = MiscState {
        rlimits: inj.rlimits,
        cwd: proc::read_link(format!("/proc/{pid}/cwd")).map_err(|e| sys("reading cwd", e))?,
        umask,
        comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|s| s.trim_end_matches('\n').to_string())
            .unwrap_or_default(),
    };

    let creds = read_creds(pid, inj.dumpable).map_err(|e| sys("reading credentials", e))?;

    Ok(ProcessImage {
        creds,
        version: IMAGE_VERSION,
        pid,
        threads,
        mm,
        sig: SigState {
            actions: inj.actions,
            pending,
            itimers: inj.itimers,
        },
        fds,
        misc,
    })
}

/// If the task stopped inside an rseq critical section, move it to the
/// section's abort handler — what the kernel does on any preemption, so it
/// is always a legal outcome. Needed because the kernel's own fixup, on the
/// way back to user mode, sees our injected rip instead of the real one
/// (and clears `rseq_cs`), and the restored copy starts with no history.
fn rseq_abort_fixup(t: &Tracee, area: u64, regs: &mut Regs) -> std::io::Result<()> {
    // struct rseq { u32 cpu_id_start; u32 cpu_id; u64 rseq_cs; ... }
    let mut b = [0u8; 8];
    t.read_mem(area + 8, &mut b)?;
    let cs = u64::from_ne_bytes(b);
    if cs == 0 {
        return Ok(());
    }
    // struct rseq_cs { u32 version; u32 flags; u64 start_ip;
    //                  u64 post_commit_offset; u64 abort_ip; }
    let mut c = [0u8; 32];
    t.read_mem(cs, &mut c)?;
    let start = u64::from_ne_bytes(c[8..16].try_into().unwrap());
    let len = u64::from_ne_bytes(c[16..24].try_into().unwrap());
    let abort = u64::from_ne_bytes(c[24..32].try_into().unwrap());
    if regs.rip >= start && regs.rip - start < len {
        tracing::debug!(
            rip = regs.rip,
            abort,
            "stopped inside an rseq critical section"
        );
        regs.rip = abort;
        t.write_mem(area + 8, &0u64.to_ne_bytes())?;
    }
    Ok(())
}

fn read_creds(pid: i32, dumpable: u32) -> std::io::Result<CredState> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |k: &str| -> Vec<&str> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.split_whitespace().collect())
            .unwrap_or_default()
    };
    let ids = |k: &str| -> std::io::Result<[u32; 4]> {
        let v: Vec<u32> = field(k).iter().filter_map(|x| x.parse().ok()).collect();
        v.try_into()
            .map_err(|_| std::io::Error::other(format!("bad {k} line")))
    };
    let cap = |k: &str| {
        field(k)
            .first()
            .and_then(|x| u64::from_str_radix(x, 16).ok())
            .unwrap_or(0)
    };
    let personality = std::fs::read_to_string(format!("/proc/{pid}/personality"))?;
    Ok(CredState {
        uids: ids("Uid")?,
        gids: ids("Gid")?,
        groups: field("Groups")
            .iter()
            .filter_map(|x| x.parse().ok())
            .collect(),
        cap_inh: cap("CapInh"),
        cap_prm: cap("CapPrm"),
        cap_eff: cap("CapEff"),
        cap_bnd: cap("CapBnd"),
        cap_amb: cap("CapAmb"),
        no_new_privs: field("NoNewPrivs").first() == Some(&"1"),
        dumpable,
        personality: u32::from_str_radix(personality.trim(), 16).unwrap_or(0),
    })
}

/// Find a `syscall` instruction to borrow: the vDSO has one (its syscall
/// fallbacks), and failing that any executable file mapping will.
pub(crate) fn syscall_site(t: &Tracee, vmas: &[RawVma]) -> std::io::Result<Option<u64>> {
    let candidates = vmas.iter().filter(|v| v.path == "[vdso]").chain(
        vmas.iter()
            .filter(|v| v.perms[2] == b'x' && v.path.starts_with('/')),
    );
    for v in candidates {
        if let Some(a) = find_syscall_insn(t, v.start, v.end)? {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// One injected syscall; a negative return is an error.
fn icall(inj: &Injector, nr: i64, args: &[u64]) -> Result<i64, CheckpointError> {
    let r = inj
        .raw(nr, args)
        .map_err(|e| CheckpointError::sys(format!("injecting syscall {nr}"), e))?;
    match errno_of(r) {
        Some(errno) => Err(CheckpointError::Injected { nr, errno }),
        None => Ok(r),
    }
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap())
}

fn read_scratch(t: &Tracee, scratch: u64, len: usize) -> Result<Vec<u8>, CheckpointError> {
    let mut b = vec![0u8; len];
    t.read_mem(scratch, &mut b)
        .map_err(|e| CheckpointError::sys("reading scratch", e))?;
    Ok(b)
}

/// The per-thread questions (altstack, tid address, robust list), asked by
/// the thread `inj` drives, answers through the shared scratch page.
fn thread_queries(inj: &Injector, scratch: u64) -> Result<ThreadInjected, CheckpointError> {
    let t = inj.t;
    icall(inj, libc::SYS_sigaltstack, &[0, scratch])?;
    let b = read_scratch(t, scratch, 24)?;
    let altstack = AltStack {
        sp: u64_at(&b, 0),
        flags: u64_at(&b, 1) as i32,
        size: u64_at(&b, 2),
    };
    // The kernel keeps clear_child_tid write-only except for this
    // CONFIG_CHECKPOINT_RESTORE prctl, which must run in the task itself.
    icall(
        inj,
        libc::SYS_prctl,
        &[libc::PR_GET_TID_ADDRESS as u64, scratch],
    )?;
    let clear_child_tid = u64_at(&read_scratch(t, scratch, 8)?, 0);
    icall(inj, libc::SYS_get_robust_list, &[0, scratch, scratch + 8])?;
    let b = read_scratch(t, scratch, 16)?;
    Ok(ThreadInjected {
        altstack,
        clear_child_tid,
        robust_list: (u64_at(&b, 0), u64_at(&b, 1)),
    })
}

/// State only the task itself can ask for (its signal dispositions, timers,
/// tid address, robust list, brk), read by syscalls injected into it; the
/// per-thread part is asked of each thread. All signals are blocked in every
/// thread meanwhile so nothing is delivered into our borrowed register
/// state; the caller restores registers and masks.
fn inject_queries(
    g: &Group,
    reads: &[ThreadRead],
    vmas: &[RawVma],
) -> Result<Injected, CheckpointError> {
    let sys = CheckpointError::sys;
    let t = &g.main;
    for th in g.all() {
        th.set_sigmask(!0).map_err(|e| sys("SETSIGMASK", e))?;
    }
    let insn = syscall_site(t, vmas)
        .map_err(|e| sys("looking for a syscall instruction", e))?
        .ok_or_else(|| {
            CheckpointError::Unexpected("no syscall instruction in the source".into())
        })?;
    let inj = Injector {
        t,
        insn,
        base: reads[0].regs,
    };
    let call = |nr: i64, args: &[u64]| icall(&inj, nr, args);
    let scratch = call(
        libc::SYS_mmap,
        &[
            0,
            PAGE,
            (libc::PROT_READ | libc::PROT_WRITE) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ],
    )? as u64;
    let res = (|| -> Result<Injected, CheckpointError> {
        let read = |len: usize| read_scratch(t, scratch, len);
        let mut actions = Vec::with_capacity(64);
        for sig in 1..=64u64 {
            if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
                actions.push(SigAction::default());
                continue;
            }
            call(libc::SYS_rt_sigaction, &[sig, 0, scratch, 8])?;
            let b = read(32)?;
            actions.push(SigAction {
                handler: u64_at(&b, 0),
                flags: u64_at(&b, 1),
                restorer: u64_at(&b, 2),
                mask: u64_at(&b, 3),
            });
        }
        let mut itimers = [ItimerVal::default(); 3];
        for (which, it) in itimers.iter_mut().enumerate() {
            call(libc::SYS_getitimer, &[which as u64, scratch])?;
            let b = read(32)?;
            *it = ItimerVal {
                interval_sec: u64_at(&b, 0) as i64,
                interval_usec: u64_at(&b, 1) as i64,
                value_sec: u64_at(&b, 2) as i64,
                value_usec: u64_at(&b, 3) as i64,
            };
        }
        let mut threads = vec![thread_queries(&inj, scratch)?];
        for (th, r) in g.others.iter().zip(&reads[1..]) {
            let ti = Injector {
                t: th,
                insn,
                base: r.regs,
            };
            threads.push(thread_queries(&ti, scratch)?);
        }
        let brk = call(libc::SYS_brk, &[0])? as u64;
        let dumpable = call(libc::SYS_prctl, &[libc::PR_GET_DUMPABLE as u64])? as u32;
        // Asked from inside: prlimit on another user's process needs
        // CAP_SYS_RESOURCE, which a restorer may not have.
        let mut rlimits = Vec::new();
        for res in 0..16u64 {
            call(libc::SYS_prlimit64, &[0, res, 0, scratch])?;
            let b = read(16)?;
            rlimits.push(Rlimit {
                resource: res as u32,
                cur: u64_at(&b, 0),
                max: u64_at(&b, 1),
            });
        }
        Ok(Injected {
            rlimits,
            dumpable,
            actions,
            itimers,
            brk,
            threads,
        })
    })();
    let unmapped = call(libc::SYS_munmap, &[scratch, PAGE]);
    let out = res?;
    unmapped?;
    Ok(out)
}

/// Iterator over the frozen source's pages that must travel: anonymous
/// pages present in RAM or swap, and private file pages that were written
/// (no longer the file's page cache page).
pub struct PageReader<'a> {
    t: &'a dyn ReadMem,
    pagemap: File,
    vmas: Vec<&'a Vma>,
    idx: usize,
    cursor: u64,
    max_pages: u64,
    pool: Option<BufPool>,
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Reading another process's memory: a stopped tracee, or a running
/// process during pre-copy.
pub(crate) trait ReadMem {
    /// Appends `len` bytes at `addr` to `out`; on error `out` is unchanged.
    fn read_mem_append(&self, addr: u64, len: usize, out: &mut Vec<u8>) -> std::io::Result<()>;
}

impl ReadMem for Tracee {
    fn read_mem_append(&self, addr: u64, len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        Tracee::read_mem_append(self, addr, len, out)
    }
}

impl<'a> PageReader<'a> {
    pub(crate) fn new(
        t: &'a dyn ReadMem,
        pagemap: File,
        vmas: Vec<&'a Vma>,
        batch_bytes: usize,
    ) -> Self {
        PageReader {
            t,
            pagemap,
            vmas,
            idx: 0,
            cursor: 0,
            max_pages: (batch_bytes as u64 / PAGE).max(1),
            pool: None,
        }
    }

    /// Takes the batches' buffers from `pool` (a sink's, see
    /// [`PageSink::pool`]).
    pub(crate) fn with_pool(mut self, pool: Option<BufPool>) -> Self {
        self.pool = pool;
        self
    }

    pub(crate) fn wanted(entry: u64, file_backed: bool) -> bool {
        if entry & PM_SWAP != 0 {
            return true;
        }
        entry & PM_PRESENT != 0 && !(file_backed && entry & PM_FILE != 0)
    }

    fn next_run(&mut self) -> Result<Option<PageBatch>, CheckpointError> {
        while let Some(v) = self.vmas.get(self.idx).copied() {
            if self.cursor < v.start {
                self.cursor = v.start;
            }
            if self.cursor >= v.end {
                self.idx += 1;
                continue;
            }
            let file_backed = matches!(v.kind, VmaKind::File { .. });
            let n = ((v.end - self.cursor) / PAGE).min(self.max_pages);
            let mut raw = vec![0u8; (n * 8) as usize];
            self.pagemap
                .read_exact_at(&mut raw, self.cursor / PAGE * 8)
                .map_err(|e| CheckpointError::sys("reading pagemap", e))?;
            let entries: Vec<u64> = raw
                .chunks_exact(8)
                .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
                .collect();
            let Some(first) = entries.iter().position(|&e| Self::wanted(e, file_backed)) else {
                self.cursor += n * PAGE;
                continue;
            };
            let len = entries[first..]
                .iter()
                .take_while(|&&e| Self::wanted(e, file_backed))
                .count() as u64;
            let addr = self.cursor + first as u64 * PAGE;
            let mut data = batch_buffer(self.pool.as_ref(), (len * PAGE) as usize);
            self.t
                .read_mem_append(addr, (len * PAGE) as usize, &mut data)
                .map_err(|e| CheckpointError::sys(format!("reading pages at {addr:#x}"), e))?;
            self.cursor = addr + len * PAGE;
            return Ok(Some(PageBatch { addr, data }));
        }
        Ok(None)
    }
}

impl Iterator for PageReader<'_> {
    type Item = Result<PageBatch, CheckpointError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_run().transpose()
    }
}
