//! The `/mosix` namespace.
//!
//! - [`export`]: the serving side. Runs file operations on this node's
//!   exported tree, with the caller's credentials, never resolving a path
//!   outside the export.
//! - [`namespace`]: what `/mosix` means, without FUSE: the virtual root,
//!   `nodes/`, `here`, `home`, and where each operation goes.
//! - [`fuse`]: the thin FUSE adapter over [`namespace`].
pub mod clusterdir;
pub mod creds;
pub mod error;
pub mod export;
pub mod fuse;
pub mod namespace;
pub mod procdir;
pub mod service;

pub use error::FsError;
pub use namespace::{Caller, Cluster, MosixFs};
