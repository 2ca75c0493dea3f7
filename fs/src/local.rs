//! This node's own files as a [`FileService`]: the export, called in-process.
//!
//! Local operations are a few syscalls on this node's file systems. They run
//! inline on the calling thread (a FUSE thread, see `fuse.rs`), which costs
//! less than any hand-off to another thread would.
use std::sync::Arc;

use async_trait::async_trait;
use mosix_proto::fs::{Attr, Creds, DirEntry, FsReply, FsRequest, RemoteFh, RemoteIno, SetAttr, StatFs};

use crate::error::{FsError, FsResult};
use crate::export::Export;
use crate::remote::{attr, data, fh, lock_range, unexpected, unit, xattr};
use crate::service::{At, FileService, Lock, LockInfo, Run, Xattr};

pub struct LocalService {
    export: Arc<Export>,
}

impl LocalService {
    pub fn new(export: Arc<Export>) -> Self {
        LocalService { export }
    }

    pub fn export(&self) -> &Arc<Export> {
        &self.export
    }

    fn check(&self, run: Run) -> FsResult<()> {
        if run == self.export.epoch() {
            Ok(())
        } else {
            Err(FsError::Stale)
        }
    }

    fn call(&self, at: &At, op: FsRequest) -> FsResult<FsReply> {
        self.check(at.run)?;
        self.export.handle(&at.creds, op).map_err(FsError::Os)
    }
}

#[async_trait]
impl FileService for LocalService {
    async fn root(&self, creds: &Creds) -> FsResult<(Run, Attr)> {
        let a = self
            .export
            .handle(creds, FsRequest::GetAttr { ino: mosix_proto::fs::ROOT_INO })
            .map_err(FsError::Os)
            .and_then(attr)?;
        Ok((self.export.epoch(), a))
    }

    async fn lookup(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<Attr> {
        self.call(at, FsRequest::Lookup { parent, name: name.to_vec() }).and_then(attr)
    }

    async fn forget(&self, run: Run, items: Vec<(RemoteIno, u64)>) -> FsResult<()> {
        self.check(run)?;
        self.export
            .handle(&Creds::default(), FsRequest::Forget { items })
            .map_err(FsError::Os)
            .map(|_| ())
    }

    async fn getattr(&self, at: &At, ino: RemoteIno) -> FsResult<Attr> {
        self.call(at, FsRequest::GetAttr { ino }).and_then(attr)
    }

    async fn setattr(&self, at: &At, ino: RemoteIno, set: SetAttr) -> FsResult<Attr> {
        self.call(at, FsRequest::SetAttr { ino, set }).and_then(attr)
    }

    async fn readlink(&self, at: &At, ino: RemoteIno) -> FsResult<Vec<u8>> {
        self.call(at, FsRequest::ReadLink { ino }).and_then(data)
    }

    async fn mknod(&self, at: &At, parent: RemoteIno, name: &[u8], mode: u32, rdev: u64, umask: u32) -> FsResult<Attr> {
        let op = FsRequest::Mknod { parent, name: name.to_vec(), mode, rdev, umask };
        self.call(at, op).and_then(attr)
    }

    async fn mkdir(&self, at: &At, parent: RemoteIno, name: &[u8], mode: u32, umask: u32) -> FsResult<Attr> {
        let op = FsRequest::Mkdir { parent, name: name.to_vec(), mode, umask };
        self.call(at, op).and_then(attr)
    }

    async fn unlink(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()> {
        self.call(at, FsRequest::Unlink { parent, name: name.to_vec() }).and_then(unit)
    }

    async fn rmdir(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()> {
        self.call(at, FsRequest::Rmdir { parent, name: name.to_vec() }).and_then(unit)
    }

    async fn symlink(&self, at: &At, parent: RemoteIno, name: &[u8], target: &[u8]) -> FsResult<Attr> {
        let op = FsRequest::Symlink { parent, name: name.to_vec(), target: target.to_vec() };
        self.call(at, op).and_then(attr)
    }

    async fn rename(&self, at: &At, parent: RemoteIno, name: &[u8], new_parent: RemoteIno, new_name: &[u8], flags: u32) -> FsResult<()> {
        let op = FsRequest::Rename { parent, name: name.to_vec(), new_parent, new_name: new_name.to_vec(), flags };
        self.call(at, op).and_then(unit)
    }

    async fn link(&self, at: &At, ino: RemoteIno, new_parent: RemoteIno, new_name: &[u8]) -> FsResult<Attr> {
        let op = FsRequest::Link { ino, new_parent, new_name: new_name.to_vec() };
        self.call(at, op).and_then(attr)
    }

    async fn open(&self, at: &At, ino: RemoteIno, flags: i32) -> FsResult<RemoteFh> {
        self.call(at, FsRequest::Open { ino, flags }).and_then(fh)
    }

    async fn create(&self, at: &At, parent: RemoteIno, name: &[u8], mode: u32, umask: u32, flags: i32) -> FsResult<(Attr, RemoteFh)> {
        let op = FsRequest::Create { parent, name: name.to_vec(), mode, umask, flags };
        match self.call(at, op)? {
            FsReply::Created { attr, fh } => Ok((attr, fh)),
            r => unexpected(r),
        }
    }

    async fn read(&self, at: &At, fh: RemoteFh, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.call(at, FsRequest::Read { fh, offset, size }).and_then(data)
    }

    async fn write(&self, at: &At, fh: RemoteFh, offset: u64, data: Vec<u8>) -> FsResult<u32> {
        match self.call(at, FsRequest::Write { fh, offset, data })? {
            FsReply::Written(n) => Ok(n),
            r => unexpected(r),
        }
    }

    async fn flush(&self, at: &At, fh: RemoteFh) -> FsResult<()> {
        self.call(at, FsRequest::Flush { fh }).and_then(unit)
    }

    async fn fsync(&self, at: &At, fh: RemoteFh, datasync: bool) -> FsResult<()> {
        self.call(at, FsRequest::Fsync { fh, datasync }).and_then(unit)
    }

    async fn release(&self, run: Run, fh: RemoteFh) {
        if self.check(run).is_ok() {
            let _ = self.export.handle(&Creds::default(), FsRequest::Release { fh });
        }
    }

    async fn opendir(&self, at: &At, ino: RemoteIno) -> FsResult<RemoteFh> {
        self.call(at, FsRequest::OpenDir { ino }).and_then(fh)
    }

    async fn readdir(&self, at: &At, fh: RemoteFh, offset: u64, size: u32) -> FsResult<Vec<DirEntry>> {
        match self.call(at, FsRequest::ReadDir { fh, offset, size })? {
            FsReply::Entries(e) => Ok(e),
            r => unexpected(r),
        }
    }

    async fn releasedir(&self, run: Run, fh: RemoteFh) {
        if self.check(run).is_ok() {
            let _ = self.export.handle(&Creds::default(), FsRequest::ReleaseDir { fh });
        }
    }

    async fn statfs(&self, at: &At, ino: RemoteIno) -> FsResult<StatFs> {
        match self.call(at, FsRequest::StatFs { ino })? {
            FsReply::StatFs(s) => Ok(s),
            r => unexpected(r),
        }
    }

    async fn setxattr(&self, at: &At, ino: RemoteIno, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        let op = FsRequest::SetXattr { ino, name: name.to_vec(), value: value.to_vec(), flags };
        self.call(at, op).and_then(unit)
    }

    async fn getxattr(&self, at: &At, ino: RemoteIno, name: &[u8], size: u32) -> FsResult<Xattr> {
        self.call(at, FsRequest::GetXattr { ino, name: name.to_vec(), size }).and_then(xattr)
    }

    async fn listxattr(&self, at: &At, ino: RemoteIno, size: u32) -> FsResult<Xattr> {
        self.call(at, FsRequest::ListXattr { ino, size }).and_then(xattr)
    }

    async fn removexattr(&self, at: &At, ino: RemoteIno, name: &[u8]) -> FsResult<()> {
        self.call(at, FsRequest::RemoveXattr { ino, name: name.to_vec() }).and_then(unit)
    }

    async fn fallocate(&self, at: &At, fh: RemoteFh, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        self.call(at, FsRequest::Fallocate { fh, offset, length, mode }).and_then(unit)
    }

    async fn getlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<LockInfo> {
        match self.call(at, FsRequest::GetLk { ino, lock: lock_range(lock) })? {
            FsReply::Lock { start, end, typ, pid } => Ok(LockInfo { start, end, typ, pid }),
            r => unexpected(r),
        }
    }

    async fn setlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<()> {
        self.call(at, FsRequest::SetLk { ino, lock: lock_range(lock) }).and_then(unit)
    }

    async fn access(&self, at: &At, ino: RemoteIno, mask: i32) -> FsResult<()> {
        self.call(at, FsRequest::Access { ino, mask }).and_then(unit)
    }
}
