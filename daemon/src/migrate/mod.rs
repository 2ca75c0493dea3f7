//! Process migration between daemons: the home side (checkpoint, stream,
//! then the deputy) and the target side (restore, run, relay, report).
//!
//! ```text
//! home H                                           target T
//! migrate(pid, T)  ── thread owns the ptrace ──
//!   Checkpoint::take (frozen, intact)
//!   open_stream(T, Arrive{home, home_pid, ...}) ─► handler.stream ─► thread:
//!   image + pages (migrator stream format)      ─►   restore (stopped)
//!                                               ◄─   Built(Ok(pid))
//!   source → deputy (parked at home)
//!   Run                                         ─►   run; waitpid
//!   Signal / Data{fd 0} / Eof                   ─►   kill / its stdin
//!                                               ◄─   Data{fd 1,2} / Eof
//!                                               ◄─   Ended(status)
//!   deputy ends the same way
//! ```
//!
//! The transaction: until H has the target's `Built`, the source is intact
//! and frozen, and any failure (either daemon killed, the link cut, the
//! target out of memory) resumes it where it was. After `Built`, the source
//! becomes the deputy and only then is the copy told to `Run`; a target
//! that never hears `Run` kills its stopped copy. So a process never runs
//! twice. Once it runs away from home it needs its home: if the stream
//! between them dies, the target kills the copy and the deputy dies with
//! SIGKILL (its parent sees that), as in MOSIX when a home and a remote node
//! lose each other.
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use feed::Feed;
use mosix_migrator::{
    check_movable, read_image, read_start, restore, restore_precopy, write_image,
    write_precopy_start, Checkpoint, CheckpointError, DeputyEvent, FdKind, FdReplacement, Precopy,
    RestoreError, RestoreOptions, Start, StreamSink, StreamSource,
};
use mosix_net::Peers;
use mosix_procview::node::{Migrator, Placement};
use mosix_proto::fs::Creds;
use mosix_proto::guest::{Ending, GuestMsg};
use mosix_proto::{read_frame, write_frame, MemberState, Request, MAX_FRAME};
use stream::{QuicReader, QuicWriter};

use crate::membership::Membership;

pub mod checkpoint;
mod feed;
mod home_view;
mod relay;
mod stream;

use home_view::{enter_home_view, guest_view_dir, next_guest_tag};
use relay::{spawn_input_relay, spawn_output_relay, ChunkWriter};

/// How long a target keeps a rebuilt copy stopped waiting for `Run`.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the deputy's thread looks at the deputy.
const DEPUTY_POLL: Duration = Duration::from_millis(10);

/// How long a move waits for the old node to confirm that its frozen copy
/// is dead and reaped (`Gone`) before it returns anyway.
const GONE_WAIT: Duration = Duration::from_secs(2);

/// How often input a pipe did not take is offered again.
const FEED_POLL: Duration = Duration::from_millis(10);
/// Output relayed per message.
const RELAY_CHUNK: usize = 64 << 10;

/// Where a target can be told to fail on purpose, for tests of the
/// transaction: `/run/mosix/fault` holding `abort:<phase>` (the daemon dies
/// as if killed) or `cut:<phase>` (the stream to the home node breaks), with
/// phase `pages` (image read, pages not yet), `round<N>` (pre-copy round N,
/// from 0, received while the process still runs at home) or `built` (copy
/// built, waiting for `Run`). Only root can write there; without the file nothing happens.
/// `slow:relay` makes the copy's output relays lag ([`RELAY_LAG`] before
/// each read), for tests of what the end of a copy waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Cut,
    Slow,
}

/// How far `slow:relay` makes an output relay lag.
const RELAY_LAG: Duration = Duration::from_millis(300);

const FAULT_FILE: &str = "/run/mosix/fault";

/// How long the end of a copy waits for its last output to be relayed.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);

/// The fault file's contents, read once when a guest arrives: after that,
/// the guest's thread sees its home node's files, not this node's.
fn read_faults() -> Option<String> {
    std::fs::read_to_string(FAULT_FILE).ok()
}

fn fault_at(spec: &Option<String>, phase: &str) -> Option<Fault> {
    let (what, at) = spec.as_deref()?.trim().split_once(':')?;
    if at != phase {
        return None;
    }
    match what {
        "abort" => {
            tracing::warn!(phase, "fault injection: the daemon dies here");
            std::process::abort()
        }
        "cut" => {
            tracing::warn!(phase, "fault injection: the stream to home breaks here");
            Some(Fault::Cut)
        }
        "slow" => Some(Fault::Slow),
        _ => None,
    }
}

/// Where the home node writes each migration's progress lines, one file per
/// process (`<dir>/<pid>`), for `mosix migrate` to show as they come.
pub const PROGRESS_DIR: &str = "/run/mosix/migrations";

/// A migration's progress: to the log, and to its progress file.
struct Report {
    pid: u32,
    target: String,
    file: Option<std::fs::File>,
}

impl Report {
    fn new(pid: u32, target: &str) -> Report {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // Root writes here: nobody else may, and no symlink is followed.
        let _ = std::fs::DirBuilder::new()
            .mode(0o755)
            .recursive(true)
            .create(PROGRESS_DIR);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(format!("{PROGRESS_DIR}/{pid}"))
            .ok();
        Report {
            pid,
            target: target.to_string(),
            file,
        }
    }

    fn line(&mut self, text: String) {
        tracing::info!(pid = self.pid, target = %self.target, "migration: {text}");
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{text}");
        }
    }
}

/// What sending a process leaves.
struct Sent {
    /// The frozen source.
    ck: Checkpoint,
    /// Descriptors to relay: (fd, is it input, the deputy's copy).
    relayed: Vec<(i32, bool, OwnedFd)>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    bytes: u64,
    frozen_at: Instant,
    /// Pre-copy's write tracking, ended only once the deputy has freed
    /// the memory: ending it walks every page table entry of the tracked
    /// areas (tens of milliseconds per GiB), and over none once freed.
    tracking: Option<Precopy>,
}

/// Descriptors whose other end stays here: the deputy's copies, to relay
/// (and to give back to the process if it comes home). Taken while the
/// source is frozen.
fn relayed_fds(ck: &Checkpoint) -> Vec<(i32, bool, OwnedFd)> {
    ck.image()
        .fds
        .entries
        .iter()
        .filter(|e| e.kind.needs_relay())
        .filter_map(|e| {
            let input = e.flags & libc::O_ACCMODE == libc::O_RDONLY;
            ck.dup_source_fd(e.fd).ok().map(|fd| (e.fd, input, fd))
        })
        .collect()
}

/// One of this node's processes running elsewhere.
struct Away {
    target: String,
    nmigs: u32,
    /// Requests to move it again, to its home thread.
    cmds: mpsc::Sender<Command>,
}

/// A request to move a process that already runs away from home.
struct Command {
    target: String,
    done: mpsc::Sender<Outcome>,
}

/// What reaches a deputy's thread.
enum HomeEvent {
    /// From the copy, on the stream of stay number `gen`.
    Guest(u64, GuestMsg),
    /// What the process's input at home produced, for the copy.
    Input(GuestMsg),
}

/// Where the copy of a process with a deputy runs.
enum Stay {
    Away {
        target: String,
        to: tokio::sync::mpsc::UnboundedSender<GuestMsg>,
    },
    /// Back home, as a new process of this daemon, beside its deputy.
    /// Inputs it had not read all of when it left its last node read a
    /// pipe fed from here, that input first.
    Home { pid: i32, feeds: HashMap<i32, Feed> },
}

/// Another node's process running here.
struct Guest {
    home: String,
    /// Its pid at home (a checkpoint asked of the home finds it by that).
    home_pid: u32,
}

pub struct Migrations {
    name: String,
    export_root: PathBuf,
    membership: Membership,
    peers: Arc<Peers>,
    rt: tokio::runtime::Handle,
    away: Mutex<HashMap<u32, Away>>,
    guests: Mutex<HashMap<u32, Guest>>,
}

/// What the home thread tells the caller of `migrate`.
type Outcome = Result<Timing, i32>;

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub freeze: Duration,
    pub total: Duration,
    pub bytes: u64,
}

impl Migrations {
    pub fn new(
        name: String,
        export_root: PathBuf,
        membership: Membership,
        peers: Arc<Peers>,
        rt: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(Migrations {
            name,
            export_root,
            membership,
            peers,
            rt,
            away: Mutex::default(),
            guests: Mutex::default(),
        })
    }

    fn is_away(&self, pid: u32) -> bool {
        self.away.lock().expect("away").contains_key(&pid)
    }

    fn alive_addr(&self, target: &str) -> Result<std::net::SocketAddr, i32> {
        match self.membership.member(target) {
            Some((addr, MemberState::Alive)) => Ok(addr),
            Some(_) => Err(libc::EHOSTDOWN),
            None => Err(libc::ENOENT),
        }
    }

    /// Moves this node's process `pid` to `target` and returns once it runs
    /// there (or failed and runs here again).
    fn send_away(self: &Arc<Self>, pid: u32, target: &str) -> Outcome {
        let addr = self.alive_addr(target)?;
        check_movable(pid as i32).map_err(|e| e.errno())?;
        let (tx, rx) = mpsc::channel();
        let me = self.clone();
        let target = target.to_string();
        // ptrace belongs to a thread: this one freezes the process, and
        // stays as its deputy's tracer for as long as it runs away.
        std::thread::Builder::new()
            .name(format!("deputy-{pid}"))
            .spawn(move || me.home_thread(pid, target, addr, tx))
            .map_err(|_| libc::EAGAIN)?;
        rx.recv().unwrap_or(Err(libc::EIO))
    }

    /// Opens the stream that brings process `pid` to `addr`.
    fn open_arrive(
        &self,
        pid: u32,
        addr: std::net::SocketAddr,
        nmigs: u32,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), i32> {
        let req = Request::Arrive {
            home: self.name.clone(),
            home_pid: pid,
            home_root: self.export_root.to_string_lossy().into_owned(),
            nmigs,
        };
        self.rt
            .block_on(self.peers.open_stream(addr, &req))
            .map_err(|e| {
                tracing::warn!(pid, %addr, error = %e, "cannot reach the target");
                libc::EHOSTDOWN
            })
    }

    /// Waits for the target's word that the copy is built.
    fn await_built(&self, recv: &mut quinn::RecvStream) -> Result<(), i32> {
        let built = self.rt.block_on(async {
            tokio::time::timeout(
                RUN_TIMEOUT + mosix_net::REQUEST_TIMEOUT,
                read_frame::<_, GuestMsg>(recv, MAX_FRAME),
            )
            .await
        });
        match built {
            Ok(Ok(Some(GuestMsg::Built(Ok(_))))) => Ok(()),
            Ok(Ok(Some(GuestMsg::Built(Err(e))))) => Err(e),
            _ => Err(libc::EIO),
        }
    }

    /// Waits for the target's word that pre-copy round `n` is applied.
    fn await_round(&self, recv: &mut quinn::RecvStream, n: u32) -> Result<(), i32> {
        let got = self.rt.block_on(async {
            tokio::time::timeout(
                RUN_TIMEOUT + mosix_net::REQUEST_TIMEOUT,
                read_frame::<_, GuestMsg>(recv, MAX_FRAME),
            )
            .await
        });
        match got {
            Ok(Ok(Some(GuestMsg::RoundDone(m)))) if m == n => Ok(()),
            Ok(Ok(Some(GuestMsg::Built(Err(e))))) => Err(e),
            Err(_) => Err(libc::ETIMEDOUT),
            _ => Err(libc::EIO),
        }
    }

    /// The copy at the other end of `send`/`recv` is told to run; what it
    /// says comes to the home thread tagged `gen`. Returns the way to it.
    fn start_stay(
        &self,
        gen: u64,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        events: mpsc::Sender<HomeEvent>,
    ) -> tokio::sync::mpsc::UnboundedSender<GuestMsg> {
        let (to, mut from_home) = tokio::sync::mpsc::unbounded_channel::<GuestMsg>();
        self.rt.spawn(async move {
            if write_frame(&mut send, &GuestMsg::Run, MAX_FRAME)
                .await
                .is_err()
            {
                return;
            }
            while let Some(m) = from_home.recv().await {
                if write_frame(&mut send, &m, MAX_FRAME).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
        self.rt.spawn(async move {
            loop {
                match read_frame::<_, GuestMsg>(&mut recv, MAX_FRAME).await {
                    Ok(Some(m)) => {
                        if events.send(HomeEvent::Guest(gen, m)).is_err() {
                            return;
                        }
                    }
                    _ => {
                        // The target is gone: the copy is lost.
                        let lost = GuestMsg::Ended(Ending::Signaled(libc::SIGKILL));
                        let _ = events.send(HomeEvent::Guest(gen, lost));
                        return;
                    }
                }
            }
        });
        to
    }

    /// Full stop: freeze, then image and every page.
    fn send_stopped(&self, pid: u32, addr: std::net::SocketAddr) -> Result<Sent, i32> {
        let frozen_at = Instant::now();
        let ck = Checkpoint::take(pid as i32).map_err(|e| e.errno())?;
        let relayed = relayed_fds(&ck);
        let (send, recv) = self.open_arrive(pid, addr, 1)?;
        let mut w = QuicWriter::new(send, &self.rt);
        let bytes = write_image(&mut w, ck.image())
            .map_err(|e| e.errno())
            .and_then(|_| ck.send_pages(&mut w).map_err(|e| e.errno()))
            .and_then(|n| w.flush().map(|_| n).map_err(|_| libc::EIO))?;
        Ok(Sent {
            ck,
            relayed,
            send: w.into_send()?,
            recv,
            bytes,
            frozen_at,
            tracking: None,
        })
    }

    /// Pre-copy: rounds while the process runs, until P.Haul's rule says
    /// stop, then the freeze and the pages written since. The tracking ends
    /// when `pc` is dropped, here, whatever happens.
    fn send_precopy(
        &self,
        pid: u32,
        addr: std::net::SocketAddr,
        mut pc: Precopy,
        report: &mut Report,
    ) -> Result<Sent, i32> {
        let (send, mut recv) = self.open_arrive(pid, addr, 1)?;
        let mut w = QuicWriter::new(send, &self.rt);
        write_precopy_start(&mut w, pc.image()).map_err(|e| e.errno())?;
        let mut bytes = 0;
        loop {
            let t = Instant::now();
            let r = pc.round(&mut w).map_err(|e| e.errno())?;
            w.flush().map_err(|_| libc::EIO)?;
            self.await_round(&mut recv, r.round)?;
            bytes += r.bytes;
            report.line(format!(
                "round {}: {} pages ({:.1} MiB) in {:.3} s{}",
                r.round,
                r.pages,
                r.bytes as f64 / (1 << 20) as f64,
                t.elapsed().as_secs_f64(),
                if r.round == 0 { "" } else { " dirty" }
            ));
            if pc.should_stop() {
                break;
            }
        }
        let frozen_at = Instant::now();
        let ck = pc.freeze().map_err(|e| e.errno())?;
        let took = frozen_at.elapsed();
        let relayed = relayed_fds(&ck);
        write_image(&mut w, ck.image()).map_err(|e| e.errno())?;
        let last = pc.send_final(&ck, &mut w).map_err(|e| e.errno())?;
        w.flush().map_err(|_| libc::EIO)?;
        bytes += last.bytes;
        report.line(format!(
            "frozen: checkpoint {:.1} ms, last round {} pages ({:.1} MiB) sent by {:.1} ms{}",
            took.as_secs_f64() * 1e3,
            last.pages,
            last.bytes as f64 / (1 << 20) as f64,
            frozen_at.elapsed().as_secs_f64() * 1e3,
            if last.whole_areas > 0 {
                format!(", {} areas new or changed sent whole", last.whole_areas)
            } else {
                String::new()
            }
        ));
        Ok(Sent {
            ck,
            relayed,
            send: w.into_send()?,
            recv,
            bytes,
            frozen_at,
            tracking: Some(pc),
        })
    }

    fn home_thread(
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

/// How child `pid` ended, if it has.
fn try_wait_ending(pid: i32) -> Option<Ending> {
    let mut status = 0;
    // SAFETY: plain syscall with a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == -1 {
        return Some(Ending::Signaled(libc::SIGKILL));
    }
    if r == 0 {
        return None;
    }
    if libc::WIFEXITED(status) {
        Some(Ending::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Ending::Signaled(libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// How child `pid` ended. `__WNOTHREAD`: when another thread of this
/// daemon traces the child (to move it on), its ptrace stops are that
/// thread's to see, not ours.
fn wait_ending(pid: i32) -> Ending {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WNOTHREAD) };
        if r == -1 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Ending::Signaled(libc::SIGKILL);
        }
        if libc::WIFEXITED(status) {
            return Ending::Exited(libc::WEXITSTATUS(status));
        }
        if libc::WIFSIGNALED(status) {
            return Ending::Signaled(libc::WTERMSIG(status));
        }
    }
}

/// The daemon's migrations as the process view's [`Migrator`].
pub struct MigratorHandle(pub Arc<Migrations>);

impl Migrator for MigratorHandle {
    fn placement(&self, pid: u32) -> Placement {
        let this = &self.0;
        match this.away.lock().expect("away").get(&pid) {
            Some(a) => Placement {
                running_on: a.target.clone(),
                nmigs: a.nmigs,
            },
            None => Placement {
                running_on: this.name.clone(),
                nmigs: 0,
            },
        }
    }

    fn home_of(&self, pid: u32) -> String {
        let this = &self.0;
        this.guests
            .lock()
            .expect("guests")
            .get(&pid)
            .map(|g| g.home.clone())
            .unwrap_or_else(|| this.name.clone())
    }

    fn cantmove(&self, pid: u32) -> Option<String> {
        if self.0.is_away(pid) {
            return None;
        }
        if pid == 1 {
            return Some("the node's init stays on its node".into());
        }
        if pid == std::process::id() {
            return Some("the node's mosix daemon stays on its node".into());
        }
        check_movable(pid as i32).err().map(|e| e.to_string())
    }

    fn migrate(&self, _creds: &Creds, pid: u32, target: &str) -> Result<(), i32> {
        let this = &self.0;
        let away = this
            .away
            .lock()
            .expect("away")
            .get(&pid)
            .map(|a| a.cmds.clone());
        if let Some(cmds) = away {
            // It runs elsewhere (or came back beside its deputy): its home
            // thread moves it on.
            let (tx, rx) = mpsc::channel();
            cmds.send(Command {
                target: target.to_string(),
                done: tx,
            })
            .map_err(|_| libc::ESRCH)?;
            return rx.recv().unwrap_or(Err(libc::EIO)).map(|t| {
                tracing::info!(pid, target, total = ?t.total, bytes = t.bytes, "migration done");
            });
        }
        if target == "home" || target == this.name {
            return Ok(());
        }
        // The node's init and this daemon hold the node together: they
        // stay, whoever asks.
        if pid == 1 || pid == std::process::id() {
            return Err(libc::EPERM);
        }
        this.send_away(pid, target).map(|t| {
            tracing::info!(pid, target, freeze = ?t.freeze, total = ?t.total, bytes = t.bytes, "migration done");
        })
    }
}
