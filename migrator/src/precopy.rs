//! Pre-copy on the source: the process keeps running while its memory is
//! copied, in rounds, and is frozen only to send what it wrote since.
//!
//! Dirty tracking without soft-dirty bits (this kernel has
//! `CONFIG_MEM_SOFT_DIRTY` off): a userfaultfd in asynchronous
//! write-protect mode (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7), registered over
//! the process's writable private areas, and the `PAGEMAP_SCAN` ioctl on its
//! pagemap. A write to a protected page is resolved by the kernel itself
//! (no fault reaches us) and clears the page's protection; each scan with
//! `PM_SCAN_WP_MATCHING` returns the pages written since the last one and
//! protects them again.
//!
//! The userfaultfd is bound to the address space of the task that creates
//! it, so it is created inside the process by an injected syscall during a
//! brief freeze; a copy is taken here and the process's own descriptor is
//! closed at once: the process never has it in its fd table, and dropping
//! [`Precopy`] (ours is the last reference) unregisters everything, so a
//! migration that fails leaves the process running untouched.
//!
//! The rule for when to stop is P.Haul's: at most [`MAX_ROUNDS`] rounds,
//! or fewer than [`FEW_DIRTY_PAGES`] dirty pages, or the dirty set no
//! longer shrinking.

use crate::checkpoint::{Checkpoint, PageReader, ReadMem};
use crate::error::CheckpointError;
use crate::pages::{batch_buffer, PageSink, DEFAULT_BATCH_BYTES};
use crate::ptrace::read_appending;
use crate::state::{PageBatch, ProcessImage, Vma, VmaKind};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

const PAGE: u64 = 4096;

/// Rounds of pre-copy at most, the first (everything) included.
pub const MAX_ROUNDS: u32 = 8;
/// A dirty set this small is sent during the freeze.
pub const FEW_DIRTY_PAGES: u64 = 64;

// Debian 12's headers predate these (Linux 6.7 uapi, include/uapi/linux/
// userfaultfd.h and fs.h); the values are the kernel's ABI.
const UFFD_API: u64 = 0xAA;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `_IOWR('f', 16, struct pm_scan_arg)`
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// One round's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    /// 0 is the first, full copy.
    pub round: u32,
    /// Pages sent in this round (for rounds after the first: the dirty set).
    pub pages: u64,
    pub bytes: u64,
}

/// What the last, frozen round sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalStats {
    pub pages: u64,
    pub bytes: u64,
    /// Areas that were sent whole: new since pre-copy began, changed, or
    /// no longer tracked.
    pub whole_areas: usize,
}

/// A process being copied while it runs. Dropping it stops the tracking
/// and leaves the process as it was.
pub struct Precopy {
    pid: i32,
    uffd: OwnedFd,
    pagemap: File,
    mem: File,
    /// The image taken at the start (the process ran on afterwards); its
    /// areas are what the target builds before the rounds' pages arrive.
    image: ProcessImage,
    /// Areas registered for tracking.
    tracked: Vec<(u64, u64)>,
    /// Ranges a round could not read (the process unmapped them meanwhile):
    /// an area touching one is sent whole at the freeze.
    lost: Vec<(u64, u64)>,
    rounds: Vec<RoundStats>,
}

/// The running process's memory, read from outside (`process_vm_readv`,
/// and `/proc/pid/mem` for pages it may not read itself).
struct Running<'a> {
    pid: i32,
    mem: &'a File,
}

impl ReadMem for Running<'_> {
    fn read_mem_append(&self, addr: u64, len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        read_appending(self.pid, self.mem, addr, len, out)
    }
}

fn tracked_area(v: &Vma) -> bool {
    v.carries_pages() && v.prot & libc::PROT_WRITE != 0
}

impl Precopy {
    /// Freezes `pid` for a moment: captures its image, creates the
    /// userfaultfd inside it and registers its writable private areas; then
    /// lets it run. `CheckpointError::TrackingUnavailable` says the kernel
    /// or one of its areas cannot be tracked (the caller falls back to a
    /// full stop); the process runs on untouched either way.
    pub fn start(pid: i32) -> Result<Precopy, CheckpointError> {
        let ck = Checkpoint::take(pid)?;
        let unavailable = CheckpointError::TrackingUnavailable;
        let uffd = match ck.inject_userfaultfd() {
            Ok(fd) => fd,
            Err(CheckpointError::Injected { errno, .. }) => {
                return Err(unavailable(format!(
                    "userfaultfd: {}",
                    std::io::Error::from_raw_os_error(errno)
                )))
            }
            Err(e) => return Err(e),
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
            ioctls: 0,
        };
        // SAFETY: ioctl with a properly sized, live argument.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
            return Err(unavailable(format!(
                "asynchronous write-protect userfaultfd (Linux 6.7+): {}",
                std::io::Error::last_os_error()
            )));
        }
        let image = ck.image().clone();
        let mut tracked = Vec::new();
        for v in image.mm.vmas.iter().filter(|v| tracked_area(v)) {
            let mut reg = UffdioRegister {
                start: v.start,
                len: v.len(),
                mode: UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            // SAFETY: as above.
            if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } != 0 {
                return Err(unavailable(format!(
                    "area {:#x}-{:#x} ({:?}) cannot be write-tracked: {}",
                    v.start,
                    v.end,
                    v.kind,
                    std::io::Error::last_os_error()
                )));
            }
            tracked.push((v.start, v.end));
        }
        let sys = CheckpointError::sys;
        let pagemap = File::open(format!("/proc/{pid}/pagemap")).map_err(|e| sys("pagemap", e))?;
        let mem = File::open(format!("/proc/{pid}/mem")).map_err(|e| sys("mem", e))?;
        let p = Precopy {
            pid,
            uffd,
            pagemap,
            mem,
            image,
            tracked,
            lost: Vec::new(),
            rounds: Vec::new(),
        };
        // Protect everything now, while it is still frozen, so the first
        // round's copy misses no write.
        p.scan_written(true)?;
        ck.resume_source()?;
        Ok(p)
    }

    /// The image taken when pre-copy began: the target builds its areas.
    pub fn image(&self) -> &ProcessImage {
        &self.image
    }

    pub fn rounds(&self) -> &[RoundStats] {
        &self.rounds
    }

    /// One `PAGEMAP_SCAN` over `[start, end)`, all of it (the kernel stops
    /// early when the output vector is full), each region with the
    /// categories of `ret` it has (the kernel splits regions where those
    /// differ). `Err` with EPERM when a page is not in an asynchronously
    /// tracked area and `CHECK_WPASYNC` is set.
    fn scan(
        &self,
        start: u64,
        end: u64,
        flags: u64,
        mask: u64,
        anyof: u64,
        ret: u64,
    ) -> std::io::Result<Vec<PageRegion>> {
        let mut out: Vec<PageRegion> = Vec::new();
        let mut vec = vec![PageRegion::default(); 1024];
        let mut at = start;
        while at < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags,
                start: at,
                end,
                vec: vec.as_mut_ptr() as u64,
                vec_len: vec.len() as u64,
                category_mask: mask,
                category_anyof_mask: anyof,
                return_mask: ret,
                ..Default::default()
            };
            // SAFETY: the argument and the output vector live through the call.
            let n = unsafe { libc::ioctl(self.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            out.extend_from_slice(&vec[..n as usize]);
            if arg.walk_end <= at {
                break;
            }
            at = arg.walk_end;
        }
        Ok(out)
    }

    /// Pages written since the last scan (present or swapped) in the
    /// tracked areas; with `protect`, protected again.
    fn scan_written(&self, protect: bool) -> Result<Vec<(u64, u64)>, CheckpointError> {
        let mut out = Vec::new();
        let flags = if protect {
            PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC
        } else {
            PM_SCAN_CHECK_WPASYNC
        };
        for &(s, e) in &self.tracked {
            let present = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
            match self.scan(
                s,
                e,
                flags,
                PAGE_IS_WRITTEN,
                present,
                PAGE_IS_WRITTEN | present,
            ) {
                Ok(r) => out.extend(runs(&r)),
                // Unmapped, or replaced by an untracked area, since: what
                // is there now is judged at the freeze.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOMEM)) => {}
                Err(e) => return Err(CheckpointError::sys("PAGEMAP_SCAN", e)),
            }
        }
        Ok(out)
    }

    /// Sends ranges of the running process's memory; returns pages sent.
    /// A range the process unmapped meanwhile is skipped (the freeze sends
    /// whatever is there then).
    fn send_ranges(
        &mut self,
        ranges: &[(u64, u64)],
        sink: &mut dyn PageSink,
    ) -> Result<u64, CheckpointError> {
        let mem = Running {
            pid: self.pid,
            mem: &self.mem,
        };
        let max = DEFAULT_BATCH_BYTES as u64;
        let pool = sink.pool();
        let mut pages = 0;
        let mut lost = Vec::new();
        for &(s, e) in ranges {
            let mut a = s;
            while a < e {
                let len = (e - a).min(max);
                let mut data = batch_buffer(pool.as_ref(), len as usize);
                if mem.read_mem_append(a, len as usize, &mut data).is_ok() {
                    sink.put(PageBatch { addr: a, data })?;
                    pages += len / PAGE;
                } else {
                    // Protected again but not sent: never trust it later.
                    lost.push((a, a + len));
                }
                a += len;
            }
        }
        self.lost.extend(lost);
        Ok(pages)
    }

    /// One round while the process runs: the first sends every page it
    /// holds, the others the pages written since the round before.
    pub fn round(&mut self, sink: &mut dyn PageSink) -> Result<RoundStats, CheckpointError> {
        let n = self.rounds.len() as u32;
        let pages = if n == 0 {
            let mem = Running {
                pid: self.pid,
                mem: &self.mem,
            };
            let mut pages = 0;
            let mut lost = Vec::new();
            for v in self.image.mm.vmas.iter().filter(|v| v.carries_pages()) {
                let pagemap = self
                    .pagemap
                    .try_clone()
                    .map_err(|e| CheckpointError::sys("pagemap", e))?;
                let reader = PageReader::new(&mem, pagemap, vec![v], DEFAULT_BATCH_BYTES);
                for b in reader.with_pool(sink.pool()) {
                    match b {
                        Ok(b) => {
                            pages += b.data.len() as u64 / PAGE;
                            sink.put(b)?;
                        }
                        // Unmapped while being read: sent whole at the
                        // freeze if it is there again.
                        Err(CheckpointError::Sys { .. }) => {
                            lost.push((v.start, v.end));
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            self.lost.extend(lost);
            pages
        } else {
            let dirty = self.scan_written(true)?;
            self.send_ranges(&dirty, sink)?
        };
        sink.end_round(n)?;
        let s = RoundStats {
            round: n,
            pages,
            bytes: pages * PAGE,
        };
        self.rounds.push(s);
        Ok(s)
    }

    /// P.Haul's rule, after the rounds so far: stop at [`MAX_ROUNDS`], when
    /// the dirty set is small, or when it stopped shrinking.
    pub fn should_stop(&self) -> bool {
        let r = &self.rounds;
        let Some(last) = r.last() else {
            return false;
        };
        if r.len() as u32 >= MAX_ROUNDS || (last.round > 0 && last.pages < FEW_DIRTY_PAGES) {
            return true;
        }
        r.len() >= 3 && last.pages >= r[r.len() - 2].pages
    }

    /// Freezes the process for the last round.
    pub fn freeze(&self) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::take(self.pid)
    }

    /// The last round, with the process frozen in `ck`: the pages written
    /// since the last round in areas unchanged since pre-copy began, every
    /// page of the other areas (new, resized, re-protected or no longer
    /// tracked), and the holes, then the end of the stream. The target
    /// decides which areas are unchanged by the same comparison.
    pub fn send_final(
        &self,
        ck: &Checkpoint,
        sink: &mut dyn PageSink,
    ) -> Result<FinalStats, CheckpointError> {
        let sys = CheckpointError::sys;
        let mut whole: Vec<&Vma> = Vec::new();
        let mut holes: Vec<(u64, u64)> = Vec::new();
        let mut dirty: Vec<(u64, u64)> = Vec::new();
        for v in ck.image().mm.vmas.iter().filter(|v| v.carries_pages()) {
            let lost = self.lost.iter().any(|&(s, e)| s < v.end && v.start < e);
            if lost || !self.image.mm.vmas.contains(v) {
                whole.push(v);
                continue;
            }
            let tracked = self
                .tracked
                .iter()
                .any(|&(s, e)| s <= v.start && v.end <= e);
            if !tracked && v.prot & libc::PROT_WRITE != 0 {
                whole.push(v);
                continue;
            }
            // One walk of the frozen area finds both the pages written
            // since the last round and the pages it holds at all: the
            // walk costs per page of the area (milliseconds per GiB), and
            // it is frozen time.
            let present = PAGE_IS_PRESENT | PAGE_IS_SWAPPED;
            // Telling a file's page from the process's own copy of it
            // reads each page's `struct page` (a cache miss per page: tens
            // of milliseconds per GiB); an anonymous area holds no file
            // pages, so it is not asked there.
            let file = match v.kind {
                VmaKind::Anon { .. } => 0,
                _ => PAGE_IS_FILE,
            };
            let (flags, ret) = if tracked {
                (PM_SCAN_CHECK_WPASYNC, present | file | PAGE_IS_WRITTEN)
            } else {
                (0, present | file)
            };
            let regions = match self.scan(v.start, v.end, flags, 0, present, ret) {
                Ok(r) => r,
                // Replaced by an untracked area of the same shape.
                Err(e) if tracked && e.raw_os_error() == Some(libc::EPERM) => {
                    whole.push(v);
                    continue;
                }
                Err(e) => return Err(sys("PAGEMAP_SCAN", e)),
            };
            let written: Vec<PageRegion> = regions
                .iter()
                .filter(|r| r.categories & PAGE_IS_WRITTEN != 0)
                .copied()
                .collect();
            dirty.extend(runs(&written));
            // Pages the target may hold from a round that are gone here
            // (freed with MADV_DONTNEED, say): it zeroes them.
            let mut at = v.start;
            for r in regions.iter().filter(|r| r.categories & PAGE_IS_FILE == 0) {
                if r.start > at {
                    holes.push((at, r.start));
                }
                at = r.end;
            }
            if at < v.end {
                holes.push((at, v.end));
            }
        }
        let whole_areas = whole.len();
        let frozen = ck.reader();
        let pool = sink.pool();
        let mut pages = 0;
        for &(s, e) in &dirty {
            let mut a = s;
            while a < e {
                let len = (e - a).min(DEFAULT_BATCH_BYTES as u64);
                let mut data = batch_buffer(pool.as_ref(), len as usize);
                frozen
                    .read_mem_append(a, len as usize, &mut data)
                    .map_err(|e| CheckpointError::sys(format!("reading pages at {a:#x}"), e))?;
                sink.put(PageBatch { addr: a, data })?;
                pages += len / PAGE;
                a += len;
            }
        }
        let pagemap = self.pagemap.try_clone().map_err(|e| sys("pagemap", e))?;
        for b in PageReader::new(frozen, pagemap, whole, DEFAULT_BATCH_BYTES).with_pool(pool) {
            let b = b?;
            pages += b.data.len() as u64 / PAGE;
            sink.put(b)?;
        }
        sink.holes(&holes)?;
        sink.finish()?;
        Ok(FinalStats {
            pages,
            bytes: pages * PAGE,
            whole_areas,
        })
    }
}

/// Regions as address ranges, adjacent ones joined.
fn runs(regions: &[PageRegion]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for r in regions {
        match out.last_mut() {
            Some(last) if last.1 == r.start => last.1 = r.end,
            _ => out.push((r.start, r.end)),
        }
    }
    out
}

impl Drop for Precopy {
    fn drop(&mut self) {
        tracing::debug!(
            pid = self.pid,
            uffd = self.uffd.as_raw_fd(),
            "pre-copy tracking ends"
        );
    }
}
