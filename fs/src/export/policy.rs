//! What the export refuses regardless of who asks: writing to a read-only
//! export, and seeing what it hides.
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use mosix_proto::fs::FileKind;

use super::config::ExportConfig;
use super::Res;

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Whether an operation may change the exported tree. Every operation
/// declares one, so the read-only rule lives in [`Policy::allows`] alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Intent {
    Read,
    Write,
}

impl Intent {
    /// Opening with write access or O_TRUNC changes the file.
    pub fn of_open(flags: i32) -> Intent {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            Intent::Write
        } else {
            Intent::Read
        }
    }

    /// access(W_OK) asks whether a write would be allowed, which on a
    /// read-only export it is not, for the kinds of file whose writes
    /// change the tree (a fifo or device can still be written to).
    pub fn of_access(kind: FileKind, mask: i32) -> Intent {
        if mask & libc::W_OK != 0
            && matches!(kind, FileKind::File | FileKind::Dir | FileKind::Symlink)
        {
            Intent::Write
        } else {
            Intent::Read
        }
    }
}

#[derive(Debug)]
pub(super) struct Policy {
    read_only: bool,
    /// (parent st_dev, parent st_ino) -> names hidden in that directory.
    hidden_names: HashMap<(u64, u64), Vec<Vec<u8>>>,
    /// (st_dev, st_ino) of hide paths that existed at open time, so a bind
    /// mount of one elsewhere is refused too.
    hidden_files: Vec<(u64, u64)>,
}

impl Policy {
    pub fn new(cfg: &ExportConfig) -> Policy {
        let mut hidden_names: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
        let mut hidden_files = Vec::new();
        for path in &cfg.hide {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                hidden_files.push((m.dev(), m.ino()));
            }
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                tracing::warn!(path = %path.display(), "hide path has no parent; ignored");
                continue;
            };
            // stat follows symlinks in the parent, like the lookups that
            // reach it from the export root do.
            match std::fs::metadata(parent) {
                Ok(m) => hidden_names
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(name.as_bytes().to_vec()),
                Err(e) => {
                    tracing::debug!(path = %path.display(), "hide path's parent: {e}")
                }
            }
        }
        Policy {
            read_only: cfg.read_only,
            hidden_names,
            hidden_files,
        }
    }

    pub fn allows(&self, intent: Intent) -> Res<()> {
        if self.read_only && intent == Intent::Write {
            return Err(libc::EROFS);
        }
        Ok(())
    }

    /// Names hidden in directory (dev, ino), for readdir.
    pub fn hidden_in(&self, dev: u64, ino: u64) -> &[Vec<u8>] {
        self.hidden_names
            .get(&(dev, ino))
            .map_or(&[], |names| names.as_slice())
    }

    pub fn hides_name(&self, dir_dev: u64, dir_ino: u64, name: &[u8]) -> bool {
        self.hidden_in(dir_dev, dir_ino).iter().any(|n| n == name)
    }

    /// Whether a file reached by lookup must look absent: a hidden file
    /// under another name (a bind mount), or a directory on a filesystem
    /// that must not be served (procfs, sysfs, and FUSE, which would serve
    /// `/mosix` through itself across the cluster). `f_type` is asked for
    /// directories only.
    pub fn hides_file(&self, st: &libc::stat, f_type: impl FnOnce() -> Res<i64>) -> Res<bool> {
        if self.hidden_files.contains(&(st.st_dev, st.st_ino)) {
            return Ok(true);
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let t = f_type()?;
            return Ok(matches!(
                t,
                PROC_SUPER_MAGIC | SYSFS_MAGIC | FUSE_SUPER_MAGIC
            ));
        }
        Ok(false)
    }
}
