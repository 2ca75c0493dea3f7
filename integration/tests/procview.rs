//! /mosix/proc: every process of every node, in procfs formats, with gpids.
use std::time::Duration;

use mosix_integration::{assert_fails_saying, output_text, Cluster};

/// gpid of pid `pid` whose home is node `id` (see docs/SEMANTICS.md).
fn gpid(id: u32, pid: u32) -> u32 {
    (id << 22) | pid
}

#[test]
fn processes_of_every_node_show_in_mosix_proc() {
    let c = Cluster::up(3);
    // A process on n2 (node id 2), running as nobody.
    let pid: u32 = c
        .sh(
            "n2",
            "cd /tmp && setpriv --reuid=65534 --regid=65534 --clear-groups sleep 1000 >/dev/null 2>&1 & echo $!",
        )
        .trim()
        .parse()
        .unwrap();
    let g = gpid(2, pid);
    let dir = format!("/mosix/proc/{g}");

    // Seen from n1: listed, with the right command line, owner, state and node.
    let listed = Cluster::wait_for(Duration::from_secs(5), || {
        c.sh("n1", "ls /mosix/proc")
            .split_whitespace()
            .any(|x| x == g.to_string())
    });
    assert!(
        listed.is_some(),
        "gpid {g} not listed: {}",
        c.sh("n1", "ls /mosix/proc")
    );
    assert_eq!(
        c.sh("n1", &format!("tr '\\0' ' ' < {dir}/cmdline")),
        "sleep 1000 "
    );
    assert_eq!(c.sh("n1", &format!("cat {dir}/comm")), "sleep\n");
    assert_eq!(c.sh("n1", &format!("cat {dir}/where")), "n2\n");
    assert_eq!(c.sh("n1", &format!("cat {dir}/home")), "n2\n");
    assert_eq!(c.sh("n1", &format!("cat {dir}/nmigs")), "0\n");
    assert_eq!(
        c.sh("n1", &format!("stat -c '%u %g' {dir}")),
        "65534 65534\n"
    );
    let status = c.sh("n1", &format!("cat {dir}/status"));
    assert!(status.contains("State:\tS (sleeping)"), "{status}");
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(status.contains(&format!("Pid:\t{g}\n")), "{status}");
    // stat: pid and ppid fields carry gpids; the parent is n2's shell or init.
    let stat = c.sh("n1", &format!("cat {dir}/stat"));
    let fields: Vec<&str> = stat.split_whitespace().collect();
    assert_eq!(fields[0], g.to_string());
    assert_eq!(fields[1], "(sleep)");
    let ppid: u32 = fields[3].parse().unwrap();
    assert_eq!(ppid >> 22, 2, "ppid {ppid} is not a gpid of n2");
    // The same bytes n2's own /proc gives, but for the pid fields.
    let local = c.sh("n2", &format!("cut -d' ' -f3 /proc/{pid}/stat"));
    assert_eq!(format!("{}\n", fields[2]), local);

    // cwd and exe point into the process's node's tree under /mosix.
    assert_eq!(
        c.sh("n1", &format!("readlink {dir}/cwd")),
        "/mosix/nodes/n2/tmp\n"
    );
    let exe = c.sh("n1", &format!("readlink {dir}/exe"));
    assert!(
        exe.starts_with("/mosix/nodes/n2/") && exe.trim_end().ends_with("/sleep"),
        "{exe}"
    );
    c.sh("n2", "echo in-n2-tmp > /tmp/cwd-probe");
    assert_eq!(
        c.sh("n1", &format!("cat {dir}/cwd/cwd-probe")),
        "in-n2-tmp\n"
    );

    // /mosix/proc/self is the caller's own gpid.
    let me = c.sh("n3", "readlink /mosix/proc/self");
    assert_eq!(me.trim().parse::<u32>().unwrap() >> 22, 3);

    // Another user's environ is refused; the owner and root may read it.
    let out = c.enter(
        "n1",
        &[
            "setpriv",
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "cat",
            &format!("{dir}/environ"),
        ],
    );
    assert_fails_saying(&out, "Permission denied");
    c.sh(
        "n1",
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups cat {dir}/environ >/dev/null"),
    );
    c.sh("n1", &format!("cat {dir}/environ > /dev/null"));

    // lock pins the process to its node: its owner (or root) may set it, it
    // shows in cantmove, another user may not touch it.
    assert_eq!(c.sh("n1", &format!("cat {dir}/lock")), "0\n");
    assert_eq!(c.sh("n1", &format!("cat {dir}/cantmove")), "");
    c.sh(
        "n1",
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'echo 1 > {dir}/lock'"),
    );
    assert_eq!(c.sh("n3", &format!("cat {dir}/lock")), "1\n");
    assert!(c
        .sh("n3", &format!("cat {dir}/cantmove"))
        .contains("locked"));
    let out = c.enter(
        "n1",
        &[
            "setpriv",
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "sh",
            "-c",
            &format!("echo 0 > {dir}/lock"),
        ],
    );
    assert!(
        !out.status.success(),
        "another user unpinned it: {}",
        output_text(&out)
    );
    c.sh("n1", &format!("echo 0 > {dir}/lock"));
    assert_eq!(c.sh("n2", &format!("cat {dir}/lock")), "0\n");

    // Writing a node name to `where` moves it (docs/MIGRATION.md), and the
    // view says so from every node.
    let out = c.enter(
        "n1",
        &[
            "sh",
            "-c",
            &format!("printf n3 | dd of={dir}/where conv=notrunc"),
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(c.sh("n2", &format!("cat {dir}/where")), "n3\n");

    // Processes of every node are there: each node's init (pid 1).
    let all = c.sh("n1", "ls /mosix/proc");
    for id in 1..=3 {
        assert!(
            all.split_whitespace().any(|x| x == gpid(id, 1).to_string()),
            "no init of node {id}: {all}"
        );
    }

    // Cluster-wide totals: one machine with every node's CPUs and memory (the
    // nodes of a local cluster share one kernel, so each counts it once).
    let total = |f: &str| -> u64 {
        c.sh("n1", &format!("awk '/^MemTotal:/ {{print $2}}' {f}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(total("/mosix/proc/meminfo"), 3 * total("/proc/meminfo"));
    let cpus = |f: &str| -> usize {
        c.sh("n1", &format!("grep -c ^processor {f}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(cpus("/mosix/proc/cpuinfo"), 3 * cpus("/proc/cpuinfo"));
    let stat = c.sh("n1", "cat /mosix/proc/stat");
    assert_eq!(
        stat.lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count(),
        3 * cpus("/proc/cpuinfo")
    );
    assert!(stat.lines().any(|l| l.starts_with("btime ")), "{stat}");
    let load = c.sh("n1", "cat /mosix/proc/loadavg");
    assert_eq!(load.split_whitespace().count(), 5, "{load}");

    // /mosix/cluster: members and each node's load, as files.
    let members = c.sh("n1", "cat /mosix/cluster/members");
    assert_eq!(
        members
            .lines()
            .filter(|l| l.contains(" alive 127.0.0."))
            .count(),
        3,
        "{members}"
    );
    assert_eq!(c.sh("n1", "cat /mosix/cluster/nodes/n2/status"), "alive\n");
    // Load records arrive about once a second ("-" until the first one).
    let known = Cluster::wait_for(Duration::from_secs(5), || {
        ["n2", "n3"]
            .iter()
            .all(|n| c.sh("n1", &format!("cat /mosix/cluster/nodes/{n}/cpus")) != "-\n")
    });
    assert!(known.is_some(), "no load record from n2 or n3");
    let cpus: u32 = c
        .sh("n1", "cat /mosix/cluster/nodes/n2/cpus")
        .trim()
        .parse()
        .unwrap();
    assert!(cpus >= 1);
    let freemem: u64 = c
        .sh("n1", "cat /mosix/cluster/nodes/n3/freemem")
        .trim()
        .parse()
        .unwrap();
    assert!(freemem > 0);

    // mosix ps lists it, with where it runs (n3, since it moved above), its
    // home and its one migration.
    let bin = mosix_integration::mosix_bin();
    let bin = bin.to_str().unwrap();
    let ps = c.sh("n1", &format!("{bin} ps -u nobody"));
    let row = ps
        .lines()
        .find(|l| l.trim_start().starts_with(&g.to_string()))
        .unwrap_or_else(|| panic!("{ps}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..6], ["nobody", "S", "n3", "n2", "1"], "{row}");
    assert!(row.ends_with("sleep 1000"), "{row}");
    assert!(
        !ps.contains("node-init"),
        "-u nobody showed root's processes: {ps}"
    );
    // The cluster root runs on no node in particular.
    let all = c.sh("n1", &format!("{bin} ps"));
    let root = all
        .lines()
        .find(|l| l.split_whitespace().next() == Some("1"))
        .unwrap_or_else(|| panic!("no cluster root in mosix ps:\n{all}"));
    let cols: Vec<&str> = root.split_whitespace().collect();
    assert_eq!(cols, ["1", "root", "S", "-", "-", "0", "mosix"], "{root}");

    // mosix kill: another user may not, the owner may, wherever it runs.
    let out = c.enter(
        "n1",
        &[
            "setpriv",
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            bin,
            "kill",
            "-9",
            &g.to_string(),
        ],
    );
    assert!(!out.status.success());
    assert_fails_saying(&out, "Operation not permitted");
    c.sh(
        "n1",
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups {bin} kill -KILL {g}"),
    );
    let dead = Cluster::wait_for(Duration::from_secs(5), || {
        c.enter("n2", &["test", "-e", &format!("/proc/{pid}")])
            .status
            .code()
            == Some(1)
    });
    assert!(dead.is_some(), "mosix kill did not stop pid {pid} on n2");
    let out = c.enter("n1", &[bin, "kill", &gpid(9, 1).to_string()]);
    assert_fails_saying(&out, "no node with id 9");

    // A dead node's processes disappear within the membership bound.
    c.kill_daemon("n3");
    let bound = mosix_daemon::membership::dead_bound(3) + Duration::from_secs(2);
    let gone = Cluster::wait_for(bound, || {
        !c.sh("n1", "ls /mosix/proc")
            .split_whitespace()
            .any(|x| x == gpid(3, 1).to_string())
    });
    assert!(gone.is_some(), "n3's processes still listed");
    let dead = Cluster::wait_for(bound, || {
        c.sh("n1", "cat /mosix/cluster/nodes/n3/status") == "dead\n"
    });
    assert!(dead.is_some(), "n3 never shown dead in /mosix/cluster");
    assert!(c
        .sh("n1", "ls /mosix/proc")
        .split_whitespace()
        .any(|x| x == gpid(2, 1).to_string()));
}

/// Every process of `node`, as gpids, from the node's own /proc.
fn node_gpids(c: &Cluster, node: &str, id: u32) -> std::collections::BTreeSet<u32> {
    c.sh(node, "ls /proc")
        .split_whitespace()
        .filter_map(|x| x.parse::<u32>().ok())
        .map(|p| gpid(id, p))
        .collect()
}

#[test]
fn unmodified_ps_and_top_see_the_whole_cluster_in_mosix_shell() {
    let c = Cluster::up(3);
    let bin = mosix_integration::mosix_bin();
    let bin = bin.to_str().unwrap();
    c.sh("n2", "sleep 1000 >/dev/null 2>&1 &");
    c.sh("n3", "sleep 1000 >/dev/null 2>&1 &");
    let union = || {
        (1..=3u32)
            .flat_map(|i| node_gpids(&c, &format!("n{i}"), i))
            .collect::<std::collections::BTreeSet<u32>>()
    };
    let before = union();
    let mut ps: std::collections::BTreeSet<u32> = c
        .sh("n1", &format!("{bin} shell -- ps -e -o pid="))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let after = union();
    // Besides the nodes' processes: the cluster root, gpid 1.
    assert!(ps.remove(&1), "no cluster root in ps -e: {ps:?}");
    // Churn: the commands of this test itself (each node's `ls`, the shell and
    // its ps) come and go between the snapshots. Every process present in both
    // snapshots must be in ps's list; ps may add only its own few.
    let stable: std::collections::BTreeSet<u32> = before.intersection(&after).copied().collect();
    let missing: Vec<&u32> = stable.difference(&ps).collect();
    assert!(
        missing.is_empty(),
        "ps -e misses {missing:?}\nps: {ps:?}\nstable: {stable:?}"
    );
    let extra: Vec<&u32> = ps
        .iter()
        .filter(|p| !before.contains(p) && !after.contains(p))
        .collect();
    assert!(extra.len() <= 4, "ps -e lists unknown processes {extra:?}");
    assert!(ps.iter().any(|p| p >> 22 == 2) && ps.iter().any(|p| p >> 22 == 3));

    // ps aux, pgrep and top run clean on the cluster view.
    let aux = c.sh("n1", &format!("{bin} shell -- ps aux"));
    assert_eq!(
        aux.lines().filter(|l| l.ends_with("sleep 1000")).count(),
        2,
        "{aux}"
    );
    let pgrep = c.sh("n1", &format!("{bin} shell -- pgrep -x sleep"));
    let nodes: std::collections::BTreeSet<u32> = pgrep
        .split_whitespace()
        .map(|p| p.parse::<u32>().unwrap() >> 22)
        .collect();
    assert_eq!(nodes, [2, 3].into_iter().collect(), "{pgrep}");
    // pstree draws one tree: the cluster root, each node's init under it, and
    // the sleepers of n2 and n3 below those.
    let tree = c.sh("n1", &format!("{bin} shell -- pstree -p -A"));
    assert!(tree.starts_with("mosix(1)"), "{tree}");
    for id in 1..=3 {
        assert!(tree.contains(&format!("({})", gpid(id, 1))), "{tree}");
    }
    let sleepers = pgrep.split_whitespace().collect::<Vec<_>>();
    for s in &sleepers {
        assert!(tree.contains(&format!("sleep({s})")), "{tree}");
    }
    assert!(
        tree.lines().skip(1).all(|l| l.starts_with(' ')),
        "more than one tree:\n{tree}"
    );
    let out = c.enter("n1", &[bin, "shell", "--", "top", "-b", "-n1"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(top.contains("Tasks:") && top.contains("sleep"), "{top}");
    assert!(
        out.stderr.is_empty(),
        "top complained: {}",
        output_text(&out)
    );
}

/// The state field of `stat` of gpid `g`, read on `node` through /mosix/proc.
fn state_of(c: &Cluster, node: &str, g: u32) -> String {
    let stat = c.sh(node, &format!("cat /mosix/proc/{g}/stat"));
    stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_stopped_process_shows_its_new_state_within_the_documented_bound() {
    use mosix_procview::fs::PROC_LIST;
    let c = Cluster::up(2);
    let pid: u32 = c
        .sh("n2", "sleep 1000 >/dev/null 2>&1 & echo $!")
        .trim()
        .parse()
        .unwrap();
    let g = gpid(2, pid);
    // No listing on n1 for longer than a listing is used: a file opened
    // directly by gpid is rendered at open, so a change shows at once.
    std::thread::sleep(PROC_LIST + Duration::from_millis(100));
    assert_eq!(state_of(&c, "n1", g), "S");
    c.sh("n2", &format!("kill -STOP {pid}"));
    assert_eq!(state_of(&c, "n1", g), "T", "a direct open saw an old state");

    // After a listing, files may come from its snapshot: at most PROC_LIST
    // old. The process continues right after one; n1 sees it sleeping again
    // within PROC_LIST (plus the time of one `cat` through `mosix enter`).
    c.sh("n1", "ls /mosix/proc > /dev/null");
    c.sh("n2", &format!("kill -CONT {pid}"));
    let seen = Cluster::wait_for(PROC_LIST * 3, || state_of(&c, "n1", g) == "S");
    let seen = seen.unwrap_or_else(|| panic!("gpid {g} still not sleeping on n1"));
    assert!(
        seen <= PROC_LIST + Duration::from_millis(500),
        "the new state showed after {seen:?}, beyond the bound of {PROC_LIST:?}"
    );
    // And a listing shows the change too once it is taken after it.
    c.sh("n2", &format!("kill -STOP {pid}"));
    c.sh("n1", "ls /mosix/proc > /dev/null");
    assert_eq!(
        state_of(&c, "n1", g),
        "T",
        "a new listing kept an old state"
    );
    c.sh("n2", &format!("kill -KILL {pid}"));
}
