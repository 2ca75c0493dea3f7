//! The serving side of the `/mosix` network filesystem: runs file operations
//! from client nodes (this one included) on one directory tree of this node.
//!
//! Security model (the reasons behind the shape of this module):
//!
//! - **No path is ever resolved on the server.** Every file is reached by
//!   single-component `openat(parent_fd, name, O_PATH | O_NOFOLLOW)` lookups
//!   starting at the export root, and names containing `/`, NUL, or equal to
//!   `.`/`..` are refused (`EINVAL`; the client kernel resolves `.` and `..`
//!   itself). A symlink is served as a symlink and only read by `readlink`,
//!   so `..`, absolute or relative symlinks and rename/symlink swap races
//!   cannot lead outside the export. Operations on an already looked-up file
//!   go through its `O_PATH` fd, or through its `/proc/self/fd/N` magic link
//!   where the kernel has no fd-based call: that link jumps to the inode
//!   itself and a symlink found there is not followed further.
//! - **Every operation runs as the caller** (see [`crate::creds`]): the
//!   thread's fsuid, fsgid and groups are switched for the duration of one
//!   operation, so EACCES/EPERM decisions are made by the real kernel on the
//!   real filesystem, including ACLs and LSMs. `root_squash` maps uid/gid 0
//!   to 65534 first. The one exception is clearing a file's set-ID bits for
//!   a caller who may write it (see [`Export::setattr`]).
//! - **Things that must not be served look absent** ([`policy`]): configured
//!   `hide` paths (e.g. `/proc`, `/sys`, `/dev`, the `/mosix` mountpoint) and
//!   any directory on procfs, sysfs or a FUSE mount (serving `/mosix` through
//!   itself would recurse across the cluster).
//! - **Ids are opaque and never reused**, so a stale id from a client gives
//!   `ESTALE`, never another file; unknown handles give `EBADF`.
//! - **What a client holds is its own** ([`sessions`]): handles, lookup
//!   references and locks belong to the client node the transport
//!   authenticated, no other client can use or free them, and they are all
//!   given back when that client dies or restarts.
//! - Nothing here trusts request contents: every size, offset, name and id
//!   is checked and every failure becomes an errno; no request can panic the
//!   server or make it allocate more than a frame's worth of memory.
//!
//! [`Export::new`] sets the process umask to 0: the kernel would otherwise
//! apply the *daemon's* umask to every file created on behalf of callers. The
//! export applies the caller's umask (sent with mknod/mkdir/create) itself.
//! (Like any server that does so, this differs from local semantics when the
//! parent directory has a default ACL, where the kernel would ignore umask.)
//!
//! Where things live: one typed method per operation on [`Export`], in
//! `ops/`; [`Export::handle`] in `wire.rs` maps the wire enum onto them.
//! The state they share: `inodes.rs` (ids), `handles.rs` (open files),
//! `locks.rs` (byte-range locks), `sessions.rs` (who holds what),
//! `policy.rs` (read-only and hidden). `local.rs` serves this node's own
//! FUSE passthrough; `sys.rs`, `attr.rs` and `dirent.rs` talk to the kernel.
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, MutexGuard};

use mosix_proto::fs::Creds;

use crate::creds::{become_caller, CredGuard};
use crate::service::Who;

mod appends;
mod attr;
mod config;
mod dirent;
mod handles;
mod inodes;
mod leases;
mod limits;
mod local;
mod locks;
mod ops;
mod policy;
mod sessions;
mod sys;
mod watch;
mod wire;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod testutil;

pub use config::ExportConfig;
pub use leases::{Recaller, WAIT_LIMIT};
pub use limits::Limits;

use handles::Handles;
use inodes::{Inodes, Reached};
use limits::{FdBudget, FdTicket};
use locks::LockServer;
use policy::{Intent, Policy};
use sessions::{Session, Sessions};
use sys::{fd_name, fstat, openat};

/// Errno-or-value; every failure on the wire is an errno.
pub type Res<T> = Result<T, i32>;

const NOBODY: u32 = 65534;

/// One exported tree. Send + Sync: every method may be called from many
/// threads at once (each call switches only its own thread's credentials).
#[derive(Debug)]
pub struct Export {
    /// Identifies this run of the export: ids mean nothing to another run.
    epoch: u64,
    root_squash: bool,
    policy: Policy,
    /// `/proc/self/fd`, for reaching an O_PATH fd's inode by its magic link.
    proc_fd: OwnedFd,
    inodes: Inodes,
    handles: Handles,
    locks: LockServer,
    sessions: Sessions,
    /// Descriptors held for clients, against [`Limits`].
    fds: FdBudget,
    /// Whose turn it is to append to each file.
    appends: appends::AppendTurns,
    /// Which client nodes may cache which files.
    leases: leases::Leases,
    /// (st_dev, st_ino) of the export root.
    root_key: (u64, u64),
    /// Whether a directory can be moved out of the export at all: not when
    /// the export is the whole tree of the daemon's mount namespace.
    confine: bool,
}

/// One operation under way: the caller's session, and the caller's
/// credentials on this thread until it is dropped.
struct Call {
    session: Arc<Session>,
    creds: Option<CredGuard>,
}

impl Call {
    /// Runs `f` with the daemon's own credentials, then as the caller again.
    fn as_daemon<T>(&mut self, export: &Export, who: &Who, f: impl FnOnce() -> T) -> Res<T> {
        self.creds = None;
        let r = f();
        self.creds = Some(export.become_caller(who)?);
        Ok(r)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole export down with it; the
    // tables stay consistent at every unlock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Export {
    /// Opens the export root and records what to hide, with the quotas of
    /// this process's descriptor limit. Sets the process umask to 0 (see
    /// the module docs).
    pub fn new(cfg: ExportConfig) -> std::io::Result<Export> {
        Export::with_limits(cfg, Limits::for_this_process())
    }

    /// [`Export::new`] with the given quotas.
    pub fn with_limits(cfg: ExportConfig, limits: Limits) -> std::io::Result<Export> {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(0) };
        let root_path = CString::new(cfg.root.as_os_str().as_bytes())?;
        let root_fd = openat(
            libc::AT_FDCWD,
            &root_path,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )
        .map_err(std::io::Error::from_raw_os_error)?;
        let st = fstat(root_fd.as_raw_fd()).map_err(std::io::Error::from_raw_os_error)?;
        let proc_fd = openat(
            libc::AT_FDCWD,
            c"/proc/self/fd",
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
        )
        .map_err(std::io::Error::from_raw_os_error)?;
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 32);
        Ok(Export {
            epoch,
            root_squash: cfg.root_squash,
            policy: Policy::new(&cfg),
            proc_fd,
            inodes: Inodes::new(root_fd, &st, limits.fd_cache, limits.session_inodes),
            handles: Handles::new(epoch),
            locks: LockServer::default(),
            sessions: Sessions::default(),
            fds: FdBudget::new(limits),
            appends: appends::AppendTurns::default(),
            leases: leases::Leases::default(),
            root_key: (st.st_dev, st.st_ino),
            confine: std::fs::metadata("/")
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino()) != (st.st_dev, st.st_ino)
                })
                .unwrap_or(true),
        })
    }

    /// The quotas this export enforces.
    pub fn limits(&self) -> Limits {
        *self.fds.limits()
    }

    /// Names this node: its own session (its users' files through /mosix)
    /// is not subject to the quotas that keep clients from exhausting it.
    pub fn set_local_node(&self, node: &str) {
        let _ = self.sessions.local.set(node.into());
    }

    /// Descriptors that client sessions hold open here now (open files,
    /// directories being read, lock descriptions), for the node's log.
    pub fn remote_fds_in_use(&self) -> usize {
        self.fds.remote_in_use()
    }

    /// This run's identity; clients drop ids from another run.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Ends client node `node`'s session (it was declared dead): closes its
    /// handles, drops its lookup references (freeing inodes nobody else
    /// holds) and releases its locks. Its next request starts afresh.
    pub fn drop_client(&self, node: &str) {
        if let Some(s) = self.sessions.remove(node) {
            self.end_session(&s);
        }
    }

    /// Client node `node` is alive as run `run` (membership says so): a
    /// session of an earlier run of it ends now, even if the new run never
    /// asks this node anything.
    pub fn client_run_is(&self, node: &str, run: u64) {
        if let Some(s) = self.sessions.remove_other_run(node, run) {
            self.end_session(&s);
        }
    }

    fn end_session(&self, s: &Session) {
        s.end();
        tracing::debug!(node = %s.client.node, run = s.client.run, "client session ends");
        // Whatever closes here closes outside the tables' locks.
        drop(self.locks.release(s));
        drop(self.handles.remove_all(s));
        self.inodes.release(s);
        self.leases_gone(&s.client);
    }

    /// Starts one operation of `who` that `intent`s: finds (or renews) the
    /// client's session, becomes the caller, and applies the read-only rule.
    fn begin(&self, who: &Who, intent: Intent) -> Res<Call> {
        let (session, replaced) = self.sessions.enter(&who.client)?;
        if let Some(old) = replaced {
            self.end_session(&old);
        }
        let creds = self.become_caller(who)?;
        self.policy.allows(intent)?;
        Ok(Call {
            session,
            creds: Some(creds),
        })
    }

    fn become_caller(&self, who: &Who) -> Res<CredGuard> {
        let (uid, gid, groups) = self.effective(&who.creds);
        become_caller(uid, gid, &groups).map_err(|e| e as i32)
    }

    fn effective(&self, c: &Creds) -> (u32, u32, Vec<u32>) {
        if !self.root_squash {
            return (c.uid, c.gid, c.groups.clone());
        }
        let squash = |id: u32| if id == 0 { NOBODY } else { id };
        (
            squash(c.uid),
            squash(c.gid),
            c.groups.iter().copied().map(squash).collect(),
        )
    }

    /// A descriptor for the caller of `call`, counted against its quotas.
    fn fd_ticket(&self, call: &Call, who: &Who) -> Res<FdTicket> {
        self.fds.take(&call.session, who.creds.uid)
    }

    /// Opens the inode behind an O_PATH fd through its magic link, with the
    /// thread's current credentials (so the kernel checks `flags`).
    fn reopen(&self, inode: &Reached, flags: i32) -> Res<OwnedFd> {
        let name = fd_name(inode.fd.as_raw_fd())?;
        openat(self.proc_fd.as_raw_fd(), &name, flags | libc::O_CLOEXEC, 0)
    }

    #[cfg(test)]
    fn held_inodes(&self) -> usize {
        self.inodes.held()
    }
}
