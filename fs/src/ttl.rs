//! How long the kernel may cache what the namespace answers: the one policy
//! for entries and attributes of every part of `/mosix`.
use std::time::Duration;

use crate::attr::{Entry, NodeAttr};
use crate::ino::{self, Ino};

/// The virtual entries (the root's children) never change while the daemon
/// runs.
pub const VIRTUAL: Duration = Duration::from_secs(60);
/// The `nodes/<node>` names. Membership changes are seen at most this late
/// in path walks; operations on a dead node's files fail at once regardless.
pub const NODE_NAME: Duration = Duration::from_secs(1);

/// (attribute, entry) lifetimes for `ino`, found in `parent` (None: not
/// reached by a lookup).
pub fn of(parent: Option<u64>, ino: u64) -> (Duration, Duration) {
    match ino::classify(ino) {
        // Files of nodes: nothing tells this node when another node changes
        // them until coherent caching exists, so nothing is kept; only the
        // node names themselves live as long as membership allows.
        Ino::Node { .. } if parent == Some(ino::NODES) => (Duration::ZERO, NODE_NAME),
        Ino::Node { .. } => (Duration::ZERO, Duration::ZERO),
        // Nodes and their loads change.
        Ino::Cluster(ino::ClusterIno::Members) => (Duration::ZERO, Duration::ZERO),
        Ino::Cluster(ino::ClusterIno::Node { .. }) | Ino::Cluster(ino::ClusterIno::Nodes) => {
            (Duration::ZERO, Duration::ZERO)
        }
        // /mosix/home's target, and so its size, depends on the caller.
        Ino::Root(ino::HOME) => (Duration::ZERO, VIRTUAL),
        _ => (VIRTUAL, VIRTUAL),
    }
}

/// `attr` with the lifetimes the policy gives it when found in `parent`.
pub fn entry(parent: Option<u64>, attr: NodeAttr) -> Entry {
    let (attr_ttl, entry_ttl) = of(parent, attr.ino);
    Entry {
        attr,
        attr_ttl,
        entry_ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_files_are_never_cached_yet() {
        let f = ino::node_file(2, 77);
        assert_eq!(of(Some(f), f), (Duration::ZERO, Duration::ZERO));
        assert_eq!(of(Some(ino::NODES), ino::node_file(2, 1)).1, NODE_NAME);
        assert_eq!(of(None, ino::HOME).0, Duration::ZERO);
        assert_eq!(of(None, ino::PROC), (VIRTUAL, VIRTUAL));
    }
}
