//! The serving node's lease table: per file, which client nodes hold it
//! open, which may cache it, and the operations waiting for recalls.
//!
//! One table per serving node, held by its export next to the client
//! sessions (a session's end is [`LeaseTable::client_gone`]). Sans-IO:
//! every call returns what the caller must do ([`Decision`], [`Event`]s),
//! and time only moves when the caller says so ([`LeaseTable::tick`]).
//! The rules are in `cache/README.md`; in short:
//!
//! * Holders of one file in cached mode: any number of readers, or one
//!   writer.
//! * A request that conflicts with another node's *idle* cached lease (held
//!   after close) recalls it; one that conflicts with another node's *open*
//!   makes the file write-shared: every cached lease on it is recalled, and
//!   every node that has it open goes on uncached until the sharing ends.
//! * An operation that needs recalls waits, in order per file, until each
//!   recalled holder has answered or been fenced ([`RECALL_TIMEOUT`] without
//!   an answer or progress).
//! * A client whose session ends holds nothing from then on; what it may
//!   still be caching (a live node declared dead keeps answering from its
//!   cache until its [`crate::LEASE_TERM`] runs out) blocks conflicting
//!   operations for [`RECALL_TIMEOUT`].
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;

use crate::wire::{Recall, Renewal};
use crate::{Access, Epoch, Grant, Mode, Now, FLUSH_LIMIT, NO_EPOCH, RECALL_TIMEOUT};

/// Names one operation that had to wait.
pub type OpId = u64;

/// What a waiting operation learns when it may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// An open or lease request: its grant, for the reply.
    Grant(Grant),
    /// A mutation (truncate, rename, unlink, a directory change, a write
    /// from a node that holds no lease): perform it now, then call
    /// [`LeaseTable::done`]; until then nobody is granted the file.
    Mutate(OpId),
}

/// The immediate answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<C, F> {
    Ready(Ready),
    /// Send `recalls`, and answer the request when [`Event::Ready`] names
    /// `op`. `recalls` may be empty: the operation waits behind earlier ones
    /// on the same file.
    Wait {
        op: OpId,
        recalls: Vec<(C, Recall<F>)>,
    },
}

/// Something the caller must act on, from any call that moves the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<C, F> {
    /// Send `recall` to `to`.
    Recall { to: C, recall: Recall<F> },
    /// Operation `op` on `file`, which waited, may go on.
    Ready { op: OpId, file: F, ready: Ready },
    /// `client`'s lease on `file` was taken without its answer; its
    /// write-backs under `epoch` are refused from now on.
    Fenced { client: C, file: F, epoch: Epoch },
    /// The write-sharing of `file` ended; `client` has it open uncached and
    /// may ask again to cache it.
    MayCache { client: C, file: F },
    /// Operation `op` on `file` will never go on: its client's session
    /// ended while it waited (answer `ESTALE`).
    Dropped { op: OpId, file: F },
}

/// Why a holder's I/O under a lease is refused: the lease is not (or no
/// longer) this client's current one on that file. The client answers
/// `ESTALE` (or `EIO` for dirty data that was lost), never old data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced;

/// One client node's hold on one file.
#[derive(Debug, Clone)]
struct Holder {
    /// The strongest access any open of the file on that node has; `None`:
    /// not open there (the lease, if any, is idle).
    open: Option<Access>,
    /// `Some`: the node may cache (reads, and with `Write` also buffered
    /// writes). `None`: it is open there uncached.
    cached: Option<Access>,
    epoch: Epoch,
    recall: Option<Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Fenced at this time unless it answers or makes progress first.
    deadline: Now,
    /// Fenced at this time whatever progress it makes.
    limit: Now,
}

/// A cached lease of a client whose session ended: it may still be in use
/// on a live node declared dead, until that node's lease term is surely
/// over.
#[derive(Debug, Clone, Copy)]
struct Ghost {
    kind: Access,
    until: Now,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Open(Access),
    Lease,
    Mutate,
}

#[derive(Debug, Clone)]
struct Op<C, F> {
    client: Option<C>,
    file: F,
    kind: OpKind,
}

#[derive(Debug)]
struct FileState<C> {
    holders: BTreeMap<C, Holder>,
    ghosts: Vec<Ghost>,
    /// Operations waiting, in arrival order; only the first is evaluated.
    queue: VecDeque<OpId>,
    /// A mutation granted and not done yet.
    busy: Option<OpId>,
}

impl<C> Default for FileState<C> {
    fn default() -> Self {
        FileState {
            holders: BTreeMap::new(),
            ghosts: Vec::new(),
            queue: VecDeque::new(),
            busy: None,
        }
    }
}

impl<C: Ord> FileState<C> {
    fn is_empty(&self) -> bool {
        self.holders.is_empty()
            && self.ghosts.is_empty()
            && self.queue.is_empty()
            && self.busy.is_none()
    }

    /// Two nodes have the file open and at least one writes.
    fn write_shared(&self) -> bool {
        let opens: Vec<Access> = self.holders.values().filter_map(|h| h.open).collect();
        opens.len() >= 2 && opens.contains(&Access::Write)
    }
}

/// The lease table of one serving node. `C` names a client node's session
/// (its certificate name and daemon run), `F` a file (its inode number in
/// the export).
#[derive(Debug)]
pub struct LeaseTable<C, F> {
    files: BTreeMap<F, FileState<C>>,
    ops: BTreeMap<OpId, Op<C, F>>,
    next_op: OpId,
    next_epoch: Epoch,
}

impl<C, F> Default for LeaseTable<C, F> {
    fn default() -> Self {
        LeaseTable {
            files: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_op: 1,
            next_epoch: NO_EPOCH + 1,
        }
    }
}

/// What the first waiting operation on a file needs.
enum Verdict<C, F> {
    Go(Ready),
    Blocked(Vec<(C, Recall<F>)>),
}

impl<C: Clone + Ord + Debug, F: Copy + Ord + Debug> LeaseTable<C, F> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `client` opens `file` for `access` (or a second open on that node
    /// needs more than the first). The reply carries the grant; an
    /// [`Mode::Uncached`] grant means the file is write-shared.
    pub fn request(&mut self, client: C, file: F, access: Access, now: Now) -> Decision<C, F> {
        self.submit(Some(client), file, OpKind::Open(access), now)
    }

    /// `client` wants to cache `file`'s attributes (or a directory's
    /// entries) without opening it: a read lease, idle from the start.
    /// Every getattr/lookup/readdir at the serving node from a node that
    /// does not hold a lease asks this way, because it recalls a cached
    /// writer's lease first (its buffered writes change the attributes).
    /// Answered [`Mode::Uncached`] (and nothing held) while another node
    /// has the file open for writing.
    pub fn request_lease(&mut self, client: C, file: F, now: Now) -> Decision<C, F> {
        self.submit(Some(client), file, OpKind::Lease, now)
    }

    /// A change to `file` that every other node's cache must not survive:
    /// truncate, setattr, unlink or rename (of the file, and of the
    /// directories whose entries change), or a write that comes without a
    /// lease. `by` (if a client) keeps its own lease and updates its own
    /// cache. Once [`Ready::Mutate`], the caller performs the change and
    /// calls [`LeaseTable::done`].
    pub fn mutate(&mut self, by: Option<C>, file: F, now: Now) -> Decision<C, F> {
        self.submit(by, file, OpKind::Mutate, now)
    }

    /// The mutation `op` has been performed (or failed): the file may be
    /// granted again.
    pub fn done(&mut self, op: OpId, now: Now) -> Vec<Event<C, F>> {
        let Some(o) = self.ops.remove(&op) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if let Some(fs) = self.files.get_mut(&o.file) {
            if fs.busy == Some(op) {
                fs.busy = None;
            }
        }
        self.pump(o.file, now, &mut events);
        events
    }

    /// `client`'s opens of `file` now need at most `remaining` (`None`: it
    /// closed the last one). Its lease, if cached, stays (idle) for reuse.
    pub fn closed(
        &mut self,
        client: &C,
        file: F,
        remaining: Option<Access>,
        now: Now,
    ) -> Vec<Event<C, F>> {
        let mut events = Vec::new();
        let Some(fs) = self.files.get_mut(&file) else {
            return events;
        };
        let was_shared = fs.write_shared();
        if let Some(h) = fs.holders.get_mut(client) {
            h.open = h.open.min(remaining);
            if h.open.is_none() && h.cached.is_none() {
                fs.holders.remove(client);
            }
        }
        if was_shared && !fs.write_shared() {
            for (c, h) in &fs.holders {
                if h.open.is_some() && h.cached.is_none() {
                    events.push(Event::MayCache {
                        client: c.clone(),
                        file,
                    });
                }
            }
        }
        self.pump(file, now, &mut events);
        events
    }

    /// `client` answered the recall of its lease on `file` under `epoch`:
    /// it flushed its dirty data and dropped its cache. If it still has the
    /// file open, it goes on uncached. A late answer (for an older epoch,
    /// or after fencing) changes nothing.
    pub fn recall_done(&mut self, client: &C, file: F, epoch: Epoch, now: Now) -> Vec<Event<C, F>> {
        self.give_back(client, file, epoch, now)
    }

    /// `client` gives back its lease on `file` unasked (its cache evicted
    /// the file, dirty data flushed first). Same as answering a recall.
    pub fn release(&mut self, client: &C, file: F, epoch: Epoch, now: Now) -> Vec<Event<C, F>> {
        self.give_back(client, file, epoch, now)
    }

    fn give_back(&mut self, client: &C, file: F, epoch: Epoch, now: Now) -> Vec<Event<C, F>> {
        let mut events = Vec::new();
        let fresh = self.next_epoch;
        let Some(fs) = self.files.get_mut(&file) else {
            return events;
        };
        let Some(h) = fs.holders.get_mut(client) else {
            return events;
        };
        if h.epoch != epoch || h.cached.is_none() {
            return events;
        }
        h.cached = None;
        h.recall = None;
        if h.open.is_some() {
            // A new epoch for the uncached stretch: nothing under the old
            // one is accepted any more.
            h.epoch = fresh;
            self.next_epoch += 1;
        } else {
            fs.holders.remove(client);
        }
        self.pump(file, now, &mut events);
        events
    }

    /// `client`'s session ended (declared dead, or a new run of its node):
    /// everything it held goes, and its waiting operations with it
    /// ([`Event::Dropped`]; a mutation already under way is finished by its
    /// handler, which calls [`LeaseTable::done`] as ever). Its
    /// cached leases block conflicting operations for [`RECALL_TIMEOUT`]
    /// more, in case the node is alive and still answering from its cache.
    pub fn client_gone(&mut self, client: &C, now: Now) -> Vec<Event<C, F>> {
        let mut events = Vec::new();
        let dead: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(id, o)| {
                o.client.as_ref() == Some(client)
                    && self
                        .files
                        .get(&o.file)
                        .is_none_or(|fs| fs.busy != Some(**id))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            let o = self.ops.remove(&id).expect("listed");
            if let Some(fs) = self.files.get_mut(&o.file) {
                fs.queue.retain(|q| *q != id);
            }
            events.push(Event::Dropped {
                op: id,
                file: o.file,
            });
        }
        let files: Vec<F> = self.files.keys().copied().collect();
        for file in files {
            let fs = self.files.get_mut(&file).expect("listed");
            let was_shared = fs.write_shared();
            if let Some(h) = fs.holders.remove(client) {
                if let Some(kind) = h.cached {
                    fs.ghosts.push(Ghost {
                        kind,
                        until: now + RECALL_TIMEOUT,
                    });
                }
            }
            if was_shared && !fs.write_shared() {
                for (c, h) in &fs.holders {
                    if h.open.is_some() && h.cached.is_none() {
                        events.push(Event::MayCache {
                            client: c.clone(),
                            file,
                        });
                    }
                }
            }
            self.pump(file, now, &mut events);
        }
        events
    }

    /// Moves time to `now`: fences holders that let a recall time out,
    /// forgets ghosts whose time is over, and lets operations go on.
    ///
    /// Fencing takes the *lease* (the right to cache, and the write-backs
    /// under its epoch), not the holder's opens: those belong to its
    /// session and its handles, and while they last they still count for
    /// write-sharing. Otherwise another node could cache the file and
    /// buffer writes that the fenced node, reading through its handle at
    /// the serving node, would not see.
    pub fn tick(&mut self, now: Now) -> Vec<Event<C, F>> {
        let mut events = Vec::new();
        let files: Vec<F> = self.files.keys().copied().collect();
        for file in files {
            let fs = self.files.get_mut(&file).expect("listed");
            let was_shared = fs.write_shared();
            let overdue: Vec<C> = fs
                .holders
                .iter()
                .filter(|(_, h)| {
                    h.recall
                        .is_some_and(|p| p.deadline <= now || p.limit <= now)
                })
                .map(|(c, _)| c.clone())
                .collect();
            for c in overdue {
                let h = fs.holders.get_mut(&c).expect("listed");
                events.push(Event::Fenced {
                    client: c.clone(),
                    file,
                    epoch: h.epoch,
                });
                if h.open.is_some() {
                    h.cached = None;
                    h.recall = None;
                    h.epoch = self.next_epoch;
                    self.next_epoch += 1;
                } else {
                    fs.holders.remove(&c);
                }
            }
            if was_shared && !fs.write_shared() {
                for (c, h) in &fs.holders {
                    if h.open.is_some() && h.cached.is_none() {
                        events.push(Event::MayCache {
                            client: c.clone(),
                            file,
                        });
                    }
                }
            }
            self.pump(file, now, &mut events);
        }
        events
    }

    /// When [`LeaseTable::tick`] next has something to do, if ever.
    pub fn next_deadline(&self) -> Option<Now> {
        self.files
            .values()
            .flat_map(|fs| {
                let recalls = fs
                    .holders
                    .values()
                    .filter_map(|h| h.recall.map(|p| p.deadline.min(p.limit)));
                recalls.chain(fs.ghosts.iter().map(|g| g.until))
            })
            .min()
    }

    /// Whether I/O by `client` under `epoch` on `file` may be served: the
    /// lease is its current one. Its mode says what it covers.
    pub fn check(&self, client: &C, file: F, epoch: Epoch) -> Result<Mode, Fenced> {
        let h = self
            .files
            .get(&file)
            .and_then(|fs| fs.holders.get(client))
            .filter(|h| h.epoch == epoch && epoch != NO_EPOCH)
            .ok_or(Fenced)?;
        Ok(h.cached.map_or(Mode::Uncached, Mode::Cached))
    }

    /// A write-back of dirty data by a cached write holder: accepted only
    /// under its current write lease. While the lease is being recalled,
    /// each write-back is progress and moves the fencing deadline (never
    /// past [`FLUSH_LIMIT`] after the recall).
    pub fn write_back(
        &mut self,
        client: &C,
        file: F,
        epoch: Epoch,
        now: Now,
    ) -> Result<(), Fenced> {
        let h = self
            .files
            .get_mut(&file)
            .and_then(|fs| fs.holders.get_mut(client))
            .filter(|h| h.epoch == epoch && h.cached == Some(Access::Write))
            .ok_or(Fenced)?;
        if let Some(p) = &mut h.recall {
            if p.limit <= now || p.deadline <= now {
                // Due to be fenced at the next tick.
                return Err(Fenced);
            }
            p.deadline = p.deadline.max(now + RECALL_TIMEOUT);
        }
        Ok(())
    }

    /// The reply to `client`'s periodic renewal: its leases, and the
    /// recalls it has not answered.
    pub fn renew(&self, client: &C) -> Renewal<F> {
        let mut live = Vec::new();
        let mut recalls = Vec::new();
        for (file, fs) in &self.files {
            if let Some(h) = fs.holders.get(client) {
                live.push((*file, grant_of(h)));
                if h.recall.is_some() {
                    recalls.push(Recall {
                        file: *file,
                        epoch: h.epoch,
                    });
                }
            }
        }
        Renewal { live, recalls }
    }

    /// Whether nothing is held or waiting on any file (a change then needs
    /// no recall at all).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether `file` is write-shared now (its open nodes go uncached).
    pub fn write_shared(&self, file: F) -> bool {
        self.files.get(&file).is_some_and(|fs| fs.write_shared())
    }

    /// Every client holding something on `file`, with what.
    pub fn holders(&self, file: F) -> Vec<(C, Option<Access>, Grant)> {
        self.files.get(&file).map_or(Vec::new(), |fs| {
            fs.holders
                .iter()
                .map(|(c, h)| (c.clone(), h.open, grant_of(h)))
                .collect()
        })
    }

    /// Whether `client` holds anything at all (opens or leases).
    pub fn holds_anything(&self, client: &C) -> bool {
        self.files
            .values()
            .any(|fs| fs.holders.contains_key(client))
    }

    /// The table's own invariants; `Err` says which one broke. Cheap
    /// enough for tests to call after every step.
    pub fn invariants(&self) -> Result<(), String> {
        for (file, fs) in &self.files {
            let cached: Vec<(&C, Access)> = fs
                .holders
                .iter()
                .filter_map(|(c, h)| h.cached.map(|k| (c, k)))
                .collect();
            let writers = cached.iter().filter(|(_, k)| *k == Access::Write).count();
            if writers > 1 {
                return Err(format!("{file:?}: two cached write leases: {cached:?}"));
            }
            if writers == 1 && cached.len() > 1 {
                return Err(format!(
                    "{file:?}: a cached write lease beside other cached leases: {cached:?}"
                ));
            }
            for (c, k) in &cached {
                for (d, h) in &fs.holders {
                    if d != *c && h.open.is_some_and(|o| o.conflicts(*k)) {
                        return Err(format!(
                            "{file:?}: {c:?} caches ({k:?}) while {d:?} has it open ({:?})",
                            h.open
                        ));
                    }
                }
            }
            if fs.write_shared() && !cached.is_empty() {
                return Err(format!("{file:?}: write-shared but cached by {cached:?}"));
            }
            for (c, h) in &fs.holders {
                if h.open.is_none() && h.cached.is_none() {
                    return Err(format!("{file:?}: {c:?} is kept holding nothing"));
                }
                if h.recall.is_some() && h.cached.is_none() {
                    return Err(format!("{file:?}: {c:?} recalled without a lease"));
                }
                if h.epoch == NO_EPOCH || h.epoch >= self.next_epoch {
                    return Err(format!("{file:?}: {c:?} has epoch {}", h.epoch));
                }
            }
            if fs.queue.iter().any(|id| !self.ops.contains_key(id)) {
                return Err(format!("{file:?}: a queued operation is unknown"));
            }
        }
        Ok(())
    }

    fn submit(&mut self, client: Option<C>, file: F, kind: OpKind, now: Now) -> Decision<C, F> {
        let op = self.next_op;
        self.next_op += 1;
        self.ops.insert(op, Op { client, file, kind });
        let fs = self.files.entry(file).or_default();
        fs.queue.push_back(op);
        if fs.queue.len() > 1 {
            return Decision::Wait {
                op,
                recalls: Vec::new(),
            };
        }
        match self.evaluate(op, now) {
            Verdict::Go(ready) => {
                self.finish_head(file, op);
                Decision::Ready(ready)
            }
            Verdict::Blocked(recalls) => Decision::Wait { op, recalls },
        }
    }

    /// Takes the granted first operation off the file's queue.
    fn finish_head(&mut self, file: F, op: OpId) {
        let fs = self.files.get_mut(&file).expect("queued");
        let head = fs.queue.pop_front();
        debug_assert_eq!(head, Some(op));
        if let Some(o) = self.ops.get(&op) {
            if o.kind != OpKind::Mutate {
                self.ops.remove(&op);
            }
        }
        if fs.is_empty() {
            self.files.remove(&file);
        }
    }

    /// Lets waiting operations on `file` go on, in order, as far as they
    /// can; sends the recalls the first blocked one needs.
    fn pump(&mut self, file: F, now: Now, events: &mut Vec<Event<C, F>>) {
        loop {
            let Some(fs) = self.files.get_mut(&file) else {
                return;
            };
            let Some(&op) = fs.queue.front() else {
                if fs.is_empty() {
                    self.files.remove(&file);
                }
                return;
            };
            match self.evaluate(op, now) {
                Verdict::Go(ready) => {
                    self.finish_head(file, op);
                    events.push(Event::Ready { op, file, ready });
                }
                Verdict::Blocked(recalls) => {
                    events.extend(
                        recalls
                            .into_iter()
                            .map(|(to, recall)| Event::Recall { to, recall }),
                    );
                    return;
                }
            }
        }
    }

    /// Decides the first waiting operation on its file: grants it (and
    /// records the grant), or says what it waits for, sending each recall
    /// once.
    fn evaluate(&mut self, op: OpId, now: Now) -> Verdict<C, F> {
        let o = self.ops.get(&op).expect("queued").clone();
        let fresh = self.next_epoch;
        let fs = self.files.get_mut(&o.file).expect("queued");
        fs.ghosts.retain(|g| g.until > now);
        if fs.busy.is_some() {
            return Verdict::Blocked(Vec::new());
        }
        let me = o.client.as_ref();
        let own = me.and_then(|c| fs.holders.get(c));
        // A request is judged by everything its node has open, not only by
        // the open asking (a read open beside a write open still writes),
        // and a lease request from a node with opens asks for what they
        // need.
        let kind = match (o.kind, own.and_then(|h| h.open)) {
            (OpKind::Open(a), open) => OpKind::Open(Some(a).max(open).expect("some")),
            (OpKind::Lease, Some(open)) => OpKind::Open(open),
            (k, _) => k,
        };
        let others = || fs.holders.iter().filter(move |(c, _)| Some(*c) != me);
        // Which other leases must go, whether the grant is uncached, and
        // which ghosts are in the way.
        let (doomed, uncached, ghost_blocks): (Vec<C>, bool, bool) = match kind {
            OpKind::Open(a) => {
                let shared = others().any(|(_, h)| h.open.is_some_and(|x| x.conflicts(a)));
                let doomed = others()
                    .filter(|(_, h)| h.cached.is_some_and(|k| shared || k.conflicts(a)))
                    .map(|(c, _)| c.clone())
                    .collect();
                let ghosts = fs.ghosts.iter().any(|g| g.kind.conflicts(a));
                (doomed, shared, ghosts)
            }
            OpKind::Lease => {
                // A cached writer flushes first even if it has the file
                // open (then goes on uncached): the attributes asked for
                // must include its buffered writes.
                let shared = others().any(|(_, h)| h.open == Some(Access::Write));
                let doomed = others()
                    .filter(|(_, h)| h.cached == Some(Access::Write))
                    .map(|(c, _)| c.clone())
                    .collect();
                (doomed, shared, false)
            }
            OpKind::Mutate => {
                let doomed = others()
                    .filter(|(_, h)| h.cached.is_some())
                    .map(|(c, _)| c.clone())
                    .collect();
                (doomed, false, !fs.ghosts.is_empty())
            }
        };
        let own_recalled = own.is_some_and(|h| h.recall.is_some());
        if !doomed.is_empty() || ghost_blocks || own_recalled {
            let mut recalls = Vec::new();
            for c in doomed {
                let h = fs.holders.get_mut(&c).expect("listed");
                if h.recall.is_none() {
                    h.recall = Some(Pending {
                        deadline: now + RECALL_TIMEOUT,
                        limit: now + FLUSH_LIMIT,
                    });
                    recalls.push((
                        c,
                        Recall {
                            file: o.file,
                            epoch: h.epoch,
                        },
                    ));
                }
            }
            return Verdict::Blocked(recalls);
        }
        let ready = match kind {
            OpKind::Mutate => {
                fs.busy = Some(op);
                Ready::Mutate(op)
            }
            OpKind::Lease if uncached => Ready::Grant(Grant {
                mode: Mode::Uncached,
                epoch: NO_EPOCH,
            }),
            OpKind::Lease | OpKind::Open(_) => {
                let client = o.client.clone().expect("requests name their client");
                let h = fs.holders.entry(client).or_insert(Holder {
                    open: None,
                    cached: None,
                    epoch: NO_EPOCH,
                    recall: None,
                });
                let a = match kind {
                    OpKind::Open(a) => {
                        h.open = h.open.max(Some(a));
                        a
                    }
                    _ => Access::Read,
                };
                if uncached {
                    // The node drops its own cache on an uncached grant;
                    // nothing under its cached epoch counts any more.
                    if h.cached.is_some() || h.epoch == NO_EPOCH {
                        h.epoch = fresh;
                        self.next_epoch += 1;
                    }
                    h.cached = None;
                } else {
                    if h.cached.is_none() {
                        h.epoch = fresh;
                        self.next_epoch += 1;
                    }
                    h.cached = h.cached.max(Some(a));
                }
                Ready::Grant(grant_of(h))
            }
        };
        Verdict::Go(ready)
    }
}

fn grant_of(h: &Holder) -> Grant {
    Grant {
        mode: h.cached.map_or(Mode::Uncached, Mode::Cached),
        epoch: h.epoch,
    }
}

#[cfg(test)]
mod tests;
