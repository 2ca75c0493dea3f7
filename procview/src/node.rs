//! This node's processes as one service: listing, rendering, kill, pin and
//! placement, implemented once. The daemon's request handler calls it for
//! other nodes, and `/mosix/proc` calls it directly for this node's own
//! processes, so both give the same answers.
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mosix_proto::fs::Creds;
use mosix_proto::proc::{
    NodeFile, ProcEntry, ProcFile, ProcSnap, SnapshotPage, SNAPSHOT_FILES, SNAPSHOT_PAGE_BYTES,
};

/// Where a process of this (home) node is, as the migrator knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The node it runs on now (this node's name when it is at home).
    pub running_on: String,
    /// How many times it moved.
    pub nmigs: u32,
}

/// What the migrator answers for the process view: the seam behind
/// `/mosix/proc/<gpid>/{where,home,nmigs,cantmove}` and behind writes to
/// `where`. The migrator implements it; until then [`Stationary`] does.
pub trait Migrator: Send + Sync + 'static {
    /// Where process `pid` (whose home is this node) runs.
    fn placement(&self, pid: u32) -> Placement;
    /// The home node of process `pid` running here (this node's name for
    /// a process that never moved).
    fn home_of(&self, pid: u32) -> String;
    /// Why `pid` cannot move, or None.
    fn cantmove(&self, pid: u32) -> Option<String>;
    /// Moves `pid` to node `target` ("home": back to its home node) on behalf
    /// of `creds`. Errors are errnos matching the reason.
    fn migrate(&self, creds: &Creds, pid: u32, target: &str) -> Result<(), i32>;
}

/// No migration: every process runs at home, and a request to move one is
/// refused with EOPNOTSUPP.
pub struct Stationary {
    pub node: String,
}

impl Migrator for Stationary {
    fn placement(&self, _pid: u32) -> Placement {
        Placement {
            running_on: self.node.clone(),
            nmigs: 0,
        }
    }

    fn home_of(&self, _pid: u32) -> String {
        self.node.clone()
    }

    fn cantmove(&self, _pid: u32) -> Option<String> {
        None
    }

    fn migrate(&self, _creds: &Creds, _pid: u32, _target: &str) -> Result<(), i32> {
        Err(libc::EOPNOTSUPP)
    }
}

/// This node's processes.
pub struct LocalNode {
    node_id: u16,
    /// Processes pinned to this node (`lock` = 1): the migrator must leave
    /// them here.
    pins: Mutex<HashSet<u32>>,
    migrator: Arc<dyn Migrator>,
}

impl LocalNode {
    pub fn new(node_id: u16, migrator: Arc<dyn Migrator>) -> Self {
        LocalNode {
            node_id,
            pins: Mutex::default(),
            migrator,
        }
    }

    pub fn node_id(&self) -> u16 {
        self.node_id
    }

    pub fn migrator(&self) -> &Arc<dyn Migrator> {
        &self.migrator
    }

    pub fn list(&self) -> Vec<ProcEntry> {
        crate::list()
    }

    /// One page of this node's processes with their most read files
    /// rendered (as root: the asking node applies the owner rule to
    /// `environ`), those with pids above `after`, in pid order. A page ends
    /// once its content passes [`SNAPSHOT_PAGE_BYTES`].
    pub fn snapshot(&self, after: u32) -> SnapshotPage {
        self.snapshot_bounded(after, SNAPSHOT_PAGE_BYTES)
    }

    fn snapshot_bounded(&self, after: u32, max_bytes: usize) -> SnapshotPage {
        let root = Creds {
            uid: 0,
            gid: 0,
            groups: vec![],
            pid: 0,
        };
        let mut procs = Vec::new();
        let mut bytes = 0;
        let mut next = None;
        for entry in self.list().into_iter().filter(|p| p.pid > after) {
            if bytes >= max_bytes {
                next = procs.last().map(|p: &ProcSnap| p.entry.pid);
                break;
            }
            let files: Vec<_> = SNAPSHOT_FILES
                .iter()
                .map(|f| {
                    let r = self.read(&root, entry.pid, *f);
                    bytes += r.as_ref().map_or(8, |b| b.len() + 8);
                    (*f, r.map(serde_bytes::ByteBuf::from))
                })
                .collect();
            // Gone while we read it: not listed.
            if files.iter().any(|(_, r)| r == &Err(libc::ENOENT)) {
                continue;
            }
            procs.push(ProcSnap { entry, files });
        }
        SnapshotPage {
            node_id: self.node_id,
            procs,
            next,
        }
    }

    pub fn node_file(&self, file: NodeFile) -> Result<Vec<u8>, i32> {
        crate::node_file(file)
    }

    pub fn kill(&self, creds: &Creds, pid: u32, sig: i32) -> Result<(), i32> {
        crate::kill(creds, pid, sig)
    }

    /// One per-process file, as `creds` may see it: the control files kept
    /// here, or /proc read inline (served from memory in microseconds, less
    /// than a hop to a blocking pool). lock, cantmove, where, home and nmigs
    /// are public, as the control files are in MOSIX.
    pub fn read(&self, creds: &Creds, pid: u32, file: ProcFile) -> Result<Vec<u8>, i32> {
        let control = |s: String| -> Result<Vec<u8>, i32> {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(libc::ENOENT);
            }
            Ok(s.into_bytes())
        };
        match file {
            ProcFile::Lock => {
                let pinned = self.pins.lock().expect("pins").contains(&pid);
                control(format!("{}\n", pinned as u8))
            }
            ProcFile::Cantmove => {
                let pinned = self.pins.lock().expect("pins").contains(&pid);
                control(if pinned {
                    "locked to its node (lock = 1)\n".to_string()
                } else {
                    self.migrator
                        .cantmove(pid)
                        .map(|r| format!("{r}\n"))
                        .unwrap_or_default()
                })
            }
            ProcFile::Where => control(format!("{}\n", self.migrator.placement(pid).running_on)),
            ProcFile::Home => control(format!("{}\n", self.migrator.home_of(pid))),
            ProcFile::Nmigs => control(format!("{}\n", self.migrator.placement(pid).nmigs)),
            _ => crate::read(self.node_id, creds, pid, file),
        }
    }

    pub fn set_lock(&self, creds: &Creds, pid: u32, on: bool) -> Result<(), i32> {
        crate::check_owner(creds, pid)?;
        let mut p = self.pins.lock().expect("pins");
        // Pins of processes that are gone go with them.
        p.retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if on {
            p.insert(pid);
        } else {
            p.remove(&pid);
        }
        Ok(())
    }

    /// Moves `pid` to `target`, unless it is pinned here (EPERM, as MOSIX
    /// refuses to move a locked process) or `creds` may not control it.
    pub fn migrate(&self, creds: &Creds, pid: u32, target: &str) -> Result<(), i32> {
        crate::check_owner(creds, pid)?;
        if self.pins.lock().expect("pins").contains(&pid) {
            return Err(libc::EPERM);
        }
        self.migrator.migrate(creds, pid, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Creds {
        // SAFETY: plain syscalls.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Creds {
            uid,
            gid,
            groups: vec![],
            pid: std::process::id(),
        }
    }

    #[test]
    fn snapshot_pages_cover_every_process_once() {
        let node = LocalNode::new(3, Arc::new(Stationary { node: "n3".into() }));
        let me = std::process::id();
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            // Tiny pages: one process each, or close to it.
            let page = node.snapshot_bounded(after, 1);
            assert_eq!(page.node_id, 3);
            seen.extend(page.procs.iter().map(|p| p.entry.pid));
            if let Some(p) = page.procs.iter().find(|p| p.entry.pid == me) {
                let stat = p.files.iter().find(|(f, _)| *f == ProcFile::Stat).unwrap();
                let stat = String::from_utf8(stat.1.clone().unwrap().into_vec()).unwrap();
                let g = mosix_proto::proc::gpid(3, me).to_string();
                assert!(stat.starts_with(&format!("{g} (")), "{stat}");
                assert!(p
                    .files
                    .iter()
                    .any(|(f, r)| *f == ProcFile::Environ && r.is_ok()));
            }
            match page.next {
                Some(n) => after = n,
                None => break,
            }
        }
        assert!(seen.contains(&me));
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    }

    #[test]
    fn control_files_come_from_the_pins_and_the_migrator() {
        let node = LocalNode::new(3, Arc::new(Stationary { node: "n3".into() }));
        let pid = std::process::id();
        let read = |f| String::from_utf8(node.read(&me(), pid, f).unwrap()).unwrap();
        assert_eq!(read(ProcFile::Where), "n3\n");
        assert_eq!(read(ProcFile::Home), "n3\n");
        assert_eq!(read(ProcFile::Nmigs), "0\n");
        assert_eq!(read(ProcFile::Lock), "0\n");
        assert_eq!(read(ProcFile::Cantmove), "");
        assert_eq!(node.migrate(&me(), pid, "n1"), Err(libc::EOPNOTSUPP));
        node.set_lock(&me(), pid, true).unwrap();
        assert_eq!(read(ProcFile::Lock), "1\n");
        assert!(read(ProcFile::Cantmove).contains("locked"));
        assert_eq!(node.migrate(&me(), pid, "n1"), Err(libc::EPERM));
        assert_eq!(
            node.read(&me(), u32::MAX - 1, ProcFile::Where),
            Err(libc::ENOENT)
        );
    }
}
