//! The checkpoint image: one serde type per kind of state, in the spirit of
//! CRIU's image schemas. Pages are not part of the image; they travel as a
//! separate stream of [`PageBatch`]es so they never have to sit in memory
//! or in a file all at once.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Bumped whenever a field's meaning changes, so a mixed-version cluster
/// refuses instead of restoring garbage.
pub const IMAGE_VERSION: u32 = 2;

/// Everything about a process except its page contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessImage {
    pub version: u32,
    /// Pid on the source node; the restore keeps it when it is free.
    pub pid: i32,
    /// One entry per thread, the main thread (tid == pid) first.
    pub threads: Vec<CoreState>,
    pub mm: MmState,
    pub sig: SigState,
    pub fds: FdTable,
    pub misc: MiscState,
    pub creds: CredState,
}

/// A thread's CPU state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreState {
    pub tid: i32,
    pub regs: Regs,
    /// Raw `NT_X86_XSTATE` regset (user xsave layout, includes x87/SSE/AVX
    /// and PKRU). Restorable only on a CPU with the same xsave features.
    #[serde(with = "serde_bytes")]
    pub xstate: Vec<u8>,
    /// Blocked signals of this thread (a per-thread property in Linux).
    pub blocked: u64,
    pub rseq: Option<RseqState>,
    /// `set_robust_list` head and length; (0, 0) when none was registered.
    pub robust_list: (u64, u64),
    /// `set_tid_address` pointer (glibc points it at the TCB's tid field).
    pub clear_child_tid: u64,
    pub altstack: AltStack,
    /// Signals queued to this thread only (its private queue), as raw
    /// siginfo; the process-wide queue is in [`SigState::pending`].
    pub pending: Vec<PendingSignal>,
    /// This thread's name (`PR_SET_NAME` is per thread).
    pub comm: String,
}

/// `struct user_regs_struct` from `<sys/user.h>`, field for field, so the
/// image does not depend on the libc crate's struct layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RseqState {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

/// The address space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmState {
    pub vmas: Vec<Vma>,
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    /// Current program break, read with an injected `brk(0)`; /proc does not
    /// show it.
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Raw `/proc/pid/auxv` (pairs of u64).
    #[serde(with = "serde_bytes")]
    pub auxv: Vec<u8>,
    /// `/proc/pid/exe`, as seen on the source node.
    pub exe: Option<PathBuf>,
}

/// One line of `/proc/pid/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: i32,
    pub shared: bool,
    pub offset: u64,
    pub kind: VmaKind,
    /// VM_GROWSDOWN: the main stack.
    pub growsdown: bool,
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// Whether page contents of this area travel in the page stream.
    /// Shared file mappings and file pages nobody wrote are re-read from the
    /// file on the target; the kernel's special mappings are moved, not copied.
    pub fn carries_pages(&self) -> bool {
        !self.shared && matches!(self.kind, VmaKind::Anon { .. } | VmaKind::File { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmaKind {
    /// Private anonymous memory; `name` is `[heap]`, `[stack]`,
    /// `[anon:...]` or empty.
    Anon { name: String },
    /// A file mapping, re-mapped from the (translated) path on the target.
    File { path: PathBuf },
    /// A kernel special mapping (`[vdso]`, `[vvar]`, `[vvar_vclock]`),
    /// moved into place with mremap on the target.
    Special { name: String },
    /// `[vsyscall]`: fixed by the kernel, nothing to do.
    Vsyscall,
}

/// Signal dispositions (process-wide) and pending signals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SigState {
    /// Index `i` is signal `i + 1`, 64 entries (SIGKILL/SIGSTOP are default).
    pub actions: Vec<SigAction>,
    /// Pending process-wide signals (the shared queue), as raw 128-byte
    /// siginfo, re-queued on the target with rt_sigqueueinfo. Each thread's
    /// private queue is in its [`CoreState::pending`].
    pub pending: Vec<PendingSignal>,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
    pub itimers: [ItimerVal; 3],
}

/// `struct kernel_sigaction` on x86_64 (not glibc's `struct sigaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSignal {
    pub shared: bool,
    #[serde(with = "serde_bytes")]
    pub siginfo: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ItimerVal {
    pub interval_sec: i64,
    pub interval_usec: i64,
    pub value_sec: i64,
    pub value_usec: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FdTable {
    pub entries: Vec<FdEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdEntry {
    pub fd: i32,
    pub kind: FdKind,
    /// `flags:` of fdinfo: open(2) flags plus O_CLOEXEC for close-on-exec.
    pub flags: i32,
    pub pos: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file, reopened by path and seeked.
    File {
        path: PathBuf,
    },
    /// A directory, reopened by path.
    Directory {
        path: PathBuf,
    },
    /// A stateless character device (/dev/null, /dev/zero, /dev/full,
    /// /dev/random, /dev/urandom), reopened by path.
    NullDevice {
        path: PathBuf,
    },
    /// Needs a replacement fd from the caller (the deputy relays it).
    Pipe {
        ino: u64,
    },
    Fifo {
        path: PathBuf,
    },
    Socket {
        ino: u64,
    },
    Tty {
        path: PathBuf,
    },
}

impl FdKind {
    /// Kinds whose other end stays at the home node.
    pub fn needs_relay(&self) -> bool {
        matches!(
            self,
            FdKind::Pipe { .. } | FdKind::Fifo { .. } | FdKind::Socket { .. } | FdKind::Tty { .. }
        )
    }
    pub fn name(&self) -> &'static str {
        match self {
            FdKind::File { .. } => "file",
            FdKind::Directory { .. } => "directory",
            FdKind::NullDevice { .. } => "stateless device",
            FdKind::Pipe { .. } => "pipe",
            FdKind::Fifo { .. } => "fifo",
            FdKind::Socket { .. } => "socket",
            FdKind::Tty { .. } => "tty",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiscState {
    pub rlimits: Vec<Rlimit>,
    pub cwd: PathBuf,
    pub umask: u32,
    pub comm: String,
}

/// Who the process is and what it may do. Restored last, so the stub does
/// its privileged work (PR_SET_MM_MAP, opening files) as the restorer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredState {
    /// real, effective, saved, filesystem
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// PR_GET_DUMPABLE; a uid change resets it, so it is set back after.
    pub dumpable: u32,
    pub personality: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub cur: u64,
    pub max: u64,
}

/// A run of contiguous pages. Batches are what the page stream carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageBatch {
    pub addr: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}
