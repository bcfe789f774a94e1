//! History pages: the store's newest-first reads with the visibility rules applied, shared
//! by the socket (`HistoryRequest`) and the HTTP API so that both answer alike.

use crate::ids::ConversationId;
use crate::store::{Store, StoreError, StoredMessage};

/// Largest history page, in messages.
pub const MAX_HISTORY_PAGE: usize = 200;
/// History page size when the client asks for 0.
pub const DEFAULT_HISTORY_PAGE: usize = 50;

/// One page of history, newest first, seqs below `before` (0 = newest), limited to the
/// caller's visible `range` (from joining a group to leaving it). Returns the page and
/// whether older messages exist.
pub async fn history_page(
    store: &dyn Store,
    id: ConversationId,
    (first, last): (u64, u64),
    before: u64,
    limit: usize,
) -> Result<(Vec<StoredMessage>, bool), StoreError> {
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
    Ok((messages, has_more))
}
