//! The queue between the driver and one [`Subscription`](crate::Subscription), or the
//! stream of server-side subscriptions
//! ([`ServerSubscriptions`](crate::ServerSubscriptions)).
//!
//! Bounded in messages, and never blocking the driver: when the application does not
//! keep up, the driver stops delivering to that subscription (its tracker stalls) and
//! recovers from the last delivered position once the queue has drained to half, so a
//! slow subscription costs memory for its own queue only and never holds up the
//! others, nor the socket. Join/leave events cannot be recovered that way, so they
//! never pause anything: they have a bound of their own, past which the oldest are
//! dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use crate::event::{Event, ServerEvent};

/// Events other than messages and join/leave events a queue holds beyond its message
/// capacity. A subscription's come from this client's own requests (one in flight per
/// subscription), so this is plenty; the server-side stream's, one or two per
/// subscribe or unsubscribe of the backend's, get the message capacity besides. Past
/// it the oldest is dropped.
const CONTROL_SLACK: usize = 64;

/// How a queue bounds an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Counts against the capacity; a full queue pauses its deliveries.
    Message,
    /// A join or leave: bounded apart, the oldest dropped past the bound.
    Presence,
    /// Anything else: bounded with [`CONTROL_SLACK`] beyond the capacity.
    Control,
}

/// An item of an [`EventQueue`].
pub(crate) trait Queued {
    fn class(&self) -> Class;
}

impl Queued for Event {
    fn class(&self) -> Class {
        match self {
            Self::Message(_) => Class::Message,
            Self::Join(_) | Self::Leave(_) => Class::Presence,
            Self::Subscribed(_) | Self::Gap(_) | Self::Error(_) | Self::Unsubscribed => {
                Class::Control
            }
        }
    }
}

impl Queued for ServerEvent {
    fn class(&self) -> Class {
        match self {
            Self::Message(_) => Class::Message,
            Self::Subscribed(_) | Self::Gap(_) | Self::Unsubscribed { .. } => Class::Control,
        }
    }
}

#[derive(Debug)]
struct State<E> {
    events: VecDeque<E>,
    /// How many of `events` are messages.
    messages: usize,
    /// How many of `events` are joins and leaves.
    presence: usize,
    /// Join/leave events were dropped since the last one was read (warned once).
    presence_dropped: bool,
    /// Set by the driver when a message did not fit; cleared (and the driver told)
    /// once the application has read the queue down to half.
    stalled: bool,
    closed: bool,
    waker: Option<Waker>,
}

/// One subscription's events, or those of every server-side subscription.
#[derive(Debug)]
pub(crate) struct EventQueue<E = Event> {
    state: Mutex<State<E>>,
    capacity: usize,
    /// Shared by every queue of a client: wakes the driver when a stalled queue has
    /// room again.
    room: Arc<Notify>,
}

impl<E: Queued> EventQueue<E> {
    pub(crate) fn new(capacity: usize, room: Arc<Notify>) -> Self {
        Self {
            state: Mutex::new(State {
                events: VecDeque::new(),
                messages: 0,
                presence: 0,
                presence_dropped: false,
                stalled: false,
                closed: false,
                waker: None,
            }),
            capacity: capacity.max(1),
            room,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<E>> {
        // A panic while holding this lock leaves the queue consistent (every update
        // is a single push or pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many more messages fit.
    pub(crate) fn room(&self) -> usize {
        let s = self.lock();
        if s.stalled {
            return 0;
        }
        self.capacity.saturating_sub(s.messages)
    }

    /// Whether the driver may deliver again after a stall.
    pub(crate) fn is_stalled(&self) -> bool {
        self.lock().stalled
    }

    /// Marks the queue full: the driver stops delivering until it drains to half.
    pub(crate) fn stall(&self) {
        let mut s = self.lock();
        if s.messages <= self.capacity / 2 {
            // Already drained that far: nothing will pop to say so, so say it now.
            drop(s);
            self.room.notify_one();
            return;
        }
        s.stalled = true;
    }

    /// Queues a message; the caller checked [`EventQueue::room`].
    pub(crate) fn push_message(&self, event: E) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        s.messages += 1;
        s.events.push_back(event);
        wake(&mut s);
    }

    /// Queues a subscription event other than a message or a join/leave.
    pub(crate) fn push_control(&self, event: E) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        if s.events.len() - s.presence >= self.capacity + CONTROL_SLACK
            && let Some(i) = s.events.iter().position(|e| e.class() == Class::Control)
        {
            s.events.remove(i);
            tracing::warn!("subscription events not read: dropped the oldest");
        }
        s.events.push_back(event);
        wake(&mut s);
    }

    /// Queues a join or leave: at most `capacity` of them, the oldest dropped past
    /// that. They never count as messages, so they never pause the subscription.
    pub(crate) fn push_presence(&self, event: E) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        if s.presence >= self.capacity
            && let Some(i) = s.events.iter().position(|e| e.class() == Class::Presence)
        {
            s.events.remove(i);
            s.presence -= 1;
            if !std::mem::replace(&mut s.presence_dropped, true) {
                tracing::warn!("join/leave events not read: dropping the oldest");
            }
        }
        s.presence += 1;
        s.events.push_back(event);
        wake(&mut s);
    }

    /// Ends the stream once what is queued has been read.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        wake(&mut s);
    }

    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<E>> {
        let mut s = self.lock();
        if let Some(event) = s.events.pop_front() {
            match event.class() {
                Class::Presence => {
                    s.presence -= 1;
                    s.presence_dropped = false;
                }
                Class::Message => {
                    s.messages -= 1;
                    if s.stalled && s.messages <= self.capacity / 2 {
                        s.stalled = false;
                        drop(s);
                        self.room.notify_one();
                    }
                }
                Class::Control => {}
            }
            return Poll::Ready(Some(event));
        }
        if s.closed {
            return Poll::Ready(None);
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

fn wake<E>(s: &mut State<E>) {
    if let Some(w) = s.waker.take() {
        w.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use herald_proto::frames::Position;

    use super::*;
    use crate::event::{Gap, Message, MessageKind};
    use crate::tracker::GapReason;

    fn msg(offset: u64) -> Event {
        Event::Message(Message {
            channel: "c".into(),
            kind: MessageKind::Message,
            data: serde_json::Value::Null,
            offset,
            epoch: "e".into(),
            timestamp: String::new(),
            from_user: None,
            job: None,
        })
    }

    fn next(q: &EventQueue) -> Poll<Option<Event>> {
        q.poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn bounded_in_messages_and_reports_room_after_a_stall() {
        let room = Arc::new(Notify::new());
        let q = EventQueue::new(4, room.clone());
        for o in 1..=4 {
            assert!(q.room() > 0);
            q.push_message(msg(o));
        }
        assert_eq!(q.room(), 0);
        q.stall();
        // Control events still get through.
        q.push_control(Event::Gap(Gap {
            channel: "c".into(),
            from: Position::new(0, "e"),
            to: Position::new(1, "e"),
            reason: GapReason::NotRecovered,
        }));
        assert!(matches!(next(&q), Poll::Ready(Some(Event::Message(_)))));
        assert!(q.is_stalled(), "3 left of 4: not yet half");
        assert!(matches!(next(&q), Poll::Ready(Some(Event::Message(_)))));
        assert!(!q.is_stalled());
        // The driver was told.
        let notified = room.notified();
        tokio::pin!(notified);
        assert!(
            notified
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready()
        );
        assert_eq!(q.room(), 2);
    }

    #[test]
    fn closing_ends_the_stream_after_what_is_queued() {
        let q = EventQueue::new(4, Arc::new(Notify::new()));
        q.push_message(msg(1));
        q.close();
        q.push_message(msg(2));
        assert!(matches!(next(&q), Poll::Ready(Some(_))));
        assert!(matches!(next(&q), Poll::Ready(None)));
    }

    #[test]
    fn control_events_are_bounded_too() {
        let q = EventQueue::new(1, Arc::new(Notify::new()));
        for i in 0..(CONTROL_SLACK as u64 + 10) {
            q.push_control(Event::Gap(Gap {
                channel: "c".into(),
                from: Position::new(i, "e"),
                to: Position::new(i + 1, "e"),
                reason: GapReason::NotRecovered,
            }));
        }
        assert_eq!(q.lock().events.len(), 1 + CONTROL_SLACK);
    }

    fn join(n: u64) -> Event {
        Event::Join(herald_proto::presence::Member {
            user_id: format!("u{n}"),
            conn_id: format!("c{n}"),
            info: None,
        })
    }

    fn gap() -> Event {
        Event::Gap(Gap {
            channel: "c".into(),
            from: Position::new(0, "e"),
            to: Position::new(1, "e"),
            reason: GapReason::NotRecovered,
        })
    }

    #[test]
    fn joins_and_leaves_have_a_bound_of_their_own_and_never_pause() {
        let q = EventQueue::new(2, Arc::new(Notify::new()));
        q.push_message(msg(1));
        for n in 1..=5 {
            q.push_presence(join(n));
        }
        // Messages still have their room: events take none of it.
        assert_eq!(q.room(), 1);
        q.push_message(msg(2));
        // Control events are bounded without counting joins and leaves, and never
        // push them out.
        for _ in 0..(CONTROL_SLACK + 5) {
            q.push_control(gap());
        }
        let mut got = Vec::new();
        while let Poll::Ready(Some(e)) = next(&q) {
            got.push(match e {
                Event::Message(m) => format!("m{}", m.offset),
                Event::Join(m) => m.user_id,
                _ => "gap".to_owned(),
            });
        }
        // The two newest joins are kept, in their place among the messages.
        assert_eq!(got[..4], ["m1", "u4", "u5", "m2"]);
        assert_eq!(got.len(), 4 + CONTROL_SLACK);
        assert_eq!(q.lock().presence, 0);
        // Read down to nothing, the bound applies from scratch.
        for n in 6..=7 {
            q.push_presence(join(n));
        }
        assert!(matches!(next(&q), Poll::Ready(Some(Event::Join(m))) if m.user_id == "u6"));
    }
}
