//! `mosix status`: the cluster as the local daemon sees it.
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use mosix_daemon::control;
use mosix_proto::{ControlRequest, ControlResponse, MemberInfo, MemberState};

async fn fetch(path: &Path) -> anyhow::Result<(String, Vec<MemberInfo>)> {
    match control::request(path, &ControlRequest::Status)
        .await
        .map_err(|e| anyhow!(e))?
    {
        ControlResponse::Status { node, members } => Ok((node, members)),
        ControlResponse::Error(e) => bail!("daemon refused: {e}"),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

pub async fn run(
    path: &Path,
    json: bool,
    wait_alive: Option<usize>,
    timeout: u64,
) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let (node, members) = loop {
        let got = fetch(path).await;
        let Some(want) = wait_alive else { break got? };
        match got {
            Ok((node, members)) => {
                let alive = members
                    .iter()
                    .filter(|m| m.state == MemberState::Alive)
                    .count();
                if alive >= want {
                    break (node, members);
                }
                if Instant::now() >= deadline {
                    print(&node, &members, json);
                    bail!("only {alive} of {want} members alive after {timeout}s");
                }
            }
            // The daemon may still be starting: keep trying until the deadline.
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    print(&node, &members, json);
    Ok(0)
}

fn print(node: &str, members: &[MemberInfo], json: bool) {
    if json {
        let v = serde_json::json!({ "node": node, "members": members });
        outln!("{v}");
        return;
    }
    outln!(
        "{:<12} {:<8} {:<22} {:>4} {:>6} {:>10} {:>6} {:>6}",
        "NODE",
        "STATE",
        "ADDRESS",
        "CPUS",
        "LOAD",
        "FREEMEM",
        "PROCS",
        "SPEED"
    );
    for m in members {
        let name = if m.is_self {
            format!("{}*", m.name)
        } else {
            m.name.clone()
        };
        match &m.load {
            Some(l) => outln!(
                "{:<12} {:<8} {:<22} {:>4} {:>6.2} {:>10} {:>6} {:>6}",
                name,
                m.state.to_string(),
                m.addr.to_string(),
                l.cpus,
                l.load1,
                format!("{:.1}G", l.freemem as f64 / (1u64 << 30) as f64),
                l.procs,
                l.speed
            ),
            None => outln!(
                "{:<12} {:<8} {:<22} {:>4} {:>6} {:>10} {:>6} {:>6}",
                name,
                m.state.to_string(),
                m.addr.to_string(),
                "-",
                "-",
                "-",
                "-",
                "-"
            ),
        }
    }
    if members.iter().any(|m| m.load.is_none()) {
        outln!("{NO_LOAD_NOTE}");
    }
}

/// Said under the table when a member's columns show `-`.
pub const NO_LOAD_NOTE: &str =
    "-: no load record from that node yet (a node sends one every second once it has joined)";
