//! Generated files (/mosix/proc, /mosix/cluster) are rendered once per open
//! and read from that snapshot, so a reader never sees a torn file, whatever
//! changes between its reads (lxcfs does the same).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{FsError, FsResult};

#[derive(Default)]
pub struct Snapshots {
    by_fh: Mutex<HashMap<u64, Vec<u8>>>,
    next_fh: AtomicU64,
}

impl Snapshots {
    /// Keeps one open's content; returns its handle.
    pub fn keep(&self, content: Vec<u8>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.by_fh.lock().expect("snapshots").insert(fh, content);
        fh
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let by_fh = self.by_fh.lock().expect("snapshots");
        let data = by_fh.get(&fh).ok_or(FsError::Os(libc::EBADF))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(data[start..end].to_vec())
    }

    pub fn release(&self, fh: u64) {
        self.by_fh.lock().expect("snapshots").remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_open_reads_its_own_snapshot() {
        let s = Snapshots::default();
        let a = s.keep(b"first".to_vec());
        let b = s.keep(b"second".to_vec());
        assert_eq!(s.read(a, 1, 3).unwrap(), b"irs");
        assert_eq!(s.read(b, 0, 100).unwrap(), b"second");
        assert_eq!(s.read(b, u64::MAX, 10).unwrap(), b"");
        s.release(a);
        assert_eq!(s.read(a, 0, 1), Err(FsError::Os(libc::EBADF)));
    }
}
