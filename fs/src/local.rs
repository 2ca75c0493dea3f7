//! This node's own files as a [`FileService`]: the export, called in-process
//! with typed calls (no wire encoding).
//!
//! Local operations are a few syscalls on this node's file systems. They run
//! inline on the calling thread (a FUSE thread, see `fuse.rs`), which costs
//! less than any hand-off to another thread would.
use std::sync::Arc;

use async_trait::async_trait;
use mosix_proto::fs::{
    Attr, Creds, DirEntry, FsRequest as R, RemoteFh, RemoteIno, SetAttr, StatFs,
};

use crate::error::{FsError, FsResult};
use crate::export::Export;
use crate::service::{At, ClientId, FileService, Lock, LockInfo, Run, Who, Xattr};

pub struct LocalService {
    export: Arc<Export>,
    /// This node as a client of its own export: its handles, references and
    /// locks live in this session.
    client: ClientId,
}

impl LocalService {
    pub fn new(export: Arc<Export>, self_name: &str) -> Self {
        let client = ClientId {
            node: self_name.into(),
            run: export.epoch(),
        };
        LocalService { export, client }
    }

    pub fn export(&self) -> &Arc<Export> {
        &self.export
    }

    /// This node's caller with `creds`, as its own export knows it.
    pub fn who(&self, creds: Creds) -> Who {
        Who {
            client: self.client.clone(),
            creds,
        }
    }

    fn check(&self, run: Run) -> FsResult<()> {
        if run == self.export.epoch() {
            Ok(())
        } else {
            Err(FsError::Stale)
        }
    }

    /// [`Self::run`] for a change that other nodes' caches must not
    /// survive: their leases on what `op` changes are recalled first.
    fn change<T>(
        &self,
        at: &At,
        op: R,
        f: impl FnOnce(&Export, &Who) -> Result<T, i32>,
    ) -> FsResult<T> {
        self.run(at, |e, w| e.as_change(w, &op, || f(e, w)))
    }

    /// Runs `f` as the caller of `at`, if `at` names this export's run.
    fn run<T>(&self, at: &At, f: impl FnOnce(&Export, &Who) -> Result<T, i32>) -> FsResult<T> {
        self.check(at.run)?;
        f(&self.export, &self.who(at.creds.clone())).map_err(FsError::Os)
    }
}

#[async_trait]
impl FileService for LocalService {
    async fn root(&self, creds: &Creds) -> FsResult<(Run, Attr)> {
        let who = self.who(creds.clone());
        let a = self
            .export
            .getattr(&who, mosix_proto::fs::ROOT_INO)
            .map_err(FsError::Os)?;
        Ok((self.export.epoch(), a))
    }

    async fn lookup(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<Attr> {
        self.run(at, |e, w| e.lookup(w, parent, name))
    }

    async fn forget(&self, run: Run, items: Vec<(RemoteIno, u64)>) -> FsResult<()> {
        self.check(run)?;
        self.export.forget(&self.who(Creds::default()), &items);
        Ok(())
    }

    async fn getattr(&self, at: &At, ino: RemoteIno) -> FsResult<Attr> {
        self.run(at, |e, w| e.getattr(w, ino))
    }

    async fn setattr(&self, at: &At, ino: RemoteIno, set: SetAttr) -> FsResult<Attr> {
        self.change(
            at,
            R::SetAttr {
                ino,
                set: set.clone(),
            },
            |e, w| e.setattr(w, ino, &set),
        )
    }

    async fn readlink(&self, at: &At, ino: RemoteIno) -> FsResult<Vec<u8>> {
        self.run(at, |e, w| e.readlink(w, ino))
    }

    async fn mknod(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        rdev: u64,
        umask: u32,
    ) -> FsResult<Attr> {
        self.change(
            at,
            R::Mknod {
                parent,
                name: name.to_vec(),
                mode,
                rdev,
                umask,
            },
            |e, w| e.mknod(w, parent, name, mode, rdev, umask),
        )
    }

    async fn mkdir(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Attr> {
        self.change(
            at,
            R::Mkdir {
                parent,
                name: name.to_vec(),
                mode,
                umask,
            },
            |e, w| e.mkdir(w, parent, name, mode, umask),
        )
    }

    async fn unlink(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()> {
        self.change(
            at,
            R::Unlink {
                parent,
                name: name.to_vec(),
            },
            |e, w| e.unlink(w, parent, name),
        )
    }

    async fn rmdir(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()> {
        self.change(
            at,
            R::Rmdir {
                parent,
                name: name.to_vec(),
            },
            |e, w| e.rmdir(w, parent, name),
        )
    }

    async fn symlink(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Attr> {
        self.change(
            at,
            R::Symlink {
                parent,
                name: name.to_vec(),
                target: Vec::new(),
            },
            |e, w| e.symlink(w, parent, name, target),
        )
    }

    async fn rename(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        new_parent: RemoteIno,
        new_name: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        let op = R::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
        };
        self.change(at, op, |e, w| {
            e.rename(w, parent, name, new_parent, new_name, flags)
        })
    }

    async fn link(
        &self,
        at: &At,
        ino: RemoteIno,
        new_parent: RemoteIno,
        new_name: &[u8],
    ) -> FsResult<Attr> {
        self.change(
            at,
            R::Link {
                ino,
                new_parent,
                new_name: new_name.to_vec(),
            },
            |e, w| e.link(w, ino, new_parent, new_name),
        )
    }

    async fn open(&self, at: &At, ino: RemoteIno, flags: i32) -> FsResult<RemoteFh> {
        self.run(at, |e, w| e.open(w, ino, flags))
    }

    async fn create(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<(Attr, RemoteFh)> {
        self.change(
            at,
            R::Create {
                parent,
                name: name.to_vec(),
                mode,
                umask,
                flags,
            },
            |e, w| e.create(w, parent, name, mode, umask, flags),
        )
    }

    async fn read(&self, at: &At, fh: RemoteFh, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.run(at, |e, w| e.read(w, fh, offset, size))
    }

    async fn write(&self, at: &At, fh: RemoteFh, offset: u64, data: Vec<u8>) -> FsResult<u32> {
        self.change(
            at,
            R::Write {
                fh,
                offset,
                data: Vec::new(),
            },
            |e, w| e.write(w, fh, offset, &data),
        )
    }

    async fn flush(&self, at: &At, fh: RemoteFh) -> FsResult<()> {
        self.run(at, |e, w| e.flush(w, fh))
    }

    async fn fsync(&self, at: &At, fh: RemoteFh, datasync: bool) -> FsResult<()> {
        self.run(at, |e, w| e.fsync(w, fh, datasync))
    }

    async fn release(&self, run: Run, fh: RemoteFh) {
        if self.check(run).is_ok() {
            let _ = self.export.release(&self.who(Creds::default()), fh);
        }
    }

    async fn opendir(&self, at: &At, ino: RemoteIno) -> FsResult<RemoteFh> {
        self.run(at, |e, w| e.opendir(w, ino))
    }

    async fn readdir(
        &self,
        at: &At,
        fh: RemoteFh,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<DirEntry>> {
        self.run(at, |e, w| e.readdir(w, fh, offset, size))
    }

    async fn releasedir(&self, run: Run, fh: RemoteFh) {
        if self.check(run).is_ok() {
            let _ = self.export.releasedir(&self.who(Creds::default()), fh);
        }
    }

    async fn statfs(&self, at: &At, ino: RemoteIno) -> FsResult<StatFs> {
        self.run(at, |e, w| e.statfs(w, ino))
    }

    async fn setxattr(
        &self,
        at: &At,
        ino: RemoteIno,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        self.change(
            at,
            R::SetXattr {
                ino,
                name: Vec::new(),
                value: Vec::new(),
                flags,
            },
            |e, w| e.setxattr(w, ino, name, value, flags),
        )
    }

    async fn getxattr(&self, at: &At, ino: RemoteIno, name: &[u8], size: u32) -> FsResult<Xattr> {
        self.run(at, |e, w| e.getxattr(w, ino, name, size))
    }

    async fn listxattr(&self, at: &At, ino: RemoteIno, size: u32) -> FsResult<Xattr> {
        self.run(at, |e, w| e.listxattr(w, ino, size))
    }

    async fn removexattr(&self, at: &At, ino: RemoteIno, name: &[u8]) -> FsResult<()> {
        self.change(
            at,
            R::RemoveXattr {
                ino,
                name: Vec::new(),
            },
            |e, w| e.removexattr(w, ino, name),
        )
    }

    async fn fallocate(
        &self,
        at: &At,
        fh: RemoteFh,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()> {
        self.change(
            at,
            R::Fallocate {
                fh,
                offset,
                length,
                mode,
            },
            |e, w| e.fallocate(w, fh, offset, length, mode),
        )
    }

    async fn getlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<LockInfo> {
        self.run(at, |e, w| e.getlk(w, ino, lock))
    }

    async fn setlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<()> {
        self.run(at, |e, w| e.setlk(w, ino, lock))
    }

    async fn access(&self, at: &At, ino: RemoteIno, mask: i32) -> FsResult<()> {
        self.run(at, |e, w| e.access(w, ino, mask))
    }
}
