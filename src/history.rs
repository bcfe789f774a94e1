//! History pages: the store's newest-first reads with the visibility rules applied, shared
//! by the socket (`HistoryRequest`) and the HTTP API so that both answer alike.

use crate::store::{ConversationRecord, Store, StoreError, StoredMessage};

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
