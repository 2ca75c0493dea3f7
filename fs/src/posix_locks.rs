//! Which lock owners hold POSIX locks on which files, on the client side.
//!
//! The serving node holds the locks; the client kernel keeps no record of
//! them, so close(2) semantics are ours to keep: a close drops the closing
//! process's fcntl locks on that file, and the last close of an open file
//! drops the flock and OFD locks it owns. Only owners that ever took a lock
//! cost an unlock at close.
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct LockOwners {
    /// (inode, lock owner) pairs that took a lock and have not closed the
    /// file since.
    locked: Mutex<HashSet<(u64, u64)>>,
    /// Lock owners seen on each open file (by handle).
    by_fh: Mutex<HashMap<u64, HashSet<u64>>>,
}

impl LockOwners {
    /// `owner` asked for a lock on `ino` through open file `fh`.
    pub fn took(&self, ino: u64, fh: u64, owner: u64) {
        self.locked
            .lock()
            .expect("lock owners")
            .insert((ino, owner));
        self.by_fh
            .lock()
            .expect("lock owners")
            .entry(fh)
            .or_default()
            .insert(owner);
    }

    /// A descriptor of `ino` was closed by `owner`: whether it may hold
    /// locks there that must go now.
    pub fn closed(&self, ino: u64, owner: u64) -> bool {
        self.locked
            .lock()
            .expect("lock owners")
            .remove(&(ino, owner))
    }

    /// Open file `fh` of `ino` is gone: the owners whose locks must go.
    pub fn released(&self, ino: u64, fh: u64) -> Vec<u64> {
        let owners = self
            .by_fh
            .lock()
            .expect("lock owners")
            .remove(&fh)
            .unwrap_or_default();
        let mut locked = self.locked.lock().expect("lock owners");
        owners
            .into_iter()
            .filter(|o| locked.remove(&(ino, *o)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_drops_a_process_locks_and_release_the_open_files() {
        let l = LockOwners::default();
        // Process lock owner 7 locks through fh 1; OFD owner 9 through fh 2.
        l.took(100, 1, 7);
        l.took(100, 2, 9);
        // An owner that never locked costs nothing at close.
        assert!(!l.closed(100, 8));
        assert!(l.closed(100, 7));
        assert!(!l.closed(100, 7), "only once");
        assert_eq!(
            l.released(100, 1),
            Vec::<u64>::new(),
            "7 already unlocked at close"
        );
        assert_eq!(l.released(100, 2), vec![9]);
        assert_eq!(l.released(100, 2), Vec::<u64>::new());
        // Same owner on another file is separate.
        l.took(200, 3, 7);
        assert!(!l.closed(100, 7));
        assert!(l.closed(200, 7));
    }
}
