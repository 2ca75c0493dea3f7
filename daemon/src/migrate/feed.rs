//! Input on its way into the pipe a moved process reads a relayed
//! descriptor from. Written without blocking, so a reader that does not
//! read (stopped, slow, frozen for a move) never holds up the thread that
//! also delivers its signals; what it has not taken yet is kept, and is
//! handed on with the process when it moves again.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub(super) struct Feed {
    /// The pipe's write end; `None` once closed (the input ended and was
    /// all written, or nobody reads the pipe any more).
    pipe: Option<File>,
    queued: VecDeque<u8>,
    /// No more input will come: close the pipe once `queued` is written.
    ended: bool,
    /// The pipe's inode, kept once the write end is closed: the process
    /// may still have to read what is in it.
    ino: Option<u64>,
}

impl Feed {
    pub(super) fn new(write_end: File) -> Feed {
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(write_end.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(write_end.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let ino = write_end
            .metadata()
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        Feed {
            pipe: Some(write_end),
            queued: VecDeque::new(),
            ended: false,
            ino,
        }
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        if self.pipe.is_some() {
            self.queued.extend(bytes);
        }
    }

    pub(super) fn end(&mut self) {
        self.ended = true;
    }

    /// Writes what the pipe takes now.
    pub(super) fn pump(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        while !self.queued.is_empty() {
            let (a, _) = self.queued.as_slices();
            match pipe.write(a) {
                Ok(n) => {
                    self.queued.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EPIPE: no reader left, none will come.
                Err(_) => {
                    self.queued.clear();
                    self.pipe = None;
                    return;
                }
            }
        }
        if self.ended {
            self.pipe = None;
        }
    }

    /// Input is queued that the pipe did not take yet.
    pub(super) fn waiting(&self) -> bool {
        self.pipe.is_some() && !self.queued.is_empty()
    }

    /// The pipe's inode, to find the process's descriptor reading it.
    pub(super) fn pipe_ino(&self) -> Option<u64> {
        self.ino
    }

    /// What the reader has not taken: what `reader` (the process's read end
    /// of the pipe) still holds, then what is queued. Nothing is consumed:
    /// a move that fails leaves the process its input as it was.
    pub(super) fn unread(&self, reader: Option<BorrowedFd<'_>>) -> std::io::Result<Vec<u8>> {
        let mut out = match reader {
            Some(r) => peek_pipe(r)?,
            None => Vec::new(),
        };
        out.extend(self.queued.iter());
        Ok(out)
    }
}

/// Everything in the pipe `r` reads, without taking it: `tee` duplicates
/// the pipe's contents into a scratch pipe as large, which is then read.
/// All of it or an error, never a part.
fn peek_pipe(r: BorrowedFd<'_>) -> std::io::Result<Vec<u8>> {
    let err = std::io::Error::last_os_error;
    let mut fds = [0; 2];
    // SAFETY: plain syscalls on descriptors that live through them; the
    // two new ones are owned right away.
    let (tmp_r, tmp_w) = unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) != 0 {
            return Err(err());
        }
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    let mut avail: libc::c_int = 0;
    // SAFETY: as above; `avail` outlives the call.
    unsafe {
        if libc::ioctl(r.as_raw_fd(), libc::FIONREAD, &mut avail) != 0 {
            return Err(err());
        }
        if avail <= 0 {
            return Ok(Vec::new());
        }
        let size = libc::fcntl(r.as_raw_fd(), libc::F_GETPIPE_SZ);
        if size < avail || libc::fcntl(tmp_w.as_raw_fd(), libc::F_SETPIPE_SZ, size) < size {
            return Err(err());
        }
        let n = libc::tee(
            r.as_raw_fd(),
            tmp_w.as_raw_fd(),
            avail as usize,
            libc::SPLICE_F_NONBLOCK,
        );
        if n != avail as isize {
            return Err(std::io::Error::other(format!(
                "tee copied {n} of the {avail} bytes in the pipe"
            )));
        }
    }
    drop(tmp_w);
    let mut out = Vec::with_capacity(avail as usize);
    File::from(tmp_r).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), File::from(w))
    }

    /// A reader that does not read holds up nothing; what it did not take
    /// is all there, in order, without being taken; it gets it all later,
    /// then the end.
    #[test]
    fn a_full_pipe_queues_and_unread_is_everything_not_taken() {
        let (mut r, w) = pipe();
        let mut f = Feed::new(w);
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        f.push(&big);
        f.pump();
        assert!(f.waiting(), "a 64 KiB pipe cannot take 300 KB");
        let unread = f.unread(Some(r.as_fd())).unwrap();
        assert_eq!(unread, big);
        assert_eq!(
            f.unread(Some(r.as_fd())).unwrap(),
            big,
            "peeking takes nothing"
        );
        f.end();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            f.pump();
            match r.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got, big);
    }

    #[test]
    fn a_reader_gone_drops_the_input() {
        let (r, w) = pipe();
        let mut f = Feed::new(w);
        drop(r);
        f.push(b"abc");
        f.pump();
        assert!(!f.waiting());
    }

    /// Input written and its end seen: the pipe is closed here, but what
    /// the reader did not take is still found through the pipe's inode.
    #[test]
    fn an_ended_input_is_still_found_unread_in_its_pipe() {
        let (r, w) = pipe();
        let ino = std::os::unix::fs::MetadataExt::ino(&r.metadata().unwrap());
        let mut f = Feed::new(w);
        f.push(b"not read yet");
        f.end();
        f.pump();
        assert_eq!(f.pipe_ino(), Some(ino));
        assert_eq!(f.unread(Some(r.as_fd())).unwrap(), b"not read yet");
    }
}
