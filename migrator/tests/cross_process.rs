//! Checkpoint in this process, restore in another one, with image and pages
//! going through a socketpair between them — the shape of a source and a
//! target daemon, minus the network.

mod common;
use common::*;
use mosix_migrator::*;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

const FD_VAR: &str = "MOSIX_MIGRATOR_HELPER_FD";

#[test]
fn restore_in_another_process() {
    require_root();
    let bin = compile("counter");
    let dir = tempfile::tempdir().unwrap();
    let n = 150;
    let prog = spawn(&bin, &[&n.to_string()], dir.path());
    let mut out: Vec<u32> = Vec::new();
    for _ in 0..10 {
        out.push(prog.line(10).parse().unwrap());
    }

    let (ours, theirs) = UnixStream::pair().unwrap();
    // The helper inherits `theirs`: clear close-on-exec on it.
    unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFD, 0) };
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "restorer_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FD_VAR, theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    drop(theirs);

    let ck = Checkpoint::take(prog.pid()).expect("checkpoint");
    let mut w = BufWriter::with_capacity(1 << 20, &ours);
    write_image(&mut w, ck.image()).unwrap();
    let bytes = ck.send_pages(&mut StreamSink::new(&mut w)).unwrap();
    drop(w);
    let mut verdict = [0u8; 1];
    (&ours).read_exact(&mut verdict).unwrap();
    assert_eq!(&verdict, b"R", "helper failed to restore");
    ck.finish_source().unwrap();
    (&ours).write_all(b"G").unwrap();
    let mut code = [0u8; 1];
    (&ours).read_exact(&mut code).unwrap();
    assert!(helper.wait().unwrap().success(), "helper process failed");
    eprintln!("moved to another process, {bytes} page bytes");

    out.extend(prog.rest(10).iter().map(|l| l.parse::<u32>().unwrap()));
    let want: Vec<u32> = (1..=n).collect();
    assert_eq!(out, want);
    assert_eq!(seq_file(&dir.path().join("seq.txt")), want);
    assert_eq!(code[0], 7, "the copy's exit code, as seen by its parent");
}

/// Runs in the helper process only (spawned by the test above).
#[test]
#[ignore = "helper process for restore_in_another_process"]
fn restorer_helper() {
    let fd: i32 = std::env::var(FD_VAR)
        .expect("only run by restore_in_another_process")
        .parse()
        .unwrap();
    let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut r = BufReader::with_capacity(1 << 20, &sock);
    let image = read_image(&mut r).unwrap();
    // Pipe ends come straight from the (frozen) source.
    let held: Vec<(i32, OwnedFd)> = image
        .fds
        .entries
        .iter()
        .filter(|e| e.kind.needs_relay())
        .map(|e| (e.fd, grab_fd(image.pid, e.fd).unwrap()))
        .collect();
    let opts = RestoreOptions {
        replacements: held
            .iter()
            .map(|(fd, h)| FdReplacement {
                fd: *fd,
                from: h.as_raw_fd(),
            })
            .collect(),
        ..Default::default()
    };
    let restored = match restore(&image, &mut StreamSource::new(&mut r), &opts) {
        Ok(x) => x,
        Err(e) => {
            let _ = (&sock).write_all(b"F");
            panic!("restore: {e}");
        }
    };
    drop(held);
    (&sock).write_all(b"R").unwrap();
    let mut go = [0u8; 1];
    (&sock).read_exact(&mut go).unwrap();
    assert_eq!(&go, b"G");
    let pid = restored.run().unwrap();
    let code = wait_exit(pid, 60);
    (&sock).write_all(&[code as u8]).unwrap();
}
