//! The virtual top of `/mosix`: the root, `nodes/`, `here` and `home`.
//! Answered by this node alone, read-only.
use crate::attr::{listing, Kind, ListEntry, NodeAttr};
use crate::error::{FsError, FsResult};
use crate::ino;
use crate::nodes::Nodes;
use crate::reach::Reach;

/// Where `here` points.
pub fn here_target(reach: &Reach) -> Vec<u8> {
    format!("nodes/{}", reach.self_name).into_bytes()
}

/// Where `home` points for process `pid` of this node.
pub fn home_target(reach: &Reach, pid: u32) -> Vec<u8> {
    format!("nodes/{}", reach.home_of(pid)).into_bytes()
}

/// The root's children by name.
pub fn child(reach: &Reach, name: &[u8]) -> FsResult<u64> {
    Ok(match name {
        b"nodes" => ino::NODES,
        b"here" => ino::HERE,
        b"home" => ino::HOME,
        b"cluster" => ino::CLUSTER,
        b"proc" if reach.proc_link.get().is_some() => ino::PROC,
        _ => return Err(FsError::Os(libc::ENOENT)),
    })
}

pub fn getattr(reach: &Reach, i: u64, pid: u32) -> FsResult<NodeAttr> {
    match i {
        ino::ROOT | ino::NODES | ino::CLUSTER => Ok(reach.virtual_attr(i, Kind::Dir, 0o555, 0)),
        ino::PROC => {
            let len = reach
                .proc_link
                .get()
                .ok_or(FsError::Os(libc::ENOENT))?
                .len();
            Ok(reach.virtual_attr(i, Kind::Symlink, 0o777, len as u64))
        }
        ino::HERE => {
            Ok(reach.virtual_attr(i, Kind::Symlink, 0o777, here_target(reach).len() as u64))
        }
        ino::HOME => Ok(reach.virtual_attr(
            i,
            Kind::Symlink,
            0o777,
            home_target(reach, pid).len() as u64,
        )),
        _ => Err(FsError::Os(libc::ENOENT)),
    }
}

pub fn readdir(reach: &Reach, nodes: &Nodes, i: u64, offset: u64) -> FsResult<Vec<ListEntry>> {
    let mut names: Vec<(u64, Kind, Vec<u8>)> = vec![
        (i, Kind::Dir, b".".to_vec()),
        (ino::ROOT, Kind::Dir, b"..".to_vec()),
    ];
    match i {
        ino::ROOT => {
            names.push((ino::NODES, Kind::Dir, b"nodes".to_vec()));
            names.push((ino::HERE, Kind::Symlink, b"here".to_vec()));
            names.push((ino::HOME, Kind::Symlink, b"home".to_vec()));
            names.push((ino::CLUSTER, Kind::Dir, b"cluster".to_vec()));
            if reach.proc_link.get().is_some() {
                names.push((ino::PROC, Kind::Symlink, b"proc".to_vec()));
            }
        }
        ino::NODES => {
            for n in reach.live_nodes() {
                let slot = nodes.slot_of(&n);
                names.push((
                    ino::node_file(slot, mosix_proto::fs::ROOT_INO),
                    Kind::Dir,
                    n.into_bytes(),
                ));
            }
        }
        _ => return Err(FsError::Os(libc::ENOTDIR)),
    }
    Ok(listing(names, offset))
}
