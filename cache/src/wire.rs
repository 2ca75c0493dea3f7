//! What the lease protocol adds to the wire, one serde type per kind of
//! message. `mosix-proto` will carry them (a [`crate::Grant`] inside the
//! replies that grant, the rest as their own messages); they live here so
//! the state machines and their tests need nothing else.
use serde::{Deserialize, Serialize};

use crate::{Epoch, Grant};

/// Serving node → holder: stop caching `file` under `epoch`: flush dirty
/// data (write-backs under `epoch` are still accepted), drop what is
/// cached (the kernel's copy too), then answer [`RecallDone`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Recall<F> {
    pub file: F,
    pub epoch: Epoch,
}

/// Holder → serving node: nothing of `file` under `epoch` is cached or
/// dirty here any more. Also sent unasked to give a lease back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecallDone<F> {
    pub file: F,
    pub epoch: Epoch,
}

/// Serving node → client, in the reply to its periodic renewal: the leases
/// it still holds (any other it thought it had was fenced or died with its
/// session) and the recalls it has not answered yet (resent, in case one
/// was lost).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal<F> {
    pub live: Vec<(F, Grant)>,
    pub recalls: Vec<Recall<F>>,
}

/// Serving node → client: the write-sharing of `file` ended; the client,
/// which still has it open uncached, may ask again to cache it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MayCache<F> {
    pub file: F,
}
