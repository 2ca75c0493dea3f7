//! The error type of the process view and its errno mapping.

/// Why an operation of the process view failed. Every variant maps to
/// exactly one errno ([`ProcError::errno`]), which the caller's syscall
/// returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcError {
    /// The process's node (or this node's /proc) answered with this errno.
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Os(i32),
    /// No such node in the cluster.
    #[error("no such node: {0}")]
    NoSuchNode(String),
    /// The node is a member but cannot be reached.
    #[error("node {0} is down")]
    NodeDown(String),
    /// The request failed in transit (timeout, lost connection, bad reply).
    #[error("transport: {0}")]
    Transport(String),
}

impl ProcError {
    pub fn errno(&self) -> i32 {
        match self {
            ProcError::Os(e) => *e,
            ProcError::NoSuchNode(_) => libc::ENOENT,
            ProcError::NodeDown(_) => libc::EHOSTDOWN,
            ProcError::Transport(_) => libc::EIO,
        }
    }
}

pub type ProcResult<T> = Result<T, ProcError>;

/// Errors of this node's /proc come as bare errnos.
impl From<i32> for ProcError {
    fn from(e: i32) -> Self {
        ProcError::Os(e)
    }
}
