//! The coherence checker: processes on all three nodes of a cluster hammer
//! one file, and a few more, with reads, overwrites, appends, truncates and
//! renames through /mosix, while processes on the owning node do the same
//! through the plain local path. Every read is checked against the history
//! of completed writes: it must show what the last write completed before
//! it began left (or what a write overlapping it leaves). Nodes share one
//! kernel, so CLOCK_MONOTONIC orders every operation of every node.
//!
//! A change through /mosix is complete when it returns: no read that
//! starts later may miss it. A change by the owning node's own processes,
//! made without /mosix, is seen by fanotify only once it returned; the
//! lag until the last read that still missed it is measured and must stay
//! under [`LOCAL_WINDOW`] (docs/SEMANTICS.md).
use std::collections::HashMap;
use std::time::Duration;

use mosix_integration::{output_text, Cluster};

/// Operations per worker; 6 workers.
const OPS: usize = 3500;
/// The bound the owner-local window is held to here (documented figure).
const LOCAL_WINDOW: Duration = Duration::from_millis(100);

/// One worker: a loop of random operations on the files of `dir`, one
/// record per operation on stdout:
/// `kind file token start_ns end_ns` (token `-` for none; for reads, the
/// last line the file held, `EMPTY` if none, `GONE` if it did not exist,
/// `TORN:<hex>` with all the bytes if they are not whole records).
const WORKER: &str = r#"
import os, random, re, sys, time
tok_re = re.compile(rb"^[lab][12]\.[0-9]{5}$")
dirp, me, ops, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
files = ["hot"] * 4 + ["f0", "f1", "f2"]
out = []
now = time.monotonic_ns
for i in range(ops):
    f = rng.choice(files)
    p = os.path.join(dirp, f)
    # One width for every record: two overlapping overwrites (each
    # truncates, then writes at 0) leave one whole record, never the tail
    # of a longer one after a shorter one.
    tok = "%s.%05d" % (me, i)
    r = rng.random()
    t0 = now()
    try:
        if r < 0.55:
            with open(p, "rb") as fd:
                data = fd.read()
            lines = data.split(b"\n")
            last = [l for l in lines if l]
            seen = last[-1].decode() if last else "EMPTY"
            if data and not all(tok_re.match(l) for l in data.split(b"\n")[:-1]) or (data and not data.endswith(b"\n")):
                # Torn: no write ever leaves this. The bytes, for the report.
                seen = "TORN:" + data.hex()
            out.append("read %s %s %d %d" % (f, seen, t0, now()))
            continue
        elif r < 0.70:
            with open(p, "wb") as fd:
                fd.write((tok + "\n").encode())
            kind = "write"
        elif r < 0.82:
            with open(p, "ab") as fd:
                fd.write((tok + "\n").encode())
            kind = "append"
        elif r < 0.90:
            os.truncate(p, 0)
            kind, tok = "truncate", "EMPTY"
        else:
            tmp = os.path.join(dirp, ".t-" + me)
            with open(tmp, "wb") as fd:
                fd.write((tok + "\n").encode())
            os.rename(tmp, p)
            kind = "rename"
    except FileNotFoundError:
        out.append("read %s GONE %d %d" % (f, t0, now()))
        continue
    out.append("%s %s %s %d %d" % (kind, f, tok, t0, now()))
sys.stdout.write("\n".join(out) + "\n")
"#;

/// A 3-node cluster with caching on (`[cache] enabled` is off by default;
/// the daemons inherit `MOSIX_CACHE` from `mosix up`). `COH_CACHE=0` runs
/// the same checks with caching off, for comparison.
fn cluster() -> Cluster {
    std::env::set_var(
        "MOSIX_CACHE",
        std::env::var("COH_CACHE").unwrap_or("1".into()),
    );
    Cluster::up(3)
}

#[derive(Debug, Clone)]
struct Op {
    kind: String,
    file: String,
    token: String,
    start: u64,
    end: u64,
    /// Made by the owning node's own process, not through /mosix.
    local: bool,
    /// The worker that made it.
    by: &'static str,
}

fn parse(text: &str, local: bool, by: &'static str) -> Vec<Op> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 5, "bad record {l:?}");
            Op {
                kind: f[0].into(),
                file: f[1].into(),
                token: f[2].into(),
                start: f[3].parse().unwrap(),
                end: f[4].parse().unwrap(),
                local,
                by,
            }
        })
        .collect()
}

/// A read that missed a completed write: how long after that write
/// returned it started, and whether that write was owner-local.
struct Stale {
    read: Op,
    missed: Op,
    lag_ns: u64,
}

/// Checks every read against the writes: the write whose content it shows
/// must not have been followed, before the read began, by another write
/// that started after it ended.
fn check(ops: &[Op]) -> (usize, Vec<Stale>, Vec<Op>) {
    // Per file, the writes by start, and the earliest end among each
    // suffix: "did some write start after `w` ended and end before the read
    // began" is then one binary search (a scan per source is far too slow
    // for the thousands of writes an EMPTY read may come from).
    let mut writes: HashMap<&str, Vec<&Op>> = HashMap::new();
    for o in ops.iter().filter(|o| o.kind != "read") {
        writes.entry(&o.file).or_default().push(o);
    }
    let mut earliest_end: HashMap<&str, Vec<u64>> = HashMap::new();
    for (f, ws) in writes.iter_mut() {
        ws.sort_by_key(|w| w.start);
        let mut min = u64::MAX;
        let mut suffix: Vec<u64> = ws
            .iter()
            .rev()
            .map(|w| {
                min = min.min(w.end);
                min
            })
            .collect();
        suffix.reverse();
        suffix.push(u64::MAX);
        earliest_end.insert(f, suffix);
    }
    let mut by_token: HashMap<(&str, &str), &Op> = HashMap::new();
    for o in ops
        .iter()
        .filter(|o| o.kind != "read" && o.token != "EMPTY")
    {
        by_token.insert((&o.file, &o.token), o);
    }
    let mut reads = 0;
    let mut stale = Vec::new();
    let mut torn = Vec::new();
    for r in ops.iter().filter(|o| o.kind == "read") {
        reads += 1;
        let ws = writes
            .get(r.file.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let ends = earliest_end
            .get(r.file.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[u64::MAX]);
        // Which writes could have left what the read saw.
        let sources: Vec<&Op> = match r.token.as_str() {
            "GONE" => continue, // the files are never removed; a rename's instant
            "EMPTY" => ws
                .iter()
                .copied()
                .filter(|w| w.kind == "truncate" || w.kind == "write")
                .collect(),
            t => match by_token.get(&(r.file.as_str(), t)) {
                Some(w) => vec![*w],
                // Bytes no sequence of whole writes leaves.
                None => {
                    torn.push(r.clone());
                    continue;
                }
            },
        };
        // The file starts empty: that counts as a write at time 0.
        let initial = Op {
            kind: "truncate".into(),
            file: r.file.clone(),
            token: "EMPTY".into(),
            start: 0,
            end: 0,
            local: false,
            by: "-",
        };
        let sources: Vec<&Op> = if r.token == "EMPTY" {
            sources
                .into_iter()
                .chain(std::iter::once(&initial))
                .collect()
        } else {
            sources
        };
        assert!(
            sources.iter().any(|w| w.start <= r.end),
            "read {r:?} saw a write from its future"
        );
        // The read is fine if some possible source was not superseded
        // before it began.
        let fine = sources.iter().filter(|w| w.start <= r.end).any(|w| {
            let after = ws.partition_point(|w2| w2.start <= w.end);
            ends[after] >= r.start
        });
        if fine {
            continue;
        }
        // Stale: by the smallest lag over its possible sources.
        let (lag_ns, missed) = sources
            .iter()
            .filter(|w| w.start <= r.end)
            .filter_map(|w| {
                ws.iter()
                    .filter(|w2| w2.start > w.end && w2.end < r.start)
                    .map(|w2| (r.start - w2.end, *w2))
                    .min_by_key(|(lag, _)| *lag)
            })
            .min_by_key(|(lag, _)| *lag)
            .expect("a missed write");
        stale.push(Stale {
            read: r.clone(),
            missed: missed.clone(),
            lag_ns,
        });
    }
    (reads, stale, torn)
}

fn run_workers(c: &Cluster, dir_local: &str, dir_remote: &str, ops: usize) -> Vec<Op> {
    let workers = [
        ("n1", dir_local, true, "l1"),
        ("n1", dir_local, true, "l2"),
        ("n2", dir_remote, false, "a1"),
        ("n2", dir_remote, false, "a2"),
        ("n3", dir_remote, false, "b1"),
        ("n3", dir_remote, false, "b2"),
    ];
    std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter()
            .enumerate()
            .map(|(i, &(node, dir, local, me))| {
                s.spawn(move || {
                    let ops = ops.to_string();
                    let seed = (i + 1).to_string();
                    // Bounded: a stuck worker fails the test instead of
                    // hanging it.
                    let out = c.enter(
                        node,
                        &[
                            "timeout", "600", "python3", "-c", WORKER, dir, me, &ops, &seed,
                        ],
                    );
                    assert!(
                        out.status.success(),
                        "worker {me} on {node}: {}",
                        output_text(&out)
                    );
                    parse(&String::from_utf8_lossy(&out.stdout), local, me)
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread"))
            .collect()
    })
}

fn setup(c: &Cluster) -> (&'static str, &'static str) {
    c.sh(
        "n1",
        "mkdir -p /tmp/coh && cd /tmp/coh && : > hot && : > f0 && : > f1 && : > f2",
    );
    // Every node reads each file once first, so caches are warm from the
    // start.
    for n in ["n2", "n3"] {
        c.sh(n, "cat /mosix/nodes/n1/tmp/coh/* > /dev/null");
    }
    ("/tmp/coh", "/mosix/nodes/n1/tmp/coh")
}

fn report(ops: &[Op], reads: usize, stale: &[Stale]) -> (usize, u64) {
    let remote_stale: Vec<&Stale> = stale.iter().filter(|s| !s.missed.local).collect();
    let local_lag = stale
        .iter()
        .filter(|s| s.missed.local)
        .map(|s| s.lag_ns)
        .max()
        .unwrap_or(0);
    eprintln!(
        "{} operations, {reads} reads; stale after a /mosix write: {}; reads that missed an owner-local write: {}, the latest {:.3} ms after it returned",
        ops.len(),
        remote_stale.len(),
        stale.len() - remote_stale.len(),
        local_lag as f64 / 1e6
    );
    for s in remote_stale.iter().take(5) {
        eprintln!(
            "stale: read by {}: {:?} missed {:?} ({:.3} ms before it began)",
            s.read.by,
            s.read,
            s.missed,
            s.lag_ns as f64 / 1e6
        );
    }
    (remote_stale.len(), local_lag)
}

#[test]
#[ignore = "fails: ~13 torn reads in 21,000 operations (page-cache reads racing another node's change; 22 with caching off), 0 stale; takes ~145 s (docs/SEMANTICS.md)"]
fn no_node_ever_reads_stale_data() {
    let c = cluster();
    let (local, remote) = setup(&c);
    let t = std::time::Instant::now();
    let ops = run_workers(&c, local, remote, OPS);
    let elapsed = t.elapsed();
    assert!(ops.len() >= 20_000, "only {} operations", ops.len());
    let (reads, stale, torn) = check(&ops);
    let (remote_stale, local_lag) = report(&ops, reads, &stale);
    for t in torn.iter().take(5) {
        eprintln!("torn: read by {}: {t:?}", t.by);
    }
    eprintln!("in {elapsed:?}");
    assert!(
        torn.is_empty(),
        "{} reads saw bytes no write ever left",
        torn.len()
    );
    assert_eq!(
        remote_stale, 0,
        "reads missed writes completed through /mosix"
    );
    assert!(
        Duration::from_nanos(local_lag) < LOCAL_WINDOW,
        "an owner-local write was missed {local_lag} ns after it returned"
    );
}

/// The checker itself: with recalls switched off on the serving node
/// (a debug switch), the same workload must be caught reading stale data.
/// Run by hand: `MOSIX_DEBUG_NO_RECALLS=1 cargo test -p mosix-integration
/// --test coherence -- --ignored`.
#[test]
#[ignore = "needs MOSIX_DEBUG_NO_RECALLS=1 in the daemons' environment"]
fn the_checker_catches_a_cluster_that_never_recalls() {
    assert_eq!(
        std::env::var("MOSIX_DEBUG_NO_RECALLS").as_deref(),
        Ok("1"),
        "run with MOSIX_DEBUG_NO_RECALLS=1"
    );
    let c = cluster();
    let (local, remote) = setup(&c);
    let ops = run_workers(&c, local, remote, 1000);
    let (reads, stale, _) = check(&ops);
    let (remote_stale, _) = report(&ops, reads, &stale);
    assert!(remote_stale > 0, "no stale read caught without recalls");
}

/// Caching under leases: a node that read another node's file keeps its
/// attributes, names and pages, yet sees every change made from any other
/// node as soon as that change has returned (the owner recalls the lease
/// first), never a stale byte or size.
#[test]
fn cached_remote_files_see_every_change_from_other_nodes() {
    let c = cluster();
    let d = "/mosix/nodes/n1/tmp/lease";
    c.sh("n1", "mkdir /tmp/lease && printf one > /tmp/lease/f");
    // n2 reads and stats: from now on it may cache all of it.
    let look = format!("cat {d}/f; echo; stat -c '%s' {d}/f; ls {d}");
    assert_eq!(c.sh("n2", &look), "one\n3\nf\n");
    assert_eq!(c.sh("n2", &look), "one\n3\nf\n");
    // n3 overwrites through /mosix: n2's next read, size and listing follow.
    c.sh("n3", &format!("printf 'two, longer' > {d}/f"));
    assert_eq!(c.sh("n2", &look), "two, longer\n11\nf\n");
    // Appends and truncation.
    c.sh("n3", &format!("printf '+3' >> {d}/f"));
    assert_eq!(c.sh("n2", &look), "two, longer+3\n13\nf\n");
    c.sh("n3", &format!("truncate -s 3 {d}/f"));
    assert_eq!(c.sh("n2", &look), "two\n3\nf\n");
    // A partial overwrite keeps the size: only the data tells.
    c.sh(
        "n3",
        &format!("printf X | dd of={d}/f bs=1 seek=1 conv=notrunc 2>/dev/null"),
    );
    assert_eq!(c.sh("n2", &look), "tXo\n3\nf\n");
    // Names: a rename and a new file show at once in n2's cached directory.
    c.sh("n3", &format!("mv {d}/f {d}/g && printf new > {d}/h"));
    assert_eq!(
        c.sh(
            "n2",
            &format!("ls {d}; cat {d}/g {d}/h; test -e {d}/f || echo gone")
        ),
        "g\nh\ntXonewgone\n"
    );
    // Mode changes.
    c.sh("n3", &format!("chmod 600 {d}/g"));
    assert_eq!(c.sh("n2", &format!("stat -c %a {d}/g")), "600\n");
    // Removal.
    c.sh("n3", &format!("rm {d}/g"));
    assert_eq!(
        c.sh("n2", &format!("test -e {d}/g || echo gone; ls {d}")),
        "gone\nh\n"
    );
    // The owner's own changes through /mosix recall too.
    c.sh("n2", &format!("cat {d}/h"));
    c.sh("n1", "printf mine > /mosix/here/tmp/lease/h");
    assert_eq!(c.sh("n2", &format!("cat {d}/h")), "mine");
}
