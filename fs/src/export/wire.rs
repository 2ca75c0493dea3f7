//! The one place the wire enum meets the export: each [`FsRequest`] becomes
//! a call of its typed method, and its result an [`FsReply`].
use mosix_proto::fs::{FsReply, FsRequest, FsResult};

use super::Export;
use crate::service::{Lock, Who, Xattr};

fn xattr_reply(x: Xattr) -> FsReply {
    match x {
        Xattr::Size(n) => FsReply::XattrSize(n),
        Xattr::Data(d) => FsReply::Data(d),
    }
}

impl Export {
    /// Runs one operation for `who`. Blocking (at most
    /// [`super::leases::WAIT_LIMIT`] more when it waits for recalls).
    /// Never panics on any input.
    pub fn handle(&self, who: &Who, op: FsRequest) -> FsResult {
        self.leased(who, op, |op| self.run_op(who, op))
    }

    fn run_op(&self, who: &Who, op: FsRequest) -> FsResult {
        use FsRequest as R;
        let ok = |()| FsReply::Ok;
        match op {
            R::Lookup { parent, name } => self.lookup(who, parent, &name).map(FsReply::Entry),
            R::Forget { items } => {
                self.forget(who, &items);
                Ok(FsReply::Ok)
            }
            R::GetAttr { ino } => self.getattr(who, ino).map(FsReply::Attr),
            R::SetAttr { ino, set } => self.setattr(who, ino, &set).map(FsReply::Attr),
            R::ReadLink { ino } => self.readlink(who, ino).map(FsReply::Data),
            R::Mknod {
                parent,
                name,
                mode,
                rdev,
                umask,
            } => self
                .mknod(who, parent, &name, mode, rdev, umask)
                .map(FsReply::Entry),
            R::Mkdir {
                parent,
                name,
                mode,
                umask,
            } => self
                .mkdir(who, parent, &name, mode, umask)
                .map(FsReply::Entry),
            R::Unlink { parent, name } => self.unlink(who, parent, &name).map(ok),
            R::Rmdir { parent, name } => self.rmdir(who, parent, &name).map(ok),
            R::Symlink {
                parent,
                name,
                target,
            } => self
                .symlink(who, parent, &name, &target)
                .map(FsReply::Entry),
            R::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => self
                .rename(who, parent, &name, new_parent, &new_name, flags)
                .map(ok),
            R::Link {
                ino,
                new_parent,
                new_name,
            } => self
                .link(who, ino, new_parent, &new_name)
                .map(FsReply::Entry),
            R::Open { ino, flags } => self.open(who, ino, flags).map(|fh| FsReply::Opened { fh }),
            R::Create {
                parent,
                name,
                mode,
                umask,
                flags,
            } => self
                .create(who, parent, &name, mode, umask, flags)
                .map(|(attr, fh)| FsReply::Created { attr, fh }),
            R::Read { fh, offset, size } => self.read(who, fh, offset, size).map(FsReply::Data),
            R::Write { fh, offset, data } => {
                self.write(who, fh, offset, &data).map(FsReply::Written)
            }
            R::Flush { fh } => self.flush(who, fh).map(ok),
            R::Fsync { fh, datasync } => self.fsync(who, fh, datasync).map(ok),
            R::Release { fh } => self.release(who, fh).map(ok),
            R::OpenDir { ino } => self.opendir(who, ino).map(|fh| FsReply::Opened { fh }),
            R::ReadDir { fh, offset, size } => {
                self.readdir(who, fh, offset, size).map(FsReply::Entries)
            }
            R::ReleaseDir { fh } => self.releasedir(who, fh).map(ok),
            R::StatFs { ino } => self.statfs(who, ino).map(FsReply::StatFs),
            R::SetXattr {
                ino,
                name,
                value,
                flags,
            } => self.setxattr(who, ino, &name, &value, flags).map(ok),
            R::GetXattr { ino, name, size } => {
                self.getxattr(who, ino, &name, size).map(xattr_reply)
            }
            R::ListXattr { ino, size } => self.listxattr(who, ino, size).map(xattr_reply),
            R::RemoveXattr { ino, name } => self.removexattr(who, ino, &name).map(ok),
            R::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => self.fallocate(who, fh, offset, length, mode).map(ok),
            R::GetLk { ino, lock } => self.getlk(who, ino, lock_of(&lock)).map(|l| FsReply::Lock {
                start: l.start,
                end: l.end,
                typ: l.typ,
                pid: l.pid,
            }),
            R::SetLk { ino, lock } => self.setlk(who, ino, lock_of(&lock)).map(ok),
            R::Access { ino, mask } => self.access(who, ino, mask).map(ok),
        }
    }
}

fn lock_of(l: &mosix_proto::fs::LockRange) -> Lock {
    Lock {
        owner: l.owner,
        start: l.start,
        end: l.end,
        typ: l.typ,
        pid: l.pid,
    }
}
