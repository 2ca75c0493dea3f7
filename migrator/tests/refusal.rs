mod common;
use common::*;
use mosix_migrator::*;

/// A process holding a node-local device open is refused with a reason
/// naming the fd and the device, and is left running untouched.
#[test]
fn device_holder_is_refused_and_untouched() {
    require_root();
    let bin = compile("dev");
    let dir = tempfile::tempdir().unwrap();
    let mut prog = spawn(&bin, &["/dev/kmsg"], dir.path());
    assert_eq!(prog.line(10), "1");
    let pid = prog.pid();
    let err = check_movable(pid).unwrap_err();
    match &err {
        CantMove::DeviceOpen { fd, path } => {
            assert_eq!(*fd, 3);
            assert_eq!(path.to_str(), Some("/dev/kmsg"));
        }
        other => panic!("wrong reason: {other:?}"),
    }
    assert_eq!(err.errno(), libc::EBUSY);
    eprintln!("refused: {err}");
    let err = Checkpoint::take(pid).err().expect("take must refuse");
    assert!(
        matches!(err, CheckpointError::CantMove(CantMove::DeviceOpen { .. })),
        "{err:?}"
    );
    assert_eq!(err.errno(), libc::EBUSY);
    // Untouched: not traced, not stopped, still counting.
    assert_eq!(status_field(pid, "TracerPid"), "0");
    assert!(!status_field(pid, "State").starts_with('t'));
    let a: u32 = prog.line(10).parse().unwrap();
    let b: u32 = prog.line(10).parse().unwrap();
    assert_eq!(b, a + 1);
    prog.child.kill().unwrap();
    prog.child.wait().unwrap();
}

/// The other refusal reasons that are easy to set up from a test.
#[test]
fn other_refusals() {
    require_root();
    // Multi-threaded processes are no longer refused: see tests/threads.rs.
    assert!(matches!(
        check_movable(i32::MAX - 1),
        Err(CantMove::NoSuchProcess { .. })
    ));
    // Kernel thread: kthreadd is pid 2 on a normal boot.
    if std::fs::read_to_string("/proc/2/comm")
        .map(|c| c.trim() == "kthreadd")
        .unwrap_or(false)
    {
        assert!(matches!(
            check_movable(2),
            Err(CantMove::KernelThread { .. })
        ));
    }
    let bin = compile("dev");
    let dir = tempfile::tempdir().unwrap();
    type Want = fn(&CantMove) -> bool;
    let cases: [(&str, Want); 3] = [
        ("/dev/ptmx", |c| {
            matches!(c, CantMove::DeviceOpen { fd: 3, .. })
        }),
        ("socket", |c| matches!(c, CantMove::Socket { fd: 3, .. })),
        ("eventfd", |c| matches!(c, CantMove::EventFd { fd: 3 })),
    ];
    for (what, want) in cases {
        let mut prog = spawn(&bin, &[what], dir.path());
        assert_eq!(prog.line(10), "1");
        let got = check_movable(prog.pid()).unwrap_err();
        assert!(want(&got), "{what}: {got:?}");
        assert_eq!(
            got.errno(),
            if what == "/dev/ptmx" {
                libc::EBUSY
            } else {
                libc::EOPNOTSUPP
            }
        );
        prog.child.kill().unwrap();
        prog.child.wait().unwrap();
    }

    // Already traced: while one checkpoint holds it, nobody else may take it,
    // and dropping that checkpoint lets it run again.
    let mut prog = spawn(&bin, &["/dev/null"], dir.path());
    assert_eq!(prog.line(10), "1");
    check_movable(prog.pid()).expect("/dev/null is movable");
    let ck = Checkpoint::take(prog.pid()).unwrap();
    let got = check_movable(prog.pid()).unwrap_err();
    assert!(
        matches!(got, CantMove::AlreadyTraced { tracer } if tracer == unsafe { libc::gettid() }),
        "{got:?}"
    );
    assert!(matches!(
        Checkpoint::take(prog.pid()),
        Err(CheckpointError::CantMove(CantMove::AlreadyTraced { .. }))
    ));
    drop(ck);
    let a: u32 = prog.line(10).parse().unwrap();
    assert_eq!(prog.line(10).parse::<u32>().unwrap(), a + 1);
    prog.child.kill().unwrap();
    prog.child.wait().unwrap();
}
