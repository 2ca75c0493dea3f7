//! Syscall injection into a ptrace-stopped task: point rip at a `syscall`
//! instruction that already exists in the task, load the registers, single
//! step once, read rax. This replaces CRIU's compel parasite: slower per
//! call (two context switches per syscall) but there is no blob to build,
//! load, or lose inside the victim.

use crate::ptrace::{Stop, Tracee};
use crate::state::Regs;
use std::io;

/// Where a `syscall` instruction (0f 05) can be found in the task.
pub(crate) fn find_syscall_insn(t: &Tracee, start: u64, end: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; (end - start) as usize];
    t.read_mem(start, &mut buf)?;
    Ok(buf
        .windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| start + i as u64))
}

pub(crate) struct Injector<'a> {
    pub t: &'a Tracee,
    /// Address of a `syscall` instruction.
    pub insn: u64,
    /// Registers the injected calls start from (segment selectors and
    /// eflags must be sane 64-bit user values).
    pub base: Regs,
}

/// Result of one injected syscall: the raw return value (negative errno on
/// failure, as the kernel returns it).
pub(crate) type Raw = i64;

impl Injector<'_> {
    pub fn raw(&self, nr: i64, args: &[u64]) -> io::Result<Raw> {
        let mut r = self.base;
        r.rax = nr as u64;
        // orig_rax = -1 tells the kernel's signal-return path that we are
        // not inside a syscall, so it won't "restart" one by rewinding rip.
        r.orig_rax = u64::MAX;
        r.rip = self.insn;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        r.rdi = a[0];
        r.rsi = a[1];
        r.rdx = a[2];
        r.r10 = a[3];
        r.r8 = a[4];
        r.r9 = a[5];
        self.t.set_regs(&r)?;
        self.t.step()?;
        match crate::ptrace::waitpid(self.t.pid)? {
            Stop::Signal(libc::SIGTRAP) => {}
            other => {
                return Err(io::Error::other(format!(
                    "injected syscall {nr}: unexpected stop {other:?}"
                )))
            }
        }
        let after = self.t.regs()?;
        if after.rip != self.insn + 2 {
            return Err(io::Error::other(format!(
                "injected syscall {nr}: rip {:#x}, expected {:#x}",
                after.rip,
                self.insn + 2
            )));
        }
        Ok(after.rax as i64)
    }
}

pub(crate) fn errno_of(raw: Raw) -> Option<i32> {
    if (-4095..0).contains(&raw) {
        Some(-raw as i32)
    } else {
        None
    }
}
