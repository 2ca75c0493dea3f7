//! `mosix ps` and `mosix kill`: the cluster's processes for people.
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};
use mosix_daemon::control;
use mosix_proto::{ControlRequest, ControlResponse};

fn users() -> HashMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
        })
        .collect()
}

struct Row {
    gpid: u32,
    uid: u32,
    state: String,
    where_: String,
    home: String,
    nmigs: String,
    cmd: String,
}

fn read_row(dir: &Path, gpid: u32) -> Option<Row> {
    let read = |f: &str| std::fs::read(dir.join(f)).ok();
    let stat = String::from_utf8(read("stat")?).ok()?;
    // The state is the field after the last ')' (comm may hold spaces).
    let state = stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .to_string();
    let status = String::from_utf8(read("status")?).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let line = |f: &str| {
        read(f)
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    };
    let cmdline = read("cmdline").unwrap_or_default();
    let cmd = if cmdline.is_empty() {
        // Kernel threads and zombies have no command line: ps shows [comm].
        format!("[{}]", line("comm"))
    } else {
        cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(Row {
        gpid,
        uid,
        state,
        where_: line("where"),
        home: line("home"),
        nmigs: line("nmigs"),
        cmd,
    })
}

pub fn ps(mosix: &Path, user: Option<&str>, node: Option<&str>) -> anyhow::Result<i32> {
    let proc = mosix.join("proc");
    let names = users();
    let want_uid: Option<u32> = match user {
        None => None,
        Some(u) => Some(match u.parse() {
            Ok(n) => n,
            Err(_) => *names
                .iter()
                .find(|(_, n)| n.as_str() == u)
                .map(|(id, _)| id)
                .ok_or_else(|| anyhow!("no such user: {u}"))?,
        }),
    };
    let mut gpids: Vec<u32> = std::fs::read_dir(&proc)
        .with_context(|| format!("reading {} (is the mosix daemon running?)", proc.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    gpids.sort();
    outln!(
        "{:>10} {:<10} {:<4} {:<8} {:<8} {:>5} CMD",
        "GPID",
        "USER",
        "STAT",
        "WHERE",
        "HOME",
        "NMIGS"
    );
    for g in gpids {
        // A process may end between the listing and the read: skip it.
        let Some(r) = read_row(&proc.join(g.to_string()), g) else {
            continue;
        };
        if want_uid.is_some_and(|u| u != r.uid) || node.is_some_and(|n| n != r.where_) {
            continue;
        }
        let user = names
            .get(&r.uid)
            .cloned()
            .unwrap_or_else(|| r.uid.to_string());
        // The cluster root (gpid 1) runs on no node in particular.
        let node_or_dash = |n: &str| if n.is_empty() { "-" } else { n }.to_string();
        outln!(
            "{:>10} {:<10} {:<4} {:<8} {:<8} {:>5} {}",
            r.gpid,
            user,
            r.state,
            node_or_dash(&r.where_),
            node_or_dash(&r.home),
            r.nmigs,
            r.cmd
        );
    }
    Ok(0)
}

fn parse_signal(s: &str) -> anyhow::Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    nix::sys::signal::Signal::from_str(&name)
        .map(|s| s as i32)
        .map_err(|_| anyhow!("unknown signal {s}"))
}

pub async fn kill(control: &Path, args: &[String]) -> anyhow::Result<i32> {
    let (sig, targets) = match args.split_first() {
        Some((first, rest)) if first.starts_with('-') && first.len() > 1 => {
            (parse_signal(&first[1..])?, rest)
        }
        _ => (libc::SIGTERM, args),
    };
    if targets.is_empty() {
        bail!("usage: mosix kill [-SIGNAL] GPID...");
    }
    let mut failed = 0;
    for t in targets {
        let gpid: u32 = t.parse().map_err(|_| anyhow!("not a gpid: {t}"))?;
        match control::request(control, &ControlRequest::Kill { gpid, sig }).await {
            Ok(ControlResponse::Killed) => {}
            Ok(ControlResponse::Error(e)) => {
                eprintln!("mosix kill: {e}");
                failed += 1;
            }
            Ok(other) => bail!("unexpected answer from the daemon: {other:?}"),
            Err(e) => bail!(e),
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// A private mount namespace where /proc is the cluster's (`/mosix/proc`),
/// with this node's own /proc/sys and /proc/tty mounted inside it for the
/// tools that read them, then CMD (default: $SHELL) in it.
pub fn shell(mosix: &Path, cmd: &[String]) -> anyhow::Result<i32> {
    use nix::mount::{mount, MsFlags};
    if !nix::unistd::geteuid().is_root() {
        bail!("mosix shell needs root: it mounts the cluster's /proc in a private mount namespace");
    }
    let cluster_proc = mosix.join("proc");
    std::fs::read_dir(&cluster_proc)
        .with_context(|| format!("{} (is the mosix daemon running?)", cluster_proc.display()))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("new mount namespace")?;
    // Our mounts stay ours; the node's later mounts still reach us.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context("making mounts private")?;
    let real = Path::new("/run/mosix-shell-proc");
    std::fs::create_dir_all(real)?;
    mount(
        Some("proc"),
        real,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mounting this node's /proc")?;
    mount(
        Some(&cluster_proc),
        "/proc",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("mounting the cluster's /proc")?;
    for d in ["sys", "tty"] {
        mount(
            Some(&real.join(d)),
            &Path::new("/proc").join(d),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .with_context(|| format!("mounting /proc/{d}"))?;
    }
    let (prog, args) = match cmd.split_first() {
        Some((p, a)) => (p.clone(), a.to_vec()),
        None => (
            std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into()),
            Vec::new(),
        ),
    };
    crate::ns::run_status(&prog, &args, "in the cluster shell")
}
