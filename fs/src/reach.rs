//! How the namespace reaches the cluster: who is alive (a [`ClusterView`])
//! and the services of each node (a [`Connector`] for other nodes; this
//! node's own services in-process).
use std::sync::Arc;
use std::time::SystemTime;

use mosix_procview::node::LocalNode;
use mosix_proto::MemberInfo;

use crate::attr::{Kind, NodeAttr};
use crate::callers::{Caller, Callers};
use crate::error::FsResult;
use crate::service::FileService;

/// Membership as this node sees it.
pub trait ClusterView: Send + Sync + 'static {
    /// Names of the other live members.
    fn alive_nodes(&self) -> Vec<String>;
    /// The membership table, this node included, with load records.
    fn members(&self) -> Vec<MemberInfo>;
}

/// The services of other nodes. Each fails at once for a node that is
/// unknown ([`FsError::NoSuchNode`]) or known dead ([`FsError::NodeDown`]).
pub trait Connector: Send + Sync + 'static {
    fn files(&self, node: &str) -> FsResult<Arc<dyn FileService>>;
}

pub struct Reach {
    pub self_name: String,
    pub local_files: Arc<dyn FileService>,
    pub local_node: Arc<LocalNode>,
    /// Where `/mosix/proc` points: the process view's own mount, once the
    /// daemon made it.
    pub proc_link: std::sync::OnceLock<Vec<u8>>,
    pub view: Arc<dyn ClusterView>,
    pub connect: Arc<dyn Connector>,
    pub callers: Callers,
    /// The times of the virtual files.
    started: SystemTime,
}

impl Reach {
    pub fn new(
        self_name: String,
        local_files: Arc<dyn FileService>,
        local_node: Arc<LocalNode>,
        view: Arc<dyn ClusterView>,
        connect: Arc<dyn Connector>,
    ) -> Self {
        Reach {
            self_name,
            local_files,
            proc_link: std::sync::OnceLock::new(),
            local_node,
            view,
            connect,
            callers: Callers::default(),
            started: SystemTime::now(),
        }
    }

    pub fn is_self(&self, node: &str) -> bool {
        node == self.self_name
    }

    pub fn is_self_bytes(&self, node: &[u8]) -> bool {
        node == self.self_name.as_bytes()
    }

    /// Every live node, this one included, in name order.
    pub fn live_nodes(&self) -> Vec<String> {
        let mut v = self.view.alive_nodes();
        v.push(self.self_name.clone());
        v.sort();
        v.dedup();
        v
    }

    pub fn is_alive(&self, node: &str) -> bool {
        self.is_self(node) || self.view.alive_nodes().iter().any(|n| n == node)
    }

    pub fn files(&self, node: &str) -> FsResult<Arc<dyn FileService>> {
        if self.is_self(node) {
            Ok(self.local_files.clone())
        } else {
            self.connect.files(node)
        }
    }

    pub fn creds(&self, c: Caller) -> mosix_proto::fs::Creds {
        self.callers.creds(c)
    }

    /// Where `/mosix/home` points for process `pid` of this node.
    pub fn home_of(&self, pid: u32) -> String {
        self.local_node.migrator().home_of(pid)
    }

    /// Attributes of a file mosix makes up (root-owned, dated from the
    /// daemon's start).
    pub fn virtual_attr(&self, ino: u64, kind: Kind, perm: u16, size: u64) -> NodeAttr {
        NodeAttr {
            ino,
            size,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            kind,
            perm,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
        }
    }
}
