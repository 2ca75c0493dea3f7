//! The migration stream over a QUIC stream, for the blocking threads that
//! checkpoint and restore. Pages cross without a copy of their own: a
//! batch's buffer is handed to quinn as it is (and comes back to the pool
//! once sent), and the restore writes the received chunks into the process
//! as they arrived. Through a byte-stream bridge each side copied and
//! zeroed every page once more, a fifth of a 1 GiB move's CPU time on two
//! cores.

use bytes::Bytes;
use mosix_migrator::{
    write_end, write_holes, write_pages_header, write_round_end, BufPool, PageBatch, PageRead,
    PageSink, PutPieces, StreamError,
};
use std::io::{self, Read, Write};

/// Frames are many small writes: gathered up to this, then one chunk.
const SMALL: usize = 64 << 10;

/// Received pieces passed to the restore at once (each is one packet's
/// worth, a few KiB).
const GATHER: usize = 256;

/// The sending half: a `Write` for the frames, a `PageSink` for batches.
pub(super) struct QuicWriter {
    send: quinn::SendStream,
    rt: tokio::runtime::Handle,
    buf: Vec<u8>,
    pool: BufPool,
}

/// A batch's buffer lent to quinn, back to the pool when quinn is done.
struct Lent {
    buf: Vec<u8>,
    pool: BufPool,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

fn broken(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

impl QuicWriter {
    pub(super) fn new(send: quinn::SendStream, rt: &tokio::runtime::Handle) -> Self {
        QuicWriter {
            send,
            rt: rt.clone(),
            buf: Vec::new(),
            pool: BufPool::new(),
        }
    }

    fn send_chunk(&mut self, b: Bytes) -> io::Result<()> {
        self.rt.block_on(self.send.write_chunk(b)).map_err(broken)
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = Bytes::from(std::mem::take(&mut self.buf));
        self.send_chunk(b)
    }

    /// Everything written so far handed to quinn; the stream, for what
    /// follows the migration stream.
    pub(super) fn into_send(mut self) -> Result<quinn::SendStream, i32> {
        self.send_buffered().map_err(|_| libc::EIO)?;
        Ok(self.send)
    }
}

impl Write for QuicWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > SMALL {
            self.send_buffered()?;
        }
        if data.len() >= SMALL {
            self.send_chunk(Bytes::copy_from_slice(data))?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

impl PageSink for QuicWriter {
    fn put(&mut self, batch: PageBatch) -> Result<(), StreamError> {
        write_pages_header(self, batch.addr, batch.data.len() as u64)?;
        self.send_buffered()?;
        let lent = Lent {
            buf: batch.data,
            pool: self.pool.clone(),
        };
        self.send_chunk(Bytes::from_owner(lent))?;
        Ok(())
    }
    fn pool(&self) -> Option<BufPool> {
        Some(self.pool.clone())
    }
    fn finish(&mut self) -> Result<(), StreamError> {
        write_end(self)?;
        self.flush()?;
        Ok(())
    }
    fn end_round(&mut self, n: u32) -> Result<(), StreamError> {
        write_round_end(self, n)
    }
    fn holes(&mut self, ranges: &[(u64, u64)]) -> Result<(), StreamError> {
        write_holes(self, ranges)
    }
}

/// The receiving half. It never takes from quinn more than it was asked
/// for, so nothing of what follows the migration stream is held here when
/// it is taken apart.
pub(super) struct QuicReader {
    recv: quinn::RecvStream,
    rt: tokio::runtime::Handle,
}

impl QuicReader {
    pub(super) fn new(recv: quinn::RecvStream, rt: &tokio::runtime::Handle) -> Self {
        QuicReader {
            recv,
            rt: rt.clone(),
        }
    }

    /// The next at most `max` bytes, as quinn holds them; `None` at the end.
    fn piece(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        match self.rt.block_on(self.recv.read_chunk(max, true)) {
            Ok(c) => Ok(c.map(|c| c.bytes)),
            Err(e) => Err(io::Error::new(io::ErrorKind::ConnectionReset, e)),
        }
    }

    pub(super) fn into_recv(self) -> quinn::RecvStream {
        self.recv
    }
}

impl Read for QuicReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        match self.piece(out.len())? {
            Some(b) => {
                out[..b.len()].copy_from_slice(&b);
                Ok(b.len())
            }
            None => Ok(0),
        }
    }
}

impl PageRead for QuicReader {
    fn read_pages(&mut self, len: usize, put: &mut PutPieces<'_>) -> io::Result<()> {
        let mut pieces: Vec<Bytes> = Vec::with_capacity(GATHER);
        let (mut passed, mut held) = (0usize, 0usize);
        while passed + held < len {
            let Some(p) = self.piece(len - passed - held)? else {
                return Err(io::ErrorKind::UnexpectedEof.into());
            };
            held += p.len();
            pieces.push(p);
            if pieces.len() == GATHER || passed + held == len {
                let slices: Vec<&[u8]> = pieces.iter().map(|b| &b[..]).collect();
                put(passed as u64, &slices)?;
                passed += held;
                held = 0;
                pieces.clear();
            }
        }
        Ok(())
    }
}
