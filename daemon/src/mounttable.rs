//! The mount table (/proc/self/mountinfo): which mount sits at a path, so
//! that a daemon can tell a dead /mosix from a live one, and notice when its
//! own is unmounted.
use std::path::{Path, PathBuf};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq)]
pub struct MountEntry {
    pub id: u64,
    pub dev: String,
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// A mount of /mosix (or of a mountpoint given to a mosix daemon).
    pub fn is_mosix(&self) -> bool {
        self.fstype == "fuse.mosix" || (self.fstype.starts_with("fuse") && self.source == "mosix")
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parses /proc/self/mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let f: Vec<&str> = head.split(' ').collect();
            let t: Vec<&str> = tail.split(' ').collect();
            Some(MountEntry {
                id: f.first()?.parse().ok()?,
                dev: f.get(2)?.to_string(),
                mountpoint: unescape_mountinfo(f.get(4)?),
                fstype: t.first()?.to_string(),
                source: t.get(1).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// The topmost mount at `mountpoint` in this process's mount namespace.
pub fn mount_at(mountpoint: &Path) -> std::io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(top_mount_at(&parse_mountinfo(&text), mountpoint))
}

fn top_mount_at(entries: &[MountEntry], mountpoint: &Path) -> Option<MountEntry> {
    // The mountpoint as the kernel spells it: through a real parent (the
    // mountpoint itself may be a dead mount nothing can resolve).
    let mut names = vec![mountpoint.to_path_buf()];
    if let (Some(dir), Some(name)) = (mountpoint.parent(), mountpoint.file_name()) {
        if let Ok(d) = std::fs::canonicalize(dir) {
            names.push(d.join(name));
        }
    }
    entries
        .iter()
        .rev()
        .find(|e| names.contains(&e.mountpoint))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
29 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 29 0:45 / /mosix rw,nosuid,nodev,relatime shared:20 - fuse.mosix mosix rw,user_id=0,group_id=0
41 29 0:46 / /with\\040space rw - tmpfs tmpfs rw
43 40 0:47 / /mosix rw,relatime - fuse mosix rw,user_id=0
44 29 0:48 / /mnt/other rw,relatime - fuse.sshfs host:/ rw
";

    #[test]
    fn the_top_mount_at_a_path_is_found_and_told_apart() {
        let e = parse_mountinfo(TABLE);
        assert_eq!(e.len(), 6);
        assert_eq!(e[2].id, 40);
        assert_eq!(e[2].dev, "0:45");
        assert_eq!(e[3].mountpoint, PathBuf::from("/with space"));
        // The last mount at a path is the one on top.
        let top = top_mount_at(&e, Path::new("/mosix")).unwrap();
        assert_eq!(top.id, 43);
        assert!(top.is_mosix() && e[2].is_mosix());
        assert!(!top_mount_at(&e, Path::new("/mnt/other"))
            .unwrap()
            .is_mosix());
        assert!(!top_mount_at(&e, Path::new("/")).unwrap().is_mosix());
        assert_eq!(top_mount_at(&e, Path::new("/nowhere")), None);
        // Garbage lines are skipped, not fatal.
        assert!(parse_mountinfo("junk\n1 2\n - x").is_empty());
    }
}
