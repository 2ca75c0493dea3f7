//! Checkpoint files: `mosix checkpoint GPID FILE` and `mosix restart FILE
//! [--on NODE]` (MOSIX's checkpoint facility). A checkpoint is a migration
//! to a file: the same freeze, image and page stream, behind a header
//! ([`mosix_proto::checkpoint`]).
//!
//! ```text
//! mosix checkpoint (CLI, node A)  daemon A                 node running the process
//! Checkpoint{gpid} ───────────►   its node? here: thread ─ freeze, header, image, pages
//!                                 else Request::Checkpoint ─► (at home, or forwarded by
//!                                                              the home to where it runs)
//! writes FILE  ◄── Piece frames ◄─ Piece frames ◄──────────── Data... End | Failed
//!
//! mosix restart (CLI, node A)     daemon A                 node B (--on B, or A)
//! Restart{on}, Piece frames ───►  B? Request::Restart ─────► thread: header, image,
//!                                                            credentials check, restore
//! prints gpid ◄── Restarted ◄──── Result<Restarted> ◄─────── (the thread stays its parent)
//! ```
//!
//! The CLI reads and writes the file itself, so it is the user's file with
//! the user's permissions, at the path the user gave, on the user's node.
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use mosix_migrator::{
    check_movable, read_image, restore, write_image, Checkpoint, CredState, FdReplacement,
    RestoreOptions, StreamSink, StreamSource, IMAGE_VERSION,
};
use mosix_proto::checkpoint::{
    read_header, write_header, AfterCheckpoint, CheckpointHeader, Piece, Restarted,
    MAX_PIECE_FRAME, PIECE_BYTES,
};
use mosix_proto::fs::Creds;
use mosix_proto::proc::{gpid as make_gpid, split_gpid};
use mosix_proto::{read_frame, write_frame, MemberState, Request, MAX_FRAME};
use tokio::io::{AsyncRead, AsyncWrite};

use super::home_view::{enter_home_view, guest_view_dir, next_guest_tag};
use super::{wait_ending, Migrations};

/// Longest wait for the next piece of a checkpoint file, either way, and
/// for the answer to a restart once the whole file was sent. A peer, a CLI
/// or a disk that stalls longer fails the operation; a frozen process is
/// then resumed. Restoring a big process takes longer than one piece, so
/// the answer's wait grows with nothing but this bound per step.
pub const PIECE_TIMEOUT: Duration = Duration::from_secs(30);

/// Pieces in flight between a thread and the socket it feeds.
const PIECES_IN_FLIGHT: usize = 4;

/// Why a checkpoint or a restart failed; the text is what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    #[error("gpid {0}: no such process")]
    NoProcess(u32),
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("cannot checkpoint it: {0}")]
    CannotCheckpoint(String),
    #[error(transparent)]
    Header(#[from] mosix_proto::checkpoint::HeaderError),
    #[error("the checkpoint file is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("node {0} is not alive in the cluster")]
    NodeDown(String),
    #[error("cannot restart it: {0}")]
    CannotRestart(String),
    #[error("{0}")]
    Transfer(String),
}

type Outcome<T> = Result<T, CheckpointFailure>;

/// The caller as the kernel vouched for it on the control socket, with its
/// supplementary groups (SO_PEERCRED gives none).
pub fn caller_creds(stream: &tokio::net::UnixStream) -> Result<Creds, String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot identify the caller: {e}"))?;
    let pid = cred.pid().unwrap_or(0);
    let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default();
    Ok(Creds {
        uid: cred.uid(),
        gid: cred.gid(),
        groups,
        pid: pid as u32,
    })
}

/// `mosix checkpoint` on the control socket: the file goes back to the CLI
/// as pieces.
pub async fn control_checkpoint(
    mig: Arc<Migrations>,
    node_id: u16,
    mut stream: tokio::net::UnixStream,
    creds: Creds,
    gpid: u32,
    after: AfterCheckpoint,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(PIECES_IN_FLIGHT);
    let (id, pid) = split_gpid(gpid);
    let producer = if id == node_id {
        tokio::spawn(checkpoint_here(mig, creds, pid, None, gpid, after, tx))
    } else {
        tokio::spawn(checkpoint_there(mig, id, creds, gpid, after, tx))
    };
    pump_out(rx, &mut stream).await;
    producer.abort();
}

/// Checkpoints process `gpid` of node `id` by asking that node.
async fn checkpoint_there(
    mig: Arc<Migrations>,
    id: u16,
    creds: Creds,
    gpid: u32,
    after: AfterCheckpoint,
    tx: tokio::sync::mpsc::Sender<Piece>,
) {
    let Some((node, addr, state)) = mig.membership.member_by_id(id) else {
        let why = format!("gpid {gpid}: no node with id {id} in the cluster");
        let _ = tx.send(Piece::Failed(why)).await;
        return;
    };
    if state == MemberState::Dead {
        let _ = tx
            .send(Piece::Failed(format!(
                "gpid {gpid}: its node {node} is down"
            )))
            .await;
        return;
    }
    let req = Request::Checkpoint {
        creds,
        pid: split_gpid(gpid).1,
        guest_of: None,
        gpid,
        after,
    };
    relay_from(&mig, &node, addr, &req, tx).await;
}

/// Opens a checkpoint stream to `node` and passes its pieces on.
async fn relay_from(
    mig: &Migrations,
    node: &str,
    addr: std::net::SocketAddr,
    req: &Request,
    tx: tokio::sync::mpsc::Sender<Piece>,
) {
    let (_send, mut recv) = match mig.peers.open_stream(addr, req).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Piece::Failed(format!("node {node}: {e}"))).await;
            return;
        }
    };
    loop {
        let next = tokio::time::timeout(
            PIECE_TIMEOUT,
            read_frame::<_, Piece>(&mut recv, MAX_PIECE_FRAME),
        )
        .await;
        let piece = match next {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => Piece::Failed(format!("node {node} ended the checkpoint early")),
            Ok(Err(e)) => Piece::Failed(format!("node {node}: {e}")),
            Err(_) => Piece::Failed(format!("node {node} sent nothing for {PIECE_TIMEOUT:?}")),
        };
        let last = !matches!(piece, Piece::Data(_));
        if tx.send(piece).await.is_err() || last {
            return;
        }
    }
}

/// Checkpoints this node's process `pid` (with `guest_of`, the guest here
/// whose pid at that home node is `pid`); one of this node's processes that
/// runs away is asked of the node it runs on.
async fn checkpoint_here(
    mig: Arc<Migrations>,
    creds: Creds,
    pid: u32,
    guest_of: Option<String>,
    gpid: u32,
    after: AfterCheckpoint,
    tx: tokio::sync::mpsc::Sender<Piece>,
) {
    let (local, home, home_pid) = match &guest_of {
        Some(home) => {
            let found = mig
                .guests
                .lock()
                .expect("guests")
                .iter()
                .find(|(_, g)| g.home == *home && g.home_pid == pid)
                .map(|(p, _)| *p);
            match found {
                Some(p) => (p, home.clone(), pid),
                None => {
                    let _ = tx
                        .send(Piece::Failed(
                            CheckpointFailure::NoProcess(gpid).to_string(),
                        ))
                        .await;
                    return;
                }
            }
        }
        None => {
            let away = mig
                .away
                .lock()
                .expect("away")
                .get(&pid)
                .map(|a| a.target.clone());
            if let Some(target) = away.filter(|t| *t != mig.name) {
                // Its home has the deputy; the process itself is there.
                let addr = match mig.alive_addr(&target) {
                    Ok(a) => a,
                    Err(_) => {
                        let why = CheckpointFailure::NodeDown(target).to_string();
                        let _ = tx.send(Piece::Failed(why)).await;
                        return;
                    }
                };
                let req = Request::Checkpoint {
                    creds,
                    pid,
                    guest_of: Some(mig.name.clone()),
                    gpid,
                    after,
                };
                relay_from(&mig, &target, addr, &req, tx).await;
                return;
            }
            // A process restarted here from another node's checkpoint
            // still sees that node's files.
            let home = viewed_home(pid).unwrap_or_else(|| mig.name.clone());
            (pid, home, pid)
        }
    };
    let header = CheckpointHeader {
        home,
        home_pid,
        gpid,
        taken_on: mig.name.clone(),
        taken_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        comm: String::new(),
        image_version: IMAGE_VERSION,
    };
    // ptrace belongs to a thread: this one freezes, streams and lets go.
    let tx2 = tx.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("checkpoint-{local}"))
        .spawn(move || {
            let mut w = PieceWriter::new(tx2.clone());
            let last = match take(&creds, local, gpid, header, after, &mut w) {
                Ok(bytes) => {
                    tracing::info!(pid = local, gpid, bytes, ?after, "checkpoint written");
                    Piece::End
                }
                Err(e) => {
                    tracing::info!(pid = local, gpid, error = %e, "checkpoint refused or failed");
                    Piece::Failed(e.to_string())
                }
            };
            let _ = tx2.blocking_send(last);
        });
    if spawned.is_err() {
        let _ = tx
            .send(Piece::Failed("the daemon cannot start a thread".into()))
            .await;
    }
}

/// Freezes `pid`, writes its checkpoint to `w`, and lets it go on (or stop,
/// or die) as `after` says. Any failure leaves it running as it was.
fn take(
    creds: &Creds,
    pid: u32,
    gpid: u32,
    mut header: CheckpointHeader,
    after: AfterCheckpoint,
    w: &mut PieceWriter,
) -> Outcome<u64> {
    if pid == 1 || pid == std::process::id() {
        return Err(CheckpointFailure::Denied(
            "the node's init and its mosix daemon stay as they are".into(),
        ));
    }
    may_checkpoint(creds, pid).map_err(|e| match e {
        libc::ESRCH => CheckpointFailure::NoProcess(gpid),
        _ => CheckpointFailure::Denied(format!(
            "uid {} does not own gpid {gpid} (its owner or root may checkpoint it)",
            creds.uid
        )),
    })?;
    // Its paths must read as it sees them: a guest, or a process restarted
    // from elsewhere, lives in its home's view, not in this node's tree.
    enter_root_of(pid).map_err(|e| {
        CheckpointFailure::CannotCheckpoint(format!("cannot enter its view of the files: {e}"))
    })?;
    check_movable(pid as i32).map_err(|e| CheckpointFailure::CannotCheckpoint(e.to_string()))?;
    let ck = Checkpoint::take(pid as i32)
        .map_err(|e| CheckpointFailure::CannotCheckpoint(e.to_string()))?;
    header.comm = ck.image().misc.comm.clone();
    let io = |e: std::io::Error| CheckpointFailure::Transfer(format!("sending the file: {e}"));
    // Dropping `ck` on any error below resumes the process where it was.
    write_header(w, &header).map_err(io)?;
    write_image(w, ck.image()).map_err(|e| CheckpointFailure::Transfer(e.to_string()))?;
    let bytes = ck
        .send_pages(&mut StreamSink::new(&mut *w))
        .map_err(|e| CheckpointFailure::Transfer(e.to_string()))?;
    w.flush().map_err(io)?;
    let done = match after {
        AfterCheckpoint::Run => ck.resume_source(),
        AfterCheckpoint::Stop => {
            // Queued while frozen, taken once it is let go: it stops
            // before running another instruction of its own.
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
            ck.resume_source()
        }
        AfterCheckpoint::Kill => {
            // Killed, not reaped: its parent reaps it and sees SIGKILL (a
            // guest's parent is the thread that waits for it here; a reap
            // by this thread would leave that one waiting forever).
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            ck.resume_source()
        }
    };
    if let Err(e) = done {
        tracing::warn!(pid, error = %e, "after the checkpoint");
    }
    Ok(bytes)
}

/// The processes restarted here that see another node's files (their old
/// home's), by pid: their own checkpoints name that node as their home.
static VIEWED_HOMES: std::sync::Mutex<std::collections::BTreeMap<u32, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn viewed_home(pid: u32) -> Option<String> {
    VIEWED_HOMES
        .lock()
        .expect("viewed homes")
        .get(&pid)
        .cloned()
}

/// Makes the calling thread see the files as process `pid` does: its mount
/// namespace and its root (as `nsenter --mount --root` does). The thread
/// must be one of its own, made for this one checkpoint.
fn enter_root_of(pid: u32) -> std::io::Result<()> {
    use nix::sched::{setns, unshare, CloneFlags};
    let root = std::fs::File::open(format!("/proc/{pid}/root"))?;
    let mnt = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    unshare(CloneFlags::CLONE_FS)?;
    setns(&mnt, CloneFlags::CLONE_NEWNS)?;
    nix::unistd::fchdir(&root)?;
    nix::unistd::chroot(".")?;
    std::env::set_current_dir("/")
}

/// A checkpoint holds the process's memory: its owner (every one of its
/// uids is the caller's, as ptrace(2) asks) or root may take it.
fn may_checkpoint(creds: &Creds, pid: u32) -> Result<(), i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| libc::ESRCH)?;
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|u| {
            u.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .ok_or(libc::ESRCH)?;
    if creds.uid == 0 || (!uids.is_empty() && uids.iter().all(|&u| u == creds.uid)) {
        Ok(())
    } else {
        Err(libc::EPERM)
    }
}

/// Whether `creds` may run a process with credentials `c`: root may; anyone
/// else only as themselves: every uid theirs, every gid one of their
/// groups, and no capabilities. Anything else would hand a user another
/// user's identity (or privileges) just by writing a file.
fn may_become(creds: &Creds, c: &CredState) -> Result<(), String> {
    if creds.uid == 0 {
        return Ok(());
    }
    if c.uids.iter().any(|&u| u != creds.uid) {
        return Err(format!(
            "the checkpoint runs as uid {}; uid {} may restart only its own processes",
            c.uids[0], creds.uid
        ));
    }
    let mine = |g: &u32| *g == creds.gid || creds.groups.contains(g);
    if let Some(g) = c.gids.iter().chain(&c.groups).find(|g| !mine(g)) {
        return Err(format!(
            "the checkpoint has group {g}, which uid {} is not in",
            creds.uid
        ));
    }
    if c.cap_prm | c.cap_eff | c.cap_amb | c.cap_inh != 0 {
        return Err("the checkpoint holds capabilities; only root may restart it".into());
    }
    Ok(())
}

/// `mosix restart` on the control socket: the file arrives as pieces; the
/// answer is `Restarted` or an error.
pub async fn control_restart(
    mig: Arc<Migrations>,
    node_id: u16,
    mut stream: tokio::net::UnixStream,
    creds: Creds,
    on: Option<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(PIECES_IN_FLIGHT);
    let here = on.as_deref().is_none_or(|n| n == mig.name || n == "here");
    let consumer = if here {
        tokio::spawn(restart_here(mig, node_id, creds, rx))
    } else {
        let node = on.unwrap_or_default();
        tokio::spawn(restart_there(mig, node, creds, rx))
    };
    pump_in(&mut stream, tx).await;
    let answer = match consumer.await {
        Ok(Ok(r)) => mosix_proto::ControlResponse::Restarted(r),
        Ok(Err(e)) => mosix_proto::ControlResponse::Error(e),
        Err(e) => mosix_proto::ControlResponse::Error(e.to_string()),
    };
    let _ = tokio::time::timeout(PIECE_TIMEOUT, write_frame(&mut stream, &answer, MAX_FRAME)).await;
}

/// Passes the file on to `node`, which restarts it.
async fn restart_there(
    mig: Arc<Migrations>,
    node: String,
    creds: Creds,
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<Restarted, String> {
    let addr = match mig.membership.member(&node) {
        Some((addr, MemberState::Alive)) => addr,
        Some(_) => return Err(CheckpointFailure::NodeDown(node).to_string()),
        None => return Err(format!("no node {node} in the cluster")),
    };
    let (mut send, mut recv) = mig
        .peers
        .open_stream(addr, &Request::Restart { creds })
        .await
        .map_err(|e| format!("node {node}: {e}"))?;
    // The answer may come before the whole file went (a refusal after the
    // header): it is read alongside; once the file went, within
    // PIECE_TIMEOUT.
    let mut answer = std::pin::pin!(read_frame::<_, Result<Restarted, String>>(
        &mut recv, MAX_FRAME
    ));
    let feed = async {
        while let Some(p) = rx.recv().await {
            let last = !matches!(p, Piece::Data(_));
            let w =
                tokio::time::timeout(PIECE_TIMEOUT, write_frame(&mut send, &p, MAX_PIECE_FRAME));
            if !matches!(w.await, Ok(Ok(()))) || last {
                break;
            }
        }
        let _ = send.finish();
    };
    let early = tokio::select! {
        a = &mut answer => Some(a),
        () = feed => None,
    };
    let a = match early {
        Some(a) => Ok(a),
        None => tokio::time::timeout(PIECE_TIMEOUT, answer).await,
    };
    match a {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => Err(format!("node {node} closed the stream without answering")),
        Ok(Err(e)) => Err(format!("node {node}: {e}")),
        Err(_) => Err(format!(
            "node {node} did not answer within {PIECE_TIMEOUT:?}"
        )),
    }
}

/// Restarts the checkpoint arriving on `rx` on this node.
async fn restart_here(
    mig: Arc<Migrations>,
    node_id: u16,
    creds: Creds,
    rx: tokio::sync::mpsc::Receiver<Piece>,
) -> Result<Restarted, String> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // The restored process is this thread's child and tracee: the thread
    // stays to reap it.
    std::thread::Builder::new()
        .name("restart".into())
        .spawn(move || {
            let mut r = PieceReader::new(rx);
            let tag = format!("restart-{}", next_guest_tag());
            let built = rebuild(&mig, node_id, &creds, &mut r, &tag);
            let pid = built.as_ref().ok().map(|r| r.pid);
            let _ = done_tx.send(built.map_err(|e| e.to_string()));
            if let Some(pid) = pid {
                let ending = wait_ending(pid as i32);
                VIEWED_HOMES.lock().expect("viewed homes").remove(&pid);
                tracing::info!(pid, ?ending, "restarted process ended");
            }
            let _ = std::fs::remove_dir(guest_view_dir(&tag));
        })
        .map_err(|e| format!("the daemon cannot start a thread: {e}"))?;
    done_rx
        .await
        .unwrap_or_else(|_| Err("the restart thread died".into()))
}

/// Reads a checkpoint from `r` and rebuilds the process here; it runs once
/// this returns `Ok`.
fn rebuild(
    mig: &Migrations,
    node_id: u16,
    creds: &Creds,
    r: &mut PieceReader,
    tag: &str,
) -> Outcome<Restarted> {
    let header = read_header(r)?;
    if header.image_version != IMAGE_VERSION {
        return Err(CheckpointFailure::CannotRestart(format!(
            "its process image is version {}, this mosix restores version {IMAGE_VERSION}",
            header.image_version
        )));
    }
    let image = read_image(r).map_err(|e| CheckpointFailure::Corrupt(e.to_string()))?;
    may_become(creds, &image.creds).map_err(CheckpointFailure::Denied)?;
    // Pipes, sockets and ttys led to processes that are gone (or are not
    // this one's any more): reads see end of file, writes vanish.
    let mut notes = Vec::new();
    let mut kept: Vec<OwnedFd> = Vec::new();
    let mut replacements = Vec::new();
    for e in image.fds.entries.iter().filter(|e| e.kind.needs_relay()) {
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| CheckpointFailure::CannotRestart(format!("/dev/null: {e}")))?;
        let fd = OwnedFd::from(null);
        replacements.push(FdReplacement {
            fd: e.fd,
            from: fd.as_raw_fd(),
        });
        kept.push(fd);
        notes.push(format!(
            "fd {} (a {}) is /dev/null now",
            e.fd,
            e.kind.name()
        ));
    }
    // Its paths are its home's: elsewhere it sees the home's files at `/`,
    // as a migrated process does.
    if header.home != mig.name {
        enter_home_view(&header.home, tag).map_err(|e| {
            CheckpointFailure::CannotRestart(format!(
                "cannot see its home node {}'s files: {e}",
                header.home
            ))
        })?;
    }
    let opts = RestoreOptions {
        replacements,
        keep_pid: true,
        ..Default::default()
    };
    let restored =
        restore(&image, &mut StreamSource::new(&mut *r), &opts).map_err(|e| match e {
            mosix_migrator::RestoreError::Stream(s) => CheckpointFailure::Corrupt(s.to_string()),
            other => CheckpointFailure::CannotRestart(other.to_string()),
        })?;
    drop(kept);
    let pid = restored
        .run()
        .map_err(|e| CheckpointFailure::CannotRestart(e.to_string()))? as u32;
    if header.home != mig.name {
        VIEWED_HOMES
            .lock()
            .expect("viewed homes")
            .insert(pid, header.home.clone());
    }
    if pid as i32 != image.pid {
        notes.push(format!("pid {} was taken; it has pid {pid}", image.pid));
    }
    tracing::info!(pid, from = %header.home, old_gpid = header.gpid, "checkpoint restarted");
    Ok(Restarted {
        node: mig.name.clone(),
        pid,
        gpid: make_gpid(node_id, pid),
        notes,
    })
}

/// A node's request for a checkpoint or a restart, on its stream.
pub async fn serve_stream(
    mig: Arc<Migrations>,
    node_id: u16,
    peer: &mosix_net::Peer,
    req: Request,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    match req {
        Request::Checkpoint {
            creds,
            pid,
            guest_of,
            gpid,
            after,
        } => {
            // Only a home forwards a request for its own guest.
            if guest_of.as_deref().is_some_and(|h| *h != *peer.name) {
                let why = format!("{} cannot ask for another node's guests", peer.name);
                mosix_net::server::reject(&mut send, &mut recv, why).await;
                return;
            }
            let (tx, rx) = tokio::sync::mpsc::channel(PIECES_IN_FLIGHT);
            let producer =
                tokio::spawn(checkpoint_here(mig, creds, pid, guest_of, gpid, after, tx));
            pump_out(rx, &mut send).await;
            let _ = send.finish();
            let _ = tokio::time::timeout(PIECE_TIMEOUT, send.stopped()).await;
            producer.abort();
        }
        Request::Restart { creds } => {
            let (tx, rx) = tokio::sync::mpsc::channel(PIECES_IN_FLIGHT);
            let consumer = tokio::spawn(restart_here(mig, node_id, creds, rx));
            pump_in(&mut recv, tx).await;
            let answer = consumer.await.unwrap_or_else(|e| Err(e.to_string()));
            let _ = tokio::time::timeout(PIECE_TIMEOUT, write_frame(&mut send, &answer, MAX_FRAME))
                .await;
            let _ = send.finish();
            let _ = tokio::time::timeout(PIECE_TIMEOUT, send.stopped()).await;
        }
        _ => {}
    }
}

/// Writes the pieces from `rx` as frames until `End` or `Failed`; a stalled
/// reader fails the transfer (dropping `rx` makes the producer fail too).
async fn pump_out<W: AsyncWrite + Unpin>(mut rx: tokio::sync::mpsc::Receiver<Piece>, w: &mut W) {
    while let Some(p) = rx.recv().await {
        let last = !matches!(p, Piece::Data(_));
        let sent = tokio::time::timeout(PIECE_TIMEOUT, write_frame(w, &p, MAX_PIECE_FRAME)).await;
        if !matches!(sent, Ok(Ok(()))) || last {
            return;
        }
    }
}

/// Reads piece frames from `r` into `tx` until `End` or `Failed`; a reader
/// that stalls or breaks ends the file with `Failed`.
async fn pump_in<R: AsyncRead + Unpin>(r: &mut R, tx: tokio::sync::mpsc::Sender<Piece>) {
    loop {
        let next =
            tokio::time::timeout(PIECE_TIMEOUT, read_frame::<_, Piece>(r, MAX_PIECE_FRAME)).await;
        let piece = match next {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => Piece::Failed("the file ended early".into()),
            Ok(Err(e)) => Piece::Failed(format!("receiving the file: {e}")),
            Err(_) => Piece::Failed(format!("no part of the file came for {PIECE_TIMEOUT:?}")),
        };
        let last = !matches!(piece, Piece::Data(_));
        if tx.send(piece).await.is_err() || last {
            return;
        }
    }
}

/// The checkpoint as a byte stream, for a thread that writes it.
struct PieceWriter {
    tx: tokio::sync::mpsc::Sender<Piece>,
    buf: Vec<u8>,
}

impl PieceWriter {
    fn new(tx: tokio::sync::mpsc::Sender<Piece>) -> Self {
        PieceWriter {
            tx,
            buf: Vec::with_capacity(PIECE_BYTES),
        }
    }

    fn send_buf(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE_BYTES));
        self.tx.blocking_send(Piece::Data(data)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the receiver is gone")
        })
    }
}

impl Write for PieceWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(PIECE_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIECE_BYTES {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buf()
    }
}

/// The checkpoint as a byte stream, for a thread that reads it.
struct PieceReader {
    rx: tokio::sync::mpsc::Receiver<Piece>,
    cur: Vec<u8>,
    at: usize,
    ended: bool,
}

impl PieceReader {
    fn new(rx: tokio::sync::mpsc::Receiver<Piece>) -> Self {
        PieceReader {
            rx,
            cur: Vec::new(),
            at: 0,
            ended: false,
        }
    }
}

impl Read for PieceReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.cur.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(d)) => {
                    self.cur = d;
                    self.at = 0;
                }
                Some(Piece::End) => self.ended = true,
                Some(Piece::Failed(why)) => return Err(std::io::Error::other(why)),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file stopped arriving",
                    ))
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.at);
        out[..n].copy_from_slice(&self.cur[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(uid: u32, gid: u32, groups: Vec<u32>) -> Creds {
        Creds {
            uid,
            gid,
            groups,
            pid: 1,
        }
    }

    fn state(uid: u32, gid: u32) -> CredState {
        CredState {
            uids: [uid; 4],
            gids: [gid; 4],
            groups: vec![],
            cap_inh: 0,
            cap_prm: 0,
            cap_eff: 0,
            cap_bnd: !0,
            cap_amb: 0,
            no_new_privs: false,
            dumpable: 1,
            personality: 0,
        }
    }

    #[test]
    fn a_user_restarts_only_as_themselves() {
        assert!(may_become(&creds(1000, 1000, vec![]), &state(1000, 1000)).is_ok());
        assert!(may_become(&creds(0, 0, vec![]), &state(1000, 1000)).is_ok());
        let e = may_become(&creds(1001, 1001, vec![]), &state(1000, 1000)).unwrap_err();
        assert!(e.contains("uid 1000"), "{e}");
        // Someone else's group: only with it among the caller's own.
        assert!(may_become(&creds(1000, 1000, vec![]), &state(1000, 50)).is_err());
        assert!(may_become(&creds(1000, 1000, vec![50]), &state(1000, 50)).is_ok());
        // A setuid program's saved uid, or capabilities: root only.
        let mut s = state(1000, 1000);
        s.uids[2] = 0;
        assert!(may_become(&creds(1000, 1000, vec![]), &s).is_err());
        let mut s = state(1000, 1000);
        s.cap_prm = 1;
        assert!(may_become(&creds(1000, 1000, vec![]), &s).is_err());
    }

    #[test]
    fn pieces_carry_a_byte_stream_and_its_failure() {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let writer = std::thread::spawn(move || {
            let mut w = PieceWriter::new(tx.clone());
            let data: Vec<u8> = (0..3 * PIECE_BYTES + 17).map(|i| i as u8).collect();
            w.write_all(&data).unwrap();
            w.flush().unwrap();
            tx.blocking_send(Piece::End).unwrap();
            data
        });
        let mut r = PieceReader::new(rx);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, writer.join().unwrap());

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Piece::Data(vec![1, 2])).unwrap();
        tx.try_send(Piece::Failed("disk full".into())).unwrap();
        let mut r = PieceReader::new(rx);
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "disk full");
    }
}
