//! O_APPEND across nodes: one client's append is not interleaved with
//! another's, however large.
//!
//! A client's kernel splits a write(2) larger than a FUSE request (1 MiB)
//! into several writes, sent one after the other while it holds the
//! file's inode lock, so nothing of its own node comes between them. Each
//! arrives here as an O_APPEND pwrite, which the serving kernel places at
//! the end of the file atomically; but another node's append could land
//! between two of them and tear both records. So appends to one file take
//! turns: a client that wrote a piece that may be continued keeps the
//! file's turn, and other clients' appends wait, until it writes a piece
//! that ends its write(2), closes the file, or is idle for [`APPEND_IDLE`].
//!
//! Which pieces may be continued: the kernel (without writeback caching)
//! cuts a write(2) at page boundaries of the file, when a request is full.
//! A piece that ends inside a page is the last of its write(2); one that
//! ends on a page boundary may be followed by more.
use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::lock;
use super::sessions::Session;

/// A client that holds a file's turn and writes nothing more for this long
/// has finished its write(2): the gap between two pieces of one write(2) is
/// one round trip between the client's kernel and its daemon.
pub const APPEND_IDLE: Duration = Duration::from_millis(250);
/// The longest one client keeps a file's turn while others wait, so that
/// a client appending without end cannot keep other nodes out.
pub const APPEND_MAX_TURN: Duration = Duration::from_secs(5);

const PAGE: u64 = 4096;

#[derive(Debug)]
struct Turn {
    holder: usize,
    since: Instant,
    last: Instant,
    /// A write of the holder is under way.
    busy: bool,
}

#[derive(Debug, Default)]
pub(super) struct AppendTurns {
    turns: Mutex<HashMap<(u64, u64), Turn>>,
    changed: Condvar,
}

fn id(s: &Session) -> usize {
    s as *const Session as usize
}

/// Whether an append of `len` bytes at the client's offset `offset` may be
/// followed by more pieces of the same write(2).
pub(super) fn may_continue(offset: u64, len: usize) -> bool {
    len > 0 && offset.wrapping_add(len as u64).is_multiple_of(PAGE)
}

impl AppendTurns {
    /// Waits for file `key`'s turn for `session` and marks a write under way.
    pub fn enter(&self, session: &Session, key: (u64, u64)) {
        let me = id(session);
        let mut turns = lock(&self.turns);
        loop {
            let now = Instant::now();
            let wait = match turns.get_mut(&key) {
                Some(t) if t.holder == me => {
                    t.busy = true;
                    t.last = now;
                    return;
                }
                Some(t)
                    if !t.busy
                        && (now >= t.last + APPEND_IDLE || now >= t.since + APPEND_MAX_TURN) =>
                {
                    None
                }
                Some(t) if t.busy => Some(APPEND_IDLE),
                Some(t) => Some((t.last + APPEND_IDLE).min(t.since + APPEND_MAX_TURN) - now),
                None => None,
            };
            match wait {
                None => {
                    turns.insert(
                        key,
                        Turn {
                            holder: me,
                            since: now,
                            last: now,
                            busy: true,
                        },
                    );
                    return;
                }
                Some(d) => {
                    turns = self
                        .changed
                        .wait_timeout(turns, d)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// The write under way is done; `more` if it may be continued (then
    /// the turn is kept), else the turn is given up.
    pub fn leave(&self, session: &Session, key: (u64, u64), more: bool) {
        let me = id(session);
        let mut turns = lock(&self.turns);
        let Some(t) = turns.get_mut(&key) else {
            return;
        };
        if t.holder != me {
            return;
        }
        if more {
            t.busy = false;
            t.last = Instant::now();
        } else {
            turns.remove(&key);
        }
        drop(turns);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_that_end_on_a_page_boundary_may_be_continued() {
        assert!(may_continue(0, 1 << 20));
        assert!(may_continue(4095, 1));
        assert!(!may_continue(0, (1 << 20) + 1));
        assert!(!may_continue(100, 4096));
        assert!(!may_continue(0, 0));
    }
}
