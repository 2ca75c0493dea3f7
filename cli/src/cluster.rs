//! `mosix cluster remove-node`: drops a node from every member's list, and
//! can shut its certificate out for good.
use std::path::Path;

use anyhow::{anyhow, bail};
use mosix_daemon::control;
use mosix_proto::{ControlRequest, ControlResponse};

/// Asks this node's daemon (at `control_socket`) to remove `node` from every
/// member; `revoke` also revokes its certificate, the one in `cert` if
/// given (implies `revoke`). Fails unless every member that is up applied
/// it.
pub async fn remove_node(
    control_socket: &Path,
    node: &str,
    revoke: bool,
    cert: Option<&Path>,
) -> anyhow::Result<i32> {
    let fingerprint = cert.map(mosix_net::pki::fingerprint_of_file).transpose()?;
    let req = ControlRequest::RemoveNode {
        node: node.to_string(),
        revoke: revoke || fingerprint.is_some(),
        fingerprint,
    };
    match control::request(control_socket, &req)
        .await
        .map_err(|e| anyhow!(e))?
    {
        ControlResponse::Removed {
            told,
            missed,
            revoked,
        } => {
            if told.is_empty() {
                outln!("removed {node} here; no other member is up");
            } else {
                outln!(
                    "removed {node} here and on {} member(s): {}",
                    told.len(),
                    told.join(" ")
                );
            }
            if let Some(fp) = revoked {
                outln!("revoked certificate sha256:{fp}");
            }
            if !missed.is_empty() {
                bail!(
                    "{} member(s) did not answer: {}; run it again once they are up",
                    missed.len(),
                    missed.join(" ")
                );
            }
            Ok(0)
        }
        ControlResponse::Error(e) => bail!("{e}"),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}
