//! A job-control-stopped (SIGSTOP) process is refused — a stopped task
//! would re-enter its stop in the middle of injected syscalls — and left
//! stopped; SIGCONT from its owner works as before and it runs on once.
mod common;
use common::*;
use mosix_migrator::*;

#[test]
fn stopped_process_is_refused_and_stays_stopped() {
    require_root();
    let bin = compile("counter");
    let dir = tempfile::tempdir().unwrap();
    let mut prog = spawn(&bin, &["100"], dir.path());
    assert_eq!(prog.line(10), "1");
    unsafe { libc::kill(prog.pid(), libc::SIGSTOP) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !status_field(prog.pid(), "State").starts_with('T') {
        assert!(std::time::Instant::now() < deadline, "never stopped");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(check_movable(prog.pid()), Err(CantMove::Stopped));
    let err = Checkpoint::take(prog.pid()).err().expect("refused");
    assert!(
        matches!(err, CheckpointError::CantMove(CantMove::Stopped)),
        "{err:?}"
    );
    assert_eq!(err.errno(), libc::EAGAIN);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        status_field(prog.pid(), "State").starts_with('T'),
        "still stopped"
    );
    assert_eq!(status_field(prog.pid(), "TracerPid"), "0");
    unsafe { libc::kill(prog.pid(), libc::SIGCONT) };
    let mut out = vec![1u32];
    out.extend(prog.rest(20).iter().map(|l| l.parse::<u32>().unwrap()));
    assert_eq!(out, (1..=100).collect::<Vec<_>>());
    assert_eq!(prog.child.wait().unwrap().code(), Some(7));
}
