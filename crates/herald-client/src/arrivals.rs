//! The order in which a subscription's messages and join/leave events arrived before
//! its first `subscribed`.
//!
//! Until that reply says where a subscription starts, its [`Tracker`] holds the
//! messages that arrive (it cannot tell yet which of them are new), while join/leave
//! events, which carry no offset, must stay out of the tracker. To hand both to the
//! application in the order they came, events wait here together with the position of
//! each message the tracker held; once the tracker releases the messages it keeps,
//! [`Arrivals::merge`] puts the events back between them.
//!
//! [`Tracker`]: crate::tracker::Tracker

use std::collections::VecDeque;

use crate::event::{Event, Message};

#[derive(Debug)]
enum Arrival {
    /// A message the tracker held, by position.
    Message { offset: u64, epoch: String },
    /// A join or leave.
    Event(Event),
}

/// Arrivals before a subscription's first `subscribed`.
#[derive(Debug)]
pub(crate) struct Arrivals {
    log: VecDeque<Arrival>,
    /// How many of `log` are events.
    events: usize,
    /// At most this many events are kept; past it the oldest is dropped, as the
    /// subscription's queue does with events not read.
    event_limit: usize,
}

impl Arrivals {
    pub(crate) fn new(event_limit: usize) -> Self {
        Self {
            log: VecDeque::new(),
            events: 0,
            event_limit: event_limit.max(1),
        }
    }

    /// The tracker held the message at (`offset`, `epoch`). The tracker bounds how
    /// many it holds, and so how many of these there are.
    pub(crate) fn message(&mut self, offset: u64, epoch: &str) {
        self.log.push_back(Arrival::Message {
            offset,
            epoch: epoch.to_owned(),
        });
    }

    /// A join or leave arrived.
    pub(crate) fn event(&mut self, event: Event) {
        if self.events >= self.event_limit
            && let Some(i) = self.log.iter().position(|a| matches!(a, Arrival::Event(_)))
        {
            self.log.remove(i);
            self.events -= 1;
            tracing::warn!("join/leave events before the first subscribed: dropped the oldest");
        }
        self.log.push_back(Arrival::Event(event));
        self.events += 1;
    }

    /// `deliver`, the messages the tracker released (in the order they arrived, some
    /// of those held left out), with the events put back where they arrived. Empties
    /// the log.
    pub(crate) fn merge(&mut self, deliver: Vec<Message>) -> Vec<Event> {
        self.events = 0;
        let mut deliver = deliver.into_iter().peekable();
        let mut out = Vec::with_capacity(self.log.len());
        for arrival in self.log.drain(..) {
            match arrival {
                Arrival::Message { offset, epoch } => {
                    // A held message the tracker dropped (older than the start, a
                    // duplicate, or past the application's room) matches nothing.
                    if let Some(m) = deliver.next_if(|m| m.offset == offset && m.epoch == epoch) {
                        out.push(Event::Message(m));
                    }
                }
                Arrival::Event(e) => out.push(e),
            }
        }
        out.extend(deliver.map(Event::Message));
        out
    }

    /// The connection is gone: what the tracker held is dropped, and the events that
    /// came with it go too (no subscription had started on that connection).
    pub(crate) fn clear(&mut self) {
        self.log.clear();
        self.events = 0;
    }
}

#[cfg(test)]
mod tests {
    use herald_proto::presence::Member;

    use super::*;
    use crate::event::MessageKind;

    fn msg(offset: u64) -> Message {
        Message {
            channel: "c".into(),
            kind: MessageKind::Message,
            data: serde_json::Value::Null,
            offset,
            epoch: "e".into(),
            timestamp: String::new(),
            from_user: None,
            job: None,
        }
    }

    fn join(user: &str) -> Event {
        Event::Join(Member {
            user_id: user.into(),
            conn_id: format!("{user}-conn"),
            info: None,
        })
    }

    /// What `events` is, as `m<offset>` and `j<user>`.
    fn shape(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Message(m) => format!("m{}", m.offset),
                Event::Join(m) => format!("j{}", m.user_id),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn events_go_back_between_the_messages_they_arrived_between() {
        let mut a = Arrivals::new(8);
        // Held: 3 (older than the start), 4, a join, 5, 5 again, a join, 6 (past the
        // application's room: not released).
        a.message(3, "e");
        a.message(4, "e");
        a.event(join("x"));
        a.message(5, "e");
        a.message(5, "e");
        a.event(join("y"));
        a.message(6, "e");
        let out = a.merge(vec![msg(4), msg(5)]);
        assert_eq!(shape(&out), ["m4", "jx", "m5", "jy"]);
        // Emptied: the next merge has only what it is given.
        assert_eq!(shape(&a.merge(vec![msg(7)])), ["m7"]);
    }

    #[test]
    fn nothing_held_hands_out_the_messages_alone() {
        let mut a = Arrivals::new(8);
        assert_eq!(shape(&a.merge(vec![msg(1), msg(2)])), ["m1", "m2"]);
        a.event(join("x"));
        assert_eq!(shape(&a.merge(Vec::new())), ["jx"]);
    }

    #[test]
    fn events_are_bounded_and_cleared_with_the_connection() {
        let mut a = Arrivals::new(2);
        a.event(join("a"));
        a.message(1, "e");
        a.event(join("b"));
        a.event(join("c"));
        assert_eq!(shape(&a.merge(vec![msg(1)])), ["m1", "jb", "jc"]);
        a.event(join("d"));
        a.message(2, "e");
        a.clear();
        assert!(a.merge(Vec::new()).is_empty());
        // The bound counts from zero again.
        a.event(join("e"));
        a.event(join("f"));
        assert_eq!(shape(&a.merge(Vec::new())), ["je", "jf"]);
    }
}
