mod common;
use common::*;

/// A handler, a blocked signal and a pending instance of it all survive:
/// SIGUSR1 runs the handler in the copy, SIGUSR2 is still blocked and still
/// pending there.
#[test]
fn handlers_mask_and_pending_move() {
    require_root();
    let bin = compile("sig");
    let dir = tempfile::tempdir().unwrap();
    let prog = spawn(&bin, &[], dir.path());
    assert_eq!(prog.line(10), "ready");
    unsafe { libc::kill(prog.pid(), libc::SIGUSR2) };
    // Wait until the kernel shows it pending (the kill is asynchronous).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while u64::from_str_radix(&status_field(prog.pid(), "ShdPnd"), 16).unwrap() & (1 << 11) == 0 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let m = migrate(prog.pid(), None).expect("migration");
    let img = &m.image;
    assert_ne!(img.sig.actions[libc::SIGUSR1 as usize - 1].handler, 0);
    assert_ne!(img.threads[0].blocked & (1 << (libc::SIGUSR2 - 1)), 0);
    assert_eq!(img.sig.pending.len(), 1);
    let mask = u64::from_str_radix(&status_field(m.pid, "SigBlk"), 16).unwrap();
    assert_ne!(mask & (1 << (libc::SIGUSR2 - 1)), 0, "mask in the copy");
    unsafe { libc::kill(m.pid, libc::SIGUSR1) };
    assert_eq!(prog.line(10), "handler");
    assert_eq!(prog.line(10), "usr1 blocked=1 pending=1");
    assert_eq!(wait_exit(m.pid, 10), 0);
}
