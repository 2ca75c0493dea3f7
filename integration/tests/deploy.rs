//! A deployment done as docs/CONFIGURATION.md ("Deploying") tells a new
//! user, on three machines: each its own PID, mount, UTS and network
//! namespaces, linked by veth pairs to a bridge at 10.0.0.1-3, with the
//! node config taken verbatim from the docs. Certificates by `mosix cluster
//! init`, the install script into a DESTDIR, mounts by `mount -t
//! fuse.mosix` and by the documented fstab line, a third node added,
//! SIGKILL and restart, `umount && mount`, SIGTERM and leave, a node
//! removed and its certificate revoked, a config that names another node
//! than its certificate refused.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mosix_integration::machine::{fenced_block, repo, wait_for, Lan, Machine};
use mosix_integration::{assert_fails_saying, mosix_bin, output_text};

const DOC: &str = include_str!("../../docs/CONFIGURATION.md");

fn init_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_machine-init"))
}

/// Step 4's config: verbatim for n1; for node `i`, as the docs say, its own
/// name, id, address and files, and the other nodes as peers.
fn node_config(i: u8) -> String {
    let n1 = fenced_block(DOC, "**4. Write the node's config**", "```toml");
    if i == 1 {
        return n1;
    }
    let me = format!("n{i}");
    let addr = format!("10.0.0.{i}:");
    let c = n1
        .replace("n1", "@NAME@")
        .replace(&me, "n1")
        .replace("@NAME@", &me)
        .replace("10.0.0.1:", "@ADDR@")
        .replace(&addr, "10.0.0.1:")
        .replace("@ADDR@", &addr)
        .replace("id = 1\n", &format!("id = {i}\n"));
    assert!(c.contains(&format!("id = {i}\n")), "{c}");
    c
}

/// The documented fstab line.
fn fstab_line() -> String {
    let block = fenced_block(DOC, "or the fstab line", "```");
    let line = block
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("mosix"))
        .expect("an fstab line");
    assert!(line.contains("fuse.mosix"), "{line}");
    line.to_string()
}

/// The documented `mount -t fuse.mosix` command.
fn mount_command() -> String {
    let block = fenced_block(DOC, "/sbin/mount.fuse.mosix`, so", "```sh");
    block.trim().to_string()
}

/// Step 3 for node `name`, with the files from the CA machine's `pki`.
fn copy_node_files(m: &Machine, pki: &Path, name: &str) {
    let p = pki.display();
    m.sh(&format!(
        "set -e
         install -d -m 0700 /etc/mosix
         cp {p}/ca.pem {p}/{name}.pem {p}/{name}.key /etc/mosix/
         chmod 0600 /etc/mosix/{name}.key"
    ));
}

fn write_file(m: &Machine, path: &str, text: &str) {
    m.sh(&format!("cat > {path} <<'MOSIX_EOF'\n{text}MOSIX_EOF\n"));
}

/// Every member's state, as `mosix status` on `m` shows it.
fn states(m: &Machine) -> BTreeMap<String, String> {
    let out = m.run("mosix status --json");
    if !out.status.success() {
        return BTreeMap::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_lowercase(),
            )
        })
        .collect()
}

fn nodes_listed(m: &Machine) -> Vec<String> {
    let out = m.run("ls /mosix/nodes");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[track_caller]
fn assert_reads(m: &Machine, node: &str) {
    let out = m.run(&format!("cat /mosix/nodes/{node}/etc/mosix-probe"));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == node,
        "{} reading {node}'s probe: {}\nmounts: {}\nlisted: {:?}\nstates: {:?}\nlog:\n{}",
        m.name,
        output_text(&out),
        m.sh("grep mosix /proc/self/mountinfo || true"),
        nodes_listed(m),
        states(m),
        log(m)
    );
}

/// Kills the machine's daemon with `sig` and waits until it is gone.
fn kill_daemon(m: &Machine, sig: &str) -> Instant {
    let pid = m
        .daemon_pid()
        .unwrap_or_else(|| panic!("no daemon on {}", m.name));
    m.sh(&format!("kill -{sig} {pid}"));
    let at = Instant::now();
    let gone = wait_for(Duration::from_secs(10), || m.daemon_pid().is_none());
    assert!(
        gone.is_some(),
        "{}'s daemon outlived SIG{sig} by 10 s",
        m.name
    );
    at
}

fn log(m: &Machine) -> String {
    String::from_utf8_lossy(&m.run("cat /var/log/mosix-mosix.log").stdout).into_owned()
}

#[test]
fn the_documented_deployment_works_on_three_machines() {
    let test_start = Instant::now();
    let state = tempfile::Builder::new()
        .prefix("mosix-deploy-")
        .tempdir()
        .expect("state dir");
    let s = state.path();
    let bin = mosix_bin();

    // Step 2 on "the CA machine" (the host): two nodes to begin with.
    let pki = s.join("pki");
    let out = Command::new(&bin)
        .args(["cluster", "init", "--dir"])
        .arg(&pki)
        .args(["--nodes", "n1,n2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    // Step 1: the install script, staged into a DESTDIR (what every
    // machine then sees at /usr/local and /sbin).
    let dest = s.join("dest");
    let out = Command::new("sh")
        .arg(repo().join("mount-helpers/install"))
        .arg(format!("DESTDIR={}", dest.display()))
        .arg(format!("MOSIX_BIN={}", bin.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "install: {}", output_text(&out));
    assert!(out.stderr.is_empty(), "install: {}", output_text(&out));
    for f in [
        "usr/local/bin/mosix",
        "sbin/mount.fuse.mosix",
        "etc/systemd/system/mosix.service",
        "usr/local/share/doc/mosix/CONFIGURATION.md",
        "usr/local/share/doc/mosix/README.md",
    ] {
        assert!(dest.join(f).exists(), "install did not write {f}");
    }
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/mosix.service")).unwrap();
    assert!(unit.contains("Type=notify"), "{unit}");
    for doc in unit
        .lines()
        .filter_map(|l| l.strip_prefix("Documentation="))
        .flat_map(str::split_whitespace)
    {
        let path = doc.strip_prefix("file://").expect("a file:// link");
        assert!(
            dest.join(path.trim_start_matches('/')).exists(),
            "the unit names {doc}, which install did not write"
        );
    }

    // Three machines on one LAN.
    let init = init_bin();
    let lan = Lan::new(&init, "10.0.0");
    let machines: Vec<Machine> = (1..=3u8)
        .map(|i| {
            let m = Machine::start(&format!("n{i}"), &init);
            let scratch = s.join(format!("scratch-n{i}"));
            std::fs::create_dir_all(&scratch).unwrap();
            m.private_root(&dest, &scratch);
            lan.plug(&m, i);
            m.sh(&format!("echo n{i} > /etc/mosix-probe"));
            m
        })
        .collect();
    let [n1, n2, n3] = &machines[..] else {
        unreachable!()
    };
    // Each machine has lo and its veth end, nothing else: 10.0.0.0/24 is
    // reachable only over the link.
    let links = n1.sh("ip -br link");
    assert_eq!(links.lines().count(), 2, "{links}");

    // Steps 3 and 4 on n1 and n2.
    for (i, m) in [(1, n1), (2, n2)] {
        copy_node_files(m, &pki, &m.name);
        write_file(m, "/etc/mosix/node.toml", &node_config(i));
    }
    n2.sh(&format!("echo '{}' >> /etc/fstab", fstab_line()));

    // Step 5: n1 by `mount -t fuse.mosix`, n2 by its fstab line, at once.
    let started = Instant::now();
    let a = n1.spawn(&mount_command());
    let b = n2.spawn("mount /mosix");
    for (m, child) in [(n1, a), (n2, b)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "mounting on {}: {}\nlog:\n{}",
            m.name,
            output_text(&out),
            log(m)
        );
    }
    let took = started.elapsed();
    // Mounted means joined: the peer's files are there at once.
    assert_reads(n1, "n2");
    assert_reads(n2, "n1");
    eprintln!("n1 and n2 mounted and joined in {took:?}");
    assert!(took < Duration::from_secs(10), "mounting took {took:?}");

    // Secrets are never exported.
    let out = n1.run("ls /mosix/nodes/n2/etc/mosix");
    assert_fails_saying(&out, "No such file");
    let out = n1.run("cat /mosix/nodes/n2/etc/mosix/n2.key");
    assert_fails_saying(&out, "No such file");

    // Mounting over a live /mosix says so.
    let out = n2.run("mount /mosix");
    assert_fails_saying(&out, "already mounted");

    // Adding a node: a certificate with the next id, files, config, mount.
    let out = Command::new(&bin)
        .args(["cluster", "add-node", "--dir"])
        .arg(&pki)
        .arg("n3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("node id 3"),
        "{}",
        output_text(&out)
    );
    copy_node_files(n3, &pki, "n3");
    write_file(n3, "/etc/mosix/node.toml", &node_config(3));
    n3.sh(&mount_command());
    assert_reads(n3, "n1");
    assert_reads(n3, "n2");
    for m in [n1, n2] {
        let ok = wait_for(Duration::from_secs(10), || {
            states(m).get("n3").map(String::as_str) == Some("alive")
        });
        assert!(ok.is_some(), "{} does not see n3: {:?}", m.name, states(m));
        assert_reads(m, "n3");
    }

    // SIGKILL, then a restart within a second, over the dead mount.
    let killed = kill_daemon(n2, "KILL");
    assert_fails_saying(&n2.run("ls /mosix"), "Transport endpoint is not connected");
    let out = n2.run("mount /mosix");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
    assert!(
        out.status.success(),
        "restart: {}\n{}",
        output_text(&out),
        log(n2)
    );
    // Mounted means ready here too: the dead mount stays until the new one
    // replaces it (the helper waits for the new one), and the join waits
    // until every live peer has spoken to the new run, so each of them
    // reaches it rather than its crashed predecessor.
    assert_reads(n2, "n1");
    assert_reads(n2, "n3");
    assert_reads(n1, "n2");
    assert_reads(n3, "n2");

    // `umount && mount` at once.
    let out = n2.run("umount /mosix && mount /mosix");
    assert!(out.status.success(), "{}\n{}", output_text(&out), log(n2));
    assert_reads(n2, "n3");

    // SIGTERM: n3 leaves, and the others show it `left` at once (a crash
    // would take seconds of probing to be `dead`).
    let stopped = kill_daemon(n3, "TERM");
    for m in [n1, n2] {
        let ok = wait_for(Duration::from_secs(3), || {
            states(m).get("n3").map(String::as_str) == Some("left")
        });
        assert!(
            ok.is_some(),
            "{} after n3 left: {:?}\nits log:\n{}\nn3's log:\n{}",
            m.name,
            states(m),
            log(m),
            log(n3)
        );
        assert!(
            !nodes_listed(m).contains(&"n3".to_string()),
            "{:?}",
            nodes_listed(m)
        );
    }
    let took = stopped.elapsed();
    eprintln!("n3 seen as left {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // SIGTERM also unmounted /mosix on n3.
    assert!(!n3.sh("cat /proc/self/mountinfo").contains("fuse.mosix"));

    // A live member is not removed (it would join again) unless revoked.
    let out = n1.run("mosix cluster remove-node n2");
    // (alive, or suspect for a moment on a loaded machine)
    assert_fails_saying(&out, "stop its daemon first");

    // remove-node: gone from every list at once.
    let out = n1.run("mosix cluster remove-node n3");
    assert!(out.status.success(), "{}", output_text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("removed n3 here and on 1 member(s): n2"),
        "{said}"
    );
    for m in [n1, n2] {
        assert!(!states(m).contains_key("n3"), "{}: {:?}", m.name, states(m));
    }
    // Not revoked: started again, it joins as before.
    n3.sh(&mount_command());
    assert_reads(n3, "n1");
    let ok = wait_for(Duration::from_secs(10), || {
        states(n1).get("n3").map(String::as_str) == Some("alive")
    });
    assert!(ok.is_some(), "n3 did not come back: {:?}", states(n1));
    kill_daemon(n3, "TERM");

    // remove-node --revoke: gone from every list, its certificate refused.
    let out = n1.run("mosix cluster remove-node --revoke n3");
    assert!(out.status.success(), "{}", output_text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("removed n3 here and on 1 member(s): n2"),
        "{said}"
    );
    let fp = mosix_net::pki::fingerprint_of_file(&pki.join("n3.pem")).unwrap();
    assert!(said.contains(&fp), "{said}");
    for m in [n1, n2] {
        assert!(!states(m).contains_key("n3"), "{}: {:?}", m.name, states(m));
        let list = m.sh("cat /etc/mosix/revoked");
        assert!(list.contains(&format!("{fp} n3")), "{}: {list}", m.name);
    }

    // A config that names another node than its certificate is refused,
    // naming the field.
    write_file(
        n3,
        "/etc/mosix/bad.toml",
        &node_config(3).replace("name = \"n3\"", "name = \"n1\""),
    );
    let out = n3.run("mosix daemon --config /etc/mosix/bad.toml");
    assert_fails_saying(&out, "name mismatch");
    assert_fails_saying(&out, "n3.pem");

    // The revoked node cannot come back: its handshakes are refused (and
    // logged), and after the documented wait it mounts alone.
    let back = n3.spawn(&mount_command());
    std::thread::sleep(Duration::from_secs(3));
    for m in [n1, n2] {
        assert!(!states(m).contains_key("n3"), "{}: {:?}", m.name, states(m));
    }
    let refused = wait_for(Duration::from_secs(5), || {
        log(n1).contains("refused a revoked certificate")
            || log(n2).contains("refused a revoked certificate")
    });
    assert!(refused.is_some(), "n1 log:\n{}", log(n1));
    let out = back.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{}", output_text(&out), log(n3));
    assert!(
        log(n3).contains("no configured peer answered"),
        "{}",
        log(n3)
    );
    assert_eq!(nodes_listed(n3), vec!["n3".to_string()]);
    assert_eq!(states(n1).get("n3"), None);

    let total = test_start.elapsed();
    eprintln!("deployment test took {total:?}");
    assert!(total < Duration::from_secs(120), "{total:?}");
    drop(machines);
    drop(lan);
}
