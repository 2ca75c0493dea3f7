//! How the process view reaches one node's processes: [`Processes`], served
//! for this node by its [`LocalNode`] in-process and for other nodes by the
//! daemon over the transport.
use std::sync::Arc;

use async_trait::async_trait;
use mosix_procview::node::LocalNode;
use mosix_proto::fs::Creds;
use mosix_proto::proc::{NodeFile, ProcEntry, ProcFile};

use crate::error::{FsError, FsResult};

#[async_trait]
pub trait Processes: Send + Sync + 'static {
    /// The node's id (the high bits of its gpids) and its processes.
    async fn list(&self) -> FsResult<(u16, Vec<ProcEntry>)>;
    /// One per-process file, rendered now on the process's node.
    async fn read(&self, creds: &Creds, pid: u32, file: ProcFile) -> FsResult<Vec<u8>>;
    /// One of the node's node-wide procfs files (meminfo, stat...), raw.
    async fn node_file(&self, file: NodeFile) -> FsResult<Vec<u8>>;
    /// Pins process `pid` to the node, or frees it.
    async fn set_lock(&self, creds: &Creds, pid: u32, on: bool) -> FsResult<()>;
    /// Moves process `pid` (whose home is the node) to `target`.
    async fn migrate(&self, creds: &Creds, pid: u32, target: &str) -> FsResult<()>;
}

/// This node's processes, without the network. Reading this node's /proc
/// takes microseconds, so it runs inline.
pub struct LocalProcs(pub Arc<LocalNode>);

#[async_trait]
impl Processes for LocalProcs {
    async fn list(&self) -> FsResult<(u16, Vec<ProcEntry>)> {
        Ok((self.0.node_id(), self.0.list()))
    }

    async fn read(&self, creds: &Creds, pid: u32, file: ProcFile) -> FsResult<Vec<u8>> {
        self.0.read(creds, pid, file).map_err(FsError::Os)
    }

    async fn node_file(&self, file: NodeFile) -> FsResult<Vec<u8>> {
        self.0.node_file(file).map_err(FsError::Os)
    }

    async fn set_lock(&self, creds: &Creds, pid: u32, on: bool) -> FsResult<()> {
        self.0.set_lock(creds, pid, on).map_err(FsError::Os)
    }

    async fn migrate(&self, creds: &Creds, pid: u32, target: &str) -> FsResult<()> {
        self.0.migrate(creds, pid, target).map_err(FsError::Os)
    }
}
