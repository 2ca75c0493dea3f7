//! Harness for end-to-end tests: starts real local clusters with the real
//! `mosix` binary (`mosix up`), runs commands inside nodes (`mosix enter`) and
//! stops them again (`mosix down`, also on panic).
//!
//! Tests need root and namespaces. Without them they fail with a message that
//! says what is missing; they never pass silently.
use std::fs::File;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mosix_proto::MemberInfo;

pub mod guests;
pub mod machine;

/// The `mosix` binary under test: `$MOSIX_BIN`, or the one cargo built next
/// to this test binary.
pub fn mosix_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MOSIX_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/mosix
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("mosix"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p mosix`) or set MOSIX_BIN",
        bin.display()
    );
    bin
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests start real clusters in namespaces and must run as root"
    );
}

pub fn output_text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that a command failed and said `needle` on stderr.
#[track_caller]
pub fn assert_fails_saying(out: &Output, needle: &str) {
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(needle),
        "expected a failure saying {needle:?}: {}",
        output_text(out)
    );
}

pub struct Cluster {
    pub nodes: usize,
    state: tempfile::TempDir,
}

impl Cluster {
    pub fn up(nodes: usize) -> Cluster {
        require_root();
        let state = tempfile::Builder::new()
            .prefix("mosix-test-")
            .tempdir()
            .expect("state dir");
        let out = Command::new(mosix_bin())
            .args(["up", "--nodes", &nodes.to_string(), "--state"])
            .arg(state.path())
            .output()
            .expect("running mosix up");
        let c = Cluster { nodes, state };
        assert!(
            out.status.success(),
            "mosix up failed: {}",
            output_text(&out)
        );
        c
    }

    pub fn state(&self) -> &Path {
        self.state.path()
    }

    pub fn certs(&self) -> PathBuf {
        self.state().join("certs")
    }

    /// Runs `args` inside `node`.
    pub fn enter(&self, node: &str, args: &[&str]) -> Output {
        Command::new(mosix_bin())
            .arg("enter")
            .arg("--state")
            .arg(self.state())
            .arg(node)
            .arg("--")
            .args(args)
            .output()
            .expect("running mosix enter")
    }

    /// Runs a shell script inside `node`; panics unless it succeeds.
    pub fn sh(&self, node: &str, script: &str) -> String {
        let out = self.enter(node, &["sh", "-c", script]);
        assert!(
            out.status.success(),
            "script on {node} failed: {script}\n{}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `mosix status --json` as seen from `node`.
    pub fn status(&self, node: &str) -> Vec<MemberInfo> {
        let bin = mosix_bin();
        let out = self.enter(node, &[bin.to_str().unwrap(), "status", "--json"]);
        assert!(
            out.status.success(),
            "status on {node}: {}",
            output_text(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        serde_json::from_value(v["members"].clone()).expect("members")
    }

    fn pid_file(&self, node: &str, file: &str) -> i32 {
        let p = self.state().join("nodes").join(node).join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .expect("pid")
    }

    /// Host pid of the node's init (PID 1 inside the node).
    pub fn init_pid(&self, node: &str) -> i32 {
        self.pid_file(node, "init.pid")
    }

    /// Kills the node's daemon with SIGKILL, as a crash would, and returns
    /// once it is gone: a request the dying daemon had already taken fails
    /// with ECONNABORTED, later ones with ENOTCONN.
    pub fn kill_daemon(&self, node: &str) {
        let pid = self.pid_file(node, "daemon.pid");
        self.sh(
            node,
            &format!("kill -KILL {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.01; done"),
        );
    }

    /// The node's daemon pid, as the node sees it.
    pub fn daemon_pid(&self, node: &str) -> i32 {
        self.pid_file(node, "daemon.pid")
    }

    /// Kills the node's daemon with SIGKILL and starts a new one at once,
    /// as systemd's `Restart=` would (with no delay).
    pub fn restart_daemon(&self, node: &str) {
        let pid = self.daemon_pid(node);
        let dir = self.state().join("nodes").join(node);
        let script = format!(
            "kill -KILL {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.01; done; \
             {bin} daemon --config {cfg} >> {log} 2>&1 < /dev/null & echo $! > {pidf}",
            bin = mosix_bin().display(),
            cfg = dir.join("config.toml").display(),
            log = dir.join("node.log").display(),
            pidf = dir.join("daemon.pid").display(),
        );
        self.sh(node, &script);
    }

    pub fn addr(&self, node: &str) -> std::net::SocketAddr {
        let i: u8 = node.trim_start_matches('n').parse().expect("node index");
        format!("127.0.0.{i}:7700").parse().unwrap()
    }

    /// A UDP socket bound inside the cluster's network namespace, so a test
    /// client can talk to the nodes like a peer on their network would.
    /// Network namespaces are per thread, so a short-lived thread joins it,
    /// binds, and hands the socket back; the socket stays in that namespace.
    pub fn udp_socket_in_cluster(&self, bind: &str) -> UdpSocket {
        let ns = File::open(format!("/proc/{}/ns/net", self.init_pid("n1"))).expect("netns");
        let bind = bind.to_string();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns net");
            UdpSocket::bind(bind).expect("bind in cluster netns")
        })
        .join()
        .expect("netns thread")
    }

    /// Polls `f` until it returns true or `limit` passes; returns the time it took.
    pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if f() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    pub fn down(&self) -> Output {
        Command::new(mosix_bin())
            .arg("down")
            .arg("--state")
            .arg(self.state())
            .output()
            .expect("running mosix down")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let out = self.down();
        if !out.status.success() {
            eprintln!("mosix down failed: {}", output_text(&out));
        }
    }
}
