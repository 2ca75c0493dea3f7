//! One error type per layer, each with an exhaustive errno mapping so the
//! daemon can answer a user's `migrate` request with a plain errno.

use std::io;
use std::path::PathBuf;

/// Why a process cannot move. Every variant is a property of the process
/// that stays true until the process changes; retrying without a change is
/// pointless.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CantMove {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error("process {pid} is a kernel thread")]
    KernelThread { pid: i32 },
    #[error("process {pid} is a zombie or already exiting")]
    Exiting { pid: i32 },
    /// Threads kept appearing faster than the checkpoint could stop them.
    #[error("process kept creating threads while being frozen ({threads} so far)")]
    MultiThreaded { threads: u64 },
    #[error("process is stopped by job control; move it once it runs")]
    Stopped,
    #[error("process is already ptraced by {tracer}")]
    AlreadyTraced { tracer: i32 },
    #[error("fd {fd} is a device ({path}) that only exists on this node")]
    DeviceOpen { fd: i32, path: PathBuf },
    #[error("mapping at {addr:#x} ({what}) is a device mapping")]
    DeviceMapped { addr: u64, what: String },
    #[error("mapping at {addr:#x} ({what}) is memory shared with other processes")]
    SharedMemory { addr: u64, what: String },
    #[error("mapping at {addr:#x} ({what}) is not understood")]
    UnknownMapping { addr: u64, what: String },
    #[error("fd {fd} is an io_uring instance")]
    IoUring { fd: i32 },
    #[error("fd {fd} is a socket ({what}); only stdio sockets are relayed")]
    Socket { fd: i32, what: String },
    #[error("fd {fd} is an epoll instance")]
    Epoll { fd: i32 },
    #[error("fd {fd} is an eventfd")]
    EventFd { fd: i32 },
    #[error("fd {fd} is a signalfd")]
    SignalFd { fd: i32 },
    #[error("fd {fd} is a timerfd")]
    TimerFd { fd: i32 },
    #[error("fd {fd} is an inotify/fanotify instance")]
    Inotify { fd: i32 },
    #[error("fd {fd} is a memfd ({what}) whose contents live on this node")]
    MemFd { fd: i32, what: String },
    #[error("fd {fd} is a kernel object ({what}) that cannot be recreated")]
    KernelObject { fd: i32, what: String },
    #[error("{what} refers to a deleted file")]
    DeletedFile { what: String },
    #[error("process runs under a seccomp filter, which cannot be carried yet")]
    Seccomp,
}

impl CantMove {
    pub fn errno(&self) -> i32 {
        match self {
            CantMove::NoSuchProcess { .. } => libc::ESRCH,
            CantMove::KernelThread { .. } => libc::EPERM,
            CantMove::Exiting { .. } => libc::ESRCH,
            CantMove::MultiThreaded { .. } => libc::EAGAIN,
            CantMove::Stopped => libc::EAGAIN,
            CantMove::AlreadyTraced { .. } => libc::EBUSY,
            CantMove::DeviceOpen { .. } => libc::EBUSY,
            CantMove::DeviceMapped { .. } => libc::EBUSY,
            CantMove::SharedMemory { .. } => libc::EBUSY,
            CantMove::UnknownMapping { .. } => libc::EOPNOTSUPP,
            CantMove::IoUring { .. } => libc::EOPNOTSUPP,
            CantMove::Socket { .. } => libc::EOPNOTSUPP,
            CantMove::Epoll { .. } => libc::EOPNOTSUPP,
            CantMove::EventFd { .. } => libc::EOPNOTSUPP,
            CantMove::SignalFd { .. } => libc::EOPNOTSUPP,
            CantMove::TimerFd { .. } => libc::EOPNOTSUPP,
            CantMove::Inotify { .. } => libc::EOPNOTSUPP,
            CantMove::MemFd { .. } => libc::EBUSY,
            CantMove::KernelObject { .. } => libc::EOPNOTSUPP,
            CantMove::DeletedFile { .. } => libc::ENOENT,
            CantMove::Seccomp => libc::EOPNOTSUPP,
        }
    }
}

/// Failures of the page stream / image framing (the transport layer).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream I/O: {0}")]
    Io(#[from] io::Error),
    #[error("encoding a frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding a frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("stream protocol: {0}")]
    Protocol(String),
}

impl StreamError {
    pub fn errno(&self) -> i32 {
        match self {
            StreamError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            StreamError::Encode(_) => libc::EINVAL,
            StreamError::Decode(_) => libc::EBADMSG,
            StreamError::Protocol(_) => libc::EPROTO,
        }
    }
}

/// Failures while freezing and capturing the source. After any of these the
/// source has been let go (or was never touched) and keeps running.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot move: {0}")]
    CantMove(#[from] CantMove),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("injected syscall {nr} in the source failed: errno {errno}")]
    Injected { nr: i64, errno: i32 },
    #[error("process changed state unexpectedly: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Pre-copy cannot track this process's writes; a full stop still can
    /// move it.
    #[error("dirty-page tracking unavailable: {0}")]
    TrackingUnavailable(String),
}

impl CheckpointError {
    pub fn errno(&self) -> i32 {
        match self {
            CheckpointError::CantMove(c) => c.errno(),
            CheckpointError::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            CheckpointError::Injected { errno, .. } => *errno,
            CheckpointError::Unexpected(_) => libc::EAGAIN,
            CheckpointError::Stream(s) => s.errno(),
            CheckpointError::TrackingUnavailable(_) => libc::EOPNOTSUPP,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: io::Error) -> Self {
        CheckpointError::Sys {
            what: what.into(),
            source,
        }
    }
}

/// Failures while building the process on the target. The half-built stub
/// is killed before any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("image is not restorable here: {0}")]
    BadImage(String),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("injected syscall {what} (nr {nr}) in the stub failed: errno {errno}")]
    Injected { what: String, nr: i64, errno: i32 },
    #[error("vDSO layout differs from the source's ({0}); the kernels differ")]
    VdsoMismatch(String),
    #[error("fd {fd} is a {kind} and the caller gave no replacement for it")]
    MissingReplacement { fd: i32, kind: String },
    #[error("file {path:?} needed by the image: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stub changed state unexpectedly: {0}")]
    Unexpected(String),
    #[error("restore aborted by fault injection at {0:?}")]
    FaultInjected(crate::restore::RestoreStep),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl RestoreError {
    pub fn errno(&self) -> i32 {
        match self {
            RestoreError::BadImage(_) => libc::EINVAL,
            RestoreError::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            RestoreError::Injected { errno, .. } => *errno,
            RestoreError::VdsoMismatch(_) => libc::EOPNOTSUPP,
            RestoreError::MissingReplacement { .. } => libc::EBADF,
            RestoreError::File { source, .. } => source.raw_os_error().unwrap_or(libc::ENOENT),
            RestoreError::Unexpected(_) => libc::EAGAIN,
            RestoreError::FaultInjected(_) => libc::ECANCELED,
            RestoreError::Stream(s) => s.errno(),
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: io::Error) -> Self {
        RestoreError::Sys {
            what: what.into(),
            source,
        }
    }
}
