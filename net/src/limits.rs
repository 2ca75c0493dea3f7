//! What strangers and members can make a node hold: connections (half-open
//! and established, in all and per member), memory for incoming frames
//! (per connection and in total), requests being handled per member, and
//! log lines about refusals.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Handshakes under way at once, from validated addresses (QUIC Retry has
/// proved the peer receives at its address). More are ignored: a stranger
/// who cannot finish a handshake holds at most these slots, each for at
/// most [`crate::CONNECT_TIMEOUT`], and never an established one.
pub const MAX_HANDSHAKES: usize = 64;
/// Established (authenticated) connections one member may hold at once;
/// a node uses one to each peer, two while both dial each other.
pub const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// Bytes of incoming frames (and of the read replies they ask for) that
/// one connection may have in memory at once; further streams wait, their
/// bytes held back by QUIC flow control.
pub const FRAME_BUDGET_PER_CONNECTION: usize = 32 << 20;
/// The same, for all connections of the node together.
pub const FRAME_BUDGET_TOTAL: usize = 128 << 20;
/// Requests of one member being handled at once (each may hold a thread of
/// the blocking pool); further streams wait.
pub const MAX_REQUESTS_PER_PEER: usize = 128;
/// The least a request is charged for its reply, besides its frame.
pub const REPLY_ALLOWANCE: usize = 64 << 10;

/// The most memory `connections` authenticated connections can make a node
/// hold for incoming frames, whatever they send: the frames being read or
/// handled (their budgets), plus what QUIC holds unread for each. That is
/// at most its receive window of data, but kept in the packets it arrived
/// in: quinn lets a stream's packet allocations exceed its unread bytes by
/// up to 1.5 times those bytes or 32 KiB, whichever is more, before it
/// copies them together (`quinn_proto::connection::assembler`). So a
/// connection holds at most 2.5 windows plus 32 KiB per open stream.
pub fn frame_memory_bound(connections: usize) -> usize {
    let per_connection =
        crate::RECEIVE_WINDOW * 5 / 2 + crate::MAX_STREAMS_PER_CONNECTION * (32 << 10);
    (connections * FRAME_BUDGET_PER_CONNECTION).min(FRAME_BUDGET_TOTAL)
        + connections * per_connection
}

/// Bytes of frames in memory, per connection and in total.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    conn: Arc<Semaphore>,
    total: Arc<Semaphore>,
}

/// Bytes a stream holds until it is dropped.
#[derive(Debug)]
pub struct FrameBytes {
    _conn: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl FrameBudget {
    /// A connection's budget drawn from the node's `total`.
    pub fn for_connection(total: &Arc<Semaphore>) -> FrameBudget {
        FrameBudget {
            conn: Arc::new(Semaphore::new(FRAME_BUDGET_PER_CONNECTION)),
            total: total.clone(),
        }
    }

    pub fn node_total() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(FRAME_BUDGET_TOTAL))
    }

    /// Waits until `bytes` (at most a frame) fit in both budgets. The
    /// connection's comes first, so no stream holds the total while
    /// waiting for its connection's.
    pub async fn take(&self, bytes: usize) -> FrameBytes {
        let n = bytes.clamp(1, FRAME_BUDGET_PER_CONNECTION) as u32;
        let conn = self
            .conn
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("frame budget never closes");
        let total = self
            .total
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("frame budget never closes");
        FrameBytes {
            _conn: conn,
            _total: total,
        }
    }
}

/// Per member: how many connections it holds, and its request slots.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: Mutex<HashMap<Arc<str>, PeerEntry>>,
}

#[derive(Debug)]
struct PeerEntry {
    connections: usize,
    requests: Arc<Semaphore>,
}

/// One established connection of a member; dropping it gives the slot back.
#[derive(Debug)]
pub struct PeerConnection {
    table: Arc<PeerTable>,
    name: Arc<str>,
    pub requests: Arc<Semaphore>,
}

impl PeerTable {
    /// A slot for one more connection of `name`, unless it holds
    /// [`MAX_CONNECTIONS_PER_PEER`] already.
    pub fn connect(self: &Arc<Self>, name: &Arc<str>) -> Option<PeerConnection> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let e = peers.entry(name.clone()).or_insert_with(|| PeerEntry {
            connections: 0,
            requests: Arc::new(Semaphore::new(MAX_REQUESTS_PER_PEER)),
        });
        if e.connections >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        e.connections += 1;
        Some(PeerConnection {
            table: self.clone(),
            name: name.clone(),
            requests: e.requests.clone(),
        })
    }
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        let mut peers = self.table.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = peers.get_mut(&self.name) {
            e.connections -= 1;
            if e.connections == 0 {
                peers.remove(&self.name);
            }
        }
    }
}

/// Counts something under way; the guard gives it back.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicUsize>);

#[derive(Debug)]
pub struct Counted(Arc<AtomicUsize>);

impl Counter {
    /// One more, unless `max` are under way already.
    pub fn try_take(&self, max: usize) -> Option<Counted> {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if cur >= max {
                return None;
            }
            match self
                .0
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(Counted(self.0.clone())),
                Err(now) => cur = now,
            }
        }
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// At most one log line per `every` for one kind of event; the next line
/// says how many were left out in between.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    start: Instant,
    /// Milliseconds after `start` of the last line logged (0: none yet).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    pub fn new(every: Duration) -> LogLimit {
        LogLimit {
            every,
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(left out since the last line)` if a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.every.as_millis() as u64 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_limited_and_count_what_they_left_out() {
        let l = LogLimit::new(Duration::from_millis(200));
        assert_eq!(l.allow(), Some(0));
        for _ in 0..1000 {
            assert_eq!(l.allow(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(l.allow(), Some(1000));
    }

    #[test]
    fn a_member_holds_a_bounded_number_of_connections() {
        let t = Arc::new(PeerTable::default());
        let a: Arc<str> = "a".into();
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_PEER)
            .map(|_| t.connect(&a).unwrap())
            .collect();
        assert!(t.connect(&a).is_none());
        assert!(t.connect(&"b".into()).is_some());
        drop(held);
        assert!(t.connect(&a).is_some());
    }

    #[tokio::test]
    async fn frames_wait_for_their_connections_budget() {
        let total = FrameBudget::node_total();
        let c = FrameBudget::for_connection(&total);
        let held: Vec<_> = futures_lite(&c, 8).await;
        let more = tokio::time::timeout(Duration::from_millis(100), c.take(4 << 20)).await;
        assert!(more.is_err(), "over the connection's budget");
        // Another connection still has room in the total.
        let d = FrameBudget::for_connection(&total);
        let _ok = tokio::time::timeout(Duration::from_millis(100), d.take(4 << 20))
            .await
            .unwrap();
        drop(held);
        tokio::time::timeout(Duration::from_millis(100), c.take(4 << 20))
            .await
            .unwrap();
    }

    async fn futures_lite(c: &FrameBudget, n: usize) -> Vec<FrameBytes> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(c.take(4 << 20).await);
        }
        v
    }
}
