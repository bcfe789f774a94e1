//! Who may read a media: the rule behind `GET /v1/media/{id}` and signed URL issuance.
//!
//! - a public image: any authenticated user;
//! - an attachment: its uploader, and every user who can see a message that declares it —
//!   a member of that conversation whose visible range (from joining to leaving, see
//!   `ConversationRecord::visible_range`) contains the message's seq. So a removed member
//!   cannot fetch media sent after their removal, and a message deleted for everyone or
//!   expired no longer grants anything (it declares nothing any more).

use crate::ids::UserId;
use crate::store::{MediaKind, MediaRecord, Store, StoreError};

/// References read per check: a media forwarded to more conversations than this is
/// judged on the first ones (in store order).
pub const MAX_REFS: usize = 1000;

/// True if `user` may read `record`.
pub async fn may_read(store: &dyn Store, user: UserId, record: &MediaRecord) -> Result<bool, StoreError> {
    if record.kind == MediaKind::PublicImage || record.owner == user {
        return Ok(true);
    }
    let mut refs = store.media_refs(record.media_id, MAX_REFS).await?;
    refs.sort_unstable();
    let mut last = None;
    let mut range = None;
    for (conversation, seq) in refs {
        if last != Some(conversation) {
            last = Some(conversation);
            range = store.conversation(conversation).await?.and_then(|c| c.visible_range(user));
        }
        if range.is_some_and(|(from, to)| (from..=to).contains(&seq)) {
            return Ok(true);
        }
    }
    Ok(false)
}
