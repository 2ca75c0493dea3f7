mod common;
use common::*;

/// 256 MiB of patterned anonymous memory survives the move; the program
/// verifies every word itself after the restore.
#[test]
fn big_memory_moves_intact() {
    require_root();
    let bin = compile("mem");
    let dir = tempfile::tempdir().unwrap();
    let prog = spawn(&bin, &["256"], dir.path());
    let ready = prog.line(60);
    let sum = ready
        .strip_prefix("ready ")
        .expect("ready line")
        .to_string();
    let m = migrate(prog.pid(), None).expect("migration");
    eprintln!(
        "mem 256 MiB: freeze {:?}, {} MiB of pages",
        m.freeze,
        m.bytes >> 20
    );
    assert!(m.bytes >= 256 << 20, "all 256 MiB travelled: {}", m.bytes);
    unsafe { libc::kill(m.pid, libc::SIGUSR2) };
    assert_eq!(prog.line(60), format!("ok {sum}"));
    assert_eq!(wait_exit(m.pid, 30), 0);
}
