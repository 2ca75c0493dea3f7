//! File handle numbers handed to the kernel: which ones stand for a local
//! kernel-passthrough open (the daemon holds nothing for them but the
//! backing file) and which for a handle of a serving node.

/// File handles with this bit are local kernel-passthrough opens.
pub const PASSTHROUGH_FH: u64 = 1 << 63;

pub fn is_passthrough(fh: u64) -> bool {
    fh & PASSTHROUGH_FH != 0
}
