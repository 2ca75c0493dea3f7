//! The contents the kernel was told about, one immutable version per inode
//! number (see [`crate::ino`]): a lookup renders a file and publishes it
//! here; if the content is what the file's current version holds, the
//! lookup answers with the same inode (the kernel keeps its pages and reads
//! nothing), else with a new one. Reads are served from the version the
//! kernel holds, so whatever changes between a lookup and its reads, the
//! reader sees one whole content of exactly the size it was told.
//!
//! Memory: a version lives while the kernel holds its inode (until FORGET);
//! the content bytes of all versions together stay under [`CONTENT_CAP`]:
//! past it the oldest contents are dropped, and a read of one is served
//! only if rendering the file again gives the same bytes (else `EIO`).
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use mosix_proto::proc::{NodeFile, ProcFile};

/// Most bytes of content kept for the kernel's inodes.
pub const CONTENT_CAP: usize = 64 << 20;

/// Which file a version is a content of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Proc(u32, ProcFile),
    Node(NodeFile),
}

/// What the kernel was told about one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub key: Key,
    pub size: u64,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
    hash: u64,
}

struct Held {
    meta: Meta,
    lookups: u64,
    content: Option<Arc<[u8]>>,
}

#[derive(Default)]
struct Inner {
    /// The newest version of each file the kernel holds: its inode.
    current: HashMap<Key, u64>,
    by_ino: HashMap<u64, Held>,
    /// Inodes in the order their contents were kept, for the cap.
    order: VecDeque<u64>,
    bytes: usize,
    next: u32,
}

/// Why a read found no content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The kernel holds no such inode (or version 0: not readable).
    Unknown,
    /// The content was dropped under the cap: render again and compare.
    Dropped(Meta),
}

pub struct Versions {
    inner: Mutex<Inner>,
    cap: usize,
}

impl Default for Versions {
    fn default() -> Self {
        Versions::with_cap(CONTENT_CAP)
    }
}

fn hash(b: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl Versions {
    pub fn with_cap(cap: usize) -> Self {
        Versions {
            inner: Mutex::default(),
            cap,
        }
    }

    /// Hands `content` of `key` to the kernel, owned by `uid`/`gid`: the
    /// inode of its current version if the content is the same, else of a
    /// new one (`ino_of` makes the number from a version). Counts one
    /// kernel reference.
    pub fn publish(
        &self,
        key: Key,
        content: Vec<u8>,
        uid: u32,
        gid: u32,
        ino_of: impl Fn(u32) -> u64,
    ) -> (u64, Meta) {
        let h = hash(&content);
        let mut g = self.inner.lock().expect("versions");
        let g = &mut *g;
        if let Some(ino) = g.current.get(&key).copied() {
            if let Some(held) = g.by_ino.get_mut(&ino) {
                if held.meta.hash == h
                    && held.meta.size == content.len() as u64
                    && (held.meta.uid, held.meta.gid) == (uid, gid)
                {
                    held.lookups += 1;
                    if held.content.is_none() {
                        g.bytes += content.len();
                        held.content = Some(content.into());
                        g.order.push_back(ino);
                    }
                    let meta = held.meta;
                    Self::trim(g, self.cap);
                    return (ino, meta);
                }
            }
        }
        // A new version: a number the kernel does not hold.
        let ino = loop {
            // 1..LISTED: 0 and LISTED are taken.
            g.next = (g.next % (crate::ino::LISTED - 1)) + 1;
            let ino = ino_of(g.next);
            if !g.by_ino.contains_key(&ino) {
                break ino;
            }
        };
        let meta = Meta {
            key,
            size: content.len() as u64,
            mtime: SystemTime::now(),
            uid,
            gid,
            hash: h,
        };
        g.bytes += content.len();
        g.by_ino.insert(
            ino,
            Held {
                meta,
                lookups: 1,
                content: Some(content.into()),
            },
        );
        g.order.push_back(ino);
        g.current.insert(key, ino);
        Self::trim(g, self.cap);
        (ino, meta)
    }

    /// Version 0 of `key`: a file the caller may not read (its reads fail
    /// with EACCES). Its size is 1, not 0: the kernel would answer a read
    /// of an empty file with EOF itself, never asking. Counts one kernel
    /// reference.
    pub fn denied(&self, key: Key, ino: u64, uid: u32, gid: u32) -> Meta {
        let mut g = self.inner.lock().expect("versions");
        let held = g.by_ino.entry(ino).or_insert_with(|| Held {
            meta: Meta {
                key,
                size: 1,
                mtime: SystemTime::UNIX_EPOCH,
                uid,
                gid,
                hash: 0,
            },
            lookups: 0,
            content: None,
        });
        held.lookups += 1;
        held.meta
    }

    fn trim(g: &mut Inner, cap: usize) {
        while g.bytes > cap {
            let Some(ino) = g.order.pop_front() else {
                break;
            };
            if let Some(c) = g.by_ino.get_mut(&ino).and_then(|h| h.content.take()) {
                g.bytes -= c.len();
            }
        }
    }

    pub fn meta(&self, ino: u64) -> Option<Meta> {
        self.inner
            .lock()
            .expect("versions")
            .by_ino
            .get(&ino)
            .map(|h| h.meta)
    }

    /// The content of version `ino`.
    pub fn content(&self, ino: u64) -> Result<(Meta, Arc<[u8]>), Miss> {
        let g = self.inner.lock().expect("versions");
        match g.by_ino.get(&ino) {
            Some(Held {
                meta,
                content: Some(c),
                ..
            }) => Ok((*meta, c.clone())),
            Some(h) if h.meta.mtime != SystemTime::UNIX_EPOCH => Err(Miss::Dropped(h.meta)),
            _ => Err(Miss::Unknown),
        }
    }

    /// A content rendered again for a version whose bytes were dropped:
    /// kept (and returned) only if it is the same.
    pub fn restore(&self, ino: u64, content: Vec<u8>) -> Option<Arc<[u8]>> {
        let mut g = self.inner.lock().expect("versions");
        let g = &mut *g;
        let held = g.by_ino.get_mut(&ino)?;
        if held.meta.hash != hash(&content) || held.meta.size != content.len() as u64 {
            return None;
        }
        let c: Arc<[u8]> = content.into();
        g.bytes += c.len();
        held.content = Some(c.clone());
        g.order.push_back(ino);
        Self::trim(g, self.cap);
        Some(c)
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut g = self.inner.lock().expect("versions");
        let g = &mut *g;
        let Some(held) = g.by_ino.get_mut(&ino) else {
            return;
        };
        held.lookups = held.lookups.saturating_sub(n);
        if held.lookups > 0 {
            return;
        }
        let held = g.by_ino.remove(&ino).expect("held");
        if let Some(c) = held.content {
            g.bytes -= c.len();
        }
        if g.current.get(&held.meta.key) == Some(&ino) {
            g.current.remove(&held.meta.key);
        }
    }

    /// The next lookup of `key` gets a new version whatever its content
    /// (after a write, the kernel's pages of the current one hold what was
    /// written).
    pub fn invalidate(&self, key: Key) {
        self.inner.lock().expect("versions").current.remove(&key);
    }

    /// Bytes of content kept, and versions the kernel holds.
    pub fn usage(&self) -> (usize, usize) {
        let g = self.inner.lock().expect("versions");
        (g.bytes, g.by_ino.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: Key = Key::Proc(5, ProcFile::Stat);

    fn ino(v: u32) -> u64 {
        crate::ino::file(5, ProcFile::Stat, v)
    }

    #[test]
    fn same_content_same_inode_new_content_new_inode() {
        let v = Versions::default();
        let (a, m) = v.publish(K, b"one".to_vec(), 0, 0, ino);
        assert_eq!(m.size, 3);
        let (b, _) = v.publish(K, b"one".to_vec(), 0, 0, ino);
        assert_eq!(a, b);
        let (c, m) = v.publish(K, b"three".to_vec(), 0, 0, ino);
        assert_ne!(a, c);
        assert_eq!(m.size, 5);
        // Both versions stay readable, each whole: a reader of the first
        // never sees the second.
        assert_eq!(&*v.content(a).unwrap().1, b"one");
        assert_eq!(&*v.content(c).unwrap().1, b"three");
        // Two lookups of a, two forgets: gone.
        v.forget(a, 1);
        assert!(v.content(a).is_ok());
        v.forget(a, 1);
        assert_eq!(v.content(a).unwrap_err(), Miss::Unknown);
        v.forget(c, 1);
        assert_eq!(v.usage(), (0, 0));
    }

    #[test]
    fn a_write_makes_the_next_lookup_a_new_version() {
        let v = Versions::default();
        let (a, _) = v.publish(K, b"0\n".to_vec(), 0, 0, ino);
        v.invalidate(K);
        let (b, _) = v.publish(K, b"0\n".to_vec(), 0, 0, ino);
        assert_ne!(a, b);
    }

    #[test]
    fn contents_stay_under_the_cap_and_come_back_only_unchanged() {
        let v = Versions::with_cap(10);
        let (a, _) = v.publish(K, b"0123456789".to_vec(), 0, 0, ino);
        let k2 = Key::Proc(5, ProcFile::Status);
        let i2 = |n| crate::ino::file(5, ProcFile::Status, n);
        let (b, _) = v.publish(k2, b"abc".to_vec(), 0, 0, i2);
        assert!(v.usage().0 <= 10);
        let Err(Miss::Dropped(m)) = v.content(a) else {
            panic!("a kept over the cap");
        };
        assert_eq!(m.size, 10);
        assert!(v.restore(a, b"changed!!!".to_vec()).is_none());
        assert_eq!(
            &*v.restore(a, b"0123456789".to_vec()).unwrap(),
            b"0123456789"
        );
        assert!(v.usage().0 <= 10);
        assert_eq!(v.content(b).unwrap_err(), Miss::Dropped(v.meta(b).unwrap()));
    }

    #[test]
    fn denied_is_version_zero_without_content() {
        let v = Versions::default();
        let i = crate::ino::file(5, ProcFile::Environ, 0);
        let m = v.denied(Key::Proc(5, ProcFile::Environ), i, 7, 7);
        assert_eq!(m.size, 1);
        assert_eq!(v.content(i).unwrap_err(), Miss::Unknown);
        v.forget(i, 1);
        assert_eq!(v.usage(), (0, 0));
    }
}
