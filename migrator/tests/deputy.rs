//! The deputy left at home: signals sent to it are seen (and kept from its
//! stale handlers), and it ends the way the copy ended, so its parent's
//! wait() gets the real status.
mod common;

use common::require_root;
use mosix_migrator::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A shell that starts a sleeper with a SIGUSR1 handler that would print,
/// and prints how the sleeper ended once it does. Returns the sleeper's pid.
fn parent_and_child() -> (
    std::process::Child,
    i32,
    BufReader<std::process::ChildStdout>,
) {
    let bin = common::compile("handler");
    let mut sh = Command::new("sh")
        .args([
            "-c",
            &format!("{} & wait $!; echo status=$?", bin.display()),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(sh.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    // Let it install its trap.
    std::thread::sleep(Duration::from_millis(200));
    (sh, pid, out)
}

fn next_event(d: &Deputy) -> DeputyEvent {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Some(e) = d.poll().unwrap() {
            return e;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no deputy event in 5 s");
}

fn deputy_of(pid: i32) -> Deputy {
    Checkpoint::take(pid)
        .unwrap()
        .keep_frozen()
        .into_deputy(&[])
        .unwrap()
}

#[test]
fn signals_reach_the_tracer_not_the_stale_handlers_and_the_exit_code_is_repeated() {
    require_root();
    let (mut sh, pid, mut out) = parent_and_child();
    let d = deputy_of(pid);
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(next_event(&d), DeputyEvent::Signal(libc::SIGUSR1));
    unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(next_event(&d), DeputyEvent::Signal(libc::SIGINT));
    // Still there, still parked.
    assert!(d.poll().unwrap().is_none());
    d.end_like(Ending::Exited(7)).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "status=7\n", "the handler must not have run");
    sh.wait().unwrap();
}

#[test]
fn a_signal_ending_is_repeated_even_over_a_handler() {
    require_root();
    let (mut sh, pid, mut out) = parent_and_child();
    let d = deputy_of(pid);
    d.end_like(Ending::Signaled(libc::SIGUSR1)).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, format!("status={}\n", 128 + libc::SIGUSR1));
    sh.wait().unwrap();
}

#[test]
fn sigkill_at_home_is_seen() {
    require_root();
    let (mut sh, pid, mut out) = parent_and_child();
    let d = deputy_of(pid);
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(next_event(&d), DeputyEvent::Killed(libc::SIGKILL));
    drop(d);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "status=137\n");
    sh.wait().unwrap();
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn the_deputy_gives_back_the_memory_the_copy_now_holds() {
    require_root();
    let bin = common::compile("mem");
    // A parent of its own, so its wait() sees how the deputy ends.
    let mut sh = Command::new("sh")
        .args([
            "-c",
            &format!("{} 128 & echo $!; wait $!; echo status=$?", bin.display()),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(sh.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready "), "{line}");
    let before = rss_kib(pid);
    assert!(
        before > 128 << 10,
        "the program holds its 128 MiB: {before} KiB"
    );
    let d = deputy_of(pid);
    let after = rss_kib(pid);
    eprintln!("mem 128: {before} KiB resident, {after} KiB as a deputy");
    assert!(after < 8 << 10, "the deputy still holds {after} KiB");
    // What ps shows of it at home is still there.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(
        cmdline,
        format!("{}\x00128\x00", bin.display()).into_bytes()
    );
    // Still a working deputy: signals are seen, and it ends as told.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    assert_eq!(next_event(&d), DeputyEvent::Signal(libc::SIGUSR2));
    d.end_like(Ending::Exited(3)).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "status=3\n", "the program must not have run on");
    sh.wait().unwrap();
}

/// Job control on a moved job: a stop sent to the deputy stops it for its
/// parent to see (and is reported for forwarding), SIGCONT wakes it, and
/// it still ends as told. The parent is Python, whose `waitpid` reports
/// stops and continues as a shell's does; like a shell's job, the program
/// has a process group of its own, so the kernel does not discard terminal
/// stops as it does for an orphaned group.
#[test]
fn a_terminal_stop_stops_the_deputy_for_its_parent_and_sigcont_wakes_it() {
    use std::os::unix::process::CommandExt;
    require_root();
    let bin = common::compile("handler");
    let parent = r#"
import os, subprocess, sys
p = subprocess.Popen([sys.argv[1]], stdout=subprocess.PIPE, process_group=0)
print(p.stdout.readline().decode().strip(), flush=True)
for _ in sys.stdin:
    _, st = os.waitpid(p.pid, os.WUNTRACED | os.WCONTINUED)
    if os.WIFSTOPPED(st):
        print("stopped", os.WSTOPSIG(st), flush=True)
    elif os.WIFCONTINUED(st):
        print("continued", flush=True)
    else:
        print("exited", os.waitstatus_to_exitcode(st), flush=True)
"#;
    let mut py = Command::new("python3")
        .args(["-c", parent, bin.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("python3");
    let mut ask = py.stdin.take().unwrap();
    let out = BufReader::new(py.stdout.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in out.lines() {
            let _ = tx.send(l.unwrap());
        }
    });
    let pid: i32 = lines
        .recv_timeout(Duration::from_secs(5))
        .expect("the parent prints the pid")
        .trim()
        .parse()
        .unwrap();
    let d = deputy_of(pid);
    // What the parent's waitpid reports next. The deputy is polled
    // meanwhile: settling a group-stop is its tracer's job.
    let mut parent_sees = |d: &Deputy| {
        use std::io::Write;
        writeln!(ask, "wait").unwrap();
        let start = Instant::now();
        loop {
            match lines.recv_timeout(Duration::from_millis(10)) {
                Ok(l) => return l,
                Err(_) => assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "the parent saw nothing in 5 s"
                ),
            }
            assert_eq!(d.poll().unwrap(), None);
        }
    };
    unsafe { libc::kill(pid, libc::SIGTSTP) };
    assert_eq!(next_event(&d), DeputyEvent::Signal(libc::SIGTSTP));
    assert_eq!(parent_sees(&d), format!("stopped {}", libc::SIGTSTP));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(next_event(&d), DeputyEvent::Signal(libc::SIGCONT));
    assert_eq!(parent_sees(&d), "continued");
    // A caught signal is still only reported, never run at home.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    assert_eq!(next_event(&d), DeputyEvent::Signal(libc::SIGUSR1));
    let exited = {
        use std::io::Write;
        d.end_like(Ending::Exited(4)).unwrap();
        writeln!(ask, "wait").unwrap();
        lines
            .recv_timeout(Duration::from_secs(5))
            .expect("the parent sees the end")
    };
    assert_eq!(exited, "exited 4");
    drop(ask);
    py.wait().unwrap();
}
