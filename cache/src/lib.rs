//! Coherent caching of remote files: the lease state machine.
//!
//! The node that serves a file keeps, per file, which client nodes may
//! cache it ([`lease::LeaseTable`]); each client node keeps what it holds
//! and what it may answer without asking ([`client::ClientCache`]). Both are
//! sans-IO: they are told what happened (a request, an acknowledgement, the
//! time) and answer with what to do (grant, send a recall, fence, flush,
//! invalidate). Nothing here blocks, spawns, sends or touches FUSE, so the
//! whole protocol is tested in-process (`tests/model.rs` drives both sides
//! against a reference model of file contents).
//!
//! The rules are written down in `cache/README.md`; the timing constants
//! are here.
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod client;
pub mod lease;
pub mod wire;

/// How long the serving node waits for a holder to answer a recall (or to
/// make progress flushing, see [`FLUSH_LIMIT`]) before it fences the lease
/// and lets the conflicting operation complete.
pub const RECALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a client may answer from its cache after it *sent* the last
/// request whose reply confirmed its leases. Shorter than
/// [`RECALL_TIMEOUT`], with a quarter of it as margin for the two clocks
/// running at slightly different rates: a client that stops hearing from
/// the serving node stops answering locally before that node can fence it.
pub const LEASE_TERM: Duration = Duration::from_millis(1500);

/// However much dirty data a recalled write holder is still flushing, its
/// lease is fenced this long after the recall was sent.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(30);

/// A point in time: the time since an origin the caller picks (its
/// daemon's start, say) on a monotonic clock. Sans-IO: never read here.
pub type Now = Duration;

/// One lease's generation. A holder's cache is valid for one unbroken
/// epoch; every write-back and every recall names it, so a fenced holder's
/// late I/O (or a late acknowledgement) is told apart from its current
/// lease. Epochs are never reused by one [`lease::LeaseTable`]; 0 is "none".
pub type Epoch = u64;

/// What a node opens a file for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    /// Two uses of one file from different nodes conflict unless both only
    /// read.
    pub fn conflicts(self, other: Access) -> bool {
        self == Access::Write || other == Access::Write
    }
}

/// What a grant allows the holder to do with its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Answer from the cache: reads (`Read`), and also buffer writes
    /// (`Write`, flushed before the lease is given back).
    Cached(Access),
    /// Cache nothing: every read and write goes to the serving node (the
    /// file is write-shared between nodes, Sprite's rule).
    Uncached,
}

/// The answer to a lease request, carried in the reply to the request that
/// asked (open, or a lookup/getattr/opendir that wants to cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub mode: Mode,
    /// The lease's epoch; [`NO_EPOCH`] for an uncached answer that leaves
    /// nothing held on the serving node.
    pub epoch: Epoch,
}

/// The epoch of nothing held.
pub const NO_EPOCH: Epoch = 0;
