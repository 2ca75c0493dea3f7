//! Who is asking: the kernel's uid, gid and pid of a request, completed with
//! the caller's supplementary groups into the credentials a serving node
//! applies.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mosix_proto::fs::Creds;

/// Who is asking, as the kernel reported it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// How long a process's supplementary groups are reused before /proc is
/// read again. A `newgrp` takes effect on /mosix at most this late.
pub const GROUPS_TTL: Duration = Duration::from_secs(1);

type GroupsCache = lru::LruCache<(u32, u32, u32), (Instant, Vec<u32>)>;

/// (pid, uid, gid) -> when read, and the supplementary groups. Keyed by
/// all three so a reused pid of another user never gets the previous
/// process's groups.
pub struct Callers {
    groups: Mutex<GroupsCache>,
}

impl Default for Callers {
    fn default() -> Self {
        Callers {
            groups: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(4096).expect("nonzero"),
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
            let mut cache = self.groups.lock().expect("groups cache");
            let key = (c.pid, c.uid, c.gid);
            match cache.get(&key) {
                Some((at, g)) if at.elapsed() < GROUPS_TTL => g.clone(),
                _ => {
                    let g = mosix_procview::status::groups(c.pid);
                    cache.put(key, (Instant::now(), g.clone()));
                    g
                }
            }
        };
        Creds {
            uid: c.uid,
            gid: c.gid,
            groups,
            pid: c.pid,
        }
    }
}
