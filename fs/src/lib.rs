//! The `/mosix` namespace.
//!
//! Where things live:
//! - [`ino`]: the inode number space, and the one classifier of numbers.
//! - [`namespace`]: [`MosixFs`], what each operation means and which part
//!   of the tree (or which node's [`service::FileService`]) answers it.
//! - [`root`], [`clusterdir`]: the virtual top and `/mosix/cluster`;
//!   [`snapshots`] keeps the latter's per-open contents. `/mosix/proc` is a
//!   symlink to the process view's own mount (`mosix_procview`).
//! - [`nodes`]: which inode slot stands for which run of which node.
//! - [`reach`]: who is alive and how to reach each node's services.
//! - [`service`]: the typed file service of one node; [`local`] serves this
//!   node's files from the [`export`] in-process; [`remote`] asks another
//!   node, and [`cached`] caches its answers under that node's leases;
//!   [`faulty`] injects failures for tests.
//! - [`export`]: the serving side. Runs file operations on this node's
//!   exported tree, with the caller's credentials, never resolving a path
//!   outside the export.
//! - [`callers`]: the caller's credentials; [`attr`]: attributes and
//!   entries; [`ttl`]: the one kernel-cache lifetime policy.
//! - [`fh`]: which file handles are local passthrough opens.
//! - [`passthrough`], [`posix_locks`], [`invalidate`]: the fuser-free logic
//!   behind kernel passthrough, close-time lock release and kernel cache
//!   invalidation.
//! - [`fuse`]: the thin FUSE adapter over [`namespace`].
pub mod attr;
pub mod cached;
pub mod callers;
pub mod clusterdir;
pub mod creds;
pub mod error;
pub mod export;
pub mod faulty;
pub mod fh;
pub mod fuse;
pub mod ino;
pub mod invalidate;
pub mod local;
pub mod namespace;
pub mod nodes;
pub mod passthrough;
pub mod posix_locks;
pub mod reach;
pub mod remote;
pub mod root;
pub mod service;
pub mod snapshots;
pub mod ttl;

pub use callers::Caller;
pub use error::FsError;
pub use namespace::MosixFs;

#[cfg(test)]
mod tests;
