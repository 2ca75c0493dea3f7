//! Checkpoint and restart on a real 3-node cluster: `mosix checkpoint` saves
//! a running process to a file, `mosix restart` brings it back, on another
//! node, where it continues from where it was.
use std::process::Output;
use std::time::Duration;

use mosix_integration::guests::{assert_gap_free, gpid};
use mosix_integration::{assert_fails_saying, mosix_bin, output_text, Cluster};

/// The node pid of the newest process named `comm` on `node`, if any.
fn pid_of(c: &Cluster, node: &str, comm: &str) -> Option<u32> {
    c.sh(node, &format!("pgrep -n -x {comm} || true"))
        .trim()
        .parse()
        .ok()
}

/// `mosix ARGS...` inside `node`.
fn mosix(c: &Cluster, node: &str, args: &[&str]) -> Output {
    let bin = mosix_bin();
    let mut all = vec![bin.to_str().unwrap()];
    all.extend_from_slice(args);
    c.enter(node, &all)
}

fn lines(c: &Cluster, node: &str, path: &str) -> usize {
    c.sh(node, &format!("wc -l < {path} 2>/dev/null || echo 0"))
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn a_checkpointed_counter_restarts_on_another_node_and_continues_where_it_was() {
    let c = Cluster::up(3);
    let counter = c.compile("counter");
    let n = 500;
    c.sh("n1", "mkdir -p /tmp/w");
    // It writes its sequence to a file in its cwd on n1, and to a pipe.
    let _r = c.start(
        "n1",
        &format!("cd /tmp/w && {} {n} | cat > /tmp/w/out", counter.display()),
    );
    let started = Cluster::wait_for(Duration::from_secs(10), || {
        lines(&c, "n1", "/tmp/w/seq.txt") > 30
    });
    assert!(started.is_some(), "the counter never started");
    let g = gpid(1, pid_of(&c, "n1", "counter").expect("counter on n1"));

    // Asked from n3, about a process of n1; the file is n3's /tmp/c.ckpt.
    // --stop leaves it stopped, so nothing happens between the checkpoint
    // and its end.
    let out = mosix(
        &c,
        "n3",
        &["checkpoint", "--stop", &g.to_string(), "/tmp/c.ckpt"],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("checkpointed to /tmp/c.ckpt"), "{said}");
    assert_eq!(
        c.sh("n3", "stat -c %a /tmp/c.ckpt"),
        "600\n",
        "the file holds the process's memory: its owner's only"
    );
    let at = lines(&c, "n1", "/tmp/w/seq.txt");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&c, "n1", "/tmp/w/seq.txt"), at, "it was left stopped");
    assert!(at < n, "it finished before the checkpoint");

    // The original is killed.
    let out = mosix(&c, "n1", &["kill", "-KILL", &g.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let gone = Cluster::wait_for(Duration::from_secs(10), || {
        pid_of(&c, "n1", "counter").is_none()
    });
    assert!(gone.is_some(), "the original did not die");

    // Restarted on n2 (asked from n3, which has the file).
    let out = mosix(&c, "n3", &["restart", "/tmp/c.ckpt", "--on", "n2"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(said.contains("restarted on n2"), "{said}");
    // Its pipe's reader is gone: that descriptor is /dev/null now, and
    // the command says so.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fd 1 (a pipe) is /dev/null now"),
        "{}",
        output_text(&out)
    );
    let new_gpid: u32 = said
        .split(':')
        .next()
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gpid in {said:?}"));
    assert_eq!(new_gpid >> 22, 2, "its gpid is n2's: {said}");
    assert!(pid_of(&c, "n2", "counter").is_some(), "no counter on n2");
    assert!(pid_of(&c, "n1", "counter").is_none(), "a counter on n1");
    assert_eq!(
        c.sh("n1", &format!("cat /mosix/proc/{new_gpid}/where")),
        "n2\n"
    );

    // It continues from where it was, in its file on n1 (reached from n2
    // through /mosix), and finishes.
    let done = Cluster::wait_for(Duration::from_secs(60), || {
        lines(&c, "n1", "/tmp/w/seq.txt") >= n && pid_of(&c, "n2", "counter").is_none()
    });
    assert!(
        done.is_some(),
        "it did not finish: {} lines",
        lines(&c, "n1", "/tmp/w/seq.txt")
    );
    assert_gap_free(&c.sh("n1", "cat /tmp/w/seq.txt"), n, "seq.txt");

    // Files that are not checkpoints this mosix reads are refused, with
    // a message that says why, and nothing runs.
    c.sh(
        "n3",
        "cp /tmp/c.ckpt /tmp/v99.ckpt && \
         printf '\\000\\000\\000\\143' | dd of=/tmp/v99.ckpt bs=1 seek=8 conv=notrunc 2>/dev/null && \
         head -c 65536 /dev/urandom > /tmp/junk.ckpt && \
         head -c 200000 /tmp/c.ckpt > /tmp/short.ckpt",
    );
    let out = mosix(&c, "n3", &["restart", "/tmp/v99.ckpt", "--on", "n2"]);
    assert_fails_saying(
        &out,
        "checkpoint format version 99, but this mosix reads version 1 only",
    );
    let out = mosix(&c, "n3", &["restart", "/tmp/junk.ckpt"]);
    assert_fails_saying(&out, "not a mosix checkpoint file");
    let out = mosix(&c, "n3", &["restart", "/tmp/short.ckpt", "--on", "n2"]);
    assert_fails_saying(&out, "truncated or corrupt");
    assert!(pid_of(&c, "n2", "counter").is_none(), "a refused file ran");
    assert!(pid_of(&c, "n3", "counter").is_none(), "a refused file ran");
}

#[test]
fn only_the_owner_checkpoints_a_process_and_restarts_it_as_itself() {
    let c = Cluster::up(3);
    let as_user = |uid: u32, cmd: &str| {
        format!("setpriv --reuid={uid} --regid={uid} --clear-groups -- {cmd}")
    };
    // A process of uid 65534 on n1.
    let _r = c.start("n1", &as_user(65534, "sleep 600"));
    let found = Cluster::wait_for(Duration::from_secs(10), || {
        pid_of(&c, "n1", "sleep").is_some()
    });
    assert!(found.is_some(), "sleep never started");
    let g = gpid(1, pid_of(&c, "n1", "sleep").unwrap()).to_string();
    let bin = mosix_bin();
    let bin = bin.to_str().unwrap();

    // Another user may not, from any node; no file is left behind.
    let out = c.enter(
        "n2",
        &[
            "sh",
            "-c",
            &as_user(1001, &format!("{bin} checkpoint {g} /tmp/theirs.ckpt")),
        ],
    );
    assert_fails_saying(
        &out,
        &format!("permission denied: uid 1001 does not own gpid {g}"),
    );
    assert_eq!(
        c.sh("n2", "ls -A /tmp | grep ckpt || true"),
        "",
        "a partial file was left"
    );

    // Its owner may.
    let out = c.enter(
        "n2",
        &[
            "sh",
            "-c",
            &as_user(65534, &format!("{bin} checkpoint {g} /tmp/own.ckpt")),
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(c.sh("n2", "stat -c '%u %a' /tmp/own.ckpt"), "65534 600\n");
    let pid = pid_of(&c, "n1", "sleep").expect("it goes on");
    assert_eq!(
        c.sh("n1", &format!("ps -o stat= -p {pid}")).trim(),
        "S",
        "it goes on running, not stopped"
    );

    // Another user given the file still cannot run it as its owner.
    c.sh(
        "n2",
        "cp /tmp/own.ckpt /tmp/copy.ckpt && chmod 644 /tmp/copy.ckpt",
    );
    let out = c.enter(
        "n2",
        &[
            "sh",
            "-c",
            &as_user(1001, &format!("{bin} restart /tmp/copy.ckpt --on n3")),
        ],
    );
    assert_fails_saying(
        &out,
        "the checkpoint runs as uid 65534; uid 1001 may restart only its own processes",
    );
    assert!(pid_of(&c, "n3", "sleep").is_none(), "a refused restart ran");
    // Its owner can, and it runs as the owner.
    let out = c.enter(
        "n2",
        &[
            "sh",
            "-c",
            &as_user(65534, &format!("{bin} restart /tmp/own.ckpt --on n3")),
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let pid = pid_of(&c, "n3", "sleep").expect("sleep restarted on n3");
    assert_eq!(
        c.sh("n3", &format!("stat -c %u /proc/{pid}")).trim(),
        "65534"
    );
}

#[test]
fn a_process_running_away_is_checkpointed_where_it_runs_and_restarts_on_a_third_node() {
    let c = Cluster::up(3);
    let counter = c.compile("counter");
    let n = 500;
    c.sh("n1", "mkdir -p /tmp/w");
    let _r = c.start(
        "n1",
        &format!(
            "cd /tmp/w && {} {n} | cat > /tmp/w/out; echo ${{PIPESTATUS[0]}} > /tmp/w/status",
            counter.display()
        ),
    );
    let started = Cluster::wait_for(Duration::from_secs(10), || {
        lines(&c, "n1", "/tmp/w/seq.txt") > 30
    });
    assert!(started.is_some(), "the counter never started");
    let g = gpid(1, pid_of(&c, "n1", "counter").expect("counter on n1"));
    let out = c.enter(
        "n1",
        &["sh", "-c", &format!("echo n2 > /mosix/proc/{g}/where")],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let moved = lines(&c, "n1", "/tmp/w/seq.txt");
    let ran = Cluster::wait_for(Duration::from_secs(10), || {
        lines(&c, "n1", "/tmp/w/seq.txt") > moved + 20
    });
    assert!(ran.is_some(), "it does not run on n2");

    // Asked of its home n1, which has only the deputy: the copy on n2 is
    // checkpointed, then killed; its deputy ends with it, and the parent
    // at home sees SIGKILL.
    let out = mosix(
        &c,
        "n1",
        &["checkpoint", "--kill", &g.to_string(), "/tmp/away.ckpt"],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let ended = Cluster::wait_for(Duration::from_secs(10), || {
        c.sh("n1", "cat /tmp/w/status 2>/dev/null || true").trim() == "137"
    });
    assert!(
        ended.is_some(),
        "the parent saw {:?}",
        c.sh("n1", "cat /tmp/w/status 2>/dev/null || true")
    );
    assert!(
        pid_of(&c, "n2", "counter").is_none(),
        "the copy still runs on n2"
    );
    let at = lines(&c, "n1", "/tmp/w/seq.txt");
    assert!(at < n, "it finished before the checkpoint");

    let out = mosix(&c, "n1", &["restart", "/tmp/away.ckpt", "--on", "n3"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(pid_of(&c, "n3", "counter").is_some(), "no counter on n3");
    let done = Cluster::wait_for(Duration::from_secs(60), || {
        lines(&c, "n1", "/tmp/w/seq.txt") >= n && pid_of(&c, "n3", "counter").is_none()
    });
    assert!(
        done.is_some(),
        "it did not finish: {} lines",
        lines(&c, "n1", "/tmp/w/seq.txt")
    );
    assert_gap_free(&c.sh("n1", "cat /tmp/w/seq.txt"), n, "seq.txt");
}

#[test]
fn a_restarted_program_opening_files_by_absolute_path_still_writes_its_old_homes_files() {
    let c = Cluster::up(3);
    let n = 400;
    c.sh("n1", "mkdir -p /tmp/w");
    // Opens /tmp/w/abs.txt anew for every line: after the restart on n3,
    // that path must still be n1's file, not n3's.
    std::fs::write(
        c.state().join("abs.py"),
        format!(
            "import time\n\
             for i in range(1, {n} + 1):\n\
             \x20   with open('/tmp/w/abs.txt', 'a') as f:\n\
             \x20       f.write(f'{{i}}\\n')\n\
             \x20   time.sleep(0.01)\n"
        ),
    )
    .unwrap();
    let _r = c.start(
        "n1",
        &format!(
            "exec python3 {} < /dev/null > /dev/null 2>&1",
            c.state().join("abs.py").display()
        ),
    );
    let started = Cluster::wait_for(Duration::from_secs(10), || {
        lines(&c, "n1", "/tmp/w/abs.txt") > 30
    });
    assert!(started.is_some(), "it never started");
    let g = gpid(1, pid_of(&c, "n1", "python3").expect("python3 on n1"));
    let out = mosix(
        &c,
        "n1",
        &["checkpoint", "--kill", &g.to_string(), "/tmp/abs.ckpt"],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let out = mosix(&c, "n1", &["restart", "/tmp/abs.ckpt", "--on", "n3"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(pid_of(&c, "n3", "python3").is_some(), "not restarted on n3");
    let done = Cluster::wait_for(Duration::from_secs(60), || {
        lines(&c, "n1", "/tmp/w/abs.txt") >= n && pid_of(&c, "n3", "python3").is_none()
    });
    assert!(
        done.is_some(),
        "it did not finish: {} lines",
        lines(&c, "n1", "/tmp/w/abs.txt")
    );
    assert_gap_free(&c.sh("n1", "cat /tmp/w/abs.txt"), n, "abs.txt");
    assert_eq!(
        c.sh("n3", "ls /tmp/w 2>&1 || true").trim(),
        "ls: cannot access '/tmp/w': No such file or directory",
        "it wrote to n3's own /tmp"
    );
}
