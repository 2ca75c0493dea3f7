//! Leases on this node's files for the client nodes that cache them: the
//! serving half of coherent caching (`cache/README.md` has the rules).
//!
//! The table itself is `mosix_cache::lease::LeaseTable`, sans-IO; this is
//! its wiring into the export:
//!
//! * A getattr, lookup or open from another node asks for a lease on what
//!   it will cache *before* the attributes are read, so a change that comes
//!   after the grant recalls it; the grants ride back in the reply
//!   ([`FsReply::Leased`]).
//! * A change (write, setattr, create/unlink/rename in a directory, xattr
//!   changes), from any node, this one included, first recalls every other
//!   node's lease on what it changes and completes only when each holder
//!   has answered ([`Recaller`]) or been fenced (`RECALL_TIMEOUT`).
//! * Leases belong to the client's session: they end with it.
//!
//! An operation that has to wait for recalls waits on the thread serving
//! it (a blocking-pool thread for other nodes, the FUSE thread for this
//! node's own), at most [`WAIT_LIMIT`]; meanwhile the waiting threads move
//! the table's clock, so a holder that never answers is fenced on time
//! without a timer task of its own.
//!
//! This node caches nothing of its own files (its kernel reads them
//! directly), so its own session never holds a lease: its changes recall
//! everyone (`mutate(None, ..)`).
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mosix_cache::lease::{Decision, Event, LeaseTable, OpId, Ready};
use mosix_cache::wire::Recall;
use mosix_cache::{Access, Grant, Mode, NO_EPOCH};
use mosix_proto::fs::{FsReply, FsRequest, FsResult, RemoteFh, RemoteIno};

use super::{lock, Export, Res};
use crate::service::{ClientId, Who};

/// The longest one request waits for recalls, on all the files it names
/// together, before it fails with `EAGAIN`. Each recall is answered or
/// fenced within `RECALL_TIMEOUT` (2 s); this bounds a queue of several on
/// one file. Under the client's own limit for an answer (`REQUEST_TIMEOUT`
/// = 10 s, `net/`), so that the `EAGAIN` reaches it rather than a timeout.
pub const WAIT_LIMIT: Duration = Duration::from_secs(8);

/// Sends recalls to the nodes holding leases (the daemon, over QUIC). Must
/// not block: the answer comes back through [`Export::recall_done`].
pub trait Recaller: Send + Sync + 'static {
    fn recall(&self, to: &ClientId, server_run: u64, recall: Recall<RemoteIno>);
}

type Table = LeaseTable<ClientId, RemoteIno>;

/// How a waiting operation ends.
type Outcome = Result<Ready, i32>;

/// The table's answer to a request, its waiter already registered.
enum Pending {
    Ready(Ready),
    Wait {
        op: OpId,
        recalls: Vec<(ClientId, Recall<RemoteIno>)>,
        rx: mpsc::Receiver<Outcome>,
    },
}

#[derive(Default)]
struct Opens {
    /// Open handles of other nodes, by handle: whose, on what, for what.
    by_fh: HashMap<RemoteFh, (ClientId, RemoteIno, Access)>,
}

pub(super) struct Leases {
    table: Mutex<Table>,
    origin: Instant,
    waiters: Mutex<HashMap<OpId, mpsc::Sender<Outcome>>>,
    opens: Mutex<Opens>,
    recaller: OnceLock<Arc<dyn Recaller>>,
    /// Debug switch (`MOSIX_DEBUG_NO_RECALLS=1`): changes never recall
    /// anything (nor wait for it), so holders keep caching what is no
    /// longer true. Exists only to show that the coherence tests catch
    /// stale caches; never set it otherwise.
    no_recalls: AtomicBool,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").finish_non_exhaustive()
    }
}

impl Default for Leases {
    fn default() -> Self {
        let no_recalls = std::env::var_os("MOSIX_DEBUG_NO_RECALLS").is_some_and(|v| v == "1");
        if no_recalls {
            tracing::warn!("MOSIX_DEBUG_NO_RECALLS: leases are never recalled; caches go stale");
        }
        Leases {
            table: Mutex::new(Table::new()),
            origin: Instant::now(),
            waiters: Mutex::default(),
            opens: Mutex::default(),
            recaller: OnceLock::new(),
            no_recalls: AtomicBool::new(no_recalls),
        }
    }
}

/// What is left to do once a request ran.
enum After {
    Open { ino: RemoteIno, flags: i32 },
    Create { flags: i32 },
    Release { fh: RemoteFh },
    Lookup,
    Nothing,
}

impl After {
    fn of(op: &FsRequest) -> After {
        match op {
            FsRequest::Open { ino, flags } => After::Open {
                ino: *ino,
                flags: *flags,
            },
            FsRequest::Create { flags, .. } => After::Create { flags: *flags },
            FsRequest::Release { fh } => After::Release { fh: *fh },
            FsRequest::Lookup { .. } => After::Lookup,
            _ => After::Nothing,
        }
    }
}

/// What a request needs from the table before it runs.
struct Plan {
    /// Files every other node's cache must not survive the change of.
    mutate: Vec<RemoteIno>,
    /// Files the asking node gets a lease on (None: an open's access).
    lease: Vec<(RemoteIno, Option<Access>)>,
}

fn access_of(flags: i32) -> Access {
    if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
        Access::Write
    } else {
        Access::Read
    }
}

impl Leases {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Carries out what the table said, outside its lock.
    fn dispatch(&self, export_run: u64, events: Vec<Event<ClientId, RemoteIno>>) {
        let mut later = Vec::new();
        for e in events {
            match e {
                Event::Recall { to, recall } => self.send_recall(&to, export_run, recall),
                Event::Ready { op, ready, .. } => {
                    let waiter = lock(&self.waiters).remove(&op);
                    let delivered = waiter.is_some_and(|w| w.send(Ok(ready)).is_ok());
                    if !delivered {
                        // Its caller gave up: a mutation nobody performs
                        // must not hold the file.
                        if let Ready::Mutate(op) = ready {
                            later.push(op);
                        }
                    }
                }
                Event::Dropped { op, .. } => {
                    if let Some(w) = lock(&self.waiters).remove(&op) {
                        let _ = w.send(Err(libc::ESTALE));
                    }
                }
                Event::Fenced {
                    client,
                    file,
                    epoch,
                } => {
                    tracing::warn!(node = %client.node, file, epoch, "lease fenced: its holder did not answer the recall in time")
                }
                // The node asks again by itself: its next open or getattr
                // reaches us, since nothing uncached is answered locally.
                Event::MayCache { .. } => {}
            }
        }
        for op in later {
            let events = lock(&self.table).done(op, self.now());
            self.dispatch(export_run, events);
        }
    }

    fn send_recall(&self, to: &ClientId, export_run: u64, recall: Recall<RemoteIno>) {
        if self.no_recalls.load(Ordering::Relaxed) {
            return;
        }
        match self.recaller.get() {
            Some(r) => r.recall(to, export_run, recall),
            None => tracing::debug!(node = %to.node, "no way to send a recall; it will be fenced"),
        }
    }

    /// Asks the table (`ask`, under its lock) and, if the answer is to
    /// wait, registers the waiter before the lock is let go: the `Ready`
    /// that ends the wait is made under that lock too (by another thread's
    /// `done`, `recall_done` or `tick`), so it always finds its waiter.
    /// Registered any later, a `Ready` dispatched in between was lost and
    /// the request sat out all of [`WAIT_LIMIT`].
    fn decide(
        &self,
        ask: impl FnOnce(&mut Table, Duration) -> Decision<ClientId, RemoteIno>,
    ) -> Pending {
        let now = self.now();
        let mut table = lock(&self.table);
        match ask(&mut table, now) {
            Decision::Ready(r) => Pending::Ready(r),
            Decision::Wait { op, recalls } => {
                let (tx, rx) = mpsc::channel();
                lock(&self.waiters).insert(op, tx);
                Pending::Wait { op, recalls, rx }
            }
        }
    }

    /// Waits for the table to let a decision go on.
    fn wait(&self, export_run: u64, pending: Pending, give_up: Instant) -> Result<Ready, i32> {
        let (op, recalls, rx) = match pending {
            Pending::Ready(r) => return Ok(r),
            Pending::Wait { op, recalls, rx } => (op, recalls, rx),
        };
        for (to, recall) in recalls {
            self.send_recall(&to, export_run, recall);
        }
        loop {
            let next = lock(&self.table).next_deadline();
            let now = self.now();
            let nap = next
                .map(|d| d.saturating_sub(now))
                .unwrap_or(Duration::from_millis(100))
                .clamp(Duration::from_millis(1), Duration::from_millis(100));
            match rx.recv_timeout(nap) {
                Ok(r) => return r,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(libc::EIO),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let events = lock(&self.table).tick(self.now());
            self.dispatch(export_run, events);
            if Instant::now() >= give_up {
                if lock(&self.waiters).remove(&op).is_some() {
                    tracing::warn!(op, "gave up waiting for recalls");
                    return Err(libc::EAGAIN);
                }
                // Answered just now.
                return rx
                    .recv_timeout(Duration::from_secs(1))
                    .unwrap_or(Err(libc::EIO));
            }
        }
    }

    fn mutate(
        &self,
        run: u64,
        by: Option<&ClientId>,
        file: RemoteIno,
        until: Instant,
    ) -> Res<Option<OpId>> {
        if self.no_recalls.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let d = self.decide(|t, now| t.mutate(by.cloned(), file, now));
        match self.wait(run, d, until)? {
            Ready::Mutate(op) => Ok(Some(op)),
            Ready::Grant(_) => Err(libc::EIO),
        }
    }

    fn done(&self, run: u64, ops: Vec<OpId>) {
        for op in ops {
            let events = lock(&self.table).done(op, self.now());
            self.dispatch(run, events);
        }
    }

    fn grant(
        &self,
        run: u64,
        who: &ClientId,
        file: RemoteIno,
        access: Option<Access>,
        until: Instant,
    ) -> Res<Grant> {
        if self.no_recalls.load(Ordering::Relaxed) {
            // Every node may cache everything, under one epoch that never
            // changes: nothing it holds is ever taken back. Through the
            // table instead, a conflicting open would wait out
            // RECALL_TIMEOUT for each recall never sent, and the fencing
            // would hand out new epochs that drop the stale pages anyway.
            let a = access.unwrap_or(Access::Read);
            return Ok(Grant {
                mode: Mode::Cached(a),
                epoch: NO_EPOCH + 1,
            });
        }
        let d = self.decide(|t, now| match access {
            Some(a) => t.request(who.clone(), file, a, now),
            None => t.request_lease(who.clone(), file, now),
        });
        match self.wait(run, d, until)? {
            Ready::Grant(g) => Ok(g),
            Ready::Mutate(_) => Err(libc::EIO),
        }
    }

    /// `who`'s opens of `file` changed (one closed, or one failed to open).
    fn reopened_as(&self, run: u64, who: &ClientId, file: RemoteIno) {
        let remaining = lock(&self.opens)
            .by_fh
            .values()
            .filter(|(c, f, _)| c == who && *f == file)
            .map(|(_, _, a)| *a)
            .max();
        let events = lock(&self.table).closed(who, file, remaining, self.now());
        self.dispatch(run, events);
    }
}

impl Export {
    /// How recalls reach the holders (set once by the daemon).
    pub fn set_recaller(&self, r: Arc<dyn Recaller>) {
        let _ = self.leases.recaller.set(r);
    }

    /// Holder `client` answered the recall of its lease on `file`.
    pub fn recall_done(&self, client: &ClientId, file: RemoteIno, epoch: u64) {
        let l = &self.leases;
        let events = lock(&l.table).recall_done(client, file, epoch, l.now());
        l.dispatch(self.epoch, events);
    }

    /// A change made on this node outside the export (`watch.rs`): every
    /// node's lease on `file` goes before the next one is granted.
    pub(super) fn local_change(&self, file: RemoteIno) {
        let l = &self.leases;
        match l.mutate(self.epoch, None, file, Instant::now() + WAIT_LIMIT) {
            Ok(op) => l.done(self.epoch, op.into_iter().collect()),
            Err(e) => tracing::warn!(file, errno = e, "recall after a local change failed"),
        }
    }

    /// Runs `f`, the change `op` describes (its bulk data left out), made
    /// by this node's own caller `who` in-process: other nodes' leases on
    /// what it changes are recalled first.
    pub fn as_change<T>(&self, who: &Who, op: &FsRequest, f: impl FnOnce() -> Res<T>) -> Res<T> {
        if self.leases.recaller.get().is_none() || self.leases_idle() {
            return f();
        }
        let plan = self.plan(who, op, true);
        let l = &self.leases;
        let until = Instant::now() + WAIT_LIMIT;
        let mut held = Vec::new();
        for file in &plan.mutate {
            match l.mutate(self.epoch, None, *file, until) {
                Ok(op) => held.extend(op),
                Err(e) => {
                    l.done(self.epoch, held);
                    return Err(e);
                }
            }
        }
        let r = f();
        l.done(self.epoch, held);
        r
    }

    /// Whether no lease is held or asked for anywhere.
    pub(super) fn leases_idle(&self) -> bool {
        lock(&self.leases.table).is_empty()
    }

    /// The session of `client` ended: its leases go with it.
    pub(super) fn leases_gone(&self, client: &ClientId) {
        let l = &self.leases;
        lock(&l.opens).by_fh.retain(|_, (c, _, _)| c != client);
        let events = lock(&l.table).client_gone(client, l.now());
        l.dispatch(self.epoch, events);
    }

    fn is_local(&self, who: &Who) -> bool {
        self.sessions
            .local
            .get()
            .is_some_and(|l| *l == who.client.node)
    }

    /// The file an open handle of `who` is on.
    fn file_of(&self, who: &Who, fh: RemoteFh) -> Option<RemoteIno> {
        let (session, _) = self.sessions.enter(&who.client).ok()?;
        let h = self.handles.get(&session, fh).ok()?;
        self.inodes.ids_of(h.dev, std::iter::once(h.ino)).pop()
    }

    /// The file `name` in `parent` is now, if any, without taking a
    /// reference.
    fn child_of(&self, parent: RemoteIno, name: &[u8]) -> Option<RemoteIno> {
        let p = self.inodes.get(parent).ok()?;
        let name = std::ffi::CString::new(name).ok()?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, C string and stat buffer.
        let r = unsafe {
            libc::fstatat(
                p.fd.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        (r == 0).then(|| {
            self.inodes
                .ids_of(st.st_dev, std::iter::once(st.st_ino))
                .pop()
        })?
    }

    /// Which files a request changes or asks to cache.
    fn plan(&self, who: &Who, op: &FsRequest, local: bool) -> Plan {
        use FsRequest as R;
        let mut mutate = Vec::new();
        let mut lease = Vec::new();
        match op {
            R::GetAttr { ino } => lease.push((*ino, None)),
            R::Open { ino, flags } => lease.push((*ino, Some(access_of(*flags)))),
            R::SetAttr { ino, .. } => mutate.push(*ino),
            R::Mknod { parent, .. } | R::Mkdir { parent, .. } | R::Symlink { parent, .. } => {
                mutate.push(*parent)
            }
            R::Create { parent, name, .. } => {
                mutate.push(*parent);
                // Opening an existing file with O_TRUNC changes it.
                mutate.extend(self.child_of(*parent, name));
            }
            R::Unlink { parent, name } | R::Rmdir { parent, name } => {
                mutate.push(*parent);
                mutate.extend(self.child_of(*parent, name));
            }
            R::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => {
                mutate.push(*parent);
                mutate.push(*new_parent);
                mutate.extend(self.child_of(*parent, name));
                mutate.extend(self.child_of(*new_parent, new_name));
            }
            R::Link {
                ino, new_parent, ..
            } => {
                mutate.push(*ino);
                mutate.push(*new_parent);
            }
            R::SetXattr { ino, .. } | R::RemoveXattr { ino, .. } => mutate.push(*ino),
            R::Write { fh, .. } | R::Fallocate { fh, .. } => {
                // A node writing through its own write open needs nothing:
                // while it has the file open for writing nobody else caches
                // it (the table saw to that at the open).
                let writer = !local
                    && lock(&self.leases.opens)
                        .by_fh
                        .get(fh)
                        .is_some_and(|(c, _, a)| *c == who.client && *a == Access::Write);
                if !writer {
                    mutate.extend(self.file_of(who, *fh));
                }
            }
            _ => {}
        }
        mutate.sort_unstable();
        mutate.dedup();
        if local {
            lease.clear();
        }
        Plan { mutate, lease }
    }

    /// Runs `f` (the operation `op` of `who`) under the lease rules: recalls
    /// first, then the operation, then the grants in its reply.
    pub(super) fn leased(
        &self,
        who: &Who,
        op: FsRequest,
        f: impl FnOnce(FsRequest) -> FsResult,
    ) -> FsResult {
        if self.leases.recaller.get().is_none() {
            // Leases are granted only once recalls can be sent (the daemon
            // set a recaller): until then nobody caches, nothing to recall.
            return f(op);
        }
        let local = self.is_local(who);
        let plan = self.plan(who, &op, local);
        let next = After::of(&op);
        let run = self.epoch;
        let l = &self.leases;
        let by = (!local).then_some(&who.client);
        let until = Instant::now() + WAIT_LIMIT;
        let mut held = Vec::new();
        for file in &plan.mutate {
            match l.mutate(run, by, *file, until) {
                Ok(op) => held.extend(op),
                Err(e) => {
                    l.done(run, held);
                    return Err(e);
                }
            }
        }
        let mut grants = Vec::new();
        for (file, access) in &plan.lease {
            match l.grant(run, &who.client, *file, *access, until) {
                Ok(g) => grants.push((*file, g)),
                // No lease is no cache: the operation itself goes on.
                Err(e) => tracing::debug!(file, errno = e, "no lease"),
            }
        }
        let r = f(op);
        l.done(run, held);
        if local {
            return r;
        }
        let r = self.after(who, next, r, &mut grants, until);
        match r {
            Ok(reply) if !grants.is_empty() => Ok(FsReply::Leased {
                grants,
                reply: Box::new(reply),
            }),
            r => r,
        }
    }

    /// Bookkeeping once a request of another node ran: its opens, and the
    /// lease on a lookup's result.
    fn after(
        &self,
        who: &Who,
        op: After,
        r: FsResult,
        grants: &mut Vec<(RemoteIno, Grant)>,
        until: Instant,
    ) -> FsResult {
        use After as R;
        let run = self.epoch;
        let l = &self.leases;
        match (op, &r) {
            (R::Open { ino, flags }, Ok(FsReply::Opened { fh })) => {
                lock(&l.opens)
                    .by_fh
                    .insert(*fh, (who.client.clone(), ino, access_of(flags)));
            }
            (R::Open { ino, .. }, Err(_)) => l.reopened_as(run, &who.client, ino),
            (R::Create { flags }, Ok(FsReply::Created { attr, fh })) => {
                // The new file is open here for writing: nobody else may
                // cache it while it is (the table records the open).
                let access = access_of(flags).max(Access::Write);
                if let Ok(g) = l.grant(run, &who.client, attr.ino, Some(access), until) {
                    lock(&l.opens)
                        .by_fh
                        .insert(*fh, (who.client.clone(), attr.ino, access));
                    grants.push((attr.ino, g));
                    // Attributes read before the grant may be older than
                    // a change made since: read them again under it.
                    if let Ok(a) = self.getattr(who, attr.ino) {
                        return Ok(FsReply::Created { attr: a, fh: *fh });
                    }
                }
            }
            (R::Release { fh }, _) => {
                let gone = lock(&l.opens).by_fh.remove(&fh);
                if let Some((c, file, _)) = gone {
                    l.reopened_as(run, &c, file);
                }
            }
            (R::Lookup, Ok(FsReply::Entry(a))) => {
                if let Ok(g) = l.grant(run, &who.client, a.ino, None, until) {
                    grants.push((a.ino, g));
                    if let Ok(fresh) = self.getattr(who, a.ino) {
                        return Ok(FsReply::Entry(fresh));
                    }
                }
            }
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(node: &str) -> ClientId {
        ClientId {
            node: node.into(),
            run: 1,
        }
    }

    /// The interleaving that hung the coherence checker: a request queued
    /// behind a change on the same file, and the change finishing (on
    /// another thread) after the table answered "wait" but before the
    /// request started waiting. The wake-up must not be lost: the request
    /// goes on at once, instead of sitting out [`WAIT_LIMIT`] (longer than
    /// the client waits for an answer) and failing.
    #[test]
    fn a_wakeup_before_the_wait_begins_is_not_lost() {
        let l = Leases::default();
        let (run, file) = (7, 42);
        let change = match l.decide(|t, now| t.mutate(None, file, now)) {
            Pending::Ready(Ready::Mutate(op)) => op,
            _ => panic!("nobody holds the file: the change goes on at once"),
        };
        let lookup = l.decide(|t, now| t.request_lease(client("n2"), file, now));
        assert!(
            matches!(lookup, Pending::Wait { .. }),
            "the lease waits behind the change"
        );
        l.done(run, vec![change]);
        let t = Instant::now();
        let got = l.wait(run, lookup, Instant::now() + WAIT_LIMIT);
        assert!(
            matches!(got, Ok(Ready::Grant(_))),
            "the lease is granted: {got:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "granted only after {:?}",
            t.elapsed()
        );
    }

    /// A holder that answers every recall at once, from another thread,
    /// as a node whose kernel had nothing to drop would.
    struct Answering(OnceLock<std::sync::Weak<Leases>>);

    impl Recaller for Answering {
        fn recall(&self, to: &ClientId, server_run: u64, recall: Recall<RemoteIno>) {
            let Some(l) = self.0.get().and_then(std::sync::Weak::upgrade) else {
                return;
            };
            let to = to.clone();
            std::thread::spawn(move || {
                let events = lock(&l.table).recall_done(&to, recall.file, recall.epoch, l.now());
                l.dispatch(server_run, events);
            });
        }
    }

    /// Many threads changing and leasing one file at once, every recall
    /// answered at once: each request goes on within a few recall round
    /// trips, none anywhere near [`WAIT_LIMIT`] (a lost wake-up shows as
    /// exactly that wait).
    #[test]
    fn concurrent_changes_and_leases_on_one_file_all_go_on_promptly() {
        let l = Arc::new(Leases::default());
        let answering = Arc::new(Answering(OnceLock::new()));
        let _ = answering.0.set(Arc::downgrade(&l));
        let _ = l.recaller.set(answering);
        let (run, file) = (7, 42);
        let slowest = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let l = l.clone();
                    s.spawn(move || {
                        let who = client(&format!("n{i}"));
                        let mut slowest = Duration::ZERO;
                        for _ in 0..300 {
                            let t = Instant::now();
                            if i % 2 == 0 {
                                let op = l
                                    .mutate(run, Some(&who), file, Instant::now() + WAIT_LIMIT)
                                    .expect("change goes on");
                                l.done(run, op.into_iter().collect());
                            } else {
                                l.grant(run, &who, file, None, Instant::now() + WAIT_LIMIT)
                                    .expect("lease");
                            }
                            slowest = slowest.max(t.elapsed());
                        }
                        slowest
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
        });
        assert!(slowest < Duration::from_secs(1), "one waited {slowest:?}");
    }
}
