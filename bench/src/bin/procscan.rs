//! procscan DIR: lists DIR like a /proc, reads every process's `stat` and
//! `status`, and prints "N processes in S seconds". The workload of
//! bench/procview/run, run the same way on a node's /proc and on /mosix/proc.
use std::time::Instant;

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "/proc".into());
    let start = Instant::now();
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(&dir).expect("listing").flatten() {
        let name = e.file_name();
        if !name
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        // A process may end in between: that is not an error.
        let stat = std::fs::read(e.path().join("stat"));
        let status = std::fs::read(e.path().join("status"));
        if let (Ok(a), Ok(b)) = (stat, status) {
            n += 1;
            bytes += a.len() + b.len();
        }
    }
    println!(
        "{n} processes ({bytes} bytes) in {:.4} seconds",
        start.elapsed().as_secs_f64()
    );
}
