//! Cluster membership and failure detection with SWIM (the `foca` crate), plus
//! the spreading of load records.
//!
//! foca is sans-IO: one task owns it and feeds it received packets and due
//! timers; what it wants sent goes out as QUIC datagrams over the
//! authenticated peer connections, so membership traffic is as protected as
//! every other request.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use foca::{Foca, OwnedNotification, PostcardCodec, Timer};
use mosix_net::Peers;
use mosix_proto::{Datagram, LoadRecord, MemberInfo, MemberState};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::load::LoadProbe;

/// How often each node probes one other member.
pub const PROBE_PERIOD: Duration = Duration::from_secs(1);
/// How long a direct probe waits before asking others to probe indirectly.
pub const PROBE_RTT: Duration = Duration::from_millis(300);
/// How long a member stays suspect before it is declared dead.
pub const SUSPECT_TO_DEAD: Duration = Duration::from_secs(3);
/// How often a node sends its load record to every live member.
pub const LOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often a node that knows no live member re-announces itself to its
/// configured peers (at start, and after losing everyone).
pub const JOIN_RETRY: Duration = Duration::from_secs(1);
/// How long a starting daemon waits to have joined through one of its
/// configured peers before it mounts /mosix (and tells systemd it is
/// ready) anyway, alone: the first node of a cluster to start has nobody to
/// join, and must not wait forever.
pub const JOIN_WAIT: Duration = Duration::from_secs(10);
/// How long a starting daemon that has the member list of one member waits
/// to hear from each other configured peer that list shows up: every one
/// of them was sent our announce, and a live one replies within a handshake
/// (at most `CONNECT_TIMEOUT`); one that does not is likely down, and the
/// members' probes will say so.
pub const JOIN_SETTLE: Duration = mosix_net::CONNECT_TIMEOUT;
/// How long a stopping daemon waits for its members to acknowledge that
/// it is leaving; one that does not answer in time learns it from gossip,
/// or sees the node as dead.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Upper bound on the time from a node's death until every live member of an
/// `n`-node cluster reports it dead. Each live member probes every other member
/// once per round of `n - 1` probe periods; the first failed probe (plus one
/// period for the indirect probes) marks the node suspect, and it is dead
/// [`SUSPECT_TO_DEAD`] later. One more period covers the gossip that spreads
/// the verdict.
pub fn dead_bound(n: usize) -> Duration {
    PROBE_PERIOD * (n.max(2) as u32 + 1) + SUSPECT_TO_DEAD
}

/// SWIM identity of a node. `run` changes on every daemon start, so a
/// restarted node is a new identity that wins over its dead predecessor;
/// `bump` changes when foca renews the identity of a running daemon (it was
/// declared dead and rejoins), which is the same run to everyone else.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    /// The node's id (config `id`): the high bits of its processes' gpids.
    pub id: u16,
    pub addr: SocketAddr,
    /// The daemon's run (see [`Membership::start`]).
    pub run: u64,
    pub bump: u64,
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.run, self.bump) > (adversary.run, adversary.bump)
    }
}

struct Entry {
    id: u16,
    addr: SocketAddr,
    state: MemberState,
    /// The run (daemon start) of the live identity last seen: a new one
    /// means the node restarted, however fast it came back.
    run: u64,
    /// The bump of that identity (see [`NodeId`]).
    bump: u64,
    /// The run that said it was leaving ([`Membership::receive_leaving`]):
    /// that run is `left`, not dead, until a new run of the node joins.
    left: Option<u64>,
    load: Option<(LoadRecord, Instant)>,
}

/// What this node knows about the cluster. Dead members stay listed (as dead)
/// until they come back, so `mosix status` can show what was lost.
pub struct Table {
    self_name: String,
    self_addr: SocketAddr,
    entries: BTreeMap<String, Entry>,
    /// Nodes removed with `mosix cluster remove-node`, and the newest run
    /// of each known then: gossip about those runs is not news. A later
    /// run (the node started again, and was not revoked) joins as usual.
    forgotten: BTreeMap<String, u64>,
    /// The certificate fingerprint each member last spoke with: what
    /// `remove-node --revoke` revokes.
    fingerprints: BTreeMap<String, Arc<str>>,
}

impl Table {
    fn new(self_name: String, self_addr: SocketAddr) -> Self {
        Table {
            self_name,
            self_addr,
            entries: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        }
    }

    /// Follows foca's view. Returns the addresses of members seen
    /// restarted (a new run alive), whose old connections lead nowhere.
    fn sync<'a>(
        &mut self,
        members: impl Iterator<Item = &'a foca::Member<NodeId>>,
    ) -> Vec<SocketAddr> {
        let mut seen = std::collections::HashSet::new();
        let mut restarted = Vec::new();
        for m in members {
            let id = m.id();
            if id.name == self.self_name {
                continue;
            }
            if self
                .forgotten
                .get(&id.name)
                .is_some_and(|&run| id.run <= run)
            {
                continue;
            }
            let left = self.entries.get(&id.name).and_then(|e| e.left);
            let state = match m.state() {
                // A run that said it was leaving stays `left`, whatever
                // the probes of it say meanwhile.
                _ if left == Some(id.run) => MemberState::Left,
                foca::State::Alive => MemberState::Alive,
                foca::State::Suspect => MemberState::Suspect,
                foca::State::Down => MemberState::Dead,
            };
            // Several identities of one name exist briefly after a restart;
            // the live one wins.
            if state != MemberState::Alive && seen.contains(&id.name) {
                continue;
            }
            if state == MemberState::Alive {
                seen.insert(id.name.clone());
            }
            if state == MemberState::Alive
                && !self.entries.contains_key(&id.name)
                && self.forgotten.contains_key(&id.name)
            {
                // Removed, and now started again: the connection to the
                // run that was removed leads nowhere, like a restart's.
                tracing::info!(member = %id.name, "removed member is back");
                restarted.push(id.addr);
            }
            let e = self.entries.entry(id.name.clone()).or_insert(Entry {
                id: id.id,
                addr: id.addr,
                state,
                run: id.run,
                bump: id.bump,
                left: None,
                load: None,
            });
            if e.state != state {
                tracing::info!(member = %id.name, from = %e.state, to = %state, "membership change");
            }
            if state == MemberState::Alive && e.run != id.run {
                tracing::info!(member = %id.name, "member restarted");
                e.run = id.run;
                restarted.push(id.addr);
            }
            if state == MemberState::Alive {
                e.bump = id.bump;
            }
            e.addr = id.addr;
            e.id = id.id;
            e.state = state;
        }
        // foca forgets down members eventually; we keep reporting them dead.
        for (name, e) in self.entries.iter_mut() {
            if !seen.contains(name) && e.state == MemberState::Alive {
                e.state = MemberState::Dead;
            }
        }
        restarted
    }

    /// Run `run` of `node` said it is leaving: it is `left` from now on.
    /// Returns its SWIM identity, for foca to mark down; `None` if that run
    /// is not the one known here.
    fn mark_left(&mut self, node: &str, run: u64) -> Option<NodeId> {
        let e = self.entries.get_mut(node).filter(|e| e.run == run)?;
        e.left = Some(run);
        if e.state != MemberState::Left {
            tracing::info!(member = %node, from = %e.state, "member left the cluster");
            e.state = MemberState::Left;
        }
        Some(NodeId {
            name: node.to_string(),
            id: e.id,
            addr: e.addr,
            run,
            bump: e.bump,
        })
    }

    /// See [`Membership::forget`].
    fn forget(&mut self, node: &str) -> bool {
        let Some(e) = self.entries.remove(node) else {
            return false;
        };
        tracing::info!(member = %node, state = %e.state, "member removed");
        let run = self.forgotten.get(node).copied().unwrap_or(0).max(e.run);
        self.forgotten.insert(node.to_string(), run);
        true
    }

    fn set_load(&mut self, node: &str, rec: LoadRecord) {
        if let Some(e) = self.entries.get_mut(node) {
            e.load = Some((rec, Instant::now()));
        }
    }

    pub fn alive_peers(&self) -> Vec<SocketAddr> {
        self.entries
            .values()
            .filter(|e| e.state.is_up())
            .map(|e| e.addr)
            .collect()
    }

    /// A member that left or was removed is not a member to reach.
    fn up_names(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.state.is_up())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn snapshot(&self, own: &LoadRecord) -> Vec<MemberInfo> {
        let mut out = vec![MemberInfo {
            name: self.self_name.clone(),
            addr: self.self_addr,
            state: MemberState::Alive,
            load: Some(own.clone()),
            load_age_ms: Some(0),
            is_self: true,
        }];
        for (name, e) in &self.entries {
            out.push(MemberInfo {
                name: name.clone(),
                addr: e.addr,
                state: e.state,
                load: e.load.as_ref().map(|(l, _)| l.clone()),
                load_age_ms: e.load.as_ref().map(|(_, t)| t.elapsed().as_millis() as u64),
                is_self: false,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

trait Up {
    /// Alive or suspect: a member requests may still reach.
    fn is_up(&self) -> bool;
}

impl Up for MemberState {
    fn is_up(&self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

enum Input {
    /// A SWIM packet; `from` is the member listening there when the packet
    /// is addressed to this run, and `feed` says it is the member list sent
    /// in reply to our announce.
    Data {
        data: Bytes,
        from: Option<SocketAddr>,
        feed: bool,
    },
    Timer(Timer<NodeId>),
    /// Announce this node to these configured peers.
    Announce(Vec<SocketAddr>),
    /// A member said it is leaving: foca stops probing it and spreads it.
    Down(NodeId),
    /// This node leaves: foca declares it down to a few members.
    Leave,
}

/// Logs a member's datagram that claims another identity, at most once per
/// [`REFUSAL_LOG_EVERY`]: a misconfigured node sends one every probe period.
pub fn refuse(peer: &mosix_net::Peer, what: &str) {
    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    let mut last = LAST.lock().expect("refusal log");
    if last.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(
            certificate = %peer.name,
            id = ?peer.id,
            "refused {what}: it does not match the sender's certificate"
        );
    }
}

/// How often a refused identity is logged.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Handle to the running membership service.
#[derive(Clone)]
pub struct Membership {
    tx: mpsc::Sender<Input>,
    table: Arc<Mutex<Table>>,
    peers: Arc<Peers>,
    /// This daemon's run (see [`Membership::start`]).
    run: u64,
    probe: Arc<LoadProbe>,
    /// Wakes the load sender early, so a member that just came up hears our
    /// load at once instead of up to a period later.
    load_now: Arc<Notify>,
    /// This node's latest load record, sampled by the load loop: reading it
    /// costs nothing, while a fresh sample walks all of /proc.
    own_load: Arc<Mutex<Option<LoadRecord>>>,
    join: Arc<Mutex<JoinState>>,
    /// The configured peers (the addresses this node announces itself to).
    seeds: Arc<[SocketAddr]>,
}

/// How far the join has come (see [`Membership::wait_joined`]).
#[derive(Default)]
struct JoinState {
    /// A member sent its member list (foca's reply to our announce).
    fed: bool,
    /// The members that sent us anything: they know this run of the node.
    heard: std::collections::HashSet<SocketAddr>,
}

/// How a starting daemon's join went.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// It has a member's list, and every configured peer that list shows
    /// up has spoken to it (so knows this run).
    Fully,
    /// It is in the cluster, but these configured peers, up as far as it
    /// knows, did not speak to it within [`JOIN_SETTLE`].
    Partly(Vec<SocketAddr>),
    /// No configured peer answered within the wait.
    Alone,
}

fn foca_config() -> foca::Config {
    let mut c = foca::Config::new_lan(NonZeroU32::new(32).expect("nonzero"));
    c.probe_period = PROBE_PERIOD;
    c.probe_rtt = PROBE_RTT;
    c.suspect_to_down_after = SUSPECT_TO_DEAD;
    // Must fit one QUIC datagram (about 1200 bytes on loopback) with our tag.
    c.max_packet_size = NonZeroUsize::new(1000).expect("nonzero");
    c.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::new(1).expect("nonzero"),
    });
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::new(2).expect("nonzero"),
    });
    c
}

impl Membership {
    pub fn start(
        name: String,
        node_id: u16,
        listen: SocketAddr,
        seeds: Vec<SocketAddr>,
        peers: Arc<Peers>,
        probe: Arc<LoadProbe>,
        run: u64,
    ) -> Self {
        // The daemon's run is part of the SWIM identity: it grows with
        // every start, so a restarted node wins over its dead predecessor,
        // and peers learn which run their client is.
        let me = NodeId {
            name: name.clone(),
            id: node_id,
            addr: listen,
            run,
            bump: 0,
        };
        let table = Arc::new(Mutex::new(Table::new(name.clone(), listen)));
        let (tx, rx) = mpsc::channel(1024);
        let (sched_tx, sched_rx) = mpsc::unbounded_channel();
        let load_now = Arc::new(Notify::new());
        let join = Arc::new(Mutex::new(JoinState::default()));
        tokio::spawn(scheduler(sched_rx, tx.clone()));
        tokio::spawn(foca_loop(
            me,
            rx,
            sched_tx,
            peers.clone(),
            table.clone(),
            load_now.clone(),
            join.clone(),
        ));
        let m = Membership {
            tx,
            table,
            peers: peers.clone(),
            run,
            probe,
            load_now,
            own_load: Arc::default(),
            join,
            seeds: seeds.clone().into(),
        };
        tokio::spawn(m.clone().join_loop());
        tokio::spawn(m.clone().load_loop(name, peers));
        m
    }

    /// Feeds a received SWIM packet. Drops it if the loop is backed up:
    /// SWIM tolerates loss, and a flood must not grow memory.
    pub fn receive_swim(&self, peer: &mosix_net::Peer, data: Bytes) {
        // The sender's SWIM identity must be the node its certificate names
        // (and carry its id, where the certificate has one): a member cannot
        // speak as another, or take a name or id it was not issued.
        use foca::Codec;
        let (from, feed) = match Codec::<NodeId>::decode_header(&mut PostcardCodec, &data[..]) {
            Ok(h) if *h.src.name == *peer.name && peer.id.is_none_or(|id| id == h.src.id) => {
                // Only a packet addressed to this run shows that its sender
                // knows it: a probe of a crashed predecessor reaches this
                // address too.
                let to_us = h.dst.run == self.run;
                (
                    to_us.then_some(h.src.addr),
                    to_us && h.message == foca::Message::Feed,
                )
            }
            Ok(h) => {
                return refuse(
                    peer,
                    &format!("SWIM identity {} (id {})", h.src.name, h.src.id),
                );
            }
            Err(_) => return refuse(peer, "an undecodable SWIM packet"),
        };
        {
            let mut t = self.table.lock().expect("table lock");
            if t.fingerprints.get(&*peer.name) != Some(&peer.fingerprint) {
                t.fingerprints
                    .insert(peer.name.to_string(), peer.fingerprint.clone());
            }
        }
        let _ = self.tx.try_send(Input::Data { data, from, feed });
    }

    /// `peer` says its run `run` is stopping on purpose: it is `left` at
    /// once, on this node, and foca spreads it as down.
    pub fn receive_leaving(&self, peer: &mosix_net::Peer, run: u64) {
        let down = self
            .table
            .lock()
            .expect("table lock")
            .mark_left(&peer.name, run);
        if let Some(down) = down {
            let _ = self.tx.try_send(Input::Down(down));
        }
    }

    /// Tells every member this node is leaving, each within
    /// [`LEAVE_TIMEOUT`], then has foca declare it down. Returns the members
    /// that acknowledged.
    pub async fn leave(&self) -> Vec<String> {
        let targets: Vec<(String, SocketAddr)> = {
            let t = self.table.lock().expect("table lock");
            t.entries
                .iter()
                .filter(|(_, e)| e.state.is_up())
                .map(|(n, e)| (n.clone(), e.addr))
                .collect()
        };
        let req = mosix_proto::Request::Leaving { run: self.run };
        let acked = tell_all(&self.peers, targets, req, LEAVE_TIMEOUT).await.0;
        let _ = self.tx.send(Input::Leave).await;
        acked
    }

    /// The fingerprint of the certificate `node` last spoke with here.
    pub fn fingerprint_of(&self, node: &str) -> Option<Arc<str>> {
        let t = self.table.lock().expect("table lock");
        t.fingerprints.get(node).cloned()
    }

    /// Drops `node` from the members table; gossip about its runs so far
    /// does not bring it back. False if it was not known.
    pub fn forget(&self, node: &str) -> bool {
        self.table.lock().expect("table lock").forget(node)
    }

    /// Every member that is up (alive or suspect), and its address.
    pub fn up_members(&self) -> Vec<(String, SocketAddr)> {
        let t = self.table.lock().expect("table lock");
        t.entries
            .iter()
            .filter(|(_, e)| e.state.is_up())
            .map(|(n, e)| (n.clone(), e.addr))
            .collect()
    }

    /// Waits until this node has joined, at most `limit`: until a member
    /// sent its member list, and then (at most [`JOIN_SETTLE`] more) until
    /// every configured peer that the list shows up has spoken to this run.
    /// Only then do the peers' files answer at once here, and does every
    /// such peer reach this run (not a connection to a crashed
    /// predecessor).
    pub async fn wait_joined(&self, limit: Duration) -> Joined {
        let deadline = Instant::now() + limit;
        let mut settle_until = None;
        loop {
            let (fed, missing) = self.join_progress();
            if fed && missing.is_empty() {
                return Joined::Fully;
            }
            let now = Instant::now();
            if fed {
                let until = *settle_until.get_or_insert(now + JOIN_SETTLE);
                if now >= until {
                    return Joined::Partly(missing);
                }
            } else if now >= deadline {
                let any = self
                    .table
                    .lock()
                    .expect("table lock")
                    .entries
                    .values()
                    .any(|e| e.state == MemberState::Alive);
                return if any {
                    Joined::Partly(missing)
                } else {
                    Joined::Alone
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether a member list came, and the configured peers that are up
    /// but have not spoken to this run yet.
    fn join_progress(&self) -> (bool, Vec<SocketAddr>) {
        let t = self.table.lock().expect("table lock");
        let j = self.join.lock().expect("join lock");
        let missing = t
            .entries
            .values()
            .filter(|e| e.state.is_up() && self.seeds.contains(&e.addr))
            .map(|e| e.addr)
            .filter(|a| !j.heard.contains(a))
            .collect();
        (j.fed, missing)
    }

    pub fn receive_load(&self, node: &str, rec: LoadRecord) {
        self.table.lock().expect("table lock").set_load(node, rec);
    }

    /// The member whose node id is `id`: its name, address and state.
    pub fn member_by_id(&self, id: u16) -> Option<(String, SocketAddr, MemberState)> {
        let t = self.table.lock().expect("table lock");
        t.entries
            .iter()
            .filter(|(_, e)| e.id == id)
            // A restarted node may linger as dead beside its live successor.
            .min_by_key(|(_, e)| e.state == MemberState::Dead)
            .map(|(n, e)| (n.clone(), e.addr, e.state))
    }

    /// Where `node` listens and what state it is in, if it is known.
    pub fn member(&self, node: &str) -> Option<(SocketAddr, MemberState)> {
        let t = self.table.lock().expect("table lock");
        t.entries.get(node).map(|e| (e.addr, e.state))
    }

    /// Every known member (not this node) and its state; cheap, no load sample.
    pub fn snapshot_states(&self) -> Vec<(String, MemberState)> {
        let t = self.table.lock().expect("table lock");
        t.entries
            .iter()
            .map(|(n, e)| (n.clone(), e.state))
            .collect()
    }

    /// Every known member, its state and the run of its daemon that
    /// membership last saw alive.
    pub fn runs(&self) -> Vec<(String, MemberState, u64)> {
        let t = self.table.lock().expect("table lock");
        t.entries
            .iter()
            .map(|(n, e)| (n.clone(), e.state, e.run))
            .collect()
    }

    /// Names of the members that are up (alive or suspect), this node
    /// included.
    pub fn alive_names(&self) -> Vec<String> {
        let t = self.table.lock().expect("table lock");
        let mut v = t.up_names();
        v.push(t.self_name.clone());
        v
    }

    /// The members table, with this node's load as of at most
    /// [`LOAD_INTERVAL`] ago.
    pub fn snapshot(&self) -> Vec<MemberInfo> {
        let cached = self.own_load.lock().expect("own load").clone();
        let own = cached.unwrap_or_else(|| self.probe.sample());
        self.table.lock().expect("table lock").snapshot(&own)
    }

    async fn join_loop(self) {
        if self.seeds.is_empty() {
            return;
        }
        let start = Instant::now();
        let mut tick = tokio::time::interval(JOIN_RETRY);
        loop {
            tick.tick().await;
            let lonely = self
                .table
                .lock()
                .expect("table lock")
                .alive_peers()
                .is_empty();
            let to = if lonely {
                self.seeds.to_vec()
            } else if start.elapsed() < JOIN_WAIT {
                // Still joining: a lost member list, or a peer that has not
                // answered yet, is asked again.
                let (fed, missing) = self.join_progress();
                if fed {
                    missing
                } else {
                    self.seeds.to_vec()
                }
            } else {
                Vec::new()
            };
            if !to.is_empty() && self.tx.send(Input::Announce(to)).await.is_err() {
                return;
            }
        }
    }

    async fn load_loop(self, name: String, peers: Arc<Peers>) {
        let mut tick = tokio::time::interval(LOAD_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {},
                _ = self.load_now.notified() => {},
            }
            let probe = self.probe.clone();
            let Ok(record) = tokio::task::spawn_blocking(move || probe.sample()).await else {
                continue;
            };
            *self.own_load.lock().expect("own load") = Some(record.clone());
            let targets = self.table.lock().expect("table lock").alive_peers();
            let bytes = Bytes::from(
                Datagram::Load {
                    node: name.clone(),
                    record,
                }
                .encode(),
            );
            for addr in targets {
                peers.send_datagram(addr, bytes.clone());
            }
        }
    }
}

async fn foca_loop(
    me: NodeId,
    mut rx: mpsc::Receiver<Input>,
    sched: mpsc::UnboundedSender<(Instant, Timer<NodeId>)>,
    peers: Arc<Peers>,
    table: Arc<Mutex<Table>>,
    load_now: Arc<Notify>,
    join: Arc<Mutex<JoinState>>,
) {
    let rng: rand::rngs::StdRng = rand::make_rng();
    let mut foca = Foca::new(me, foca_config(), rng, PostcardCodec);
    let mut rt = foca::AccumulatingRuntime::new();
    let mut had_members = false;
    while let Some(input) = rx.recv().await {
        let mut heard = None;
        let result = match input {
            Input::Data { data, from, feed } => {
                let r = foca.handle_data(&data, &mut rt);
                if r.is_ok() {
                    heard = from.map(|from| (from, feed));
                }
                r
            }
            Input::Timer(t) => foca.handle_timer(t, &mut rt),
            Input::Announce(to) => {
                let mut r = Ok(());
                for addr in to {
                    // Only the address matters for an announce; the real
                    // identity comes back in the reply.
                    let placeholder = NodeId {
                        name: String::new(),
                        id: 0,
                        addr,
                        run: 0,
                        bump: 0,
                    };
                    r = r.and(foca.announce(placeholder, &mut rt));
                }
                r
            }
            Input::Down(id) => {
                foca.apply_many(std::iter::once(foca::Member::down(id)), true, &mut rt)
            }
            Input::Leave => foca.leave_cluster(&mut rt),
        };
        if let Err(e) = result {
            // Malformed or stale packets land here; SWIM just moves on.
            tracing::debug!(error = %e, "swim input ignored");
        }
        // Suspicion has no notification, so the table follows foca's state
        // after every input rather than only on up/down events. Before
        // sending: replies to a restarted member (the feed answering its
        // announce) must not go down the connection to its predecessor.
        let restarted = table
            .lock()
            .expect("table lock")
            .sync(foca.iter_membership_state());
        for addr in restarted {
            peers.drop_connection(addr);
        }
        // Recorded after the table follows foca: whoever waits on the join
        // then finds the members this packet brought.
        if let Some((from, feed)) = heard {
            let mut j = join.lock().expect("join lock");
            j.heard.insert(from);
            j.fed |= feed;
        }
        while let Some((dst, data)) = rt.to_send() {
            let framed = Datagram::Swim(data.to_vec()).encode();
            peers.send_datagram(dst.addr, Bytes::from(framed));
        }
        let now = Instant::now();
        while let Some((delay, timer)) = rt.to_schedule() {
            let _ = sched.send((now + delay, timer));
        }
        while let Some(n) = rt.to_notify() {
            match n {
                OwnedNotification::MemberUp(_) => {
                    had_members = true;
                    load_now.notify_one()
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(?id, "we were declared dead; rejoined with a new identity")
                }
                // foca says Idle at start too, before anyone was met:
                // only losing every member is worth a warning.
                OwnedNotification::Idle if had_members => {
                    had_members = false;
                    tracing::warn!("every other member is gone; this node is alone")
                }
                OwnedNotification::Idle => tracing::debug!("no other member known yet"),
                other => tracing::debug!(?other, "swim notification"),
            }
        }
    }
}

/// How long `remove-node` waits for each member to apply the removal.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(3);

impl Membership {
    /// Applies a removal on this node: refuses the certificate with
    /// `fingerprint` from now on (kept in the revocation file), and drops
    /// `node` from the table. Idempotent.
    pub fn apply_removal(
        &self,
        node: &str,
        fingerprint: Option<&str>,
        revoked: &mosix_net::pki::Revocations,
    ) -> Result<(), String> {
        if node == self.table.lock().expect("table lock").self_name {
            return Err(format!(
                "{node} is this node: run remove-node on another member"
            ));
        }
        if let Some(fp) = fingerprint {
            if revoked.revoke(fp, node).map_err(|e| e.to_string())? {
                tracing::warn!(member = %node, fingerprint = %fp, "certificate revoked");
            }
        }
        self.forget(node);
        Ok(())
    }

    /// `mosix cluster remove-node`: removes `node` here and on every member
    /// that is up, revoking its certificate if `revoke` (the one with
    /// `fingerprint`, else the one `node` last spoke with here). A member
    /// that is alive is refused unless revoked: it would only join again.
    pub async fn remove_everywhere(
        &self,
        node: &str,
        revoke: bool,
        fingerprint: Option<String>,
        revoked: &mosix_net::pki::Revocations,
    ) -> Result<mosix_proto::ControlResponse, String> {
        if node == self.table.lock().expect("table lock").self_name {
            return Err(format!(
                "{node} is this node: stop it, then run remove-node on another member"
            ));
        }
        let known = self.member(node);
        let fingerprint = match (revoke, fingerprint) {
            (false, _) => None,
            (true, Some(fp)) => Some(fp),
            (true, None) => Some(
                self.fingerprint_of(node)
                    .map(|f| f.to_string())
                    .ok_or_else(|| {
                        format!(
                            "this node never saw {node}'s certificate: name it with --cert FILE \
                     (the {node}.pem of `mosix cluster init`)"
                        )
                    })?,
            ),
        };
        match known {
            None if fingerprint.is_none() => {
                return Err(format!("no member named {node} (see mosix status)"))
            }
            Some((_, state)) if state.is_up() && fingerprint.is_none() => {
                return Err(format!(
                    "{node} is {state}: stop its daemon first (it would join again), \
                     or add --revoke to shut it out"
                ))
            }
            _ => {}
        }
        self.apply_removal(node, fingerprint.as_deref(), revoked)?;
        let targets = self
            .up_members()
            .into_iter()
            .filter(|(n, _)| n != node)
            .collect();
        let req = mosix_proto::Request::RemoveNode {
            node: node.to_string(),
            revoke: fingerprint.clone(),
        };
        let (told, missed) = tell_all(&self.peers, targets, req, REMOVE_TIMEOUT).await;
        Ok(mosix_proto::ControlResponse::Removed {
            told,
            missed,
            revoked: fingerprint,
        })
    }
}

/// Sends `req` to every one of `targets` at once, each within `limit`;
/// returns the names that answered `Done(Ok)` and those that did not.
pub async fn tell_all(
    peers: &Arc<Peers>,
    targets: Vec<(String, SocketAddr)>,
    req: mosix_proto::Request,
    limit: Duration,
) -> (Vec<String>, Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    for (name, addr) in targets {
        let (peers, req) = (peers.clone(), req.clone());
        set.spawn(async move {
            let answer = tokio::time::timeout(limit, peers.request(addr, &req)).await;
            let ok = matches!(answer, Ok(Ok(mosix_proto::Response::Done(Ok(())))));
            if !ok {
                tracing::info!(member = %name, ?answer, "a member did not acknowledge");
            }
            (name, ok)
        });
    }
    let (mut told, mut missed) = (Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        if let Ok((name, ok)) = r {
            if ok {
                told.push(name)
            } else {
                missed.push(name)
            }
        }
    }
    told.sort();
    missed.sort();
    (told, missed)
}

/// Delivers foca's timers in deadline order (foca requires the order; see
/// foca issue #26), from one task instead of one sleeping task per timer.
async fn scheduler(
    mut rx: mpsc::UnboundedReceiver<(Instant, Timer<NodeId>)>,
    tx: mpsc::Sender<Input>,
) {
    let mut queue: BinaryHeap<Reverse<(Instant, Timer<NodeId>)>> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while queue.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Reverse((_, t)) = queue.pop().expect("peeked");
            if tx.send(Input::Timer(t)).await.is_err() {
                return;
            }
        }
        let next = queue.peek().map(|Reverse((at, _))| *at);
        let item = match next {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(at) => continue,
                item = rx.recv() => item,
            },
            None => rx.recv().await,
        };
        match item {
            Some((at, t)) => queue.push(Reverse((at, t))),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Member;

    fn id(name: &str, run: u64) -> NodeId {
        NodeId {
            name: name.into(),
            id: 2,
            addr: "10.0.0.2:7700".parse().unwrap(),
            run,
            bump: 0,
        }
    }

    fn state(t: &Table, node: &str) -> Option<MemberState> {
        t.entries.get(node).map(|e| e.state)
    }

    #[test]
    fn a_run_that_left_stays_left_until_a_new_run_joins() {
        let mut t = Table::new("me".into(), "10.0.0.1:7700".parse().unwrap());
        t.sync([Member::alive(id("a", 1))].iter());
        assert_eq!(state(&t, "a"), Some(MemberState::Alive));
        // Renewed by foca (declared dead, rejoined), it is the same run:
        // not a restart.
        let renewed = NodeId {
            bump: 3,
            ..id("a", 1)
        };
        let restarted = t.sync([Member::down(id("a", 1)), Member::alive(renewed.clone())].iter());
        assert!(restarted.is_empty());
        assert_eq!(state(&t, "a"), Some(MemberState::Alive));
        // Another run's word does not count; this run's does, and foca is
        // told the identity it knows.
        assert!(t.mark_left("a", 7).is_none());
        assert_eq!(t.mark_left("a", 1), Some(renewed.clone()));
        assert_eq!(state(&t, "a"), Some(MemberState::Left));
        // Probes still answered a moment, then foca calls it down: left.
        t.sync([Member::alive(renewed.clone())].iter());
        assert_eq!(state(&t, "a"), Some(MemberState::Left));
        t.sync([Member::down(renewed.clone())].iter());
        assert_eq!(state(&t, "a"), Some(MemberState::Left));
        assert!(t.alive_peers().is_empty() && t.up_names().is_empty());
        // Started again: a new run, alive, and its old connection is stale.
        let restarted = t.sync([Member::down(renewed), Member::alive(id("a", 2))].iter());
        assert_eq!(restarted, vec![id("a", 2).addr]);
        assert_eq!(state(&t, "a"), Some(MemberState::Alive));
        assert_eq!(t.up_names(), vec!["a".to_string()]);
    }

    #[test]
    fn a_removed_node_is_not_brought_back_by_gossip_about_its_old_runs() {
        let mut t = Table::new("me".into(), "10.0.0.1:7700".parse().unwrap());
        t.sync([Member::down(id("a", 3))].iter());
        assert_eq!(state(&t, "a"), Some(MemberState::Dead));
        assert!(t.forget("a"));
        assert!(!t.forget("a"));
        t.sync([Member::down(id("a", 3)), Member::alive(id("a", 2))].iter());
        assert_eq!(state(&t, "a"), None);
        // A later run (not revoked) joins as usual, and the connection to
        // the removed run is dropped, as for a restart.
        let restarted = t.sync([Member::alive(id("a", 4))].iter());
        assert_eq!(state(&t, "a"), Some(MemberState::Alive));
        assert_eq!(restarted, vec![id("a", 4).addr]);
        // A member never removed is just new: no connection to drop.
        assert!(t.sync([Member::alive(id("b", 1))].iter()).is_empty());
    }
}
