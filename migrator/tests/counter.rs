mod common;
use common::*;

/// The headline case: a process writing a sequence to a file and to a pipe
/// moves mid-run; the file has no gap and no repeat, the pipe keeps
/// flowing, and the copy exits with the original's exit code.
#[test]
fn counter_moves_without_gap() {
    require_root();
    let bin = compile("counter");
    let dir = tempfile::tempdir().unwrap();
    let n = 200;
    let prog = spawn(&bin, &[&n.to_string()], dir.path());
    for want in 1..=20 {
        assert_eq!(prog.line(10), want.to_string());
    }
    let m = migrate(prog.pid(), None).expect("migration");
    assert_ne!(m.pid, prog.pid());
    eprintln!(
        "counter: moved {} -> {} in {:?}, {} page bytes",
        prog.pid(),
        m.pid,
        m.freeze,
        m.bytes
    );
    // glibc registered rseq at startup; the copy must carry it.
    assert!(
        m.image.threads[0].rseq.is_some(),
        "glibc 2.36 registers rseq"
    );
    let code = wait_exit(m.pid, 60);
    let mut out: Vec<u32> = (1..=20).collect();
    out.extend(prog.rest(10).iter().map(|l| l.parse::<u32>().unwrap()));
    let want: Vec<u32> = (1..=n).collect();
    assert_eq!(out, want, "stdout sequence");
    assert_eq!(seq_file(&dir.path().join("seq.txt")), want, "file sequence");
    assert_eq!(code, 7);
}
