//! This node's processes as the cluster sees them: the listing and the
//! per-process files of `/mosix/proc/<gpid>/`, rendered from this node's own
//! `/proc` (so they are byte-compatible with what procps parses) with every
//! pid field turned into a gpid; and `/mosix/proc`, the file system that
//! shows every node's processes as one `/proc`.
//!
//! - [`node`]: [`node::LocalNode`], this node's processes as one service
//!   (listing, snapshots, rendering, kill, pin, placement);
//! - [`service`]: [`service::Processes`], one node's processes (this node's
//!   in-process, others' through the daemon), and [`service::Cluster`];
//! - [`fs`]: [`fs::ProcFs`], what `/mosix/proc` answers, without FUSE;
//!   [`ino`]: its inode numbers; [`versions`]: the contents handed to the
//!   kernel, one immutable version per inode;
//! - [`fuse`]: the thin FUSE adapter and the kernel flags it asks for;
//! - [`error`]: the one error type and its errno mapping.
pub mod error;
pub mod fs;
pub mod fuse;
pub mod ino;
pub mod node;
pub mod service;
pub mod status;
pub mod versions;

use std::os::unix::fs::MetadataExt;

use mosix_proto::fs::Creds;
use mosix_proto::proc::{gpid, NodeFile, ProcEntry, ProcFile, CLUSTER_ROOT_GPID};

/// This node's processes, by its own /proc.
pub fn list() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<ProcEntry> = dir
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            // /proc/<pid> is owned by the process's effective uid and gid.
            let m = e.metadata().ok()?;
            Some(ProcEntry {
                pid,
                uid: m.uid(),
                gid: m.gid(),
            })
        })
        .collect();
    v.sort_by_key(|p| p.pid);
    v
}

/// Renders `file` of process `pid` for a caller with `creds`. Errors are
/// errnos: ENOENT once the process is gone, EACCES for another user's
/// private file (as procfs).
pub fn read(node_id: u16, creds: &Creds, pid: u32, file: ProcFile) -> Result<Vec<u8>, i32> {
    let base = format!("/proc/{pid}");
    let owner = std::fs::metadata(&base)
        .map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT))?
        .uid();
    if file.private() && creds.uid != 0 && creds.uid != owner {
        return Err(libc::EACCES);
    }
    let path = format!("{base}/{}", file.name());
    let raw = if ProcFile::LINKS.contains(&file) {
        use std::os::unix::ffi::OsStrExt;
        std::fs::read_link(&path).map(|t| t.as_os_str().as_bytes().to_vec())
    } else {
        std::fs::read(&path)
    }
    .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    Ok(match file {
        ProcFile::Stat => rewrite_stat(node_id, &raw),
        ProcFile::Status => rewrite_status(node_id, &raw),
        _ => raw,
    })
}

/// Whether `creds` may control process `pid` (root, or its real or saved
/// uid, as kill(2) decides): Ok, EPERM, or ESRCH if it is gone.
pub fn check_owner(creds: &Creds, pid: u32) -> Result<(), i32> {
    let (real, saved) = status::owner_uids(pid)?;
    if creds.uid != 0 && creds.uid != real && creds.uid != saved {
        return Err(libc::EPERM);
    }
    Ok(())
}

/// Sends `sig` to process `pid` of this node on behalf of `creds`, with the
/// kernel's rule for kill(2): root, or a caller whose uid is the target's
/// real or saved uid (EPERM otherwise; ESRCH if it is gone).
pub fn kill(creds: &Creds, pid: u32, sig: i32) -> Result<(), i32> {
    check_owner(creds, pid)?;
    let pid = i32::try_from(pid).map_err(|_| libc::ESRCH)?;
    // SAFETY: plain syscall.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    Ok(())
}

/// This node's `/proc/<file>` as it is.
pub fn node_file(file: NodeFile) -> Result<Vec<u8>, i32> {
    std::fs::read(format!("/proc/{}", file.name()))
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// The cluster's version of a node-wide file, from each node's own (in node
/// order): what one machine with all the nodes' CPUs, memory and processes
/// would show.
pub fn aggregate(file: NodeFile, parts: &[Vec<u8>]) -> Vec<u8> {
    let texts: Vec<String> = parts
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    match file {
        NodeFile::Meminfo => aggregate_meminfo(&texts),
        NodeFile::Loadavg => aggregate_loadavg(&texts),
        NodeFile::Uptime => aggregate_uptime(&texts),
        NodeFile::Stat => aggregate_stat(&texts),
        NodeFile::Cpuinfo => aggregate_cpuinfo(&texts),
    }
    .into_bytes()
}

/// `Key:   value [kB]` lines: values summed per key, in the first node's order.
fn aggregate_meminfo(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut sums: std::collections::HashMap<String, (u64, bool)> = Default::default();
    for t in texts {
        for line in t.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let mut it = v.split_whitespace();
            let Some(n) = it.next().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            let kb = it.next() == Some("kB");
            let e = sums.entry(k.to_string()).or_insert_with(|| {
                order.push(k.to_string());
                (0, kb)
            });
            e.0 += n;
        }
    }
    let mut out = String::new();
    for k in order {
        let (n, kb) = sums[&k];
        let label = format!("{k}:");
        if kb {
            out.push_str(&format!("{label:<16}{n:>8} kB\n"));
        } else {
            out.push_str(&format!("{label:<16}{n:>8}\n"));
        }
    }
    out
}

/// `1m 5m 15m running/total lastpid`: loads and counts summed.
fn aggregate_loadavg(texts: &[String]) -> String {
    let (mut l, mut run, mut total) = ([0f64; 3], 0u64, 0u64);
    for t in texts {
        let f: Vec<&str> = t.split_whitespace().collect();
        for (i, x) in l.iter_mut().enumerate() {
            *x += f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        }
        if let Some((r, n)) = f.get(3).and_then(|s| s.split_once('/')) {
            run += r.parse::<u64>().unwrap_or(0);
            total += n.parse::<u64>().unwrap_or(0);
        }
    }
    format!("{:.2} {:.2} {:.2} {run}/{total} 0\n", l[0], l[1], l[2])
}

/// `uptime idle`: the longest uptime, the idle time of all CPUs summed.
fn aggregate_uptime(texts: &[String]) -> String {
    let (mut up, mut idle) = (0f64, 0f64);
    for t in texts {
        let f: Vec<f64> = t
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        up = up.max(f.first().copied().unwrap_or(0.0));
        idle += f.get(1).copied().unwrap_or(0.0);
    }
    format!("{up:.2} {idle:.2}\n")
}

/// /proc/stat: the `cpu` line summed, `cpuN` lines renumbered across nodes,
/// counters summed, `btime` the earliest.
fn aggregate_stat(texts: &[String]) -> String {
    let mut cpu_total: Vec<u64> = Vec::new();
    let mut cpus: Vec<String> = Vec::new();
    let mut order: Vec<String> = Vec::new();
    let mut sums: std::collections::HashMap<String, Vec<u64>> = Default::default();
    let mut btime: Option<u64> = None;
    for t in texts {
        for line in t.lines() {
            let mut f = line.split_whitespace();
            let Some(key) = f.next() else { continue };
            let vals: Vec<u64> = f.filter_map(|v| v.parse().ok()).collect();
            if key == "cpu" {
                if cpu_total.len() < vals.len() {
                    cpu_total.resize(vals.len(), 0);
                }
                for (a, v) in cpu_total.iter_mut().zip(&vals) {
                    *a += v;
                }
            } else if key.starts_with("cpu") {
                let vals: Vec<String> = vals.iter().map(u64::to_string).collect();
                cpus.push(format!("cpu{} {}", cpus.len(), vals.join(" ")));
            } else if key == "btime" {
                let b = vals.first().copied().unwrap_or(0);
                btime = Some(btime.map_or(b, |x: u64| x.min(b)));
            } else {
                let e = sums.entry(key.to_string()).or_insert_with(|| {
                    order.push(key.to_string());
                    Vec::new()
                });
                if e.len() < vals.len() {
                    e.resize(vals.len(), 0);
                }
                for (a, v) in e.iter_mut().zip(&vals) {
                    *a += v;
                }
            }
        }
    }
    let join = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let mut out = format!("cpu  {}\n", join(&cpu_total));
    for c in cpus {
        out.push_str(&c);
        out.push('\n');
    }
    for k in order {
        out.push_str(&format!("{k} {}\n", join(&sums[&k])));
        if k == "ctxt" {
            if let Some(b) = btime {
                out.push_str(&format!("btime {b}\n"));
            }
        }
    }
    out
}

/// Every node's processors, numbered on from one node to the next.
fn aggregate_cpuinfo(texts: &[String]) -> String {
    let mut n = 0;
    let mut out = String::new();
    for t in texts {
        for line in t.lines() {
            if line.starts_with("processor") {
                out.push_str(&format!("processor\t: {n}\n"));
                n += 1;
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn g(node_id: u16, field: &str) -> String {
    match field.parse::<i64>() {
        Ok(p) if p > 0 => gpid(node_id, p as u32).to_string(),
        _ => field.to_string(),
    }
}

/// A parent pid as a gpid: a node's roots (its init, kthreadd), whose
/// parent is 0, hang under the cluster root.
fn parent(node_id: u16, field: &str) -> String {
    match field.parse::<i64>() {
        Ok(0) => CLUSTER_ROOT_GPID.to_string(),
        _ => g(node_id, field),
    }
}

/// The cluster root's files, in procfs formats: a sleeping root-owned
/// process named `mosix` with no memory, no time and parent 0, like an init
/// seen from outside. `limits` are this node's own init's.
pub fn cluster_root(file: ProcFile) -> Result<Vec<u8>, i32> {
    let name = "mosix";
    Ok(match file {
        ProcFile::Stat => {
            // Fields 3 to 52 of proc_pid_stat(5): state, ppid, pgrp, session,
            // tty, tpgid, flags, then counters, times and addresses at 0,
            // except priority 20, threads 1, rsslim unlimited, exit_signal 17.
            let mut f = vec!["0".to_string(); 50];
            f[0] = "S".into();
            f[2] = "1".into();
            f[3] = "1".into();
            f[5] = "-1".into();
            f[6] = "4194560".into();
            f[15] = "20".into();
            f[17] = "1".into();
            f[22] = u64::MAX.to_string();
            f[35] = "17".into();
            format!("{CLUSTER_ROOT_GPID} ({name}) {}\n", f.join(" ")).into_bytes()
        }
        ProcFile::Status => format!(
            "Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nNgid:\t0\n\
             Pid:\t1\nPPid:\t0\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
             FDSize:\t0\nGroups:\t\nNStgid:\t1\nNSpid:\t1\nNSpgid:\t1\nNSsid:\t1\n\
             Threads:\t1\n"
        )
        .into_bytes(),
        ProcFile::Statm => b"0 0 0 0 0 0 0\n".to_vec(),
        ProcFile::Cmdline => format!("{name}\0").into_bytes(),
        ProcFile::Comm => format!("{name}\n").into_bytes(),
        ProcFile::Environ => Vec::new(),
        ProcFile::Io => b"rchar: 0\nwchar: 0\nsyscr: 0\nsyscw: 0\nread_bytes: 0\n\
                          write_bytes: 0\ncancelled_write_bytes: 0\n"
            .to_vec(),
        ProcFile::Limits => {
            std::fs::read("/proc/1/limits").map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?
        }
        ProcFile::Wchan => b"0".to_vec(),
        // Links are the namespace's business (the root's cwd is /mosix).
        ProcFile::Cwd | ProcFile::Exe => return Err(libc::ENOENT),
        ProcFile::Lock => b"1\n".to_vec(),
        ProcFile::Cantmove => b"the cluster itself\n".to_vec(),
        // It runs nowhere and never moves.
        ProcFile::Where | ProcFile::Home => b"\n".to_vec(),
        ProcFile::Nmigs => b"0\n".to_vec(),
    })
}

/// `pid (comm) state ppid pgrp session ...`: pid, ppid, pgrp and session
/// become gpids. comm may hold spaces and parentheses, so it ends at the
/// last ')'.
pub fn rewrite_stat(node_id: u16, raw: &[u8]) -> Vec<u8> {
    let Some(close) = raw.iter().rposition(|&b| b == b')') else {
        return raw.to_vec();
    };
    let head = String::from_utf8_lossy(&raw[..close + 1]);
    let rest = String::from_utf8_lossy(&raw[close + 1..]);
    let (pid, comm) = match head.split_once(' ') {
        Some((p, c)) => (p, c),
        None => return raw.to_vec(),
    };
    let mut fields: Vec<String> = rest.split(' ').map(str::to_string).collect();
    // fields[0] is the empty string before the space after ')'; then state,
    // ppid, pgrp, session.
    for i in 2..=4 {
        if let Some(f) = fields.get_mut(i) {
            *f = if i == 2 {
                parent(node_id, f)
            } else {
                g(node_id, f)
            };
        }
    }
    format!("{} {}{}", g(node_id, pid), comm, fields.join(" ")).into_bytes()
}

/// The pid lines of /proc/<pid>/status become gpids.
pub fn rewrite_status(node_id: u16, raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let key = line.split(':').next().unwrap_or("");
        if matches!(
            key,
            "Tgid" | "Pid" | "PPid" | "TracerPid" | "NStgid" | "NSpid" | "NSpgid" | "NSsid"
        ) {
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            let vals: Vec<String> = v
                .split_whitespace()
                .map(|f| {
                    if key == "PPid" {
                        parent(node_id, f)
                    } else {
                        g(node_id, f)
                    }
                })
                .collect();
            out.push_str(k);
            out.push_str(":\t");
            out.push_str(&vals.join("\t"));
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_pids_become_gpids_and_odd_comms_survive() {
        let raw = b"4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0\n";
        let out = String::from_utf8(rewrite_stat(2, raw)).unwrap();
        let g = |p| gpid(2, p).to_string();
        assert_eq!(
            out,
            format!(
                "{} (my (odd) prog) S {} {} {} 0 -1 4194560 100 0\n",
                g(4242),
                g(1),
                g(4242),
                g(4242)
            )
        );
    }

    #[test]
    fn status_pid_lines_become_gpids() {
        let raw = b"Name:\tsleep\nState:\tS (sleeping)\nTgid:\t77\nPid:\t77\nPPid:\t0\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nNSpid:\t77\n";
        let out = String::from_utf8(rewrite_status(3, raw)).unwrap();
        let g = gpid(3, 77);
        assert!(
            out.contains(&format!("Tgid:\t{g}\nPid:\t{g}\nPPid:\t1\nTracerPid:\t0\n")),
            "{out}"
        );
        assert!(out.contains(&format!("NSpid:\t{g}\n")));
        assert!(out.contains("Uid:\t0\t0\t0\t0\n"));
    }

    #[test]
    fn a_nodes_roots_hang_under_the_cluster_root() {
        let out = String::from_utf8(rewrite_stat(2, b"1 (init) S 0 1 1 0 -1 0\n")).unwrap();
        let g = gpid(2, 1);
        assert_eq!(
            out,
            format!("{g} (init) S {CLUSTER_ROOT_GPID} {g} {g} 0 -1 0\n")
        );
        // The root itself: 52 fields as proc_pid_stat(5) has them, parent 0.
        let stat = String::from_utf8(cluster_root(ProcFile::Stat).unwrap()).unwrap();
        let fields: Vec<&str> = stat.split_whitespace().collect();
        assert_eq!(fields.len(), 52, "{stat}");
        assert_eq!(&fields[..6], ["1", "(mosix)", "S", "0", "1", "1"]);
        let status = String::from_utf8(cluster_root(ProcFile::Status).unwrap()).unwrap();
        assert!(status.contains("\nPid:\t1\nPPid:\t0\n"), "{status}");
    }

    #[test]
    fn aggregates_sum_like_one_machine() {
        let m = aggregate(
            NodeFile::Meminfo,
            &[
                b"MemTotal:  100 kB\nHugePages_Total: 0\n".to_vec(),
                b"MemTotal:  50 kB\nHugePages_Total: 2\n".to_vec(),
            ],
        );
        let m = String::from_utf8(m).unwrap();
        assert!(m.contains("MemTotal:") && m.contains(" 150 kB\n"), "{m}");
        assert!(
            m.lines()
                .any(|l| l.starts_with("HugePages_Total:") && l.ends_with(" 2")),
            "{m}"
        );
        let l = aggregate(
            NodeFile::Loadavg,
            &[
                b"0.50 0.25 0.10 1/100 42\n".to_vec(),
                b"1.00 0.50 0.20 2/50 7\n".to_vec(),
            ],
        );
        assert_eq!(String::from_utf8(l).unwrap(), "1.50 0.75 0.30 3/150 0\n");
        let s = aggregate(
            NodeFile::Stat,
            &[
                b"cpu  1 2 3\ncpu0 1 2 3\nctxt 10\nbtime 500\nprocesses 5\n".to_vec(),
                b"cpu  4 5 6\ncpu0 4 5 6\nctxt 1\nbtime 400\nprocesses 1\n".to_vec(),
            ],
        );
        assert_eq!(
            String::from_utf8(s).unwrap(),
            "cpu  5 7 9\ncpu0 1 2 3\ncpu1 4 5 6\nctxt 11\nbtime 400\nprocesses 6\n"
        );
        let c = aggregate(
            NodeFile::Cpuinfo,
            &[
                b"processor\t: 0\nx\n".to_vec(),
                b"processor\t: 0\ny\n".to_vec(),
            ],
        );
        assert_eq!(
            String::from_utf8(c).unwrap(),
            "processor\t: 0\nx\nprocessor\t: 1\ny\n"
        );
    }

    #[test]
    fn own_process_is_listed_and_readable() {
        let me = std::process::id();
        assert!(list().iter().any(|p| p.pid == me));
        let creds = Creds {
            uid: 65534,
            gid: 65534,
            groups: vec![],
            pid: 0,
        };
        let cmdline = read(1, &creds, me, ProcFile::Cmdline).unwrap();
        assert!(!cmdline.is_empty());
        if nix_uid() != 65534 {
            assert_eq!(read(1, &creds, me, ProcFile::Environ), Err(libc::EACCES));
        }
        assert_eq!(
            read(1, &creds, u32::MAX >> 10, ProcFile::Stat),
            Err(libc::ENOENT)
        );
    }

    fn nix_uid() -> u32 {
        // SAFETY: getuid cannot fail.
        unsafe { libc::getuid() }
    }
}
