//! The media a `Send` declares (`Send.attachments`), checked before the message is
//! sequenced: the one hook of media into the message path (`actors::session::send`).
//!
//! Each id must be a complete attachment the sender may read (their own upload, or one
//! declared by a message they can see: forwarding). A media the sweep has marked as
//! unreferenced is unmarked here (compare-and-set), before the message is stored, so a
//! sweep cannot delete it between this check and the append: the sweep deletes only a
//! record whose mark is unchanged since it set it, a grace period earlier.

use bytes::Bytes;

use super::access;
use crate::ids::{MediaId, UserId};
use crate::protocol::ErrorCode;
use crate::store::{MediaKind, Store, StoreError};

/// Most media one message may declare.
pub const MAX_ATTACHMENTS: usize = 32;

/// Why a message's attachments were refused.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// Too many, or an id that is not 16 bytes.
    #[error("attachments: {0}")]
    Invalid(String),
    /// No complete upload has this id (never uploaded, still uploading, or deleted).
    #[error("attachment {0} is not a complete upload")]
    Unknown(MediaId),
    /// The sender may not read this media, so may not pass it on.
    #[error("attachment {0} is not readable by the sender")]
    NotReadable(MediaId),
    /// The store did not answer.
    #[error("store unavailable; retry")]
    Store(#[from] StoreError),
}

impl AttachmentError {
    /// The protocol error code of the refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            AttachmentError::Invalid(_) | AttachmentError::Unknown(_) => ErrorCode::InvalidArgument,
            AttachmentError::NotReadable(_) => ErrorCode::NotAMember,
            AttachmentError::Store(_) => ErrorCode::Unavailable,
        }
    }
}

/// Checks the attachments `sender` declares; returns their ids (deduplicated, in order).
pub async fn declared(store: &dyn Store, sender: UserId, raw: &[Bytes]) -> Result<Vec<MediaId>, AttachmentError> {
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    if raw.len() > MAX_ATTACHMENTS {
        return Err(AttachmentError::Invalid(format!("at most {MAX_ATTACHMENTS} per message")));
    }
    let mut ids = Vec::with_capacity(raw.len());
    for bytes in raw {
        let id: MediaId = crate::protocol::parse_id("attachments", bytes).map_err(|e| AttachmentError::Invalid(e.to_string()))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    for &id in &ids {
        // Two attempts: a sweep may change the record between our read and our unmark.
        let mut attempts = 0;
        loop {
            let record = store.media(id).await?.filter(|r| r.is_complete() && r.kind == MediaKind::Attachment).ok_or(AttachmentError::Unknown(id))?;
            if !access::may_read(store, sender, &record).await? {
                return Err(AttachmentError::NotReadable(id));
            }
            if record.unreferenced_since_ms.is_none() {
                break;
            }
            let mut unmarked = record;
            unmarked.unreferenced_since_ms = None;
            unmarked.version += 1;
            if store.update_media(unmarked).await? {
                break;
            }
            attempts += 1;
            if attempts >= 2 {
                return Err(AttachmentError::Store(StoreError::Backend("media record changed concurrently".into())));
            }
        }
    }
    Ok(ids)
}

impl From<AttachmentError> for crate::protocol::RequestError {
    fn from(e: AttachmentError) -> Self {
        use crate::protocol::RequestError;
        match e {
            AttachmentError::Invalid(_) | AttachmentError::Unknown(_) => RequestError::InvalidArgument(e.to_string()),
            AttachmentError::NotReadable(_) => RequestError::NotAMember,
            AttachmentError::Store(_) => RequestError::Unavailable("store unavailable".into()),
        }
    }
}
