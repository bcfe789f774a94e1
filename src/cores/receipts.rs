//! Group receipts, coalesced: instead of one receipt frame per member and device (a storm
//! in a 1024-member group), each sender is told "delivered to N of M, read by N of M" for
//! their latest message, at most once per flush, and only when the counts changed.
//! Pure: the sequencer feeds cursor moves and commits, and asks for the changed counts.

use std::collections::HashMap;

use crate::ids::UserId;
use crate::protocol::pb;
use crate::store::MemberCursor;

/// The ticks of `sender`'s message at `seq`: how many current members other than the
/// sender, among those who were members when it was sent (`joined`: each current member
/// with the seq that made them one; 0 in a 1:1), have their member cursor at or past it,
/// as (delivered, read). A read cursor counts as delivered too (a device that read it has
/// it).
pub fn ticks(cursors: &[(UserId, MemberCursor)], joined: &[(UserId, u64)], sender: UserId, seq: u64) -> (u32, u32) {
    let joined: HashMap<UserId, u64> = joined.iter().copied().collect();
    let (mut delivered, mut read) = (0, 0);
    for (user, cursor) in cursors {
        if *user == sender || joined.get(user).is_none_or(|since| *since > seq) {
            continue;
        }
        if cursor.delivered.max(cursor.read) >= seq {
            delivered += 1;
        }
        if cursor.read >= seq {
            read += 1;
        }
    }
    (delivered, read)
}

/// One sender's new counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Who sent the message.
    pub sender: UserId,
    /// Its seq.
    pub seq: u64,
    /// Members (other than the sender) it was delivered to.
    pub delivered: u32,
    /// Members (other than the sender) who read it.
    pub read: u32,
    /// Members other than the sender.
    pub members: u32,
}

/// Member cursors and each sender's latest message with the counts last reported.
#[derive(Debug, Default)]
pub struct GroupReceipts {
    cursors: HashMap<UserId, MemberCursor>,
    latest: HashMap<UserId, (u64, u32, u32)>,
    dirty: bool,
}

impl GroupReceipts {
    /// Starts from the member cursors in the store.
    pub fn new(cursors: impl IntoIterator<Item = (UserId, MemberCursor)>) -> Self {
        Self { cursors: cursors.into_iter().collect(), latest: HashMap::new(), dirty: false }
    }

    /// A member's device moved its cursor. Returns true if a flush should be scheduled
    /// (none is pending yet).
    pub fn cursor_moved(&mut self, user: UserId, kind: pb::ReceiptKind, seq: u64) -> bool {
        let cursor = self.cursors.entry(user).or_default();
        if kind == pb::ReceiptKind::Read {
            cursor.read = cursor.read.max(seq);
        }
        cursor.delivered = cursor.delivered.max(seq);
        let schedule = !self.dirty;
        self.dirty = true;
        schedule
    }

    /// A message of `sender` at `seq` was committed: it is now their latest.
    pub fn committed(&mut self, sender: UserId, seq: u64) {
        self.latest.insert(sender, (seq, 0, 0));
    }

    /// The counts that changed since the last flush, for the current `members`.
    pub fn flush(&mut self, members: &[UserId]) -> Vec<Summary> {
        self.dirty = false;
        let others = members.len().saturating_sub(1) as u32;
        let mut out = Vec::new();
        for (sender, (seq, last_delivered, last_read)) in self.latest.iter_mut() {
            let (mut delivered, mut read) = (0u32, 0u32);
            for member in members.iter().filter(|m| *m != sender) {
                if let Some(c) = self.cursors.get(member) {
                    delivered += u32::from(c.delivered >= *seq);
                    read += u32::from(c.read >= *seq);
                }
            }
            if (delivered, read) != (*last_delivered, *last_read) {
                *last_delivered = delivered;
                *last_read = read;
                out.push(Summary { sender: *sender, seq: *seq, delivered, read, members: others });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_count_current_members_other_than_the_sender() {
        let (a, b, c, gone) = (UserId::from_u128(1), UserId::from_u128(2), UserId::from_u128(3), UserId::from_u128(4));
        let late = UserId::from_u128(5);
        let joined = [(a, 1), (b, 1), (c, 2), (late, 6)];
        let cursors = [
            (a, MemberCursor { delivered: 9, read: 9 }),
            (b, MemberCursor { delivered: 5, read: 4 }),
            (c, MemberCursor { delivered: 0, read: 6 }),
            (gone, MemberCursor { delivered: 9, read: 9 }),
            (late, MemberCursor { delivered: 9, read: 9 }),
        ];
        assert_eq!(ticks(&cursors, &joined, a, 5), (2, 1), "b has it, c read it; the sender, a former member and a later joiner do not count");
        assert_eq!(ticks(&cursors, &joined, a, 4), (2, 2));
        assert_eq!(ticks(&cursors, &joined, a, 7), (1, 1), "the member who joined at 6 counts for 7");
    }

    #[test]
    fn counts_change_once_per_flush_and_only_when_they_change() {
        let (a, b, c) = (UserId::random(), UserId::random(), UserId::random());
        let members = vec![a, b, c];
        let mut r = GroupReceipts::default();
        r.committed(a, 5);
        assert!(r.cursor_moved(b, pb::ReceiptKind::Delivered, 5));
        assert!(!r.cursor_moved(c, pb::ReceiptKind::Delivered, 4), "a flush is already pending");
        assert_eq!(r.flush(&members), vec![Summary { sender: a, seq: 5, delivered: 1, read: 0, members: 2 }]);
        assert!(r.flush(&members).is_empty(), "nothing changed");
        r.cursor_moved(c, pb::ReceiptKind::Read, 6);
        assert_eq!(r.flush(&members), vec![Summary { sender: a, seq: 5, delivered: 2, read: 1, members: 2 }]);
    }
}
