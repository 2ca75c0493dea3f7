//! `mosix checkpoint` and `mosix restart`: a process to a file and back.
//! This command reads and writes the file itself, so the file is the
//! user's, at the path the user gave, with the user's permissions; the
//! daemon only carries it to and from the node the process is on.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use mosix_daemon::control::{CONTROL_TIMEOUT, MAX_CONTROL_FRAME};
use mosix_daemon::migrate::checkpoint::PIECE_TIMEOUT;
use mosix_proto::checkpoint::{read_header, AfterCheckpoint, Piece, MAX_PIECE_FRAME, PIECE_BYTES};
use mosix_proto::{read_frame, write_frame, ControlRequest, ControlResponse, MAX_FRAME};
use tokio::net::UnixStream;

/// How long this command waits for the daemon at each step: the daemon's
/// own bound on a piece, plus a margin for it to report that it gave up.
const STEP: Duration = Duration::from_secs(PIECE_TIMEOUT.as_secs() + 10);

async fn connect(control: &Path) -> anyhow::Result<UnixStream> {
    tokio::time::timeout(CONTROL_TIMEOUT, UnixStream::connect(control))
        .await
        .map_err(|_| anyhow::anyhow!("the mosix daemon at {} did not answer", control.display()))?
        .with_context(|| format!("cannot reach the mosix daemon at {}", control.display()))
}

/// The file being written, removed unless it is completed.
struct Partial {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Saves process `gpid` to `file`.
pub async fn checkpoint(
    control: &Path,
    gpid: u32,
    file: &Path,
    after: AfterCheckpoint,
) -> anyhow::Result<i32> {
    // Written beside the target and renamed at the end, so FILE is either
    // a whole checkpoint or what it was before.
    let name = file
        .file_name()
        .with_context(|| format!("{}: not a file name", file.display()))?;
    let tmp = file.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        // It holds the process's memory.
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut partial = Partial {
        path: tmp,
        file: Some(f),
    };
    let mut s = connect(control).await?;
    write_frame(
        &mut s,
        &ControlRequest::Checkpoint { gpid, after },
        MAX_CONTROL_FRAME,
    )
    .await?;
    let mut bytes = 0u64;
    loop {
        let piece = tokio::time::timeout(STEP, read_frame::<_, Piece>(&mut s, MAX_PIECE_FRAME))
            .await
            .map_err(|_| anyhow::anyhow!("the daemon sent nothing for {STEP:?}"))?
            .context("receiving the checkpoint")?;
        match piece {
            Some(Piece::Data(d)) => {
                bytes += d.len() as u64;
                let f = partial.file.as_mut().expect("open");
                f.write_all(&d)
                    .with_context(|| format!("writing {}", partial.path.display()))?;
            }
            Some(Piece::End) => break,
            Some(Piece::Failed(why)) => bail!("cannot checkpoint {gpid}: {why}"),
            None => bail!("cannot checkpoint {gpid}: the daemon closed the connection early"),
        }
    }
    let f = partial.file.as_ref().expect("open");
    f.sync_all()
        .with_context(|| format!("writing {}", partial.path.display()))?;
    std::fs::rename(&partial.path, file)
        .with_context(|| format!("renaming to {}", file.display()))?;
    partial.file = None;
    let then = match after {
        AfterCheckpoint::Run => "it goes on running",
        AfterCheckpoint::Stop => "it is stopped (kill -CONT resumes it)",
        AfterCheckpoint::Kill => "it was killed",
    };
    outln!(
        "{gpid}: checkpointed to {} ({:.1} MiB); {then}",
        file.display(),
        bytes as f64 / (1 << 20) as f64
    );
    Ok(0)
}

/// Restarts the checkpoint in `file` on this node, or on node `on`.
pub async fn restart(control: &Path, file: &Path, on: Option<&str>) -> anyhow::Result<i32> {
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    // Refused here, at once, if it is not a checkpoint this mosix reads;
    // the daemon checks again, as it trusts no file.
    let header = read_header(&mut f).with_context(|| format!("{}", file.display()))?;
    let mut f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut s = connect(control).await?;
    write_frame(
        &mut s,
        &ControlRequest::Restart {
            on: on.map(str::to_string),
        },
        MAX_CONTROL_FRAME,
    )
    .await?;
    let (mut rd, mut wr) = s.into_split();
    // The daemon may answer before the whole file went (a refusal after
    // the header): the answer is read alongside the sending; once the
    // file went, within STEP.
    let send = async move {
        let mut buf = vec![0u8; PIECE_BYTES];
        loop {
            let n = match f.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let p = Piece::Failed(format!("reading {}: {e}", file.display()));
                    let _ = write_frame(&mut wr, &p, MAX_PIECE_FRAME).await;
                    return wr;
                }
            };
            let p = if n == 0 {
                Piece::End
            } else {
                Piece::Data(buf[..n].to_vec())
            };
            let sent = tokio::time::timeout(STEP, write_frame(&mut wr, &p, MAX_PIECE_FRAME)).await;
            if n == 0 || !matches!(sent, Ok(Ok(()))) {
                // Kept open until the answer is read.
                return wr;
            }
        }
    };
    let mut answer = std::pin::pin!(read_frame::<_, ControlResponse>(&mut rd, MAX_FRAME));
    let mut _wr = None;
    let early = tokio::select! {
        a = &mut answer => Some(a),
        wr = send => {
            _wr = Some(wr);
            None
        }
    };
    let answer = match early {
        Some(a) => a,
        None => tokio::time::timeout(STEP, answer)
            .await
            .map_err(|_| anyhow::anyhow!("the daemon did not answer within {STEP:?}"))?,
    }
    .context("reading the daemon's answer")?;
    match answer {
        Some(ControlResponse::Restarted(r)) => {
            outln!(
                "{}: restarted on {} (pid {}) from {} (gpid {} of {})",
                r.gpid,
                r.node,
                r.pid,
                file.display(),
                header.gpid,
                header.home
            );
            for n in r.notes {
                eprintln!("mosix restart: {n}");
            }
            Ok(0)
        }
        Some(ControlResponse::Error(e)) => bail!("cannot restart {}: {e}", file.display()),
        Some(other) => bail!("unexpected answer from the daemon: {other:?}"),
        None => bail!("the daemon closed the connection without answering"),
    }
}
