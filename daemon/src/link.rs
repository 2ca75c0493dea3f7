//! How this node reaches the rest of the cluster for `/mosix`: membership
//! says who is alive and where ([`ClusterLink`] is the namespace's
//! `ClusterView` and `Connector`, and the process view's `Cluster`), and
//! the peer connections carry each request ([`PeerTransport`],
//! [`RemoteProcs`]).
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use mosix_cache::wire::Recall;
use mosix_cache::RECALL_TIMEOUT;
use mosix_fs::cached::ClientCaches;
use mosix_fs::export::Recaller;
use mosix_fs::reach::{ClusterView, Connector};
use mosix_fs::remote::{FsCall, RemoteService, Transport};
use mosix_fs::service::{ClientId, FileService, Run};
use mosix_fs::FsError;
use mosix_net::{NetError, Peers};
use mosix_procview::error::{ProcError, ProcResult};
use mosix_procview::service::Processes;
use mosix_proto::fs::{Creds, RemoteIno};
use mosix_proto::proc::{NodeFile, ProcEntry, ProcFile, SnapshotPage};
use mosix_proto::{MemberState, Request, Response};

use crate::membership::Membership;

type FsResult<T> = Result<T, FsError>;

/// Where `node` listens; fails at once for a node that is unknown or known
/// dead, instead of waiting on a handshake.
fn address(membership: &Membership, node: &str) -> FsResult<SocketAddr> {
    match membership.member(node) {
        None => Err(FsError::NoSuchNode(node.to_string())),
        Some((_, MemberState::Dead | MemberState::Left)) => {
            Err(FsError::NodeDown(node.to_string()))
        }
        Some((addr, _)) => Ok(addr),
    }
}

/// Why a request to `node` failed, as the namespace's errors: a node that
/// cannot be reached (no handshake, or an open connection that went silent
/// for `IDLE_TIMEOUT`) is down; anything else failed in transit.
fn net_error(node: &str, e: NetError) -> FsError {
    match e {
        NetError::Connect { .. } | NetError::ConnectionLost(quinn::ConnectionError::TimedOut) => {
            FsError::NodeDown(node.to_string())
        }
        e => FsError::Transport(e.to_string()),
    }
}

fn unexpected(r: Response) -> FsError {
    FsError::Transport(format!("unexpected response {r:?}"))
}

/// File requests over the peer connections, sent as this run of this node.
pub struct PeerTransport {
    membership: Membership,
    peers: Arc<Peers>,
    /// This daemon's run: the serving nodes keep what we hold per run.
    run: u64,
}

#[async_trait]
impl Transport for PeerTransport {
    async fn fs(&self, node: &str, call: FsCall) -> FsResult<(Run, mosix_proto::fs::FsResult)> {
        let addr = address(&self.membership, node)?;
        let req = Request::Fs {
            client_run: self.run,
            creds: call.creds,
            op: call.op,
            epoch: call.epoch,
        };
        match self.peers.request(addr, &req).await {
            Ok(Response::Fs { epoch, result }) => Ok((epoch, result)),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(net_error(node, e)),
        }
    }
}

/// Another node's processes, over the peer connections.
pub struct RemoteProcs {
    node: String,
    addr: SocketAddr,
    peers: Arc<Peers>,
}

/// The process view's errors for the namespace's: the same causes.
fn proc_error(e: FsError) -> ProcError {
    match e {
        FsError::Os(e) => ProcError::Os(e),
        FsError::NoSuchNode(n) => ProcError::NoSuchNode(n),
        FsError::NodeDown(n) => ProcError::NodeDown(n),
        e => ProcError::Transport(e.to_string()),
    }
}

impl RemoteProcs {
    async fn ask(&self, req: Request) -> ProcResult<Response> {
        self.peers
            .request(self.addr, &req)
            .await
            .map_err(|e| proc_error(net_error(&self.node, e)))
    }
}

fn unexpected_proc(r: Response) -> ProcError {
    proc_error(unexpected(r))
}

#[async_trait]
impl Processes for RemoteProcs {
    async fn list(&self) -> ProcResult<(u16, Vec<ProcEntry>)> {
        match self.ask(Request::ProcList).await? {
            Response::Procs { node_id, procs } => Ok((node_id, procs)),
            other => Err(unexpected_proc(other)),
        }
    }

    async fn snapshot(&self, after: u32) -> ProcResult<SnapshotPage> {
        match self.ask(Request::ProcSnapshot { after }).await? {
            Response::ProcSnapshot(page) => Ok(page),
            other => Err(unexpected_proc(other)),
        }
    }

    async fn read(&self, creds: &Creds, pid: u32, file: ProcFile) -> ProcResult<Vec<u8>> {
        let req = Request::ProcRead {
            creds: creds.clone(),
            pid,
            file,
        };
        match self.ask(req).await? {
            Response::ProcData(r) => r.map(|b| b.into_vec()).map_err(ProcError::Os),
            other => Err(unexpected_proc(other)),
        }
    }

    async fn node_file(&self, file: NodeFile) -> ProcResult<Vec<u8>> {
        match self.ask(Request::NodeFile { file }).await? {
            Response::ProcData(r) => r.map(|b| b.into_vec()).map_err(ProcError::Os),
            other => Err(unexpected_proc(other)),
        }
    }

    async fn set_lock(&self, creds: &Creds, pid: u32, on: bool) -> ProcResult<()> {
        let req = Request::SetLock {
            creds: creds.clone(),
            pid,
            on,
        };
        match self.ask(req).await? {
            Response::Done(r) => r.map_err(ProcError::Os),
            other => Err(unexpected_proc(other)),
        }
    }

    async fn migrate(&self, creds: &Creds, pid: u32, target: &str) -> ProcResult<()> {
        let req = Request::Migrate {
            creds: creds.clone(),
            pid,
            target: target.to_string(),
        };
        match self.ask(req).await? {
            Response::Done(r) => r.map_err(ProcError::Os),
            other => Err(unexpected_proc(other)),
        }
    }
}

pub struct ClusterLink {
    membership: Membership,
    peers: Arc<Peers>,
    transport: Arc<PeerTransport>,
    /// Other nodes' files are reached through their caches, if caching is
    /// on.
    caches: Option<Arc<ClientCaches>>,
}

impl ClusterLink {
    pub fn new(
        membership: Membership,
        peers: Arc<Peers>,
        run: u64,
        caches: Option<Arc<ClientCaches>>,
    ) -> Self {
        ClusterLink {
            transport: Arc::new(PeerTransport {
                membership: membership.clone(),
                peers: peers.clone(),
                run,
            }),
            membership,
            peers,
            caches,
        }
    }
}

/// Sends this node's recalls to the nodes caching its files: one request
/// each, answered once the holder's kernel dropped its copy. A holder that
/// cannot be reached is fenced by the lease table when its time is up.
pub struct PeerRecaller {
    pub membership: Membership,
    pub peers: Arc<Peers>,
    pub export: std::sync::Weak<mosix_fs::export::Export>,
    pub rt: tokio::runtime::Handle,
}

impl Recaller for PeerRecaller {
    fn recall(&self, to: &ClientId, server_run: u64, recall: Recall<RemoteIno>) {
        let Ok(addr) = address(&self.membership, &to.node) else {
            return;
        };
        let (peers, export, to) = (self.peers.clone(), self.export.clone(), to.clone());
        let req = Request::Recall(mosix_proto::lease::Recall {
            client_run: to.run,
            server_run,
            file: recall.file,
            epoch: recall.epoch,
        });
        self.rt.spawn(async move {
            match tokio::time::timeout(RECALL_TIMEOUT, peers.request(addr, &req)).await {
                Ok(Ok(Response::RecallDone(d))) => {
                    if let Some(e) = export.upgrade() {
                        e.recall_done(&to, d.file, d.epoch);
                    }
                }
                Ok(Ok(other)) => tracing::warn!(node = %to.node, ?other, "odd answer to a recall"),
                Ok(Err(e)) => tracing::debug!(node = %to.node, error = %e, "recall not delivered"),
                Err(_) => tracing::debug!(node = %to.node, "recall not answered in time"),
            }
        });
    }
}

impl ClusterView for ClusterLink {
    fn alive_nodes(&self) -> Vec<String> {
        self.membership.alive_names()
    }

    fn members(&self) -> Vec<mosix_proto::MemberInfo> {
        self.membership.snapshot()
    }
}

impl Connector for ClusterLink {
    fn files(&self, node: &str) -> FsResult<Arc<dyn FileService>> {
        address(&self.membership, node)?;
        Ok(match &self.caches {
            Some(c) => c.service(node, self.transport.clone()),
            None => Arc::new(RemoteService::new(node.to_string(), self.transport.clone())),
        })
    }
}

impl mosix_procview::service::Cluster for ClusterLink {
    fn alive_nodes(&self) -> Vec<String> {
        self.membership.alive_names()
    }

    fn procs(&self, node: &str) -> ProcResult<Arc<dyn Processes>> {
        Ok(Arc::new(RemoteProcs {
            node: node.to_string(),
            addr: address(&self.membership, node).map_err(proc_error)?,
            peers: self.peers.clone(),
        }))
    }
}
