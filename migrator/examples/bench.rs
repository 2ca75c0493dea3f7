//! Freeze time of a same-node migration (checkpoint, stream over a
//! socketpair to a restorer thread, restore, kill source, run copy) for a
//! process holding 64 MiB and 256 MiB of touched anonymous memory.
//!
//!     cargo run --release -p mosix-migrator --example bench   (as root)

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;

fn main() {
    require_root();
    let bin = compile("mem");
    let dir = tempfile::tempdir().unwrap();
    println!("size_mib  freeze_ms  take_ms  pages_mib  MiB/s(freeze)");
    for mb in [1u64, 64, 256] {
        for _ in 0..3 {
            let prog = spawn(&bin, &[&mb.to_string()], dir.path());
            let ready = prog.line(120);
            let sum = ready.strip_prefix("ready ").unwrap().to_string();
            let m = migrate(prog.pid(), None).expect("migration");
            unsafe { libc::kill(m.pid, libc::SIGUSR2) };
            assert_eq!(prog.line(120), format!("ok {sum}"));
            assert_eq!(wait_exit(m.pid, 60), 0);
            let f = m.freeze.as_secs_f64();
            println!(
                "{mb:8}  {:9.1}  {:7.1}  {:9}  {:13.0}",
                f * 1e3,
                m.take.as_secs_f64() * 1e3,
                m.bytes >> 20,
                (m.bytes >> 20) as f64 / f
            );
        }
    }
}
