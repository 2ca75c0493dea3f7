//! `mosix`: one binary for the node daemon and every user command.

/// `println!` for command output. A closed stdout (`mosix ps | head`) ends
/// the command quietly with status 0, where `println!` would panic; the
/// process keeps ignoring SIGPIPE, so a closed socket is still an error it
/// can report.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*))
    };
}

mod checkpoint;
mod cluster;
mod local;
mod migrate;
mod mon;
mod ns;
mod procs;
mod status;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mosix",
    version,
    about = "A single-system image for Linux clusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run this node's daemon (logs: RUST_LOG, default info).
    Daemon {
        #[arg(long)]
        config: PathBuf,
        /// Mount /mosix here instead of the config's mountpoint (mount.fuse.mosix uses it).
        #[arg(long)]
        mountpoint: Option<PathBuf>,
    },
    /// Manage cluster certificates.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Start a local cluster of N nodes on this machine (root) and wait until all have joined.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Directory for certificates, configs, logs and pid files.
        #[arg(long)]
        state: PathBuf,
        /// UDP port every node listens on (node i on 127.0.0.i).
        #[arg(long, default_value_t = 7700)]
        port: u16,
        /// Seconds to wait for all nodes to join.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stop a local cluster and everything in it.
    Down {
        #[arg(long)]
        state: PathBuf,
    },
    /// Run a command inside a node of a local cluster; exits with its exit code.
    Enter {
        #[arg(long)]
        state: PathBuf,
        node: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show the cluster as this node's daemon sees it.
    Status {
        /// The daemon's control socket.
        #[arg(long, default_value = "/run/mosix/control.sock")]
        control: PathBuf,
        #[arg(long)]
        json: bool,
        /// Wait until at least this many members (this node included) are alive.
        #[arg(long)]
        wait_alive: Option<usize>,
        /// Seconds --wait-alive may wait.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// List every process of the cluster (from /mosix/proc), with where it
    /// runs, its home node and its migrations.
    Ps {
        /// Only processes of this user (name or uid).
        #[arg(short, long)]
        user: Option<String>,
        /// Only processes running on this node.
        #[arg(long = "where")]
        node: Option<String>,
        /// Where /mosix is mounted.
        #[arg(long, default_value = "/mosix")]
        mosix: PathBuf,
    },
    /// Move a running process to another node (or `home`); returns once it
    /// runs there.
    Migrate {
        gpid: u32,
        /// A node name, or `home`.
        target: String,
        /// Where /mosix is mounted.
        #[arg(long, default_value = "/mosix")]
        mosix: PathBuf,
    },
    /// Run a command, on another node with --on (started here, then moved);
    /// exits as the command did.
    Run {
        /// The node to run it on (default: here).
        #[arg(long)]
        on: Option<String>,
        /// Where /mosix is mounted.
        #[arg(long, default_value = "/mosix")]
        mosix: PathBuf,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Save a running process (wherever it runs) to FILE; it goes on running
    /// unless --stop or --kill.
    Checkpoint {
        gpid: u32,
        file: PathBuf,
        /// Leave it stopped after the checkpoint (kill -CONT resumes it).
        #[arg(long)]
        stop: bool,
        /// Kill it after the checkpoint.
        #[arg(long, conflicts_with = "stop")]
        kill: bool,
        #[arg(long, default_value = "/run/mosix/control.sock")]
        control: PathBuf,
    },
    /// Restart a process saved by `mosix checkpoint`, here or on --on NODE.
    Restart {
        file: PathBuf,
        /// The node to restart it on (default: here).
        #[arg(long)]
        on: Option<String>,
        #[arg(long, default_value = "/run/mosix/control.sock")]
        control: PathBuf,
    },
    /// Watch every node's load, memory and processes live (q quits).
    Mon {
        #[arg(long, default_value = "/run/mosix/control.sock")]
        control: PathBuf,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// Run a shell (or CMD) in which /proc is the whole cluster, so that
    /// unmodified ps, top, pgrep and pstree show every node's processes (root).
    Shell {
        #[arg(long, default_value = "/mosix")]
        mosix: PathBuf,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Send a signal to processes anywhere in the cluster: mosix kill [-SIG] GPID...
    Kill {
        #[arg(long, default_value = "/run/mosix/control.sock")]
        control: PathBuf,
        /// [-SIGNAL] GPID... (signal by name or number; default TERM)
        #[arg(allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        nodes: usize,
    },
    #[command(hide = true)]
    NodeShim {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        node: String,
    },
    #[command(hide = true)]
    NodeInit {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        node: String,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Create a cluster CA and one certificate per node.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Comma-separated node names.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    /// Issue a certificate for a new node with an existing CA.
    AddNode {
        #[arg(long)]
        dir: PathBuf,
        /// Node id to record in the certificate (default: the next free one).
        #[arg(long)]
        id: Option<u16>,
        name: String,
    },
    /// Remove a stopped node from every member's list (root); --revoke or --cert also refuse its certificate.
    RemoveNode {
        /// Refuse the certificate NAME last used, from now on.
        #[arg(long)]
        revoke: bool,
        /// Revoke this certificate (NAME.pem from `cluster init`); implies --revoke.
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long, default_value = "/run/mosix/control.sock")]
        control: PathBuf,
        name: String,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Writes one line of command output; see [`outln!`].
pub fn write_out(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let r = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("mosix: writing output: {e}");
            std::process::exit(1);
        }
    }
}

/// An error and its causes, each said once. A thiserror message often
/// includes its source (`"{path}: {source}"`), which the chain would name
/// again: "mounting /mosix: X: X".
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() {
    let cli = Cli::parse();
    let result: anyhow::Result<i32> = match cli.cmd {
        Cmd::Daemon { config, mountpoint } => {
            init_tracing("info");
            (|| {
                let mut cfg = mosix_daemon::Config::load(&config)?;
                if let Some(m) = mountpoint {
                    cfg.mountpoint = m;
                    cfg.validate().map_err(anyhow::Error::msg)?;
                }
                runtime().block_on(mosix_daemon::run(cfg))?;
                Ok(0)
            })()
        }
        Cmd::Cluster(ClusterCmd::Init { dir, nodes }) => mosix_net::pki::init_cluster(&dir, &nodes)
            .map(|_| {
                outln!(
                    "cluster CA and {} node certificates in {}",
                    nodes.len(),
                    dir.display()
                );
                for (i, n) in nodes.iter().enumerate() {
                    outln!("  {n}: id {}", i + 1);
                }
                0
            })
            .map_err(Into::into),
        Cmd::Cluster(ClusterCmd::RemoveNode {
            revoke,
            cert,
            control,
            name,
        }) => runtime().block_on(cluster::remove_node(
            &control,
            &name,
            revoke,
            cert.as_deref(),
        )),
        Cmd::Cluster(ClusterCmd::AddNode { dir, id, name }) => {
            let issued = match id {
                Some(id) => mosix_net::pki::issue_node_with_id(&dir, &name, id).map(|()| id),
                None => mosix_net::pki::issue_node(&dir, &name),
            };
            issued
                .map(|id| {
                    let (c, k) = mosix_net::pki::node_paths(&dir, &name);
                    outln!("issued {} and {} (node id {id})", c.display(), k.display());
                    0
                })
                .map_err(Into::into)
        }
        Cmd::Up {
            nodes,
            state,
            port,
            timeout,
        } => {
            init_tracing("warn");
            local::up(&state, nodes, port, timeout).map(|_| 0)
        }
        Cmd::Down { state } => {
            init_tracing("warn");
            local::down(&state).map(|_| 0)
        }
        Cmd::Enter { state, node, cmd } => local::enter(&state, &node, &cmd),
        Cmd::Status {
            control,
            json,
            wait_alive,
            timeout,
        } => runtime().block_on(status::run(&control, json, wait_alive, timeout)),
        Cmd::Ps { user, node, mosix } => procs::ps(&mosix, user.as_deref(), node.as_deref()),
        Cmd::Migrate {
            gpid,
            target,
            mosix,
        } => migrate::migrate(&mosix, gpid, &target),
        Cmd::Run { on, mosix, cmd } => migrate::run(&mosix, on.as_deref(), &cmd),
        Cmd::Checkpoint {
            gpid,
            file,
            stop,
            kill,
            control,
        } => {
            use mosix_proto::checkpoint::AfterCheckpoint;
            let after = match (stop, kill) {
                (true, _) => AfterCheckpoint::Stop,
                (_, true) => AfterCheckpoint::Kill,
                _ => AfterCheckpoint::Run,
            };
            runtime().block_on(checkpoint::checkpoint(&control, gpid, &file, after))
        }
        Cmd::Restart { file, on, control } => {
            runtime().block_on(checkpoint::restart(&control, &file, on.as_deref()))
        }
        Cmd::Mon { control, interval } => runtime().block_on(mon::run(
            &control,
            std::time::Duration::from_secs_f64(interval.max(0.1)),
        )),
        Cmd::Shell { mosix, cmd } => procs::shell(&mosix, &cmd),
        Cmd::Kill { control, args } => runtime().block_on(procs::kill(&control, &args)),
        Cmd::Supervise { state, nodes } => {
            init_tracing("info");
            local::supervise(&state, nodes).map(|_| 0)
        }
        Cmd::NodeShim { state, node } => {
            init_tracing("info");
            local::node_shim(&state, &node)
        }
        Cmd::NodeInit { state, node } => {
            init_tracing("info");
            local::node_init(&state, &node)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("mosix: {}", error_text(&e));
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::ENOTCONN);
        let e = anyhow::Error::from(mosix_daemon::DaemonError::Mount {
            path: "/mosix".into(),
            source: io,
        });
        assert_eq!(
            error_text(&e),
            "mounting /mosix: Transport endpoint is not connected (os error 107)"
        );
        // Context added on top still shows every distinct cause.
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOENT))
            .context("reading /mosix/proc");
        assert_eq!(
            error_text(&e),
            "reading /mosix/proc: No such file or directory (os error 2)"
        );
    }

    /// Every flag of every user command is in docs/CONFIGURATION.md.
    #[test]
    fn every_flag_is_documented() {
        use clap::CommandFactory;
        let doc = include_str!("../../docs/CONFIGURATION.md");
        let mut missing = Vec::new();
        let mut check = |path: String, cmd: &clap::Command| {
            for a in cmd.get_arguments() {
                if let Some(long) = a.get_long() {
                    if matches!(long, "help" | "version") {
                        continue;
                    }
                    // In the command's own row of the Commands table.
                    let flag = format!("--{long}");
                    let row = format!("| `{path} ");
                    if !doc
                        .lines()
                        .any(|l| l.starts_with(&row) && l.contains(&flag))
                    {
                        missing.push(format!("{path} {flag}"));
                    }
                }
            }
        };
        for sub in Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
        {
            let path = format!("mosix {}", sub.get_name());
            check(path.clone(), sub);
            for s in sub.get_subcommands() {
                check(format!("{path} {}", s.get_name()), s);
            }
        }
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }
}
