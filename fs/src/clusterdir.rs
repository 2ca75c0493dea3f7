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
use mosix_proto::fs::FileKind;
use mosix_proto::MemberInfo;

use crate::error::{FsError, FsResult};
use crate::namespace::{listing, Caller, ListEntry, MosixFs, NodeAttr, INO_CLUSTER};

pub const CLUSTER_BASE: u64 = 1 << 39;
pub const INO_MEMBERS: u64 = 8;
pub const INO_CLUSTER_NODES: u64 = 9;
const FILES: [&str; 8] = [
    "status", "cpus", "load", "mem", "freemem", "speed", "procs", "uptime",
];

pub fn is_cluster(ino: u64) -> bool {
    ino >> 48 == 0 && (ino & CLUSTER_BASE != 0 || ino == INO_MEMBERS || ino == INO_CLUSTER_NODES)
}

fn node_ino(slot: usize, file: usize) -> u64 {
    CLUSTER_BASE | ((slot as u64) << 8) | file as u64
}

fn decode(ino: u64) -> Option<(usize, usize)> {
    (ino & CLUSTER_BASE != 0)
        .then_some((((ino & !CLUSTER_BASE) >> 8) as usize, (ino & 0xff) as usize))
}

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

impl MosixFs {
    fn member_by_slot(&self, slot: usize) -> FsResult<MemberInfo> {
        let name = self.node_name_of(slot).ok_or(FsError::Os(libc::ENOENT))?;
        self.cluster
            .members()
            .into_iter()
            .find(|m| m.name == name)
            .ok_or(FsError::Os(libc::ENOENT))
    }

    pub fn cluster_lookup(&self, parent: u64, name: &[u8]) -> FsResult<NodeAttr> {
        let file = |ino| self.virtual_attr(ino, FileKind::File, 0o444, 0);
        let dir = |ino| self.virtual_attr(ino, FileKind::Dir, 0o555, 0);
        match parent {
            INO_CLUSTER => match name {
                b"members" => Ok(file(INO_MEMBERS)),
                b"nodes" => Ok(dir(INO_CLUSTER_NODES)),
                _ => Err(FsError::Os(libc::ENOENT)),
            },
            INO_CLUSTER_NODES => {
                let name = std::str::from_utf8(name).map_err(|_| FsError::Os(libc::ENOENT))?;
                if !self.cluster.members().iter().any(|m| m.name == name) {
                    return Err(FsError::Os(libc::ENOENT));
                }
                Ok(dir(node_ino(self.node_slot(name), 0)))
            }
            p => {
                let (slot, 0) = decode(p).ok_or(FsError::Os(libc::ENOENT))? else {
                    return Err(FsError::Os(libc::ENOTDIR));
                };
                let i = FILES
                    .iter()
                    .position(|f| f.as_bytes() == name)
                    .ok_or(FsError::Os(libc::ENOENT))?;
                Ok(file(node_ino(slot, i + 1)))
            }
        }
    }

    pub fn cluster_getattr(&self, ino: u64) -> FsResult<NodeAttr> {
        match ino {
            INO_MEMBERS => Ok(self.virtual_attr(ino, FileKind::File, 0o444, 0)),
            INO_CLUSTER_NODES => Ok(self.virtual_attr(ino, FileKind::Dir, 0o555, 0)),
            _ => {
                let (slot, f) = decode(ino).ok_or(FsError::Os(libc::ENOENT))?;
                self.member_by_slot(slot)?;
                let kind = if f == 0 {
                    FileKind::Dir
                } else {
                    FileKind::File
                };
                Ok(self.virtual_attr(ino, kind, if f == 0 { 0o555 } else { 0o444 }, 0))
            }
        }
    }

    pub fn cluster_readdir(&self, ino: u64, offset: u64) -> FsResult<Vec<ListEntry>> {
        let mut names: Vec<(u64, FileKind, Vec<u8>)> = vec![
            (ino, FileKind::Dir, b".".to_vec()),
            (INO_CLUSTER, FileKind::Dir, b"..".to_vec()),
        ];
        match ino {
            INO_CLUSTER => {
                names.push((INO_MEMBERS, FileKind::File, b"members".to_vec()));
                names.push((INO_CLUSTER_NODES, FileKind::Dir, b"nodes".to_vec()));
            }
            INO_CLUSTER_NODES => {
                for m in self.cluster.members() {
                    let slot = self.node_slot(&m.name);
                    names.push((node_ino(slot, 0), FileKind::Dir, m.name.into_bytes()));
                }
            }
            _ => {
                let (slot, _) = decode(ino).ok_or(FsError::Os(libc::ENOENT))?;
                for (i, f) in FILES.iter().enumerate() {
                    names.push((node_ino(slot, i + 1), FileKind::File, f.as_bytes().to_vec()));
                }
            }
        }
        Ok(listing(names, offset))
    }

    /// The content of a file of /mosix/cluster, rendered now.
    pub fn cluster_render(&self, _caller: Caller, ino: u64) -> FsResult<Vec<u8>> {
        if ino == INO_MEMBERS {
            let mut out = String::new();
            for m in self.cluster.members() {
                out.push_str(&format!("{} {} {}\n", m.name, m.state, m.addr));
            }
            return Ok(out.into_bytes());
        }
        let (slot, f) = decode(ino).ok_or(FsError::Os(libc::ENOENT))?;
        if f == 0 {
            return Err(FsError::Os(libc::EISDIR));
        }
        let m = self.member_by_slot(slot)?;
        Ok(format!("{}\n", render(&m, FILES.get(f - 1).copied().unwrap_or(""))).into_bytes())
    }
}
