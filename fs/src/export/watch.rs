//! Changes made on this node without the export: its own processes write
//! the exported files directly (by their real paths, or through `/mosix/here`
//! with kernel passthrough), and other nodes' caches must not survive that
//! either.
//!
//! One fanotify group with a filesystem-wide mark on every file system
//! under the export root, reporting file handles (`FAN_REPORT_FID` and the
//! directory and name of entry changes), so a change to any file is seen
//! without a watch per file or directory. A dedicated thread reads the
//! events and, for each changed file or directory that some node may cache,
//! recalls every lease on it (`mutate` by nobody, then `done`).
//!
//! fanotify reports a change after it is made: a local write has returned
//! before its recall even starts. The window between the two is measured by
//! `integration/tests/coherence.rs` and stated in docs/SEMANTICS.md.
//! Changes made by the daemon itself (other nodes' writes through the
//! export) are skipped: the export recalled before making them.
use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use mosix_proto::fs::RemoteIno;

use super::Export;

/// File systems that are never exported (the policy hides them) or that
/// cannot report file handles.
const SKIP_FSTYPES: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "devtmpfs",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "binfmt_misc",
    "autofs",
    "hugetlbfs",
    "nsfs",
    "efivarfs",
    "fusectl",
    "rpc_pipefs",
];

const MASK: u64 = libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_ONDIR;

/// The mount points at or under `root` in this mount namespace, with their
/// file system types.
fn mounts_under(root: &std::path::Path) -> Vec<(PathBuf, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype)) = (fields.get(4), fields.get(dash + 1)) else {
            continue;
        };
        let point = PathBuf::from(point.replace("\\040", " "));
        if point.starts_with(root) || root.starts_with(&point) && point == root {
            out.push((point, fstype.to_string()));
        }
    }
    if !out.iter().any(|(p, _)| p == root) {
        // The root itself is inside some mount above it.
        out.push((root.to_path_buf(), String::new()));
    }
    out
}

type Fsid = [i32; 2];

fn fsid_of(fd: i32) -> Option<Fsid> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return None;
    }
    // SAFETY: fsid_t is two ints.
    Some(unsafe { std::mem::transmute::<libc::fsid_t, Fsid>(st.f_fsid) })
}

struct Watch {
    fan: OwnedFd,
    /// A descriptor on each marked file system, to open handles with.
    mounts: HashMap<Fsid, OwnedFd>,
}

/// Starts watching the export's file systems, if the kernel lets us
/// (CAP_SYS_ADMIN, and file systems that report file handles). Returns how
/// many file systems are watched.
pub fn start(export: &Arc<Export>, root: &std::path::Path) -> std::io::Result<usize> {
    // SAFETY: plain syscall.
    let fan = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF
                | libc::FAN_CLOEXEC
                | libc::FAN_REPORT_FID
                | libc::FAN_REPORT_DFID_NAME,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
        )
    };
    if fan < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just got.
    let fan = unsafe { OwnedFd::from_raw_fd(fan) };
    let mut mounts: HashMap<Fsid, OwnedFd> = HashMap::new();
    for (point, fstype) in mounts_under(root) {
        if SKIP_FSTYPES.contains(&fstype.as_str()) || fstype.starts_with("fuse") {
            continue;
        }
        let Ok(path) = CString::new(point.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: valid C string.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            continue;
        }
        // SAFETY: a descriptor we just got.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let Some(fsid) = fsid_of(fd.as_raw_fd()) else {
            continue;
        };
        if mounts.contains_key(&fsid) {
            continue;
        }
        // SAFETY: valid descriptors and C string.
        let r = unsafe {
            libc::fanotify_mark(
                fan.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                MASK,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if r != 0 {
            tracing::warn!(
                mount = %point.display(), %fstype, error = %std::io::Error::last_os_error(),
                "local changes to this file system are not seen: other nodes' caches of it may go stale"
            );
            continue;
        }
        mounts.insert(fsid, fd);
    }
    let n = mounts.len();
    let w = Watch { fan, mounts };
    let export = Arc::downgrade(export);
    std::thread::Builder::new()
        .name("mosix-watch".into())
        .spawn(move || run(w, export))?;
    Ok(n)
}

fn run(w: Watch, export: Weak<Export>) {
    let me = std::process::id() as i32;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: valid buffer.
        let n = unsafe { libc::read(w.fan.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            tracing::warn!(error = %e, "fanotify read failed; local changes are no longer seen");
            return;
        }
        let Some(export) = export.upgrade() else {
            return;
        };
        if export.leases_idle() {
            // Nothing cached anywhere: nothing to recall.
            continue;
        }
        let mut files = BTreeSet::new();
        for (pid, handles) in events(&buf[..n as usize]) {
            if pid == me {
                continue;
            }
            for (fsid, handle) in handles {
                if let Some(id) = w.id_of(&export, fsid, &handle) {
                    files.insert(id);
                }
            }
        }
        for f in files {
            export.local_change(f);
        }
    }
}

impl Watch {
    /// The export's id of the file a handle names, if any node knows it.
    fn id_of(&self, export: &Export, fsid: Fsid, handle: &[u8]) -> Option<RemoteIno> {
        let mount = self.mounts.get(&fsid)?;
        // `handle` is a struct file_handle as the kernel laid it out.
        // SAFETY: a valid mount fd and a file_handle buffer from the kernel.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mount.as_raw_fd(),
                handle.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor we just got.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let st = super::sys::fstat(fd.as_raw_fd()).ok()?;
        export.inodes.known_id(st.st_dev, st.st_ino)
    }
}

/// One event: the pid that caused it, and (fsid, `struct file_handle`
/// bytes) of each file it names.
type Event = (i32, Vec<(Fsid, Vec<u8>)>);

/// Each event in a read buffer.
fn events(mut buf: &[u8]) -> Vec<Event> {
    let meta = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut out = Vec::new();
    while buf.len() >= meta {
        // SAFETY: at least one metadata struct's worth of bytes.
        let m: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let len = m.event_len as usize;
        if len < meta || len > buf.len() {
            break;
        }
        if m.fd >= 0 {
            // Not asked for with FID reporting, but never leak one.
            // SAFETY: the kernel gave us this descriptor.
            drop(unsafe { OwnedFd::from_raw_fd(m.fd) });
        }
        let mut handles = Vec::new();
        let mut info = &buf[m.metadata_len as usize..len];
        while info.len() >= 4 {
            let typ = info[0];
            let ilen = u16::from_ne_bytes([info[2], info[3]]) as usize;
            if ilen < 4 || ilen > info.len() {
                break;
            }
            let rec = &info[4..ilen];
            let fid = matches!(
                typ,
                libc::FAN_EVENT_INFO_TYPE_FID
                    | libc::FAN_EVENT_INFO_TYPE_DFID
                    | libc::FAN_EVENT_INFO_TYPE_DFID_NAME
                    | 10 // FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
                    | 12 // FAN_EVENT_INFO_TYPE_NEW_DFID_NAME
            );
            if fid && rec.len() >= 16 {
                let fsid = [
                    i32::from_ne_bytes(rec[0..4].try_into().expect("4 bytes")),
                    i32::from_ne_bytes(rec[4..8].try_into().expect("4 bytes")),
                ];
                let hbytes = u32::from_ne_bytes(rec[8..12].try_into().expect("4 bytes")) as usize;
                if 16 + hbytes <= rec.len() {
                    handles.push((fsid, rec[8..16 + hbytes].to_vec()));
                }
            }
            info = &info[ilen..];
        }
        out.push((m.pid, handles));
        buf = &buf[len..];
    }
    out
}

impl Export {
    /// Recalls leases after changes this node's own processes make to the
    /// exported files directly (see `watch.rs`). Needs CAP_SYS_ADMIN; the
    /// error says why not otherwise.
    pub fn watch_local_changes(self: &Arc<Self>, root: &std::path::Path) -> std::io::Result<usize> {
        start(self, root)
    }
}
