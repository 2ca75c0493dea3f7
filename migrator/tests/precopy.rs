//! Pre-copy: memory copied in rounds while the process runs, dirty pages
//! tracked with an asynchronous write-protect userfaultfd and PAGEMAP_SCAN,
//! then a short freeze for the rest.
mod common;
use common::*;
use mosix_migrator::*;
use std::io::{BufReader, BufWriter};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Moved {
    pid: i32,
    rounds: Vec<RoundStats>,
    last: FinalStats,
    /// From the freeze to the copy being let run.
    freeze: Duration,
}

fn fds_of(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// Pre-copies `pid` to a restorer thread through a socketpair. With
/// `fail_round`, the restorer gives up when that round ends.
fn precopy_migrate(pid: i32, fail_round: Option<u32>) -> Result<Moved, String> {
    let mut pc = Precopy::start(pid).map_err(|e| format!("start: {e}"))?;
    assert!(
        !fds_of(pid).iter().any(|f| f.contains("userfaultfd")),
        "the tracking descriptor is not the process's"
    );
    let prelim = pc.image().clone();
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut reps = Vec::new();
    for e in prelim.fds.entries.iter().filter(|e| e.kind.needs_relay()) {
        let fd = grab_fd(pid, e.fd).unwrap();
        reps.push(FdReplacement {
            fd: e.fd,
            from: fd.as_raw_fd(),
        });
        held.push(fd);
    }
    let (a, b) = UnixStream::pair().unwrap();
    let (report_tx, report_rx) = mpsc::channel::<Result<(), String>>();
    let (go_tx, go_rx) = mpsc::channel::<bool>();
    let restorer = std::thread::spawn(move || -> Result<i32, String> {
        let mut r = BufReader::with_capacity(1 << 20, b);
        let Start::Precopy(prelim) = read_start(&mut r).map_err(|e| e.to_string())? else {
            return Err("not a pre-copy stream".into());
        };
        let opts = RestoreOptions {
            replacements: reps,
            ..Default::default()
        };
        let mut on_round = |n: u32| {
            if Some(n) == fail_round {
                Err(RestoreError::Unexpected(format!(
                    "told to fail at round {n}"
                )))
            } else {
                Ok(())
            }
        };
        match restore_precopy(&prelim, &mut r, &opts, &mut on_round) {
            Err(e) => {
                let msg = format!("restore: {e}");
                report_tx.send(Err(msg.clone())).unwrap();
                Err(msg)
            }
            Ok((restored, _)) => {
                report_tx.send(Ok(())).unwrap();
                if go_rx.recv().unwrap_or(false) {
                    restored.run().map_err(|e| e.to_string())
                } else {
                    restored.abort();
                    Err("aborted".into())
                }
            }
        }
    });
    let mut w = BufWriter::with_capacity(1 << 20, a);
    let sent = (|| -> Result<(Checkpoint, FinalStats, Instant), CheckpointError> {
        write_precopy_start(&mut w, &prelim)?;
        let mut sink = StreamSink::new(&mut w);
        loop {
            pc.round(&mut sink)?;
            if pc.should_stop() {
                break;
            }
        }
        let frozen_at = Instant::now();
        let ck = pc.freeze()?;
        write_image(sink.get_mut(), ck.image())?;
        let last = pc.send_final(&ck, &mut sink)?;
        Ok((ck, last, frozen_at))
    })();
    drop(w);
    let report = report_rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or(Err("restorer died".into()));
    drop(held);
    match (sent, report) {
        (Ok((ck, last, frozen_at)), Ok(())) => {
            ck.finish_source().map_err(|e| e.to_string())?;
            go_tx.send(true).unwrap();
            let pid = restorer.join().unwrap()?;
            Ok(Moved {
                pid,
                rounds: pc.rounds().to_vec(),
                last,
                freeze: frozen_at.elapsed(),
            })
        }
        (sent, report) => {
            let _ = go_tx.send(false);
            let _ = restorer.join();
            // Dropping the checkpoint (if any) and the tracker lets the
            // source run on untouched.
            drop(sent);
            drop(pc);
            Err(match report {
                Err(e) => e,
                Ok(()) => "sending failed".into(),
            })
        }
    }
}

fn start_dirty(mb: &str, rate: &str) -> (Prog, tempfile::TempDir) {
    let bin = compile("dirty");
    let dir = tempfile::tempdir().unwrap();
    let prog = spawn(&bin, &[mb, rate], dir.path());
    assert_eq!(prog.line(120), "ready");
    (prog, dir)
}

fn check_ok(prog: &Prog, pid: i32, mb: u64) {
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    let l = prog.line(60);
    assert!(
        l.starts_with(&format!("ok {} ", mb * 256)),
        "the program's own check of every page: {l}"
    );
    assert_eq!(wait_exit(pid, 30), 0);
}

/// A 128 MiB process writing 1 MiB/s moves after a few rounds; the freeze
/// carries only the last few pages, and every page is right in the copy.
#[test]
fn a_quiet_process_moves_with_a_short_freeze() {
    require_root();
    let (prog, _dir) = start_dirty("128", "1");
    let m = precopy_migrate(prog.pid(), None).expect("pre-copy migration");
    eprintln!(
        "quiet 128 MiB: rounds {:?}, last round {:?}, freeze {:?}",
        m.rounds, m.last, m.freeze
    );
    assert!(m.rounds[0].pages >= 128 * 256, "round 0 sends it all");
    assert!(m.rounds.len() >= 2);
    assert!(m.last.pages < 4096, "the last round is small: {:?}", m.last);
    check_ok(&prog, m.pid, 128);
}

/// Rewriting 64 MiB at 200 MiB/s: the dirty set stops shrinking, the
/// rounds end, and the full stop sends the rest; every page is right.
#[test]
fn a_process_dirtying_faster_than_the_copy_still_moves_intact() {
    require_root();
    let (prog, _dir) = start_dirty("64", "200");
    let m = precopy_migrate(prog.pid(), None).expect("pre-copy migration");
    eprintln!(
        "busy 64 MiB: rounds {:?}, last round {:?}, freeze {:?}",
        m.rounds, m.last, m.freeze
    );
    assert!(m.rounds.len() <= MAX_ROUNDS as usize);
    check_ok(&prog, m.pid, 64);
}

/// The target gives up at each round in turn: the source runs on, once, at
/// home, with no trace of the tracking, and is still intact.
#[test]
fn a_failure_at_any_round_leaves_the_source_running_untouched() {
    require_root();
    let (prog, _dir) = start_dirty("32", "20");
    for round in 0..3 {
        let e = precopy_migrate(prog.pid(), Some(round))
            .err()
            .expect("the migration fails");
        assert!(e.contains(&format!("round {round}")), "{e}");
        std::thread::sleep(Duration::from_millis(100));
        let st = status_field(prog.pid(), "State");
        assert!(st.starts_with('S') || st.starts_with('R'), "runs on: {st}");
        assert_eq!(status_field(prog.pid(), "TracerPid"), "0");
        assert!(!fds_of(prog.pid()).iter().any(|f| f.contains("userfaultfd")));
    }
    check_ok(&prog, prog.pid(), 32);
}
