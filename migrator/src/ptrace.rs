//! Thin ptrace layer over libc. nix's ptrace module lacks GETREGSET for
//! xstate, GET/SETSIGMASK, PEEKSIGINFO and the rseq query, so all requests go
//! through one raw helper for uniformity.
//!
//! A ptrace relationship belongs to the *thread* that attached: every method
//! here must be called from the thread that created the `Tracee`.

use crate::state::Regs;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const NT_X86_XSTATE: libc::c_int = 0x202;
/// Generous upper bound for the xsave area (AMX needs ~11 KiB).
const XSTATE_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// PTRACE_EVENT_STOP (interrupt or group stop).
    Event(i32),
    /// Signal-delivery-stop for this signal.
    Signal(i32),
    /// Another ptrace event (fork/exec...), not expected here.
    OtherEvent(i32),
    Exited(i32),
    Killed(i32),
}

pub(crate) struct Tracee {
    pub pid: i32,
    /// Signal of the first PTRACE_EVENT_STOP: SIGTRAP when our interrupt
    /// stopped it, a stop signal when it was already in a group-stop.
    pub first_stop: i32,
    mem: File,
}

fn ptrace(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every caller passes addr/data matching the request's contract.
    let r = unsafe { libc::ptrace(req, pid, addr, data) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(crate) fn waitpid(pid: i32) -> io::Result<Stop> {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(decode_status(status));
    }
}

pub(crate) fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        Stop::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Stop::Killed(libc::WTERMSIG(status))
    } else {
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if event == libc::PTRACE_EVENT_STOP {
            Stop::Event(sig)
        } else if event != 0 {
            Stop::OtherEvent(event)
        } else {
            Stop::Signal(sig)
        }
    }
}

impl Tracee {
    /// Seize and interrupt `pid`, returning once it sits in a
    /// PTRACE_EVENT_STOP. Seize (not ATTACH) because ATTACH sends a SIGSTOP
    /// that a process could observe and that we would have to swallow.
    pub fn seize(pid: i32, options: libc::c_int) -> io::Result<Tracee> {
        let mem = File::options()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        ptrace(libc::PTRACE_SEIZE, pid, 0, options as usize)?;
        let mut t = Tracee {
            pid,
            first_stop: 0,
            mem,
        };
        match t.interrupt_and_wait() {
            Ok(sig) => t.first_stop = sig,
            Err(e) => {
                let _ = t.detach();
                return Err(e);
            }
        }
        Ok(t)
    }

    fn interrupt_and_wait(&self) -> io::Result<i32> {
        ptrace(libc::PTRACE_INTERRUPT, self.pid, 0, 0)?;
        loop {
            match waitpid(self.pid)? {
                Stop::Event(sig) => return Ok(sig),
                // A signal was being delivered when we came in: let it go
                // through as the process would have seen it; the interrupt
                // stays pending and stops the task right after.
                Stop::Signal(sig) => self.cont(sig)?,
                Stop::OtherEvent(_) => self.cont(0)?,
                Stop::Exited(c) => {
                    return Err(io::Error::other(format!(
                        "process exited ({c}) while seizing"
                    )))
                }
                Stop::Killed(s) => {
                    return Err(io::Error::other(format!(
                        "process killed ({s}) while seizing"
                    )))
                }
            }
        }
    }

    pub fn cont(&self, sig: i32) -> io::Result<()> {
        ptrace(libc::PTRACE_CONT, self.pid, 0, sig as usize).map(drop)
    }

    /// Leaves a tracee that is in a group-stop stopped, as it would be
    /// untraced: its parent sees it stopped, and SIGCONT wakes it (and
    /// shows up as a signal for the tracer).
    pub fn listen(&self) -> io::Result<()> {
        ptrace(libc::PTRACE_LISTEN, self.pid, 0, 0).map(drop)
    }

    pub fn step(&self) -> io::Result<()> {
        ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0, 0).map(drop)
    }

    pub fn detach(&self) -> io::Result<()> {
        ptrace(libc::PTRACE_DETACH, self.pid, 0, 0).map(drop)
    }

    pub fn regs(&self) -> io::Result<Regs> {
        // SAFETY: zeroed is a valid user_regs_struct.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        ptrace(libc::PTRACE_GETREGS, self.pid, 0, &mut r as *mut _ as usize)?;
        Ok(from_libc(&r))
    }

    pub fn set_regs(&self, regs: &Regs) -> io::Result<()> {
        let r = to_libc(regs);
        ptrace(libc::PTRACE_SETREGS, self.pid, 0, &r as *const _ as usize).map(drop)
    }

    pub fn xstate(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; XSTATE_MAX];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        ptrace(
            libc::PTRACE_GETREGSET,
            self.pid,
            NT_X86_XSTATE as usize,
            &mut iov as *mut _ as usize,
        )?;
        buf.truncate(iov.iov_len);
        Ok(buf)
    }

    pub fn set_xstate(&self, data: &[u8]) -> io::Result<()> {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        ptrace(
            libc::PTRACE_SETREGSET,
            self.pid,
            NT_X86_XSTATE as usize,
            &mut iov as *mut _ as usize,
        )
        .map(drop)
    }

    pub fn sigmask(&self) -> io::Result<u64> {
        let mut m: u64 = 0;
        ptrace(
            libc::PTRACE_GETSIGMASK,
            self.pid,
            8,
            &mut m as *mut _ as usize,
        )?;
        Ok(m)
    }

    pub fn set_sigmask(&self, m: u64) -> io::Result<()> {
        ptrace(
            libc::PTRACE_SETSIGMASK,
            self.pid,
            8,
            &m as *const _ as usize,
        )
        .map(drop)
    }

    /// (area, len, signature); None when the thread has no rseq registered.
    pub fn rseq_config(&self) -> io::Result<Option<(u64, u32, u32)>> {
        #[repr(C)]
        #[derive(Default)]
        struct Conf {
            ptr: u64,
            size: u32,
            sig: u32,
            flags: u32,
            pad: u32,
        }
        let mut c = Conf::default();
        ptrace(
            libc::PTRACE_GET_RSEQ_CONFIGURATION,
            self.pid,
            std::mem::size_of::<Conf>(),
            &mut c as *mut _ as usize,
        )?;
        Ok((c.ptr != 0).then_some((c.ptr, c.size, c.sig)))
    }

    /// All queued siginfos of one queue (private or shared), without
    /// dequeuing them.
    pub fn peek_siginfo(&self, shared: bool) -> io::Result<Vec<Vec<u8>>> {
        #[repr(C)]
        struct Args {
            off: u64,
            flags: u32,
            nr: i32,
        }
        let mut out = Vec::new();
        loop {
            let mut buf = vec![0u8; 128 * 32];
            let args = Args {
                off: out.len() as u64,
                flags: if shared { 1 } else { 0 },
                nr: 32,
            };
            let n = ptrace(
                libc::PTRACE_PEEKSIGINFO,
                self.pid,
                &args as *const _ as usize,
                buf.as_mut_ptr() as usize,
            )? as usize;
            if n == 0 {
                return Ok(out);
            }
            for i in 0..n {
                out.push(buf[i * 128..(i + 1) * 128].to_vec());
            }
        }
    }

    /// process_vm_readv first (one pinned copy, no bounce page); it honours
    /// protections, so PROT_NONE pages fall back to /proc/pid/mem, which
    /// reads with FOLL_FORCE.
    pub fn read_mem(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut _,
            iov_len: buf.len(),
        };
        // SAFETY: `local` covers exactly `buf`.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        let done = n.max(0) as usize;
        if done == buf.len() {
            return Ok(());
        }
        self.mem.read_exact_at(&mut buf[done..], addr + done as u64)
    }

    /// Like [`Tracee::read_mem`], appending `len` bytes to `out`.
    pub(crate) fn read_mem_append(
        &self,
        addr: u64,
        len: usize,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        read_appending(self.pid, &self.mem, addr, len, out)
    }

    /// Writes the concatenation of `pieces` at `addr`: one process_vm_writev
    /// per [`IOV_MAX`] pieces, so a batch received as many network chunks
    /// goes in without being gathered into one buffer first.
    pub fn write_mem_v(&self, addr: u64, pieces: &[&[u8]]) -> io::Result<()> {
        let mut at = addr;
        for group in pieces.chunks(IOV_MAX) {
            let total: usize = group.iter().map(|p| p.len()).sum();
            let local: Vec<libc::iovec> = group
                .iter()
                .map(|p| libc::iovec {
                    iov_base: p.as_ptr() as *mut _,
                    iov_len: p.len(),
                })
                .collect();
            let remote = libc::iovec {
                iov_base: at as *mut _,
                iov_len: total,
            };
            // SAFETY: each local iovec covers one live piece; the kernel
            // only reads them.
            let n = unsafe {
                libc::process_vm_writev(self.pid, local.as_ptr(), local.len() as _, &remote, 1, 0)
            };
            let done = n.max(0) as usize;
            if done < total {
                // Pages process_vm_writev may not write (read-only, PROT_NONE).
                let mut off = 0;
                for p in group {
                    let end = off + p.len();
                    if end > done {
                        let skip = done.saturating_sub(off);
                        self.write_mem(at + (off + skip) as u64, &p[skip..])?;
                    }
                    off = end;
                }
            }
            at += total as u64;
        }
        Ok(())
    }

    /// process_vm_writev first; read-only and PROT_NONE private pages get
    /// their contents through /proc/pid/mem, which writes with FOLL_FORCE
    /// (breaking COW) — no mprotect dance in the target.
    pub fn write_mem(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        let local = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut _,
            iov_len: data.len(),
        };
        // SAFETY: `local` covers exactly `data`; the kernel only reads it.
        let n = unsafe { libc::process_vm_writev(self.pid, &local, 1, &remote, 1, 0) };
        let done = n.max(0) as usize;
        if done == data.len() {
            return Ok(());
        }
        self.mem.write_all_at(&data[done..], addr + done as u64)
    }

    pub fn kill(&self) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }
}

fn from_libc(r: &libc::user_regs_struct) -> Regs {
    Regs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

fn to_libc(r: &Regs) -> libc::user_regs_struct {
    libc::user_regs_struct {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

/// Wait for a traced task to be gone, consuming whatever stops it reports
/// on the way (it was sent SIGKILL). Errors (already reaped) end the wait.
pub(crate) fn reap(tid: i32) {
    while let Ok(s) = waitpid(tid) {
        if matches!(s, Stop::Exited(_) | Stop::Killed(_)) {
            break;
        }
    }
}

/// Every thread of one traced process: the main thread (tid == pid) and
/// the others, each its own ptrace relationship.
pub(crate) struct Group {
    pub main: Tracee,
    pub others: Vec<Tracee>,
}

impl Group {
    pub fn single(main: Tracee) -> Group {
        Group {
            main,
            others: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.main.pid
    }

    pub fn all(&self) -> impl Iterator<Item = &Tracee> {
        std::iter::once(&self.main).chain(self.others.iter())
    }

    /// Let every thread run again, the others first; the first error is
    /// returned but every thread is detached regardless.
    pub fn detach_all(&self) -> io::Result<()> {
        let mut res = Ok(());
        for t in self.others.iter().chain(std::iter::once(&self.main)) {
            if let Err(e) = t.detach() {
                if res.is_ok() {
                    res = Err(e);
                }
            }
        }
        res
    }

    /// SIGKILL the process and reap every traced thread. The other threads
    /// first: the kernel reports a group leader's death (even to its
    /// tracer) only once all its other threads are reaped, and traced ones
    /// wait for us.
    pub fn kill_and_reap(&self) {
        self.main.kill();
        for t in &self.others {
            reap(t.pid);
        }
        reap(self.main.pid);
    }
}

/// The most iovecs one process_vm_writev takes (UIO_MAXIOV).
const IOV_MAX: usize = 1024;

/// Appends `len` bytes of `pid`'s memory at `addr` to `out` without zeroing
/// them first (a memset of every page sent, otherwise): process_vm_readv
/// fills the spare capacity; what it cannot read (PROT_NONE pages) comes
/// through /proc/pid/mem. On error `out` is as it was.
pub(crate) fn read_appending(
    pid: i32,
    mem: &File,
    addr: u64,
    len: usize,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    out.reserve(len);
    let at = out.len();
    let local = libc::iovec {
        iov_base: out.spare_capacity_mut().as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut _,
        iov_len: len,
    };
    // SAFETY: `local` lies within the reserved spare capacity.
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    let done = n.max(0) as usize;
    // SAFETY: the kernel initialised the first `done` bytes.
    unsafe { out.set_len(at + done) };
    if done < len {
        out.resize(at + len, 0);
        if let Err(e) = mem.read_exact_at(&mut out[at + done..], addr + done as u64) {
            out.truncate(at);
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    /// A page written in many small pieces lands whole, including on pages
    /// process_vm_writev refuses (read-only, PROT_NONE), and reads back the
    /// same with the appending read, which must not zero what it reads.
    #[test]
    fn gathered_writes_and_appending_reads_cover_protected_pages() {
        // SAFETY: a fresh private mapping of three pages.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(area, libc::MAP_FAILED);
        let base = area as u64;
        // SAFETY: protections of our own mapping; the child inherits them.
        unsafe {
            libc::mprotect(area.cast::<u8>().add(PAGE).cast(), PAGE, libc::PROT_READ);
            libc::mprotect(
                area.cast::<u8>().add(2 * PAGE).cast(),
                PAGE,
                libc::PROT_NONE,
            );
        }
        // SAFETY: the child only waits to be killed.
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                // SAFETY: async-signal-safe.
                unsafe { libc::pause() };
            }
        }
        let t = Tracee::seize(child, 0).expect("seize the child");
        let data: Vec<u8> = (0..3 * PAGE).map(|i| (i * 7 % 251) as u8).collect();
        // Uneven pieces, more of them than one call takes.
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut at = 0;
        for i in 0.. {
            let n = (1 + i % 5).min(data.len() - at);
            pieces.push(&data[at..at + n]);
            at += n;
            if at == data.len() {
                break;
            }
        }
        assert!(pieces.len() > IOV_MAX);
        t.write_mem_v(base, &pieces).expect("gathered write");
        let mut back = vec![0xEEu8; 3];
        t.read_mem_append(base, 3 * PAGE, &mut back)
            .expect("appending read");
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
            libc::munmap(area, 3 * PAGE);
        }
        assert_eq!(&back[..3], &[0xEE; 3], "what was there before is kept");
        assert!(back[3..] == data[..], "the pages read back as written");
    }
}
