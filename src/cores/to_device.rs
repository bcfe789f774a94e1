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
//! Not wired yet: the frames, the stores' queues and the session's use of [`Receiver`]
//! are the next part of issue 13 (see docs/e2ee.md, "Not yet built").

use std::collections::HashSet;

use crate::ids::{DeviceId, UserId};

/// Limits of to-device messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToDeviceLimits {
    /// Devices one send may address.
    pub max_targets: usize,
    /// Largest ciphertext for one device, in bytes.
    pub max_payload: usize,
    /// Entries a device's queue may hold; a send that would overflow any target's queue
    /// is refused whole.
    pub max_queued: u64,
}

impl Default for ToDeviceLimits {
    fn default() -> Self {
        // 1,024 targets: a 256-member group with up to four devices each, in one send.
        ToDeviceLimits { max_targets: 1024, max_payload: 16 * 1024, max_queued: 10_000 }
    }
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
    /// A target is not a live device of the named user (unknown, revoked, another user's).
    #[error("no live device {device} of user {user}")]
    UnknownDevice {
        /// The named user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// A target's queue is full (the device has not acknowledged what it was sent).
    #[error("the queue of device {device} is full ({max} entries)")]
    QueueFull {
        /// The device.
        device: DeviceId,
        /// The limit.
        max: u64,
    },
}

/// Checks a send before anything is stored: the client id, the number of targets, each
/// ciphertext's size, duplicate targets, and that every target is a live device of the
/// named user (`live(user, device)`, from the store). All or nothing: one bad target
/// refuses the whole send, so a sender never has to find out which devices got it.
pub fn check_send(
    client_id: &str,
    targets: &[(UserId, DeviceId, usize)],
    live: impl Fn(UserId, DeviceId) -> bool,
    limits: &ToDeviceLimits,
) -> Result<(), SendRefusal> {
    if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_BYTES {
        return Err(SendRefusal::Invalid(format!("client_id must be 1 to {MAX_CLIENT_ID_BYTES} bytes")));
    }
    if targets.is_empty() || targets.len() > limits.max_targets {
        return Err(SendRefusal::Invalid(format!("a to-device send addresses 1 to {} devices", limits.max_targets)));
    }
    let mut seen = HashSet::with_capacity(targets.len());
    for (user, device, len) in targets {
        if *len > limits.max_payload {
            return Err(SendRefusal::TooLarge { len: *len, max: limits.max_payload });
        }
        if !seen.insert(*device) {
            return Err(SendRefusal::Invalid(format!("device {device} is addressed twice")));
        }
        if !live(*user, *device) {
            return Err(SendRefusal::UnknownDevice { user: *user, device: *device });
        }
    }
    Ok(())
}

/// The queue-bound decision for one target: `queued` entries now, one more to add.
pub fn check_room(device: DeviceId, queued: u64, limits: &ToDeviceLimits) -> Result<(), SendRefusal> {
    if queued >= limits.max_queued {
        return Err(SendRefusal::QueueFull { device, max: limits.max_queued });
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
    /// the store after [`Receiver::sent_up_to`] and offer those first.
    Gap,
}

/// One receiving device's position in its queue, in the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Receiver {
    sent: u64,
    acked: u64,
}

impl Receiver {
    /// A device whose queue holds entries after `acked` (they were deleted up to it).
    pub fn new(acked: u64) -> Self {
        Receiver { sent: acked, acked }
    }

    /// Highest position sent to the device.
    pub fn sent_up_to(&self) -> u64 {
        self.sent
    }

    /// What to do with the entry at `position`.
    pub fn offer(&self, position: u64) -> Offer {
        if position <= self.sent {
            Offer::Duplicate
        } else if position == self.sent + 1 {
            Offer::Send
        } else {
            Offer::Gap
        }
    }

    /// The entry at `position` was put in the device's outbox.
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
    fn a_send_is_checked_whole() {
        let limits = ToDeviceLimits { max_targets: 3, max_payload: 10, max_queued: 2 };
        let (u, d1, d2) = (UserId::random(), DeviceId::random(), DeviceId::random());
        let live = |_: UserId, d: DeviceId| d != d2;
        assert_eq!(check_send("c1", &[(u, d1, 10)], live, &limits), Ok(()));
        assert!(matches!(check_send("", &[(u, d1, 1)], live, &limits), Err(SendRefusal::Invalid(_))));
        assert!(matches!(check_send(&"x".repeat(65), &[(u, d1, 1)], live, &limits), Err(SendRefusal::Invalid(_))));
        assert!(matches!(check_send("c", &[], live, &limits), Err(SendRefusal::Invalid(_))));
        assert_eq!(check_send("c", &[(u, d1, 11)], live, &limits), Err(SendRefusal::TooLarge { len: 11, max: 10 }));
        assert!(matches!(check_send("c", &[(u, d1, 1), (u, d1, 1)], live, &limits), Err(SendRefusal::Invalid(_))));
        assert_eq!(check_send("c", &[(u, d1, 1), (u, d2, 1)], live, &limits), Err(SendRefusal::UnknownDevice { user: u, device: d2 }));
        assert_eq!(check_room(d1, 1, &limits), Ok(()));
        assert_eq!(check_room(d1, 2, &limits), Err(SendRefusal::QueueFull { device: d1, max: 2 }));
    }

    #[test]
    fn acks_never_pass_what_was_sent_nor_go_back() {
        let mut r = Receiver::new(3);
        assert_eq!(r.offer(3), Offer::Duplicate);
        assert_eq!(r.offer(5), Offer::Gap);
        assert_eq!(r.offer(4), Offer::Send);
        r.sent(4);
        assert_eq!(r.ack(10), Some(4));
        assert_eq!(r.ack(4), None);
        assert_eq!(r.ack(2), None);
    }

    proptest! {
        /// Live deliveries arrive in any order, with duplicates; the device is sent every
        /// position once, in order, when the shell fills gaps from the store (here: the
        /// positions it has not seen yet, in order).
        #[test]
        fn the_device_sees_its_queue_in_order_once(arrivals in proptest::collection::vec(1u64..40, 0..80)) {
            let stored: u64 = arrivals.iter().copied().max().unwrap_or(0);
            let mut r = Receiver::new(0);
            let mut seen = Vec::new();
            for position in arrivals {
                match r.offer(position) {
                    Offer::Send => { seen.push(position); r.sent(position); }
                    Offer::Duplicate => {}
                    Offer::Gap => {
                        // The shell reads the queue after sent_up_to (everything up to
                        // the newest stored entry is there) and offers it in order.
                        for p in r.sent_up_to() + 1..=position {
                            prop_assert_eq!(r.offer(p), Offer::Send);
                            seen.push(p);
                            r.sent(p);
                        }
                    }
                }
            }
            let expected: Vec<u64> = (1..=seen.len() as u64).collect();
            prop_assert_eq!(&seen, &expected);
            prop_assert!(seen.len() as u64 <= stored);
        }
    }
}
