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
use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use mosix_migrator::{
    check_movable, read_image, restore, write_image, Checkpoint, DeputyEvent, FdKind,
    FdReplacement, RestoreOptions, StreamSink, StreamSource,
};
use mosix_net::Peers;
use mosix_procview::node::{Migrator, Placement};
use mosix_proto::fs::Creds;
use mosix_proto::guest::{Ending, GuestMsg};
use mosix_proto::{read_frame, write_frame, MemberState, Request, MAX_FRAME};
use tokio_util::io::SyncIoBridge;

use crate::membership::Membership;

/// How long a target keeps a rebuilt copy stopped waiting for `Run`.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the deputy's thread looks at the deputy.
const DEPUTY_POLL: Duration = Duration::from_millis(10);
/// Output relayed per message.
const RELAY_CHUNK: usize = 64 << 10;

/// Where a target can be told to fail on purpose, for tests of the
/// transaction: `/run/mosix/fault` holding `abort:<phase>` (the daemon dies
/// as if killed) or `cut:<phase>` (the stream to the home node breaks), with
/// phase `pages` (image read, pages not yet) or `built` (copy built, waiting
/// for `Run`). Only root can write there; without the file nothing happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Cut,
}

const FAULT_FILE: &str = "/run/mosix/fault";

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
        _ => None,
    }
}

/// One of this node's processes running elsewhere.
struct Away {
    target: String,
    nmigs: u32,
}

/// Another node's process running here.
struct Guest {
    home: String,
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

    /// Moves this node's process `pid` to `target` and returns once it runs
    /// there (or failed and runs here again).
    fn send_away(self: &Arc<Self>, pid: u32, target: &str) -> Outcome {
        let addr = match self.membership.member(target) {
            Some((addr, MemberState::Alive)) => addr,
            Some(_) => return Err(libc::EHOSTDOWN),
            None => return Err(libc::ENOENT),
        };
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

    fn home_thread(
        self: Arc<Self>,
        pid: u32,
        target: String,
        addr: std::net::SocketAddr,
        done: mpsc::Sender<Outcome>,
    ) {
        let start = Instant::now();
        let ck = match Checkpoint::take(pid as i32) {
            Ok(ck) => ck,
            Err(e) => {
                let _ = done.send(Err(e.errno()));
                return;
            }
        };
        let nmigs = 1;
        let req = Request::Arrive {
            home: self.name.clone(),
            home_pid: pid,
            home_root: self.export_root.to_string_lossy().into_owned(),
            nmigs,
        };
        // Descriptors whose other end stays here: the deputy's copies, to
        // relay. Taken while the source is frozen.
        let relayed: Vec<(i32, bool, OwnedFd)> = ck
            .image()
            .fds
            .entries
            .iter()
            .filter(|e| e.kind.needs_relay())
            .filter_map(|e| {
                let input = e.flags & libc::O_ACCMODE == libc::O_RDONLY;
                ck.dup_source_fd(e.fd).ok().map(|fd| (e.fd, input, fd))
            })
            .collect();
        let sent = self
            .rt
            .block_on(self.peers.open_stream(addr, &req))
            .map_err(|e| {
                tracing::warn!(pid, %target, error = %e, "cannot reach the target");
                libc::EHOSTDOWN
            });
        let (send, mut recv) = match sent {
            Ok(s) => s,
            Err(e) => {
                let _ = done.send(Err(e));
                return; // dropping `ck` resumes the source
            }
        };
        let mut w = SyncIoBridge::new_with_handle(send, self.rt.clone());
        let streamed = write_image(&mut w, ck.image())
            .map_err(|e| e.errno())
            .and_then(|_| {
                ck.send_pages(&mut StreamSink::new(&mut w))
                    .map_err(|e| e.errno())
            })
            .and_then(|n| w.flush().map(|_| n).map_err(|_| libc::EIO));
        let bytes = match streamed {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(pid, %target, errno = e, "sending the process failed; it resumes here");
                let _ = done.send(Err(e));
                return;
            }
        };
        let mut send = w.into_inner();
        let built = self.rt.block_on(async {
            tokio::time::timeout(
                RUN_TIMEOUT + mosix_net::REQUEST_TIMEOUT,
                read_frame::<_, GuestMsg>(&mut recv, MAX_FRAME),
            )
            .await
        });
        match built {
            Ok(Ok(Some(GuestMsg::Built(Ok(_))))) => {}
            Ok(Ok(Some(GuestMsg::Built(Err(e))))) => {
                tracing::warn!(pid, %target, errno = e, "the target could not rebuild the process; it resumes here");
                let _ = done.send(Err(e));
                return;
            }
            other => {
                tracing::warn!(pid, %target, answer = ?other, "no rebuild from the target; the process resumes here");
                let _ = done.send(Err(libc::EIO));
                return;
            }
        }
        // The commit point: the source becomes the deputy, then the copy
        // runs. A failure between the two leaves a deputy whose copy never
        // runs: it dies, and the process with it, but it never runs twice.
        let freeze = start.elapsed();
        let reopened: Vec<i32> = ck
            .image()
            .fds
            .entries
            .iter()
            .filter(|e| matches!(e.kind, FdKind::File { .. } | FdKind::Directory { .. }))
            .map(|e| e.fd)
            .collect();
        let deputy = match ck.keep_frozen().into_deputy(&reopened) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(pid, error = %e, "cannot park the deputy; the process is lost");
                let _ = done.send(Err(libc::EIO));
                return;
            }
        };
        let (to_target, from_home) = tokio::sync::mpsc::unbounded_channel::<GuestMsg>();
        let (events_tx, events) = mpsc::channel::<GuestMsg>();
        self.rt.spawn(async move {
            let mut from_home = from_home;
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
        let mut writers: HashMap<i32, std::fs::File> = HashMap::new();
        for (fd, input, file) in relayed {
            if input {
                spawn_input_relay(&self.rt, fd, file, to_target.clone());
            } else {
                writers.insert(fd, std::fs::File::from(file));
            }
        }
        let ev = events_tx.clone();
        self.rt.spawn(async move {
            loop {
                match read_frame::<_, GuestMsg>(&mut recv, MAX_FRAME).await {
                    Ok(Some(m)) => {
                        if ev.send(m).is_err() {
                            return;
                        }
                    }
                    _ => {
                        // The target is gone: the copy is lost.
                        let _ = ev.send(GuestMsg::Ended(Ending::Signaled(libc::SIGKILL)));
                        return;
                    }
                }
            }
        });
        self.away.lock().expect("away").insert(
            pid,
            Away {
                target: target.clone(),
                nmigs,
            },
        );
        tracing::info!(pid, %target, ?freeze, bytes, "process migrated; deputy at home");
        let _ = done.send(Ok(Timing {
            freeze,
            total: start.elapsed(),
            bytes,
        }));
        // The deputy's life: forward what is sent to it, repeat how the
        // copy ends.
        loop {
            match events.recv_timeout(DEPUTY_POLL) {
                Ok(GuestMsg::Data { fd, bytes }) => {
                    // Output of the copy, to where it went at home. A reader
                    // that went away is the copy's business (EPIPE there).
                    if let Some(f) = writers.get_mut(&fd) {
                        if f.write_all(&bytes).is_err() {
                            writers.remove(&fd);
                        }
                    }
                }
                Ok(GuestMsg::Eof { fd }) => {
                    writers.remove(&fd);
                }
                Ok(GuestMsg::Ended(ending)) => {
                    let e = match ending {
                        Ending::Exited(c) => mosix_migrator::Ending::Exited(c),
                        Ending::Signaled(s) => mosix_migrator::Ending::Signaled(s),
                    };
                    if let Err(err) = deputy.end_like(e) {
                        tracing::warn!(pid, error = %err, "the deputy could not end like its copy");
                    }
                    break;
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            match deputy.poll() {
                Ok(Some(DeputyEvent::Signal(sig))) => {
                    let _ = to_target.send(GuestMsg::Signal(sig));
                }
                // SIGKILL of the deputy kills the copy.
                Ok(Some(DeputyEvent::Killed(_))) | Ok(Some(DeputyEvent::Exited(_))) => {
                    let _ = to_target.send(GuestMsg::Signal(libc::SIGKILL));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(pid, error = %e, "lost the deputy");
                    let _ = to_target.send(GuestMsg::Signal(libc::SIGKILL));
                    break;
                }
            }
        }
        self.away.lock().expect("away").remove(&pid);
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
        // the pages are read.
        let Ok(mut recv) = recv_rx.await else {
            return;
        };
        let reader = rt.spawn(async move {
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
        while let Some(m) = outbox.recv().await {
            let last = matches!(m, GuestMsg::Ended(_) | GuestMsg::Built(Err(_)));
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
        let mut r = SyncIoBridge::new_with_handle(recv, self.rt.clone());
        let image = match read_image(&mut r) {
            Ok(i) => i,
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
        let mut inputs: HashMap<i32, std::fs::File> = HashMap::new();
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
                inputs.insert(e.fd, std::fs::File::from(ours));
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
        let built = restore(&image, &mut StreamSource::new(&mut r), &opts);
        drop(kept);
        let _ = recv_back.send(r.into_inner());
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
        self.guests
            .lock()
            .expect("guests")
            .insert(pid as u32, Guest { home: home.clone() });
        tracing::info!(%home, home_pid, pid, "guest runs here");
        for (fd, file) in outputs {
            spawn_output_relay(&self.rt, fd, file, to_home.clone());
        }
        // Home's messages to the copy, on their own thread: this one waits
        // for the copy to end.
        std::thread::spawn(move || {
            for m in inbox {
                match m {
                    GuestMsg::Signal(sig) => {
                        // SAFETY: plain syscall on our own child.
                        unsafe { libc::kill(pid, sig) };
                    }
                    GuestMsg::Data { fd, bytes } => {
                        if let Some(f) = inputs.get_mut(&fd) {
                            if f.write_all(&bytes).is_err() {
                                inputs.remove(&fd);
                            }
                        }
                    }
                    GuestMsg::Eof { fd } => {
                        inputs.remove(&fd);
                    }
                    _ => {}
                }
            }
        });
        let ending = wait_ending(pid);
        self.guests.lock().expect("guests").remove(&(pid as u32));
        // The view's mounts go with this thread's namespace; its directory
        // in the node's own tree is removed by `arrive`.
        let _ = view;
        tracing::info!(%home, home_pid, pid, ?ending, "guest ended");
        let _ = to_home.send(GuestMsg::Ended(ending));
    }
}

/// How child `pid` ended.
fn wait_ending(pid: i32) -> Ending {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
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

/// What the process reads at home (its stdin pipe or tty), sent on to it.
fn spawn_input_relay(
    rt: &tokio::runtime::Handle,
    fd: i32,
    file: OwnedFd,
    to: tokio::sync::mpsc::UnboundedSender<GuestMsg>,
) {
    let mut f = std::fs::File::from(file);
    rt.spawn_blocking(move || {
        let mut buf = vec![0u8; RELAY_CHUNK];
        loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.send(GuestMsg::Eof { fd });
                    return;
                }
                Ok(n) => {
                    if to
                        .send(GuestMsg::Data {
                            fd,
                            bytes: buf[..n].to_vec(),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
}

/// What the copy writes to a relayed descriptor, sent home.
fn spawn_output_relay(
    rt: &tokio::runtime::Handle,
    fd: i32,
    mut f: std::fs::File,
    to: tokio::sync::mpsc::UnboundedSender<GuestMsg>,
) {
    rt.spawn_blocking(move || {
        let mut buf = vec![0u8; RELAY_CHUNK];
        loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.send(GuestMsg::Eof { fd });
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
    });
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
        if this.is_away(pid) {
            // Moving again, or home, is not built yet.
            return Err(libc::EOPNOTSUPP);
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

/// Makes the calling thread (and the processes it creates) see its home
/// node's files at `/`, as the process saw them at home: a private mount
/// namespace whose root is a tmpfs holding a bind mount of each top-level
/// entry of `/mosix/nodes/<home>`, with this node's own `/proc`, `/sys`,
/// `/dev` and `/mosix`. So absolute paths (a database's journal, a config
/// file, `/tmp/x`) keep meaning what they meant at home, not only the cwd
/// and relative paths. Returns the directory to remove once the guest is
/// gone.
fn enter_home_view(home: &str, tag: &str) -> std::io::Result<PathBuf> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let io = |e: nix::Error| std::io::Error::from(e);
    let root = guest_view_dir(tag);
    std::fs::create_dir_all(&root)?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).map_err(io)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(io)?;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(io)?;
    let src = PathBuf::from("/mosix/nodes").join(home);
    let local = ["proc", "sys", "dev", "mosix"];
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        let name = entry.file_name();
        if local.iter().any(|l| name == *l) {
            continue;
        }
        let (from, to) = (entry.path(), root.join(&name));
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            continue;
        }
        if ft.is_dir() {
            std::fs::create_dir(&to)?;
        } else {
            std::fs::File::create(&to)?;
        }
        mount(
            Some(&from),
            &to,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io)?;
    }
    for l in local {
        let to = root.join(l);
        std::fs::create_dir_all(&to)?;
        let from = PathBuf::from("/").join(l);
        mount(
            Some(&from),
            &to,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(io)?;
    }
    nix::unistd::chroot(&root).map_err(io)?;
    std::env::set_current_dir("/")?;
    Ok(guest_view_dir(tag))
}

/// Where a guest's home view is built, in this node's own tree.
fn guest_view_dir(tag: &str) -> PathBuf {
    PathBuf::from("/run/mosix/guests").join(tag)
}

/// Tells apart guests that arrive with the same home and pid (one that
/// moved away and came back).
fn next_guest_tag() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
