//! The mosix node daemon.
pub mod config;
pub mod control;
pub mod identity;
pub mod link;
pub mod load;
pub mod membership;
pub mod migrate;
pub mod mount;
pub mod mounttable;
pub mod startup;

use std::sync::Arc;

use bytes::Bytes;
use mosix_fs::service::{ClientId, Who};
use mosix_net::{Peers, Tls, TlsFiles};
use mosix_procview::node::LocalNode;
use mosix_proto::fs::FsReply;
use mosix_proto::{Datagram, RemoteError, Request, Response};

pub use config::Config;
use membership::Membership;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Net(#[from] mosix_net::NetError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("export {path}: {source}")]
    Export {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("mounting {path}: {source}")]
    Mount {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Control {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Serves authenticated peers.
struct Node {
    name: String,
    migrations: Arc<migrate::Migrations>,
    procs: Arc<LocalNode>,
    membership: Membership,
    export: Arc<mosix_fs::export::Export>,
    revoked: Arc<mosix_net::pki::Revocations>,
    /// This daemon's run, and its caches of other nodes' files (which
    /// their recalls empty).
    run: u64,
    caches: Option<Arc<mosix_fs::cached::ClientCaches>>,
}

impl mosix_net::Handler for Node {
    async fn handle(&self, peer: &mosix_net::Peer, req: Request) -> Response {
        // Revoked while connected: the handshake refuses it from now on.
        if self.revoked.is_revoked(&peer.fingerprint) {
            return Response::Error(RemoteError::BadRequest(format!(
                "the certificate of {} is revoked",
                peer.name
            )));
        }
        match req {
            Request::Leaving { run } => {
                self.membership.receive_leaving(peer, run);
                Response::Done(Ok(()))
            }
            Request::RemoveNode { node, revoke } => Response::Done(
                self.membership
                    .apply_removal(&node, revoke.as_deref(), &self.revoked)
                    .map_err(|e| {
                        tracing::warn!(asked_by = %peer.name, %node, "cannot remove: {e}");
                        libc::EINVAL
                    }),
            ),
            Request::Ping { nonce } => Response::Pong {
                nonce,
                node: self.name.clone(),
            },
            Request::Members => {
                let m = self.membership.clone();
                match tokio::task::spawn_blocking(move || m.snapshot()).await {
                    Ok(members) => Response::Members(members),
                    Err(e) => Response::Error(RemoteError::Unsupported(e.to_string())),
                }
            }
            // The transport answers Discard and unpacks FsWrite itself;
            // reaching here is a bug in the peer's framing, not ours to
            // crash on.
            Request::Discard { .. }
            | Request::FsWrite { .. }
            | Request::Arrive { .. }
            | Request::Checkpoint { .. }
            | Request::Restart { .. } => Response::Error(RemoteError::BadRequest(
                "payload must follow on the stream".into(),
            )),
            Request::NodeFile { file } => {
                let procs = self.procs.clone();
                Response::ProcData(
                    tokio::task::spawn_blocking(move || procs.node_file(file))
                        .await
                        .unwrap_or(Err(libc::EIO))
                        .map(serde_bytes::ByteBuf::from),
                )
            }
            Request::Kill { creds, pid, sig } => {
                let procs = self.procs.clone();
                Response::Killed(
                    tokio::task::spawn_blocking(move || procs.kill(&creds, pid, sig))
                        .await
                        .unwrap_or(Err(libc::EIO)),
                )
            }
            Request::ProcList => {
                let procs = self.procs.clone();
                match tokio::task::spawn_blocking(move || procs.list()).await {
                    Ok(list) => Response::Procs {
                        node_id: self.procs.node_id(),
                        procs: list,
                    },
                    Err(e) => Response::Error(RemoteError::Unsupported(e.to_string())),
                }
            }
            Request::SetLock { creds, pid, on } => {
                let procs = self.procs.clone();
                Response::Done(
                    tokio::task::spawn_blocking(move || procs.set_lock(&creds, pid, on))
                        .await
                        .unwrap_or(Err(libc::EIO)),
                )
            }
            Request::Migrate { creds, pid, target } => {
                let procs = self.procs.clone();
                Response::Done(
                    tokio::task::spawn_blocking(move || procs.migrate(&creds, pid, &target))
                        .await
                        .unwrap_or(Err(libc::EIO)),
                )
            }
            Request::ProcSnapshot { after } => {
                let procs = self.procs.clone();
                match tokio::task::spawn_blocking(move || procs.snapshot(after)).await {
                    Ok(page) => Response::ProcSnapshot(page),
                    Err(e) => Response::Error(RemoteError::Unsupported(e.to_string())),
                }
            }
            // Rendered inline: /proc is served from memory in microseconds,
            // less than a hop to the blocking pool.
            Request::ProcRead { creds, pid, file } => Response::ProcData(
                self.procs
                    .read(&creds, pid, file)
                    .map(serde_bytes::ByteBuf::from),
            ),
            Request::Recall(r) => {
                // A lease granted to an earlier run of this daemon is gone
                // with it: nothing to drop.
                if let Some(c) = self.caches.as_ref().filter(|_| r.client_run == self.run) {
                    c.recall(&peer.name, r.server_run, r.file, r.epoch).await;
                }
                Response::RecallDone(mosix_proto::lease::RecallDone {
                    file: r.file,
                    epoch: r.epoch,
                })
            }
            Request::Fs {
                client_run,
                creds,
                op,
                epoch: expect,
            } => {
                let export = self.export.clone();
                let epoch = export.epoch();
                if expect.is_some_and(|e| e != epoch) {
                    return Response::Fs {
                        epoch,
                        result: Err(libc::ESTALE),
                    };
                }
                // The client is the node its certificate names, in the run
                // it says: what it holds here goes when that run ends.
                let who = Who {
                    client: ClientId {
                        node: peer.name.clone(),
                        run: client_run,
                    },
                    creds,
                };
                match tokio::task::spawn_blocking(move || export.handle(&who, op)).await {
                    Ok(result) => Response::Fs { epoch, result },
                    Err(e) => Response::Error(RemoteError::Unsupported(e.to_string())),
                }
            }
        }
    }

    async fn stream(
        &self,
        peer: &mosix_net::Peer,
        req: Request,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        match req {
            Request::Checkpoint { .. } | Request::Restart { .. } => {
                let id = self.procs.node_id();
                migrate::checkpoint::serve_stream(
                    self.migrations.clone(),
                    id,
                    peer,
                    req,
                    send,
                    recv,
                )
                .await
            }
            _ => self.migrations.clone().arrive(peer, req, send, recv).await,
        }
    }

    fn datagram(&self, peer: &mosix_net::Peer, data: Bytes) {
        if self.revoked.is_revoked(&peer.fingerprint) {
            return;
        }
        match Datagram::decode(&data) {
            Ok(Datagram::Swim(p)) => self.membership.receive_swim(peer, Bytes::from(p)),
            // A node speaks for itself only.
            Ok(Datagram::Load { node, record }) if *node == *peer.name => {
                self.membership.receive_load(&node, record)
            }
            Ok(Datagram::Load { node, .. }) => {
                membership::refuse(peer, &format!("load record of {node}"))
            }
            Err(e) => tracing::warn!(error = %e, len = data.len(), "malformed datagram dropped"),
        }
    }

    /// Read data goes raw after its reply frame: encoding it would copy
    /// every byte twice more on each side.
    async fn handle_bulk(&self, peer: &mosix_net::Peer, req: Request) -> (Response, Option<Bytes>) {
        match self.handle(peer, req).await {
            Response::Fs {
                epoch,
                result: Ok(FsReply::Data(data)),
            } => match u32::try_from(data.len()) {
                Ok(len) => (Response::FsData { epoch, len }, Some(Bytes::from(data))),
                Err(_) => (
                    Response::Fs {
                        epoch,
                        result: Err(libc::EIO),
                    },
                    None,
                ),
            },
            other => (other, None),
        }
    }
}

/// What a client node holds here (locks above all: they would block
/// everyone forever) goes as soon as membership declares the node dead, or
/// sees it back as a new run, however fast it restarted.
async fn end_departed_clients(membership: Membership, export: Arc<mosix_fs::export::Export>) {
    let mut tick = tokio::time::interval(SESSION_SWEEP);
    loop {
        tick.tick().await;
        for (name, state, run) in membership.runs() {
            match state {
                mosix_proto::MemberState::Dead | mosix_proto::MemberState::Left => {
                    export.drop_client(&name)
                }
                mosix_proto::MemberState::Alive => export.client_run_is(&name, run),
                mosix_proto::MemberState::Suspect => {}
            }
        }
    }
}

/// How often client sessions are checked against membership.
pub const SESSION_SWEEP: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs a node until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    let cfg = startup::preflight(cfg)?;
    let revoked = mosix_net::pki::Revocations::load(&startup::revocation_file(&cfg))?;
    let tls = Tls::load_revoking(
        &TlsFiles {
            ca: cfg.tls.ca.clone(),
            cert: cfg.tls.cert.clone(),
            key: cfg.tls.key.clone(),
        },
        revoked.clone(),
    )?;
    let endpoint = startup::bind_endpoint(cfg.listen, tls.server.clone()).await?;
    let peers = Peers::new(endpoint.clone(), tls.client.clone());
    let probe = Arc::new(
        tokio::task::spawn_blocking(load::LoadProbe::new)
            .await
            .expect("speed probe"),
    );
    // This start of the daemon: grows with every start, so peers tell a
    // restarted node from its predecessor.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let membership = Membership::start(
        cfg.name.clone(),
        cfg.node_id(),
        cfg.listen,
        cfg.peers.clone(),
        peers.clone(),
        probe,
        run,
    );
    // The mountpoint must exist before the export can hide it.
    if cfg.mount {
        mount::check_mountpoint(&cfg.mountpoint).map_err(|source| DaemonError::Mount {
            path: cfg.mountpoint.clone(),
            source,
        })?;
    }
    let export = Arc::new(
        mount::open_export(&cfg).map_err(|source| DaemonError::Export {
            path: cfg.export.path.clone(),
            source,
        })?,
    );
    let migrations = migrate::Migrations::new(
        cfg.name.clone(),
        cfg.export.path.clone(),
        membership.clone(),
        peers.clone(),
        tokio::runtime::Handle::current(),
    );
    export.set_local_node(&cfg.name);
    tracing::info!(limits = ?export.limits(), "client quotas");
    let procs = Arc::new(LocalNode::new(
        cfg.node_id(),
        Arc::new(migrate::MigratorHandle(migrations.clone())),
    ));
    let control_migrations = migrations.clone();
    let caching = cfg.cache.enabled || std::env::var_os("MOSIX_CACHE").is_some_and(|v| v == "1");
    let caches = caching.then(|| {
        mosix_fs::cached::ClientCaches::new(
            usize::try_from(cfg.cache.memory_mib << 20).unwrap_or(usize::MAX),
        )
    });
    if caching {
        // Leases are granted only once recalls can be sent.
        export.set_recaller(Arc::new(link::PeerRecaller {
            membership: membership.clone(),
            peers: peers.clone(),
            export: Arc::downgrade(&export),
            rt: tokio::runtime::Handle::current(),
        }));
        // This node's own processes change exported files directly: those
        // changes must end other nodes' leases too.
        match export.watch_local_changes(&cfg.export.path) {
            Ok(n) => tracing::info!(filesystems = n, "watching local changes to exported files"),
            Err(e) => {
                tracing::warn!(error = %e, "local changes to exported files are not watched: other nodes' caches of them may go stale")
            }
        }
    }
    let node = Arc::new(Node {
        name: cfg.name.clone(),
        migrations,
        procs: procs.clone(),
        membership: membership.clone(),
        export: export.clone(),
        revoked: revoked.clone(),
        run,
        caches: caches.clone(),
    });
    tokio::spawn(mosix_net::serve(endpoint.clone(), node));
    tokio::spawn(end_departed_clients(membership.clone(), export.clone()));
    // Mounted means joined: a script may use /mosix/nodes/<peer> as soon
    // as the mount (or systemd's start) returns.
    startup::wait_joined(&membership, &cfg).await;
    let (session, proc_session) = if cfg.mount {
        let link = Arc::new(link::ClusterLink::new(
            membership.clone(),
            peers.clone(),
            run,
            caches.clone(),
        ));
        let fs = Arc::new(mosix_fs::MosixFs::new(
            cfg.name.clone(),
            export,
            procs.clone(),
            link.clone(),
            link.clone(),
        ));
        if let Some(c) = &caches {
            let kernel: Arc<dyn mosix_fs::cached::KernelCache> = fs.clone();
            c.attach(Arc::downgrade(&kernel));
        }
        // The process view first: /mosix lists `proc` once it exists.
        let view = Arc::new(mosix_procview::fs::ProcFs::new(
            cfg.name.clone(),
            procs,
            link,
        ));
        let proc_session =
            mount::mount_proc(&cfg, &fs, view).map_err(|source| DaemonError::Mount {
                path: mount::proc_mountpoint(&cfg),
                source,
            })?;
        let (session, ready) = mount::mount(&cfg, fs).map_err(|source| DaemonError::Mount {
            path: cfg.mountpoint.clone(),
            source,
        })?;
        let _ = ready.await;
        (Some(session), Some(proc_session))
    } else {
        (None, None)
    };
    // The control socket last: `mosix status` answering means the node
    // has joined and /mosix is ready (`mosix up` waits for it so).
    let control = control::bind(&cfg.control_socket).map_err(|source| DaemonError::Control {
        path: cfg.control_socket.clone(),
        source,
    })?;
    tokio::spawn(control::serve(
        control,
        control::Ctx {
            node: cfg.name.clone(),
            node_id: cfg.node_id(),
            membership: membership.clone(),
            peers: peers.clone(),
            revoked,
            migrations: control_migrations,
        },
    ));
    tracing::info!(node = %cfg.name, listen = %cfg.listen, peers = ?cfg.peers, "node up");
    startup::notify_systemd("READY=1");

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let unmounted = async {
        match &session {
            Some(_) => mount::wait_unmounted(cfg.mountpoint.clone()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
        // `umount /mosix` stops the daemon, as it would a sshfs.
        _ = unmounted => tracing::info!("/mosix was unmounted"),
    }
    tracing::info!("shutting down");
    startup::notify_systemd("STOPPING=1");
    // Stopped on purpose: the members hear it now, and show this node as
    // left rather than probing it to death.
    let acked = membership.leave().await;
    tracing::info!(told = ?acked, "left the cluster");
    // Unmount from a blocking thread: the FUSE threads may still need the
    // runtime to finish replies in flight.
    for s in [session, proc_session].into_iter().flatten() {
        let _ = tokio::task::spawn_blocking(move || s.umount_and_join()).await;
    }
    endpoint.close(0u32.into(), b"shutdown");
    let _ = std::fs::remove_file(&cfg.control_socket);
    Ok(())
}
