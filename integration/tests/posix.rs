//! POSIX conformance of /mosix with pjdfstest (the Rust port), run as root
//! on a 2-node cluster, both on this node's files through /mosix/here (kernel
//! passthrough) and on another node's files through /mosix/nodes/n2 (remote).
//! A local tmpfs gives 355 passed, 43 skipped with the same configuration;
//! both /mosix paths must give exactly that.
use std::path::Path;

use mosix_integration::{output_text, Cluster};

const EXPECTED: &str = "pjdfstest: 355 passed, 0 failed, 43 skipped";

#[test]
fn pjdfstest_passes_on_local_and_remote_paths() {
    let runner = Path::new("/usr/local/bin/pjdfstest");
    assert!(
        runner.exists(),
        "{} missing: run `PJDFSTEST_INSTALL_ONLY=1 scripts/pjdfstest /tmp` (scripts/test does)",
        runner.display()
    );
    let c = Cluster::up(2);
    // The repository may be hidden inside nodes (say, under a private /root);
    // the state directory never is.
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts");
    for f in ["pjdfstest", "pjdfstest.toml"] {
        std::fs::copy(scripts.join(f), c.state().join(f)).unwrap();
    }
    let script = c.state().join("pjdfstest");
    c.sh("n1", "mkdir -p /tmp/pjd");
    c.sh("n2", "mkdir -p /tmp/pjd");
    let run = |dir: &str, log: &str| {
        c.enter(
            "n1",
            &[
                "env",
                &format!("PJDFSTEST_LOG={}", c.state().join(log).display()),
                script.to_str().unwrap(),
                dir,
            ],
        )
    };
    let (here, remote) = std::thread::scope(|s| {
        let h = s.spawn(|| run("/mosix/here/tmp/pjd", "pjd-here.log"));
        let r = s.spawn(|| run("/mosix/nodes/n2/tmp/pjd", "pjd-remote.log"));
        (h.join().unwrap(), r.join().unwrap())
    });
    for (what, out) in [("/mosix/here", here), ("/mosix/nodes/n2", remote)] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().any(|l| l == EXPECTED),
            "pjdfstest on {what}: {}",
            output_text(&out)
        );
    }
}
