//! How the process view reaches one node's processes ([`Processes`]: this
//! node's [`LocalNode`] in-process, other nodes' through the daemon), and
//! the cluster around it ([`Cluster`]: who is alive and each node's
//! processes).
use std::sync::Arc;

use async_trait::async_trait;
use mosix_proto::fs::Creds;
use mosix_proto::proc::{NodeFile, ProcEntry, ProcFile, SnapshotPage};

use crate::error::{ProcError, ProcResult};
use crate::node::LocalNode;

#[async_trait]
pub trait Processes: Send + Sync + 'static {
    /// The node's id (the high bits of its gpids) and its processes.
    async fn list(&self) -> ProcResult<(u16, Vec<ProcEntry>)>;
    /// One page of the node's processes with their most read files, those
    /// with pids above `after` (see [`LocalNode::snapshot`]).
    async fn snapshot(&self, after: u32) -> ProcResult<SnapshotPage>;
    /// One per-process file, rendered now on the process's node.
    async fn read(&self, creds: &Creds, pid: u32, file: ProcFile) -> ProcResult<Vec<u8>>;
    /// One of the node's node-wide procfs files (meminfo, stat...), raw.
    async fn node_file(&self, file: NodeFile) -> ProcResult<Vec<u8>>;
    /// Pins process `pid` to the node, or frees it.
    async fn set_lock(&self, creds: &Creds, pid: u32, on: bool) -> ProcResult<()>;
    /// Moves process `pid` (whose home is the node) to `target`.
    async fn migrate(&self, creds: &Creds, pid: u32, target: &str) -> ProcResult<()>;
}

/// This node's processes, without the network. Reading this node's /proc
/// takes microseconds, so it runs inline.
pub struct LocalProcs(pub Arc<LocalNode>);

#[async_trait]
impl Processes for LocalProcs {
    async fn list(&self) -> ProcResult<(u16, Vec<ProcEntry>)> {
        Ok((self.0.node_id(), self.0.list()))
    }

    async fn snapshot(&self, after: u32) -> ProcResult<SnapshotPage> {
        Ok(self.0.snapshot(after))
    }

    async fn read(&self, creds: &Creds, pid: u32, file: ProcFile) -> ProcResult<Vec<u8>> {
        Ok(self.0.read(creds, pid, file)?)
    }

    async fn node_file(&self, file: NodeFile) -> ProcResult<Vec<u8>> {
        Ok(self.0.node_file(file)?)
    }

    async fn set_lock(&self, creds: &Creds, pid: u32, on: bool) -> ProcResult<()> {
        Ok(self.0.set_lock(creds, pid, on)?)
    }

    async fn migrate(&self, creds: &Creds, pid: u32, target: &str) -> ProcResult<()> {
        Ok(self.0.migrate(creds, pid, target)?)
    }
}

/// The rest of the cluster, as the daemon knows it.
pub trait Cluster: Send + Sync + 'static {
    /// Names of the other live members.
    fn alive_nodes(&self) -> Vec<String>;
    /// Another node's processes; fails at once for a node that is unknown
    /// or known dead.
    fn procs(&self, node: &str) -> ProcResult<Arc<dyn Processes>>;
}

impl From<ProcError> for std::io::Error {
    fn from(e: ProcError) -> Self {
        std::io::Error::from_raw_os_error(e.errno())
    }
}
