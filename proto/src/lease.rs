//! What coherent caching adds to the wire between a client node and the
//! node that serves a file (the rules are in `cache/README.md`).
//!
//! A grant rides in the reply of the request that asked for it
//! ([`crate::fs::FsReply::Leased`]); a recall is a request of its own, from
//! the serving node to the holder, answered once the holder's kernel has
//! dropped what it cached.
use serde::{Deserialize, Serialize};

use crate::fs::RemoteIno;

pub use mosix_cache::{Access, Epoch, Grant, Mode, NO_EPOCH};

/// Serving node → holder: stop answering `file` from caches held under
/// `epoch`, drop the kernel's copy, then answer [`RecallDone`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Recall {
    /// The holder's daemon run the lease was granted to: a later run holds
    /// nothing and answers at once.
    pub client_run: u64,
    /// The serving daemon's run (its export epoch): leases of another run
    /// of the serving node are gone anyway.
    pub server_run: u64,
    pub file: RemoteIno,
    pub epoch: Epoch,
}

/// Holder → serving node: nothing of `file` under `epoch` is cached any
/// more, the kernel's copy included.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RecallDone {
    pub file: RemoteIno,
    pub epoch: Epoch,
}
