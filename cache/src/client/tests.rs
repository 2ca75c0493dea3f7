//! The client side's rules, one test each.
use std::time::Duration;

use super::*;
use crate::Access::{Read, Write};

const F: u64 = 3;

fn t(ms: u64) -> Now {
    Duration::from_millis(ms)
}

fn grant(mode: Mode, epoch: Epoch) -> Grant {
    Grant { mode, epoch }
}

#[test]
fn a_confirmed_read_lease_answers_reads_locally_but_not_writes() {
    let mut c = ClientCache::new();
    assert!(c.granted(F, grant(Mode::Cached(Read), 1), t(0)).is_empty());
    assert_eq!(c.answer_read(F, t(10)), Answer::Local);
    assert_eq!(c.answer_write(F, t(10)), Answer::Owner);
    assert_eq!(c.answer_read(4, t(10)), Answer::Owner, "not held");
}

#[test]
fn local_answers_stop_when_the_lease_term_runs_out_unconfirmed() {
    let mut c = ClientCache::new();
    c.granted(F, grant(Mode::Cached(Write), 1), t(100));
    assert_eq!(c.answer_write(F, t(100) + LEASE_TERM - t(1)), Answer::Local);
    assert_eq!(c.answer_read(F, t(100) + LEASE_TERM), Answer::Owner);
    // A renewal sent later confirms it again, from its sending time.
    let r = Renewal {
        live: vec![(F, grant(Mode::Cached(Write), 1))],
        recalls: vec![],
    };
    assert!(c.renewed(&r, t(2000)).is_empty());
    assert_eq!(c.answer_read(F, t(2000) + LEASE_TERM - t(1)), Answer::Local);
    assert!(crate::LEASE_TERM < crate::RECALL_TIMEOUT);
}

#[test]
fn a_recall_stops_local_answers_at_once_and_invalidates_before_flushing_and_acking() {
    let mut c = ClientCache::new();
    c.granted(F, grant(Mode::Cached(Write), 5), t(0));
    c.wrote_locally(F);
    let actions = c.on_recall(&Recall { file: F, epoch: 5 });
    assert_eq!(
        actions,
        vec![
            ClientAction::Invalidate { file: F },
            ClientAction::Barrier,
            ClientAction::Flush { file: F, epoch: 5 },
            ClientAction::Ack(RecallDone { file: F, epoch: 5 }),
        ]
    );
    assert_eq!(c.answer_read(F, t(1)), Answer::Owner);
    // A write meanwhile must not overtake the dirty data.
    assert_eq!(c.answer_write(F, t(1)), Answer::FlushFirst(5));
    c.flushed(F, 5);
    assert_eq!(c.answer_write(F, t(1)), Answer::Owner);
    c.recall_answered(F, 5);
    assert_eq!(c.lease(F), None);
}

#[test]
fn a_clean_recall_needs_no_flush_and_an_unknown_one_is_acked_at_once() {
    let mut c = ClientCache::new();
    c.granted(F, grant(Mode::Cached(Read), 2), t(0));
    assert!(!c
        .on_recall(&Recall { file: F, epoch: 2 })
        .iter()
        .any(|a| matches!(a, ClientAction::Flush { .. })));
    assert_eq!(
        c.on_recall(&Recall { file: 9, epoch: 1 }),
        vec![ClientAction::Ack(RecallDone { file: 9, epoch: 1 })]
    );
    assert_eq!(
        c.on_recall(&Recall { file: F, epoch: 1 }),
        vec![ClientAction::Ack(RecallDone { file: F, epoch: 1 })],
        "an older epoch"
    );
}

#[test]
fn a_fenced_lease_with_dirty_data_reports_eio_once_and_never_answers_locally() {
    let mut c = ClientCache::new();
    c.granted(F, grant(Mode::Cached(Write), 5), t(0));
    c.granted(4, grant(Mode::Cached(Read), 6), t(0));
    c.wrote_locally(F);
    // The renewal after a partition lists neither: both were fenced.
    let r = Renewal {
        live: vec![],
        recalls: vec![],
    };
    let actions = c.renewed(&r, t(5000));
    assert_eq!(
        actions,
        vec![
            ClientAction::Discard { file: F },
            ClientAction::Invalidate { file: F },
            ClientAction::Invalidate { file: 4 }
        ]
    );
    assert_eq!(c.answer_read(F, t(5000)), Answer::Lost);
    assert_eq!(c.answer_write(F, t(5000)), Answer::Lost);
    assert_eq!(c.answer_read(4, t(5000)), Answer::Owner, "clean: just asks");
    c.lost_reported(F);
    assert_eq!(c.answer_read(F, t(5000)), Answer::Owner);
}

#[test]
fn an_uncached_grant_drops_the_cache() {
    let mut c = ClientCache::new();
    c.granted(F, grant(Mode::Cached(Read), 1), t(0));
    let actions = c.granted(F, grant(Mode::Uncached, 2), t(1));
    assert_eq!(actions, vec![ClientAction::Invalidate { file: F }]);
    assert_eq!(c.answer_read(F, t(2)), Answer::Owner);
    assert_eq!(c.lease(F), None);
}

#[test]
fn an_upgrade_under_the_same_epoch_keeps_the_cache() {
    let mut c = ClientCache::new();
    c.granted(F, grant(Mode::Cached(Read), 1), t(0));
    assert!(c.granted(F, grant(Mode::Cached(Write), 1), t(1)).is_empty());
    assert_eq!(c.answer_write(F, t(2)), Answer::Local);
}

#[test]
fn renewal_resends_recalls_and_may_cache_asks_again() {
    let mut c = ClientCache::new();
    c.granted(F, grant(Mode::Cached(Read), 1), t(0));
    let r = Renewal {
        live: vec![(F, grant(Mode::Cached(Read), 1))],
        recalls: vec![Recall { file: F, epoch: 1 }],
    };
    let actions = c.renewed(&r, t(10));
    assert_eq!(
        actions.last(),
        Some(&ClientAction::Ack(RecallDone { file: F, epoch: 1 }))
    );
    assert_eq!(c.answer_read(F, t(11)), Answer::Owner);
    assert_eq!(c.on_may_cache(F), vec![ClientAction::AskAgain { file: F }]);
}

#[test]
fn a_grant_under_a_new_epoch_discards_dirty_data_of_the_old_one() {
    let mut c = ClientCache::new();
    c.granted(F, grant(Mode::Cached(Write), 5), t(0));
    c.wrote_locally(F);
    // Fenced meanwhile, unbeknown; a later open is granted afresh.
    let actions = c.granted(F, grant(Mode::Cached(Write), 9), t(3000));
    assert_eq!(
        actions,
        vec![
            ClientAction::Discard { file: F },
            ClientAction::Invalidate { file: F }
        ]
    );
    assert!(!c.dirty(F));
    assert_eq!(c.answer_write(F, t(3000)), Answer::Lost);
    c.lost_reported(F);
    assert_eq!(c.answer_write(F, t(3000)), Answer::Local);
}
