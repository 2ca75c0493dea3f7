//! The cluster-wide process view: what a node tells others about its
//! processes. See docs/SEMANTICS.md for the gpid encoding.
use serde::{Deserialize, Serialize};

/// Bits of a gpid that hold the home pid; Linux pids stay below 2^22.
pub const GPID_PID_BITS: u32 = 22;
/// Largest node id; ids share a gpid with the pid and keep it below 2^31.
pub const MAX_NODE_ID: u16 = 511;

/// The cluster itself, shown as process 1 at the root of every node's tree
/// (node id 0 belongs to no node, so no process has this gpid): tools that
/// draw the process tree from pid 1, as `pstree` does, see the whole cluster.
pub const CLUSTER_ROOT_GPID: u32 = 1;

/// The cluster-wide pid of process `pid` whose home is node `node_id`.
pub fn gpid(node_id: u16, pid: u32) -> u32 {
    ((node_id as u32) << GPID_PID_BITS) | (pid & ((1 << GPID_PID_BITS) - 1))
}

/// (home node id, home pid) of a gpid.
pub fn split_gpid(gpid: u32) -> (u16, u32) {
    (
        (gpid >> GPID_PID_BITS) as u16,
        gpid & ((1 << GPID_PID_BITS) - 1),
    )
}

/// One process as listed by its node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The per-process files a node renders on request.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcFile {
    Stat,
    Status,
    Statm,
    Cmdline,
    Comm,
    Environ,
    Io,
    Limits,
    Wchan,
    /// Links (their target is the content): `cwd` and `exe`.
    Cwd,
    Exe,
    /// MOSIX control state kept by the process's node: `1` if pinned there.
    Lock,
    /// MOSIX: empty, or why the process cannot migrate.
    Cantmove,
    /// MOSIX: the node the process runs on now (answered by its home node).
    Where,
    /// MOSIX: the process's home node.
    Home,
    /// MOSIX: how many times the process migrated.
    Nmigs,
}

impl ProcFile {
    pub const ALL: [ProcFile; 9] = [
        ProcFile::Stat,
        ProcFile::Status,
        ProcFile::Statm,
        ProcFile::Cmdline,
        ProcFile::Comm,
        ProcFile::Environ,
        ProcFile::Io,
        ProcFile::Limits,
        ProcFile::Wchan,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProcFile::Stat => "stat",
            ProcFile::Status => "status",
            ProcFile::Statm => "statm",
            ProcFile::Cmdline => "cmdline",
            ProcFile::Comm => "comm",
            ProcFile::Environ => "environ",
            ProcFile::Io => "io",
            ProcFile::Limits => "limits",
            ProcFile::Wchan => "wchan",
            ProcFile::Cwd => "cwd",
            ProcFile::Exe => "exe",
            ProcFile::Lock => "lock",
            ProcFile::Cantmove => "cantmove",
            ProcFile::Where => "where",
            ProcFile::Home => "home",
            ProcFile::Nmigs => "nmigs",
        }
    }

    /// Files that, as in procfs, only the owner and root may read.
    pub fn private(self) -> bool {
        matches!(
            self,
            ProcFile::Environ | ProcFile::Io | ProcFile::Cwd | ProcFile::Exe
        )
    }

    pub const LINKS: [ProcFile; 2] = [ProcFile::Cwd, ProcFile::Exe];
}

/// Node-wide procfs files, which /mosix/proc aggregates over the cluster.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeFile {
    Stat,
    Meminfo,
    Loadavg,
    Uptime,
    Cpuinfo,
}

impl NodeFile {
    pub const ALL: [NodeFile; 5] = [
        NodeFile::Stat,
        NodeFile::Meminfo,
        NodeFile::Loadavg,
        NodeFile::Uptime,
        NodeFile::Cpuinfo,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NodeFile::Stat => "stat",
            NodeFile::Meminfo => "meminfo",
            NodeFile::Loadavg => "loadavg",
            NodeFile::Uptime => "uptime",
            NodeFile::Cpuinfo => "cpuinfo",
        }
    }
}

/// The per-process files a node sends for all its processes at once with a
/// listing (what `ps` and `top` read, and the MOSIX control files that
/// `mosix ps` shows), so opening them costs no round trip while the listing
/// is fresh. `environ` is rendered as root: the asking node applies the
/// owner rule itself (it already speaks for its callers' credentials).
pub const SNAPSHOT_FILES: [ProcFile; 10] = [
    ProcFile::Stat,
    ProcFile::Status,
    ProcFile::Statm,
    ProcFile::Cmdline,
    ProcFile::Comm,
    ProcFile::Environ,
    ProcFile::Where,
    ProcFile::Home,
    ProcFile::Nmigs,
    ProcFile::Lock,
];

/// Rendered content of the files of one page stops growing past this many
/// bytes, so a page stays far below [`crate::MAX_FRAME`] whatever the number
/// of processes (one process's files are a few KiB; `environ` and `cmdline`
/// are capped by the kernel's argument limits, which are far below it too).
pub const SNAPSHOT_PAGE_BYTES: usize = 1 << 20;

/// One process with the content of its [`SNAPSHOT_FILES`], each rendered or
/// the errno rendering it gave.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProcSnap {
    pub entry: ProcEntry,
    pub files: Vec<(ProcFile, Result<serde_bytes::ByteBuf, i32>)>,
}

/// One page of a node's processes with their files, in pid order: the
/// processes with pids above the request's `after`, up to about
/// [`SNAPSHOT_PAGE_BYTES`] of content. `next` is the `after` of the next
/// page, None on the last.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    pub node_id: u16,
    pub procs: Vec<ProcSnap>,
    pub next: Option<u32>,
}
