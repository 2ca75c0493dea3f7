//! The one path by which the core asks the kernel to drop what it cached.
//!
//! The kernel's invalidations block: dropping an entry takes the parent
//! directory's inode lock, and dropping data waits on page locks held by
//! reads in flight. Sent from inside a FUSE handler, or while holding
//! anything a handler needs, they deadlock. So the core only enqueues
//! ([`Invalidator`] never blocks), and one dedicated thread delivers to the
//! kernel ([`spawn`]), in order.
use std::sync::mpsc;

/// Something the kernel may have cached that is no longer true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inval {
    /// The name `name` in directory `parent`.
    Entry { parent: u64, name: Vec<u8> },
    /// The attributes of `ino`, and its cached data from `offset` for `len`
    /// bytes (`len` 0: to the end; `offset` negative: attributes only).
    Inode { ino: u64, offset: i64, len: i64 },
}

/// Asks the kernel to drop cached state, without waiting for it.
pub trait Invalidator: Send + Sync + 'static {
    fn invalidate(&self, what: Inval);
    /// Waits until everything queued before has reached the kernel. Never
    /// from a FUSE handler.
    fn barrier(&self) {}
}

/// Where invalidations are finally delivered (the kernel, through fuser's
/// notifier, in the adapter). May block.
pub trait Sink: Send + 'static {
    fn deliver(&mut self, what: &Inval) -> std::io::Result<()>;
}

/// The queue in front of a [`Sink`].
pub struct Queue(mpsc::Sender<(Inval, Option<mpsc::Sender<()>>)>);

impl Invalidator for Queue {
    fn invalidate(&self, what: Inval) {
        // The delivery thread ends only with the mount; then nothing is
        // cached any more either.
        let _ = self.0.send((what, None));
    }

    fn barrier(&self) {
        Queue::barrier(self)
    }
}

impl Queue {
    /// Waits until everything queued before has been delivered: a recall
    /// is acknowledged only after the kernel dropped the data. Never call
    /// it from a FUSE handler.
    pub fn barrier(&self) {
        let (tx, rx) = mpsc::channel();
        if self
            .0
            .send((
                Inval::Inode {
                    ino: 0,
                    offset: -1,
                    len: 0,
                },
                Some(tx),
            ))
            .is_ok()
        {
            let _ = rx.recv();
        }
    }
}

/// Starts the delivery thread.
pub fn spawn(mut sink: impl Sink) -> Queue {
    let (tx, rx) = mpsc::channel::<(Inval, Option<mpsc::Sender<()>>)>();
    std::thread::Builder::new()
        .name("mosix-inval".into())
        .spawn(move || {
            for (what, done) in rx {
                if let Some(done) = done {
                    let _ = done.send(());
                    continue;
                }
                // ENOENT: the kernel had nothing cached. Nothing else is
                // worth more than a note: the next lookup asks anyway.
                if let Err(e) = sink.deliver(&what) {
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        tracing::debug!(?what, error = %e, "invalidation not delivered");
                    }
                }
            }
        })
        .expect("spawning the invalidation thread");
    Queue(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Slow(Arc<Mutex<Vec<Inval>>>);
    impl Sink for Slow {
        fn deliver(&mut self, what: &Inval) -> std::io::Result<()> {
            std::thread::sleep(std::time::Duration::from_millis(20));
            self.0.lock().unwrap().push(what.clone());
            Ok(())
        }
    }

    #[test]
    fn enqueueing_never_waits_and_a_barrier_sees_everything_delivered() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let q = spawn(Slow(got.clone()));
        let t = std::time::Instant::now();
        for ino in 0..5 {
            q.invalidate(Inval::Inode {
                ino,
                offset: 0,
                len: 0,
            });
        }
        assert!(t.elapsed() < std::time::Duration::from_millis(20));
        q.barrier();
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(
            got[4],
            Inval::Inode {
                ino: 4,
                offset: 0,
                len: 0
            }
        );
    }
}
