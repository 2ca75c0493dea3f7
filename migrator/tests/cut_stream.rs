//! Its own test binary: `failure.rs` asserts the test process has no
//! children left, which a concurrently running test would disturb.
mod common;
use common::*;

/// The connection dies in the middle of the page stream: the restorer sees
/// a truncated stream and kills its stub, the source resumes and finishes.
#[test]
fn cut_stream_resumes_source() {
    require_root();
    let bin = compile("counter");
    let dir = tempfile::tempdir().unwrap();
    let n = 60;
    let mut prog = spawn(&bin, &[&n.to_string()], dir.path());
    for want in 1..=10 {
        assert_eq!(prog.line(10), want.to_string());
    }
    let err = migrate_with(prog.pid(), None, Some(20_000))
        .err()
        .expect("must fail");
    assert!(err.contains("restore"), "{err}");
    assert_eq!(status_field(prog.pid(), "TracerPid"), "0");
    assert_eq!(prog.child.wait().unwrap().code(), Some(7));
    let mut out: Vec<u32> = (1..=10).collect();
    out.extend(prog.rest(10).iter().map(|l| l.parse::<u32>().unwrap()));
    let want: Vec<u32> = (1..=n).collect();
    assert_eq!(out, want);
    assert_eq!(seq_file(&dir.path().join("seq.txt")), want);
}
