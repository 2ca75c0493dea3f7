//! The control socket: how the CLI on a node talks to that node's daemon.
//! Same framing as the wire protocol, over a Unix stream socket.
use std::path::Path;
use std::time::Duration;

use mosix_proto::{read_frame, write_frame, ControlRequest, ControlResponse};
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

pub async fn serve(listener: UnixListener, node: String, membership: Membership) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        let membership = membership.clone();
        tokio::spawn(async move {
            if let Err(e) =
                tokio::time::timeout(CONTROL_TIMEOUT, handle(stream, node, membership)).await
            {
                tracing::debug!(error = %e, "control client timed out");
            }
        });
    }
}

async fn handle(mut stream: UnixStream, node: String, membership: Membership) {
    let req = match read_frame::<_, ControlRequest>(&mut stream, MAX_CONTROL_FRAME).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
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
    let resp = match req {
        ControlRequest::Status => {
            let members = tokio::task::spawn_blocking(move || membership.snapshot())
                .await
                .unwrap_or_default();
            ControlResponse::Status { node, members }
        }
    };
    let _ = write_frame(&mut stream, &resp, mosix_proto::MAX_FRAME).await;
}

/// Client side, used by `mosix status`.
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
