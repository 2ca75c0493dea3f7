//! One test per rule of the lease table (see `cache/README.md`).
use std::time::Duration;

use super::*;
use crate::Access::{Read, Write};

type Table = LeaseTable<&'static str, u64>;
const F: u64 = 7;

fn t(ms: u64) -> Now {
    Duration::from_millis(ms)
}

fn granted(d: Decision<&'static str, u64>) -> Grant {
    match d {
        Decision::Ready(Ready::Grant(g)) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn waits(d: Decision<&'static str, u64>) -> (OpId, Vec<(&'static str, Recall<u64>)>) {
    match d {
        Decision::Wait { op, recalls } => (op, recalls),
        other => panic!("expected to wait, got {other:?}"),
    }
}

fn ready_grant(events: &[Event<&'static str, u64>], op: OpId) -> Grant {
    events
        .iter()
        .find_map(|e| match e {
            Event::Ready {
                op: o,
                ready: Ready::Grant(g),
                ..
            } if *o == op => Some(*g),
            _ => None,
        })
        .unwrap_or_else(|| panic!("op {op} not ready in {events:?}"))
}

fn cached(kind: Access) -> Mode {
    Mode::Cached(kind)
}

#[test]
fn many_readers_cache_at_once() {
    let mut l = Table::new();
    for c in ["a", "b", "c"] {
        assert_eq!(granted(l.request(c, F, Read, t(0))).mode, cached(Read));
    }
    assert!(!l.write_shared(F));
    l.invariants().unwrap();
}

#[test]
fn a_lone_writer_caches_and_its_reads_need_nothing_more() {
    let mut l = Table::new();
    let g = granted(l.request("a", F, Write, t(0)));
    assert_eq!(g.mode, cached(Write));
    // A read open on the same node keeps the write lease and its epoch.
    assert_eq!(granted(l.request("a", F, Read, t(1))), g);
    assert_eq!(l.check(&"a", F, g.epoch), Ok(cached(Write)));
}

#[test]
fn an_idle_write_lease_is_recalled_and_flushed_before_a_reader_gets_the_file() {
    let mut l = Table::new();
    let g = granted(l.request("a", F, Write, t(0)));
    l.closed(&"a", F, None, t(1));
    assert_eq!(
        l.check(&"a", F, g.epoch),
        Ok(cached(Write)),
        "kept after close"
    );
    let (op, recalls) = waits(l.request("b", F, Read, t(2)));
    assert_eq!(
        recalls,
        vec![(
            "a",
            Recall {
                file: F,
                epoch: g.epoch
            }
        )]
    );
    // The holder flushes under its epoch, then answers.
    assert_eq!(l.write_back(&"a", F, g.epoch, t(3)), Ok(()));
    let ev = l.recall_done(&"a", F, g.epoch, t(4));
    assert_eq!(ready_grant(&ev, op).mode, cached(Read));
    // a holds nothing now: its old epoch is refused.
    assert_eq!(l.check(&"a", F, g.epoch), Err(Fenced));
    assert_eq!(l.write_back(&"a", F, g.epoch, t(5)), Err(Fenced));
    assert!(!l.holds_anything(&"a"));
    l.invariants().unwrap();
}

#[test]
fn a_writer_recalls_idle_readers() {
    let mut l = Table::new();
    let ga = granted(l.request("a", F, Read, t(0)));
    let gb = granted(l.request("b", F, Read, t(0)));
    l.closed(&"a", F, None, t(1));
    l.closed(&"b", F, None, t(1));
    let (op, mut recalls) = waits(l.request("c", F, Write, t(2)));
    recalls.sort();
    assert_eq!(
        recalls,
        vec![
            (
                "a",
                Recall {
                    file: F,
                    epoch: ga.epoch
                }
            ),
            (
                "b",
                Recall {
                    file: F,
                    epoch: gb.epoch
                }
            )
        ]
    );
    assert!(
        l.recall_done(&"a", F, ga.epoch, t(3)).is_empty(),
        "b still holds"
    );
    let ev = l.recall_done(&"b", F, gb.epoch, t(4));
    assert_eq!(ready_grant(&ev, op).mode, cached(Write));
    l.invariants().unwrap();
}

#[test]
fn a_writer_and_a_reader_open_on_two_nodes_turn_caching_off_until_the_sharing_ends() {
    let mut l = Table::new();
    let gr = granted(l.request("r", F, Read, t(0)));
    // r has it open: the writer makes the file write-shared.
    let (op, recalls) = waits(l.request("w", F, Write, t(1)));
    assert_eq!(
        recalls,
        vec![(
            "r",
            Recall {
                file: F,
                epoch: gr.epoch
            }
        )]
    );
    let ev = l.recall_done(&"r", F, gr.epoch, t(2));
    let gw = ready_grant(&ev, op);
    assert_eq!(gw.mode, Mode::Uncached);
    assert!(l.write_shared(F));
    // r goes on uncached, under a new epoch.
    let holders = l.holders(F);
    let r = holders.iter().find(|h| h.0 == "r").unwrap();
    assert_eq!(r.2.mode, Mode::Uncached);
    assert_ne!(r.2.epoch, gr.epoch);
    // A third node opening for read is uncached at once: nothing to recall.
    assert_eq!(granted(l.request("x", F, Read, t(3))).mode, Mode::Uncached);
    l.invariants().unwrap();
    // The writer closes: the sharing ends, readers are told they may cache.
    let mut ev = l.closed(&"w", F, None, t(4));
    ev.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        ev,
        vec![
            Event::MayCache {
                client: "r",
                file: F
            },
            Event::MayCache {
                client: "x",
                file: F
            }
        ]
    );
    assert!(!l.write_shared(F));
    // Asking again gives a cached lease, under a new epoch.
    let again = granted(l.request("r", F, Read, t(5)));
    assert_eq!(again.mode, cached(Read));
    assert_ne!(again.epoch, r.2.epoch);
    l.invariants().unwrap();
}

#[test]
fn two_writers_on_two_nodes_both_go_uncached() {
    let mut l = Table::new();
    let g1 = granted(l.request("a", F, Write, t(0)));
    let (op, _) = waits(l.request("b", F, Write, t(1)));
    let ev = l.recall_done(&"a", F, g1.epoch, t(2));
    assert_eq!(ready_grant(&ev, op).mode, Mode::Uncached);
    assert!(l.holders(F).iter().all(|h| h.2.mode == Mode::Uncached));
    // The first writer downgrading to read-only still shares with a writer.
    l.closed(&"a", F, Some(Read), t(3));
    assert!(l.write_shared(F));
    // Its last close ends the sharing: b alone may cache again.
    let ev = l.closed(&"a", F, None, t(4));
    assert_eq!(
        ev,
        vec![Event::MayCache {
            client: "b",
            file: F
        }]
    );
    assert_eq!(granted(l.request("b", F, Write, t(5))).mode, cached(Write));
    assert!(!l.holds_anything(&"a"));
}

#[test]
fn a_holder_that_does_not_answer_is_fenced_after_the_recall_timeout() {
    let mut l = Table::new();
    let g = granted(l.request("a", F, Write, t(0)));
    let (op, _) = waits(l.request("b", F, Read, t(100)));
    assert_eq!(l.next_deadline(), Some(t(100) + RECALL_TIMEOUT));
    assert!(l.tick(t(100) + RECALL_TIMEOUT - t(1)).is_empty());
    let ev = l.tick(t(100) + RECALL_TIMEOUT);
    assert!(ev.contains(&Event::Fenced {
        client: "a",
        file: F,
        epoch: g.epoch
    }));
    // a lost its lease but not its open: b shares the file uncached.
    assert_eq!(ready_grant(&ev, op).mode, Mode::Uncached);
    assert!(l.write_shared(F));
    // Whatever a sends later under that lease is refused.
    assert_eq!(l.write_back(&"a", F, g.epoch, t(3000)), Err(Fenced));
    assert_eq!(l.check(&"a", F, g.epoch), Err(Fenced));
    assert!(l.recall_done(&"a", F, g.epoch, t(3000)).is_empty());
    let live = l.renew(&"a").live;
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].1.mode, Mode::Uncached);
    assert_ne!(live[0].1.epoch, g.epoch);
    // Once a closes, b may cache.
    let ev = l.closed(&"a", F, None, t(3000));
    assert_eq!(
        ev,
        vec![Event::MayCache {
            client: "b",
            file: F
        }]
    );
    assert_eq!(granted(l.request("b", F, Read, t(3001))).mode, cached(Read));
    l.invariants().unwrap();
}

#[test]
fn a_fenced_idle_holder_is_gone() {
    let mut l = Table::new();
    let g = granted(l.request("a", F, Read, t(0)));
    l.closed(&"a", F, None, t(0));
    let (op, _) = waits(l.request("b", F, Write, t(0)));
    let ev = l.tick(RECALL_TIMEOUT);
    assert!(ev.contains(&Event::Fenced {
        client: "a",
        file: F,
        epoch: g.epoch
    }));
    assert_eq!(ready_grant(&ev, op).mode, cached(Write));
    assert!(!l.holds_anything(&"a"));
}

#[test]
fn flushing_is_progress_but_only_up_to_the_flush_limit() {
    let mut l = Table::new();
    let g = granted(l.request("a", F, Write, t(0)));
    l.closed(&"a", F, None, t(0));
    let (op, _) = waits(l.request("b", F, Read, t(0)));
    let mut now = t(0);
    // A write-back every second keeps the lease past the recall timeout.
    while now + t(1000) < FLUSH_LIMIT {
        now += t(1000);
        assert!(l.tick(now).is_empty(), "fenced at {now:?}");
        assert_eq!(l.write_back(&"a", F, g.epoch, now), Ok(()));
    }
    let ev = l.tick(FLUSH_LIMIT);
    assert!(matches!(ev[0], Event::Fenced { client: "a", .. }));
    assert_eq!(ready_grant(&ev, op).mode, cached(Read));
}

#[test]
fn a_late_answer_for_an_old_epoch_does_not_end_the_current_lease() {
    let mut l = Table::new();
    let g1 = granted(l.request("a", F, Read, t(0)));
    l.release(&"a", F, g1.epoch, t(1));
    let g2 = granted(l.request("a", F, Read, t(2)));
    assert_ne!(g1.epoch, g2.epoch);
    assert!(l.recall_done(&"a", F, g1.epoch, t(3)).is_empty());
    assert_eq!(l.check(&"a", F, g2.epoch), Ok(cached(Read)));
}

#[test]
fn a_dead_client_holds_nothing_and_its_waiting_requests_go() {
    let mut l = Table::new();
    granted(l.request("a", F, Read, t(0)));
    granted(l.request("a", 8, Read, t(0)));
    let gb = granted(l.request("b", 9, Write, t(0)));
    // a waits for b's lease on 9.
    let (op, recalls) = waits(l.request("a", 9, Read, t(0)));
    assert_eq!(recalls.len(), 1);
    let ev = l.client_gone(&"a", t(10));
    assert!(ev.contains(&Event::Dropped { op, file: 9 }), "{ev:?}");
    assert!(!l.holds_anything(&"a"));
    assert!(l.renew(&"a").live.is_empty());
    // b's answer finds nobody waiting for it.
    let ev = l.recall_done(&"b", 9, gb.epoch, t(20));
    assert!(
        ev.iter().all(|e| !matches!(e, Event::Ready { .. })),
        "{ev:?}"
    );
    l.invariants().unwrap();
}

#[test]
fn a_dead_clients_cache_blocks_conflicting_writers_for_the_recall_timeout() {
    let mut l = Table::new();
    granted(l.request("a", F, Read, t(0)));
    l.client_gone(&"a", t(1000));
    // Readers are not in its way.
    assert_eq!(granted(l.request("b", F, Read, t(1001))).mode, cached(Read));
    l.closed(&"b", F, None, t(1001));
    // A writer is: the node may be alive and still reading from its cache.
    let (op, recalls) = waits(l.request("c", F, Write, t(1002)));
    assert_eq!(recalls.len(), 1, "only b's idle lease is recalled");
    let gb = l.holders(F).iter().find(|h| h.0 == "b").unwrap().2;
    assert!(l.recall_done(&"b", F, gb.epoch, t(1003)).is_empty());
    assert_eq!(l.next_deadline(), Some(t(1000) + RECALL_TIMEOUT));
    let ev = l.tick(t(1000) + RECALL_TIMEOUT);
    assert_eq!(ready_grant(&ev, op).mode, cached(Write));
}

#[test]
fn a_mutation_recalls_every_other_cache_and_holds_the_file_until_done() {
    let mut l = Table::new();
    let ga = granted(l.request("a", F, Read, t(0)));
    let gb = granted(l.request("b", F, Read, t(0)));
    l.closed(&"b", F, None, t(0));
    // a truncates: b's lease goes, a keeps its own.
    let (op, recalls) = waits(l.mutate(Some("a"), F, t(1)));
    assert_eq!(
        recalls,
        vec![(
            "b",
            Recall {
                file: F,
                epoch: gb.epoch
            }
        )]
    );
    let ev = l.recall_done(&"b", F, gb.epoch, t(2));
    assert!(ev.contains(&Event::Ready {
        op,
        file: F,
        ready: Ready::Mutate(op)
    }));
    // Nobody is granted the file while the change is under way.
    let (next, _) = waits(l.request("b", F, Read, t(3)));
    let ev = l.done(op, t(4));
    assert_eq!(ready_grant(&ev, next).mode, cached(Read));
    assert_eq!(l.check(&"a", F, ga.epoch), Ok(cached(Read)));
}

#[test]
fn a_mutation_by_the_owner_with_nothing_cached_goes_at_once() {
    let mut l = Table::new();
    let d = l.mutate(None, F, t(0));
    let Decision::Ready(Ready::Mutate(op)) = d else {
        panic!("{d:?}")
    };
    assert!(l.done(op, t(1)).is_empty());
    assert!(l.holders(F).is_empty());
}

#[test]
fn attribute_leases_need_no_open_and_are_not_granted_beside_an_open_writer() {
    let mut l = Table::new();
    let g = granted(l.request_lease("a", F, t(0)));
    assert_eq!(g.mode, cached(Read));
    // A writer recalls it like any idle read lease.
    let (op, _) = waits(l.request("w", F, Write, t(1)));
    let ev = l.recall_done(&"a", F, g.epoch, t(2));
    assert_eq!(ready_grant(&ev, op).mode, cached(Write));
    // While w has it open for writing, attributes are asked every time;
    // the first ask makes w flush its buffered writes and go uncached.
    let gw = l.holders(F)[0].2;
    let (op, recalls) = waits(l.request_lease("b", F, t(3)));
    assert_eq!(
        recalls,
        vec![(
            "w",
            Recall {
                file: F,
                epoch: gw.epoch
            }
        )]
    );
    let ev = l.recall_done(&"w", F, gw.epoch, t(4));
    let u = ready_grant(&ev, op);
    assert_eq!(
        u,
        Grant {
            mode: Mode::Uncached,
            epoch: NO_EPOCH
        }
    );
    assert!(!l.holds_anything(&"b"));
    assert_eq!(granted(l.request_lease("b", F, t(5))), u, "no recall now");
    l.invariants().unwrap();
}

#[test]
fn requests_wait_in_order_behind_a_recall() {
    let mut l = Table::new();
    let g = granted(l.request("a", F, Write, t(0)));
    l.closed(&"a", F, None, t(0));
    let (first, _) = waits(l.request("b", F, Read, t(1)));
    // c's read conflicts with nothing b will hold, but waits its turn.
    let (second, recalls) = waits(l.request("c", F, Read, t(2)));
    assert!(recalls.is_empty());
    let ev = l.recall_done(&"a", F, g.epoch, t(3));
    assert_eq!(ready_grant(&ev, first).mode, cached(Read));
    assert_eq!(ready_grant(&ev, second).mode, cached(Read));
}

#[test]
fn a_recalled_holder_asking_again_waits_for_its_own_recall() {
    let mut l = Table::new();
    let g = granted(l.request("a", F, Read, t(0)));
    l.closed(&"a", F, None, t(0));
    let (w, _) = waits(l.request("w", F, Write, t(1)));
    let (again, recalls) = waits(l.request("a", F, Read, t(2)));
    assert!(recalls.is_empty());
    let ev = l.recall_done(&"a", F, g.epoch, t(3));
    assert_eq!(ready_grant(&ev, w).mode, cached(Write));
    // Then a's open recalls the (idle? no: open) writer: write-shared.
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Recall { to: "w", .. })));
    let gw = l.holders(F).iter().find(|h| h.0 == "w").unwrap().2;
    let ev = l.recall_done(&"w", F, gw.epoch, t(4));
    assert_eq!(ready_grant(&ev, again).mode, Mode::Uncached);
    l.invariants().unwrap();
}

#[test]
fn renewal_lists_live_leases_and_resends_unanswered_recalls() {
    let mut l = Table::new();
    let ga = granted(l.request("a", F, Write, t(0)));
    let gb = granted(l.request("a", 8, Read, t(0)));
    l.closed(&"a", F, None, t(0));
    waits(l.request("b", F, Read, t(1)));
    let r = l.renew(&"a");
    assert_eq!(r.live, vec![(F, ga), (8, gb)], "in file order");
    assert_eq!(
        r.recalls,
        vec![Recall {
            file: F,
            epoch: ga.epoch
        }]
    );
}

#[test]
fn a_read_open_is_judged_with_the_nodes_other_opens() {
    let mut l = Table::new();
    granted(l.request("r", F, Read, t(0)));
    l.request("w", F, Write, t(0));
    let gr = l.holders(F).iter().find(|h| h.0 == "r").unwrap().2;
    l.release(&"r", F, gr.epoch, t(1));
    assert!(l.write_shared(F));
    // w still writes: another read open there must not make it cache.
    assert_eq!(granted(l.request("w", F, Read, t(2))).mode, Mode::Uncached);
    l.invariants().unwrap();
}
