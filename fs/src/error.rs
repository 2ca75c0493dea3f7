//! The error type of the namespace layer and its errno mapping.

/// Why a `/mosix` operation failed. Every variant maps to exactly one errno
/// (see [`FsError::errno`]), which is what the caller's syscall returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// The serving node's kernel refused the operation with this errno.
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Os(i32),
    /// No such node in the cluster (or not alive).
    #[error("no such node: {0}")]
    NoSuchNode(String),
    /// The node is a member but cannot be reached.
    #[error("node {0} is down")]
    NodeDown(String),
    /// The request failed in transit (timeout, lost connection, bad reply).
    #[error("transport: {0}")]
    Transport(String),
    /// The file handle refers to an earlier run of the serving daemon.
    #[error("stale file handle")]
    Stale,
    /// The virtual parts of /mosix (its root, `nodes/`) cannot be changed.
    #[error("read-only part of /mosix")]
    ReadOnly,
    /// Not supported by mosix (yet).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Os(e) => *e,
            FsError::NoSuchNode(_) => libc::ENOENT,
            FsError::NodeDown(_) => libc::EHOSTDOWN,
            FsError::Transport(_) => libc::EIO,
            FsError::Stale => libc::ESTALE,
            FsError::ReadOnly => libc::EROFS,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::Invalid(_) => libc::EINVAL,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
