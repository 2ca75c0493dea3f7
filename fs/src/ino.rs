//! The inode number space of `/mosix`, owned here and nowhere else.
//!
//! ```text
//! bits 63..48  node slot (1..)   | bits 47..0 the serving node's id  -> a node's file
//! 0                                                                  -> (never used)
//! 1..=6        the virtual root and its children (`proc`: a symlink to
//!              the process view's own mount, see mosix_procview)
//! 8, 9         /mosix/cluster/{members,nodes}
//! 1<<39 | slot << 8 | file                                           -> /mosix/cluster/nodes/<node>/<file>
//! ```
//!
//! A node slot names one *run* of one node: a restarted node gets a new
//! slot, so ids from its previous run can never alias files of the new one.
//! Every operation turns its inode number into an [`Ino`] once, with
//! [`classify`], and matches on that.
use mosix_proto::fs::RemoteIno;

pub const ROOT: u64 = 1;
pub const NODES: u64 = 2;
pub const HERE: u64 = 3;
pub const HOME: u64 = 4;
pub const CLUSTER: u64 = 5;
pub const PROC: u64 = 6;
pub const CLUSTER_MEMBERS: u64 = 8;
pub const CLUSTER_NODES: u64 = 9;

const NODE_SHIFT: u32 = 48;
const ID_MASK: u64 = (1 << NODE_SHIFT) - 1;
const CLUSTER_BASE: u64 = 1 << 39;
const CLUSTER_FILE_BITS: u32 = 8;

/// What an inode number stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ino {
    /// `/mosix`, `nodes`, `here`, `home`, `proc`: answered by this node alone.
    Root(u64),
    /// A file served by the node run in `slot`, which knows it as `id`.
    Node { slot: usize, id: RemoteIno },
    /// `/mosix/cluster` and below.
    Cluster(ClusterIno),
    /// Nothing mosix ever handed out.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIno {
    Top,
    Members,
    Nodes,
    /// `nodes/<node>` (`file` 0) and its files (1..).
    Node {
        slot: usize,
        file: usize,
    },
}

pub fn classify(ino: u64) -> Ino {
    if ino >> NODE_SHIFT != 0 {
        return Ino::Node {
            slot: (ino >> NODE_SHIFT) as usize,
            id: ino & ID_MASK,
        };
    }
    match ino {
        ROOT | NODES | HERE | HOME | PROC => Ino::Root(ino),
        CLUSTER => Ino::Cluster(ClusterIno::Top),
        CLUSTER_MEMBERS => Ino::Cluster(ClusterIno::Members),
        CLUSTER_NODES => Ino::Cluster(ClusterIno::Nodes),
        i if i & CLUSTER_BASE != 0 => {
            let rest = i & !CLUSTER_BASE;
            Ino::Cluster(ClusterIno::Node {
                slot: (rest >> CLUSTER_FILE_BITS) as usize,
                file: (rest & ((1 << CLUSTER_FILE_BITS) - 1)) as usize,
            })
        }
        _ => Ino::Unknown,
    }
}

/// The inode number of file `id` of the node run in `slot`.
pub fn node_file(slot: usize, id: RemoteIno) -> u64 {
    ((slot as u64) << NODE_SHIFT) | (id & ID_MASK)
}

/// The inode number of `/mosix/cluster/nodes/<node in slot>/<file>`.
pub fn cluster_node(slot: usize, file: usize) -> u64 {
    CLUSTER_BASE | ((slot as u64) << CLUSTER_FILE_BITS) | file as u64
}

/// Whether the content of `ino` is generated at open (/mosix/cluster
/// files): no size is known until it is rendered.
pub fn is_generated(ino: u64) -> bool {
    matches!(classify(ino), Ino::Cluster(_))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn node_files_round_trip(slot in 1usize..0xffff, id in 0u64..(1 << 48)) {
            prop_assert_eq!(classify(node_file(slot, id)), Ino::Node { slot, id });
        }

        #[test]
        fn cluster_files_round_trip(slot in 0usize..(1 << 20), file in 0usize..256) {
            prop_assert_eq!(
                classify(cluster_node(slot, file)),
                Ino::Cluster(ClusterIno::Node { slot, file })
            );
        }
    }

    #[test]
    fn the_fixed_numbers_are_distinct_kinds() {
        assert_eq!(classify(ROOT), Ino::Root(ROOT));
        assert_eq!(classify(HOME), Ino::Root(HOME));
        assert_eq!(classify(PROC), Ino::Root(PROC));
        assert_eq!(classify(7), Ino::Unknown);
        assert_eq!(classify(CLUSTER_NODES), Ino::Cluster(ClusterIno::Nodes));
        assert_eq!(classify(0), Ino::Unknown);
        assert_eq!(classify(12), Ino::Unknown);
        assert!(is_generated(cluster_node(5, 1)));
        assert!(!is_generated(node_file(1, 1)));
    }
}
