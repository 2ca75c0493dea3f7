//! Shared test plumbing: compile the C test programs, read their output with
//! timeouts, and migrate a process over a socketpair between two threads —
//! the checkpointing thread and the restoring thread each own their ptrace
//! relationship, like a source and a target daemon would.
#![allow(dead_code)]

use mosix_migrator::*;
use std::io::{BufRead, BufReader, BufWriter};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn require_root() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root (ptrace, PR_SET_MM_MAP)"
    );
}

/// Compile tests/c/<name>.c once per test process, into cargo's per-target
/// temp dir when there is one (so repeated runs don't litter /tmp). One
/// executable per process: replacing a binary another test is running would
/// turn its exe mapping into a deleted file, which the migrator (rightly)
/// refuses to move. Copies left by finished processes are removed.
pub fn compile(name: &str) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap();
    if let Some(p) = built.get_or_insert_with(HashMap::new).get(name) {
        return p.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/c/{name}.c"));
    let dir = Path::new(option_env!("CARGO_TARGET_TMPDIR").unwrap_or("/tmp")).join("migrator-c");
    std::fs::create_dir_all(&dir).unwrap();
    // Executable by unprivileged test programs too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = f.strip_prefix(&format!("{name}.")) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let out = dir.join(format!("{name}.{}", std::process::id()));
    let st = Command::new("cc")
        .args(["-O1", "-Wall", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(st.success(), "compiling {name}.c");
    built
        .as_mut()
        .unwrap()
        .insert(name.to_string(), out.clone());
    out
}

pub struct Prog {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

pub fn spawn(bin: &Path, args: &[&str], cwd: &Path) -> Prog {
    spawn_cmd(Command::new(bin), args, cwd)
}

/// Run as an unprivileged user.
pub fn spawn_as(bin: &Path, args: &[&str], cwd: &Path, uid: u32, gid: u32) -> Prog {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(bin);
    c.uid(uid).gid(gid);
    spawn_cmd(c, args, cwd)
}

fn spawn_cmd(mut cmd: Command, args: &[&str], cwd: &Path) -> Prog {
    let mut child = cmd
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    Prog {
        child,
        lines: reader(out),
    }
}

pub fn lines_of(out: ChildStdout) -> mpsc::Receiver<String> {
    reader(out)
}

fn reader(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl Prog {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Next line, or panic after `secs`.
    pub fn line(&self, secs: u64) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(secs))
            .expect("no output line in time")
    }
    /// All remaining lines until EOF (every writer closed).
    pub fn rest(&self, secs: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut v = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => v.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => return v,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("output did not end in time"),
            }
        }
    }
}

/// Wait for a child (restored processes are children of the test process).
pub fn wait_exit(pid: i32, secs: u64) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut st = 0;
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        assert!(r >= 0, "waitpid {pid}: {}", std::io::Error::last_os_error());
        if r == pid {
            if libc::WIFEXITED(st) {
                return libc::WEXITSTATUS(st);
            }
            if libc::WIFSIGNALED(st) {
                return 128 + libc::WTERMSIG(st);
            }
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not exit in time"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct Migrated {
    pub pid: i32,
    /// From freezing the source to the copy being let run.
    pub freeze: Duration,
    /// Of which: `Checkpoint::take` (seize, injected queries, /proc reads).
    pub take: Duration,
    pub bytes: u64,
    pub image: ProcessImage,
}

/// Checkpoint `pid` here, stream image and pages through a socketpair to a
/// restorer thread, and on success kill the source and run the copy. On
/// failure the source is resumed and the error returned.
pub fn migrate(pid: i32, fail_at: Option<RestoreStep>) -> Result<Migrated, String> {
    migrate_with(pid, fail_at, None)
}

/// A writer that fails once `left` bytes went through: a cut connection.
struct Cut<W> {
    w: W,
    left: Option<u64>,
}

impl<W: std::io::Write> std::io::Write for Cut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.left {
            Some(0) => Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            Some(n) => {
                let k = self.w.write(&buf[..buf.len().min(n as usize)])?;
                self.left = Some(n - k as u64);
                Ok(k)
            }
            None => self.w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// `migrate`, optionally cutting the stream after `cut_after` bytes.
pub fn migrate_with(
    pid: i32,
    fail_at: Option<RestoreStep>,
    cut_after: Option<u64>,
) -> Result<Migrated, String> {
    let t0 = Instant::now();
    let ck = Checkpoint::take(pid).map_err(|e| format!("checkpoint: {e}"))?;
    let take = t0.elapsed();
    let image = ck.image().clone();
    // Pipe/tty ends go to the copy as replacements (what the deputy will
    // relay across nodes).
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut reps = Vec::new();
    for e in &image.fds.entries {
        if e.kind.needs_relay() {
            let fd = ck
                .dup_source_fd(e.fd)
                .map_err(|e| format!("pidfd_getfd: {e}"))?;
            reps.push(FdReplacement {
                fd: e.fd,
                from: fd.as_raw_fd(),
            });
            held.push(fd);
        }
    }
    let (a, b) = UnixStream::pair().unwrap();
    let (report_tx, report_rx) = mpsc::channel::<Result<(), String>>();
    let (go_tx, go_rx) = mpsc::channel::<bool>();
    let restorer = std::thread::spawn(move || -> Result<i32, String> {
        let mut r = std::io::BufReader::with_capacity(1 << 20, b);
        let image = read_image(&mut r).map_err(|e| e.to_string())?;
        let mut src = StreamSource::new(r);
        let opts = RestoreOptions {
            replacements: reps,
            fail_at,
            ..Default::default()
        };
        let res = restore(&image, &mut src, &opts);
        match res {
            Err(e) => {
                let msg = format!("restore: {e}");
                report_tx.send(Err(msg.clone())).unwrap();
                Err(msg)
            }
            Ok(restored) => {
                report_tx.send(Ok(())).unwrap();
                if go_rx.recv().unwrap_or(false) {
                    restored.run().map_err(|e| e.to_string())
                } else {
                    restored.abort();
                    Err("aborted".into())
                }
            }
        }
    });
    let mut w = BufWriter::with_capacity(
        1 << 20,
        Cut {
            w: a,
            left: cut_after,
        },
    );
    let sent = write_image(&mut w, &image)
        .map_err(CheckpointError::from)
        .and_then(|_| {
            let mut sink = StreamSink::new(&mut w);
            ck.send_pages(&mut sink)
        });
    drop(w);
    let report = report_rx.recv().unwrap_or(Err("restorer died".into()));
    drop(held);
    match (sent, report) {
        (Ok(bytes), Ok(())) => {
            ck.finish_source().map_err(|e| e.to_string())?;
            go_tx.send(true).unwrap();
            let pid = restorer.join().unwrap()?;
            Ok(Migrated {
                pid,
                freeze: t0.elapsed(),
                take,
                bytes,
                image,
            })
        }
        (sent, report) => {
            let _ = go_tx.send(false);
            let _ = restorer.join();
            ck.resume_source().map_err(|e| e.to_string())?;
            // The restorer's reason first: a sender error is usually just
            // the broken pipe its failure caused.
            Err(match (sent, report) {
                (_, Err(e)) => e,
                (Err(e), _) => format!("sending: {e}"),
                _ => unreachable!(),
            })
        }
    }
}

/// Lines of a file as numbers.
pub fn seq_file(p: &Path) -> Vec<u32> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

pub fn status_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}
