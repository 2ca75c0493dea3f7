//! The client node's side: the leases it holds on one serving node's files,
//! and what it may answer without asking.
//!
//! One `ClientCache` per serving node, inside the caching decorator over
//! that node's `RemoteService` (see `cache/README.md`). Sans-IO like the
//! table: it is told about grants, renewals, recalls and local writes, and
//! answers [`Answer`]s and [`ClientAction`]s; the decorator does the I/O,
//! off the FUSE threads (a recall invalidates the kernel's cache, which
//! must never be done from a FUSE handler).
//!
//! A lease is used for local answers only while it is *confirmed*: until
//! [`LEASE_TERM`] after the client sent the last request whose reply
//! confirmed it (the grant, or a renewal that lists it). The serving node
//! fences a holder no sooner than [`crate::RECALL_TIMEOUT`] after recalling
//! it, and a reply sent after the recall says so; so a client cut off from
//! the serving node stops answering locally before the node can let a
//! conflicting write complete.
use std::collections::BTreeMap;

use crate::wire::{Recall, RecallDone, Renewal};
use crate::{Access, Epoch, Grant, Mode, Now, LEASE_TERM};

/// How to serve one read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// From (or into) the local cache.
    Local,
    /// Ask the serving node: nothing held, uncached, recalled, or not
    /// confirmed lately (its reply confirms again).
    Owner,
    /// A write that must go to the serving node while dirty data is
    /// still buffered here (the lease is being recalled, or expired): write
    /// that back under this epoch first, so the older data never lands
    /// over the newer.
    FlushFirst(Epoch),
    /// Dirty data written here was lost when the lease was fenced: the
    /// opens that wrote it get `EIO` (once: [`ClientCache::lost_reported`]).
    Lost,
}

/// What the decorator must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction<F> {
    /// Drop the decorator's dirty data of `file` unwritten: its lease is
    /// gone (fenced, or a grant under a new epoch), so the serving node
    /// would refuse it, and must (it could land over newer data). The
    /// opens that wrote it get `EIO` ([`Answer::Lost`]).
    Discard { file: F },
    /// Queue the kernel's invalidation of `file`'s attributes and data
    /// (`invalidate.rs`: `Inval::Inode { offset: 0, len: 0 }`). The kernel
    /// writes its dirty pages back through the decorator first.
    Invalidate { file: F },
    /// Wait until the kernel has dropped what was queued
    /// (`invalidate::Queue::barrier`).
    Barrier,
    /// Write the decorator's dirty data of `file` back under `epoch`
    /// (the serving node's `LeaseTable::write_back`), then call
    /// [`ClientCache::flushed`].
    Flush { file: F, epoch: Epoch },
    /// Send this answer to the serving node.
    Ack(RecallDone<F>),
    /// Ask for a lease on `file` again (its opens' access, or an
    /// attribute lease): caching may be back.
    AskAgain { file: F },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    mode: Mode,
    epoch: Epoch,
    /// Local answers until then (see the module docs).
    confirmed_until: Now,
    recalled: bool,
    dirty: bool,
}

/// The leases one client node holds on one serving node's files.
#[derive(Debug)]
pub struct ClientCache<F> {
    held: BTreeMap<F, Held>,
    /// Files whose dirty data was lost to a fence, not yet reported.
    lost: BTreeMap<F, Epoch>,
}

impl<F> Default for ClientCache<F> {
    fn default() -> Self {
        ClientCache {
            held: BTreeMap::new(),
            lost: BTreeMap::new(),
        }
    }
}

impl<F: Copy + Ord> ClientCache<F> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The reply to a request sent at `sent` granted `grant` on `file`.
    pub fn granted(&mut self, file: F, grant: Grant, sent: Now) -> Vec<ClientAction<F>> {
        let mut actions = Vec::new();
        let old = self.held.get(&file).copied();
        if let Some(old) = old {
            if old.epoch != grant.epoch {
                // The cache under the old epoch is not confirmed by this
                // grant: start again from nothing.
                if old.dirty {
                    self.lost.insert(file, old.epoch);
                    actions.push(ClientAction::Discard { file });
                }
                actions.push(ClientAction::Invalidate { file });
            }
        }
        match grant.mode {
            Mode::Uncached => {
                // Nothing is answered locally; nothing to keep.
                self.held.remove(&file);
            }
            Mode::Cached(_) => {
                let same = old.filter(|o| o.epoch == grant.epoch);
                self.held.insert(
                    file,
                    Held {
                        mode: grant.mode,
                        epoch: grant.epoch,
                        confirmed_until: sent + LEASE_TERM,
                        recalled: same.is_some_and(|o| o.recalled),
                        dirty: same.is_some_and(|o| o.dirty),
                    },
                );
            }
        }
        actions
    }

    /// The reply to the renewal sent at `sent`: confirms the leases it
    /// lists, forgets the others (fenced, or gone with the session), and
    /// handles the recalls it resends.
    pub fn renewed(&mut self, renewal: &Renewal<F>, sent: Now) -> Vec<ClientAction<F>> {
        let mut actions = Vec::new();
        let live: BTreeMap<F, Grant> = renewal.live.iter().copied().collect();
        let files: Vec<F> = self.held.keys().copied().collect();
        for file in files {
            let h = self.held[&file];
            match live.get(&file) {
                Some(g) if g.epoch == h.epoch && g.mode == h.mode => {
                    self.held.get_mut(&file).expect("listed").confirmed_until = sent + LEASE_TERM;
                }
                _ => actions.extend(self.fenced(file)),
            }
        }
        for r in &renewal.recalls {
            actions.extend(self.on_recall(r));
        }
        actions
    }

    /// The serving node said (a refused write-back, a renewal) that the
    /// lease on `file` is not current: drop it; dirty data is lost.
    pub fn fenced(&mut self, file: F) -> Vec<ClientAction<F>> {
        match self.held.remove(&file) {
            Some(h) => {
                let mut actions = Vec::new();
                if h.dirty {
                    self.lost.insert(file, h.epoch);
                    actions.push(ClientAction::Discard { file });
                }
                actions.push(ClientAction::Invalidate { file });
                actions
            }
            None => Vec::new(),
        }
    }

    /// A recall arrived: stop answering locally now, and (the decorator,
    /// in order) invalidate the kernel's copy, wait for it, flush what is
    /// dirty, answer. A recall of a lease not held (already given back,
    /// or an older epoch) is answered at once.
    pub fn on_recall(&mut self, recall: &Recall<F>) -> Vec<ClientAction<F>> {
        let file = recall.file;
        let ack = ClientAction::Ack(RecallDone {
            file,
            epoch: recall.epoch,
        });
        let Some(h) = self.held.get_mut(&file).filter(|h| h.epoch == recall.epoch) else {
            return vec![ack];
        };
        h.recalled = true;
        let mut actions = vec![ClientAction::Invalidate { file }, ClientAction::Barrier];
        if h.dirty {
            actions.push(ClientAction::Flush {
                file,
                epoch: h.epoch,
            });
        }
        actions.push(ack);
        actions
    }

    /// The decorator sent the answer to the recall of `file` under
    /// `epoch`: nothing is held any more (an open goes on uncached).
    pub fn recall_answered(&mut self, file: F, epoch: Epoch) {
        if self.held.get(&file).is_some_and(|h| h.epoch == epoch) {
            self.held.remove(&file);
        }
    }

    /// The serving node says the write-sharing of `file` ended.
    pub fn on_may_cache(&mut self, file: F) -> Vec<ClientAction<F>> {
        vec![ClientAction::AskAgain { file }]
    }

    /// How to serve a read of `file` at `now`.
    pub fn answer_read(&self, file: F, now: Now) -> Answer {
        self.answer(file, now, Access::Read)
    }

    /// How to serve a write to `file` at `now`: buffered locally only under
    /// a confirmed write lease; otherwise the serving node takes it (as a
    /// mutation, which recalls every other node's cache first).
    pub fn answer_write(&self, file: F, now: Now) -> Answer {
        self.answer(file, now, Access::Write)
    }

    fn answer(&self, file: F, now: Now, access: Access) -> Answer {
        if self.lost.contains_key(&file) {
            return Answer::Lost;
        }
        match self.held.get(&file) {
            Some(h)
                if !h.recalled
                    && now < h.confirmed_until
                    && matches!(h.mode, Mode::Cached(k) if k >= access) =>
            {
                Answer::Local
            }
            Some(h) if access == Access::Write && h.dirty => Answer::FlushFirst(h.epoch),
            _ => Answer::Owner,
        }
    }

    /// A write was buffered locally (after [`Answer::Local`]).
    pub fn wrote_locally(&mut self, file: F) {
        if let Some(h) = self.held.get_mut(&file) {
            h.dirty = true;
        }
    }

    /// The dirty data of `file` reached the serving node under `epoch`.
    pub fn flushed(&mut self, file: F, epoch: Epoch) {
        if let Some(h) = self.held.get_mut(&file).filter(|h| h.epoch == epoch) {
            h.dirty = false;
        }
    }

    /// The `EIO` for lost data of `file` was given to its opens.
    pub fn lost_reported(&mut self, file: F) {
        self.lost.remove(&file);
    }

    /// The lease held on `file`, if any: its mode and epoch (write-backs
    /// name the epoch).
    pub fn lease(&self, file: F) -> Option<Grant> {
        self.held.get(&file).map(|h| Grant {
            mode: h.mode,
            epoch: h.epoch,
        })
    }

    /// Until when `file` may be answered locally (see the module docs), if
    /// its lease is cached and not recalled: how long the kernel may be
    /// told to keep what it caches.
    pub fn confirmed_until(&self, file: F) -> Option<Now> {
        self.held
            .get(&file)
            .filter(|h| !h.recalled && matches!(h.mode, Mode::Cached(_)))
            .map(|h| h.confirmed_until)
    }

    /// Whether `file` has dirty data buffered here.
    pub fn dirty(&self, file: F) -> bool {
        self.held.get(&file).is_some_and(|h| h.dirty)
    }

    /// The client's daemon ends (or the mount goes): everything held is
    /// given back with the session on the serving node; nothing to send.
    pub fn clear(&mut self) {
        self.held.clear();
        self.lost.clear();
    }
}

#[cfg(test)]
mod tests;
