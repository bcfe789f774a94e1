//! The embedded store's conversation-list state (redb): `chat_states`: (user,
//! conversation) → [`ChatState`] as JSON (a field added by a newer version is skipped by
//! an older one during a rolling upgrade). Updates run on the writer thread in one write
//! transaction, so the pin limit holds however a user's devices race; reads on the caller.

use super::embedded_snapshot::Snapshot;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::embedded::be;
use super::transfer::{Position, Record};
use super::{ChatState, ChatUpdate, ConversationId, InboxError, StoreError, UserId};
use crate::cores::inbox;

const CHAT_STATES: TableDefinition<(u128, u128), &[u8]> = TableDefinition::new("chat_states");

/// Creates the table (at open), so readers never meet a missing one.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(CHAT_STATES).map_err(be)?;
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<ChatState, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { table: "chat_states", detail: e.to_string() })
}

fn encode(state: &ChatState) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(state).map_err(|e| StoreError::Backend(format!("chat_states: {e}")))
}

fn user_range(user: UserId) -> std::ops::RangeInclusive<(u128, u128)> {
    (user.as_u128(), 0)..=(user.as_u128(), u128::MAX)
}

/// `Store::chat_states`.
pub(super) fn all(snap: &Snapshot, user: UserId) -> Result<Vec<(ConversationId, ChatState)>, StoreError> {
    let table = snap.table(CHAT_STATES)?;
    let mut out = Vec::new();
    for entry in table.range(user_range(user)).map_err(be)? {
        let (k, v) = entry.map_err(be)?;
        out.push((ConversationId::from_u128(k.value().1), decode(v.value())?));
    }
    Ok(out)
}

/// `Store::chat_state`.
pub(super) fn get(snap: &Snapshot, user: UserId, conversation: ConversationId) -> Result<ChatState, StoreError> {
    let table = snap.table(CHAT_STATES)?;
    Ok(table.get((user.as_u128(), conversation.as_u128())).map_err(be)?.map(|g| decode(g.value())).transpose()?.unwrap_or_default())
}

/// `Store::update_chat_state`, in one write transaction.
pub(super) fn update(
    db: &Database,
    user: UserId,
    conversation: ConversationId,
    change: &ChatUpdate,
    last_seq: u64,
    now_ms: u64,
) -> Result<Result<Option<ChatState>, InboxError>, StoreError> {
    let txn = db.begin_write().map_err(be)?;
    let outcome = {
        let mut table = txn.open_table(CHAT_STATES).map_err(be)?;
        let key = (user.as_u128(), conversation.as_u128());
        let (mut current, mut pinned_others) = (ChatState::default(), 0);
        for entry in table.range(user_range(user)).map_err(be)? {
            let (k, v) = entry.map_err(be)?;
            let state = decode(v.value())?;
            if k.value() == key {
                current = state;
            } else if state.pinned_ms != 0 {
                pinned_others += 1;
            }
        }
        let outcome = inbox::apply(current, change, pinned_others, last_seq, now_ms);
        if let Ok(Some(next)) = &outcome {
            table.insert(key, encode(next)?.as_slice()).map_err(be)?;
        }
        outcome
    };
    txn.commit().map_err(be)?;
    Ok(outcome)
}

/// Deletes every chat state of `user` inside a write transaction (account deletion).
pub(super) fn delete_user(txn: &WriteTransaction, user: UserId) -> Result<(), StoreError> {
    let mut table = txn.open_table(CHAT_STATES).map_err(be)?;
    let keys: Vec<(u128, u128)> =
        table.range(user_range(user)).map_err(be)?.map(|e| e.map(|(k, _)| k.value()).map_err(be)).collect::<Result<_, _>>()?;
    for key in keys {
        table.remove(key).map_err(be)?;
    }
    Ok(())
}

/// Up to `limit` states after `after`, in (user, conversation) order (a store copy).
pub(super) fn export(db: &Database, after: Option<Position>, limit: usize) -> Result<(Vec<Record>, Option<Position>), StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let table = txn.open_table(CHAT_STATES).map_err(be)?;
    let range = match after {
        Some(Position(u, c, ..)) if (u, c) == (u128::MAX, u128::MAX) => return Ok((Vec::new(), None)),
        Some(Position(u, c, ..)) if c == u128::MAX => table.range((u + 1, 0)..).map_err(be)?,
        Some(Position(u, c, ..)) => table.range((u, c + 1)..).map_err(be)?,
        None => table.range::<(u128, u128)>(..).map_err(be)?,
    };
    let (mut out, mut last) = (Vec::new(), None);
    for entry in range.take(limit) {
        let (k, v) = entry.map_err(be)?;
        let (u, c) = k.value();
        out.push(Record::ChatState { user_id: UserId::from_u128(u), conversation_id: ConversationId::from_u128(c), state: decode(v.value())? });
        last = Some(Position(u, c, 0, 0));
    }
    Ok((out, last))
}

/// Imports state records inside the import's transaction (idempotent: the later change
/// wins).
pub(super) fn import(txn: &WriteTransaction, records: &[(UserId, ConversationId, ChatState)]) -> Result<(), StoreError> {
    let mut table = txn.open_table(CHAT_STATES).map_err(be)?;
    for (user, conversation, state) in records {
        let key = (user.as_u128(), conversation.as_u128());
        let newer = match table.get(key).map_err(be)? {
            Some(g) => decode(g.value())?.changed_ms < state.changed_ms,
            None => true,
        };
        if newer {
            table.insert(key, encode(state)?.as_slice()).map_err(be)?;
        }
    }
    Ok(())
}

/// How many states are stored.
pub(super) fn count(db: &Database) -> Result<u64, StoreError> {
    db.begin_read().map_err(be)?.open_table(CHAT_STATES).map_err(be)?.len().map_err(be)
}
