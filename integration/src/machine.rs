//! Separate "machines" on one host, for tests of a real deployment: each
//! machine has its own PID, mount, UTS and network namespaces, its own
//! `/etc` (an overlay over the host's, so it can hold `/etc/mosix` and an
//! `/etc/fstab` without touching the host), `/run`, `/var/log`, and a
//! staged install (`mount-helpers/install DESTDIR=...`) at `/usr/local`
//! and `/sbin`. Machines are linked by veth pairs to a bridge in a switch
//! namespace of their own, so they talk over real interfaces, never the
//! host's network.
//!
//! Every command run in a machine is bounded by `timeout`; dropping a
//! machine kills its init, which ends everything in it.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::output_text;

/// Longest any one command in a machine may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

pub struct Machine {
    pub name: String,
    /// The machine's init (PID 1 inside), as the host sees it.
    pub pid: i32,
    unshare: Child,
}

impl Machine {
    /// Starts an empty machine: new namespaces, `init` (the
    /// `machine-init` binary) as PID 1, only `lo` in its network.
    pub fn start(name: &str, init: &Path) -> Machine {
        crate::require_root();
        let mut unshare = Command::new("unshare")
            .args([
                "--fork",
                "--pid",
                "--mount",
                "--uts",
                "--net",
                "--mount-proc",
                "--propagation",
                "private",
                "--",
            ])
            .arg(init)
            .arg(name)
            .stdin(Stdio::null())
            .spawn()
            .expect("running unshare (util-linux)");
        // unshare forks the init: its only child.
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let start = Instant::now();
        let pid = loop {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next() {
                break pid.parse().expect("pid");
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = unshare.kill();
                panic!("machine {name}: no init after 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let m = Machine {
            name: name.to_string(),
            pid,
            unshare,
        };
        m.sh("ip link set lo up");
        m
    }

    fn command(&self, script: &str) -> Command {
        self.command_in(script, &["-m", "-u", "-n", "-p"])
    }

    fn command_in(&self, script: &str, namespaces: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-k", "5", &COMMAND_LIMIT.as_secs().to_string()])
            .args(["nsenter", "-t", &self.pid.to_string()])
            .args(namespaces)
            .args(["--wd=/", "sh", "-c", script])
            .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null());
        c
    }

    /// Runs a shell script in the machine.
    pub fn run(&self, script: &str) -> Output {
        self.command(script)
            .output()
            .unwrap_or_else(|e| panic!("{}: nsenter: {e}", self.name))
    }

    /// Runs a shell script in the machine; panics unless it succeeds.
    #[track_caller]
    pub fn sh(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "on {}: {script}\n{}",
            self.name,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script in the machine's network only: pids in it are
    /// the host's (as `ip link set ... netns PID` needs).
    #[track_caller]
    pub fn net_sh(&self, script: &str) -> String {
        let out = self
            .command_in(script, &["-n"])
            .output()
            .unwrap_or_else(|e| panic!("{}: nsenter: {e}", self.name));
        assert!(
            out.status.success(),
            "in {}'s network: {script}\n{}",
            self.name,
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a shell script in the machine without waiting for it (to run
    /// several at once); collect it with `wait_with_output`.
    pub fn spawn(&self, script: &str) -> Child {
        self.command(script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: nsenter: {e}", self.name))
    }

    /// Gives the machine its own `/etc` (host's, overlaid), `/run` and
    /// `/var/log`, and the staged install in `dest` (a `DESTDIR` of
    /// `mount-helpers/install` with the default prefixes) at `/usr/local`
    /// and `/sbin`. `scratch` is an empty directory for the overlay's
    /// writable layer (hidden from the host by a tmpfs).
    pub fn private_root(&self, dest: &Path, scratch: &Path) {
        let (d, s) = (dest.display(), scratch.display());
        self.sh(&format!(
            "set -e
             mount -t tmpfs -o mode=0755 tmpfs {s}
             mkdir -p {s}/etc-up {s}/etc-work
             mount -t overlay overlay -o lowerdir=/etc,upperdir={s}/etc-up,workdir={s}/etc-work /etc
             mount -t tmpfs -o mode=0755 tmpfs /run
             mount -t tmpfs -o mode=0755 tmpfs /var/log
             mount --bind {d}/usr/local /usr/local
             mount -t overlay overlay -o lowerdir={d}/sbin:/usr/sbin /usr/sbin"
        ));
    }

    /// The pid (in the machine) of its `mosix daemon`, if one runs.
    pub fn daemon_pid(&self) -> Option<i32> {
        let out = self.run(
            "for p in /proc/[0-9]*; do
               if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^[^ ]*mosix daemon '; then
                 grep -q '^State:.*Z' $p/status || echo ${p#/proc/}
               fi
             done",
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // Killing PID 1 of the namespace kills every process in it; its
        // mounts go with the mount namespace.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// A LAN: a switch namespace with a bridge, and a veth link per machine.
pub struct Lan {
    switch: Machine,
    prefix: String,
}

impl Lan {
    /// `prefix` is the network's first three octets, `10.0.0` for
    /// machines at `10.0.0.N/24`.
    pub fn new(init: &Path, prefix: &str) -> Lan {
        let switch = Machine::start("switch", init);
        switch.sh("ip link add dev br0 type bridge && ip link set dev br0 up");
        Lan {
            switch,
            prefix: prefix.to_string(),
        }
    }

    /// Plugs `m` in as `<prefix>.<host>`, on its interface `eth0`.
    pub fn plug(&self, m: &Machine, host: u8) {
        let port = format!("port{host}");
        self.switch.net_sh(&format!(
            "set -e
             ip link add dev {port} type veth peer name eth0 netns {pid}
             ip link set dev {port} master br0
             ip link set dev {port} up",
            pid = m.pid
        ));
        m.sh(&format!(
            "set -e
             ip addr add {p}.{host}/24 dev eth0
             ip link set dev eth0 up",
            p = self.prefix
        ));
    }
}

/// Polls `f` until it returns true or `limit` passes; returns the time it took.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A fenced block of a Markdown file: the first block opened by
/// `opening` (like "```toml") after the first line containing `after`.
pub fn fenced_block(markdown: &str, after: &str, opening: &str) -> String {
    let start = markdown
        .find(after)
        .unwrap_or_else(|| panic!("no {after:?} in the document"));
    let rest = &markdown[start..];
    let open = rest
        .find(&format!("{opening}\n"))
        .unwrap_or_else(|| panic!("no {opening} block after {after:?}"));
    let body = &rest[open + opening.len() + 1..];
    let end = body.find("```").expect("unterminated fenced block");
    body[..end].to_string()
}

/// The repository root (for docs and mount helpers).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}
