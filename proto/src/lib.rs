//! The mosix wire protocol.
//!
//! Every message between nodes (and between the CLI and its local daemon) is a
//! plain serde type, encoded with MessagePack (`rmp-serde`, named fields so that
//! fields can be added without breaking older readers) inside a frame:
//!
//! ```text
//! u32 big-endian payload length | payload (MessagePack)
//! ```
//!
//! The length is checked against a limit *before* any payload is read, so a peer
//! cannot make us allocate or wait for more than [`MAX_FRAME`] bytes.

pub mod checkpoint;
mod frame;
pub mod fs;
pub mod guest;
pub mod lease;
mod messages;
pub mod proc;

pub use frame::{decode, encode, read_frame, write_frame, FrameError};
pub use messages::*;

/// Bumped on any incompatible change. Carried in the QUIC ALPN, so a node that
/// speaks another version fails the TLS handshake instead of misreading frames.
pub const PROTO_VERSION: u32 = 4;

/// ALPN protocol id; encodes [`PROTO_VERSION`].
pub const ALPN: &[u8] = b"mosix/4";

/// TLS server name every node certificate carries. Cluster membership is
/// proven by the CA signature, not by the name, so dialing by address works.
pub const SERVER_NAME: &str = "mosix-node";

/// Largest frame a node accepts. Large enough for a 1 MiB FUSE read or write
/// plus its header; anything larger is a protocol violation.
pub const MAX_FRAME: usize = 4 << 20;

#[cfg(test)]
mod tests;

/// Node names appear in paths (`/mosix/nodes/<name>`), hostnames and
/// certificates, so they are restricted to a DNS label.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid node name {name:?}: use 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
        ))
    }
}
