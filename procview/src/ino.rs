//! The inode numbers of the `/mosix/proc` mount, owned here and nowhere
//! else.
//!
//! ```text
//! 1                     /mosix/proc
//! 2, 3, 4               self, sys, tty
//! (i + 1) << 24 | version             the cluster-wide files (stat, meminfo, ...), by NodeFile index
//! gpid << 32            /mosix/proc/<gpid>               (a process directory)
//! 1 << 63 | gpid << 32  /mosix/proc/<pid>                (this node's process by plain pid)
//! gpid << 32 | file << 24 | version   /mosix/proc/<gpid>/<file>
//! ```
//!
//! A file's number names one *version* of its content: the content of an
//! inode never changes, so the kernel may keep its pages for as long as it
//! keeps the inode, and a reader never sees a torn file (a new content is a
//! new inode, which the next lookup hands out). Version 0 of a file is
//! "not readable by this caller" and has no content; version [`LISTED`] is
//! the name as a listing gives it (no content; the next lookup replaces it).
use mosix_proto::proc::{NodeFile, ProcFile};

pub const ROOT: u64 = 1;
pub const SELF: u64 = 2;
/// Empty directories where `mosix shell` mounts the node's own /proc/sys
/// and /proc/tty, which tools read beside the process list.
pub const MOUNT_POINTS: [(&str, u64); 2] = [("sys", 3), ("tty", 4)];
const ALIAS: u64 = 1 << 63;
const GPID_SHIFT: u32 = 32;
const FILE_SHIFT: u32 = 24;
pub const VERSION_MASK: u64 = (1 << FILE_SHIFT) - 1;
/// The version of a file as listed by READDIRPLUS: a name without content.
pub const LISTED: u32 = VERSION_MASK as u32;

/// Every file of a process directory, in listing order. Its index + 1 is
/// the `file` field of the inode number.
pub const PROC_FILES: [ProcFile; 16] = [
    ProcFile::Stat,
    ProcFile::Status,
    ProcFile::Statm,
    ProcFile::Cmdline,
    ProcFile::Comm,
    ProcFile::Environ,
    ProcFile::Io,
    ProcFile::Limits,
    ProcFile::Wchan,
    ProcFile::Lock,
    ProcFile::Where,
    ProcFile::Home,
    ProcFile::Nmigs,
    ProcFile::Cantmove,
    ProcFile::Cwd,
    ProcFile::Exe,
];

/// What an inode number stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ino {
    Root,
    SelfLink,
    MountPoint(u64),
    /// A cluster-wide file, one version of its content.
    Node {
        file: NodeFile,
        version: u32,
    },
    /// A process's directory (`alias`: reached by this node's plain pid).
    Dir {
        gpid: u32,
        alias: bool,
    },
    /// One version of one file of a process.
    File {
        gpid: u32,
        file: ProcFile,
        version: u32,
    },
    Unknown,
}

pub fn classify(ino: u64) -> Ino {
    match ino {
        ROOT => return Ino::Root,
        SELF => return Ino::SelfLink,
        i if MOUNT_POINTS.iter().any(|(_, m)| *m == i) => return Ino::MountPoint(i),
        _ => {}
    }
    let alias = ino & ALIAS != 0;
    let rest = ino & !ALIAS;
    let gpid = (rest >> GPID_SHIFT) as u32;
    let file = ((rest >> FILE_SHIFT) & 0xff) as usize;
    // gpid 0 belongs to no process (node ids start at 1): the cluster-wide
    // files.
    if gpid == 0 {
        return match file.checked_sub(1).and_then(|i| NodeFile::ALL.get(i)) {
            Some(f) if !alias => Ino::Node {
                file: *f,
                version: (rest & VERSION_MASK) as u32,
            },
            _ => Ino::Unknown,
        };
    }
    if file == 0 {
        if rest & VERSION_MASK != 0 {
            return Ino::Unknown;
        }
        return Ino::Dir { gpid, alias };
    }
    match PROC_FILES.get(file - 1) {
        Some(f) if !alias => Ino::File {
            gpid,
            file: *f,
            version: (rest & VERSION_MASK) as u32,
        },
        _ => Ino::Unknown,
    }
}

pub fn node_file(f: NodeFile, version: u32) -> u64 {
    let i = NodeFile::ALL.iter().position(|x| *x == f).unwrap_or(0) as u64;
    ((i + 1) << FILE_SHIFT) | (u64::from(version) & VERSION_MASK)
}

pub fn dir(gpid: u32, alias: bool) -> u64 {
    (u64::from(gpid) << GPID_SHIFT) | if alias { ALIAS } else { 0 }
}

pub fn file(gpid: u32, f: ProcFile, version: u32) -> u64 {
    let i = PROC_FILES.iter().position(|x| *x == f).unwrap_or(0) as u64 + 1;
    (u64::from(gpid) << GPID_SHIFT) | (i << FILE_SHIFT) | (u64::from(version) & VERSION_MASK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for g in [1u32, 5, (3 << 22) | 77, u32::MAX >> 1] {
            assert_eq!(
                classify(dir(g, false)),
                Ino::Dir {
                    gpid: g,
                    alias: false
                }
            );
            assert_eq!(
                classify(dir(g, true)),
                Ino::Dir {
                    gpid: g,
                    alias: true
                }
            );
            for f in PROC_FILES {
                for v in [0u32, 1, VERSION_MASK as u32] {
                    assert_eq!(
                        classify(file(g, f, v)),
                        Ino::File {
                            gpid: g,
                            file: f,
                            version: v
                        }
                    );
                }
            }
        }
        for f in NodeFile::ALL {
            assert_eq!(
                classify(node_file(f, 7)),
                Ino::Node {
                    file: f,
                    version: 7
                }
            );
        }
        assert_eq!(classify(ROOT), Ino::Root);
        assert_eq!(classify(SELF), Ino::SelfLink);
        assert_eq!(classify(3), Ino::MountPoint(3));
        assert_eq!(classify(0), Ino::Unknown);
        assert_eq!(classify(1 << 63), Ino::Unknown);
    }
}
