//! This node's processes as the cluster sees them: the listing and the
//! per-process files of `/mosix/proc/<gpid>/`, rendered from this node's own
//! `/proc` (so they are byte-compatible with what procps parses) with every
//! pid field turned into a gpid.
use std::os::unix::fs::MetadataExt;

use mosix_proto::fs::Creds;
use mosix_proto::proc::{gpid, ProcEntry, ProcFile};

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
    let raw = std::fs::read(format!("{base}/{}", file.name()))
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    Ok(match file {
        ProcFile::Stat => rewrite_stat(node_id, &raw),
        ProcFile::Status => rewrite_status(node_id, &raw),
        _ => raw,
    })
}

/// Sends `sig` to process `pid` of this node on behalf of `creds`, with the
/// kernel's rule for kill(2): root, or a caller whose uid is the target's
/// real or saved uid (EPERM otherwise; ESRCH if it is gone).
pub fn kill(creds: &Creds, pid: u32, sig: i32) -> Result<(), i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| libc::ESRCH)?;
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|u| {
            u.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (real, saved) = (uids.first().copied(), uids.get(2).copied());
    if creds.uid != 0 && Some(creds.uid) != real && Some(creds.uid) != saved {
        return Err(libc::EPERM);
    }
    let pid = i32::try_from(pid).map_err(|_| libc::ESRCH)?;
    // SAFETY: plain syscall.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    Ok(())
}

fn g(node_id: u16, field: &str) -> String {
    match field.parse::<i64>() {
        Ok(p) if p > 0 => gpid(node_id, p as u32).to_string(),
        _ => field.to_string(),
    }
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
            *f = g(node_id, f);
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
            let vals: Vec<String> = v.split_whitespace().map(|f| g(node_id, f)).collect();
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
            out.contains(&format!("Tgid:\t{g}\nPid:\t{g}\nPPid:\t0\nTracerPid:\t0\n")),
            "{out}"
        );
        assert!(out.contains(&format!("NSpid:\t{g}\n")));
        assert!(out.contains("Uid:\t0\t0\t0\t0\n"));
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
