//! Reading a (stopped) process's state from /proc, and turning what we read
//! into image types — or into the reason it can't move. The classification
//! is shared by `check_movable` and the checkpoint so that the two can never
//! disagree about what is movable.

use crate::error::CantMove;
use crate::state::{FdKind, VmaKind};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub(crate) struct RawVma {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    pub offset: u64,
    pub path: String,
}

impl RawVma {
    pub fn prot(&self) -> i32 {
        let mut p = 0;
        if self.perms[0] == b'r' {
            p |= libc::PROT_READ;
        }
        if self.perms[1] == b'w' {
            p |= libc::PROT_WRITE;
        }
        if self.perms[2] == b'x' {
            p |= libc::PROT_EXEC;
        }
        p
    }
    pub fn shared(&self) -> bool {
        self.perms[3] == b's'
    }
    pub fn growsdown(&self) -> bool {
        self.path == "[stack]"
    }
}

fn parse_map_line(line: &str) -> Option<RawVma> {
    let mut rest = line;
    let mut field = || {
        let t = rest.trim_start();
        let end = t.find(char::is_whitespace).unwrap_or(t.len());
        let (f, r) = t.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let offset = field();
    let _dev = field();
    let _inode = field();
    let path = rest.trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let p = perms.as_bytes();
    Some(RawVma {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        perms: [*p.first()?, *p.get(1)?, *p.get(2)?, *p.get(3)?],
        offset: u64::from_str_radix(offset, 16).ok()?,
        path,
    })
}

/// From maps, not smaps: smaps walks every page table to count RSS, which
/// costs ~10 ms per 256 MiB of the frozen process's memory. The one flag we
/// need from VmFlags, VM_GROWSDOWN, only the main stack has in practice
/// (MAP_GROWSDOWN is otherwise unused), so `[stack]` stands for it.
pub(crate) fn read_vmas(pid: i32) -> io::Result<Vec<RawVma>> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(text.lines().filter_map(parse_map_line).collect())
}

const SPECIAL: &[&str] = &["[vdso]", "[vvar]", "[vvar_vclock]"];

pub(crate) fn classify_vma(v: &RawVma) -> Result<VmaKind, CantMove> {
    let what = || v.path.clone();
    let p = v.path.as_str();
    if p == "[vsyscall]" {
        return Ok(VmaKind::Vsyscall);
    }
    if SPECIAL.contains(&p) {
        return Ok(VmaKind::Special {
            name: p.to_string(),
        });
    }
    if p.starts_with("[anon_shmem") {
        return Err(CantMove::SharedMemory {
            addr: v.start,
            what: what(),
        });
    }
    if p.is_empty() || p == "[heap]" || p == "[stack]" || p.starts_with("[anon:") {
        if v.shared() {
            return Err(CantMove::SharedMemory {
                addr: v.start,
                what: "anonymous shared".into(),
            });
        }
        return Ok(VmaKind::Anon {
            name: p.to_string(),
        });
    }
    if p.starts_with('[') {
        return Err(CantMove::UnknownMapping {
            addr: v.start,
            what: what(),
        });
    }
    // Shared anonymous memory, SysV shm and memfds all show up as deleted
    // files; their contents exist only in this node's memory.
    if p.ends_with(" (deleted)") {
        if v.shared()
            || p.starts_with("/dev/zero")
            || p.starts_with("/SYSV")
            || p.starts_with("/memfd:")
        {
            return Err(CantMove::SharedMemory {
                addr: v.start,
                what: what(),
            });
        }
        return Err(CantMove::DeletedFile {
            what: format!("mapping at {:#x} ({p})", v.start),
        });
    }
    let path = PathBuf::from(p);
    if v.shared() && p.starts_with("/dev/shm/") {
        return Err(CantMove::SharedMemory {
            addr: v.start,
            what: what(),
        });
    }
    if let Ok(m) = fs::metadata(&path) {
        let ft = m.file_type();
        // A private /dev/zero mapping is plain anonymous memory.
        let private_zero = p == "/dev/zero" && !v.shared();
        if (ft.is_char_device() || ft.is_block_device()) && !private_zero {
            return Err(CantMove::DeviceMapped {
                addr: v.start,
                what: what(),
            });
        }
    }
    Ok(VmaKind::File { path })
}

#[derive(Debug, Clone)]
pub(crate) struct RawFd {
    pub fd: i32,
    pub link: String,
    pub flags: i32,
    pub pos: u64,
    pub meta: Option<fs::Metadata>,
}

pub(crate) fn read_fds(pid: i32) -> io::Result<Vec<RawFd>> {
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let e = e?;
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // An fd can close between readdir and readlink; skip it then.
        let Ok(link) = fs::read_link(e.path()) else {
            continue;
        };
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let mut flags = 0;
        let mut pos = 0;
        for l in info.lines() {
            if let Some(v) = l.strip_prefix("flags:") {
                flags = i32::from_str_radix(v.trim(), 8).unwrap_or(0);
            } else if let Some(v) = l.strip_prefix("pos:") {
                pos = v.trim().parse().unwrap_or(0);
            }
        }
        out.push(RawFd {
            fd,
            link: link.to_string_lossy().into_owned(),
            flags,
            pos,
            meta: fs::metadata(e.path()).ok(),
        });
    }
    out.sort_by_key(|f| f.fd);
    Ok(out)
}

fn bracket_ino(s: &str) -> u64 {
    s.split_once('[')
        .and_then(|(_, r)| r.trim_end_matches(']').parse().ok())
        .unwrap_or(0)
}

/// Character devices whose fds carry no state worth keeping: reopening the
/// path on the target gives an equivalent fd.
const STATELESS_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

fn is_tty(rdev: u64, path: &str) -> bool {
    let major = libc::major(rdev);
    let minor = libc::minor(rdev);
    // 136..=143: unix98 pty slaves; 4: virtual consoles/serial; 5:0 /dev/tty,
    // 5:1 /dev/console. /dev/ptmx (5:2) is a pty *master* and is refused:
    // its other end lives in this process, not at home.
    (136..=143).contains(&major)
        || major == 4
        || (major == 5 && (minor == 0 || minor == 1))
        || path.starts_with("/dev/pts/")
}

pub(crate) fn classify_fd(f: &RawFd) -> Result<FdKind, CantMove> {
    let fd = f.fd;
    let l = f.link.as_str();
    if let Some(rest) = l.strip_prefix("anon_inode:") {
        let name = rest.trim_matches(|c| c == '[' || c == ']');
        return Err(match name {
            "io_uring" => CantMove::IoUring { fd },
            "eventpoll" => CantMove::Epoll { fd },
            "eventfd" => CantMove::EventFd { fd },
            "signalfd" => CantMove::SignalFd { fd },
            "timerfd" => CantMove::TimerFd { fd },
            "inotify" | "fanotify" => CantMove::Inotify { fd },
            _ => CantMove::KernelObject {
                fd,
                what: l.to_string(),
            },
        });
    }
    if l.starts_with("pipe:") {
        return Ok(FdKind::Pipe {
            ino: bracket_ino(l),
        });
    }
    if l.starts_with("socket:") {
        // Stdio sockets (ssh, systemd) are relayed by the deputy like pipes;
        // any other socket has a peer or a binding we cannot carry.
        if fd <= 2 {
            return Ok(FdKind::Socket {
                ino: bracket_ino(l),
            });
        }
        return Err(CantMove::Socket {
            fd,
            what: l.to_string(),
        });
    }
    if l.starts_with("/memfd:") {
        return Err(CantMove::MemFd {
            fd,
            what: l.to_string(),
        });
    }
    if !l.starts_with('/') {
        return Err(CantMove::KernelObject {
            fd,
            what: l.to_string(),
        });
    }
    if l.ends_with(" (deleted)") {
        return Err(CantMove::DeletedFile {
            what: format!("fd {fd} ({l})"),
        });
    }
    let path = PathBuf::from(l);
    let Some(m) = &f.meta else {
        return Err(CantMove::KernelObject {
            fd,
            what: l.to_string(),
        });
    };
    let ft = m.file_type();
    if ft.is_char_device() {
        if STATELESS_DEVICES.contains(&l) {
            return Ok(FdKind::NullDevice { path });
        }
        if is_tty(m.rdev(), l) {
            return Ok(FdKind::Tty { path });
        }
        return Err(CantMove::DeviceOpen { fd, path });
    }
    if ft.is_block_device() {
        return Err(CantMove::DeviceOpen { fd, path });
    }
    if ft.is_fifo() {
        return Ok(FdKind::Fifo { path });
    }
    if ft.is_socket() {
        return Err(CantMove::Socket {
            fd,
            what: l.to_string(),
        });
    }
    if ft.is_dir() {
        return Ok(FdKind::Directory { path });
    }
    Ok(FdKind::File { path })
}

pub(crate) fn read_status_field(pid: i32, key: &str) -> io::Result<Option<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string()))
}

pub(crate) fn read_link(p: impl AsRef<Path>) -> io::Result<PathBuf> {
    fs::read_link(p)
}

/// Tids of every thread of `pid`, from `/proc/pid/task`.
pub(crate) fn read_tids(pid: i32) -> io::Result<Vec<i32>> {
    let mut v = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = e?.file_name().to_str().and_then(|n| n.parse().ok()) {
            v.push(tid);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Whether thread `tid` of `pid` still exists and is not exiting.
pub(crate) fn thread_alive(pid: i32, tid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised comm, which may contain spaces.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|s| !matches!(s, 'Z' | 'X' | 'x'))
}
