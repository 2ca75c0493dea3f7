mod common;
use common::*;
use mosix_migrator::RestoreStep;

/// A restore that fails midway leaves the source to continue where it was:
/// it runs to completion exactly once (gap-free, no repeats), and the stub
/// is gone.
#[test]
fn failed_restore_resumes_source() {
    require_root();
    let bin = compile("counter");
    let dir = tempfile::tempdir().unwrap();
    let n = 120;
    let mut prog = spawn(&bin, &[&n.to_string()], dir.path());
    for want in 1..=10 {
        assert_eq!(prog.line(10), want.to_string());
    }
    for step in [
        RestoreStep::StubCreated,
        RestoreStep::PagesWritten,
        RestoreStep::FdsRestored,
        RestoreStep::RegistersSet,
    ] {
        let err = migrate(prog.pid(), Some(step)).err().expect("must fail");
        assert!(err.contains("fault injection"), "{err}");
        // Running again after each failure.
        assert_eq!(status_field(prog.pid(), "TracerPid"), "0");
    }
    let st = prog.child.wait().unwrap();
    assert_eq!(st.code(), Some(7));
    let mut out: Vec<u32> = (1..=10).collect();
    out.extend(prog.rest(10).iter().map(|l| l.parse::<u32>().unwrap()));
    let want: Vec<u32> = (1..=n).collect();
    assert_eq!(out, want);
    assert_eq!(seq_file(&dir.path().join("seq.txt")), want);
    // No stub survived: the test process has no children left at all.
    let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    assert_eq!(
        (r, errno),
        (-1, Some(libc::ECHILD)),
        "a stub is still around"
    );
}
