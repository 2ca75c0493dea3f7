//! What a home node and the node running one of its processes (a guest)
//! say to each other, on the stream that brought the process there, for as
//! long as it runs there.
use serde::{Deserialize, Serialize};

/// How a process ended, to be repeated by its deputy at home so the parent's
/// `wait()` sees the real thing.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signaled(i32),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum GuestMsg {
    /// Target to home: the process is rebuilt and stopped, ready to run
    /// (`Ok`), or could not be rebuilt (the errno; the home resumes it).
    Built(Result<u32, i32>),
    /// Home to target: the source is now the deputy; let the copy run.
    Run,
    /// Home to target: a signal sent to the process's home pid.
    Signal(i32),
    /// Either way: bytes for descriptor `fd` of the process (home to target:
    /// what its input at home produced; target to home: what it wrote).
    Data {
        fd: i32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Either way: descriptor `fd`'s other end is closed (end of input, or
    /// the process closed its output).
    Eof { fd: i32 },
    /// Target to home: the process ended.
    Ended(Ending),
    /// Home to target: freeze the copy and send it back (to move it on, or
    /// home); it stays frozen and intact until `Moved` or `Stay`.
    Leave,
    /// Target to home: a piece of the frozen copy's image and pages, in the
    /// migrator's stream format.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Target to home, after the copy's pages when it moves on: input for
    /// descriptor `fd` that the frozen copy had not read yet (in its pipe,
    /// or not yet written to it). Home hands it to the next node first.
    Unread {
        fd: i32,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Target to home: the whole copy was sent.
    Left,
    /// Home to target: the copy runs elsewhere now; drop the frozen one.
    Moved,
    /// Home to target: the move failed; let the frozen copy go on here.
    Stay,
    /// Target to home, after `Moved`: the frozen copy is dead and reaped.
    Gone,
    /// Target to home, during pre-copy: round `n`'s pages are in the
    /// copy-to-be. The home scans for the next dirty set (or freezes) only
    /// then, so no backlog of earlier rounds is left to the freeze.
    RoundDone(u32),
}
