//! Process migration on a real 3-node cluster: unmodified programs move
//! between nodes while running, with their deputy left at home.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mosix_integration::{output_text, Cluster};

/// Compiles one of the migrator's C test programs into the cluster's state
/// directory, which every node sees.
fn compile(c: &Cluster, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../migrator/tests/c/{name}.c"));
    let out = c.state().join(name);
    let st = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(st.success(), "compiling {name}.c");
    out
}

/// The node pid of the newest process named `comm` on `node`.
fn pid_of(c: &Cluster, node: &str, comm: &str) -> u32 {
    let out = c.sh(node, &format!("pgrep -n -x {comm} || true"));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no {comm} on {node}"))
}

fn gpid(node_id: u32, pid: u32) -> u32 {
    node_id << 22 | pid
}

/// Lines of `text` must be exactly 1..=n.
fn assert_gap_free(text: &str, n: usize, what: &str) {
    let got: Vec<usize> = text.lines().map(|l| l.parse().expect(what)).collect();
    let want: Vec<usize> = (1..=n).collect();
    assert_eq!(got, want, "{what} is not a gap-free 1..{n}");
}

#[test]
fn a_running_counter_moves_and_its_parent_pipe_and_exit_code_stay_home() {
    let c = Cluster::up(3);
    let counter = compile(&c, "counter");
    let n = 400;
    c.sh("n1", "mkdir -p /tmp/w");
    // Its stdout is a pipe at home; its parent (bash) waits for it there.
    let runner = Command::new(mosix_integration::mosix_bin())
        .args(["enter", "--state"])
        .arg(c.state())
        .args([
            "n1",
            "--",
            "bash",
            "-c",
            &format!(
                "cd /tmp/w && {} {n} | cat > /tmp/w/out; echo ${{PIPESTATUS[0]}} > /tmp/w/status",
                counter.display()
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it count a while at home.
    let started = Cluster::wait_for(Duration::from_secs(10), || {
        c.sh("n1", "wc -l < /tmp/w/seq.txt 2>/dev/null || echo 0")
            .trim()
            .parse::<usize>()
            .unwrap_or(0)
            > 20
    });
    assert!(started.is_some(), "the counter never started");
    let pid = pid_of(&c, "n1", "counter");
    let g = gpid(1, pid);
    assert_eq!(c.sh("n1", &format!("cat /mosix/proc/{g}/where")), "n1\n");

    let t = Instant::now();
    let out = c.enter(
        "n1",
        &["sh", "-c", &format!("echo n2 > /mosix/proc/{g}/where")],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    eprintln!("migration took {:?}", t.elapsed());

    // It runs on n2 now: n2's own /proc shows it, and the cluster view says
    // so from every node.
    let there = c.sh("n2", "pgrep -x counter || true");
    assert!(!there.trim().is_empty(), "no counter in n2's /proc");
    assert_eq!(c.sh("n3", &format!("cat /mosix/proc/{g}/where")), "n2\n");
    assert_eq!(c.sh("n1", &format!("cat /mosix/proc/{g}/home")), "n1\n");

    // It finishes: the file in its cwd is gap-free across the move, its
    // output reached the pipe at home, and the parent got exit code 7.
    let done = Cluster::wait_for(Duration::from_secs(60), || {
        c.sh("n1", "cat /tmp/w/status 2>/dev/null || true").trim() == "7"
    });
    let status = c.sh("n1", "cat /tmp/w/status 2>/dev/null || true");
    assert!(done.is_some(), "exit status at home: {status:?}");
    assert_gap_free(&c.sh("n1", "cat /tmp/w/seq.txt"), n, "seq.txt");
    assert_gap_free(&c.sh("n1", "cat /tmp/w/out"), n, "the piped stdout");
    let out = runner.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
