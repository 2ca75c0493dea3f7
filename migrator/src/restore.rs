//! Building a process from an image inside a fresh stub, by injected
//! syscalls. The stub is a raw clone of the restorer that only loops in
//! pause(); it is seized, emptied, and refilled:
//!
//! 1. unregister the stub's inherited rseq (its area is about to vanish)
//! 2. map a trampoline (a `syscall` instruction + scratch) in a hole of the
//!    target layout, and switch injection to it
//! 3. unmap everything the stub inherited except the kernel's special areas
//! 4. mremap `[vvar]`, `[vvar_vclock]`, `[vdso]` to the source's addresses
//! 5. mmap every area at its address (files from their translated paths)
//! 6. write the page stream through /proc/pid/mem
//! 7. prctl(PR_SET_MM_MAP): brk, arg/env bounds, auxv, exe link
//! 8. signal dispositions, altstack, itimers
//! 9. umask, cwd, robust list, tid address, rseq, comm
//! 10. file descriptors (replacements from the caller, files by path)
//! 11. the other threads: injected clone3 (CLONE_THREAD, set_tid), each
//!     seized and given its own per-thread state
//! 12. pending signals, rlimits, credentials (in every thread)
//! 13. unmap the trampoline, load every thread's registers, xstate and mask
//!
//! The result is left stopped: the caller runs it once the source is gone.

use crate::checkpoint::syscall_site;
use crate::error::RestoreError;
use crate::error::StreamError;
use crate::inject::{errno_of, Injector};
use crate::pages::{read_precopy_item, PageRead, PageSource, PrecopyItem};
use crate::proc::{read_vmas, RawVma};
use crate::ptrace::{Group, Tracee};
use crate::state::*;
use std::collections::HashMap;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

const PAGE: u64 = 4096;
const SCRATCH: u64 = 64 * 1024;
/// Offset in the trampoline page of the `syscall; jmp .` new threads start in.
const THREAD_SPIN: u64 = 16;

/// Points where a test can make the restore fail on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreStep {
    StubCreated,
    AddressSpaceMapped,
    PagesWritten,
    StateRestored,
    FdsRestored,
    RegistersSet,
}

/// Put the restorer's fd `from` at number `fd` in the restored process
/// (pipes, sockets and ttys whose other end stays home).
#[derive(Debug, Clone, Copy)]
pub struct FdReplacement {
    pub fd: i32,
    pub from: RawFd,
}

#[derive(Default)]
pub struct RestoreOptions<'a> {
    /// Maps a path as the source saw it to the path to use here, e.g. to
    /// `/mosix/nodes/<home>/...`. Identity when `None`.
    pub translate_path: Option<&'a dyn Fn(&Path) -> PathBuf>,
    pub replacements: Vec<FdReplacement>,
    /// Try to give the process its old pid (clone3 set_tid); falls back to
    /// any pid when that one is taken.
    pub keep_pid: bool,
    /// Fault injection for tests.
    pub fail_at: Option<RestoreStep>,
}

impl RestoreOptions<'_> {
    fn translate(&self, p: &Path) -> PathBuf {
        match self.translate_path {
            Some(f) => f(p),
            None => p.to_path_buf(),
        }
    }
    fn fault(&self, step: RestoreStep) -> Result<(), RestoreError> {
        if self.fail_at == Some(step) {
            return Err(RestoreError::FaultInjected(step));
        }
        Ok(())
    }
}

/// A fully built process, still stopped under ptrace. Dropping it without
/// `run` kills it: nothing half-made ever runs.
pub struct Restored {
    tracee: Option<Group>,
    pid: i32,
    _not_send: PhantomData<*const ()>,
}

impl Restored {
    /// The restored process is a child of the restorer (waitpid works).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Let it run from where the source stopped.
    pub fn run(mut self) -> Result<i32, RestoreError> {
        let g = self.tracee.take().expect("consumed");
        g.detach_all()
            .map_err(|e| RestoreError::sys("detaching the restored process", e))?;
        Ok(self.pid)
    }

    /// Kill and reap it.
    pub fn abort(mut self) {
        if let Some(g) = self.tracee.take() {
            g.kill_and_reap();
        }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if let Some(g) = self.tracee.take() {
            g.kill_and_reap();
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// A child of ours that does nothing but wait to be seized. Raw clone3
/// (not fork) so the old pid can be requested with set_tid; the child runs
/// only raw syscalls, which is all that is safe after forking a
/// multi-threaded process.
///
/// The child first closes every inherited fd except `keep` (the
/// replacements): holding the restorer's fds would, among other things,
/// keep the write end of the very stream being restored from open, so a
/// sender that dies mid-stream would never produce EOF. It says so on a
/// pipe, and only then is it returned: seized any earlier, it would be
/// stopped still holding them all.
fn spawn_stub(want_pid: Option<i32>, keep: &[RawFd]) -> io::Result<i32> {
    let mut ends = [0; 2];
    // SAFETY: plain syscall with a valid out array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: descriptors we just opened and own.
    let (ready_r, ready_w) =
        unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let ready_fd = ready_w.as_raw_fd();
    let mut keep: Vec<u32> = keep.iter().map(|&f| f as u32).collect();
    keep.push(ready_fd as u32);
    keep.sort_unstable();
    let mut closes: Vec<(u32, u32)> = Vec::new();
    let mut lo = 0u32;
    for &k in &keep {
        if k > lo {
            closes.push((lo, k - 1));
        }
        lo = k.saturating_add(1);
    }
    closes.push((lo, u32::MAX));
    let set_tid = [want_pid.unwrap_or(0)];
    let mut args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if want_pid.is_some() {
        args.set_tid = set_tid.as_ptr() as u64;
        args.set_tid_size = 1;
    }
    // SAFETY: clone3 without CLONE_VM duplicates the address space like
    // fork; the child never returns from this function.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        // SAFETY (all below): raw syscalls on our own fd table, no
        // allocation, nothing that is unsafe after fork.
        for &(a, b) in &closes {
            unsafe { libc::syscall(libc::SYS_close_range, a, b, 0) };
        }
        unsafe {
            libc::syscall(libc::SYS_write, ready_fd, b"r".as_ptr(), 1);
            libc::syscall(libc::SYS_close, ready_fd);
        }
        loop {
            unsafe { libc::syscall(libc::SYS_pause) };
        }
    }
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let pid = r as i32;
    drop(ready_w);
    // Bounded: a stub that dies first closes its end (EOF); one that hangs
    // is killed.
    let mut pfd = libc::pollfd {
        fd: ready_r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut byte = [0u8; 1];
    // SAFETY: one valid pollfd; a one-byte buffer.
    let ready = unsafe { libc::poll(&mut pfd, 1, 5000) } == 1
        && unsafe { libc::read(ready_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } == 1;
    if !ready {
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
        }
        return Err(io::Error::other("the stub did not get ready"));
    }
    Ok(pid)
}

/// Build `image` + `pages` into a new process. On error the stub is gone.
pub fn restore(
    image: &ProcessImage,
    pages: &mut dyn PageSource,
    opts: &RestoreOptions,
) -> Result<Restored, RestoreError> {
    let mut r = spawn_restored(image, opts)?;
    let g = r.tracee.as_mut().unwrap();
    if let Err(e) = build(&g.main, &mut g.others, image, pages, opts) {
        tracing::debug!(stub = r.pid, error = %e, "restore failed; stub killed");
        return Err(e);
    }
    tracing::debug!(
        pid = r.pid,
        from = image.pid,
        "restored, stopped until run()"
    );
    Ok(r)
}

fn check_image(image: &ProcessImage) -> Result<(), RestoreError> {
    if image.version != IMAGE_VERSION {
        return Err(RestoreError::BadImage(format!(
            "image version {} (we read {IMAGE_VERSION})",
            image.version
        )));
    }
    if image.threads.first().map(|c| c.tid) != Some(image.pid) {
        return Err(RestoreError::BadImage(
            "the first thread must be the main thread".into(),
        ));
    }
    Ok(())
}

/// A stub, seized; dropping the result kills it.
fn spawn_restored(image: &ProcessImage, opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    check_image(image)?;
    let keep: Vec<RawFd> = opts.replacements.iter().map(|r| r.from).collect();
    let pid = match opts.keep_pid.then_some(image.pid) {
        Some(p) => spawn_stub(Some(p), &keep).or_else(|_| spawn_stub(None, &keep)),
        None => spawn_stub(None, &keep),
    }
    .map_err(|e| RestoreError::sys("clone3 of the stub", e))?;
    let t = match Tracee::seize(pid, libc::PTRACE_O_EXITKILL) {
        Ok(t) => t,
        Err(e) => {
            // SAFETY: plain syscalls on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
            }
            return Err(RestoreError::sys("seizing the stub", e));
        }
    };
    Ok(Restored {
        tracee: Some(Group::single(t)),
        pid,
        _not_send: PhantomData,
    })
}

/// Pre-copy on the target: `prelim` is the image of the process as it ran
/// on at home. Its areas are built in a new stub at once and each round's
/// pages are written straight into them as they arrive, so the freeze only
/// pays for the last round. Then, from `r`: the final image; the areas that
/// changed since `prelim` are rebuilt (the same comparison the source made
/// to decide what to send whole); the last pages; the holes, zeroed again;
/// and the rest of the restore. `on_round` hears of each finished round
/// (an error there abandons the restore, as any other does).
pub fn restore_precopy(
    prelim: &ProcessImage,
    r: &mut dyn PageRead,
    opts: &RestoreOptions,
    on_round: &mut dyn FnMut(u32) -> Result<(), RestoreError>,
) -> Result<(Restored, ProcessImage), RestoreError> {
    let mut restored = spawn_restored(prelim, opts)?;
    let g = restored.tracee.as_mut().unwrap();
    let t = &g.main;
    let stub = prepare(t, prelim, opts)?;
    let max_batch = 1 << 30;
    // Runs written into the stub, for the holes.
    let mut written: Vec<(u64, u64)> = Vec::new();
    let image = loop {
        match read_precopy_item(r, max_batch)? {
            PrecopyItem::Pages { addr, len } => {
                write_pages(t, r, addr, len)?;
                written.push((addr, addr + len));
            }
            PrecopyItem::Round(n) => on_round(n)?,
            PrecopyItem::Image(i) => break *i,
            _ => return Err(StreamError::Protocol("pre-copy stream out of order".into()).into()),
        }
    };
    let frozen_at = std::time::Instant::now();
    check_image(&image)?;
    let rem = stub.remote(t);
    if image
        .mm
        .vmas
        .iter()
        .any(|v| v.start < stub.tramp + stub.tramp_len && stub.tramp < v.end)
    {
        return Err(RestoreError::Unexpected(
            "the process mapped memory where the restore's trampoline is; try again".into(),
        ));
    }
    let special = |v: &&Vma| matches!(v.kind, VmaKind::Special { .. } | VmaKind::Vsyscall);
    let was: Vec<&Vma> = prelim.mm.vmas.iter().filter(special).collect();
    let now: Vec<&Vma> = image.mm.vmas.iter().filter(special).collect();
    if was != now {
        return Err(RestoreError::VdsoMismatch(
            "the kernel's areas moved during pre-copy".into(),
        ));
    }
    // Areas gone or changed go; new or changed ones are built afresh and
    // come whole in the last round.
    for v in prelim.mm.vmas.iter().filter(|v| !special(v)) {
        if !image.mm.vmas.contains(v) {
            rem.call("munmap changed area", libc::SYS_munmap, &[v.start, v.len()])?;
        }
    }
    let fresh: Vec<&Vma> = image
        .mm
        .vmas
        .iter()
        .filter(|v| !special(v) && !prelim.mm.vmas.contains(v))
        .collect();
    map_areas(&rem, &fresh, opts)?;
    written.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(written.len());
    for (s, e) in written {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    loop {
        match read_precopy_item(r, max_batch)? {
            PrecopyItem::Pages { addr, len } => write_pages(t, r, addr, len)?,
            PrecopyItem::Holes(holes) => {
                for (hs, he) in holes {
                    let first = merged.partition_point(|&(_, e)| e <= hs);
                    for &(ws, we) in merged[first..].iter().take_while(|&&(s, _)| s < he) {
                        let (s, e) = (hs.max(ws), he.min(we));
                        rem.call(
                            "madvise(MADV_DONTNEED) a hole",
                            libc::SYS_madvise,
                            &[s, e - s, libc::MADV_DONTNEED as u64],
                        )?;
                    }
                }
            }
            PrecopyItem::End => break,
            _ => return Err(StreamError::Protocol("pre-copy stream out of order".into()).into()),
        }
    }
    opts.fault(RestoreStep::PagesWritten)?;
    let g = restored.tracee.as_mut().unwrap();
    finish(&g.main, &mut g.others, &stub, &image, opts)?;
    tracing::info!(
        pid = restored.pid,
        from = image.pid,
        took = ?frozen_at.elapsed(),
        "restored after pre-copy (from the final image on), stopped until run()"
    );
    Ok((restored, image))
}

struct Remote<'a> {
    inj: Injector<'a>,
    scratch: u64,
}

impl Remote<'_> {
    fn call(&self, what: &str, nr: i64, args: &[u64]) -> Result<u64, RestoreError> {
        let r = self
            .inj
            .raw(nr, args)
            .map_err(|e| RestoreError::sys(format!("injecting {what}"), e))?;
        match errno_of(r) {
            Some(errno) => Err(RestoreError::Injected {
                what: what.to_string(),
                nr,
                errno,
            }),
            None => Ok(r as u64),
        }
    }

    /// Copy `data` into the scratch area at `off`; returns its address.
    fn put(&self, off: u64, data: &[u8]) -> Result<u64, RestoreError> {
        assert!(off + data.len() as u64 <= SCRATCH);
        self.inj
            .t
            .write_mem(self.scratch + off, data)
            .map_err(|e| RestoreError::sys("writing scratch", e))?;
        Ok(self.scratch + off)
    }

    fn put_path(&self, p: &Path) -> Result<u64, RestoreError> {
        use std::os::unix::ffi::OsStrExt;
        let mut b = p.as_os_str().as_bytes().to_vec();
        if b.len() >= 4096 {
            return Err(RestoreError::BadImage(format!("path too long: {p:?}")));
        }
        b.push(0);
        self.put(0, &b)
    }

    fn open(&self, p: &Path, flags: i32) -> Result<u64, RestoreError> {
        let a = self.put_path(p)?;
        self.call(
            "openat",
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, a, flags as u64, 0],
        )
        .map_err(|e| match e {
            RestoreError::Injected { errno, .. } => RestoreError::File {
                path: p.to_path_buf(),
                source: io::Error::from_raw_os_error(errno),
            },
            e => e,
        })
    }
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// A free range for the trampoline: outside every area of the target and
/// of the stub, with a guard page on each side.
fn pick_hole(image: &ProcessImage, stub: &[RawVma], len: u64) -> Option<u64> {
    let mut used: Vec<(u64, u64)> = image
        .mm
        .vmas
        .iter()
        .map(|v| (v.start, v.end))
        .chain(stub.iter().map(|v| (v.start, v.end)))
        .filter(|r| r.0 < 0x7fff_ffff_f000)
        .collect();
    used.sort();
    // The two layouts overlap each other: merge, or a gap between two
    // areas could lie inside a third, larger one.
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(used.len());
    for (s, e) in used {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let used = merged;
    // Walk down from the top of the lower half; the low 4 GiB are left for
    // non-PIE binaries and MAP_32BIT users.
    let mut top: u64 = 0x7fff_0000_0000;
    for &(s, e) in used.iter().rev() {
        if e + PAGE <= top && top - (e + PAGE) >= len + PAGE && top - len - PAGE >= 1 << 32 {
            return Some((top - len - PAGE) & !(PAGE - 1));
        }
        top = top.min(s);
    }
    (top >= (1 << 32) + len + PAGE).then(|| (top - len - PAGE) & !(PAGE - 1))
}

fn build(
    t: &Tracee,
    others: &mut Vec<Tracee>,
    image: &ProcessImage,
    pages: &mut dyn PageSource,
    opts: &RestoreOptions,
) -> Result<(), RestoreError> {
    let stub = prepare(t, image, opts)?;
    // 6. Pages.
    while let Some(b) = pages.next_batch()? {
        write_batch(t, &b)?;
    }
    opts.fault(RestoreStep::PagesWritten)?;
    finish(t, others, &stub, image, opts)
}

fn write_batch(t: &Tracee, b: &PageBatch) -> Result<(), RestoreError> {
    t.write_mem(b.addr, &b.data).map_err(|e| {
        RestoreError::sys(
            format!("writing {} bytes at {:#x}", b.data.len(), b.addr),
            e,
        )
    })
}

/// Writes the `len` bytes of pages that follow in `r` at `addr`, piece by
/// piece as the stream holds them.
fn write_pages(t: &Tracee, r: &mut dyn PageRead, addr: u64, len: u64) -> Result<(), RestoreError> {
    let mut failed = None;
    let read = r.read_pages(len as usize, &mut |off, pieces| {
        t.write_mem_v(addr + off, pieces).map_err(|e| {
            let err = std::io::Error::new(e.kind(), e.to_string());
            failed = Some(e);
            err
        })
    });
    match (read, failed) {
        (_, Some(e)) => Err(RestoreError::sys(
            format!("writing {len} bytes at {addr:#x}"),
            e,
        )),
        (Err(e), None) => Err(StreamError::from(e).into()),
        (Ok(()), None) => Ok(()),
    }
}

/// A stub emptied and given the image's areas, with the trampoline that
/// injection runs from.
struct Stub {
    base: Regs,
    tramp: u64,
    tramp_len: u64,
}

impl Stub {
    fn remote<'a>(&self, t: &'a Tracee) -> Remote<'a> {
        Remote {
            inj: Injector {
                t,
                insn: self.tramp,
                base: self.base,
            },
            scratch: self.tramp + PAGE,
        }
    }
}

/// Steps 1 to 5: everything up to the pages.
fn prepare(t: &Tracee, image: &ProcessImage, opts: &RestoreOptions) -> Result<Stub, RestoreError> {
    let sys = RestoreError::sys;
    opts.fault(RestoreStep::StubCreated)?;
    // Nothing is delivered into the half-built process.
    t.set_sigmask(!0).map_err(|e| sys("SETSIGMASK", e))?;
    let stub_vmas = read_vmas(t.pid).map_err(|e| sys("reading stub maps", e))?;
    let base = t.regs().map_err(|e| sys("GETREGS of the stub", e))?;
    let insn = syscall_site(t, &stub_vmas)
        .map_err(|e| sys("looking for a syscall instruction", e))?
        .ok_or_else(|| RestoreError::Unexpected("no syscall instruction in the stub".into()))?;
    let mut rem = Remote {
        inj: Injector { t, insn, base },
        scratch: 0,
    };

    // 1. The stub inherited our rseq registration; its area is about to be
    // unmapped, and the kernel would fault writing cpu ids there.
    if let Some((a, l, s)) = t.rseq_config().map_err(|e| sys("rseq config", e))? {
        rem.call(
            "rseq unregister",
            libc::SYS_rseq,
            &[a, l as u64, 1, s as u64],
        )?;
    }

    // 2. Trampoline: code page, scratch, and room to park the vDSO while it
    // moves (source and stub vDSO ranges may overlap).
    let is_special = |v: &RawVma| matches!(v.path.as_str(), "[vdso]" | "[vvar]" | "[vvar_vclock]");
    let stub_specials: Vec<&RawVma> = stub_vmas.iter().filter(|v| is_special(v)).collect();
    let park_len: u64 = stub_specials.iter().map(|v| v.end - v.start).sum();
    let tramp_len = PAGE + SCRATCH + park_len;
    let tramp = pick_hole(image, &stub_vmas, tramp_len)
        .ok_or_else(|| RestoreError::Unexpected("no hole for the trampoline".into()))?;
    let got = rem.call(
        "mmap trampoline",
        libc::SYS_mmap,
        &[
            tramp,
            tramp_len,
            (libc::PROT_READ | libc::PROT_EXEC) as u64,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
    )?;
    if got != tramp {
        return Err(RestoreError::Unexpected(format!("trampoline at {got:#x}")));
    }
    // +0: `syscall; int3` for injection. +16: `syscall; jmp .` for clone3:
    // the new thread returns from it into a loop, where it waits to be
    // seized (single-stepping is not inherited by the child).
    t.write_mem(tramp, &[0x0f, 0x05, 0xcc, 0xcc])
        .and_then(|_| t.write_mem(tramp + THREAD_SPIN, &[0x0f, 0x05, 0xeb, 0xfe]))
        .map_err(|e| sys("writing trampoline", e))?;
    rem.inj.insn = tramp;
    rem.scratch = tramp + PAGE;
    let park = tramp + PAGE + SCRATCH;

    // 3. Empty the stub.
    for v in &stub_vmas {
        if is_special(v) || v.path == "[vsyscall]" {
            continue;
        }
        rem.call("munmap stub", libc::SYS_munmap, &[v.start, v.end - v.start])?;
    }

    // 4. vDSO: same kernel means same sizes; move each area to where the
    // source had it, via the parking range so overlaps can't bite.
    let src_specials: Vec<(&str, u64, u64)> = image
        .mm
        .vmas
        .iter()
        .filter_map(|v| match &v.kind {
            VmaKind::Special { name } => Some((name.as_str(), v.start, v.len())),
            _ => None,
        })
        .collect();
    // Every area the source had must exist here; one the source had
    // unmapped (rare, but legal) is unmapped here too.
    for (name, _, _) in &src_specials {
        if !stub_specials.iter().any(|s| s.path == *name) {
            return Err(RestoreError::VdsoMismatch(format!("no {name} here")));
        }
    }
    let mut parked = Vec::new();
    let mut off = 0;
    for s in &stub_specials {
        let len = s.end - s.start;
        let Some(&(_, dst, slen)) = src_specials.iter().find(|(n, _, _)| *n == s.path) else {
            rem.call("munmap special", libc::SYS_munmap, &[s.start, len])?;
            continue;
        };
        if slen != len {
            return Err(RestoreError::VdsoMismatch(format!(
                "{} is {slen} bytes there, {len} here",
                s.path
            )));
        }
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        rem.call(
            "mremap vdso (park)",
            libc::SYS_mremap,
            &[s.start, len, len, flags, park + off],
        )?;
        parked.push((park + off, len, dst));
        off += len;
    }
    for (from, len, dst) in parked {
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        rem.call(
            "mremap vdso",
            libc::SYS_mremap,
            &[from, len, len, flags, dst],
        )?;
    }

    // 5. The address space.
    let areas: Vec<&Vma> = image.mm.vmas.iter().collect();
    map_areas(&rem, &areas, opts)?;
    opts.fault(RestoreStep::AddressSpaceMapped)?;
    Ok(Stub {
        base,
        tramp,
        tramp_len,
    })
}

/// Step 5 for `areas`: each mapped at its address, anonymous or from its
/// (translated) file.
fn map_areas(rem: &Remote, areas: &[&Vma], opts: &RestoreOptions) -> Result<(), RestoreError> {
    let mut files: HashMap<(PathBuf, bool), u64> = HashMap::new();
    for v in areas {
        match &v.kind {
            VmaKind::Special { .. } | VmaKind::Vsyscall => {}
            VmaKind::Anon { .. } => {
                let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
                if v.growsdown {
                    flags |= libc::MAP_GROWSDOWN;
                }
                rem.call(
                    "mmap anon",
                    libc::SYS_mmap,
                    &[v.start, v.len(), v.prot as u64, flags as u64, u64::MAX, 0],
                )?;
            }
            VmaKind::File { path } => {
                let rw = v.shared && v.prot & libc::PROT_WRITE != 0;
                let key = (path.clone(), rw);
                let fd = match files.get(&key) {
                    Some(&fd) => fd,
                    None => {
                        let p = opts.translate(path);
                        let fd = rem.open(&p, if rw { libc::O_RDWR } else { libc::O_RDONLY })?;
                        files.insert(key, fd);
                        fd
                    }
                };
                let share = if v.shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                };
                rem.call(
                    "mmap file",
                    libc::SYS_mmap,
                    &[
                        v.start,
                        v.len(),
                        v.prot as u64,
                        (share | libc::MAP_FIXED) as u64,
                        fd,
                        v.offset,
                    ],
                )?;
            }
        }
    }
    for fd in files.into_values() {
        rem.call("close", libc::SYS_close, &[fd])?;
    }
    Ok(())
}

/// Steps 7 to 14: everything after the pages.
fn finish(
    t: &Tracee,
    others: &mut Vec<Tracee>,
    stub: &Stub,
    image: &ProcessImage,
    opts: &RestoreOptions,
) -> Result<(), RestoreError> {
    let sys = RestoreError::sys;
    let core = &image.threads[0];
    let mut rem = stub.remote(t);
    let (tramp, tramp_len) = (stub.tramp, stub.tramp_len);

    // 7. mm fields. The exe link needs the old exe unmapped, which it is.
    let mm = &image.mm;
    let exe_fd = match &mm.exe {
        Some(p) => rem.open(&opts.translate(p), libc::O_RDONLY).ok(),
        None => None,
    };
    let auxv_at = rem.scratch + 1024;
    let mut map = u64s(&[
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_at,
    ]);
    map.extend_from_slice(&(mm.auxv.len() as u32).to_ne_bytes());
    map.extend_from_slice(&(exe_fd.map(|f| f as u32).unwrap_or(u32::MAX)).to_ne_bytes());
    debug_assert_eq!(map.len(), 104);
    rem.put(1024, &mm.auxv)?;
    let map_at = rem.put(0, &map)?;
    rem.call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        &[
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            map_at,
            map.len() as u64,
            0,
        ],
    )?;
    if let Some(fd) = exe_fd {
        rem.call("close", libc::SYS_close, &[fd])?;
    }

    // 8. Signals: every disposition, including defaults, because the stub
    // inherited ours.
    for (i, a) in image.sig.actions.iter().enumerate() {
        let sig = i as u64 + 1;
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        let at = rem.put(0, &u64s(&[a.handler, a.flags, a.restorer, a.mask]))?;
        rem.call("rt_sigaction", libc::SYS_rt_sigaction, &[sig, at, 0, 8])?;
    }
    for (which, it) in image.sig.itimers.iter().enumerate() {
        let v = [
            it.interval_sec,
            it.interval_usec,
            it.value_sec,
            it.value_usec,
        ];
        let at = rem.put(0, &u64s(&v.map(|x| x as u64)))?;
        rem.call("setitimer", libc::SYS_setitimer, &[which as u64, at, 0])?;
    }

    // 9. Per-process and per-thread odds and ends.
    rem.call("umask", libc::SYS_umask, &[image.misc.umask as u64])?;
    let cwd = rem.put_path(&opts.translate(&image.misc.cwd))?;
    rem.call("chdir", libc::SYS_chdir, &[cwd])?;
    thread_state(&rem, core, &image.misc.comm)?;
    opts.fault(RestoreStep::StateRestored)?;

    // 10. File descriptors.
    restore_fds(&rem, image, opts)?;
    opts.fault(RestoreStep::FdsRestored)?;

    // 11. The other threads, created by the main thread (which the stub
    // became) and seized as they spin.
    let mut tids = vec![t.pid];
    for core in &image.threads[1..] {
        let tid = spawn_thread(&rem, tramp + THREAD_SPIN, core, opts.keep_pid)?;
        let th = Tracee::seize(tid, libc::PTRACE_O_EXITKILL)
            .map_err(|e| RestoreError::sys(format!("seizing new thread {tid}"), e))?;
        others.push(th);
        tids.push(tid);
        let th = others.last().unwrap();
        let base = th.regs().map_err(|e| sys("GETREGS of a new thread", e))?;
        let trem = Remote {
            inj: Injector {
                t: th,
                insn: tramp,
                base,
            },
            scratch: rem.scratch,
        };
        let comm = if core.comm.is_empty() {
            &image.misc.comm
        } else {
            &core.comm
        };
        thread_state(&trem, core, comm)?;
    }

    // 12. Pending signals, queued by the process to itself (the kernel lets
    // only the process itself queue siginfo that claims a kernel origin,
    // and only from its main thread: the check compares the caller's tid
    // with the tgid).
    for (core, &tid) in image.threads.iter().zip(&tids) {
        for p in &core.pending {
            let signo = i32::from_ne_bytes(p.siginfo[0..4].try_into().unwrap()) as u64;
            let at = rem.put(0, &p.siginfo)?;
            rem.call(
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                &[t.pid as u64, tid as u64, signo, at],
            )?;
        }
    }
    for p in &image.sig.pending {
        let signo = i32::from_ne_bytes(p.siginfo[0..4].try_into().unwrap()) as u64;
        let at = rem.put(0, &p.siginfo)?;
        if p.shared {
            rem.call(
                "rt_sigqueueinfo",
                libc::SYS_rt_sigqueueinfo,
                &[t.pid as u64, signo, at],
            )?;
        } else {
            rem.call(
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                &[t.pid as u64, t.pid as u64, signo, at],
            )?;
        }
    }
    // glibc caches each thread's tid in its TCB, at the address it gave to
    // set_tid_address; raise() and mutexes use it. With a new tid, fix it.
    for (core, &tid) in image.threads.iter().zip(&tids) {
        if tid != core.tid && core.clear_child_tid != 0 {
            let mut b = [0u8; 4];
            if t.read_mem(core.clear_child_tid, &mut b).is_ok() && i32::from_ne_bytes(b) == core.tid
            {
                t.write_mem(core.clear_child_tid, &tid.to_ne_bytes())
                    .map_err(|e| sys("fixing the cached tid", e))?;
            }
        }
    }
    for l in &image.misc.rlimits {
        let new = libc::rlimit64 {
            rlim_cur: l.cur,
            rlim_max: l.max,
        };
        // SAFETY: plain syscall with valid pointers.
        if unsafe { libc::prlimit64(t.pid, l.resource, &new, std::ptr::null_mut()) } != 0 {
            return Err(RestoreError::sys(
                format!("prlimit {}", l.resource),
                io::Error::last_os_error(),
            ));
        }
    }

    // Credentials last: everything above needed the restorer's privileges.
    // They are per thread in the kernel: each thread gets them.
    for th in others.iter() {
        let base = th.regs().map_err(|e| sys("GETREGS of a new thread", e))?;
        let trem = Remote {
            inj: Injector {
                t: th,
                insn: tramp,
                base,
            },
            scratch: rem.scratch,
        };
        restore_creds(&trem, &image.creds)?;
    }
    restore_creds(&rem, &image.creds)?;

    // 13. Drop the trampoline, borrowing a syscall from the restored image,
    // then load the CPU state.
    let now = read_vmas(t.pid).map_err(|e| sys("reading restored maps", e))?;
    let own: Vec<RawVma> = now
        .into_iter()
        .filter(|v| v.end <= tramp || v.start >= tramp + tramp_len)
        .collect();
    rem.inj.insn = syscall_site(t, &own)
        .map_err(|e| sys("looking for a syscall instruction", e))?
        .ok_or_else(|| RestoreError::Unexpected("no syscall instruction in the image".into()))?;
    rem.call("munmap trampoline", libc::SYS_munmap, &[tramp, tramp_len])?;

    for (th, core) in std::iter::once(t).chain(others.iter()).zip(&image.threads) {
        th.set_regs(&core.regs).map_err(|e| sys("SETREGS", e))?;
        th.set_xstate(&core.xstate)
            .map_err(|e| sys("SETREGSET xstate", e))?;
        th.set_sigmask(core.blocked)
            .map_err(|e| sys("SETSIGMASK", e))?;
    }
    opts.fault(RestoreStep::RegistersSet)?;
    Ok(())
}

/// What Linux keeps per thread, set by injection into that thread:
/// altstack, robust list, tid address, rseq, name.
fn thread_state(rem: &Remote, core: &CoreState, comm: &str) -> Result<(), RestoreError> {
    let alt = &core.altstack;
    let ss = if alt.flags & libc::SS_DISABLE != 0 {
        u64s(&[0, libc::SS_DISABLE as u64, 0])
    } else {
        u64s(&[alt.sp, 0, alt.size])
    };
    let at = rem.put(0, &ss)?;
    rem.call("sigaltstack", libc::SYS_sigaltstack, &[at, 0])?;
    let (head, len) = core.robust_list;
    rem.call(
        "set_robust_list",
        libc::SYS_set_robust_list,
        &[head, if len == 0 { 24 } else { len }],
    )?;
    rem.call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        &[core.clear_child_tid],
    )?;
    if let Some(r) = core.rseq {
        rem.call(
            "rseq",
            libc::SYS_rseq,
            &[r.addr, r.len as u64, 0, r.sig as u64],
        )?;
    }
    let mut name = comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    let at = rem.put(0, &name)?;
    rem.call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, at],
    )?;
    Ok(())
}

/// Inject `clone3` into the (main thread of the) stub for one more thread
/// of the group, at `spin` (`syscall; jmp .`): the child comes out of the
/// syscall into the loop with no stack use, and waits there to be seized.
/// Its registers, TLS included, are set later from the image; CLONE_SETTLS
/// gives it the right fs_base from its first instruction anyway. Keeps the
/// old tid when asked and free, like the pid.
fn spawn_thread(
    rem: &Remote,
    spin: u64,
    core: &CoreState,
    keep_tid: bool,
) -> Result<i32, RestoreError> {
    let crem = Remote {
        inj: Injector {
            t: rem.inj.t,
            insn: spin,
            base: rem.inj.base,
        },
        scratch: rem.scratch,
    };
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS) as u64;
    let set_tid_at = rem.scratch + 1024;
    let args = |set_tid: bool| {
        u64s(&[
            flags,
            0,
            0,
            0,
            0,
            0,
            0,
            core.regs.fs_base,
            if set_tid { set_tid_at } else { 0 },
            set_tid as u64,
            0,
        ])
    };
    if keep_tid {
        crem.put(1024, &(core.tid as u64).to_ne_bytes())?;
        let at = crem.put(0, &args(true))?;
        match crem.call("clone3 thread (set_tid)", libc::SYS_clone3, &[at, 88]) {
            Ok(tid) => return Ok(tid as i32),
            // Taken (or not allowed here): any tid will do.
            Err(RestoreError::Injected { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let at = crem.put(0, &args(false))?;
    crem.call("clone3 thread", libc::SYS_clone3, &[at, 88])
        .map(|tid| tid as i32)
}

/// The CRIU order: bounding set while we still hold CAP_SETPCAP, groups and
/// gids, uids with KEEPCAPS so capset can then trim (not re-grant) the
/// sets, ambient caps, then the flags a uid change resets.
fn restore_creds(rem: &Remote, c: &CredState) -> Result<(), RestoreError> {
    let prctl = |what: &str, args: &[u64]| rem.call(what, libc::SYS_prctl, args);
    rem.call(
        "personality",
        libc::SYS_personality,
        &[c.personality as u64],
    )?;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(40);
    for cap in 0..=last_cap {
        if c.cap_bnd & (1 << cap) == 0 {
            prctl("PR_CAPBSET_DROP", &[libc::PR_CAPBSET_DROP as u64, cap])?;
        }
    }
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    let at = rem.put(0, &groups)?;
    rem.call(
        "setgroups",
        libc::SYS_setgroups,
        &[c.groups.len() as u64, at],
    )?;
    let [r, e, s, f] = c.gids.map(|x| x as u64);
    rem.call("setresgid", libc::SYS_setresgid, &[r, e, s])?;
    rem.call("setfsgid", libc::SYS_setfsgid, &[f])?;
    prctl("PR_SET_KEEPCAPS", &[libc::PR_SET_KEEPCAPS as u64, 1])?;
    let [r, e, s, f] = c.uids.map(|x| x as u64);
    rem.call("setresuid", libc::SYS_setresuid, &[r, e, s])?;
    rem.call("setfsuid", libc::SYS_setfsuid, &[f])?;
    // struct __user_cap_header_struct { version, pid } then two
    // __user_cap_data_struct { effective, permitted, inheritable } (v3).
    let lo = |x: u64| x as u32;
    let hi = |x: u64| (x >> 32) as u32;
    let words: [u32; 8] = [
        0x2008_0522,
        0,
        lo(c.cap_eff),
        lo(c.cap_prm),
        lo(c.cap_inh),
        hi(c.cap_eff),
        hi(c.cap_prm),
        hi(c.cap_inh),
    ];
    let b: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let at = rem.put(0, &b)?;
    rem.call("capset", libc::SYS_capset, &[at, at + 8])?;
    for cap in 0..=last_cap {
        if c.cap_amb & (1 << cap) != 0 {
            prctl(
                "PR_CAP_AMBIENT_RAISE",
                &[
                    libc::PR_CAP_AMBIENT as u64,
                    libc::PR_CAP_AMBIENT_RAISE as u64,
                    cap,
                    0,
                    0,
                ],
            )?;
        }
    }
    prctl("PR_SET_KEEPCAPS", &[libc::PR_SET_KEEPCAPS as u64, 0])?;
    prctl(
        "PR_SET_DUMPABLE",
        &[libc::PR_SET_DUMPABLE as u64, c.dumpable as u64],
    )?;
    if c.no_new_privs {
        prctl(
            "PR_SET_NO_NEW_PRIVS",
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        )?;
    }
    Ok(())
}

fn restore_fds(
    rem: &Remote,
    image: &ProcessImage,
    opts: &RestoreOptions,
) -> Result<(), RestoreError> {
    let entries = &image.fds.entries;
    let hi = entries.iter().map(|e| e.fd + 1).max().unwrap_or(0).max(3) as u64;
    // Park the replacements (inherited from us at the same numbers) above
    // every target fd. The stub closed everything else right after clone3;
    // closing the rest again here just makes that independent of the stub.
    let mut parked: Vec<(i32, u64)> = Vec::new();
    for r in &opts.replacements {
        let p = rem.call(
            "fcntl(F_DUPFD)",
            libc::SYS_fcntl,
            &[r.from as u64, libc::F_DUPFD as u64, hi],
        )?;
        parked.push((r.fd, p));
    }
    let mut keep: Vec<u64> = parked.iter().map(|p| p.1).collect();
    keep.sort();
    let mut lo = 0u64;
    for k in keep
        .iter()
        .copied()
        .chain(std::iter::once(u32::MAX as u64 + 1))
    {
        if k > lo {
            rem.call("close_range", libc::SYS_close_range, &[lo, k - 1, 0])?;
        }
        lo = k + 1;
    }
    for e in entries {
        let cloexec = (e.flags & libc::O_CLOEXEC) as u64;
        if let Some(&(_, p)) = parked.iter().find(|p| p.0 == e.fd) {
            rem.call("dup3", libc::SYS_dup3, &[p, e.fd as u64, cloexec])?;
            continue;
        }
        let path = match &e.kind {
            FdKind::File { path } | FdKind::Directory { path } | FdKind::NullDevice { path } => {
                path
            }
            k => {
                return Err(RestoreError::MissingReplacement {
                    fd: e.fd,
                    kind: k.name().to_string(),
                })
            }
        };
        let flags = e.flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
        let tmp = rem.open(&opts.translate(path), flags)?;
        if tmp != e.fd as u64 {
            rem.call("dup3", libc::SYS_dup3, &[tmp, e.fd as u64, cloexec])?;
            rem.call("close", libc::SYS_close, &[tmp])?;
        }
        if matches!(e.kind, FdKind::File { .. }) {
            rem.call(
                "lseek",
                libc::SYS_lseek,
                &[e.fd as u64, e.pos, libc::SEEK_SET as u64],
            )?;
        }
    }
    for (_, p) in parked {
        rem.call("close", libc::SYS_close, &[p])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(start: u64, end: u64) -> RawVma {
        RawVma {
            start,
            end,
            perms: *b"rw-p",
            offset: 0,
            path: String::new(),
        }
    }

    #[test]
    fn hole_avoids_overlapping_layouts() {
        let g = 1u64 << 30;
        let image_vmas = |v: &[(u64, u64)]| -> ProcessImage {
            let mut img: ProcessImage = crate::pages::tests_support::tiny_image();
            img.mm.vmas = v
                .iter()
                .map(|&(s, e)| Vma {
                    start: s,
                    end: e,
                    prot: 3,
                    shared: false,
                    offset: 0,
                    kind: VmaKind::Anon {
                        name: String::new(),
                    },
                    growsdown: false,
                })
                .collect();
            img
        };
        // A big stub area that spans the gap between two small target
        // areas near the top of the address space.
        let top = 0x7fff_0000_0000u64;
        let target = [(top - 10 * g, top - 9 * g), (top - 3 * g, top - 2 * g)];
        let stub_range = (top - 12 * g, top);
        let img = image_vmas(&target);
        let stub = [raw(stub_range.0, stub_range.1)];
        let len = 1 << 20;
        let h = pick_hole(&img, &stub, len).unwrap();
        for (s, e) in target.into_iter().chain([stub_range]) {
            assert!(h + len <= s || h >= e, "hole {h:#x} overlaps {s:#x}-{e:#x}");
        }
        assert_eq!(h % PAGE, 0);
    }
}
