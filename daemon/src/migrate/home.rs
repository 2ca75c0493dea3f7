//! The home side of a migration after the first copy is sent: the deputy's
//! life (relaying, forwarding signals, repeating the copy's end) and moving
//! the copy on, or home again.

use super::*;

impl Migrations {
    pub(super) fn home_thread(
        self: Arc<Self>,
        pid: u32,
        target: String,
        addr: std::net::SocketAddr,
        done: mpsc::Sender<Outcome>,
    ) {
        let start = Instant::now();
        let mut report = Report::new(pid, &target);
        // Pre-copy when this kernel and this process allow it; otherwise
        // the full stop, and the report says why.
        let pc = match Precopy::start(pid as i32) {
            Ok(pc) => Some(pc),
            Err(CheckpointError::TrackingUnavailable(why)) => {
                report.line(format!("pre-copy unavailable ({why}): full stop"));
                None
            }
            Err(e) => {
                let _ = done.send(Err(e.errno()));
                return;
            }
        };
        let sent = match pc {
            Some(pc) => self.send_precopy(pid, addr, pc, &mut report),
            None => self.send_stopped(pid, addr),
        };
        let Sent {
            ck,
            relayed,
            send,
            mut recv,
            bytes,
            frozen_at,
            tracking,
        } = match sent {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pid, %target, errno = e, "sending the process failed; it resumes here");
                report.line(format!("failed: {}", std::io::Error::from_raw_os_error(e)));
                let _ = done.send(Err(e));
                return; // dropping the checkpoint resumes the source
            }
        };
        let built = self.await_built(&mut recv);
        let built_at = frozen_at.elapsed();
        if let Err(e) = built {
            // Untracked before it runs on.
            drop(tracking);
            tracing::warn!(pid, %target, errno = e, "the target did not rebuild the process; it resumes here");
            report.line(format!(
                "the target did not rebuild it: {}; it runs on here",
                std::io::Error::from_raw_os_error(e)
            ));
            let _ = done.send(Err(e));
            return;
        }
        // The commit point: the source becomes the deputy, then the copy
        // runs. A failure between the two leaves a deputy whose copy never
        // runs: it dies, and the process with it, but it never runs twice.
        let reopened: Vec<i32> = ck
            .image()
            .fds
            .entries
            .iter()
            .filter(|e| matches!(e.kind, FdKind::File { .. } | FdKind::Directory { .. }))
            .map(|e| e.fd)
            .collect();
        // Inputs that can come home through a pipe fed from here (a
        // terminal comes home as itself).
        let fed: HashSet<i32> = ck
            .image()
            .fds
            .entries
            .iter()
            .filter(|e| e.flags & libc::O_ACCMODE == libc::O_RDONLY)
            .filter(|e| {
                matches!(
                    e.kind,
                    FdKind::Pipe { .. } | FdKind::Fifo { .. } | FdKind::Socket { .. }
                )
            })
            .map(|e| e.fd)
            .collect();
        let (events_tx, events) = mpsc::channel::<HomeEvent>();
        let mut gen = 1;
        // Frozen until `Run` is on its way; the deputy frees the memory
        // the copy now holds only after that.
        let mut running = None;
        let deputy = ck.keep_frozen().into_deputy_then(&reopened, || {
            let to = self.start_stay(gen, send, recv, events_tx.clone());
            running = Some((to, frozen_at.elapsed()));
        });
        let deputy = match deputy {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(pid, error = %e, "cannot park the deputy; the process is lost");
                // It may be running already: it must not outlive its home.
                if let Some((to, _)) = running {
                    let _ = to.send(GuestMsg::Signal(libc::SIGKILL));
                }
                let _ = done.send(Err(libc::EIO));
                return;
            }
        };
        let (to, freeze) = running.expect("committed before the deputy is parked");
        drop(tracking);
        let mut stop_inputs: HashMap<i32, Arc<std::sync::atomic::AtomicBool>> = HashMap::new();
        let mut writers: HashMap<i32, std::fs::File> = HashMap::new();
        let mut originals: Vec<(i32, OwnedFd)> = Vec::new();
        for (fd, input, file) in relayed {
            if let Ok(dup) = file.try_clone() {
                originals.push((fd, dup));
            }
            if input {
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                stop_inputs.insert(fd, stop.clone());
                spawn_input_relay(&self.rt, fd, file, events_tx.clone(), stop);
            } else {
                writers.insert(fd, std::fs::File::from(file));
            }
        }
        let (cmds_tx, cmds) = mpsc::channel::<Command>();
        self.away.lock().expect("away").insert(
            pid,
            Away {
                target: target.clone(),
                nmigs: 1,
                cmds: cmds_tx,
            },
        );
        tracing::info!(pid, %target, ?freeze, bytes, "process migrated; deputy at home");
        report.line(format!(
            "frozen {:.1} ms (built on {target} by {:.1} ms); {} MiB in {:.3} s; runs on {target}",
            freeze.as_secs_f64() * 1e3,
            built_at.as_secs_f64() * 1e3,
            bytes >> 20,
            start.elapsed().as_secs_f64()
        ));
        drop(report);
        let _ = done.send(Ok(Timing {
            freeze,
            total: start.elapsed(),
            bytes,
        }));
        let mut stay = Stay::Away { target, to };
        // Inputs whose end home has seen.
        let mut ended: HashSet<i32> = HashSet::new();
        // Events that came while a move waited for the old copy's end.
        let mut backlog: std::collections::VecDeque<HomeEvent> = Default::default();
        let mut nmigs = 1;
        // The deputy's life: forward what is sent to it, relay, move the
        // copy on when asked, and repeat how the copy ends.
        let ending = loop {
            let next_event = match backlog.pop_front() {
                Some(e) => Ok(e),
                None => events.recv_timeout(DEPUTY_POLL),
            };
            match next_event {
                Ok(HomeEvent::Guest(g, GuestMsg::Data { fd, bytes })) => {
                    // Output of the copy (also late output of an earlier
                    // stay), to where it went at home.
                    let _ = g;
                    if let Some(f) = writers.get_mut(&fd) {
                        if f.write_all(&bytes).is_err() {
                            writers.remove(&fd);
                        }
                    }
                }
                Ok(HomeEvent::Guest(g, GuestMsg::Eof { fd })) if g == gen => {
                    writers.remove(&fd);
                }
                Ok(HomeEvent::Guest(g, GuestMsg::Ended(e))) if g == gen => break Some(e),
                Ok(HomeEvent::Guest(..)) => {}
                Ok(HomeEvent::Input(m)) => {
                    if let GuestMsg::Eof { fd } = &m {
                        ended.insert(*fd);
                    }
                    match &mut stay {
                        Stay::Away { to, .. } => {
                            let _ = to.send(m);
                        }
                        Stay::Home { feeds, .. } => feed_into(feeds, m),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            }
            // A queued move waits for the backlog: input in it is older
            // than what the move will hold.
            let cmd = if backlog.is_empty() {
                cmds.try_recv().ok()
            } else {
                None
            };
            if let Some(cmd) = cmd {
                let Stay::Away {
                    to: old,
                    target: from,
                } = &stay
                else {
                    let _ = cmd.done.send(Err(libc::EOPNOTSUPP));
                    continue;
                };
                let outcome = self.move_on(
                    pid,
                    nmigs + 1,
                    old,
                    from,
                    &cmd.target,
                    gen + 1,
                    &events,
                    &events_tx,
                    &mut writers,
                    &originals,
                    &fed,
                    &mut ended,
                    &mut backlog,
                    &stop_inputs,
                );
                match outcome {
                    Ok((next, timing)) => {
                        gen += 1;
                        nmigs += 1;
                        if let Stay::Home { feeds, .. } = &next {
                            // The process is here again, on the real
                            // descriptors but for the inputs fed from here.
                            for (fd, stop) in &stop_inputs {
                                if !feeds.contains_key(fd) {
                                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                            writers.clear();
                        }
                        let running_on = match &next {
                            Stay::Away { target, .. } => target.clone(),
                            Stay::Home { .. } => self.name.clone(),
                        };
                        if let Some(a) = self.away.lock().expect("away").get_mut(&pid) {
                            a.target = running_on;
                            a.nmigs = nmigs;
                        }
                        stay = next;
                        let _ = cmd.done.send(Ok(timing));
                    }
                    Err(e) => {
                        let _ = cmd.done.send(Err(e));
                    }
                }
            }
            if let Stay::Home { pid: local, feeds } = &mut stay {
                feeds.values_mut().for_each(Feed::pump);
                if let Some(e) = try_wait_ending(*local) {
                    break Some(e);
                }
            }
            match deputy.poll() {
                Ok(Some(DeputyEvent::Signal(sig))) => match &stay {
                    Stay::Away { to, .. } => {
                        let _ = to.send(GuestMsg::Signal(sig));
                    }
                    // SAFETY: plain syscall on our own child.
                    Stay::Home { pid, .. } => unsafe {
                        libc::kill(*pid, sig);
                    },
                },
                // SIGKILL of the deputy kills the copy.
                Ok(Some(DeputyEvent::Killed(_))) | Ok(Some(DeputyEvent::Exited(_))) | Err(_) => {
                    match &stay {
                        Stay::Away { to, .. } => {
                            let _ = to.send(GuestMsg::Signal(libc::SIGKILL));
                        }
                        // SAFETY: plain syscall on our own child.
                        Stay::Home { pid, .. } => unsafe {
                            libc::kill(*pid, libc::SIGKILL);
                        },
                    }
                    break None;
                }
                Ok(None) => {}
            }
        };
        self.away.lock().expect("away").remove(&pid);
        for stop in stop_inputs.values() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(ending) = ending {
            let e = match ending {
                Ending::Exited(c) => mosix_migrator::Ending::Exited(c),
                Ending::Signaled(s) => mosix_migrator::Ending::Signaled(s),
            };
            if let Err(err) = deputy.end_like(e) {
                tracing::warn!(pid, error = %err, "the deputy could not end like its copy");
            }
        }
    }

    /// Moves the copy running at `from` (reached through `old`) on to
    /// `target`, or home: the copy is frozen there and sent here, then
    /// either sent on (this node proxies the stream) or rebuilt here. The
    /// copy at `from` stays frozen and intact until the new one is built.
    #[allow(clippy::too_many_arguments)]
    fn move_on(
        &self,
        pid: u32,
        nmigs: u32,
        old: &tokio::sync::mpsc::UnboundedSender<GuestMsg>,
        from: &str,
        target: &str,
        gen: u64,
        events: &mpsc::Receiver<HomeEvent>,
        events_tx: &mpsc::Sender<HomeEvent>,
        writers: &mut HashMap<i32, std::fs::File>,
        originals: &[(i32, OwnedFd)],
        fed: &HashSet<i32>,
        ended: &mut HashSet<i32>,
        backlog: &mut std::collections::VecDeque<HomeEvent>,
        stop_inputs: &HashMap<i32, Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<(Stay, Timing), i32> {
        let start = Instant::now();
        let home = target == "home" || target == self.name;
        if !home && target == from {
            return Err(libc::EALREADY);
        }
        let addr = if home {
            None
        } else {
            Some(self.alive_addr(target)?)
        };
        let _ = old.send(GuestMsg::Leave);
        // Where the copy's image goes: on to the next target, or into
        // memory to rebuild it here.
        let mut next = match addr {
            Some(a) => Some(self.open_arrive(pid, a, nmigs).inspect_err(|_| {
                let _ = old.send(GuestMsg::Stay);
            })?),
            None => None,
        };
        let mut image: Vec<u8> = Vec::new();
        let mut bytes = 0u64;
        // Input that reaches home during the move goes to wherever the
        // process runs once it is decided, after what the old copy had not
        // read (`unread`).
        let mut held: Vec<GuestMsg> = Vec::new();
        let mut unread: Vec<(i32, Vec<u8>)> = Vec::new();
        let ended_before = ended.clone();
        let stay_put = |held: Vec<GuestMsg>, ended: &mut HashSet<i32>| {
            let _ = old.send(GuestMsg::Stay);
            for m in held {
                if let GuestMsg::Eof { fd } = &m {
                    ended.insert(*fd);
                }
                let _ = old.send(m);
            }
        };
        let received: Result<(), i32> = loop {
            match events.recv_timeout(RUN_TIMEOUT) {
                Ok(HomeEvent::Guest(_, GuestMsg::Chunk(c))) => {
                    bytes += c.len() as u64;
                    match &mut next {
                        Some((send, _)) => {
                            if self.rt.block_on(send.write_all(&c)).is_err() {
                                break Err(libc::EIO);
                            }
                        }
                        None => image.extend_from_slice(&c),
                    }
                }
                Ok(HomeEvent::Guest(_, GuestMsg::Left)) => break Ok(()),
                Ok(HomeEvent::Guest(_, GuestMsg::Unread { fd, bytes })) => unread.push((fd, bytes)),
                Ok(HomeEvent::Input(m)) => held.push(m),
                Ok(HomeEvent::Guest(_, GuestMsg::Data { fd, bytes })) => {
                    if let Some(f) = writers.get_mut(&fd) {
                        let _ = f.write_all(&bytes);
                    }
                }
                Ok(HomeEvent::Guest(g, GuestMsg::Ended(_)))
                | Ok(HomeEvent::Guest(g, GuestMsg::Built(Err(_))))
                    if g == gen - 1 =>
                {
                    break Err(libc::EIO)
                }
                Ok(_) => {}
                Err(_) => break Err(libc::ETIMEDOUT),
            }
        };
        if let Err(e) = received {
            tracing::warn!(
                pid,
                from,
                to = target,
                errno = e,
                "moving on failed; the copy stays"
            );
            stay_put(held, ended);
            return Err(e);
        }
        let stay = match next {
            Some((send, mut recv)) => {
                if let Err(e) = self.await_built(&mut recv) {
                    stay_put(held, ended);
                    return Err(e);
                }
                let _ = old.send(GuestMsg::Moved);
                let to = self.start_stay(gen, send, recv, events_tx.clone());
                for (fd, bytes) in unread {
                    let _ = to.send(GuestMsg::Data { fd, bytes });
                }
                // The new node's pipes wait for an end home saw already.
                for &fd in &ended_before {
                    let _ = to.send(GuestMsg::Eof { fd });
                }
                for m in held {
                    if let GuestMsg::Eof { fd } = &m {
                        ended.insert(*fd);
                    }
                    let _ = to.send(m);
                }
                Stay::Away {
                    target: target.to_string(),
                    to,
                }
            }
            None => {
                // An input the copy had not read all of comes home through
                // a pipe fed from here: what it had not read first, then
                // what home's relay reads on. One already at its end with
                // nothing left, and a terminal, come home as themselves.
                let mut feeds: HashMap<i32, Feed> = HashMap::new();
                let mut readers: HashMap<i32, OwnedFd> = HashMap::new();
                for &(fd, _) in originals.iter().filter(|(fd, _)| fed.contains(fd)) {
                    let pending = unread.iter().any(|(f, _)| *f == fd)
                        || held
                            .iter()
                            .any(|m| matches!(m, GuestMsg::Data { fd: f, .. } if *f == fd));
                    if ended_before.contains(&fd) && !pending {
                        continue;
                    }
                    let Ok((r, w)) = nix::unistd::pipe() else {
                        stay_put(held, ended);
                        return Err(libc::EMFILE);
                    };
                    let mut f = Feed::new(std::fs::File::from(w));
                    for (_, b) in unread.iter().filter(|(f, _)| *f == fd) {
                        f.push(b);
                    }
                    if ended_before.contains(&fd) {
                        f.end();
                    }
                    feeds.insert(fd, f);
                    readers.insert(fd, r);
                }
                let mut r = std::io::Cursor::new(image);
                let built = read_image(&mut r).map_err(|e| e.errno()).and_then(|img| {
                    let replacements = originals
                        .iter()
                        .map(|(fd, f)| FdReplacement {
                            fd: *fd,
                            from: readers.get(fd).map_or(f.as_raw_fd(), |r| r.as_raw_fd()),
                        })
                        .collect();
                    let opts = RestoreOptions {
                        replacements,
                        ..Default::default()
                    };
                    restore(&img, &mut StreamSource::new(&mut r), &opts).map_err(|e| e.errno())
                });
                let restored = match built {
                    Ok(r) => r,
                    Err(e) => {
                        stay_put(held, ended);
                        return Err(e);
                    }
                };
                drop(readers);
                let _ = old.send(GuestMsg::Moved);
                for m in held {
                    if let GuestMsg::Eof { fd } = &m {
                        ended.insert(*fd);
                    }
                    feed_into(&mut feeds, m);
                }
                feeds.values_mut().for_each(Feed::pump);
                // Inputs that come home as themselves are read by the
                // process from now on, not by home's relays.
                for (fd, stop) in stop_inputs {
                    if !feeds.contains_key(fd) {
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                match restored.run() {
                    Ok(local) => Stay::Home { pid: local, feeds },
                    Err(e) => {
                        tracing::error!(pid, error = %e, "the copy came home but cannot run");
                        return Err(libc::EIO);
                    }
                }
            }
        };
        // The old node's word that its frozen copy is dead and reaped, so
        // a move that returned leaves no second copy anywhere. What comes
        // meanwhile waits in `backlog`, in order.
        let old_gen = gen - 1;
        let deadline = Instant::now() + GONE_WAIT;
        let gone = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(HomeEvent::Guest(g, GuestMsg::Gone)) if g == old_gen => break true,
                Ok(e) => backlog.push_back(e),
                Err(_) => break false,
            }
        };
        if !gone {
            tracing::warn!(
                pid,
                from,
                "the old node did not confirm its copy's end in time"
            );
        }
        tracing::info!(pid, from, to = target, bytes, took = ?start.elapsed(), "process moved on");
        Ok((
            stay,
            Timing {
                freeze: start.elapsed(),
                total: start.elapsed(),
                bytes,
            },
        ))
    }
}

/// Input for a process back home, into the pipe it reads it from.
fn feed_into(feeds: &mut HashMap<i32, Feed>, m: GuestMsg) {
    match m {
        GuestMsg::Data { fd, bytes } => {
            if let Some(f) = feeds.get_mut(&fd) {
                f.push(&bytes);
                f.pump();
            }
        }
        GuestMsg::Eof { fd } => {
            if let Some(f) = feeds.get_mut(&fd) {
                f.end();
                f.pump();
            }
        }
        _ => {}
    }
}
