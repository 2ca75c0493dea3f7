//! Who is asking: the kernel's uid, gid and pid of a request, completed with
//! the caller's supplementary groups into the credentials a serving node
//! applies.
//!
//! The groups are read from the caller's `/proc/<pid>/status` for every
//! request, so a `setgroups()` (or `newgrp`) takes effect on the very next
//! operation. What is kept between requests is only an open descriptor of
//! that file per recent pid: re-reading an open procfs file regenerates it
//! (half the cost of opening it again), and a descriptor of a process that
//! ended fails instead of showing a new process with the same pid.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use mosix_proto::fs::Creds;

/// Who is asking, as the kernel reported it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Descriptors of `/proc/<pid>/status` kept for recent callers.
const STATUS_FILES: usize = 64;

/// The caller's credentials, exact at each request.
pub struct Callers {
    status: Mutex<lru::LruCache<u32, Arc<File>>>,
}

impl Default for Callers {
    fn default() -> Self {
        Callers {
            status: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(STATUS_FILES).expect("nonzero"),
            )),
        }
    }
}

impl Callers {
    /// The caller's full credentials.
    pub fn creds(&self, c: Caller) -> Creds {
        let groups = if c.pid == 0 {
            Vec::new()
        } else {
            self.groups(c.pid)
        };
        Creds {
            uid: c.uid,
            gid: c.gid,
            groups,
            pid: c.pid,
        }
    }

    /// Supplementary groups of `pid` now; empty if it is gone.
    fn groups(&self, pid: u32) -> Vec<u32> {
        let cached = self.status.lock().expect("status files").get(&pid).cloned();
        if let Some(f) = cached {
            if let Some(g) = read_groups(&f) {
                return g;
            }
            self.status.lock().expect("status files").pop(&pid);
        }
        let Ok(f) = File::open(format!("/proc/{pid}/status")) else {
            return Vec::new();
        };
        let f = Arc::new(f);
        let g = read_groups(&f).unwrap_or_default();
        self.status.lock().expect("status files").put(pid, f);
        g
    }
}

/// The Groups line of an open `/proc/<pid>/status`, read afresh; `None` if
/// the process is gone.
fn read_groups(f: &File) -> Option<Vec<u32>> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = f.read_at(&mut buf[len..], len as u64).ok()?;
        if n == 0 {
            break;
        }
        len += n;
        // The Groups line comes early; a long list may need more.
        if buf[..len].windows(8).any(|w| w == b"Groups:\t") && buf[..len].contains(&b'\n') {
            if let Some(g) = parse_groups(&buf[..len]) {
                return Some(g);
            }
        }
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
    if len == 0 {
        return None;
    }
    parse_groups(&buf[..len])
}

/// The groups on a complete `Groups:` line of `status`.
fn parse_groups(status: &[u8]) -> Option<Vec<u32>> {
    let start = status.windows(8).position(|w| w == b"Groups:\t")? + 8;
    let rest = &status[start..];
    let end = rest.iter().position(|&b| b == b'\n')?;
    Some(
        std::str::from_utf8(&rest[..end])
            .ok()?
            .split_ascii_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_groups_line() {
        assert_eq!(
            parse_groups(b"Name:\tx\nGroups:\t4 24 1000 \nNSpid:\t1\n"),
            Some(vec![4, 24, 1000])
        );
        assert_eq!(parse_groups(b"Groups:\t\n"), Some(vec![]));
        assert_eq!(parse_groups(b"Groups:\t4 2"), None, "cut short");
    }

    /// A setgroups() is seen by the very next request, not a second later.
    #[test]
    fn a_setgroups_takes_effect_at_once() {
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (it calls setgroups in a child); run it as root");
        }
        let callers = Callers::default();
        let (r, w) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        // SAFETY: the child only makes raw syscalls and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let step = |groups: &[u32]| {
                    // SAFETY: raw setgroups on this single-threaded child.
                    unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
                    let _ = nix::unistd::write(&w, b"x");
                    let mut b = [0u8; 1];
                    let _ = nix::unistd::read(&r2, &mut b);
                };
                step(&[4242, 4343]);
                step(&[4343]);
                step(&[]);
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let pid = child.as_raw() as u32;
                let caller = Caller {
                    uid: 0,
                    gid: 0,
                    pid,
                };
                let mut b = [0u8; 1];
                for want in [vec![4242, 4343], vec![4343], vec![]] {
                    nix::unistd::read(&r, &mut b).unwrap();
                    assert_eq!(callers.creds(caller).groups, want);
                    nix::unistd::write(&w2, b"x").unwrap();
                }
                nix::sys::wait::waitpid(child, None).unwrap();
                // Gone: no groups, and no stale ones for a new process.
                assert_eq!(callers.creds(caller).groups, Vec::<u32>::new());
            }
        }
    }
}
