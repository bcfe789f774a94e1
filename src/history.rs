//! History pages: the store's newest-first reads with the visibility rules applied (the
//! membership range, retention, what the user cleared), and the tick state of the
//! reader's own messages; shared by the socket (`HistoryRequest`), catch-up and the HTTP
//! API so that they answer alike.

use std::collections::HashMap;

use crate::cores::receipts;
use crate::ids::UserId;
use crate::store::{ConversationKind, ConversationRecord, Store, StoreError, StoredMessage};

/// Largest history page, in messages.
pub const MAX_HISTORY_PAGE: usize = 200;
/// History page size when the client asks for 0.
pub const DEFAULT_HISTORY_PAGE: usize = 50;

/// One page of history, newest first, seqs below `before` (0 = newest), limited to the
/// caller's visible `range` (from joining a group to leaving it), without messages expired
/// by `now_ms` under `record`'s retention. Returns the page and whether older messages
/// exist.
pub async fn history_page(
    store: &dyn Store,
    record: &ConversationRecord,
    (first, last): (u64, u64),
    before: u64,
    limit: usize,
    now_ms: u64,
) -> Result<(Vec<StoredMessage>, bool), StoreError> {
    let id = record.conversation_id;
    let limit = if limit == 0 { DEFAULT_HISTORY_PAGE } else { limit.min(MAX_HISTORY_PAGE) };
    let before = if last == u64::MAX {
        before
    } else if before == 0 {
        last + 1
    } else {
        before.min(last + 1)
    };
    let mut messages = store.messages_before(id, before, limit + 1).await?;
    messages.retain(|m| m.seq >= first);
    let has_more = messages.len() > limit;
    messages.truncate(limit);
    // Expired messages not swept yet are not served (events never expire).
    messages.retain(|m| m.event.is_some() || !record.expired(m.server_time_ms, now_ms));
    Ok((messages, has_more))
}

/// What receipts the reader may see of a conversation's members (privacy): in a 1:1,
/// none across a block and no reads when read receipts are off on either side; in a
/// group, both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickFlow {
    /// Delivered receipts show.
    pub delivered: bool,
    /// Read receipts show.
    pub read: bool,
}

impl TickFlow {
    /// The flow of `record` for the owner of `cache` (reads the 1:1 peer's settings).
    pub async fn of(
        cache: &mut crate::privacy::PrivacyCache,
        store: &dyn Store,
        record: &ConversationRecord,
        user: UserId,
    ) -> Result<Self, StoreError> {
        if record.kind != ConversationKind::Direct {
            return Ok(Self { delivered: true, read: true });
        }
        let Some(peer) = record.members.iter().copied().find(|m| *m != user) else { return Ok(Self { delivered: true, read: true }) };
        Ok(Self { delivered: !cache.blocked_with(peer), read: crate::privacy::read_receipts_flow(cache, store, peer).await? })
    }
}

/// The ticks of `user`'s own messages among `messages`, so that a new device or the
/// sender's other devices restore ✓ / ✓✓ / blue ✓✓ without one request per message:
/// seq → (delivered to, read by) other current members who were members when it was
/// sent, from the member cursors. None for a former member.
pub async fn ticks<'a>(
    store: &dyn Store,
    record: &ConversationRecord,
    user: UserId,
    messages: impl IntoIterator<Item = &'a StoredMessage>,
    flow: TickFlow,
) -> Result<HashMap<u64, (u32, u32)>, StoreError> {
    let own: Vec<u64> = messages.into_iter().filter(|m| m.sender_user_id == user && m.event.is_none()).map(|m| m.seq).collect();
    // A former member learns nothing of the conversation after they left.
    if own.is_empty() || !record.is_member(user) {
        return Ok(HashMap::new());
    }
    let cursors = store.member_cursors(record.conversation_id).await?;
    // Who counts for a message: the members who were members when it was sent.
    let joined: Vec<(UserId, u64)> = match &record.group {
        Some(group) => group.joined.clone(),
        None => record.members.iter().map(|m| (*m, 0)).collect(),
    };
    Ok(own
        .into_iter()
        .map(|seq| {
            let (delivered, read) = receipts::ticks(&cursors, &joined, user, seq);
            (seq, (if flow.delivered { delivered } else { 0 }, if flow.read { read } else { 0 }))
        })
        .collect())
}

/// The range of `record` the user may see in history: `range` (from joining to leaving)
/// without what they cleared ("delete for me").
pub async fn without_cleared(
    store: &dyn Store,
    user: UserId,
    record: &ConversationRecord,
    (first, last): (u64, u64),
) -> Result<(u64, u64), StoreError> {
    let cleared = store.chat_state(user, record.conversation_id).await?.cleared_up_to;
    Ok((first.max(cleared + 1), last))
}
