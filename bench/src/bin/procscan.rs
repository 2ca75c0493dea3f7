//! procscan DIR: lists DIR like a /proc, reads every process's `stat` and
//! `status`, and prints "N processes in S seconds". The workload of
//! bench/procview/run, run the same way on a node's /proc and on /mosix/proc.
//!
//! procscan --round-trip PATH: the cost of one FUSE round trip, as the mean
//! time of 5,000 `lstat` calls on PATH (a /mosix file whose attributes the
//! kernel may not cache, answered from memory), printed in microseconds.
//!
//! procscan --requests DIR: the FUSE requests the process view's mount at
//! DIR has served so far, by kind (`total N`, then `kind N` lines), from
//! its `user.mosix.requests` extended attribute.
use std::time::Instant;

fn requests(dir: &str) -> String {
    use std::ffi::CString;
    let path = CString::new(dir).expect("path");
    let name = CString::new("user.mosix.requests").expect("name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: the buffer outlives the call, which writes at most its length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        panic!("getxattr {dir}: {}", std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    String::from_utf8_lossy(&buf).into_owned()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next().unwrap_or_else(|| "/proc".into());
    if first == "--requests" {
        print!("{}", requests(&args.next().expect("--requests DIR")));
        return;
    }
    if first == "--round-trip" {
        let path = args.next().expect("--round-trip PATH");
        const N: u32 = 5000;
        let start = Instant::now();
        for _ in 0..N {
            std::fs::symlink_metadata(&path).expect("lstat");
        }
        println!("{:.1}", start.elapsed().as_secs_f64() * 1e6 / f64::from(N));
        return;
    }
    let start = Instant::now();
    let mut n = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(&first).expect("listing").flatten() {
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
