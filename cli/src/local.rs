//! A local cluster: N nodes on this machine, each a daemon in its own PID,
//! mount and UTS namespaces, all inside one fresh network namespace.
//!
//! Process tree (host pids):
//! ```text
//! mosix supervise          new network namespace (lo up; node i on 127.0.0.i)
//! └─ mosix node-shim nI    new mount + UTS namespaces; parent of the PID namespace
//!    └─ mosix node-init nI PID 1 of the node: /proc, private /tmp /var/tmp /root /home /run/mosix, hostname
//!       └─ mosix daemon    the node's daemon (PID 2 in the node)
//! ```
//! State directory layout:
//! ```text
//! certs/                 cluster CA and node certificates
//! supervisor.pid  supervisor.log
//! nodes/<node>/config.toml  init.pid (host pid)  daemon.pid (node pid)  node.log
//! ```
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mosix_daemon::config::{self, Config, TlsConfig};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::ns;

/// Directories each node gets privately: a file written there on one node is
/// not seen at the same path on another, so remote access can be told from local.
const PRIVATE_DIRS: &[(&str, &str)] = &[
    ("/tmp", "1777"),
    ("/var/tmp", "1777"),
    ("/root", "700"),
    ("/home", "755"),
    ("/run/mosix", "755"),
];

/// How long `down` waits for a graceful stop before killing.
const STOP_GRACE: Duration = Duration::from_secs(5);

struct Layout {
    root: PathBuf,
}

impl Layout {
    fn new(state: &Path) -> anyhow::Result<Self> {
        let root = if state.is_absolute() {
            state.to_path_buf()
        } else {
            std::env::current_dir()?.join(state)
        };
        Ok(Layout { root })
    }
    fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }
    fn supervisor_pid(&self) -> PathBuf {
        self.root.join("supervisor.pid")
    }
    fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    fn config(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("config.toml")
    }
    fn init_pid(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("init.pid")
    }
    fn daemon_pid(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("daemon.pid")
    }
    fn log(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("node.log")
    }
    fn node_names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root.join("nodes"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }
}

pub fn node_name(i: usize) -> String {
    format!("n{i}")
}

pub fn node_addr(i: usize, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, i as u8), port))
}

/// This binary, by path (not /proc/self/exe) so that `ps` in a node shows
/// `mosix daemon` rather than `exe`.
fn self_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the mosix binary")
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("{what} needs root: it creates network, PID, mount and UTS namespaces");
    }
    Ok(())
}

fn log_file(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening log {}", path.display()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn up(state: &Path, n: usize, port: u16, timeout: u64) -> anyhow::Result<()> {
    require_root("mosix up")?;
    if !(1..=254).contains(&n) {
        bail!("--nodes must be between 1 and 254");
    }
    let l = Layout::new(state)?;
    fs::create_dir_all(&l.root)?;
    if let Some(pid) = ns::read_pid(&l.supervisor_pid()) {
        if ns::alive_with(pid, "supervise") {
            bail!(
                "a cluster is already up in {} (supervisor pid {pid}); run `mosix down --state {}` first",
                l.root.display(),
                l.root.display()
            );
        }
    }
    // A previous cluster of another size may have left node directories.
    let _ = fs::remove_dir_all(l.root.join("nodes"));
    let names: Vec<String> = (1..=n).map(node_name).collect();
    let certs = l.certs();
    if !certs.join("ca.pem").exists() {
        mosix_net::pki::init_cluster(&certs, &names)?;
    } else {
        // Node nI has id I, in its config and in its certificate.
        for (i, name) in names.iter().enumerate() {
            if !mosix_net::pki::node_paths(&certs, name).0.exists() {
                mosix_net::pki::issue_node_with_id(&certs, name, i as u16 + 1)?;
            }
        }
    }
    let addrs: Vec<SocketAddr> = (1..=n).map(|i| node_addr(i, port)).collect();
    for (i, name) in names.iter().enumerate() {
        fs::create_dir_all(l.node_dir(name))?;
        let (cert, key) = mosix_net::pki::node_paths(&certs, name);
        let cfg = Config {
            name: name.clone(),
            id: Some(i as u16 + 1),
            listen: addrs[i],
            peers: addrs.iter().copied().filter(|a| *a != addrs[i]).collect(),
            tls: TlsConfig {
                ca: certs.join("ca.pem"),
                cert,
                key,
            },
            mountpoint: config::default_mountpoint(),
            control_socket: config::default_control_socket(),
            export: config::Export::default(),
            mount: true,
            cache: Default::default(),
            source: None,
        };
        cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
        fs::write(l.config(name), cfg.to_toml())?;
    }

    let log = log_file(&l.root.join("supervisor.log"))?;
    let mut cmd = Command::new(self_exe()?);
    cmd.arg("supervise")
        .arg("--state")
        .arg(&l.root)
        .arg("--nodes")
        .arg(n.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the cluster from our
    // terminal so it outlives this command.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().context("starting the cluster supervisor")?;
    ns::write_pid(&l.supervisor_pid(), child.id())?;

    let deadline = Instant::now() + Duration::from_secs(timeout);
    let ready = wait_ready(&l, &names, deadline);
    if let Err(e) = ready {
        let mut msg = format!("{e:#}");
        for name in &names {
            msg.push_str(&format!(
                "\n--- {} (last lines) ---\n{}",
                name,
                tail(&l.log(name), 10)
            ));
        }
        let _ = down(state);
        bail!("cluster did not come up: {msg}");
    }
    outln!("mosix: {n}-node cluster up in {}", l.root.display());
    for (i, name) in names.iter().enumerate() {
        outln!("  {name}  {}", addrs[i]);
    }
    outln!(
        "try: mosix enter --state {} n1 -- mosix status",
        l.root.display()
    );
    Ok(())
}

fn wait_ready(l: &Layout, names: &[String], deadline: Instant) -> anyhow::Result<()> {
    for name in names {
        while ns::read_pid(&l.init_pid(name)).is_none() {
            if Instant::now() > deadline {
                bail!("node {name} did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for name in names {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_secs()
            .max(1);
        let out = Command::new(self_exe()?)
            .arg("enter")
            .arg("--state")
            .arg(&l.root)
            .arg(name)
            .arg("--")
            .arg(self_exe()?)
            .arg("status")
            .arg("--wait-alive")
            .arg(names.len().to_string())
            .arg("--timeout")
            .arg(left.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running status in a node")?;
        if !out.status.success() {
            bail!(
                "node {name} did not see all {} members alive: {}{}",
                names.len(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}

fn wait_gone(pids: &[i32], marker: &str, grace: Duration) -> bool {
    let end = Instant::now() + grace;
    loop {
        if pids.iter().all(|&p| !ns::alive_with(p, marker)) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn down(state: &Path) -> anyhow::Result<()> {
    require_root("mosix down")?;
    let l = Layout::new(state)?;
    let sup = ns::read_pid(&l.supervisor_pid()).filter(|&p| ns::alive_with(p, "supervise"));
    if let Some(pid) = sup {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if !wait_gone(&[pid], "supervise", STOP_GRACE) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    // Whatever survived (a supervisor killed hard, say): killing a node's init
    // makes the kernel kill every process in that node's PID namespace, and
    // its mounts go with its mount namespace.
    let inits: Vec<i32> = l
        .node_names()
        .iter()
        .filter_map(|n| ns::read_pid(&l.init_pid(n)))
        .filter(|&p| ns::alive_with(p, "node-init"))
        .collect();
    for &p in &inits {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    if !wait_gone(&inits, "node-init", STOP_GRACE) {
        bail!("some nodes of {} did not stop", l.root.display());
    }
    let _ = fs::remove_file(l.supervisor_pid());
    for n in l.node_names() {
        let _ = fs::remove_file(l.init_pid(&n));
        let _ = fs::remove_file(l.daemon_pid(&n));
    }
    outln!("mosix: cluster in {} stopped", l.root.display());
    Ok(())
}

pub fn enter(state: &Path, node: &str, cmd: &[String]) -> anyhow::Result<i32> {
    require_root("mosix enter")?;
    let l = Layout::new(state)?;
    let pid = ns::read_pid(&l.init_pid(node))
        .filter(|&p| ns::alive_with(p, "node-init"))
        .with_context(|| format!("node {node} is not running in {}", l.root.display()))?;
    let cwd = std::env::current_dir().ok();
    ns::join_namespaces(pid)?;
    // Joining a mount namespace moves us to its root; keep the caller's
    // directory where the node has it.
    if cwd.is_none_or(|d| std::env::set_current_dir(d).is_err()) {
        std::env::set_current_dir("/")?;
    }
    ns::run_status(&cmd[0], &cmd[1..], &format!("in node {node}"))
}

pub fn supervise(state: &Path, n: usize) -> anyhow::Result<()> {
    let l = Layout::new(state)?;
    unshare(CloneFlags::CLONE_NEWNET).context("creating the cluster network namespace")?;
    ns::loopback_up()?;
    ns::block_control_signals()?;
    let mut shims = Vec::new();
    for i in 1..=n {
        let name = node_name(i);
        let log = log_file(&l.log(&name))?;
        let mut cmd = Command::new(self_exe()?);
        cmd.arg("node-shim")
            .arg("--state")
            .arg(&l.root)
            .arg("--node")
            .arg(&name)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: only resets the signal mask between fork and exec.
        unsafe {
            cmd.pre_exec(ns::unblock_in_child);
        }
        shims.push(
            cmd.spawn()
                .with_context(|| format!("starting node {name}"))?
                .id() as i32,
        );
    }
    tracing::info!(nodes = n, "cluster supervisor running");
    ns::reap_until_stopped(|st| tracing::warn!(?st, "node shim exited"))?;
    tracing::info!("stopping nodes");
    let inits: Vec<i32> = (1..=n)
        .filter_map(|i| ns::read_pid(&l.init_pid(&node_name(i))))
        .filter(|&p| ns::alive_with(p, "node-init"))
        .collect();
    for &p in &inits {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    if !wait_gone(&inits, "node-init", Duration::from_secs(3)) {
        for &p in &inits {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
    for p in shims {
        let _ = waitpid(Pid::from_raw(p), None);
    }
    Ok(())
}

pub fn node_shim(state: &Path, node: &str) -> anyhow::Result<i32> {
    let l = Layout::new(state)?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWPID)
        .context("creating node namespaces")?;
    // Nothing this node mounts may propagate to the host or to other nodes.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making mounts private")?;
    // Set up the node's mount namespace here, before its init exists: the
    // init shares it, and we must be done writing to the state directory
    // before a tmpfs could hide it.
    let exe_dir = fs::read_link("/proc/self/exe")?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    private_dirs(&[l.root.clone(), exe_dir])?;
    fs::set_permissions("/run/mosix", fs::Permissions::from_mode(0o755))?;
    nix::unistd::sethostname(node).context("setting hostname")?;
    // The first child is PID 1 of the new PID namespace.
    let mut child = Command::new(self_exe()?)
        .arg("node-init")
        .arg("--state")
        .arg(&l.root)
        .arg("--node")
        .arg(node)
        .spawn()
        .context("starting node init")?;
    ns::write_pid(&l.init_pid(node), child.id())?;
    let st = child.wait()?;
    tracing::info!(node, status = ?st, "node stopped");
    Ok(st.code().unwrap_or(0))
}

/// Mounts a private tmpfs on each of [`PRIVATE_DIRS`], then makes the paths
/// the node still needs from the host (state directory, mosix binary) visible
/// again if a tmpfs now hides them.
fn private_dirs(keep: &[PathBuf]) -> anyhow::Result<()> {
    let kept: Vec<(PathBuf, File)> = keep
        .iter()
        .filter_map(|p| {
            let f = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(p)
                .ok()?;
            Some((p.clone(), f))
        })
        .collect();
    for (dir, mode) in PRIVATE_DIRS {
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        mount(
            Some("tmpfs"),
            *dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("mode={mode}").as_str()),
        )
        .with_context(|| format!("mounting a private {dir}"))?;
    }
    for (path, f) in &kept {
        let orig = f.metadata()?;
        let same = fs::metadata(path).is_ok_and(|m| m.dev() == orig.dev() && m.ino() == orig.ino());
        if !same {
            fs::create_dir_all(path)?;
            mount(
                Some(ns::raw_fd_path(f).as_str()),
                path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("re-exposing {}", path.display()))?;
        }
    }
    Ok(())
}

pub fn node_init(state: &Path, node: &str) -> anyhow::Result<i32> {
    let l = Layout::new(state)?;
    if std::process::id() != 1 {
        bail!("node-init must be PID 1 of a fresh PID namespace");
    }
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mounting the node's /proc")?;

    ns::block_control_signals()?;
    let mut cmd = Command::new(self_exe()?);
    cmd.arg("daemon").arg("--config").arg(l.config(node));
    // SAFETY: only resets the signal mask between fork and exec.
    unsafe {
        cmd.pre_exec(ns::unblock_in_child);
    }
    let daemon = cmd.spawn().context("starting the daemon")?;
    let dpid = daemon.id() as i32;
    ns::write_pid(&l.daemon_pid(node), daemon.id())?;
    // As PID 1 we reap every orphan of the node, not just the daemon.
    ns::reap_until_stopped(|st| {
        if st.pid() == Some(Pid::from_raw(dpid)) {
            tracing::warn!(node, status = ?st, "daemon exited");
        }
    })?;
    let _ = kill(Pid::from_raw(dpid), Signal::SIGTERM);
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        match waitpid(Pid::from_raw(dpid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            _ => break,
        }
    }
    // Exiting PID 1 makes the kernel kill whatever else runs in the node.
    Ok(0)
}
