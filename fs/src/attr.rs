//! What the namespace answers the kernel with: attributes, entries with their
//! cache lifetimes, listings. These are the namespace's own types, not the
//! wire's, so the FUSE adapter depends on this layer alone.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mosix_proto::fs::{FileKind, SetTime, Timespec};

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl From<FileKind> for Kind {
    fn from(k: FileKind) -> Kind {
        match k {
            FileKind::File => Kind::File,
            FileKind::Dir => Kind::Dir,
            FileKind::Symlink => Kind::Symlink,
            FileKind::Fifo => Kind::Fifo,
            FileKind::Socket => Kind::Socket,
            FileKind::CharDev => Kind::CharDev,
            FileKind::BlockDev => Kind::BlockDev,
        }
    }
}

/// Attributes as the caller sees them through /mosix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAttr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: Kind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// Attributes with how long the kernel may keep them, and the name that led
/// to them ([`crate::ttl`] is the one policy for both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub attr: NodeAttr,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub ino: u64,
    pub next_offset: u64,
    pub kind: Kind,
    pub name: Vec<u8>,
}

/// A time to set: now (the serving node's clock), or a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(SystemTime),
}

/// A setattr: each `Some` field is changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// The open handle the change came through (ftruncate), if any.
    pub fh: Option<u64>,
}

/// statfs(2) of the file system a file lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

impl From<mosix_proto::fs::StatFs> for FsStats {
    fn from(s: mosix_proto::fs::StatFs) -> FsStats {
        FsStats {
            blocks: s.blocks,
            bfree: s.bfree,
            bavail: s.bavail,
            files: s.files,
            ffree: s.ffree,
            bsize: s.bsize,
            namelen: s.namelen,
            frsize: s.frsize,
        }
    }
}

pub(crate) fn to_systime(t: Timespec) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(t.nsecs as u64)
    }
}

pub(crate) fn to_timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            secs: d.as_secs() as i64,
            nsecs: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                Timespec {
                    secs: -(d.as_secs() as i64),
                    nsecs: 0,
                }
            } else {
                Timespec {
                    secs: -(d.as_secs() as i64) - 1,
                    nsecs: 1_000_000_000 - d.subsec_nanos(),
                }
            }
        }
    }
}

impl Change {
    pub(crate) fn to_wire(&self) -> mosix_proto::fs::SetAttr {
        let t = |t: Option<TimeSet>| {
            t.map(|t| match t {
                TimeSet::Now => SetTime::Now,
                TimeSet::At(st) => SetTime::At(to_timespec(st)),
            })
        };
        mosix_proto::fs::SetAttr {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: t(self.atime),
            mtime: t(self.mtime),
            fh: self.fh,
        }
    }
}

/// A directory listing from `names`, starting after cookie `offset` (the
/// cookies of generated directories are positions).
pub(crate) fn listing(names: Vec<(u64, Kind, Vec<u8>)>, offset: u64) -> Vec<ListEntry> {
    names
        .into_iter()
        .enumerate()
        .skip(offset as usize)
        .map(|(i, (ino, kind, name))| ListEntry {
            ino,
            next_offset: i as u64 + 1,
            kind,
            name,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn times_round_trip(secs in -(1i64 << 40)..(1i64 << 40), nsecs in 0u32..1_000_000_000) {
            let t = Timespec { secs, nsecs };
            prop_assert_eq!(to_timespec(to_systime(t)), t);
        }
    }
}
