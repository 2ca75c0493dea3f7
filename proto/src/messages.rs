use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A node's load, spread to every other node about once a second.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LoadRecord {
    /// CPUs this node offers.
    pub cpus: u32,
    /// One-minute load average, as in /proc/loadavg.
    pub load1: f64,
    /// MemAvailable, bytes.
    pub freemem: u64,
    /// MemTotal, bytes.
    pub totalmem: u64,
    /// Processes in the node's PID namespace.
    pub procs: u32,
    /// Relative CPU speed: integer-loop iterations per microsecond of one core,
    /// measured at daemon start. Only comparable between nodes of one cluster.
    pub speed: u32,
    /// Seconds since the node's daemon started.
    pub uptime: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
    /// Said it was leaving (a daemon stopped by SIGTERM): gone, not failed.
    Left,
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        })
    }
}

/// One line of "what does the cluster look like", as seen by one node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MemberInfo {
    pub name: String,
    pub addr: SocketAddr,
    pub state: MemberState,
    /// Latest load record heard from the member (for itself: measured now).
    pub load: Option<LoadRecord>,
    /// Milliseconds since that record was received.
    pub load_age_ms: Option<u64>,
    /// True for the node that answered.
    pub is_self: bool,
}

/// Node-to-node requests, one per QUIC bidirectional stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Request {
    Ping {
        nonce: u64,
    },
    /// The members table of the serving node.
    Members,
    /// Followed on the same stream by exactly `len` raw bytes, which the server
    /// counts and drops; used to measure the raw transport.
    Discard {
        len: u64,
    },
    /// A file operation on the serving node's exports (see [`crate::fs`]).
    Fs {
        /// The run of the asking node's daemon: what the client holds on the
        /// serving node (handles, references, locks) belongs to this run of
        /// the node named in its certificate, and goes when it ends.
        client_run: u64,
        creds: crate::fs::Creds,
        op: crate::fs::FsRequest,
        /// The serving daemon's run the ids in `op` come from, if any: a
        /// mismatch is refused with ESTALE before anything is done, so ids of
        /// an ended run never reach files of the new one.
        epoch: Option<u64>,
    },
    /// A write whose `len` data bytes follow this frame raw on the same
    /// stream (as [`Response::FsData`] does for reads); the server hands it
    /// on as `Fs { op: Write }`.
    FsWrite {
        client_run: u64,
        creds: crate::fs::Creds,
        fh: crate::fs::RemoteFh,
        offset: u64,
        len: u32,
        epoch: Option<u64>,
    },
    /// The serving node's processes.
    ProcList,
    /// Pins a process of the serving node to it (`lock` = 1) or frees it.
    SetLock {
        creds: crate::fs::Creds,
        pid: u32,
        on: bool,
    },
    /// Moves process `pid` of the serving node (its home) to node `target`
    /// (`home`: back home), on behalf of `creds`.
    Migrate {
        creds: crate::fs::Creds,
        pid: u32,
        target: String,
    },
    /// A process migrating to the serving node: the stream carries its
    /// image and pages (the migrator's stream format), then the guest's
    /// control messages ([`crate::guest::GuestMsg`]) both ways for as long as
    /// it runs there.
    Arrive {
        /// Its home node and pid there (the gpid is made of them).
        home: String,
        home_pid: u32,
        /// The home node's export root: the guest's paths are reached as
        /// `/mosix/nodes/<home>/<path below it>`.
        home_root: String,
        /// Moves so far, this one included.
        nmigs: u32,
    },
    /// One of the serving node's node-wide procfs files, raw.
    NodeFile {
        file: crate::proc::NodeFile,
    },
    /// kill(2) of a process of the serving node, on behalf of `creds`.
    Kill {
        creds: crate::fs::Creds,
        pid: u32,
        sig: i32,
    },
    /// One per-process file, rendered now on the serving node, with every pid
    /// in it turned into a gpid. `creds` decide access to private files.
    ProcRead {
        creds: crate::fs::Creds,
        pid: u32,
        file: crate::proc::ProcFile,
    },
    /// One page of the serving node's processes with the content of their
    /// most read files ([`crate::proc::SNAPSHOT_FILES`]): those with pids
    /// above `after` (0: from the start).
    ProcSnapshot {
        after: u32,
    },
    /// The sender (the node its certificate names) is leaving the cluster:
    /// its daemon run `run` is stopping on purpose. Answered with `Done`.
    Leaving {
        run: u64,
    },
    /// Forget node `node`, and refuse the certificate with SHA-256
    /// fingerprint `revoke` (hex) from now on, if given. Sent by the member
    /// where `mosix cluster remove-node` ran. Answered with `Done`.
    RemoveNode {
        node: String,
        revoke: Option<String>,
    },
    /// Checkpoint process `pid` of the serving node (at home there, or a
    /// guest there) on behalf of `creds`: the serving node answers with the
    /// checkpoint file as [`crate::checkpoint::Piece`] frames on the stream.
    Checkpoint {
        creds: crate::fs::Creds,
        /// The process's pid on the serving node; with `guest_of`, its pid
        /// at that home node instead (the home forwards a request for one of
        /// its processes running away to the node it runs on).
        pid: u32,
        guest_of: Option<String>,
        /// Its gpid, for the file's header.
        gpid: u32,
        after: crate::checkpoint::AfterCheckpoint,
    },
    /// Restart a checkpoint on the serving node on behalf of `creds`: the
    /// file follows as [`crate::checkpoint::Piece`] frames; the serving node
    /// answers one `Result<Restarted, String>` frame.
    Restart {
        creds: crate::fs::Creds,
    },
    /// From a node serving files to a node caching them: give a lease back
    /// (answered [`Response::RecallDone`]).
    Recall(crate::lease::Recall),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Response {
    Pong {
        nonce: u64,
        node: String,
    },
    Members(Vec<MemberInfo>),
    Discarded {
        bytes: u64,
    },
    Procs {
        node_id: u16,
        procs: Vec<crate::proc::ProcEntry>,
    },
    /// Kill's outcome: done, or the errno.
    Killed(Result<(), i32>),
    /// SetLock's and Migrate's outcome: done, or the errno.
    Done(Result<(), i32>),
    /// ProcRead's content, or the errno reading it gave (ESRCH: gone).
    ProcData(Result<serde_bytes::ByteBuf, i32>),
    /// `epoch` identifies the serving daemon's run: ids it handed out in an
    /// earlier run mean nothing now, and the client must not mix them up.
    Fs {
        epoch: u64,
        result: crate::fs::FsResult,
    },
    /// A successful read's reply: `len` raw bytes follow this frame on the
    /// same stream, not MessagePack-encoded, so a 1 MiB read is not copied
    /// into and out of an encoding on its way. The receiver hands it on as
    /// `Fs { epoch, result: Ok(FsReply::Data(..)) }`.
    FsData {
        epoch: u64,
        len: u32,
    },
    Error(RemoteError),
    /// ProcSnapshot's page.
    ProcSnapshot(crate::proc::SnapshotPage),
    RecallDone(crate::lease::RecallDone),
}

/// An error the serving node reports back instead of a result.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, thiserror::Error)]
pub enum RemoteError {
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Unreliable, unordered QUIC datagrams between members: SWIM packets and load
/// records. Both tolerate loss, so they never wait on retransmission.
#[derive(Debug, Clone, PartialEq)]
pub enum Datagram {
    /// An opaque SWIM packet (foca's own encoding).
    Swim(Vec<u8>),
    Load {
        node: String,
        record: LoadRecord,
    },
}

#[derive(Serialize, Deserialize)]
struct LoadDatagram {
    node: String,
    record: LoadRecord,
}

const TAG_SWIM: u8 = 1;
const TAG_LOAD: u8 = 2;

impl Datagram {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Datagram::Swim(data) => {
                let mut v = Vec::with_capacity(1 + data.len());
                v.push(TAG_SWIM);
                v.extend_from_slice(data);
                v
            }
            Datagram::Load { node, record } => {
                let mut v = vec![TAG_LOAD];
                let body = LoadDatagram {
                    node: node.clone(),
                    record: record.clone(),
                };
                // Encoding plain structs into a Vec cannot fail.
                v.extend(crate::encode(&body).expect("load record encodes"));
                v
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::FrameError> {
        match bytes.split_first() {
            Some((&TAG_SWIM, rest)) => Ok(Datagram::Swim(rest.to_vec())),
            Some((&TAG_LOAD, rest)) => {
                let d: LoadDatagram = crate::decode(rest)?;
                Ok(Datagram::Load {
                    node: d.node,
                    record: d.record,
                })
            }
            _ => Err(crate::FrameError::Decode(rmp_serde::decode::Error::Syntax(
                "unknown datagram tag".into(),
            ))),
        }
    }
}

/// Requests from the CLI to the daemon of its own node, over the control socket.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ControlRequest {
    Status,
    /// Signal a process anywhere in the cluster, as the connecting user.
    Kill {
        gpid: u32,
        sig: i32,
    },
    /// Remove a node from every member's list (root only). With `revoke`,
    /// also refuse its certificate: the one with fingerprint `fingerprint`,
    /// or else the one the daemon last saw the node present.
    RemoveNode {
        node: String,
        revoke: bool,
        fingerprint: Option<String>,
    },
    /// Checkpoint a process anywhere in the cluster, as the connecting
    /// user: the daemon answers with the file as
    /// [`crate::checkpoint::Piece`] frames, which the CLI writes.
    Checkpoint {
        gpid: u32,
        after: crate::checkpoint::AfterCheckpoint,
    },
    /// Restart a checkpoint here or on node `on`, as the connecting user:
    /// the CLI sends the file as [`crate::checkpoint::Piece`] frames after
    /// this request; the daemon answers `Restarted` or `Error`.
    Restart {
        on: Option<String>,
    },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ControlResponse {
    Status {
        node: String,
        members: Vec<MemberInfo>,
    },
    Killed,
    /// RemoveNode's outcome: the members that applied it, those that did
    /// not answer in time, and the fingerprint revoked, if any.
    Removed {
        told: Vec<String>,
        missed: Vec<String>,
        revoked: Option<String>,
    },
    Restarted(crate::checkpoint::Restarted),
    Error(String),
}
