//! The guest side of a migration: a process arriving from its home node
//! is rebuilt here, runs under this daemon's watch, has its relayed input
//! fed and its output relayed, and is frozen and sent back when home moves
//! it on.

use super::*;

impl Migrations {
    /// A process arriving from its home node on `send`/`recv`.
    pub async fn arrive(
        self: Arc<Self>,
        peer: &mosix_net::Peer,
        req: Request,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let Request::Arrive { home, home_pid, .. } = req else {
            return;
        };
        // A node sends its own processes only.
        if *peer.name != *home {
            let why = format!("{} cannot send {home}'s processes", peer.name);
            mosix_net::server::reject(&mut send, &mut recv, why).await;
            return;
        }
        let me = self.clone();
        let rt = self.rt.clone();
        let (to_home, mut outbox) = tokio::sync::mpsc::unbounded_channel::<GuestMsg>();
        let (inbox_tx, inbox) = mpsc::channel::<GuestMsg>();
        let (recv_back, recv_rx) = tokio::sync::oneshot::channel();
        let home2 = home.clone();
        let tag = format!("{home}-{home_pid}-{}", next_guest_tag());
        let tag2 = tag.clone();
        // The restorer's thread owns the copy (its parent, and its ptrace).
        let spawned = std::thread::Builder::new()
            .name(format!("guest-{home}-{home_pid}"))
            .spawn(move || me.guest_thread(home2, home_pid, tag2, recv, recv_back, inbox, to_home));
        if spawned.is_err() {
            return;
        }
        // Messages from home go to the thread; the stream comes back once
        // the pages are read. The guest's own messages flow from the start
        // (pre-copy's `RoundDone` comes while the pages are being read).
        let reader = rt.spawn(async move {
            let Ok(mut recv) = recv_rx.await else {
                return;
            };
            loop {
                match read_frame::<_, GuestMsg>(&mut recv, MAX_FRAME).await {
                    Ok(Some(m)) => {
                        if inbox_tx.send(m).is_err() {
                            return;
                        }
                    }
                    // Home is gone: the copy cannot go on without it.
                    _ => {
                        let _ = inbox_tx.send(GuestMsg::Signal(libc::SIGKILL));
                        return;
                    }
                }
            }
        });
        let mut finished = false;
        let mut built = false;
        while let Some(m) = outbox.recv().await {
            // A failure to build ends the stay; once the copy runs, only
            // its end does (a failed move on leaves it running here).
            let last =
                matches!(m, GuestMsg::Ended(_)) || (!built && matches!(m, GuestMsg::Built(Err(_))));
            built |= matches!(m, GuestMsg::Built(Ok(_)));
            if write_frame(&mut send, &m, MAX_FRAME).await.is_err() {
                break;
            }
            if last {
                finished = true;
                break;
            }
        }
        if finished {
            let _ = send.finish();
        } else {
            // The guest's side went away without a last word: break the
            // stream, so home does not take it for an orderly end.
            let _ = send.reset(mosix_net::server::ERR_PROTOCOL.into());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
        reader.abort();
        let _ = std::fs::remove_dir(guest_view_dir(&tag));
    }

    #[allow(clippy::too_many_arguments)]
    fn guest_thread(
        self: Arc<Self>,
        home: String,
        home_pid: u32,
        tag: String,
        recv: quinn::RecvStream,
        recv_back: tokio::sync::oneshot::Sender<quinn::RecvStream>,
        inbox: mpsc::Receiver<GuestMsg>,
        to_home: tokio::sync::mpsc::UnboundedSender<GuestMsg>,
    ) {
        let faults = read_faults();
        let mut r = QuicReader::new(recv, &self.rt);
        // With pre-copy, this is the image of the process as it still runs
        // at home: its descriptors and paths are what the view and the
        // relays need; the final image comes after the rounds.
        let (image, precopy) = match read_start(&mut r) {
            Ok(Start::Full(i)) => (i, false),
            Ok(Start::Precopy(i)) => (i, true),
            Err(e) => {
                let _ = to_home.send(GuestMsg::Built(Err(e.errno())));
                return;
            }
        };
        if fault_at(&faults, "pages") == Some(Fault::Cut) {
            // Dropping both halves resets the stream mid-transfer.
            drop(r);
            return;
        }
        // The process's descriptors whose other end is at home: local pipes
        // whose other ends this daemon relays.
        let mut replacements = Vec::new();
        let mut kept: Vec<OwnedFd> = Vec::new();
        let mut outputs: Vec<(i32, std::fs::File)> = Vec::new();
        let mut inputs: HashMap<i32, Feed> = HashMap::new();
        for e in image.fds.entries.iter().filter(|e| e.kind.needs_relay()) {
            let Ok((rd, wr)) = nix::unistd::pipe() else {
                let _ = to_home.send(GuestMsg::Built(Err(libc::EMFILE)));
                return;
            };
            let input = e.flags & libc::O_ACCMODE == libc::O_RDONLY;
            let (theirs, ours) = if input { (rd, wr) } else { (wr, rd) };
            replacements.push(FdReplacement {
                fd: e.fd,
                from: theirs.as_raw_fd(),
            });
            kept.push(theirs);
            if input {
                inputs.insert(e.fd, Feed::new(std::fs::File::from(ours)));
            } else {
                outputs.push((e.fd, std::fs::File::from(ours)));
            }
            if matches!(e.kind, FdKind::Tty { .. } | FdKind::Socket { .. }) {
                tracing::debug!(
                    fd = e.fd,
                    "relayed through a pipe: not a tty or socket here"
                );
            }
        }
        // The copy sees its home's files at `/`; paths in its image are
        // home paths, so they need no translation there.
        let view = match enter_home_view(&home, &tag) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%home, home_pid, error = %e, "cannot build the home view");
                let _ = to_home.send(GuestMsg::Built(Err(e.raw_os_error().unwrap_or(libc::EIO))));
                return;
            }
        };
        let opts = RestoreOptions {
            replacements,
            keep_pid: true,
            ..Default::default()
        };
        let mut cut = false;
        let built = if precopy {
            let mut on_round = |n: u32| match fault_at(&faults, &format!("round{n}")) {
                Some(Fault::Cut) => {
                    cut = true;
                    Err(RestoreError::Unexpected(format!(
                        "fault injected at round {n}"
                    )))
                }
                Some(Fault::Slow) | None => {
                    let _ = to_home.send(GuestMsg::RoundDone(n));
                    Ok(())
                }
            };
            restore_precopy(&image, &mut r, &opts, &mut on_round).map(|(restored, _)| restored)
        } else {
            restore(&image, &mut StreamSource::new(&mut r), &opts)
        };
        drop(kept);
        if cut {
            // Dropping both halves resets the stream mid-transfer.
            drop(r);
            return;
        }
        let _ = recv_back.send(r.into_recv());
        let restored = match built {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%home, home_pid, error = %e, "cannot rebuild the process");
                let _ = to_home.send(GuestMsg::Built(Err(e.errno())));
                return;
            }
        };
        if fault_at(&faults, "built") == Some(Fault::Cut) {
            // The stream breaks with the copy built: home never hears of it
            // and never says Run, so this copy must never run.
            restored.abort();
            return;
        }
        let _ = to_home.send(GuestMsg::Built(Ok(restored.pid() as u32)));
        // Only home's word lets the copy run: a home that died meanwhile
        // still has the source, which runs there again.
        match inbox.recv_timeout(RUN_TIMEOUT) {
            Ok(GuestMsg::Run) => {}
            other => {
                tracing::warn!(%home, home_pid, answer = ?other, "home never said run; dropping the copy");
                restored.abort();
                return;
            }
        }
        let pid = match restored.run() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(%home, home_pid, error = %e, "the copy cannot run");
                let _ = to_home.send(GuestMsg::Ended(Ending::Signaled(libc::SIGKILL)));
                return;
            }
        };
        self.guests.lock().expect("guests").insert(
            pid as u32,
            Guest {
                home: home.clone(),
                home_pid,
            },
        );
        tracing::info!(%home, home_pid, pid, "guest runs here");
        // Set once the copy moved on: its end here is not its end.
        let left = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relays: Vec<_> = outputs
            .into_iter()
            .map(|(fd, file)| {
                let lag = (fault_at(&faults, "relay") == Some(Fault::Slow)).then_some(RELAY_LAG);
                spawn_output_relay(&self.rt, fd, file, to_home.clone(), left.clone(), lag)
            })
            .collect();
        // Home's messages to the copy, on their own thread: this one waits
        // for the copy to end.
        let (to, left2) = (to_home.clone(), left.clone());
        std::thread::spawn(move || {
            let mut frozen: Option<Checkpoint> = None;
            loop {
                // Input the copy's pipes did not take yet is written as
                // they drain; not while it is frozen (what it has not
                // taken then may go with it).
                let waiting = frozen.is_none() && inputs.values().any(Feed::waiting);
                let m = if waiting {
                    match inbox.recv_timeout(FEED_POLL) {
                        Ok(m) => Some(m),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    match inbox.recv() {
                        Ok(m) => Some(m),
                        Err(_) => break,
                    }
                };
                let pump = |inputs: &mut HashMap<i32, Feed>, frozen: &Option<Checkpoint>| {
                    if frozen.is_none() {
                        inputs.values_mut().for_each(Feed::pump);
                    }
                };
                let Some(m) = m else {
                    pump(&mut inputs, &frozen);
                    continue;
                };
                match m {
                    // Not once it left: its pid may be another's by now.
                    GuestMsg::Signal(sig)
                        if frozen.is_none() && !left2.load(std::sync::atomic::Ordering::SeqCst) =>
                    {
                        // SAFETY: plain syscall on our own child.
                        unsafe { libc::kill(pid, stop_as_at_home(pid, sig)) };
                    }
                    GuestMsg::Data { fd, bytes } => {
                        if let Some(f) = inputs.get_mut(&fd) {
                            f.push(&bytes);
                        }
                    }
                    GuestMsg::Eof { fd } => {
                        if let Some(f) = inputs.get_mut(&fd) {
                            f.end();
                        }
                    }
                    // Home moves it on: freeze it and send it back whole,
                    // with the input it has not read; it stays here, frozen
                    // and intact, until home decides.
                    GuestMsg::Leave if frozen.is_none() => match Checkpoint::take(pid) {
                        Ok(ck) => {
                            let mut w = ChunkWriter::new(to.clone());
                            let sent = write_image(&mut w, ck.image())
                                .map_err(|e| e.errno())
                                .and_then(|_| {
                                    ck.send_pages(&mut StreamSink::new(&mut w))
                                        .map_err(|e| e.errno())
                                })
                                .and_then(|_| w.flush().map_err(|_| libc::EIO))
                                .and_then(|_| {
                                    // All of each input or the move fails: a
                                    // part would be lost with this copy.
                                    inputs
                                        .iter()
                                        .map(|(&fd, f)| {
                                            let r = reader_of(&ck, f);
                                            f.unread(r.as_ref().map(std::os::fd::AsFd::as_fd))
                                                .map(|bytes| (fd, bytes))
                                                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
                                        })
                                        .collect::<Result<Vec<_>, i32>>()
                                });
                            match sent {
                                Ok(unread) => {
                                    for (fd, bytes) in
                                        unread.into_iter().filter(|(_, b)| !b.is_empty())
                                    {
                                        let _ = to.send(GuestMsg::Unread { fd, bytes });
                                    }
                                    let _ = to.send(GuestMsg::Left);
                                    frozen = Some(ck);
                                }
                                Err(e) => {
                                    tracing::warn!(pid, errno = e, "cannot send the copy back");
                                    let _ = to.send(GuestMsg::Built(Err(e)));
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(pid, error = %e, "cannot freeze the copy to move it on");
                            let _ = to.send(GuestMsg::Built(Err(e.errno())));
                        }
                    },
                    GuestMsg::Moved => {
                        if let Some(ck) = frozen.take() {
                            left2.store(true, std::sync::atomic::Ordering::SeqCst);
                            // Killed and reaped (this thread traces it):
                            // no copy is left here.
                            let _ = ck.finish_source();
                            let _ = to.send(GuestMsg::Gone);
                        }
                    }
                    GuestMsg::Stay => {
                        if let Some(ck) = frozen.take() {
                            let _ = ck.resume_source();
                        }
                    }
                    _ => {}
                }
                pump(&mut inputs, &frozen);
            }
        });
        let ending = wait_ending(pid);
        // What it wrote last is still in the pipes: home hears it before
        // the end, which closes its output there. A descendant that keeps
        // a pipe open is not waited for past OUTPUT_DRAIN.
        let drain = async {
            for r in relays {
                let _ = r.await;
            }
        };
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(OUTPUT_DRAIN, drain).await });
        self.guests.lock().expect("guests").remove(&(pid as u32));
        // The view's mounts go with this thread's namespace; its directory
        // in the node's own tree is removed by `arrive`.
        let _ = view;
        if left.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::info!(%home, home_pid, pid, "guest moved on");
        } else {
            tracing::info!(%home, home_pid, pid, ?ending, "guest ended");
            let _ = to_home.send(GuestMsg::Ended(ending));
        }
    }
}

/// The frozen copy's read end of the pipe `f` feeds, if it still holds one.
fn reader_of(ck: &Checkpoint, f: &Feed) -> Option<OwnedFd> {
    let ino = f.pipe_ino()?;
    let e = ck
        .image()
        .fds
        .entries
        .iter()
        .find(|e| matches!(e.kind, mosix_migrator::FdKind::Pipe { ino: i } if i == ino))?;
    ck.dup_source_fd(e.fd).ok()
}

/// The signal that does here what `sig` did at home. A terminal stop
/// (SIGTSTP, SIGTTIN, SIGTTOU) left at its default action stops a job at
/// home, but the kernel drops it for a process whose group has no parent in
/// its session, as the copy's group here has not: SIGSTOP stops it alike.
/// A program that catches the signal gets the signal itself.
fn stop_as_at_home(pid: i32, sig: i32) -> i32 {
    if !matches!(sig, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) {
        return sig;
    }
    if mosix_migrator::catches(pid, sig) {
        sig
    } else {
        libc::SIGSTOP
    }
}
