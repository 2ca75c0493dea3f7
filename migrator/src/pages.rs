//! The page stream. Checkpoint pushes [`PageBatch`]es into a [`PageSink`];
//! restore pulls them from a [`PageSource`]. Nothing is staged in files.
//!
//! Wire format of the byte-stream implementation (one direction):
//! `image frame` then any number of `page frames` then `end frame`, where
//! the image frame is the rmp-serde encoding of `Frame::Image`, a page frame
//! is the rmp-serde encoding of `Frame::Pages { addr, len }` followed by
//! `len` raw bytes (raw so 4 MiB of pages are not re-encoded), and the end
//! frame is `Frame::End`.

use crate::error::StreamError;
use crate::state::{PageBatch, ProcessImage};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// Large enough that per-batch overhead (a frame header, a pwrite into the
/// target) vanishes; small enough to pipeline over a network link.
pub const DEFAULT_BATCH_BYTES: usize = 4 << 20;

/// Buffers for page batches that a transport gives back once it has sent
/// them. A 1 GiB copy then cycles through a few buffers instead of
/// faulting in (and zeroing) fresh memory for every batch.
#[derive(Clone, Debug, Default)]
pub struct BufPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufPool {
    /// More than a transport holds in flight at once.
    const KEEP: usize = 16;

    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with room for `cap` bytes.
    pub fn take(&self, cap: usize) -> Vec<u8> {
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match free.iter().position(|b| b.capacity() >= cap) {
            Some(i) => free.swap_remove(i),
            None => Vec::with_capacity(cap),
        }
    }

    pub fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < Self::KEEP {
            free.push(buf);
        }
    }
}

/// A buffer for a batch of `cap` bytes: from the sink's pool if it has one.
pub(crate) fn batch_buffer(pool: Option<&BufPool>, cap: usize) -> Vec<u8> {
    match pool {
        Some(p) => p.take(cap),
        None => Vec::with_capacity(cap),
    }
}

pub trait PageSink {
    fn put(&mut self, batch: PageBatch) -> Result<(), StreamError>;
    /// Where the batches' buffers come from, when the sink gives them back
    /// after sending.
    fn pool(&self) -> Option<BufPool> {
        None
    }
    /// No more batches for this round.
    fn finish(&mut self) -> Result<(), StreamError>;
    /// Pre-copy: round `n` (taken while the process ran) is complete.
    fn end_round(&mut self, n: u32) -> Result<(), StreamError> {
        let _ = n;
        Err(StreamError::Protocol(
            "this sink carries no pre-copy".into(),
        ))
    }
    /// Pre-copy, last round: ranges to zero again on the target.
    fn holes(&mut self, ranges: &[(u64, u64)]) -> Result<(), StreamError> {
        let _ = ranges;
        Err(StreamError::Protocol(
            "this sink carries no pre-copy".into(),
        ))
    }
}

pub trait PageSource {
    /// `None` once the sender finished.
    fn next_batch(&mut self) -> Result<Option<PageBatch>, StreamError>;
}

/// Where [`PageRead::read_pages`] hands pieces: `(offset in the run, pieces)`.
pub type PutPieces<'a> = dyn FnMut(u64, &[&[u8]]) -> std::io::Result<()> + 'a;

/// A byte stream that can hand over a run of page bytes in the pieces it
/// already holds (network chunks), so the restore writes them into the
/// process without gathering them into one buffer first.
pub trait PageRead: Read {
    /// Passes the next `len` bytes to `put` in order, as `(offset, pieces)`.
    fn read_pages(&mut self, len: usize, put: &mut PutPieces<'_>) -> std::io::Result<()> {
        let mut data = vec![0u8; len];
        self.read_exact(&mut data)?;
        put(0, &[&data])
    }
}

impl<R: Read> PageRead for std::io::BufReader<R> {}
impl<T: AsRef<[u8]>> PageRead for std::io::Cursor<T> {}

/// In-memory queue: a sink on one side, a source on the other.
#[derive(Debug, Default)]
pub struct MemPages {
    pub batches: VecDeque<PageBatch>,
    finished: bool,
}

impl MemPages {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn total_bytes(&self) -> usize {
        self.batches.iter().map(|b| b.data.len()).sum()
    }
}

impl PageSink for MemPages {
    fn put(&mut self, batch: PageBatch) -> Result<(), StreamError> {
        self.batches.push_back(batch);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), StreamError> {
        self.finished = true;
        Ok(())
    }
}

impl PageSource for MemPages {
    fn next_batch(&mut self) -> Result<Option<PageBatch>, StreamError> {
        Ok(self.batches.pop_front())
    }
}

#[derive(Serialize, Deserialize)]
enum Frame {
    Image(Box<ProcessImage>),
    Pages {
        addr: u64,
        len: u64,
    },
    End,
    /// Pre-copy: the image of the process as it runs on, whose areas the
    /// target builds now and fills with the rounds' pages.
    Precopy(Box<ProcessImage>),
    /// Pre-copy: round `n`'s pages were all sent.
    Round(u32),
    /// Pre-copy, last round: ranges of pages sent earlier that the process
    /// no longer holds (freed with `MADV_DONTNEED`, say): zero again.
    Holes(Vec<(u64, u64)>),
}

/// How a migration stream begins.
pub enum Start {
    /// The frozen process: image, then its pages.
    Full(ProcessImage),
    /// Pre-copy: the image of the still-running process, rounds of pages,
    /// then the final image and the pages written since.
    Precopy(ProcessImage),
}

pub fn read_start<R: Read>(r: &mut R) -> Result<Start, StreamError> {
    match rmp_serde::decode::from_read(r)? {
        Frame::Image(i) => Ok(Start::Full(*i)),
        Frame::Precopy(i) => Ok(Start::Precopy(*i)),
        _ => Err(StreamError::Protocol("expected an image frame".into())),
    }
}

pub fn write_precopy_start<W: Write>(w: &mut W, image: &ProcessImage) -> Result<(), StreamError> {
    rmp_serde::encode::write(w, &Frame::Precopy(Box::new(image.clone())))?;
    Ok(())
}

pub fn write_round_end<W: Write>(w: &mut W, n: u32) -> Result<(), StreamError> {
    rmp_serde::encode::write(w, &Frame::Round(n))?;
    Ok(())
}

pub fn write_holes<W: Write>(w: &mut W, holes: &[(u64, u64)]) -> Result<(), StreamError> {
    rmp_serde::encode::write(w, &Frame::Holes(holes.to_vec()))?;
    Ok(())
}

/// What a pre-copy stream carries between the first image and the end.
pub(crate) enum PrecopyItem {
    /// A batch's header: `len` bytes of pages at `addr` follow.
    Pages {
        addr: u64,
        len: u64,
    },
    Round(u32),
    Image(Box<ProcessImage>),
    Holes(Vec<(u64, u64)>),
    End,
}

pub(crate) fn read_precopy_item<R: Read + ?Sized>(
    r: &mut R,
    max_batch: u64,
) -> Result<PrecopyItem, StreamError> {
    Ok(match rmp_serde::decode::from_read(&mut *r)? {
        Frame::Pages { addr, len } => {
            if len > max_batch {
                return Err(StreamError::Protocol(format!("batch of {len} bytes")));
            }
            PrecopyItem::Pages { addr, len }
        }
        Frame::Round(n) => PrecopyItem::Round(n),
        Frame::Image(i) => PrecopyItem::Image(i),
        Frame::Holes(h) => PrecopyItem::Holes(h),
        Frame::End => PrecopyItem::End,
        Frame::Precopy(_) => return Err(StreamError::Protocol("a second pre-copy image".into())),
    })
}

pub fn write_image<W: Write>(w: &mut W, image: &ProcessImage) -> Result<(), StreamError> {
    rmp_serde::encode::write(w, &Frame::Image(Box::new(image.clone())))?;
    Ok(())
}

pub fn read_image<R: Read>(r: &mut R) -> Result<ProcessImage, StreamError> {
    match rmp_serde::decode::from_read(r)? {
        Frame::Image(i) => Ok(*i),
        _ => Err(StreamError::Protocol("expected the image frame".into())),
    }
}

/// A batch's header; its `len` bytes of pages follow, raw.
pub fn write_pages_header<W: Write + ?Sized>(
    w: &mut W,
    addr: u64,
    len: u64,
) -> Result<(), StreamError> {
    rmp_serde::encode::write(w, &Frame::Pages { addr, len })?;
    Ok(())
}

/// The end of a page stream.
pub fn write_end<W: Write + ?Sized>(w: &mut W) -> Result<(), StreamError> {
    rmp_serde::encode::write(w, &Frame::End)?;
    Ok(())
}

/// A sink writing frames to any byte stream (pipe, socket, QUIC stream).
pub struct StreamSink<W: Write> {
    w: W,
}

impl<W: Write> StreamSink<W> {
    pub fn new(w: W) -> Self {
        StreamSink { w }
    }
    pub fn into_inner(self) -> W {
        self.w
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }
}

impl<W: Write> PageSink for StreamSink<W> {
    fn put(&mut self, batch: PageBatch) -> Result<(), StreamError> {
        write_pages_header(&mut self.w, batch.addr, batch.data.len() as u64)?;
        self.w.write_all(&batch.data)?;
        Ok(())
    }
    fn finish(&mut self) -> Result<(), StreamError> {
        write_end(&mut self.w)?;
        self.w.flush()?;
        Ok(())
    }
    fn end_round(&mut self, n: u32) -> Result<(), StreamError> {
        write_round_end(&mut self.w, n)
    }
    fn holes(&mut self, ranges: &[(u64, u64)]) -> Result<(), StreamError> {
        write_holes(&mut self.w, ranges)
    }
}

/// The reading end of [`StreamSink`].
pub struct StreamSource<R: Read> {
    r: R,
    done: bool,
    /// Refuse absurd lengths from a corrupt stream instead of allocating them.
    max_batch: u64,
}

impl<R: Read> StreamSource<R> {
    pub fn new(r: R) -> Self {
        StreamSource {
            r,
            done: false,
            max_batch: 1 << 30,
        }
    }
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }
}

impl<R: Read> PageSource for StreamSource<R> {
    fn next_batch(&mut self) -> Result<Option<PageBatch>, StreamError> {
        if self.done {
            return Ok(None);
        }
        match rmp_serde::decode::from_read(&mut self.r)? {
            Frame::Pages { addr, len } => {
                if len > self.max_batch {
                    return Err(StreamError::Protocol(format!("batch of {len} bytes")));
                }
                let mut data = vec![0u8; len as usize];
                self.r.read_exact(&mut data)?;
                Ok(Some(PageBatch { addr, data }))
            }
            Frame::End => {
                self.done = true;
                Ok(None)
            }
            _ => Err(StreamError::Protocol(
                "image or pre-copy frame inside page stream".into(),
            )),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::state::*;

    pub(crate) fn tiny_image() -> ProcessImage {
        ProcessImage {
            version: IMAGE_VERSION,
            pid: 42,
            threads: vec![CoreState {
                tid: 42,
                regs: Regs::default(),
                xstate: vec![1, 2, 3],
                blocked: 1 << 9,
                rseq: Some(RseqState {
                    addr: 0x1000,
                    len: 32,
                    sig: 0x5305_3053,
                }),
                robust_list: (0x2000, 24),
                clear_child_tid: 0x3000,
                pending: Vec::new(),
                comm: "t".into(),
                altstack: AltStack::default(),
            }],
            mm: MmState {
                vmas: vec![Vma {
                    start: 0x10000,
                    end: 0x20000,
                    prot: 3,
                    shared: false,
                    offset: 0,
                    kind: VmaKind::Anon {
                        name: "[heap]".into(),
                    },
                    growsdown: false,
                }],
                start_code: 1,
                end_code: 2,
                start_data: 3,
                end_data: 4,
                start_brk: 5,
                brk: 6,
                start_stack: 7,
                arg_start: 8,
                arg_end: 9,
                env_start: 10,
                env_end: 11,
                auxv: vec![0; 16],
                exe: Some("/bin/true".into()),
            },
            sig: SigState {
                actions: vec![SigAction::default(); 64],
                pending: vec![],
                itimers: [ItimerVal::default(); 3],
            },
            fds: FdTable {
                entries: vec![FdEntry {
                    fd: 1,
                    kind: FdKind::Pipe { ino: 7 },
                    flags: 1,
                    pos: 0,
                }],
            },
            misc: MiscState {
                rlimits: vec![],
                cwd: "/tmp".into(),
                umask: 0o22,
                comm: "t".into(),
            },
            creds: CredState {
                uids: [1; 4],
                gids: [2; 4],
                groups: vec![3],
                cap_inh: 0,
                cap_prm: 0,
                cap_eff: 0,
                cap_bnd: !0,
                cap_amb: 0,
                no_new_privs: false,
                dumpable: 1,
                personality: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::tiny_image;
    use super::*;
    use crate::state::*;

    /// Image, batches of odd sizes and the end marker survive the byte
    /// stream, and nothing is read past the end frame.
    #[test]
    fn stream_round_trip() {
        let image = tiny_image();
        let batches: Vec<PageBatch> = [0usize, 1, 4096, 3 * 4096 + 5]
            .iter()
            .enumerate()
            .map(|(i, &len)| PageBatch {
                addr: 0x1000 * i as u64,
                data: (0..len).map(|b| (b * 7 + i) as u8).collect(),
            })
            .collect();
        let mut buf = Vec::new();
        write_image(&mut buf, &image).unwrap();
        let mut sink = StreamSink::new(&mut buf);
        for b in &batches {
            sink.put(b.clone()).unwrap();
        }
        sink.finish().unwrap();
        buf.extend_from_slice(b"trailer");

        let mut r = std::io::Cursor::new(buf);
        assert_eq!(read_image(&mut r).unwrap(), image);
        let mut src = StreamSource::new(&mut r);
        let mut got = Vec::new();
        while let Some(b) = src.next_batch().unwrap() {
            got.push(b);
        }
        assert_eq!(got, batches);
        assert!(src.next_batch().unwrap().is_none());
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut r, &mut rest).unwrap();
        assert_eq!(rest, b"trailer");
    }

    /// A buffer given back is the one taken next (no fresh memory per
    /// batch), empty; the pool keeps only a bounded number.
    #[test]
    fn pool_reuses_buffers_and_stays_bounded() {
        let pool = BufPool::new();
        let mut a = pool.take(1 << 20);
        a.extend_from_slice(&[1, 2, 3]);
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(4096);
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.is_empty() && b.capacity() >= 1 << 20);
        assert!(pool.take(2 << 20).capacity() >= 2 << 20);
        for _ in 0..100 {
            pool.give(Vec::with_capacity(16));
        }
        assert_eq!(pool.0.lock().unwrap().len(), BufPool::KEEP);
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let mut buf = Vec::new();
        let mut sink = StreamSink::new(&mut buf);
        sink.put(PageBatch {
            addr: 0,
            data: vec![9; 4096],
        })
        .unwrap();
        buf.truncate(100);
        let mut src = StreamSource::new(std::io::Cursor::new(buf));
        assert!(src.next_batch().is_err());
    }
}
