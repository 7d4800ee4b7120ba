//! Tracker: exactly once, in order, per subscription; gaps and recovery.

use super::*;

fn p(offset: u64, epoch: &str) -> Position {
    Position::new(offset, epoch)
}

/// A tracker at `offset` in epoch "e".
fn at(offset: u64) -> Tracker<u64> {
    Tracker::new(Some(p(offset, "e")), 1000)
}

/// Feeds offsets in epoch "e" and returns what was delivered.
fn feed(t: &mut Tracker<u64>, offsets: &[u64]) -> Vec<u64> {
    offsets
        .iter()
        .filter_map(|&o| match t.on_delivery(o, "e", o) {
            Verdict::Deliver(o) => Some(o),
            _ => None,
        })
        .collect()
}

#[test]
fn next_offsets_are_delivered_and_old_ones_dropped() {
    let mut t = at(4);
    assert_eq!(t.on_delivery(5, "e", 5), Verdict::Deliver(5));
    assert_eq!(t.on_delivery(5, "e", 5), Verdict::Duplicate);
    assert_eq!(t.on_delivery(2, "e", 2), Verdict::Duplicate);
    assert_eq!(t.on_delivery(6, "e", 6), Verdict::Deliver(6));
    assert_eq!(t.position(), Some(&p(6, "e")));
}

#[test]
fn a_hole_asks_for_one_recovery_and_the_replay_fills_it() {
    let mut t = at(4);
    assert_eq!(t.on_delivery(7, "e", 7), Verdict::Recover(p(4, "e")));
    assert!(t.recovering());
    // Live messages keep coming while the recovery is in flight: dropped, no
    // second request.
    assert_eq!(t.on_delivery(8, "e", 8), Verdict::Skip);
    assert_eq!(t.on_delivery(9, "e", 9), Verdict::Skip);
    // The replay (5..=9), then `subscribed` at 9, then live 10.
    assert_eq!(feed(&mut t, &[5, 6, 7, 8, 9]), [5, 6, 7, 8, 9]);
    assert_eq!(t.on_subscribed(9, "e", Some(true), 100), Outcome::default());
    assert!(!t.recovering());
    assert_eq!(feed(&mut t, &[8, 9, 10]), [10]);
}

#[test]
fn live_delivery_may_fill_the_hole_before_the_replay_does() {
    let mut t = at(4);
    assert_eq!(t.on_delivery(6, "e", 6), Verdict::Recover(p(4, "e")));
    // 5 arrives live after all (reordered across a reconnect): it is next.
    assert_eq!(feed(&mut t, &[5, 6]), [5, 6]);
    assert_eq!(feed(&mut t, &[5, 6, 7]), [7]);
    assert_eq!(t.on_subscribed(7, "e", Some(true), 100), Outcome::default());
}

#[test]
fn another_epoch_asks_for_recovery() {
    let mut t = at(4);
    assert_eq!(t.on_delivery(1, "f", 1), Verdict::Recover(p(4, "e")));
    assert_eq!(t.on_delivery(2, "f", 2), Verdict::Skip);
}

fn lost(from: Position, to: Position, reason: GapReason) -> Option<Lost> {
    Some(Lost { from, to, reason })
}

#[test]
fn recovered_false_is_a_gap_and_the_new_start() {
    let mut t = at(3);
    assert_eq!(t.on_delivery(60, "e", 60), Verdict::Recover(p(3, "e")));
    let out = t.on_subscribed(53, "e", Some(false), 100);
    assert_eq!(
        out.gap,
        lost(p(3, "e"), p(53, "e"), GapReason::NotRecovered)
    );
    assert_eq!(out.recover, None);
    assert_eq!(t.position(), Some(&p(53, "e")));
    assert_eq!(feed(&mut t, &[53, 54]), [54]);
    // A lost history comes with a new epoch; the gap says so.
    let mut t = at(3);
    let out = t.on_subscribed(2, "new", Some(false), 100);
    assert_eq!(
        out.gap,
        lost(p(3, "e"), p(2, "new"), GapReason::EpochChanged)
    );
    assert_eq!(t.on_delivery(3, "new", 3), Verdict::Deliver(3));
}

#[test]
fn recovered_missing_where_it_should_be_is_a_gap_too() {
    let mut t = at(3);
    let out = t.on_subscribed(9, "e", None, 100);
    assert_eq!(out.gap, lost(p(3, "e"), p(9, "e"), GapReason::NotRecovered));
    let mut t = at(3);
    let out = t.on_subscribed(3, "other", None, 100);
    assert_eq!(
        out.gap,
        lost(p(3, "e"), p(3, "other"), GapReason::EpochChanged)
    );
    // Nothing missed: nothing to say.
    let mut t = at(3);
    assert_eq!(t.on_subscribed(3, "e", None, 100), Outcome::default());
}

#[test]
fn an_incomplete_recovery_is_asked_again_once_then_reported() {
    // The channel is ahead of the position, yet `recovered:true` came with no replay.
    let mut t = at(3);
    let out = t.on_subscribed(9, "e", Some(true), 100);
    assert_eq!(out.recover, Some(p(3, "e")));
    assert_eq!(out.gap, None);
    assert!(t.recovering());
    let out = t.on_subscribed(9, "e", Some(true), 100);
    assert_eq!(out.recover, None);
    assert_eq!(
        out.gap,
        lost(p(3, "e"), p(9, "e"), GapReason::IncompleteRecovery)
    );
    assert_eq!(t.position(), Some(&p(9, "e")));
    // A complete one in between starts the count again.
    let mut t = at(3);
    assert!(t.on_subscribed(9, "e", Some(true), 100).recover.is_some());
    assert_eq!(feed(&mut t, &[4, 5, 6, 7, 8, 9]), [4, 5, 6, 7, 8, 9]);
    assert_eq!(t.on_subscribed(9, "e", Some(true), 100), Outcome::default());
    assert!(t.on_subscribed(12, "e", Some(true), 100).recover.is_some());
}

#[test]
fn a_reset_forgets_the_request_and_the_buffer() {
    let mut t: Tracker<u64> = Tracker::new(None, 10);
    assert_eq!(t.begin_request(), None);
    assert_eq!(t.on_delivery(5, "e", 5), Verdict::Buffered);
    t.reset();
    let out = t.on_subscribed(7, "e", None, 100);
    assert!(out.deliver.is_empty());
    let mut t = at(1);
    assert_eq!(t.on_delivery(5, "e", 5), Verdict::Recover(p(1, "e")));
    t.reset();
    assert_eq!(t.on_delivery(6, "e", 6), Verdict::Recover(p(1, "e")));
}

#[test]
fn deliveries_before_the_first_subscribed_wait_for_it() {
    let mut t: Tracker<u64> = Tracker::new(None, 1000);
    assert_eq!(t.on_delivery(4, "e", 4), Verdict::Buffered);
    assert_eq!(t.on_delivery(5, "e", 5), Verdict::Buffered);
    assert_eq!(t.on_delivery(6, "e", 6), Verdict::Buffered);
    // The subscription starts at 4: 5 and 6 follow, 4 was before it.
    let out = t.on_subscribed(4, "e", None, 100);
    assert_eq!(out.deliver, [5, 6]);
    assert_eq!((out.gap, out.recover), (None, None));
    assert_eq!(t.position(), Some(&p(6, "e")));
}

#[test]
fn buffered_deliveries_with_a_hole_recover() {
    let mut t: Tracker<u64> = Tracker::new(None, 1000);
    t.on_delivery(5, "e", 5);
    t.on_delivery(8, "e", 8);
    let out = t.on_subscribed(4, "e", None, 100);
    assert_eq!(out.deliver, [5]);
    assert_eq!(out.recover, Some(p(5, "e")));
}

#[test]
fn an_overflowing_buffer_is_dropped_and_recovered() {
    let mut t: Tracker<u64> = Tracker::new(None, 2);
    assert_eq!(t.on_delivery(5, "e", 5), Verdict::Buffered);
    assert_eq!(t.on_delivery(6, "e", 6), Verdict::Buffered);
    assert_eq!(t.on_delivery(7, "e", 7), Verdict::Skip);
    // Bounded: nothing more is kept until the start is known.
    assert_eq!(t.on_delivery(8, "e", 8), Verdict::Skip);
    let out = t.on_subscribed(4, "e", None, 100);
    assert!(out.deliver.is_empty());
    assert_eq!(out.recover, Some(p(4, "e")));
    assert_eq!(feed(&mut t, &[5, 6, 7, 8]), [5, 6, 7, 8]);
}

#[test]
fn a_stall_drops_everything_and_resumes_from_the_position() {
    let mut t = at(1);
    assert_eq!(feed(&mut t, &[2]), [2]);
    t.stall();
    assert_eq!(t.on_delivery(3, "e", 3), Verdict::Skip);
    assert_eq!(t.on_delivery(9, "e", 9), Verdict::Skip);
    // No recovery while stalled, even when told the channel moved on.
    assert_eq!(t.on_subscribed(9, "e", Some(true), 100).recover, None);
    assert_eq!(t.resume(), Some(p(2, "e")));
    assert_eq!(t.resume(), None);
    assert_eq!(feed(&mut t, &[3, 4]), [3, 4]);
}

#[test]
fn a_drain_larger_than_the_room_stalls() {
    let mut t: Tracker<u64> = Tracker::new(None, 1000);
    for o in 1..=5 {
        t.on_delivery(o, "e", o);
    }
    let out = t.on_subscribed(0, "e", None, 2);
    assert_eq!(out.deliver, [1, 2]);
    assert!(t.stalled());
    assert_eq!(t.resume(), Some(p(2, "e")));
}

#[test]
fn renewing_a_subscription_is_its_recovery() {
    let mut t = at(4);
    assert_eq!(t.begin_request(), Some(p(4, "e")));
    // Live messages ahead of the replay wait for it.
    assert_eq!(t.on_delivery(9, "e", 9), Verdict::Skip);
    assert_eq!(feed(&mut t, &[5, 6, 7, 8, 9]), [5, 6, 7, 8, 9]);
    assert_eq!(t.on_subscribed(9, "e", Some(true), 100), Outcome::default());
    // Without a position there is nothing to recover.
    let mut t: Tracker<u64> = Tracker::new(None, 10);
    assert_eq!(t.begin_request(), None);
    assert!(!t.recovering());
}

#[test]
fn a_failed_request_can_be_made_again() {
    let mut t = at(1);
    assert_eq!(t.on_delivery(5, "e", 5), Verdict::Recover(p(1, "e")));
    t.request_failed();
    assert_eq!(t.on_delivery(6, "e", 6), Verdict::Recover(p(1, "e")));
}
