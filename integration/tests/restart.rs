//! A node's daemon starts again cleanly: right after a crash (over the dead
//! /mosix it left), and right after `umount /mosix` (while the old daemon
//! lets go of its port); a /mosix that a live daemon serves is refused with
//! "already mounted".
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mosix_integration::{assert_fails_saying, mosix_bin, output_text, Cluster};

fn config(c: &Cluster, node: &str) -> PathBuf {
    c.state().join("nodes").join(node).join("config.toml")
}

/// The mount helper, where a node can run it (the repository may be hidden
/// inside a node; the state directory is not).
fn helper(c: &Cluster) -> PathBuf {
    let helper = c.state().join("mount.fuse.mosix");
    if !helper.exists() {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../mount-helpers/mount.fuse.mosix"),
            &helper,
        )
        .unwrap();
    }
    helper
}

/// Waits until `node`'s /mosix lists exactly `nodes`.
#[track_caller]
fn assert_lists(c: &Cluster, node: &str, nodes: &[&str], within: Duration) {
    let ls = || {
        let out = c.enter(node, &["ls", "/mosix/nodes"]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let ok = Cluster::wait_for(within, || ls() == nodes);
    assert!(ok.is_some(), "{node}'s /mosix/nodes: {:?}", ls());
}

#[test]
fn a_daemon_killed_hard_starts_again_at_once() {
    let c = Cluster::up(2);
    c.sh("n1", "echo from-n1 > /tmp/restart-probe");
    c.sh("n2", "echo from-n2 > /tmp/restart-probe");

    c.kill_daemon("n2");
    let killed = Instant::now();
    // What the crash leaves: a dead mount that refuses every access.
    let out = c.enter("n2", &["ls", "/mosix"]);
    assert_fails_saying(&out, "Transport endpoint is not connected");

    // Start it again within a second of the crash.
    let bin = mosix_bin();
    let log = c.state().join("nodes/n2/restart.log");
    c.sh(
        "n2",
        &format!(
            "setsid {} daemon --config {} </dev/null >>{} 2>&1 &",
            bin.display(),
            config(&c, "n2").display(),
            log.display()
        ),
    );
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "restart began {took:?} after the crash"
    );

    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ok = Cluster::wait_for(Duration::from_secs(15), || {
        c.enter("n2", &["readlink", "/mosix/here"]).status.success()
    });
    assert!(
        ok.is_some(),
        "n2's /mosix did not come back:\n{}",
        log_text()
    );
    assert_eq!(c.sh("n2", "readlink /mosix/here"), "nodes/n2\n");
    // It is the only mosix mount at /mosix: the dead one was taken away.
    let mounts = c.sh(
        "n2",
        "grep -c ' /mosix fuse.mosix ' /proc/self/mounts || true",
    );
    assert_eq!(
        mounts.trim(),
        "1",
        "{}",
        c.sh("n2", "cat /proc/self/mounts")
    );
    assert!(
        log_text().contains("removing the dead mount"),
        "{}",
        log_text()
    );

    // And it is a member again: both nodes read each other's files.
    assert_lists(&c, "n2", &["n1", "n2"], Duration::from_secs(15));
    assert_lists(&c, "n1", &["n1", "n2"], Duration::from_secs(15));
    assert_eq!(
        c.sh("n2", "cat /mosix/nodes/n1/tmp/restart-probe"),
        "from-n1\n"
    );
    let read_n2 = Cluster::wait_for(Duration::from_secs(10), || {
        c.enter("n1", &["cat", "/mosix/nodes/n2/tmp/restart-probe"])
            .stdout
            == b"from-n2\n"
    });
    assert!(
        read_n2.is_some(),
        "n1 cannot read n2's files after the restart"
    );
}

#[test]
fn umount_then_mount_starts_a_new_daemon_and_a_live_mount_is_refused() {
    let c = Cluster::up(2);
    let bin = mosix_bin();
    let helper = helper(&c);
    let cfg = config(&c, "n1");
    let log = c.state().join("n1-helper.log");
    let mount = |opts: &str| {
        format!(
            "MOSIX_BIN={} MOSIX_MOUNT_TIMEOUT=20 sh {} mosix /mosix -o {opts}",
            bin.display(),
            helper.display()
        )
    };
    let opts = format!("config={},log={}", cfg.display(), log.display());

    // umount stops the daemon; mount right after starts a new one, which
    // gets the port as soon as the old daemon lets go of it.
    let start = Instant::now();
    let out = c.enter(
        "n1",
        &["sh", "-c", &format!("umount /mosix && {}", mount(&opts))],
    );
    assert!(
        out.status.success(),
        "{}\nlog:\n{}",
        output_text(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(c.sh("n1", "readlink /mosix/here"), "nodes/n1\n");
    assert_lists(&c, "n1", &["n1", "n2"], Duration::from_secs(15));
    let daemons = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '[d]aemon --config' || true";
    assert_eq!(c.sh("n1", daemons).trim(), "1", "exactly one daemon runs");

    // Mounting over the live /mosix is refused, by the helper and by the
    // daemon itself, saying so (not a bind error), and harms nothing.
    let out = c.enter("n1", &["sh", "-c", &mount(&opts)]);
    assert_fails_saying(&out, "already mounted");
    let out = c.enter(
        "n1",
        &[
            bin.to_str().unwrap(),
            "daemon",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert_fails_saying(&out, "already mounted");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("Address already in use"),
        "{}",
        output_text(&out)
    );
    assert_eq!(c.sh("n1", "readlink /mosix/here"), "nodes/n1\n");
    assert_eq!(c.sh("n1", daemons).trim(), "1");

    // A failed mount shows that run's lines of the log, not an earlier run's.
    let bad = |name: &str, text: &str| {
        let p = c.state().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let first = bad("bad1.toml", "name = \"First Bad Name\"\n");
    let second = bad("bad2.toml", "name = \"n7\"\nbogus_second_key = 1\n");
    let shared_log = c.state().join("bad.log");
    for (cfg, said, not_said) in [
        (&first, "First Bad Name", "bogus_second_key"),
        (&second, "bogus_second_key", "First Bad Name"),
    ] {
        let opts = format!("config={},log={}", cfg.display(), shared_log.display());
        let out = c.enter(
            "n1",
            &["sh", "-c", &mount(&opts).replace("/mosix -o", "/tmp/m7 -o")],
        );
        assert_fails_saying(&out, said);
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains(not_said),
            "another run's lines: {}",
            output_text(&out)
        );
    }
}

#[test]
fn a_node_keeps_its_secrets() {
    let c = Cluster::up(2);
    let (cert, key) = mosix_net::pki::node_paths(&c.certs(), "n1");
    let state = c.state().display().to_string();

    // Another node sees none of n1's secrets through /mosix, whatever its
    // export says (it is the whole tree): not its key, certificate or config,
    // not the directory holding its key, not its control socket's directory.
    let n1 = |p: &str| format!("/mosix/nodes/n1{p}");
    for path in [
        key.display().to_string(),
        cert.display().to_string(),
        c.certs().display().to_string(),
        c.certs().join("ca.pem").display().to_string(),
        config(&c, "n1").display().to_string(),
        "/run/mosix".to_string(),
        "/run/mosix/control.sock".to_string(),
    ] {
        let out = c.enter("n2", &["stat", &n1(&path)]);
        assert_fails_saying(&out, "No such file or directory");
    }
    let listing = c.sh("n2", &format!("ls -a {}", n1(&state)));
    assert!(!listing.contains("certs"), "{listing}");
    // What is not secret is still served: the state dir, n1's log.
    assert!(listing.contains("nodes"), "{listing}");
    c.sh(
        "n2",
        &format!("test -s {}", n1(&format!("{state}/nodes/n1/node.log"))),
    );
    c.sh("n2", "echo x > /tmp/not-secret");
    assert_eq!(c.sh("n1", "cat /mosix/nodes/n2/tmp/not-secret"), "x\n");

    // A key others can read stops the daemon from starting, naming it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let bin = mosix_bin();
    let out = c.enter(
        "n1",
        &[
            bin.to_str().unwrap(),
            "daemon",
            "--config",
            config(&c, "n1").to_str().unwrap(),
        ],
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_fails_saying(
        &out,
        &format!("private key {} has mode 0644", key.display()),
    );
}
