//! Exactly once, in order, per channel: the pure state machine behind every
//! subscription.
//!
//! A [`Tracker`] keeps the position of the last message it delivered and judges each
//! delivery against it: an old offset is a duplicate (a replay overlapping live
//! delivery, or a message seen before a reconnect), the next offset is delivered, and
//! anything else (a hole, or another epoch) means messages are missing, so nothing
//! more is delivered until a `subscribe` with `since` has replayed them. The gateway
//! replays in order before its `subscribed`, so the hole fills from the position
//! onwards and later copies of the same offsets are dropped as duplicates.
//!
//! It does no I/O: the connection driver feeds it deliveries and `subscribed`
//! replies and carries out what it answers.

use std::collections::VecDeque;

use herald_proto::frames::Position;

/// What to do with one delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<T> {
    /// Hand it to the application: it is the next one.
    Deliver(T),
    /// Already delivered; drop it.
    Duplicate,
    /// Kept until the first `subscribed` says where the subscription starts.
    Buffered,
    /// Messages are missing before it: drop it and send `subscribe` with
    /// `since` = this position.
    Recover(Position),
    /// Dropped: a recovery is already in flight (it will bring this one again), or
    /// the application is not keeping up ([`Tracker::stall`]).
    Skip,
}

/// Why messages were lost for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GapReason {
    /// The channel's history was lost (its epoch changed): Redis restarted empty, or
    /// the channel expired.
    EpochChanged,
    /// The gateway could not replay what was missed (`recovered:false`): trimmed,
    /// expired, or too much to replay.
    NotRecovered,
    /// The gateway twice in a row claimed a complete replay that did not reach the
    /// channel's offset; reported rather than asked a third time, so a server that
    /// cannot replay cannot keep the client asking forever.
    IncompleteRecovery,
}

impl GapReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EpochChanged => "epoch_changed",
            Self::NotRecovered => "not_recovered",
            Self::IncompleteRecovery => "incomplete_recovery",
        }
    }
}

/// Messages lost for good: everything after `from` up to and including `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub from: Position,
    pub to: Position,
    pub reason: GapReason,
}

/// What a `subscribed` reply leads to.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome<T> {
    /// Buffered deliveries that are now next, in order.
    pub deliver: Vec<T>,
    /// Messages lost for good; delivery goes on after `to`.
    pub gap: Option<Lost>,
    /// Send `subscribe` with `since` = this position.
    pub recover: Option<Position>,
}

impl<T> Default for Outcome<T> {
    fn default() -> Self {
        Self {
            deliver: Vec::new(),
            gap: None,
            recover: None,
        }
    }
}

/// The delivery state of one subscription.
#[derive(Debug)]
pub struct Tracker<T> {
    /// The last message delivered (or the start the first `subscribed` gave).
    position: Option<Position>,
    /// Deliveries that arrived before the first `subscribed`, with their positions.
    buffer: VecDeque<(u64, String, T)>,
    buffer_limit: usize,
    /// The buffer overflowed and was dropped: recover once the start is known.
    overflowed: bool,
    /// A `subscribe` with `since` is in flight.
    recovering: bool,
    /// The application's queue is full: drop everything until [`Tracker::resume`].
    stalled: bool,
    /// The last recovery claimed success yet left the position behind.
    incomplete_once: bool,
}

impl<T> Tracker<T> {
    /// A tracker starting after `position`, or (with `None`) wherever the first
    /// `subscribed` says; at most `buffer_limit` deliveries wait for that reply.
    pub fn new(position: Option<Position>, buffer_limit: usize) -> Self {
        Self {
            position,
            buffer: VecDeque::new(),
            buffer_limit,
            overflowed: false,
            recovering: false,
            stalled: false,
            incomplete_once: false,
        }
    }

    /// The last message delivered: what `subscribe` sends as `since`.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// Whether a recovery is in flight.
    pub fn recovering(&self) -> bool {
        self.recovering
    }

    /// A `subscribe` is being sent for this tracker (a new subscription, or renewing
    /// it on a new connection): the `since` it carries. With a position, that request
    /// is the recovery in flight.
    pub fn begin_request(&mut self) -> Option<Position> {
        self.recovering = self.position.is_some();
        self.position.clone()
    }

    /// Judges one delivery at (`offset`, `epoch`).
    pub fn on_delivery(&mut self, offset: u64, epoch: &str, item: T) -> Verdict<T> {
        if self.stalled {
            return Verdict::Skip;
        }
        let Some(pos) = &mut self.position else {
            if self.buffer.len() >= self.buffer_limit {
                self.buffer.clear();
                self.overflowed = true;
                return Verdict::Skip;
            }
            if !self.overflowed {
                self.buffer.push_back((offset, epoch.to_owned(), item));
                return Verdict::Buffered;
            }
            return Verdict::Skip;
        };
        if pos.epoch == epoch {
            if offset <= pos.offset {
                return Verdict::Duplicate;
            }
            if offset == pos.offset + 1 {
                pos.offset = offset;
                return Verdict::Deliver(item);
            }
        }
        if self.recovering {
            return Verdict::Skip;
        }
        self.recovering = true;
        Verdict::Recover(pos.clone())
    }

    /// A `subscribed` reply to this tracker's own request: the channel stands at
    /// (`offset`, `epoch`); `recovered` is present when the request carried `since`.
    /// At most `room` buffered deliveries are handed out; if more are due, the
    /// tracker stalls.
    pub fn on_subscribed(
        &mut self,
        offset: u64,
        epoch: &str,
        recovered: Option<bool>,
        room: usize,
    ) -> Outcome<T> {
        self.recovering = false;
        let here = Position::new(offset, epoch);
        let mut out = Outcome::default();
        let Some(pos) = self.position.clone() else {
            // The subscription starts here: what was buffered and is newer follows.
            self.position = Some(here);
            let overflowed = std::mem::take(&mut self.overflowed);
            for (offset, epoch, item) in std::mem::take(&mut self.buffer) {
                if out.deliver.len() >= room {
                    self.stalled = true;
                }
                match self.on_delivery(offset, &epoch, item) {
                    Verdict::Deliver(item) => out.deliver.push(item),
                    Verdict::Recover(p) => out.recover = Some(p),
                    Verdict::Duplicate | Verdict::Buffered | Verdict::Skip => {}
                }
            }
            if overflowed && !self.stalled && !self.recovering {
                // Dropped deliveries may have been newer than this start.
                self.recovering = true;
                out.recover = self.position.clone();
            }
            return out;
        };
        let same_epoch = pos.epoch == here.epoch;
        if recovered == Some(true) && same_epoch && pos.offset < here.offset {
            // Claimed recovered, yet the replay did not reach the channel's offset.
            if self.stalled {
                // This tracker dropped the replay itself; resuming recovers it.
            } else if std::mem::take(&mut self.incomplete_once) {
                self.position = Some(here.clone());
                out.gap = Some(Lost {
                    from: pos,
                    to: here,
                    reason: GapReason::IncompleteRecovery,
                });
            } else {
                self.incomplete_once = true;
                self.recovering = true;
                out.recover = Some(pos);
            }
        } else if recovered == Some(true) && same_epoch {
            self.incomplete_once = false;
        } else if recovered == Some(false) || !same_epoch || pos.offset < here.offset {
            // History could not fill what was missed (or `recovered` is missing where
            // it should be): report the hole and go on from the channel's position.
            self.incomplete_once = false;
            self.position = Some(here.clone());
            if pos != here {
                let reason = if same_epoch {
                    GapReason::NotRecovered
                } else {
                    GapReason::EpochChanged
                };
                out.gap = Some(Lost {
                    from: pos,
                    to: here,
                    reason,
                });
            }
        }
        out
    }

    /// The connection is gone: nothing is in flight any more, and what was buffered
    /// is dropped (the next `subscribe` replays it, or reports it lost).
    pub fn reset(&mut self) {
        self.recovering = false;
        self.buffer.clear();
        self.overflowed = false;
    }

    /// The request this tracker had in flight failed (an `error` reply, or the
    /// connection dropped): nothing is in flight any more.
    pub fn request_failed(&mut self) {
        self.recovering = false;
    }

    /// The application's queue is full: drop deliveries from now on. The position
    /// stays at the last message delivered, so [`Tracker::resume`] can recover the
    /// rest.
    pub fn stall(&mut self) {
        self.stalled = true;
    }

    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// The application has room again: recover what was dropped, from the position.
    pub fn resume(&mut self) -> Option<Position> {
        if !std::mem::take(&mut self.stalled) || self.recovering {
            return None;
        }
        let pos = self.position.clone()?;
        self.recovering = true;
        Some(pos)
    }
}

#[cfg(test)]
mod tests;
