//! Bytes of descriptors whose other end stays at home (pipes, ttys), carried
//! between the deputy and the copy on the guest stream.
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{mpsc, Arc};

use mosix_proto::guest::GuestMsg;

use super::{HomeEvent, RELAY_CHUNK};

/// What the process reads at home (its stdin pipe or tty), sent on to it,
/// until `stop` (the process came home and reads it itself).
pub(super) fn spawn_input_relay(
    rt: &tokio::runtime::Handle,
    fd: i32,
    file: OwnedFd,
    to: mpsc::Sender<HomeEvent>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut f = std::fs::File::from(file);
    rt.spawn_blocking(move || {
        let mut buf = vec![0u8; RELAY_CHUNK];
        loop {
            // Wait for input a little at a time, so a stop is seen.
            let mut pfd = libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 100) };
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            if n <= 0 {
                continue;
            }
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.send(HomeEvent::Input(GuestMsg::Eof { fd }));
                    return;
                }
                Ok(n) => {
                    let m = GuestMsg::Data {
                        fd,
                        bytes: buf[..n].to_vec(),
                    };
                    if to.send(HomeEvent::Input(m)).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// What the copy writes to a relayed descriptor, sent home (its end, only
/// if the copy did not move on).
pub(super) fn spawn_output_relay(
    rt: &tokio::runtime::Handle,
    fd: i32,
    mut f: std::fs::File,
    to: tokio::sync::mpsc::UnboundedSender<GuestMsg>,
    left: Arc<std::sync::atomic::AtomicBool>,
    lag: Option<std::time::Duration>,
) -> tokio::task::JoinHandle<()> {
    rt.spawn_blocking(move || {
        let mut buf = vec![0u8; RELAY_CHUNK];
        loop {
            if let Some(lag) = lag {
                std::thread::sleep(lag);
            }
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) | Err(_) => {
                    if !left.load(std::sync::atomic::Ordering::SeqCst) {
                        let _ = to.send(GuestMsg::Eof { fd });
                    }
                    return;
                }
                Ok(n) => {
                    let _ = to.send(GuestMsg::Data {
                        fd,
                        bytes: buf[..n].to_vec(),
                    });
                }
            }
        }
    })
}

/// Writes the migrator's stream as `Chunk` messages on a guest stream.
pub(super) struct ChunkWriter {
    to: tokio::sync::mpsc::UnboundedSender<GuestMsg>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    const SIZE: usize = 1 << 20;

    pub(super) fn new(to: tokio::sync::mpsc::UnboundedSender<GuestMsg>) -> Self {
        ChunkWriter {
            to,
            buf: Vec::with_capacity(Self::SIZE),
        }
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(Self::SIZE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == Self::SIZE {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::SIZE));
        self.to
            .send(GuestMsg::Chunk(chunk))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}
