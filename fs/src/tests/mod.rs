//! Tests of the namespace over real exports, without FUSE and without a
//! cluster: node n2 is served in-process through the fault-injecting
//! transport, so each row of the failure table in docs/SEMANTICS.md is
//! driven through the real namespace code.
mod failures;
mod namespace;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use mosix_procview::node::{LocalNode, Stationary};

use crate::callers::Caller;
use crate::error::{FsError, FsResult};
use crate::export::{Export, ExportConfig};
use crate::faulty::{Faulty, Loopback};
use crate::namespace::MosixFs;
use crate::reach::{ClusterView, Connector};
use crate::remote::RemoteService;
use crate::service::FileService;

pub(crate) const ROOT: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 0,
};

/// n1 (this node) and n2, whose membership state the test sets.
pub(crate) struct TestCluster {
    pub n2_alive: AtomicBool,
    pub n2: Arc<Faulty<Loopback>>,
}

impl ClusterView for TestCluster {
    fn alive_nodes(&self) -> Vec<String> {
        if self.n2_alive.load(Ordering::SeqCst) {
            vec!["n2".into()]
        } else {
            vec![]
        }
    }
    fn members(&self) -> Vec<mosix_proto::MemberInfo> {
        Vec::new()
    }
}

impl Connector for TestCluster {
    fn files(&self, node: &str) -> FsResult<Arc<dyn FileService>> {
        match node {
            "n2" if self.n2_alive.load(Ordering::SeqCst) => {
                Ok(Arc::new(RemoteService::new("n2".into(), self.n2.clone())))
            }
            // Known to membership, declared dead.
            "n2" => Err(FsError::NodeDown(node.into())),
            _ => Err(FsError::NoSuchNode(node.into())),
        }
    }
}

pub(crate) fn export(dir: &std::path::Path) -> Arc<Export> {
    Arc::new(
        Export::new(ExportConfig {
            root: dir.to_path_buf(),
            ..Default::default()
        })
        .unwrap(),
    )
}

pub(crate) struct Setup {
    pub fs: MosixFs,
    pub cluster: Arc<TestCluster>,
    pub d1: tempfile::TempDir,
    pub d2: tempfile::TempDir,
}

pub(crate) fn setup() -> Setup {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(d2.path().join("f"), b"one").unwrap();
    std::fs::write(d1.path().join("g"), b"local").unwrap();
    let cluster = Arc::new(TestCluster {
        n2_alive: AtomicBool::new(true),
        n2: Arc::new(Faulty::new(Loopback::new(export(d2.path()), "n1"))),
    });
    let node = Arc::new(LocalNode::new(
        1,
        Arc::new(Stationary { node: "n1".into() }),
    ));
    let fs = MosixFs::new(
        "n1".into(),
        export(d1.path()),
        node,
        cluster.clone(),
        cluster.clone(),
    );
    Setup {
        fs,
        cluster,
        d1,
        d2,
    }
}
