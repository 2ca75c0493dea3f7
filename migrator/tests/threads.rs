//! Multi-threaded processes move: every thread is frozen, captured and
//! re-created in the copy, mutexes and condition variables (futexes) keep
//! working, and threads blocked in a futex wait at the freeze wake up.
mod common;
use common::*;
use mosix_migrator::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn task_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Four pthreads adding to a counter under a mutex, with the main thread in
/// pthread_join, move twice mid-run (the second time from the copy); the
/// total comes out right and the progress lines have no gap or repeat.
#[test]
fn pthreads_with_a_mutex_move_twice() {
    require_root();
    let bin = compile("threads");
    let dir = tempfile::tempdir().unwrap();
    let n = 400;
    let prog = spawn(&bin, &["count", &n.to_string()], dir.path());
    assert_eq!(prog.line(10), "ready");
    let mut lines = vec![prog.line(10)];
    check_movable(prog.pid()).expect("threads are no reason to refuse");
    let m1 = migrate(prog.pid(), None).expect("first migration");
    assert_eq!(m1.image.threads.len(), 5, "main + 4 workers captured");
    let tids: Vec<i32> = m1.image.threads.iter().map(|c| c.tid).collect();
    assert_eq!(tids[0], prog.pid());
    // Each worker's TLS block (fs_base) is its own.
    let mut tls: Vec<u64> = m1.image.threads.iter().map(|c| c.regs.fs_base).collect();
    tls.sort();
    tls.dedup();
    assert_eq!(tls.len(), 5, "five distinct TLS bases");
    assert_eq!(task_count(m1.pid), 5, "five threads in the copy");
    eprintln!(
        "threads: moved {} -> {} in {:?} ({} threads)",
        prog.pid(),
        m1.pid,
        m1.freeze,
        m1.image.threads.len()
    );
    lines.push(prog.line(10));
    let m2 = migrate(m1.pid, None).expect("second migration");
    assert_eq!(m2.image.threads.len(), 5);
    assert_eq!(task_count(m2.pid), 5);
    let code = wait_exit(m2.pid, 60);
    lines.extend(prog.rest(20));
    assert_eq!(lines.last().map(String::as_str), Some("total 1600"));
    let progress: Vec<u32> = lines[..lines.len() - 1]
        .iter()
        .map(|l| l.strip_prefix("c ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(progress, (1..=16).map(|i| i * 100).collect::<Vec<_>>());
    assert_eq!(code, 0);
}

/// A thread blocked in pthread_cond_wait at the freeze (a futex wait the
/// kernel interrupted with -ERESTARTSYS) is still waiting in the copy and
/// wakes when the condition is signalled there; the main thread, which was
/// in a nanosleep loop, joins it.
#[test]
fn thread_blocked_in_cond_wait_wakes_after_restore() {
    require_root();
    let bin = compile("threads");
    let dir = tempfile::tempdir().unwrap();
    let prog = spawn(&bin, &["cond"], dir.path());
    assert_eq!(prog.line(10), "ready");
    // Let the waiter get from `waiting = 1` into the futex wait.
    std::thread::sleep(Duration::from_millis(100));
    let m = migrate(prog.pid(), None).expect("migration");
    assert_eq!(m.image.threads.len(), 2);
    let w = &m.image.threads[1];
    assert_eq!(w.regs.orig_rax, libc::SYS_futex as u64, "waiter in futex()");
    assert_eq!(w.regs.rax as i64, -512, "interrupted with -ERESTARTSYS");
    assert_eq!(task_count(m.pid), 2);
    // Still waiting in the copy: nothing printed without the signal.
    std::thread::sleep(Duration::from_millis(200));
    assert!(prog.lines.try_recv().is_err(), "woke without a signal");
    unsafe { libc::kill(m.pid, libc::SIGUSR1) };
    assert_eq!(prog.line(10), "woke 42");
    assert_eq!(prog.line(10), "joined");
    assert_eq!(wait_exit(m.pid, 10), 0);
}

/// CPython with `threading`: worker threads (each with its own thread
/// state, the GIL handed between them by condition variables with
/// timeouts) move mid-run and finish the job.
#[test]
fn python_threads_move() {
    require_root();
    let script = "import sys, threading, time\n\
        lock = threading.Lock()\n\
        out = []\n\
        def work(k):\n\
        \x20   for i in range(150):\n\
        \x20       with lock:\n\
        \x20           out.append((k, i))\n\
        \x20       time.sleep(0.004)\n\
        ts = [threading.Thread(target=work, args=(k,)) for k in range(3)]\n\
        for t in ts: t.start()\n\
        print('ready', flush=True)\n\
        while any(t.is_alive() for t in ts):\n\
        \x20   with lock:\n\
        \x20       print(len(out), flush=True)\n\
        \x20   time.sleep(0.02)\n\
        for t in ts: t.join()\n\
        for k in range(3):\n\
        \x20   assert [i for (kk, i) in out if kk == k] == list(range(150))\n\
        print('ok', len(out), threading.active_count(), flush=True)\n\
        sys.exit(7)\n";
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prog = Prog {
        lines: lines_of(child.stdout.take().unwrap()),
        child,
    };
    assert_eq!(prog.line(20), "ready");
    for _ in 0..3 {
        prog.line(20);
    }
    let m = migrate(prog.pid(), None).expect("migration");
    assert_eq!(m.image.threads.len(), 4, "interpreter + 3 workers");
    eprintln!("python threads: freeze {:?}", m.freeze);
    let code = wait_exit(m.pid, 60);
    let rest = prog.rest(20);
    assert_eq!(rest.last().map(String::as_str), Some("ok 450 1"));
    assert_eq!(code, 7);
}

fn tids_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    v.sort();
    v
}

/// Restored after the source is gone (pages kept in memory), with
/// `keep_pid`: the process gets its pid back and every thread its tid
/// (clone3 set_tid), and still computes the right total.
#[test]
fn threads_keep_their_tids_when_free() {
    require_root();
    let bin = compile("threads");
    let dir = tempfile::tempdir().unwrap();
    let prog = spawn(&bin, &["count", "300"], dir.path());
    assert_eq!(prog.line(10), "ready");
    let first = prog.line(10);
    let pid = prog.pid();
    let ck = Checkpoint::take(pid).unwrap();
    let image = ck.image().clone();
    let old_tids: Vec<i32> = image.threads.iter().map(|c| c.tid).collect();
    assert_eq!(old_tids.len(), 5);
    let mut pages = MemPages::new();
    ck.send_pages(&mut pages).unwrap();
    use std::os::fd::AsRawFd;
    let held: Vec<(i32, std::os::fd::OwnedFd)> = image
        .fds
        .entries
        .iter()
        .filter(|e| e.kind.needs_relay())
        .map(|e| (e.fd, ck.dup_source_fd(e.fd).unwrap()))
        .collect();
    ck.finish_source().unwrap();
    let opts = RestoreOptions {
        keep_pid: true,
        replacements: held
            .iter()
            .map(|(fd, h)| FdReplacement {
                fd: *fd,
                from: h.as_raw_fd(),
            })
            .collect(),
        ..Default::default()
    };
    let r = restore(&image, &mut pages, &opts).unwrap();
    drop(held);
    assert_eq!(r.pid(), pid, "old pid reused");
    let mut want = old_tids.clone();
    want.sort();
    assert_eq!(tids_of(pid), want, "every thread kept its tid");
    r.run().unwrap();
    assert_eq!(wait_exit(pid, 60), 0);
    let mut lines = vec![first];
    lines.extend(prog.rest(20));
    assert_eq!(lines.last().map(String::as_str), Some("total 1200"));
}

/// The deputy of a multi-threaded process: every thread is parked, a
/// signal sent to one particular thread (tgkill) or to the process is
/// reported whichever thread takes it, the program's handler never runs,
/// and the deputy ends with the copy's exit code.
#[test]
fn multithreaded_deputy_sees_signals_to_any_thread() {
    require_root();
    let bin = compile("threads");
    let dir = tempfile::tempdir().unwrap();
    // A shell is the parent, so the exit status goes to it (the tracer
    // would consume it if it were the parent itself).
    let sh = format!(
        "\"{}\" cond & echo pid=$!; wait $!; echo status=$?",
        bin.display()
    );
    let mut prog = spawn(Path::new("/bin/sh"), &["-c", &sh], dir.path());
    let mut pid = 0;
    for _ in 0..2 {
        let l = prog.line(10);
        if let Some(p) = l.strip_prefix("pid=") {
            pid = p.parse().unwrap();
        } else {
            assert_eq!(l, "ready");
        }
    }
    let d = Checkpoint::take(pid)
        .unwrap()
        .keep_frozen()
        .into_deputy(&[])
        .unwrap();
    let tids = tids_of(pid);
    assert_eq!(tids.len(), 2);
    let waiter = *tids.iter().find(|&&t| t != pid).unwrap();
    let next = || {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Some(e) = d.poll().unwrap() {
                return e;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no deputy event in 5 s");
    };
    unsafe { libc::syscall(libc::SYS_tgkill, pid, waiter, libc::SIGUSR1) };
    assert_eq!(next(), DeputyEvent::Signal(libc::SIGUSR1));
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    assert_eq!(next(), DeputyEvent::Signal(libc::SIGUSR2));
    assert!(d.poll().unwrap().is_none());
    d.end_like(Ending::Exited(7)).unwrap();
    assert_eq!(
        prog.rest(10),
        vec!["status=7".to_string()],
        "the handler must not have run (nothing woke)"
    );
    prog.child.wait().unwrap();
}

/// A restore that fails after the threads were created (fault injected at
/// the last step) leaves no stub behind, and the multi-threaded source,
/// resumed, finishes exactly once with the right total.
#[test]
fn failed_threaded_restore_resumes_all_source_threads() {
    require_root();
    let bin = compile("threads");
    let dir = tempfile::tempdir().unwrap();
    let mut prog = spawn(&bin, &["count", "200"], dir.path());
    assert_eq!(prog.line(10), "ready");
    let mut lines = vec![prog.line(10)];
    let err = migrate(prog.pid(), Some(RestoreStep::RegistersSet))
        .err()
        .expect("the restore must fail");
    assert!(err.contains("fault injection"), "{err}");
    // The source runs on, every thread of it.
    assert_eq!(status_field(prog.pid(), "TracerPid"), "0");
    lines.extend(prog.rest(30));
    assert_eq!(lines.last().map(String::as_str), Some("total 800"));
    let progress: Vec<u32> = lines[..lines.len() - 1]
        .iter()
        .map(|l| l.strip_prefix("c ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(progress, (1..=8).map(|i| i * 100).collect::<Vec<_>>());
    assert_eq!(prog.child.wait().unwrap().code(), Some(0));
}
