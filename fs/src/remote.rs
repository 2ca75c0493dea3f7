//! Another node's files as a [`FileService`]: each typed call becomes one
//! wire request ([`FsRequest`]) sent through a [`Transport`], and its
//! [`FsReply`] is decoded here, the one place on the client side.
//!
//! The transport is the daemon's QUIC connections in production, and an
//! in-process loop to a real [`crate::export::Export`] in tests, so the
//! namespace's failure handling is tested without a cluster.
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use mosix_proto::fs::{
    Attr, Creds, DirEntry, FsReply, FsRequest, RemoteFh, RemoteIno, SetAttr, StatFs,
};

use crate::error::{FsError, FsResult};
use crate::service::{At, FileService, Lock, LockInfo, Run, Xattr};

/// One file request on its way to a node.
#[derive(Debug, Clone)]
pub struct FsCall {
    pub creds: Creds,
    pub op: FsRequest,
    /// The serving run the ids in `op` come from (None: only the export
    /// root is named): the serving node refuses another with `ESTALE`
    /// before doing anything.
    pub epoch: Option<Run>,
}

/// How file requests reach other nodes. Fails with why the node could not
/// be asked ([`FsError::NodeDown`], [`FsError::NoSuchNode`],
/// [`FsError::Transport`]); otherwise returns the serving run and the
/// operation's own outcome.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn fs(&self, node: &str, call: FsCall) -> FsResult<(Run, mosix_proto::fs::FsResult)>;
}

/// Told about the leases the serving node grants in its replies (the
/// caching decorator, `cached.rs`), before the reply is used.
pub trait Grants: Send + Sync + 'static {
    /// `sent`: when the request that got them was sent (a lease is
    /// confirmed from then, not from its arrival).
    fn granted(&self, run: Run, grants: &[(RemoteIno, mosix_proto::lease::Grant)], sent: Instant);
}

pub struct RemoteService {
    node: String,
    transport: Arc<dyn Transport>,
    grants: Option<Arc<dyn Grants>>,
}

impl RemoteService {
    pub fn new(node: String, transport: Arc<dyn Transport>) -> Self {
        RemoteService {
            node,
            transport,
            grants: None,
        }
    }

    /// Hands the leases granted in replies to `grants`.
    pub fn with_grants(mut self, grants: Arc<dyn Grants>) -> Self {
        self.grants = Some(grants);
        self
    }

    async fn send(
        &self,
        creds: Creds,
        op: FsRequest,
        epoch: Option<Run>,
    ) -> FsResult<(Run, FsReply)> {
        let sent = Instant::now();
        let (run, result) = self
            .transport
            .fs(&self.node, FsCall { creds, op, epoch })
            .await?;
        if epoch.is_some_and(|e| e != run) {
            // Another run of the node answered: the ids we sent mean
            // nothing to it.
            return Err(FsError::Stale);
        }
        match result.map_err(FsError::Os)? {
            FsReply::Leased { grants, reply } => {
                if let Some(g) = &self.grants {
                    g.granted(run, &grants, sent);
                }
                Ok((run, *reply))
            }
            reply => Ok((run, reply)),
        }
    }

    async fn call(&self, at: &At, op: FsRequest) -> FsResult<FsReply> {
        Ok(self.send(at.creds.clone(), op, Some(at.run)).await?.1)
    }
}

fn unexpected<T>(r: FsReply) -> FsResult<T> {
    Err(FsError::Transport(format!("unexpected reply {r:?}")))
}

fn attr(r: FsReply) -> FsResult<Attr> {
    match r {
        FsReply::Entry(a) | FsReply::Attr(a) => Ok(a),
        r => unexpected(r),
    }
}

fn unit(_: FsReply) -> FsResult<()> {
    Ok(())
}

fn xattr(r: FsReply) -> FsResult<Xattr> {
    match r {
        FsReply::XattrSize(n) => Ok(Xattr::Size(n)),
        FsReply::Data(d) => Ok(Xattr::Data(d)),
        r => unexpected(r),
    }
}

fn fh(r: FsReply) -> FsResult<RemoteFh> {
    match r {
        FsReply::Opened { fh } => Ok(fh),
        r => unexpected(r),
    }
}

fn data(r: FsReply) -> FsResult<Vec<u8>> {
    match r {
        FsReply::Data(d) => Ok(d),
        r => unexpected(r),
    }
}

fn lock_range(l: Lock) -> mosix_proto::fs::LockRange {
    mosix_proto::fs::LockRange {
        owner: l.owner,
        start: l.start,
        end: l.end,
        typ: l.typ,
        pid: l.pid,
    }
}

#[async_trait]
impl FileService for RemoteService {
    async fn root(&self, creds: &Creds) -> FsResult<(Run, Attr)> {
        let op = FsRequest::GetAttr {
            ino: mosix_proto::fs::ROOT_INO,
        };
        let (run, reply) = self.send(creds.clone(), op, None).await?;
        Ok((run, attr(reply)?))
    }

    async fn lookup(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<Attr> {
        self.call(
            at,
            FsRequest::Lookup {
                parent,
                name: name.to_vec(),
            },
        )
        .await
        .and_then(attr)
    }

    async fn forget(&self, run: Run, items: Vec<(RemoteIno, u64)>) -> FsResult<()> {
        self.send(Creds::default(), FsRequest::Forget { items }, Some(run))
            .await
            .map(|_| ())
    }

    async fn getattr(&self, at: &At, ino: RemoteIno) -> FsResult<Attr> {
        self.call(at, FsRequest::GetAttr { ino })
            .await
            .and_then(attr)
    }

    async fn setattr(&self, at: &At, ino: RemoteIno, set: SetAttr) -> FsResult<Attr> {
        self.call(at, FsRequest::SetAttr { ino, set })
            .await
            .and_then(attr)
    }

    async fn readlink(&self, at: &At, ino: RemoteIno) -> FsResult<Vec<u8>> {
        self.call(at, FsRequest::ReadLink { ino })
            .await
            .and_then(data)
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
        let op = FsRequest::Mknod {
            parent,
            name: name.to_vec(),
            mode,
            rdev,
            umask,
        };
        self.call(at, op).await.and_then(attr)
    }

    async fn mkdir(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Attr> {
        let op = FsRequest::Mkdir {
            parent,
            name: name.to_vec(),
            mode,
            umask,
        };
        self.call(at, op).await.and_then(attr)
    }

    async fn unlink(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()> {
        self.call(
            at,
            FsRequest::Unlink {
                parent,
                name: name.to_vec(),
            },
        )
        .await
        .and_then(unit)
    }

    async fn rmdir(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()> {
        self.call(
            at,
            FsRequest::Rmdir {
                parent,
                name: name.to_vec(),
            },
        )
        .await
        .and_then(unit)
    }

    async fn symlink(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Attr> {
        let op = FsRequest::Symlink {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
        };
        self.call(at, op).await.and_then(attr)
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
        let op = FsRequest::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
        };
        self.call(at, op).await.and_then(unit)
    }

    async fn link(
        &self,
        at: &At,
        ino: RemoteIno,
        new_parent: RemoteIno,
        new_name: &[u8],
    ) -> FsResult<Attr> {
        let op = FsRequest::Link {
            ino,
            new_parent,
            new_name: new_name.to_vec(),
        };
        self.call(at, op).await.and_then(attr)
    }

    async fn open(&self, at: &At, ino: RemoteIno, flags: i32) -> FsResult<RemoteFh> {
        self.call(at, FsRequest::Open { ino, flags })
            .await
            .and_then(fh)
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
        let op = FsRequest::Create {
            parent,
            name: name.to_vec(),
            mode,
            umask,
            flags,
        };
        match self.call(at, op).await? {
            FsReply::Created { attr, fh } => Ok((attr, fh)),
            r => unexpected(r),
        }
    }

    async fn read(&self, at: &At, fh: RemoteFh, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.call(at, FsRequest::Read { fh, offset, size })
            .await
            .and_then(data)
    }

    async fn write(&self, at: &At, fh: RemoteFh, offset: u64, data: Vec<u8>) -> FsResult<u32> {
        match self.call(at, FsRequest::Write { fh, offset, data }).await? {
            FsReply::Written(n) => Ok(n),
            r => unexpected(r),
        }
    }

    async fn flush(&self, at: &At, fh: RemoteFh) -> FsResult<()> {
        self.call(at, FsRequest::Flush { fh }).await.and_then(unit)
    }

    async fn fsync(&self, at: &At, fh: RemoteFh, datasync: bool) -> FsResult<()> {
        self.call(at, FsRequest::Fsync { fh, datasync })
            .await
            .and_then(unit)
    }

    async fn release(&self, run: Run, fh: RemoteFh) {
        let _ = self
            .send(Creds::default(), FsRequest::Release { fh }, Some(run))
            .await;
    }

    async fn opendir(&self, at: &At, ino: RemoteIno) -> FsResult<RemoteFh> {
        self.call(at, FsRequest::OpenDir { ino }).await.and_then(fh)
    }

    async fn readdir(
        &self,
        at: &At,
        fh: RemoteFh,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<DirEntry>> {
        match self
            .call(at, FsRequest::ReadDir { fh, offset, size })
            .await?
        {
            FsReply::Entries(e) => Ok(e),
            r => unexpected(r),
        }
    }

    async fn releasedir(&self, run: Run, fh: RemoteFh) {
        let _ = self
            .send(Creds::default(), FsRequest::ReleaseDir { fh }, Some(run))
            .await;
    }

    async fn statfs(&self, at: &At, ino: RemoteIno) -> FsResult<StatFs> {
        match self.call(at, FsRequest::StatFs { ino }).await? {
            FsReply::StatFs(s) => Ok(s),
            r => unexpected(r),
        }
    }

    async fn setxattr(
        &self,
        at: &At,
        ino: RemoteIno,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        let op = FsRequest::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        };
        self.call(at, op).await.and_then(unit)
    }

    async fn getxattr(&self, at: &At, ino: RemoteIno, name: &[u8], size: u32) -> FsResult<Xattr> {
        self.call(
            at,
            FsRequest::GetXattr {
                ino,
                name: name.to_vec(),
                size,
            },
        )
        .await
        .and_then(xattr)
    }

    async fn listxattr(&self, at: &At, ino: RemoteIno, size: u32) -> FsResult<Xattr> {
        self.call(at, FsRequest::ListXattr { ino, size })
            .await
            .and_then(xattr)
    }

    async fn removexattr(&self, at: &At, ino: RemoteIno, name: &[u8]) -> FsResult<()> {
        self.call(
            at,
            FsRequest::RemoveXattr {
                ino,
                name: name.to_vec(),
            },
        )
        .await
        .and_then(unit)
    }

    async fn fallocate(
        &self,
        at: &At,
        fh: RemoteFh,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()> {
        self.call(
            at,
            FsRequest::Fallocate {
                fh,
                offset,
                length,
                mode,
            },
        )
        .await
        .and_then(unit)
    }

    async fn getlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<LockInfo> {
        match self
            .call(
                at,
                FsRequest::GetLk {
                    ino,
                    lock: lock_range(lock),
                },
            )
            .await?
        {
            FsReply::Lock {
                start,
                end,
                typ,
                pid,
            } => Ok(LockInfo {
                start,
                end,
                typ,
                pid,
            }),
            r => unexpected(r),
        }
    }

    async fn setlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<()> {
        self.call(
            at,
            FsRequest::SetLk {
                ino,
                lock: lock_range(lock),
            },
        )
        .await
        .and_then(unit)
    }

    async fn access(&self, at: &At, ino: RemoteIno, mask: i32) -> FsResult<()> {
        self.call(at, FsRequest::Access { ino, mask })
            .await
            .and_then(unit)
    }
}
