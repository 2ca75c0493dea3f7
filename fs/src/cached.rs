//! The client half of coherent caching: a [`FileService`] decorator over
//! another node's [`RemoteService`] that lets this node's kernel keep what
//! it read while the serving node's lease says nobody else can change it.
//!
//! What is cached where:
//! * **The kernel**: attributes, for as long as the
//!   lease is confirmed ([`FileService::kernel_ttl`], at most `LEASE_TERM`
//!   after the request that confirmed it was sent), and file data in the
//!   page cache across opens (`FOPEN_KEEP_CACHE`) for an open granted a
//!   cached lease. An open without one (the file is write-shared with
//!   another node, Sprite's rule) is `FOPEN_DIRECT_IO`: every read goes to
//!   the serving node.
//! * **Here**: attributes, in an LRU bounded by the configured memory, so a
//!   getattr the kernel asks again is answered without the network while
//!   the lease is confirmed.
//!
//! Names are not given a kernel lifetime: taking one back (an entry
//! invalidation) needs the directory's lock on this node, which a create or
//! rename here holds while it waits at the serving node for that very
//! recall to finish; every lookup asks the serving node (one round trip,
//! which also renews the lease on what it finds).
//!
//! A recall ([`ClientCaches::recall`]) stops local answers at once, queues
//! the kernel's invalidations on the invalidation thread, waits on its
//! barrier (off the FUSE threads: invalidating from a handler deadlocks),
//! and only then answers. Writes always go to the serving node
//! (write-behind is not done), so there is never dirty data to flush.
//!
//! The sans-IO rules (which answer is local, what a recall requires) are
//! `mosix_cache::client::ClientCache`; this is its wiring.
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lru::LruCache;
use mosix_cache::client::{Answer, ClientAction, ClientCache};
use mosix_cache::wire::Recall;
use mosix_cache::{Epoch, Grant, Mode};
use mosix_proto::fs::{Attr, Creds, DirEntry, RemoteFh, RemoteIno, SetAttr, StatFs};

use crate::error::FsResult;
use crate::remote::{Grants, RemoteService, Transport};
use crate::service::{At, FileService, Lock, LockInfo, OpenCache, Run, Xattr};

/// Roughly what one cached attribute or name costs, for the memory limit.
const ENTRY_BYTES: usize = 256;

/// The kernel's caches of other nodes' files (the namespace, which knows
/// their inode numbers there).
pub trait KernelCache: Send + Sync + 'static {
    /// Queue the kernel's invalidation of `file` (attributes and data) of
    /// run `run` of `node`, and of the names `names` in it.
    fn drop_file(&self, node: &str, run: Run, file: RemoteIno, names: Vec<Vec<u8>>);
    /// Same, for a byte range of `file`'s data only.
    fn drop_range(&self, node: &str, run: Run, file: RemoteIno, offset: u64, len: u64);
    /// Wait until everything queued has reached the kernel.
    fn barrier(&self);
}

type Kernel = Arc<OnceLock<Weak<dyn KernelCache>>>;

struct State {
    /// The serving run the leases were granted by: another run holds
    /// nothing of ours.
    run: Option<Run>,
    leases: ClientCache<RemoteIno>,
    attrs: LruCache<RemoteIno, Attr>,
    /// Names handed to the kernel with a lifetime, per directory.
    names: LruCache<RemoteIno, HashMap<Vec<u8>, RemoteIno>>,
    /// Recalls that arrived before the reply granting their lease: that
    /// grant is void when it comes.
    early: LruCache<(RemoteIno, Epoch), ()>,
    /// Open handles: on which file, and how the kernel caches its data.
    opens: HashMap<RemoteFh, (RemoteIno, OpenCache)>,
    /// The lease epoch the kernel's pages of a file were read under: an
    /// open keeps them only under that same epoch. Pages read under another
    /// (or under none: an open that outlived its lease) are dropped by the
    /// open itself, before it returns.
    pages: LruCache<RemoteIno, Epoch>,
}

impl State {
    fn new(capacity: NonZeroUsize) -> State {
        State {
            run: None,
            leases: ClientCache::new(),
            attrs: LruCache::new(capacity),
            names: LruCache::new(capacity),
            early: LruCache::new(NonZeroUsize::new(1024).expect("nonzero")),
            opens: HashMap::new(),
            pages: LruCache::new(capacity),
        }
    }

    fn forget(&mut self, file: RemoteIno) -> Vec<Vec<u8>> {
        self.attrs.pop(&file);
        self.names
            .pop(&file)
            .map(|m| m.into_keys().collect())
            .unwrap_or_default()
    }
}

/// What this node holds of one serving node's files.
pub struct NodeCache {
    node: String,
    origin: Instant,
    state: Mutex<State>,
    kernel: Kernel,
}

impl NodeCache {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kernel(&self) -> Option<Arc<dyn KernelCache>> {
        self.kernel.get().and_then(Weak::upgrade)
    }

    fn local(&self, s: &State, file: RemoteIno) -> bool {
        s.leases.answer_read(file, self.now()) == Answer::Local
    }

    /// How long the kernel may keep `file`'s attributes (and a directory's
    /// names) from now.
    fn ttl(&self, s: &State, file: RemoteIno) -> Duration {
        if !self.local(s, file) {
            return Duration::ZERO;
        }
        s.leases
            .confirmed_until(file)
            .map_or(Duration::ZERO, |t| t.saturating_sub(self.now()))
    }

    /// Carries out what the lease rules asked, but waiting (the barrier):
    /// that is for recalls only.
    fn invalidate(&self, run: Run, file: RemoteIno, names: Vec<Vec<u8>>) {
        if let Some(k) = self.kernel() {
            k.drop_file(&self.node, run, file, names);
        }
    }

    /// Answers the recall of `file` under `epoch`: once the kernel has
    /// dropped what it had, the serving node may let the change go on.
    async fn recall(self: &Arc<Self>, run: Run, file: RemoteIno, epoch: Epoch) {
        let (actions, names) = {
            let mut s = self.state();
            if s.run != Some(run) {
                return;
            }
            let held = s.leases.lease(file).is_some_and(|g| g.epoch == epoch);
            if !held {
                s.early.put((file, epoch), ());
            }
            let actions = s.leases.on_recall(&Recall { file, epoch });
            s.pages.pop(&file);
            (actions, s.forget(file))
        };
        let mut names = Some(names);
        for a in actions {
            match a {
                ClientAction::Invalidate { file } => {
                    self.invalidate(run, file, names.take().unwrap_or_default())
                }
                ClientAction::Barrier => {
                    if let Some(k) = self.kernel() {
                        let _ = tokio::task::spawn_blocking(move || k.barrier()).await;
                    }
                }
                ClientAction::Ack(done) => {
                    self.state().leases.recall_answered(done.file, done.epoch);
                }
                // Nothing is ever written behind: no dirty data to flush
                // or discard, and no lease is asked for again unasked.
                ClientAction::Flush { .. }
                | ClientAction::Discard { .. }
                | ClientAction::AskAgain { .. } => {}
            }
        }
    }
}

impl Grants for NodeCache {
    fn granted(&self, run: Run, grants: &[(RemoteIno, Grant)], sent: Instant) {
        let sent = sent.saturating_duration_since(self.origin);
        let mut dropped = Vec::new();
        {
            let mut s = self.state();
            if s.run != Some(run) {
                // A new run of the serving node: nothing of the old one is
                // held (its slot in the namespace is retired anyway).
                let cap = s.attrs.cap();
                *s = State::new(cap);
                s.run = Some(run);
            }
            for &(file, g) in grants {
                let g = if s.early.pop(&(file, g.epoch)).is_some() {
                    Grant {
                        mode: Mode::Uncached,
                        epoch: g.epoch,
                    }
                } else {
                    g
                };
                for a in s.leases.granted(file, g, sent) {
                    if let ClientAction::Invalidate { file } = a {
                        dropped.push((file, s.forget(file)));
                    }
                }
                if g.mode == Mode::Uncached {
                    s.forget(file);
                }
            }
        }
        for (file, names) in dropped {
            self.invalidate(run, file, names);
        }
    }
}

/// Every serving node's [`NodeCache`] on this node.
pub struct ClientCaches {
    nodes: Mutex<HashMap<String, Arc<NodeCache>>>,
    kernel: Kernel,
    capacity: NonZeroUsize,
}

impl ClientCaches {
    /// Caches bounded to about `memory` bytes per serving node.
    pub fn new(memory: usize) -> Arc<ClientCaches> {
        Arc::new(ClientCaches {
            nodes: Mutex::default(),
            kernel: Arc::default(),
            capacity: NonZeroUsize::new((memory / ENTRY_BYTES).max(16)).expect("nonzero"),
        })
    }

    /// Where invalidations go (the mounted namespace).
    pub fn attach(&self, kernel: Weak<dyn KernelCache>) {
        let _ = self.kernel.set(kernel);
    }

    fn node(&self, node: &str) -> Arc<NodeCache> {
        let mut m = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(node.to_string())
            .or_insert_with(|| {
                Arc::new(NodeCache {
                    node: node.to_string(),
                    origin: Instant::now(),
                    state: Mutex::new(State::new(self.capacity)),
                    kernel: self.kernel.clone(),
                })
            })
            .clone()
    }

    /// `node`'s files through its cache.
    pub fn service(&self, node: &str, transport: Arc<dyn Transport>) -> Arc<dyn FileService> {
        let cache = self.node(node);
        Arc::new(CachedService {
            inner: RemoteService::new(node.to_string(), transport).with_grants(cache.clone()),
            cache,
        })
    }

    /// Serving node `node` (as run `server_run`) recalls our lease on
    /// `file` under `epoch`. Returns once nothing of it is cached here.
    pub async fn recall(&self, node: &str, server_run: Run, file: RemoteIno, epoch: Epoch) {
        let cache = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .cloned();
        if let Some(c) = cache {
            c.recall(server_run, file, epoch).await;
        }
    }
}

/// One serving node's files, cached under its leases.
pub struct CachedService {
    inner: RemoteService,
    cache: Arc<NodeCache>,
}

impl CachedService {
    fn keep_attr(&self, a: &Attr) {
        let mut s = self.cache.state();
        if self.cache.local(&s, a.ino) {
            s.attrs.put(a.ino, a.clone());
        } else {
            s.attrs.pop(&a.ino);
        }
    }

    /// A change made through this node: what was cached of `files` here is
    /// out of date (the kernel drops its own copy itself).
    fn changed(&self, files: &[RemoteIno]) {
        let mut s = self.cache.state();
        for f in files {
            s.attrs.pop(f);
        }
    }

    fn changed_name(&self, parent: RemoteIno, name: &[u8]) {
        let mut s = self.cache.state();
        s.attrs.pop(&parent);
        let child = s.names.get_mut(&parent).and_then(|m| m.remove(name));
        if let Some(c) = child {
            s.attrs.pop(&c);
        }
    }

    fn file_of(&self, fh: RemoteFh) -> Option<(RemoteIno, OpenCache)> {
        self.cache.state().opens.get(&fh).copied()
    }

    /// How the kernel may cache the new open `fh` of `ino`: through the
    /// page cache under a cached lease, keeping the pages it has only if
    /// they were read under this very lease.
    fn opened(&self, ino: RemoteIno, fh: RemoteFh) {
        let mut s = self.cache.state();
        let lease = s.leases.lease(ino).filter(|_| self.cache.local(&s, ino));
        let cache = match lease {
            Some(g) if s.pages.get(&ino) == Some(&g.epoch) => OpenCache::Keep,
            Some(g) => {
                s.pages.put(ino, g.epoch);
                OpenCache::Plain
            }
            None => {
                s.pages.pop(&ino);
                OpenCache::Direct
            }
        };
        s.opens.insert(fh, (ino, cache));
    }
}

#[async_trait]
impl FileService for CachedService {
    async fn root(&self, creds: &Creds) -> FsResult<(Run, Attr)> {
        self.inner.root(creds).await
    }

    async fn lookup(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<Attr> {
        let a = self.inner.lookup(at, parent, name).await?;
        self.keep_attr(&a);
        Ok(a)
    }

    async fn forget(&self, run: Run, items: Vec<(RemoteIno, u64)>) -> FsResult<()> {
        self.inner.forget(run, items).await
    }

    async fn getattr(&self, at: &At, ino: RemoteIno) -> FsResult<Attr> {
        {
            let mut s = self.cache.state();
            if s.run == Some(at.run) && self.cache.local(&s, ino) {
                if let Some(a) = s.attrs.get(&ino) {
                    return Ok(a.clone());
                }
            }
        }
        let a = self.inner.getattr(at, ino).await?;
        self.keep_attr(&a);
        Ok(a)
    }

    async fn setattr(&self, at: &At, ino: RemoteIno, set: SetAttr) -> FsResult<Attr> {
        self.changed(&[ino]);
        let r = self.inner.setattr(at, ino, set).await;
        self.changed(&[ino]);
        r
    }

    async fn readlink(&self, at: &At, ino: RemoteIno) -> FsResult<Vec<u8>> {
        self.inner.readlink(at, ino).await
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
        let r = self.inner.mknod(at, parent, name, mode, rdev, umask).await;
        self.changed_name(parent, name);
        r
    }

    async fn mkdir(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> FsResult<Attr> {
        let r = self.inner.mkdir(at, parent, name, mode, umask).await;
        self.changed_name(parent, name);
        r
    }

    async fn unlink(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()> {
        let r = self.inner.unlink(at, parent, name).await;
        self.changed_name(parent, name);
        r
    }

    async fn rmdir(&self, at: &At, parent: RemoteIno, name: &[u8]) -> FsResult<()> {
        let r = self.inner.rmdir(at, parent, name).await;
        self.changed_name(parent, name);
        r
    }

    async fn symlink(
        &self,
        at: &At,
        parent: RemoteIno,
        name: &[u8],
        target: &[u8],
    ) -> FsResult<Attr> {
        let r = self.inner.symlink(at, parent, name, target).await;
        self.changed_name(parent, name);
        r
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
        let r = self
            .inner
            .rename(at, parent, name, new_parent, new_name, flags)
            .await;
        self.changed_name(parent, name);
        self.changed_name(new_parent, new_name);
        r
    }

    async fn link(
        &self,
        at: &At,
        ino: RemoteIno,
        new_parent: RemoteIno,
        new_name: &[u8],
    ) -> FsResult<Attr> {
        let r = self.inner.link(at, ino, new_parent, new_name).await;
        self.changed(&[ino]);
        self.changed_name(new_parent, new_name);
        r
    }

    async fn open(&self, at: &At, ino: RemoteIno, flags: i32) -> FsResult<RemoteFh> {
        let fh = self.inner.open(at, ino, flags).await?;
        self.opened(ino, fh);
        if flags & libc::O_TRUNC != 0 {
            self.changed(&[ino]);
        }
        Ok(fh)
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
        let r = self
            .inner
            .create(at, parent, name, mode, umask, flags)
            .await;
        self.changed_name(parent, name);
        let (a, fh) = r?;
        self.opened(a.ino, fh);
        self.keep_attr(&a);
        Ok((a, fh))
    }

    async fn read(&self, at: &At, fh: RemoteFh, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let data = self.inner.read(at, fh, offset, size).await?;
        if let Some((file, OpenCache::Keep | OpenCache::Plain)) = self.file_of(fh) {
            let s = self.cache.state();
            if !self.cache.local(&s, file) {
                drop(s);
                // An open that kept pages, whose lease has gone since (the
                // file became write-shared while it stayed open): the
                // kernel must not keep what it reads now. Dropped just
                // after the reply; see docs/SEMANTICS.md for the window.
                if let Some(k) = self.cache.kernel() {
                    k.drop_range(&self.cache.node, at.run, file, offset, size as u64);
                }
            }
        }
        Ok(data)
    }

    async fn write(&self, at: &At, fh: RemoteFh, offset: u64, data: Vec<u8>) -> FsResult<u32> {
        let r = self.inner.write(at, fh, offset, data).await;
        if let Some((file, _)) = self.file_of(fh) {
            self.changed(&[file]);
        }
        r
    }

    async fn flush(&self, at: &At, fh: RemoteFh) -> FsResult<()> {
        self.inner.flush(at, fh).await
    }

    async fn fsync(&self, at: &At, fh: RemoteFh, datasync: bool) -> FsResult<()> {
        self.inner.fsync(at, fh, datasync).await
    }

    async fn release(&self, run: Run, fh: RemoteFh) {
        self.cache.state().opens.remove(&fh);
        self.inner.release(run, fh).await
    }

    async fn opendir(&self, at: &At, ino: RemoteIno) -> FsResult<RemoteFh> {
        self.inner.opendir(at, ino).await
    }

    async fn readdir(
        &self,
        at: &At,
        fh: RemoteFh,
        offset: u64,
        size: u32,
    ) -> FsResult<Vec<DirEntry>> {
        self.inner.readdir(at, fh, offset, size).await
    }

    async fn releasedir(&self, run: Run, fh: RemoteFh) {
        self.inner.releasedir(run, fh).await
    }

    async fn statfs(&self, at: &At, ino: RemoteIno) -> FsResult<StatFs> {
        self.inner.statfs(at, ino).await
    }

    async fn setxattr(
        &self,
        at: &At,
        ino: RemoteIno,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        let r = self.inner.setxattr(at, ino, name, value, flags).await;
        self.changed(&[ino]);
        r
    }

    async fn getxattr(&self, at: &At, ino: RemoteIno, name: &[u8], size: u32) -> FsResult<Xattr> {
        self.inner.getxattr(at, ino, name, size).await
    }

    async fn listxattr(&self, at: &At, ino: RemoteIno, size: u32) -> FsResult<Xattr> {
        self.inner.listxattr(at, ino, size).await
    }

    async fn removexattr(&self, at: &At, ino: RemoteIno, name: &[u8]) -> FsResult<()> {
        let r = self.inner.removexattr(at, ino, name).await;
        self.changed(&[ino]);
        r
    }

    async fn fallocate(
        &self,
        at: &At,
        fh: RemoteFh,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> FsResult<()> {
        let r = self.inner.fallocate(at, fh, offset, length, mode).await;
        if let Some((file, _)) = self.file_of(fh) {
            self.changed(&[file]);
        }
        r
    }

    async fn getlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<LockInfo> {
        self.inner.getlk(at, ino, lock).await
    }

    async fn setlk(&self, at: &At, ino: RemoteIno, lock: Lock) -> FsResult<()> {
        self.inner.setlk(at, ino, lock).await
    }

    async fn access(&self, at: &At, ino: RemoteIno, mask: i32) -> FsResult<()> {
        self.inner.access(at, ino, mask).await
    }

    fn kernel_ttl(&self, run: Run, ino: RemoteIno) -> Duration {
        let s = self.cache.state();
        if s.run != Some(run) {
            return Duration::ZERO;
        }
        self.cache.ttl(&s, ino)
    }

    fn open_cache(&self, fh: RemoteFh) -> OpenCache {
        self.file_of(fh).map_or(OpenCache::Direct, |(_, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Recaller;
    use crate::faulty::Loopback;
    use crate::service::ClientId;

    /// Recalls go nowhere: these tests play the holder's side by hand.
    struct Silent;
    impl Recaller for Silent {
        fn recall(&self, _: &ClientId, _: u64, _: mosix_cache::wire::Recall<RemoteIno>) {}
    }

    struct Setup {
        caches: Arc<ClientCaches>,
        svc: Arc<dyn FileService>,
        at: At,
        file: RemoteIno,
        _dir: tempfile::TempDir,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"one\n").unwrap();
        let export = crate::tests::export(dir.path());
        export.set_recaller(Arc::new(Silent));
        let caches = ClientCaches::new(1 << 20);
        let svc = caches.service("n1", Arc::new(Loopback::new(export, "n2")));
        let (run, root) = svc.root(&Creds::default()).await.unwrap();
        let at = At {
            run,
            creds: Creds::default(),
        };
        let file = svc.lookup(&at, root.ino, b"f").await.unwrap().ino;
        Setup {
            caches,
            svc,
            at,
            file,
            _dir: dir,
        }
    }

    impl Setup {
        async fn open(&self) -> (RemoteFh, OpenCache) {
            let fh = self
                .svc
                .open(&self.at, self.file, libc::O_RDONLY)
                .await
                .unwrap();
            (fh, self.svc.open_cache(fh))
        }

        fn epoch(&self) -> Epoch {
            let n = self.caches.node("n1");
            let s = n.state();
            s.leases.lease(self.file).expect("a lease").epoch
        }
    }

    /// Pages are kept across opens only under the lease they were read
    /// under: once it was recalled (pages read meanwhile by an open that
    /// outlived it are nobody's), the next open drops them.
    #[tokio::test]
    async fn an_open_keeps_pages_only_from_its_own_lease() {
        let t = setup().await;
        let (fh, first) = t.open().await;
        assert_eq!(first, OpenCache::Plain, "nothing known of the pages yet");
        t.svc.release(t.at.run, fh).await;
        let (fh, again) = t.open().await;
        assert_eq!(again, OpenCache::Keep, "same lease: pages kept");
        t.svc.release(t.at.run, fh).await;
        let epoch = t.epoch();
        t.caches.recall("n1", t.at.run, t.file, epoch).await;
        let (_, after) = t.open().await;
        assert_eq!(
            after,
            OpenCache::Plain,
            "pages from before the recall are dropped"
        );
    }
}
