//! A bounded window of the idempotency keys a conversation stored recently, per sender,
//! so that a client's retry of a message it sent moments ago is answered with the
//! original seq without a store round trip.
//!
//! The window is an optimisation, never the authority: a key it does not hold (after an
//! activation, a restart, or once evicted) is sequenced optimistically, and the store's
//! dedup key (written in the same transaction as the message) answers `Duplicate` with
//! the original seq; the sequencer then renumbers what followed (see `sequencer`).
//!
//! Keys are kept as 128-bit hashes (xxh3-128) of the client id: a collision between two
//! ids of one sender within the window would need ~2^64 ids, and a 64-byte string per
//! entry would cost more than the rest of an idle 1:1 conversation.

use std::collections::{HashMap, VecDeque};

use crate::ids::UserId;

/// Keys remembered per sender.
pub const PER_SENDER: usize = 8;
/// Senders remembered (the least recently active is forgotten first).
pub const SENDERS: usize = 64;

/// The hash under which a client id is remembered.
pub fn key_of(client_msg_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(client_msg_id.as_bytes())
}

/// What the window remembers of one stored message: its seq and server time (ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// The seq the message was stored at.
    pub seq: u64,
    /// Its server time, ms since the epoch.
    pub time_ms: u64,
}

/// The window.
#[derive(Debug, Default)]
pub struct RecentIds {
    by_sender: HashMap<UserId, VecDeque<(u128, Remembered)>>,
    /// Senders in order of last insertion (front = oldest), for eviction.
    order: VecDeque<UserId>,
}

impl RecentIds {
    /// The remembered message of `sender` with this client id, if any.
    pub fn get(&self, sender: UserId, client_msg_id: &str) -> Option<Remembered> {
        let key = key_of(client_msg_id);
        self.by_sender.get(&sender)?.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
    }

    /// Remembers a stored message.
    pub fn insert(&mut self, sender: UserId, client_msg_id: &str, remembered: Remembered) {
        let key = key_of(client_msg_id);
        match self.by_sender.get_mut(&sender) {
            Some(keys) => {
                if keys.iter().any(|(k, _)| *k == key) {
                    return;
                }
                if keys.len() >= PER_SENDER {
                    keys.pop_front();
                }
                keys.push_back((key, remembered));
                if let Some(pos) = self.order.iter().position(|u| *u == sender) {
                    self.order.remove(pos);
                }
                self.order.push_back(sender);
            }
            None => {
                if self.order.len() >= SENDERS
                    && let Some(oldest) = self.order.pop_front()
                {
                    self.by_sender.remove(&oldest);
                }
                let mut keys = VecDeque::with_capacity(2);
                keys.push_back((key, remembered));
                self.by_sender.insert(sender, keys);
                self.order.push_back(sender);
            }
        }
    }

    /// Forgets every key of messages at or below `seq` (expired by retention: dedup
    /// state expires with its message).
    pub fn forget_up_to(&mut self, seq: u64) {
        for keys in self.by_sender.values_mut() {
            keys.retain(|(_, r)| r.seq > seq);
        }
    }

    /// Number of remembered keys (tests).
    pub fn len(&self) -> usize {
        self.by_sender.values().map(VecDeque::len).sum()
    }

    /// True if nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_sender_and_forgets_the_oldest() {
        let (a, b) = (UserId::random(), UserId::random());
        let mut w = RecentIds::default();
        for i in 0..(PER_SENDER as u64 + 3) {
            w.insert(a, &format!("a-{i}"), Remembered { seq: i + 1, time_ms: i });
        }
        w.insert(b, "b-0", Remembered { seq: 100, time_ms: 0 });
        assert_eq!(w.get(a, "a-0"), None, "evicted");
        assert_eq!(w.get(a, &format!("a-{}", PER_SENDER + 2)).map(|r| r.seq), Some(PER_SENDER as u64 + 3));
        assert_eq!(w.get(b, "b-0").map(|r| r.seq), Some(100));
        assert_eq!(w.get(b, "a-3"), None, "keys are per sender");
        assert_eq!(w.len(), PER_SENDER + 1);
    }

    #[test]
    fn senders_are_bounded() {
        let mut w = RecentIds::default();
        let first = UserId::random();
        w.insert(first, "x", Remembered { seq: 1, time_ms: 1 });
        for _ in 0..SENDERS {
            w.insert(UserId::random(), "x", Remembered { seq: 2, time_ms: 2 });
        }
        assert_eq!(w.get(first, "x"), None);
        assert_eq!(w.len(), SENDERS);
    }

    #[test]
    fn expiry_forgets_keys() {
        let a = UserId::random();
        let mut w = RecentIds::default();
        w.insert(a, "1", Remembered { seq: 1, time_ms: 1 });
        w.insert(a, "2", Remembered { seq: 2, time_ms: 2 });
        w.forget_up_to(1);
        assert_eq!(w.get(a, "1"), None);
        assert!(w.get(a, "2").is_some());
    }
}
