//! What one export serves, as the daemon's configuration says.
use std::path::PathBuf;

/// What one export serves.
#[derive(Debug, Clone, Default)]
pub struct ExportConfig {
    /// Absolute directory on this node to export.
    pub root: PathBuf,
    /// Every mutating op, and opening with write access, gives EROFS.
    pub read_only: bool,
    /// Caller uid 0 becomes 65534 and gid 0 (also among the supplementary
    /// groups, as nfsd does) becomes 65534.
    pub root_squash: bool,
    /// Absolute paths on this node never served: they look absent (ENOENT on
    /// lookup, missing in readdir). A path whose parent exists is hidden by
    /// name even if it does not exist yet (e.g. a mountpoint created later).
    pub hide: Vec<PathBuf>,
}
