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
//!
//! Where things live: this file sends a process away (checkpoint or
//! pre-copy rounds, the transaction up to `Run`); `home.rs` is the deputy's
//! life after that and moving the copy on; `guest.rs` is the target side;
//! `stream.rs` the page stream over QUIC, `feed.rs` relayed input into a
//! pipe, `relay.rs` the relay threads, `home_view.rs` the guest's view of
//! its home's files.
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
mod guest;
mod home;
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
