//! A local cluster behaves like separate machines: own processes, own
//! hostname, own private directories; members find each other and notice
//! when one dies.
use std::collections::BTreeSet;
use std::time::Duration;

use mosix_integration::{assert_fails_saying, mosix_bin, output_text, Cluster};
use mosix_proto::MemberState;

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Every process of `node` as "pid cmdline", read from the node's own /proc.
fn processes(c: &Cluster, node: &str) -> Vec<String> {
    c.sh(
        node,
        r#"for d in /proc/[0-9]*; do printf '%s ' "${d#/proc/}"; tr '\0' ' ' < "$d/cmdline" 2>/dev/null; echo; done"#,
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn three_nodes_are_isolated_see_each_other_and_detect_a_death() {
    let c = Cluster::up(3);

    for node in NODES {
        // Own UTS namespace.
        assert_eq!(c.sh(node, "hostname").trim(), node);

        // Own PID namespace: init is PID 1, exactly one daemon runs, and it is
        // this node's; no other node's daemon and none of the host's processes.
        let procs = processes(&c, node);
        let daemons: Vec<&String> = procs
            .iter()
            .filter(|p| p.contains(" daemon --config "))
            .collect();
        assert_eq!(daemons.len(), 1, "{node} sees daemons {daemons:?}");
        let own_cfg = format!("/nodes/{node}/config.toml");
        assert!(daemons[0].contains(&own_cfg), "{node} runs {}", daemons[0]);
        assert!(
            procs
                .iter()
                .any(|p| p.starts_with("1 ") && p.contains("node-init")),
            "{node}: PID 1 is not the node init: {procs:?}"
        );
        // init, daemon, the shell, and whatever the shell forks: nothing else.
        assert!(procs.len() <= 6, "{node} sees foreign processes: {procs:?}");
        let host_pid = std::process::id();
        assert!(
            !procs
                .iter()
                .any(|p| p.contains("cluster-") && p.starts_with(&format!("{host_pid} "))),
            "{node} sees the test process"
        );

        // Own mount namespace: /proc is the node's.
        let ns1 = c.sh(node, "readlink /proc/1/ns/pid");
        assert_ne!(
            ns1,
            std::fs::read_link("/proc/self/ns/pid")
                .unwrap()
                .to_string_lossy()
                + "\n"
        );
    }

    // Private /tmp, /var/tmp, /root and /home: what n1 writes there, n2 and n3
    // do not see; the rest of the file system is shared.
    for dir in ["/tmp", "/var/tmp", "/root", "/home"] {
        c.sh("n1", &format!("echo from-n1 > {dir}/mosix-private-probe"));
        for other in ["n2", "n3"] {
            let out = c.enter(
                other,
                &["test", "-e", &format!("{dir}/mosix-private-probe")],
            );
            assert_eq!(out.status.code(), Some(1), "{other} sees n1's {dir}");
        }
        assert!(
            !std::path::Path::new(&format!("{dir}/mosix-private-probe")).exists(),
            "n1's {dir} leaked to the host"
        );
    }
    let shared = c.state().join("shared-probe");
    c.sh("n1", &format!("echo shared > {}", shared.display()));
    assert_eq!(c.sh("n3", &format!("cat {}", shared.display())), "shared\n");

    // Everyone sees everyone alive, with a load record.
    for node in NODES {
        let seen = Cluster::wait_for(Duration::from_secs(10), || {
            let m = c.status(node);
            m.len() == 3
                && m.iter()
                    .all(|m| m.state == MemberState::Alive && m.load.is_some())
        });
        assert!(
            seen.is_some(),
            "{node} does not see 3 alive members with load: {:?}",
            c.status(node)
        );
        let m = c.status(node);
        let names: BTreeSet<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, NODES.into_iter().collect());
        let me: Vec<_> = m.iter().filter(|m| m.is_self).collect();
        assert_eq!(me.len(), 1);
        assert_eq!(me[0].name, node);
        let load = me[0].load.as_ref().unwrap();
        assert!(
            load.cpus >= 1 && load.totalmem > 0 && load.procs >= 2 && load.speed > 0,
            "{load:?}"
        );
    }

    // Kill n3's daemon like a crash would; n1 and n2 must call it dead within
    // the documented bound.
    let bound = mosix_daemon::membership::dead_bound(3);
    c.kill_daemon("n3");
    let start = std::time::Instant::now();
    for node in ["n1", "n2"] {
        let seen = Cluster::wait_for(bound + Duration::from_secs(5), || {
            c.status(node)
                .iter()
                .any(|m| m.name == "n3" && m.state == MemberState::Dead)
        });
        let took = start.elapsed();
        assert!(seen.is_some(), "{node} never reported n3 dead");
        assert!(
            took <= bound,
            "{node} reported n3 dead after {took:?}, bound is {bound:?}"
        );
        let m = c.status(node);
        let alive: BTreeSet<&str> = m
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(alive, ["n1", "n2"].into_iter().collect(), "{node}: {m:?}");
    }
}

#[test]
fn enter_passes_exit_codes_and_up_refuses_a_running_state_dir() {
    let c = Cluster::up(1);
    assert_eq!(
        c.enter("n1", &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(c.enter("n1", &["true"]).status.code(), Some(0));
    let missing = c.enter("n9", &["true"]);
    assert!(!missing.status.success());
    assert_fails_saying(&missing, "n9 is not running");

    let again = std::process::Command::new(mosix_bin())
        .args(["up", "--nodes", "1", "--state"])
        .arg(c.state())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_fails_saying(&again, "already up");
}

#[test]
fn down_leaves_nothing_behind() {
    let c = Cluster::up(2);
    let inits: Vec<i32> = ["n1", "n2"].iter().map(|n| c.init_pid(n)).collect();
    let netns = std::fs::read_link(format!("/proc/{}/ns/net", inits[0])).unwrap();
    let out = c.down();
    assert!(out.status.success(), "{}", output_text(&out));
    for pid in inits {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "node init {pid} survived"
        );
    }
    // No process on the host still runs from this state dir or in its netns.
    let state = c.state().to_string_lossy().into_owned();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = p.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|ch| ch.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        assert!(!cmd.contains(&state), "process {name} survived down: {cmd}");
        if let Ok(ns) = std::fs::read_link(p.path().join("ns/net")) {
            assert_ne!(
                ns, netns,
                "process {name} still in the cluster netns: {cmd}"
            );
        }
    }
    // Nothing is left mounted on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&state), "mounts left behind");
}
