//! Large conversation records decoded once and shared by every reader that keeps them.
//!
//! Every device session keeps the record of each conversation it has seen (members, and a
//! group's roles and membership history). A 1,000-member group's record is ~48 KB and
//! ~2,000 ids to decode: in a reconnect storm of 10,000 members of such groups, decoding
//! was 12 % of the server's CPU, and every session held its own copy. Here a record read
//! from the store is handed out as the same `Arc` as long as its stored bytes are
//! unchanged and someone still holds it.
//!
//! Coherent by construction: an entry is used only if the bytes just read are equal to the
//! bytes it was decoded from (compared in full, not by a hash, since a group's subject and
//! description are chosen by users). Entries hold a `Weak`, so the cache keeps no record
//! alive; dead entries are dropped when the map grows. Small records (1:1) are decoded
//! each time: that costs less than the entry would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use super::{ConversationRecord, StoreError};
use crate::ids::ConversationId;

/// Records encoded in fewer bytes than this are not shared (a 1:1 record is ~60 bytes).
pub const SHARE_MIN_BYTES: usize = 1024;
/// Dead entries are dropped when the map reaches this many entries (or twice the live
/// count after the last sweep, whichever is larger).
const SWEEP_AT: usize = 1024;

struct Entry {
    bytes: Box<[u8]>,
    record: Weak<ConversationRecord>,
}

/// The shared records of one store.
#[derive(Default)]
pub struct SharedRecords {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ConversationId, Entry>,
    sweep_at: usize,
}

impl SharedRecords {
    /// The record stored as `bytes` (postcard), shared with earlier readers if they still
    /// hold the same one. Errors: `StoreError::Corrupt` if the bytes do not decode.
    pub fn get_or_decode(&self, id: ConversationId, bytes: &[u8]) -> Result<Arc<ConversationRecord>, StoreError> {
        if bytes.len() < SHARE_MIN_BYTES {
            return super::embedded::decode("conversations", bytes).map(Arc::new);
        }
        if let Some(record) = self.lock().entries.get(&id).filter(|e| *e.bytes == *bytes).and_then(|e| e.record.upgrade()) {
            return Ok(record);
        }
        // Decoded outside the lock: other sessions' reads go on meanwhile. Two readers
        // racing may both decode; the later entry wins, and both records are correct.
        let record: Arc<ConversationRecord> = Arc::new(super::embedded::decode("conversations", bytes)?);
        let mut inner = self.lock();
        inner.entries.insert(id, Entry { bytes: bytes.into(), record: Arc::downgrade(&record) });
        if inner.entries.len() >= inner.sweep_at.max(SWEEP_AT) {
            inner.entries.retain(|_, e| e.record.strong_count() > 0);
            inner.sweep_at = 2 * inner.entries.len();
        }
        Ok(record)
    }

    /// Entries in the map (live or not yet swept).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// True if the map is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every step is a single
        // insert or retain), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;
    use crate::store::{ConversationKind, GroupState};

    fn group(members: usize, subject: &str) -> (ConversationId, Vec<u8>) {
        let id = ConversationId::random();
        let mut users: Vec<UserId> = (0..members).map(|_| UserId::random()).collect();
        users.sort();
        let joined = users.iter().map(|u| (*u, 1)).collect();
        let record = ConversationRecord {
            conversation_id: id,
            kind: ConversationKind::Group,
            members: users,
            created_ms: 1,
            group: Some(Box::new(GroupState { subject: subject.into(), joined, ..GroupState::default() })),
            retention_secs: 0,
        };
        (id, postcard::to_stdvec(&record).expect("encode"))
    }

    #[test]
    fn unchanged_bytes_share_one_record_and_changed_bytes_do_not() {
        let shared = SharedRecords::default();
        let (id, bytes) = group(100, "one");
        let a = shared.get_or_decode(id, &bytes).expect("decode");
        let b = shared.get_or_decode(id, &bytes).expect("decode");
        assert!(Arc::ptr_eq(&a, &b));
        // The record changed in the store (a new subject): a new record, equal to its bytes.
        let mut changed: ConversationRecord = postcard::from_bytes(&bytes).expect("decode");
        changed.group.as_mut().expect("group").subject = "two".into();
        let changed_bytes = postcard::to_stdvec(&changed).expect("encode");
        let c = shared.get_or_decode(id, &changed_bytes).expect("decode");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, changed);
        assert_eq!(*a, postcard::from_bytes::<ConversationRecord>(&bytes).expect("decode"));
    }

    #[test]
    fn small_records_are_not_kept_and_dead_entries_are_swept() {
        let shared = SharedRecords::default();
        let direct = ConversationRecord::direct(UserId::random(), UserId::random(), 1);
        let bytes = postcard::to_stdvec(&direct).expect("encode");
        assert!(bytes.len() < SHARE_MIN_BYTES);
        let a = shared.get_or_decode(direct.conversation_id, &bytes).expect("decode");
        assert_eq!(*a, direct);
        assert!(shared.is_empty());
        let mut held = Vec::new();
        for i in 0..3 * SWEEP_AT {
            let (id, bytes) = group(64, "g");
            let record = shared.get_or_decode(id, &bytes).expect("decode");
            if i % 10 == 0 {
                held.push(record);
            }
        }
        assert!(shared.len() < 2 * SWEEP_AT, "swept: {} entries", shared.len());
        assert!(shared.len() >= held.len());
    }

    #[test]
    fn corrupt_bytes_are_an_error() {
        let shared = SharedRecords::default();
        let err = shared.get_or_decode(ConversationId::random(), &[0xff; SHARE_MIN_BYTES]).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { table: "conversations", .. }), "{err}");
    }
}
