//! Kernel FUSE passthrough for this node's own files: the kernel reads and
//! writes the real file, and the daemon only decides at open which file that
//! is. Generic over the kernel's backing id, so the decisions are tested
//! without a mount.
//!
//! The kernel allows one backing file per inode, shared by all its
//! passthrough opens, and every open of an inode that has one must name it.
//! The backing file is opened with the first open's access: a read-write one
//! would make exec of the same file by its real path fail with ETXTBSY while
//! only readers have it open through /mosix. A writer that arrives while the
//! backing file is read-only is served by the daemon with direct I/O (same
//! page cache, so still coherent), its open naming the backing file.
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::attr::Entry;
use crate::callers::Caller;
use crate::error::{FsError, FsResult};
use crate::namespace::MosixFs;

use crate::fh::{is_passthrough, PASSTHROUGH_FH};

/// A backing file registered with the kernel (`B` is the kernel's id).
pub struct Backing<B> {
    ino: u64,
    pub id: B,
    file: File,
    writable: bool,
}

/// How a local open is served.
pub enum LocalOpen<B> {
    /// The kernel reads and writes the backing file.
    Through { fh: u64, backing: Arc<Backing<B>> },
    /// The daemon serves reads and writes (direct I/O); the open names the
    /// inode's backing file, as the kernel requires.
    Beside { fh: u64, backing: Arc<Backing<B>> },
    /// No passthrough (refused by the kernel): the daemon serves it.
    Daemon { fh: u64 },
}

enum Serve<B> {
    Through(Arc<Backing<B>>),
    Beside(Arc<Backing<B>>),
    Daemon,
}

fn writes(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// (inode, daemon handle) -> the backing file the open names.
type Beside<B> = HashMap<(u64, u64), Arc<Backing<B>>>;

pub struct Passthrough<B> {
    by_ino: Mutex<HashMap<u64, Weak<Backing<B>>>>,
    by_fh: Mutex<HashMap<u64, Arc<Backing<B>>>>,
    /// Daemon-served handles that name the inode's backing file, keeping it
    /// registered. Keyed by (inode, handle): handles of different nodes'
    /// exports may coincide.
    beside: Mutex<Beside<B>>,
    next_fh: AtomicU64,
}

impl<B> Default for Passthrough<B> {
    fn default() -> Self {
        Passthrough {
            by_ino: Mutex::default(),
            by_fh: Mutex::default(),
            beside: Mutex::default(),
            next_fh: AtomicU64::new(1),
        }
    }
}

impl<B: Send + Sync + 'static> Passthrough<B> {
    /// The inode's backing file, opened with the first open's access.
    fn serve(
        &self,
        ino: u64,
        writes: bool,
        open: impl FnOnce(bool) -> Result<File, i32>,
        register: impl FnOnce(&File) -> std::io::Result<B>,
    ) -> Serve<B> {
        let mut m = self.by_ino.lock().expect("backing table");
        if let Some(b) = m.get(&ino).and_then(Weak::upgrade) {
            return if writes && !b.writable {
                Serve::Beside(b)
            } else {
                Serve::Through(b)
            };
        }
        let registered = open(writes).and_then(|file| {
            let id = register(&file).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            Ok((file, id))
        });
        match registered {
            Ok((file, id)) => {
                let b = Arc::new(Backing {
                    ino,
                    id,
                    file,
                    writable: writes,
                });
                m.insert(ino, Arc::downgrade(&b));
                Serve::Through(b)
            }
            Err(e) => {
                tracing::debug!(errno = e, "passthrough refused; serving through the daemon");
                Serve::Daemon
            }
        }
    }

    /// Keeps `b` registered while open file `fh` of `ino` names it.
    fn keep(&self, ino: u64, fh: u64, b: &Arc<Backing<B>>) {
        if is_passthrough(fh) {
            self.by_fh
                .lock()
                .expect("backing table")
                .insert(fh, b.clone());
        } else {
            self.beside
                .lock()
                .expect("backing table")
                .insert((ino, fh), b.clone());
        }
    }

    fn new_fh(&self) -> u64 {
        PASSTHROUGH_FH | self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn finish(
        &self,
        ino: u64,
        serve: Serve<B>,
        daemon_fh: impl FnOnce() -> FsResult<u64>,
    ) -> FsResult<LocalOpen<B>> {
        match serve {
            Serve::Through(backing) => {
                let fh = self.new_fh();
                self.keep(ino, fh, &backing);
                Ok(LocalOpen::Through { fh, backing })
            }
            Serve::Beside(backing) => {
                let fh = daemon_fh()?;
                self.keep(ino, fh, &backing);
                Ok(LocalOpen::Beside { fh, backing })
            }
            Serve::Daemon => Ok(LocalOpen::Daemon { fh: daemon_fh()? }),
        }
    }

    /// Opens this node's file `ino` (export id `id`). The caller's own open
    /// is made first, as the caller, so the permission check, O_TRUNC and
    /// every errno are the real ones. Blocks: run it where blocking is fine.
    pub fn open(
        &self,
        fs: &MosixFs,
        rt: &tokio::runtime::Handle,
        caller: Caller,
        ino: u64,
        flags: i32,
        register: impl FnOnce(&File) -> std::io::Result<B>,
    ) -> FsResult<LocalOpen<B>> {
        let id = fs.local_id(ino).ok_or(FsError::Stale)?;
        let local = fs.local();
        let export = local.export().clone();
        export
            .open_file(&local.who(fs.creds(caller)), id, flags)
            .map_err(FsError::Os)?;
        let serve = self.serve(ino, writes(flags), |w| export.open_backing(id, w), register);
        self.finish(ino, serve, || {
            rt.block_on(fs.open(caller, ino, flags)).map(|o| o.fh)
        })
    }

    /// A local file the daemon just created and opened as `daemon_fh`: all
    /// opens of one inode must agree on passthrough, so it switches to its
    /// backing file at once. Blocks.
    pub fn created(
        &self,
        fs: &MosixFs,
        rt: &tokio::runtime::Handle,
        entry: &Entry,
        daemon_fh: u64,
        flags: i32,
        register: impl FnOnce(&File) -> std::io::Result<B>,
    ) -> FsResult<LocalOpen<B>> {
        let ino = entry.attr.ino;
        let id = fs.local_id(ino).ok_or(FsError::Stale)?;
        let export = fs.local().export().clone();
        let serve = self.serve(ino, writes(flags), |w| export.open_backing(id, w), register);
        if let Serve::Through(_) = serve {
            // The daemon's own open is not needed after all.
            rt.block_on(fs.release(ino, daemon_fh));
        }
        self.finish(ino, serve, || Ok(daemon_fh))
    }

    fn get(&self, fh: u64) -> Option<Arc<Backing<B>>> {
        self.by_fh.lock().expect("backing table").get(&fh).cloned()
    }

    /// Whether `fh` is a kernel-passthrough open (its data never reaches
    /// the daemon).
    pub fn is_through(&self, fh: u64) -> bool {
        self.get(fh).is_some()
    }

    /// The open file `fh` of `ino` is gone.
    pub fn release(&self, ino: u64, fh: u64) {
        let held = if is_passthrough(fh) {
            self.by_fh.lock().expect("backing table").remove(&fh)
        } else {
            self.beside
                .lock()
                .expect("backing table")
                .remove(&(ino, fh))
        };
        let Some(b) = held else {
            return;
        };
        let mut m = self.by_ino.lock().expect("backing table");
        if Arc::strong_count(&b) == 1 {
            m.remove(&b.ino);
        }
    }

    /// ftruncate on a passthrough open: the kernel checked that the open
    /// allows writing; the backing file does it. None: not a passthrough
    /// open.
    pub fn truncate(&self, fh: u64, size: u64) -> Option<FsResult<()>> {
        let b = self.get(fh)?;
        Some(b.file.set_len(size).map_err(io_error))
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Option<FsResult<()>> {
        let b = self.get(fh)?;
        let r = if datasync {
            b.file.sync_data()
        } else {
            b.file.sync_all()
        };
        Some(r.map_err(io_error))
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Option<FsResult<()>> {
        let b = self.get(fh)?;
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(length)) else {
            return Some(Err(FsError::Os(libc::EINVAL)));
        };
        // SAFETY: plain syscall on a file we own.
        let r = unsafe { libc::fallocate(b.file.as_raw_fd(), mode, off, len) };
        Some(if r == 0 {
            Ok(())
        } else {
            Err(io_error(std::io::Error::last_os_error()))
        })
    }
}

fn io_error(e: std::io::Error) -> FsError {
    FsError::Os(e.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &std::path::Path) -> File {
        let p = dir.join("f");
        std::fs::write(&p, b"x").unwrap();
        File::open(p).unwrap()
    }

    #[test]
    fn one_backing_file_per_inode_opened_with_the_first_access() {
        let d = tempfile::tempdir().unwrap();
        let pt: Passthrough<u32> = Passthrough::default();
        let opened = std::cell::Cell::new(0);
        let open = |w: bool| {
            opened.set(opened.get() + 1);
            assert!(!w, "first open reads");
            Ok(file(d.path()))
        };
        let Serve::Through(b) = pt.serve(5, false, open, |_| Ok(42)) else {
            panic!("a reader goes through")
        };
        assert_eq!(b.id, 42);
        let fh = pt.new_fh();
        pt.keep(5, fh, &b);
        drop(b);
        // A second reader shares it without opening anything.
        assert!(matches!(
            pt.serve(5, false, |_| panic!("no second open"), |_| Ok(0)),
            Serve::Through(_)
        ));
        // A writer beside a read-only backing file is served by the daemon.
        let Serve::Beside(b) = pt.serve(5, true, |_| panic!(), |_| Ok(0)) else {
            panic!("writer beside readers")
        };
        pt.keep(5, 77, &b);
        drop(b);
        assert_eq!(opened.get(), 1);
        // The backing file goes with the last open that names it.
        pt.release(5, fh);
        assert!(pt
            .by_ino
            .lock()
            .unwrap()
            .get(&5)
            .and_then(Weak::upgrade)
            .is_some());
        pt.release(5, 77);
        assert!(pt
            .by_ino
            .lock()
            .unwrap()
            .get(&5)
            .and_then(Weak::upgrade)
            .is_none());
        // A refused registration falls back to the daemon.
        assert!(matches!(
            pt.serve(
                6,
                true,
                |_| Ok(file(d.path())),
                |_| Err(std::io::Error::from_raw_os_error(libc::EPERM))
            ),
            Serve::Daemon
        ));
    }

    #[test]
    fn handles_are_told_apart() {
        let pt: Passthrough<u32> = Passthrough::default();
        let fh = pt.new_fh();
        assert!(is_passthrough(fh));
        assert!(!is_passthrough(12345));
        assert!(
            pt.truncate(fh, 0).is_none(),
            "nothing registered under it yet"
        );
    }
}
