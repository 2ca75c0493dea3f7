//! Translations between the kernel's structures and the wire's types.
use mosix_proto::fs::{Attr, FileKind, RemoteIno, SetTime, Timespec};

pub(super) fn kind_of(mode: libc::mode_t) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileKind::Dir,
        libc::S_IFLNK => FileKind::Symlink,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDev,
        libc::S_IFBLK => FileKind::BlockDev,
        _ => FileKind::File,
    }
}

pub(super) fn dtype_kind(d_type: u8) -> Option<FileKind> {
    Some(match d_type {
        libc::DT_REG => FileKind::File,
        libc::DT_DIR => FileKind::Dir,
        libc::DT_LNK => FileKind::Symlink,
        libc::DT_FIFO => FileKind::Fifo,
        libc::DT_SOCK => FileKind::Socket,
        libc::DT_CHR => FileKind::CharDev,
        libc::DT_BLK => FileKind::BlockDev,
        _ => return None,
    })
}

fn ts(secs: i64, nsecs: i64) -> Timespec {
    Timespec {
        secs,
        nsecs: u32::try_from(nsecs).unwrap_or(0),
    }
}

pub(super) fn attr_of(id: RemoteIno, st: &libc::stat) -> Attr {
    Attr {
        ino: id,
        dev: st.st_dev,
        st_ino: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
        blocks: u64::try_from(st.st_blocks).unwrap_or(0),
        atime: ts(st.st_atime, st.st_atime_nsec),
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
    }
}

pub(super) fn utime(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) => libc::timespec {
            tv_sec: t.secs,
            // An out-of-range value must not turn into UTIME_NOW/OMIT.
            tv_nsec: if t.nsecs < 1_000_000_000 {
                t.nsecs as libc::c_long
            } else {
                -1
            },
        },
    }
}
