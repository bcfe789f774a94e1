//! To-device messages (docs/e2ee.md), the decisions without a store or a socket: whether a
//! send may be queued, and, per receiving device, what to do with each queued entry so
//! that the device sees its queue in order, without gaps or duplicates, however live
//! deliveries and catch-up interleave.
//!
//! A to-device message carries one ciphertext to one device (an Olm message: a Megolm
//! session key, a device-link bundle). Each receiving device has a durable queue; an entry
//! gets the next position of that queue when it is stored, so the queue's order is the
//! order the store accepted sends in, and one sender's sends (answered one after the other
//! by its session) keep their order. Entries are deleted when the device acknowledges
//! them (`up_to` a position), never before.
//!
//! The device reads at its own pace: at most a window of entries is sent and not yet
//! acknowledged; the rest stay in the store and follow as acknowledgements come (flow
//! control, so that a queue of thousands of entries never floods the outbox). The shell is
//! `crate::actors::session::to_device`; the stores' queues are `Store::enqueue_to_device`.

use std::collections::HashSet;

use crate::ids::{DeviceId, UserId};
use crate::store::QueueBounds;

/// Limits of to-device messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToDeviceLimits {
    /// Devices one send may address.
    pub max_targets: usize,
    /// Largest ciphertext for one device, in bytes.
    pub max_payload: usize,
    /// Entries a device's queue may hold; a send that would overflow any target's queue
    /// is refused whole (checked by the store, in the send's transaction).
    pub max_queued: u64,
    /// Entries one other user may have in a device's queue (see
    /// `crate::store::QueueBounds::per_sender`).
    pub max_queued_per_sender: u64,
    /// Entries sent to a device and not yet acknowledged, at most (flow control).
    pub window: u64,
}

impl Default for ToDeviceLimits {
    fn default() -> Self {
        // 1,024 targets: a 256-member group with up to four devices each, in one send.
        // A tenth of a queue per other user: a key share per device per Megolm rotation,
        // so a thousand rotations of one peer's sessions while a device is away.
        ToDeviceLimits { max_targets: 1024, max_payload: 16 * 1024, max_queued: 10_000, max_queued_per_sender: 1_000, window: 256 }
    }
}

impl ToDeviceLimits {
    /// The bounds the store checks per target.
    pub fn bounds(&self) -> QueueBounds {
        QueueBounds { per_device: self.max_queued, per_sender: self.max_queued_per_sender }
    }
}

/// Whether a send from `sender` must count its user's entries in the queue of a device of
/// `target`, which holds `queued` unacknowledged entries: never for the user's own devices
/// (a new device's history of forwarded keys comes from them), and only once the queue
/// holds at least `per_sender` entries (below that no sender can have as many, so the
/// store reads nothing more on the common path).
pub fn sender_bound_applies(sender: UserId, target: UserId, queued: u64, bounds: &QueueBounds) -> bool {
    sender != target && queued >= bounds.per_sender
}

/// Longest client id, in bytes (as `client_msg_id`).
pub const MAX_CLIENT_ID_BYTES: usize = 64;

/// Why a send is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendRefusal {
    /// A field is out of range.
    #[error("{0}")]
    Invalid(String),
    /// A ciphertext is larger than allowed.
    #[error("to-device payload of {len} bytes exceeds {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Checks a send before anything is stored: the client id, the number of targets, each
/// ciphertext's size, duplicate targets. All or nothing: one bad target refuses the whole
/// send, so a sender never has to find out which devices got it. (That every target is a
/// live device of the named user, and that its queue has room, the store checks in the
/// send's transaction: `Store::enqueue_to_device`.)
pub fn check_send(client_id: &str, targets: &[(UserId, DeviceId, usize)], limits: &ToDeviceLimits) -> Result<(), SendRefusal> {
    if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_BYTES {
        return Err(SendRefusal::Invalid(format!("client_id must be 1 to {MAX_CLIENT_ID_BYTES} bytes")));
    }
    if targets.is_empty() || targets.len() > limits.max_targets {
        return Err(SendRefusal::Invalid(format!("a to-device send addresses 1 to {} devices", limits.max_targets)));
    }
    let mut seen = HashSet::with_capacity(targets.len());
    for (user, device, len) in targets {
        if *len == 0 {
            return Err(SendRefusal::Invalid("an empty to-device payload".into()));
        }
        if *len > limits.max_payload {
            return Err(SendRefusal::TooLarge { len: *len, max: limits.max_payload });
        }
        if !seen.insert(*device) {
            return Err(SendRefusal::Invalid(format!("device {device} of user {user} is addressed twice")));
        }
    }
    Ok(())
}

/// What to do with a queued entry offered to a receiving device's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Send it to the device, then call [`Receiver::sent`].
    Send,
    /// Already sent (catch-up and a live delivery crossed): skip it.
    Duplicate,
    /// Entries between the last sent and this one are missing here: read the queue from
    /// the store after [`Receiver::sent_up_to`] (at most [`Receiver::room`] entries) and
    /// send those instead.
    Gap,
    /// The window is full: leave it in the store; it is read after the next
    /// acknowledgement.
    Hold,
}

/// One receiving device's position in its queue, in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receiver {
    sent: u64,
    acked: u64,
    window: u64,
}

impl Receiver {
    /// A device whose queue holds entries after `acked` (they were deleted up to it), of
    /// which at most `window` (at least 1) are sent and not acknowledged at a time.
    pub fn new(acked: u64, window: u64) -> Self {
        Receiver { sent: acked, acked, window: window.max(1) }
    }

    /// Highest position sent to the device.
    pub fn sent_up_to(&self) -> u64 {
        self.sent
    }

    /// How many more entries may be sent before an acknowledgement.
    pub fn room(&self) -> u64 {
        self.window.saturating_sub(self.sent - self.acked)
    }

    /// What to do with the entry at `position`, offered live.
    pub fn offer(&self, position: u64) -> Offer {
        if position <= self.sent {
            Offer::Duplicate
        } else if self.room() == 0 {
            Offer::Hold
        } else if position == self.sent + 1 {
            Offer::Send
        } else {
            Offer::Gap
        }
    }

    /// The entry at `position` was put in the device's outbox (live, or read from the
    /// store: the store's order is the truth, so a position it never wrote, a hole left by
    /// a failed write on ScyllaDB, is skipped rather than waited for).
    pub fn sent(&mut self, position: u64) {
        self.sent = self.sent.max(position);
    }

    /// The device acknowledges everything up to `up_to`. Returns the position to delete
    /// the queue up to, or None when nothing changes (already acknowledged). A device
    /// cannot acknowledge what it was never sent: the position is capped there.
    pub fn ack(&mut self, up_to: u64) -> Option<u64> {
        let up_to = up_to.min(self.sent);
        if up_to <= self.acked {
            return None;
        }
        self.acked = up_to;
        Some(up_to)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_sender_is_counted_only_against_another_users_device_and_a_queue_long_enough() {
        let bounds = ToDeviceLimits::default().bounds();
        assert_eq!(bounds, QueueBounds { per_device: 10_000, per_sender: 1_000 });
        let (me, peer) = (UserId::random(), UserId::random());
        assert!(!sender_bound_applies(me, peer, 999, &bounds), "below the share no sender can hold it");
        assert!(sender_bound_applies(me, peer, 1_000, &bounds));
        assert!(!sender_bound_applies(me, me, 9_999, &bounds), "one's own devices are bound by the queue only");
    }

    #[test]
    fn a_send_is_checked_whole() {
        let limits = ToDeviceLimits { max_targets: 3, max_payload: 10, max_queued: 2, max_queued_per_sender: 2, window: 2 };
        let (u, d1, d2) = (UserId::random(), DeviceId::random(), DeviceId::random());
        assert_eq!(check_send("c1", &[(u, d1, 10)], &limits), Ok(()));
        assert!(matches!(check_send("", &[(u, d1, 1)], &limits), Err(SendRefusal::Invalid(_))));
        assert!(matches!(check_send(&"x".repeat(65), &[(u, d1, 1)], &limits), Err(SendRefusal::Invalid(_))));
        assert!(matches!(check_send("c", &[], &limits), Err(SendRefusal::Invalid(_))));
        assert_eq!(check_send("c", &[(u, d1, 11)], &limits), Err(SendRefusal::TooLarge { len: 11, max: 10 }));
        assert!(matches!(check_send("c", &[(u, d1, 1), (u, d1, 1)], &limits), Err(SendRefusal::Invalid(_))));
        assert_eq!(check_send("c", &[(u, d1, 1), (u, d2, 1)], &limits), Ok(()));
        assert!(matches!(check_send("c", &[(u, d1, 0)], &limits), Err(SendRefusal::Invalid(_))));
    }

    #[test]
    fn acks_never_pass_what_was_sent_nor_go_back() {
        let mut r = Receiver::new(3, 10);
        assert_eq!(r.offer(3), Offer::Duplicate);
        assert_eq!(r.offer(5), Offer::Gap);
        assert_eq!(r.offer(4), Offer::Send);
        r.sent(4);
        assert_eq!(r.ack(10), Some(4));
        assert_eq!(r.ack(4), None);
        assert_eq!(r.ack(2), None);
    }

    #[test]
    fn the_window_holds_what_the_device_has_not_acknowledged() {
        let mut r = Receiver::new(0, 2);
        assert_eq!(r.room(), 2);
        r.sent(1);
        r.sent(2);
        assert_eq!(r.offer(3), Offer::Hold);
        assert_eq!(r.offer(5), Offer::Hold);
        assert_eq!(r.offer(2), Offer::Duplicate);
        assert_eq!(r.ack(1), Some(1));
        assert_eq!(r.room(), 1);
        assert_eq!(r.offer(3), Offer::Send);
        assert_eq!(Receiver::new(0, 0).room(), 1, "a window of 0 would never send anything");
    }

    proptest! {
        /// Live deliveries arrive in any order, with duplicates, and the device acknowledges
        /// at random moments; the device is sent every stored position once, in order,
        /// never more than the window ahead of its acknowledgements, when the shell fills
        /// gaps and held entries from the store (here: the stored positions after the last
        /// sent, up to the room).
        #[test]
        fn the_device_sees_its_queue_in_order_once(
            arrivals in proptest::collection::vec((1u64..40, any::<bool>()), 0..80),
            window in 1u64..8,
        ) {
            let mut stored = 0u64;
            let mut r = Receiver::new(0, window);
            let mut seen: Vec<u64> = Vec::new();
            let mut acked = 0u64;
            let fill = |r: &mut Receiver, seen: &mut Vec<u64>, stored: u64| {
                let from = r.sent_up_to() + 1;
                let to = stored.min(r.sent_up_to() + r.room());
                for p in from..=to {
                    seen.push(p);
                    r.sent(p);
                }
            };
            for (position, ack) in arrivals {
                // Entries are stored in position order before their live delivery.
                stored = stored.max(position);
                match r.offer(position) {
                    Offer::Send => { seen.push(position); r.sent(position); }
                    Offer::Duplicate | Offer::Hold => {}
                    Offer::Gap => fill(&mut r, &mut seen, stored),
                }
                prop_assert!(r.sent_up_to() - acked <= window);
                if ack {
                    if let Some(up_to) = r.ack(r.sent_up_to()) {
                        acked = up_to;
                    }
                    fill(&mut r, &mut seen, stored);
                }
            }
            // Acknowledging to the end drains the queue.
            while r.sent_up_to() < stored {
                let up_to = r.sent_up_to();
                r.ack(up_to);
                fill(&mut r, &mut seen, stored);
            }
            let expected: Vec<u64> = (1..=stored).collect();
            prop_assert_eq!(&seen, &expected);
        }
    }
}
