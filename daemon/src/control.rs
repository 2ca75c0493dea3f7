//! The control socket: how the CLI on a node talks to that node's daemon.
//! Same framing as the wire protocol, over a Unix stream socket.
use std::path::Path;
use std::time::Duration;

use mosix_proto::fs::Creds;
use mosix_proto::proc::split_gpid;
use mosix_proto::{
    read_frame, write_frame, ControlRequest, ControlResponse, MemberState, Request, Response,
};
use tokio::net::{UnixListener, UnixStream};

use crate::membership::Membership;

/// Control messages are small; anything bigger is garbage.
pub const MAX_CONTROL_FRAME: usize = 64 << 10;
/// A CLI that connects and says nothing is dropped after this long.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by a daemon that died is stale: nobody listens on it.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        std::fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    // Status is public information, as on /proc: any local user may ask.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// What the control socket needs from the daemon.
#[derive(Clone)]
pub struct Ctx {
    pub node: String,
    pub node_id: u16,
    pub membership: Membership,
    pub peers: std::sync::Arc<mosix_net::Peers>,
    pub revoked: std::sync::Arc<mosix_net::pki::Revocations>,
    pub migrations: std::sync::Arc<crate::migrate::Migrations>,
}

/// First pause after a failed accept; doubled on each failure in a row.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accepts that keep failing.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

pub async fn serve(listener: UnixListener, ctx: Ctx) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                stream
            }
            Err(e) => {
                // EMFILE and the like do not go away by asking again at
                // once: back off instead of spinning on a core.
                if backoff == ACCEPT_BACKOFF_MIN {
                    tracing::warn!(error = %e, "control socket: accept failed; backing off");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(handle(stream, ctx));
    }
}

async fn handle(mut stream: UnixStream, ctx: Ctx) {
    let read = read_frame::<_, ControlRequest>(&mut stream, MAX_CONTROL_FRAME);
    let req = match tokio::time::timeout(CONTROL_TIMEOUT, read).await {
        Err(_) => {
            tracing::debug!("control client sent no request in time");
            return;
        }
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "bad control request");
            let _ = write_frame(
                &mut stream,
                &ControlResponse::Error(e.to_string()),
                MAX_CONTROL_FRAME,
            )
            .await;
            return;
        }
    };
    // A checkpoint file can take longer than CONTROL_TIMEOUT to pass:
    // those transfers bound each piece instead (checkpoint::PIECE_TIMEOUT).
    let file_transfer = match req {
        ControlRequest::Checkpoint { .. } | ControlRequest::Restart { .. } => Some(req.clone()),
        _ => None,
    };
    if let Some(req) = file_transfer {
        use crate::migrate::checkpoint as ck;
        let creds = match ck::caller_creds(&stream) {
            Ok(c) => c,
            Err(e) => {
                // Each command reads its own kind of answer.
                let _ = match req {
                    ControlRequest::Checkpoint { .. } => {
                        let p = mosix_proto::checkpoint::Piece::Failed(e);
                        write_frame(&mut stream, &p, MAX_CONTROL_FRAME).await
                    }
                    _ => {
                        write_frame(&mut stream, &ControlResponse::Error(e), MAX_CONTROL_FRAME)
                            .await
                    }
                };
                return;
            }
        };
        let mig = ctx.migrations.clone();
        match req {
            ControlRequest::Checkpoint { gpid, after } => {
                ck::control_checkpoint(mig, ctx.node_id, stream, creds, gpid, after).await
            }
            ControlRequest::Restart { on } => {
                ck::control_restart(mig, ctx.node_id, stream, creds, on).await
            }
            _ => {}
        }
        return;
    }
    let answered = tokio::time::timeout(CONTROL_TIMEOUT, answer(&mut stream, req, &ctx)).await;
    if answered.is_err() {
        tracing::debug!("control request timed out");
    }
}

async fn answer(stream: &mut UnixStream, req: ControlRequest, ctx: &Ctx) {
    let resp = match req {
        ControlRequest::Status => {
            let m = ctx.membership.clone();
            let members = tokio::task::spawn_blocking(move || m.snapshot())
                .await
                .unwrap_or_default();
            ControlResponse::Status {
                node: ctx.node.clone(),
                members,
            }
        }
        ControlRequest::Kill { gpid, sig } => match stream.peer_cred() {
            Ok(cred) => {
                let creds = Creds {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    groups: Vec::new(),
                    pid: cred.pid().unwrap_or(0) as u32,
                };
                match kill(ctx, creds, gpid, sig).await {
                    Ok(()) => ControlResponse::Killed,
                    Err(e) => ControlResponse::Error(e),
                }
            }
            Err(e) => ControlResponse::Error(format!("cannot identify the caller: {e}")),
        },
        // Changes every member's list: root's, like the node's own files.
        ControlRequest::RemoveNode {
            node,
            revoke,
            fingerprint,
        } => match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 => ctx
                .membership
                .remove_everywhere(&node, revoke, fingerprint, &ctx.revoked)
                .await
                .unwrap_or_else(ControlResponse::Error),
            Ok(_) => ControlResponse::Error("removing a node needs root".into()),
            Err(e) => ControlResponse::Error(format!("cannot identify the caller: {e}")),
        },
        ControlRequest::Checkpoint { .. } | ControlRequest::Restart { .. } => {
            ControlResponse::Error("handled as a file transfer".into())
        }
    };
    let _ = write_frame(stream, &resp, mosix_proto::MAX_FRAME).await;
}

/// Signals process `gpid` wherever it runs, as `creds` (whom the kernel of
/// the control socket vouched for).
async fn kill(ctx: &Ctx, creds: Creds, gpid: u32, sig: i32) -> Result<(), String> {
    let (id, pid) = split_gpid(gpid);
    let errno = |e: i32| format!("gpid {gpid}: {}", std::io::Error::from_raw_os_error(e));
    if id == ctx.node_id {
        return tokio::task::spawn_blocking(move || mosix_procview::kill(&creds, pid, sig))
            .await
            .map_err(|e| e.to_string())?
            .map_err(errno);
    }
    let (node, addr, state) = ctx
        .membership
        .member_by_id(id)
        .ok_or_else(|| format!("gpid {gpid}: no node with id {id} in the cluster"))?;
    if matches!(state, MemberState::Dead | MemberState::Left) {
        return Err(format!("gpid {gpid}: its node {node} is down"));
    }
    match ctx
        .peers
        .request(addr, &Request::Kill { creds, pid, sig })
        .await
    {
        Ok(Response::Killed(r)) => r.map_err(errno),
        Ok(other) => Err(format!("unexpected answer from {node}: {other:?}")),
        Err(e) => Err(format!("gpid {gpid}: node {node}: {e}")),
    }
}

/// Client side, used by `mosix status` and `mosix kill`.
pub async fn request(path: &Path, req: &ControlRequest) -> Result<ControlResponse, String> {
    let fut = async {
        let mut s = UnixStream::connect(path)
            .await
            .map_err(|e| format!("cannot reach the mosix daemon at {}: {e}", path.display()))?;
        write_frame(&mut s, req, MAX_CONTROL_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        read_frame::<_, ControlResponse>(&mut s, mosix_proto::MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "daemon closed the control socket without answering".to_string())
    };
    tokio::time::timeout(CONTROL_TIMEOUT, fut)
        .await
        .map_err(|_| {
            format!(
                "the mosix daemon at {} did not answer in {CONTROL_TIMEOUT:?}",
                path.display()
            )
        })?
}
