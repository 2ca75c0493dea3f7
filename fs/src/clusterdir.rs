//! `/mosix/cluster`: the cluster's members and each node's load, as files,
//! the way openMosix's /proc/hpc/nodes/<id>/ showed them.
//!
//! ```text
//! /mosix/cluster/members                  one line per member: name state address
//! /mosix/cluster/nodes/<node>/status      alive | suspect | dead
//!                            /cpus /load /mem /freemem /speed /procs /uptime
//! ```
//! Content comes from this node's membership table (load records are at most
//! about a second old) and is rendered once per open.
use std::sync::{Arc, Mutex};

use mosix_proto::MemberInfo;

use crate::attr::{listing, Kind, ListEntry, NodeAttr};
use crate::error::{FsError, FsResult};
use crate::ino::{self, ClusterIno, Ino};
use crate::reach::Reach;

const FILES: [&str; 8] = [
    "status", "cpus", "load", "mem", "freemem", "speed", "procs", "uptime",
];

fn render(m: &MemberInfo, file: &str) -> String {
    let l = m.load.as_ref();
    let v = |f: &dyn Fn(&mosix_proto::LoadRecord) -> String| l.map(f).unwrap_or_else(|| "-".into());
    match file {
        "status" => m.state.to_string(),
        "cpus" => v(&|l| l.cpus.to_string()),
        "load" => v(&|l| format!("{:.2}", l.load1)),
        "mem" => v(&|l| l.totalmem.to_string()),
        "freemem" => v(&|l| l.freemem.to_string()),
        "speed" => v(&|l| l.speed.to_string()),
        "procs" => v(&|l| l.procs.to_string()),
        "uptime" => v(&|l| l.uptime.to_string()),
        _ => String::new(),
    }
}

fn classify(i: u64) -> Option<ClusterIno> {
    match ino::classify(i) {
        Ino::Cluster(c) => Some(c),
        _ => None,
    }
}

pub struct ClusterDir {
    reach: Arc<Reach>,
    /// Node names by slot (0 unused): a node keeps its directory's inode
    /// number for the life of the daemon.
    slots: Mutex<Vec<String>>,
}

impl ClusterDir {
    pub fn new(reach: Arc<Reach>) -> Self {
        ClusterDir {
            reach,
            slots: Mutex::new(vec![String::new()]),
        }
    }

    fn slot_of(&self, name: &str) -> usize {
        let mut s = self.slots.lock().expect("cluster slots");
        if let Some(i) = s.iter().position(|n| n == name) {
            return i;
        }
        s.push(name.to_string());
        s.len() - 1
    }

    fn member_by_slot(&self, slot: usize) -> FsResult<MemberInfo> {
        let name = self
            .slots
            .lock()
            .expect("cluster slots")
            .get(slot)
            .cloned()
            .filter(|n| !n.is_empty())
            .ok_or(FsError::Os(libc::ENOENT))?;
        self.reach
            .view
            .members()
            .into_iter()
            .find(|m| m.name == name)
            .ok_or(FsError::Os(libc::ENOENT))
    }

    fn file(&self, i: u64) -> NodeAttr {
        self.reach.virtual_attr(i, Kind::File, 0o444, 0)
    }

    fn dir(&self, i: u64) -> NodeAttr {
        self.reach.virtual_attr(i, Kind::Dir, 0o555, 0)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<NodeAttr> {
        match classify(parent).ok_or(FsError::Os(libc::ENOENT))? {
            ClusterIno::Top => match name {
                b"members" => Ok(self.file(ino::CLUSTER_MEMBERS)),
                b"nodes" => Ok(self.dir(ino::CLUSTER_NODES)),
                _ => Err(FsError::Os(libc::ENOENT)),
            },
            ClusterIno::Nodes => {
                let name = std::str::from_utf8(name).map_err(|_| FsError::Os(libc::ENOENT))?;
                if !self.reach.view.members().iter().any(|m| m.name == name) {
                    return Err(FsError::Os(libc::ENOENT));
                }
                Ok(self.dir(ino::cluster_node(self.slot_of(name), 0)))
            }
            ClusterIno::Node { slot, file: 0 } => {
                let i = FILES
                    .iter()
                    .position(|f| f.as_bytes() == name)
                    .ok_or(FsError::Os(libc::ENOENT))?;
                Ok(self.file(ino::cluster_node(slot, i + 1)))
            }
            ClusterIno::Members | ClusterIno::Node { .. } => Err(FsError::Os(libc::ENOTDIR)),
        }
    }

    pub fn getattr(&self, i: u64) -> FsResult<NodeAttr> {
        match classify(i).ok_or(FsError::Os(libc::ENOENT))? {
            ClusterIno::Top | ClusterIno::Nodes => Ok(self.dir(i)),
            ClusterIno::Members => Ok(self.file(i)),
            ClusterIno::Node { slot, file } => {
                self.member_by_slot(slot)?;
                Ok(if file == 0 { self.dir(i) } else { self.file(i) })
            }
        }
    }

    pub fn readdir(&self, i: u64, offset: u64) -> FsResult<Vec<ListEntry>> {
        let mut names: Vec<(u64, Kind, Vec<u8>)> = vec![
            (i, Kind::Dir, b".".to_vec()),
            (ino::CLUSTER, Kind::Dir, b"..".to_vec()),
        ];
        match classify(i).ok_or(FsError::Os(libc::ENOENT))? {
            ClusterIno::Top => {
                names[1].0 = ino::ROOT;
                names.push((ino::CLUSTER_MEMBERS, Kind::File, b"members".to_vec()));
                names.push((ino::CLUSTER_NODES, Kind::Dir, b"nodes".to_vec()));
            }
            ClusterIno::Nodes => {
                for m in self.reach.view.members() {
                    let slot = self.slot_of(&m.name);
                    names.push((ino::cluster_node(slot, 0), Kind::Dir, m.name.into_bytes()));
                }
            }
            ClusterIno::Node { slot, file: 0 } => {
                for (n, f) in FILES.iter().enumerate() {
                    names.push((
                        ino::cluster_node(slot, n + 1),
                        Kind::File,
                        f.as_bytes().to_vec(),
                    ));
                }
            }
            ClusterIno::Members | ClusterIno::Node { .. } => {
                return Err(FsError::Os(libc::ENOTDIR))
            }
        }
        Ok(listing(names, offset))
    }

    /// The content of a file of /mosix/cluster, rendered now.
    pub fn render(&self, i: u64, flags: i32) -> FsResult<Vec<u8>> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(FsError::Os(libc::EACCES));
        }
        match classify(i).ok_or(FsError::Os(libc::ENOENT))? {
            ClusterIno::Members => {
                let mut out = String::new();
                for m in self.reach.view.members() {
                    out.push_str(&format!("{} {} {}\n", m.name, m.state, m.addr));
                }
                Ok(out.into_bytes())
            }
            ClusterIno::Node { slot, file } if file > 0 => {
                let m = self.member_by_slot(slot)?;
                let f = FILES.get(file - 1).copied().unwrap_or("");
                Ok(format!("{}\n", render(&m, f)).into_bytes())
            }
            _ => Err(FsError::Os(libc::EISDIR)),
        }
    }
}
