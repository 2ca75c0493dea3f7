//! A multi-threaded program moves on a real 3-node cluster, mid-run, twice,
//! and computes the right result.
use std::time::Duration;

use mosix_integration::{output_text, Cluster};

/// The lines `c <k>` the workers printed, in order.
fn counts(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("c "))
        .map(|k| k.parse().expect("a count"))
        .collect()
}

#[test]
fn four_threads_with_a_mutex_move_twice_mid_run_and_the_total_is_right() {
    let c = Cluster::up(3);
    let prog = c.compile("threads");
    // Four workers add 1 to a shared counter under a mutex, 3000 times
    // each, napping 2 ms in between: about 7 s of work.
    let per_thread = 3000u64;
    c.sh("n1", "mkdir -p /tmp/w");
    let _r = c.start(
        "n1",
        &format!(
            "cd /tmp/w && {} count {per_thread} > /tmp/w/out; echo $? > /tmp/w/status",
            prog.display()
        ),
    );
    let out = |c: &Cluster| c.sh("n1", "cat /tmp/w/out 2>/dev/null || true");
    let progress = |c: &Cluster| counts(&out(c)).last().copied().unwrap_or(0);
    let started = Cluster::wait_for(Duration::from_secs(10), || progress(&c) >= 500);
    assert!(started.is_some(), "it never got going: {:?}", out(&c));
    let pid: u32 = c
        .sh("n1", "pgrep -n -x threads")
        .trim()
        .parse()
        .expect("threads on n1");
    let g = 1 << 22 | pid;

    for (hop, node) in ["n2", "n3"].into_iter().enumerate() {
        let before = progress(&c);
        assert!(before < 4 * per_thread, "it finished before move {hop}");
        // From another node each time, as any user of the cluster could.
        let out = c.enter(
            node,
            &["sh", "-c", &format!("echo {node} > /mosix/proc/{g}/where")],
        );
        assert!(
            out.status.success(),
            "move to {node}: {}",
            output_text(&out)
        );
        let there = c.sh(node, "pgrep -n -x threads || true");
        let there = there.trim();
        assert!(!there.is_empty(), "no threads process on {node}");
        assert_eq!(
            c.sh(node, &format!("ls /proc/{there}/task | wc -l")).trim(),
            "5",
            "main thread and four workers on {node}"
        );
        assert_eq!(
            c.sh("n1", &format!("cat /mosix/proc/{g}/where")),
            format!("{node}\n")
        );
        // It keeps computing there before it moves again.
        let more = Cluster::wait_for(Duration::from_secs(10), || progress(&c) >= before + 1000);
        assert!(more.is_some(), "no progress on {node}: {}", progress(&c));
    }

    let done = Cluster::wait_for(Duration::from_secs(60), || {
        c.sh("n1", "cat /tmp/w/status 2>/dev/null || true").trim() == "0"
    });
    let text = out(&c);
    assert!(
        done.is_some(),
        "exit status {:?}; output tail: {:?}",
        c.sh("n1", "cat /tmp/w/status 2>/dev/null || true"),
        text.lines().rev().take(3).collect::<Vec<_>>()
    );
    let total = 4 * per_thread;
    assert_eq!(text.lines().last(), Some(format!("total {total}").as_str()));
    // Every hundredth addition was seen exactly once and in order: no
    // addition was lost or repeated by a move, the mutex held throughout.
    let want: Vec<u64> = (1..=total / 100).map(|k| k * 100).collect();
    assert_eq!(counts(&text), want);
}

#[test]
fn four_threads_checkpointed_mid_run_and_restarted_elsewhere_finish_with_the_right_total() {
    let c = Cluster::up(3);
    let prog = c.compile("threads");
    let per_thread = 2000u64;
    c.sh("n1", "mkdir -p /tmp/w");
    let _r = c.start(
        "n1",
        &format!(
            "cd /tmp/w && {} count {per_thread} > /tmp/w/out",
            prog.display()
        ),
    );
    let out = |c: &Cluster| c.sh("n1", "cat /tmp/w/out 2>/dev/null || true");
    let progress = |c: &Cluster| counts(&out(c)).last().copied().unwrap_or(0);
    let started = Cluster::wait_for(Duration::from_secs(10), || progress(&c) >= 500);
    assert!(started.is_some(), "it never got going: {:?}", out(&c));
    let pid: u32 = c
        .sh("n1", "pgrep -n -x threads")
        .trim()
        .parse()
        .expect("threads on n1");
    let g = (1 << 22 | pid).to_string();
    let bin = mosix_integration::mosix_bin();
    let bin = bin.to_str().unwrap();
    let ck = c.enter("n1", &[bin, "checkpoint", "--kill", &g, "/tmp/t.ckpt"]);
    assert!(ck.status.success(), "{}", output_text(&ck));
    let at = progress(&c);
    assert!(at < 4 * per_thread, "it finished before the checkpoint");
    let rs = c.enter("n1", &[bin, "restart", "/tmp/t.ckpt", "--on", "n2"]);
    assert!(rs.status.success(), "{}", output_text(&rs));
    let there = c.sh("n2", "pgrep -n -x threads || true");
    assert!(!there.trim().is_empty(), "not restarted on n2");
    assert_eq!(
        c.sh("n2", &format!("ls /proc/{}/task | wc -l", there.trim()))
            .trim(),
        "5",
        "main thread and four workers on n2"
    );
    let total = 4 * per_thread;
    let done = Cluster::wait_for(Duration::from_secs(60), || {
        out(&c).lines().last() == Some(format!("total {total}").as_str())
    });
    assert!(done.is_some(), "no total: {:?}", out(&c).lines().last());
    let want: Vec<u64> = (1..=total / 100).map(|k| k * 100).collect();
    assert_eq!(counts(&out(&c)), want);
}
