//! Checkpoint files (`mosix checkpoint`, `mosix restart`): the file's
//! header, and the messages that carry a file between the CLI, its daemon
//! and the node the process runs on (or is restarted on).
//!
//! A checkpoint file is:
//!
//! ```text
//! "MOSIXCKP" | u32 BE format version | u32 BE header length | header (MessagePack)
//! | the migrator's stream: image frame, page frames, end frame
//! ```
//!
//! The stream after the header is exactly what a migration sends over the
//! network, so a checkpoint is a migration to a file. The magic and the
//! version come first, so a file that is not a checkpoint, or one written
//! by another format version, is refused before anything in it is decoded.
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// The first bytes of every checkpoint file.
pub const MAGIC: &[u8; 8] = b"MOSIXCKP";

/// Bumped whenever the header or the stream after it changes meaning
/// (including the migrator's image version: the header records it too).
pub const FORMAT_VERSION: u32 = 1;

/// Largest header accepted: a few names and numbers.
const MAX_HEADER: u32 = 64 << 10;

/// Largest piece of a file carried in one frame.
pub const PIECE_BYTES: usize = 1 << 20;

/// What a checkpoint says about the process, before its image.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CheckpointHeader {
    /// The process's home node: the node whose files its paths name.
    pub home: String,
    /// Its pid at home, and its gpid when it was checkpointed.
    pub home_pid: u32,
    pub gpid: u32,
    /// The node it ran on when it was checkpointed.
    pub taken_on: String,
    /// Seconds since the epoch.
    pub taken_at: u64,
    pub comm: String,
    /// The migrator's image version of the stream that follows.
    pub image_version: u32,
}

/// Why a file is not a checkpoint this mosix can read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("not a mosix checkpoint file (it does not start with \"MOSIXCKP\")")]
    NotACheckpoint,
    #[error(
        "checkpoint format version {found}, but this mosix reads version {FORMAT_VERSION} only"
    )]
    Version { found: u32 },
    #[error("the checkpoint file is truncated or corrupt: {0}")]
    Corrupt(String),
}

pub fn write_header<W: Write>(w: &mut W, h: &CheckpointHeader) -> std::io::Result<()> {
    let body = crate::encode(h).map_err(std::io::Error::other)?;
    w.write_all(MAGIC)?;
    w.write_all(&FORMAT_VERSION.to_be_bytes())?;
    w.write_all(&(body.len() as u32).to_be_bytes())?;
    w.write_all(&body)
}

/// Reads and checks the header; leaves `r` at the migrator's stream.
pub fn read_header<R: Read>(r: &mut R) -> Result<CheckpointHeader, HeaderError> {
    let mut magic = [0u8; 8];
    let got = read_up_to(r, &mut magic).map_err(|e| HeaderError::Corrupt(e.to_string()))?;
    if got < magic.len() || &magic != MAGIC {
        return Err(HeaderError::NotACheckpoint);
    }
    let mut word = [0u8; 4];
    r.read_exact(&mut word)
        .map_err(|e| HeaderError::Corrupt(format!("reading the version: {e}")))?;
    let found = u32::from_be_bytes(word);
    if found != FORMAT_VERSION {
        return Err(HeaderError::Version { found });
    }
    r.read_exact(&mut word)
        .map_err(|e| HeaderError::Corrupt(format!("reading the header length: {e}")))?;
    let len = u32::from_be_bytes(word);
    if len > MAX_HEADER {
        return Err(HeaderError::Corrupt(format!("a header of {len} bytes")));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)
        .map_err(|e| HeaderError::Corrupt(format!("reading the header: {e}")))?;
    crate::decode(&body).map_err(|e| HeaderError::Corrupt(format!("decoding the header: {e}")))
}

/// Like `read_exact`, but a short file is a count, not an error: a file
/// shorter than the magic is simply not a checkpoint.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What becomes of a process once its checkpoint is written.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterCheckpoint {
    /// It goes on running (MOSIX's behaviour).
    #[default]
    Run,
    /// It is left stopped (SIGSTOP): `kill -CONT` resumes it, `kill -KILL` ends it.
    Stop,
    /// It is killed.
    Kill,
}

/// A checkpoint file on its way, as a sequence of frames: `Data`... then
/// `End`, or `Failed` at any point (the receiver drops what it got).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    End,
    Failed(String),
}

/// Largest frame carrying a [`Piece`].
pub const MAX_PIECE_FRAME: usize = PIECE_BYTES + 1024;

/// A restarted process.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// The node it runs on now (its new home), its pid and gpid there.
    pub node: String,
    pub pid: u32,
    pub gpid: u32,
    /// What did not come back as it was (descriptors that became /dev/null).
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> CheckpointHeader {
        CheckpointHeader {
            home: "n1".into(),
            home_pid: 42,
            gpid: 1 << 22 | 42,
            taken_on: "n2".into(),
            taken_at: 1,
            comm: "counter".into(),
            image_version: 2,
        }
    }

    #[test]
    fn header_round_trip_leaves_the_stream() {
        let mut buf = Vec::new();
        write_header(&mut buf, &header()).unwrap();
        buf.extend_from_slice(b"stream");
        let mut r = std::io::Cursor::new(buf);
        assert_eq!(read_header(&mut r).unwrap(), header());
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"stream");
    }

    #[test]
    fn other_files_and_versions_are_refused() {
        let e = read_header(&mut &b"#!/bin/sh\necho hi\n"[..]).unwrap_err();
        assert!(matches!(e, HeaderError::NotACheckpoint), "{e}");
        let e = read_header(&mut &b"MOS"[..]).unwrap_err();
        assert!(matches!(e, HeaderError::NotACheckpoint), "{e}");

        let mut buf = Vec::new();
        write_header(&mut buf, &header()).unwrap();
        buf[8..12].copy_from_slice(&7u32.to_be_bytes());
        let e = read_header(&mut &buf[..]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "checkpoint format version 7, but this mosix reads version {FORMAT_VERSION} only"
            )
        );

        let mut buf = Vec::new();
        write_header(&mut buf, &header()).unwrap();
        buf.truncate(buf.len() - 3);
        let e = read_header(&mut &buf[..]).unwrap_err();
        assert!(matches!(e, HeaderError::Corrupt(_)), "{e}");
    }
}
