//! Clean-up of media, decided record by record as a pure function ([`decide`]); the
//! service applies the decisions with compare-and-set on each record's version, so any
//! number of nodes may sweep at once: two sweeps that decide the same thing race for one
//! version, one wins, the other's write is refused and it moves on.
//!
//! - An upload not complete within `upload_ttl` of its creation is deleted (record, then
//!   chunks): abandoned uploads expire.
//! - A complete attachment that no message references is *marked* (the time the sweep
//!   first saw it unreferenced); one still unreferenced and still carrying the same mark a
//!   `grace` period later is deleted, and its blob with it when no other record has the
//!   same digest (content addressing: a forwarded or re-uploaded file is stored once).
//!   A message that declares a marked media unmarks it before it is stored
//!   (`media::attachments`), and a sweep that finds it referenced again unmarks it.
//! - Public images are never swept: their owner (a profile, a group) decides.

use std::time::Duration;

use crate::store::{MediaKind, MediaRecord};

/// What to do with one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    Keep,
    /// Delete the expired upload and its chunks.
    ExpireUpload,
    /// Record that it was seen unreferenced at this time (ms).
    Mark(u64),
    /// It is referenced again: clear the mark.
    Unmark,
    /// Delete the record (and the blob, if no other record has its digest).
    Delete,
}

/// The decision for `record`, given whether any message references it, at `now_ms`.
pub fn decide(record: &MediaRecord, referenced: bool, now_ms: u64, upload_ttl: Duration, grace: Duration) -> Action {
    if !record.is_complete() {
        let expires = record.created_ms.saturating_add(upload_ttl.as_millis() as u64);
        return if now_ms >= expires { Action::ExpireUpload } else { Action::Keep };
    }
    if record.kind == MediaKind::PublicImage {
        return Action::Keep;
    }
    match (referenced, record.unreferenced_since_ms) {
        (true, None) => Action::Keep,
        (true, Some(_)) => Action::Unmark,
        (false, None) => Action::Mark(now_ms),
        (false, Some(since)) if now_ms >= since.saturating_add(grace.as_millis() as u64) => Action::Delete,
        (false, Some(_)) => Action::Keep,
    }
}

/// What one sweep did (for logs, metrics and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SweepReport {
    /// Records looked at.
    pub examined: u64,
    /// Expired uploads deleted.
    pub expired_uploads: u64,
    /// Attachments newly marked unreferenced.
    pub marked: u64,
    /// Marks cleared.
    pub unmarked: u64,
    /// Attachment records deleted.
    pub deleted: u64,
    /// Blobs deleted.
    pub blobs_deleted: u64,
    /// Chunk sets of uploads without a record (a crash between steps) deleted.
    pub orphan_uploads: u64,
    /// Compare-and-set writes lost to another node or request (nothing to do).
    pub lost_races: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{MediaId, UserId};

    fn record(complete: bool, kind: MediaKind, mark: Option<u64>) -> MediaRecord {
        MediaRecord {
            media_id: MediaId::random(),
            owner: UserId::random(),
            kind,
            length: 10,
            offset: if complete { 10 } else { 3 },
            parts: Vec::new(),
            hash_state: Vec::new(),
            declared_sha256: None,
            digest: complete.then_some([1; 32]),
            metadata: String::new(),
            created_ms: 1_000,
            unreferenced_since_ms: mark,
            version: 1,
        }
    }

    const TTL: Duration = Duration::from_secs(10);
    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn uploads_expire_after_their_ttl_only() {
        let r = record(false, MediaKind::Attachment, None);
        assert_eq!(decide(&r, false, 10_999, TTL, GRACE), Action::Keep);
        assert_eq!(decide(&r, false, 11_000, TTL, GRACE), Action::ExpireUpload);
    }

    #[test]
    fn unreferenced_attachments_are_marked_then_deleted_after_the_grace() {
        let r = record(true, MediaKind::Attachment, None);
        assert_eq!(decide(&r, true, 5_000, TTL, GRACE), Action::Keep);
        assert_eq!(decide(&r, false, 5_000, TTL, GRACE), Action::Mark(5_000));
        let marked = record(true, MediaKind::Attachment, Some(5_000));
        assert_eq!(decide(&marked, false, 64_999, TTL, GRACE), Action::Keep);
        assert_eq!(decide(&marked, false, 65_000, TTL, GRACE), Action::Delete);
        assert_eq!(decide(&marked, true, 65_000, TTL, GRACE), Action::Unmark, "referenced again: never deleted");
    }

    #[test]
    fn public_images_are_kept() {
        let r = record(true, MediaKind::PublicImage, None);
        assert_eq!(decide(&r, false, u64::MAX, TTL, GRACE), Action::Keep);
    }
}
