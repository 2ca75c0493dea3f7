//! The /mosix namespace on a real 3-node cluster: every operation from one
//! node onto another node's files, checked against the serving node's own view.
use std::time::{Duration, Instant};

use mosix_integration::{assert_fails_saying, output_text, Cluster};

const PROBE: &str = env!("CARGO_BIN_EXE_fsprobe");

fn nobody(script: &str) -> String {
    format!("setpriv --reuid=65534 --regid=65534 --clear-groups sh -c '{script}'")
}

#[test]
fn namespace_layout() {
    let c = Cluster::up(3);
    let root = c.sh("n1", "ls /mosix");
    assert_eq!(
        root.split_whitespace().collect::<Vec<_>>(),
        ["cluster", "here", "home", "nodes", "proc"]
    );
    let nodes = c.sh("n2", "ls /mosix/nodes");
    assert_eq!(
        nodes.split_whitespace().collect::<Vec<_>>(),
        ["n1", "n2", "n3"]
    );
    assert_eq!(c.sh("n2", "readlink /mosix/here"), "nodes/n2\n");
    // A process that never migrated has its home here.
    assert_eq!(c.sh("n3", "readlink /mosix/home"), "nodes/n3\n");
    // /mosix/here is this node's own tree: the node's private /tmp shows.
    c.sh("n1", "echo mine > /tmp/here-probe");
    assert_eq!(c.sh("n1", "cat /mosix/here/tmp/here-probe"), "mine\n");
    // The same path means the same file on every node.
    assert_eq!(c.sh("n3", "cat /mosix/nodes/n1/tmp/here-probe"), "mine\n");
    // The serving node's kernel interfaces and /mosix itself are not exported.
    for hidden in ["proc", "sys", "dev", "mosix"] {
        let out = c.enter("n1", &["ls", &format!("/mosix/nodes/n2/{hidden}")]);
        assert!(
            !out.status.success(),
            "/mosix/nodes/n2/{hidden} is served: {}",
            output_text(&out)
        );
    }
    let listing = c.sh("n1", "ls /mosix/nodes/n2/");
    assert!(
        listing.contains("etc") && !listing.contains("proc"),
        "{listing}"
    );
    // The virtual part is read-only.
    let out = c.enter("n1", &["mkdir", "/mosix/newdir"]);
    assert_fails_saying(&out, "Read-only");
}

#[test]
fn local_passthrough_shares_files_with_native_users() {
    let c = Cluster::up(1);
    c.sh("n1", "cp /bin/true /tmp/prog && chmod 755 /tmp/prog");
    // Reading a program through /mosix/here does not stop anyone from
    // running it by its real path.
    assert_eq!(
        c.sh("n1", "exec 3</mosix/here/tmp/prog; /tmp/prog && echo ran"),
        "ran\n"
    );
    // A writer through /mosix/here does, as a native writer would.
    let out = c.enter(
        "n1",
        &["sh", "-c", "exec 3>>/mosix/here/tmp/prog; /tmp/prog"],
    );
    assert_fails_saying(&out, "Text file busy");
    // Once it closed (the kernel tells the daemon a moment later), the
    // read-write backing file goes with it.
    assert!(
        Cluster::wait_for(Duration::from_secs(5), || c
            .enter("n1", &["/tmp/prog"])
            .status
            .success())
        .is_some(),
        "/tmp/prog stays busy after its /mosix writer closed"
    );
    // A writer beside a passthrough reader: every view sees its data at once.
    assert_eq!(
        c.sh(
            "n1",
            "printf old > /tmp/shared; exec 3</mosix/here/tmp/shared; \
             printf new > /mosix/here/tmp/shared && cat /tmp/shared /mosix/here/tmp/shared - <&3"
        ),
        "newnewnew"
    );
    // And a native writer's data shows through /mosix/here.
    assert_eq!(
        c.sh(
            "n1",
            "exec 3</mosix/here/tmp/shared; printf native > /tmp/shared; cat - <&3"
        ),
        "native"
    );
}

#[test]
fn remote_operations_match_the_serving_node() {
    let c = Cluster::up(3);
    let r = "/mosix/nodes/n2/tmp/t";
    c.sh("n1", &format!("mkdir {r} && ls -ld {r}"));
    assert!(c.sh("n2", "test -d /tmp/t && echo yes").contains("yes"));
    assert!(
        c.enter("n1", &["test", "-e", "/tmp/t"]).status.code() == Some(1),
        "n1's own /tmp got it"
    );

    // Data: 3 MiB written from n1 arrives intact on n2, and reads back.
    c.sh(
        "n1",
        &format!("head -c 3145728 /dev/urandom > /tmp/blob && cp /tmp/blob {r}/blob"),
    );
    let here = c.sh("n1", "sha256sum < /tmp/blob");
    assert_eq!(c.sh("n2", "sha256sum < /tmp/t/blob"), here);
    assert_eq!(c.sh("n1", &format!("sha256sum < {r}/blob")), here);
    assert_eq!(c.sh("n3", &format!("sha256sum < {r}/blob")), here);

    // Append, partial overwrite, truncate.
    c.sh("n1", &format!("printf hello > {r}/f && printf ' world' >> {r}/f && printf J | dd of={r}/f bs=1 seek=0 conv=notrunc 2>/dev/null"));
    assert_eq!(c.sh("n2", "cat /tmp/t/f"), "Jello world");
    c.sh("n1", &format!("truncate -s 5 {r}/f"));
    assert_eq!(c.sh("n2", "cat /tmp/t/f"), "Jello");

    // Attributes set from n1 are what n2 sees locally.
    c.sh("n1", &format!("chmod 0640 {r}/f && chown 65534:65534 {r}/f && touch -m -d '2001-02-03 04:05:06 UTC' {r}/f"));
    let fmt = "stat -c '%s %a %u %g %h %F %Y'";
    assert_eq!(
        c.sh("n1", &format!("{fmt} {r}/f")),
        c.sh("n2", &format!("{fmt} /tmp/t/f"))
    );
    assert!(c
        .sh("n2", &format!("{fmt} /tmp/t/f"))
        .starts_with("5 640 65534 65534 1 regular file 981173106"));

    // Names: symlink, hard link, rename, fifo, unlink, rmdir.
    c.sh(
        "n1",
        &format!(
            "ln -s f {r}/sym && ln {r}/f {r}/hard && mv {r}/blob {r}/blob2 && mkfifo {r}/fifo"
        ),
    );
    assert_eq!(c.sh("n2", "readlink /tmp/t/sym"), "f\n");
    assert_eq!(c.sh("n1", &format!("readlink {r}/sym")), "f\n");
    assert_eq!(c.sh("n1", &format!("cat {r}/sym")), "Jello");
    assert_eq!(c.sh("n2", "stat -c %h /tmp/t/f"), "2\n");
    // Hard links are one file to stat: same st_dev/st_ino through /mosix.
    let a = c.sh("n1", &format!("stat -c '%d %i' {r}/f"));
    assert_eq!(a, c.sh("n1", &format!("stat -c '%d %i' {r}/hard")));
    assert_ne!(a, c.sh("n1", &format!("stat -c '%d %i' {r}/blob2")));
    assert_eq!(c.sh("n2", "stat -c %F /tmp/t/fifo"), "fifo\n");
    assert_eq!(
        c.sh("n2", "ls /tmp/t")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["blob2", "f", "fifo", "hard", "sym"]
    );
    assert_eq!(c.sh("n1", &format!("ls {r}")), c.sh("n2", "ls /tmp/t"));

    // rename flags: NOREPLACE refuses an existing target, EXCHANGE swaps.
    c.sh("n1", &format!("echo A > {r}/a && echo B > {r}/b"));
    assert_eq!(
        c.sh(
            "n1",
            &format!("{PROBE} rename2 {r}/a {r}/b noreplace || true")
        ),
        "error EEXIST\n"
    );
    assert_eq!(
        c.sh("n1", &format!("{PROBE} rename2 {r}/a {r}/b exchange")),
        "ok\n"
    );
    assert_eq!(c.sh("n2", "cat /tmp/t/a /tmp/t/b"), "B\nA\n");
    // Across nodes there is no atomic rename.
    assert_eq!(
        c.sh(
            "n1",
            &format!("{PROBE} rename2 {r}/a /mosix/nodes/n3/tmp/a none || true")
        ),
        "error EXDEV\n"
    );

    // xattrs.
    assert_eq!(
        c.sh("n1", &format!("{PROBE} setxattr {r}/a user.color blue")),
        "ok\n"
    );
    assert_eq!(
        c.sh("n2", &format!("{PROBE} getxattr /tmp/t/a user.color")),
        "blue\n"
    );
    assert!(c
        .sh("n1", &format!("{PROBE} listxattr {r}/a"))
        .contains("user.color"));
    assert_eq!(
        c.sh("n1", &format!("{PROBE} removexattr {r}/a user.color")),
        "ok\n"
    );
    assert_eq!(
        c.sh(
            "n2",
            &format!("{PROBE} getxattr /tmp/t/a user.color || true")
        ),
        "error ENODATA\n"
    );

    // fallocate and statfs.
    c.sh("n1", &format!("fallocate -l 1048576 {r}/alloc"));
    assert_eq!(c.sh("n2", "stat -c %s /tmp/t/alloc"), "1048576\n");
    let df_remote = c.sh("n1", &format!("stat -f -c '%b %S' {r}"));
    assert_eq!(df_remote, c.sh("n2", "stat -f -c '%b %S' /tmp/t"));

    // Removal.
    c.sh("n1", &format!("rm {r}/sym {r}/hard {r}/fifo && rm -r {r}"));
    assert_eq!(
        c.enter("n2", &["test", "-e", "/tmp/t"]).status.code(),
        Some(1)
    );
}

#[test]
fn permissions_follow_the_caller() {
    let c = Cluster::up(2);
    c.sh("n2", "echo secret > /tmp/secret && chmod 600 /tmp/secret && mkdir -m 755 /tmp/rootdir && mkdir -m 1777 /tmp/open");
    // Root is root.
    assert_eq!(c.sh("n1", "cat /mosix/nodes/n2/tmp/secret"), "secret\n");
    // An unprivileged user can read neither the file nor write the root-owned dir...
    let out = c.enter(
        "n1",
        &["sh", "-c", &nobody("cat /mosix/nodes/n2/tmp/secret")],
    );
    assert!(!out.status.success());
    assert_fails_saying(&out, "Permission denied");
    let out = c.enter(
        "n1",
        &["sh", "-c", &nobody("touch /mosix/nodes/n2/tmp/rootdir/x")],
    );
    assert_fails_saying(&out, "Permission denied");
    // ...and what it creates is owned by it on the serving node.
    c.sh(
        "n1",
        &nobody("echo mine > /mosix/nodes/n2/tmp/open/by-nobody"),
    );
    assert_eq!(
        c.sh("n2", "stat -c '%u %g' /tmp/open/by-nobody"),
        "65534 65534\n"
    );
    // Sticky directory: nobody cannot remove root's file there.
    c.sh("n2", "touch /tmp/open/roots");
    let out = c.enter(
        "n1",
        &["sh", "-c", &nobody("rm -f /mosix/nodes/n2/tmp/open/roots")],
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    assert_eq!(
        c.enter("n2", &["test", "-e", "/tmp/open/roots"])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn dead_nodes_fail_fast_and_a_dead_daemon_leaves_enotconn() {
    // The rows of the failure table in docs/SEMANTICS.md, on a real
    // cluster, with their errnos and bounds.
    let c = Cluster::up(3);
    c.sh("n3", "echo x > /tmp/x");
    assert_eq!(c.sh("n1", "cat /mosix/nodes/n3/tmp/x"), "x\n");
    // A reader on n1 keeps n3's file open across n3's death; it reads once
    // membership calls n3 dead.
    let reader = std::process::Command::new(mosix_integration::mosix_bin())
        .args(["enter", "--state"])
        .arg(c.state())
        .args([
            "n1",
            "--",
            "sh",
            "-c",
            "exec 3</mosix/nodes/n3/tmp/x; \
             while ls /mosix/nodes | grep -q n3; do sleep 0.1; done; \
             start=$(date +%s%N); cat <&3; s=$?; \
             echo \"after $(( ($(date +%s%N) - start) / 1000000 )) ms\" >&2; exit $s",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.kill_daemon("n3");
    // Unreachable, not yet dead: EHOSTDOWN within IDLE_TIMEOUT (an open
    // connection gone silent) or CONNECT_TIMEOUT (a new handshake).
    let start = Instant::now();
    let out = c.enter("n1", &["cat", "/mosix/nodes/n3/tmp/x"]);
    assert_fails_saying(&out, "Host is down");
    let bound =
        mosix_net::IDLE_TIMEOUT.max(mosix_net::CONNECT_TIMEOUT) + Duration::from_millis(700);
    assert!(start.elapsed() < bound, "took {:?}", start.elapsed());
    // Once membership calls it dead, it disappears from the namespace.
    let bound = mosix_daemon::membership::dead_bound(3) + Duration::from_secs(2);
    let gone = Cluster::wait_for(bound, || !c.sh("n1", "ls /mosix/nodes").contains("n3"));
    assert!(
        gone.is_some(),
        "n3 still listed: {}",
        c.sh("n1", "ls /mosix/nodes")
    );
    let start = Instant::now();
    let out = c.enter("n1", &["ls", "/mosix/nodes/n3/tmp"]);
    assert_fails_saying(&out, "No such file or directory");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "dead node access took {:?}",
        start.elapsed()
    );
    // The file that stayed open gives EHOSTDOWN, at once.
    let out = reader.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Host is down"),
        "{err}"
    );
    let ms: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("after "))
        .and_then(|l| l.trim_end_matches(" ms").parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        ms < 1000,
        "reading the open file of a dead node took {ms} ms"
    );

    // On n3 itself, the mount of the dead daemon answers ENOTCONN.
    let out = c.enter("n3", &["ls", "/mosix"]);
    assert_fails_saying(&out, "Transport endpoint is not connected");
}

#[test]
fn mount_helper_mounts_and_umount_stops_the_daemon() {
    let c = Cluster::up(1);
    let state = c.state().to_path_buf();
    mosix_net::pki::issue_node(&c.certs(), "n9").unwrap();
    let (cert, key) = mosix_net::pki::node_paths(&c.certs(), "n9");
    let config = state.join("n9.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"n9\"\nlisten = \"127.0.0.9:7700\"\npeers = [\"127.0.0.1:7700\"]\n\
             control_socket = \"/run/mosix/n9.sock\"\n\
             [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            c.certs().join("ca.pem").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    // The repository may be hidden inside the node; the state dir is not.
    let helper = state.join("mount.fuse.mosix");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mount-helpers/mount.fuse.mosix"),
        &helper,
    )
    .unwrap();
    let bin = mosix_integration::mosix_bin();
    // Exactly how mount(8) runs a helper for `mount -t fuse.mosix mosix /tmp/m9 -o ...`.
    let mount = format!(
        "MOSIX_BIN={} sh {} mosix /tmp/m9 -o rw,nosuid,config={},log={}",
        bin.display(),
        helper.display(),
        config.display(),
        state.join("n9.log").display()
    );
    c.sh("n1", &mount);
    assert!(c
        .sh("n1", "grep ' /tmp/m9 ' /proc/self/mounts")
        .contains("fuse.mosix"));
    assert_eq!(c.sh("n1", "readlink /tmp/m9/here"), "nodes/n9\n");
    let joined = Cluster::wait_for(Duration::from_secs(10), || {
        c.sh("n1", "ls /tmp/m9/nodes")
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["n1", "n9"]
    });
    assert!(joined.is_some(), "{}", c.sh("n1", "ls /tmp/m9/nodes"));
    // Both mounts show the same files of n1.
    c.sh("n1", "echo via-n9 > /tmp/m9/nodes/n1/tmp/helper-probe");
    assert_eq!(c.sh("n1", "cat /mosix/here/tmp/helper-probe"), "via-n9\n");

    // umount stops that daemon.
    c.sh("n1", "umount /tmp/m9");
    let count = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '[n]9[.]toml' || true";
    let gone = Cluster::wait_for(Duration::from_secs(10), || c.sh("n1", count).trim() == "0");
    assert!(gone.is_some(), "the n9 daemon survived umount");

    // A bad config fails the mount with the reason.
    std::fs::write(state.join("bad.toml"), "name = \"Not A Name\"\n").unwrap();
    let out = c.enter(
        "n1",
        &[
            "sh",
            "-c",
            &format!(
                "MOSIX_BIN={} MOSIX_MOUNT_TIMEOUT=5 sh {} mosix /tmp/m8 -o config={}",
                bin.display(),
                helper.display(),
                state.join("bad.toml").display()
            ),
        ],
    );
    assert!(!out.status.success());
    assert_fails_saying(&out, "did not mount");
}

#[test]
fn posix_locks_hold_across_nodes() {
    let c = Cluster::up(3);
    c.sh("n2", "echo data > /tmp/lk");
    let f = "/mosix/nodes/n2/tmp/lk";
    // A process on n1 takes a write lock on n2's file and holds it for 3 s.
    let holder = std::process::Command::new(mosix_integration::mosix_bin())
        .args(["enter", "--state"])
        .arg(c.state())
        .args(["n1", "--", PROBE, "lock", f, "wr", "hold", "3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let locked = Cluster::wait_for(Duration::from_secs(5), || {
        c.sh("n3", &format!("{PROBE} getlk {f}")) == "write-locked\n"
    });
    assert!(locked.is_some(), "n3 never saw n1's lock");
    // Another node, and a local process on the serving node, are refused...
    assert_eq!(
        c.sh("n3", &format!("{PROBE} lock {f} rd try || true")),
        "error EAGAIN\n"
    );
    assert_eq!(
        c.sh("n2", &format!("{PROBE} lock /tmp/lk wr try || true")),
        "error EAGAIN\n"
    );
    assert_eq!(
        c.sh(
            "n2",
            &format!("{PROBE} lock /mosix/here/tmp/lk wr try || true")
        ),
        "error EAGAIN\n"
    );
    // A waiter can be interrupted, as a local F_SETLKW can.
    let start = std::time::Instant::now();
    let out = c.enter("n3", &["timeout", "1", PROBE, "lock", f, "wr", "wait"]);
    assert_eq!(out.status.code(), Some(124), "{}", output_text(&out));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "interrupt took {:?}",
        start.elapsed()
    );
    // ...and a blocking lock on n3 is granted once the holder exits.
    let waited = c.sh("n3", &format!("timeout 30 {PROBE} lock {f} wr wait"));
    let out = holder.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "locked\n");
    let ms: u64 = waited.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        ms >= 500,
        "F_SETLKW returned while the lock was held: {waited}"
    );
    assert_eq!(c.sh("n3", &format!("{PROBE} getlk {f}")), "unlocked\n");
}

#[test]
fn flock_holds_across_nodes() {
    let c = Cluster::up(2);
    c.sh("n2", "touch /tmp/fl");
    let f = "/mosix/nodes/n2/tmp/fl";
    // n1 holds an exclusive flock for 2 s; n2 (locally through /mosix) cannot take it.
    let holder = std::process::Command::new(mosix_integration::mosix_bin())
        .args(["enter", "--state"])
        .arg(c.state())
        .args(["n1", "--", "flock", "-x", f, "sleep", "2"])
        .spawn()
        .unwrap();
    let held = Cluster::wait_for(Duration::from_secs(5), || {
        c.enter("n2", &["flock", "-n", "-x", "/mosix/here/tmp/fl", "true"])
            .status
            .code()
            == Some(1)
    });
    assert!(held.is_some(), "n2 took the flock n1 holds");
    // Waiting works, and the lock is free once the holder is done.
    let out = c.enter(
        "n2",
        &[
            "timeout",
            "20",
            "flock",
            "-x",
            "/mosix/here/tmp/fl",
            "echo",
            "got it",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got it\n",
        "{}",
        output_text(&out)
    );
    assert!(holder.wait_with_output().unwrap().status.success());
    assert_eq!(
        c.enter("n1", &["flock", "-n", "-x", f, "true"])
            .status
            .code(),
        Some(0)
    );
}

/// Open descriptors of `node`'s daemon.
fn daemon_fds(c: &Cluster, node: &str) -> usize {
    let pid = c.daemon_pid(node);
    c.sh(node, &format!("ls /proc/{pid}/fd | wc -l"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_client_that_restarts_fast_loses_its_locks_and_handles_on_the_server() {
    let c = Cluster::up(3);
    c.sh("n2", "echo data > /tmp/lk");
    let f = "/mosix/nodes/n2/tmp/lk";
    // Let n1's namespace settle, then count what n2 holds for nobody.
    assert_eq!(c.sh("n1", &format!("cat {f}")), "data\n");
    std::thread::sleep(Duration::from_millis(300));
    let base = daemon_fds(&c, "n2");
    // A process on n1 opens n2's file and holds a write lock on it.
    let mut holder = std::process::Command::new(mosix_integration::mosix_bin())
        .args(["enter", "--state"])
        .arg(c.state())
        .args(["n1", "--", PROBE, "lock", f, "wr", "hold", "60"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let locked = Cluster::wait_for(Duration::from_secs(5), || {
        c.sh("n3", &format!("{PROBE} getlk {f}")) == "write-locked\n"
    });
    assert!(locked.is_some(), "n3 never saw n1's lock");
    let held = daemon_fds(&c, "n2");
    assert!(
        held > base,
        "n2 holds nothing for n1's open file and lock: {held} <= {base}"
    );

    // n1's daemon crashes and is back at once, long before membership could
    // call it dead.
    let start = Instant::now();
    c.restart_daemon("n1");
    // n2 ends the old run's session: the lock is free for n3...
    let freed = Cluster::wait_for(Duration::from_secs(5), || {
        c.sh("n3", &format!("{PROBE} getlk {f}")) == "unlocked\n"
    });
    assert!(freed.is_some(), "the crashed run's lock is still held");
    eprintln!(
        "lock released {:?} after the restart began",
        start.elapsed()
    );
    // ...and what it held open on n2 is closed.
    let reclaimed = Cluster::wait_for(Duration::from_secs(5), || daemon_fds(&c, "n2") <= base);
    assert!(
        reclaimed.is_some(),
        "n2 still holds {} descriptors (base {base})",
        daemon_fds(&c, "n2")
    );
    // The restarted node works.
    let works = Cluster::wait_for(Duration::from_secs(10), || {
        c.enter("n1", &["cat", f]).stdout == b"data\n"
    });
    assert!(
        works.is_some(),
        "{}",
        output_text(&c.enter("n1", &["cat", f]))
    );
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn a_write_by_another_user_clears_set_id_bits_on_a_remote_file() {
    let c = Cluster::up(3);
    // Owned by uid 1000, writable by anyone, set-user-ID and set-group-ID
    // (group-executable, so set-group-ID means what it says).
    c.sh(
        "n2",
        "echo x > /tmp/sid && chown 1000:1000 /tmp/sid && chmod 06777 /tmp/sid",
    );
    let f = "/mosix/nodes/n2/tmp/sid";
    assert_eq!(c.sh("n1", &format!("stat -c %a {f}")), "6777\n");
    // Another user writes through the remote path: the kernel's rule (as on
    // a local file) clears both bits, seen through fstat on the same
    // descriptor and through stat, on the writing node and the serving one.
    let out = c.sh(
        "n1",
        &format!(
            "setpriv --reuid=2000 --regid=2000 --clear-groups python3 -c \"\
import os\n\
fd = os.open('{f}', os.O_WRONLY)\n\
os.write(fd, b'y')\n\
print(oct(os.fstat(fd).st_mode & 0o7777))\""
        ),
    );
    assert_eq!(out, "0o777\n");
    assert_eq!(c.sh("n1", &format!("stat -c %a {f}")), "777\n");
    assert_eq!(c.sh("n2", "stat -c %a /tmp/sid"), "777\n");
    // Root's write keeps them (CAP_FSETID), as locally.
    c.sh("n2", "chmod 06777 /tmp/sid");
    c.sh("n1", &format!("sh -c 'echo z >> {f}'"));
    assert_eq!(c.sh("n2", "stat -c %a /tmp/sid"), "6777\n");
}
