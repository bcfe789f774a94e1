//! The embedded store's privacy settings and blocks (redb), kept apart from
//! `embedded.rs`. Writes run on the writer thread (one redb write transaction at a time),
//! reads on the caller.
//!
//! Tables (partition key first, as the ScyllaDB model):
//! - `privacy`: user → settings as JSON (JSON rather than postcard so that a field added
//!   by a newer version is skipped by an older one during a rolling upgrade);
//! - `blocks`: (user, target) → ms of the block; `blockers`: (target, user) → (), the same
//!   facts indexed by the blocked user, written in the same transaction.

use super::embedded_snapshot::Snapshot;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::embedded::be;
use super::transfer::{Position, Record, Section};
use super::{PrivacySettings, StoreError, UserId};

const PRIVACY: TableDefinition<u128, &[u8]> = TableDefinition::new("privacy");
const BLOCKS: TableDefinition<(u128, u128), u64> = TableDefinition::new("blocks");
const BLOCKERS: TableDefinition<(u128, u128), ()> = TableDefinition::new("blockers");

/// Creates the tables (at open), so readers never meet a missing one.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(PRIVACY).map_err(be)?;
    txn.open_table(BLOCKS).map_err(be)?;
    txn.open_table(BLOCKERS).map_err(be)?;
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<PrivacySettings, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { table: "privacy", detail: e.to_string() })
}

fn encode(settings: &PrivacySettings) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(settings).map_err(|e| StoreError::Backend(format!("privacy: {e}")))
}

/// `Store::privacy`.
pub(super) fn privacy(snap: &Snapshot, user: UserId) -> Result<PrivacySettings, StoreError> {
    let table = snap.table(PRIVACY)?;
    table.get(user.as_u128()).map_err(be)?.map(|g| decode(g.value())).transpose().map(Option::unwrap_or_default)
}

/// `Store::set_privacy`.
pub(super) fn set_privacy(db: &Database, user: UserId, settings: &PrivacySettings) -> Result<(), StoreError> {
    let bytes = encode(settings)?;
    let txn = db.begin_write().map_err(be)?;
    txn.open_table(PRIVACY).map_err(be)?.insert(user.as_u128(), bytes.as_slice()).map_err(be)?;
    txn.commit().map_err(be)
}

/// Deletes `user`'s privacy settings inside a write transaction (account deletion; blocks
/// are lifted one by one by the caller, so that each side is told).
pub(super) fn delete_settings(txn: &WriteTransaction, user: UserId) -> Result<(), StoreError> {
    txn.open_table(PRIVACY).map_err(be)?.remove(user.as_u128()).map_err(be)?;
    Ok(())
}

/// `Store::is_blocked`.
pub(super) fn is_blocked(snap: &Snapshot, user: UserId, target: UserId) -> Result<bool, StoreError> {
    Ok(snap.table(BLOCKS)?.get((user.as_u128(), target.as_u128())).map_err(be)?.is_some())
}

/// The second halves of the keys of `table` whose first half is `user`.
fn partners<V: redb::Value + Send + Sync + 'static>(
    snap: &Snapshot,
    table: TableDefinition<(u128, u128), V>,
    user: UserId,
) -> Result<Vec<UserId>, StoreError> {
    let table = snap.table(table)?;
    let u = user.as_u128();
    let mut out = Vec::new();
    for entry in table.range((u, 0)..=(u, u128::MAX)).map_err(be)? {
        out.push(UserId::from_u128(entry.map_err(be)?.0.value().1));
    }
    Ok(out)
}

/// `Store::blocks_of`.
pub(super) fn blocks_of(snap: &Snapshot, user: UserId) -> Result<Vec<UserId>, StoreError> {
    partners(snap, BLOCKS, user)
}

/// `Store::blockers_of`.
pub(super) fn blockers_of(snap: &Snapshot, user: UserId) -> Result<Vec<UserId>, StoreError> {
    partners(snap, BLOCKERS, user)
}

/// `Store::set_blocked`.
pub(super) fn set_blocked(db: &Database, user: UserId, target: UserId, blocked: bool, at_ms: u64) -> Result<bool, StoreError> {
    let txn = db.begin_write().map_err(be)?;
    let changed = {
        let mut blocks = txn.open_table(BLOCKS).map_err(be)?;
        let mut blockers = txn.open_table(BLOCKERS).map_err(be)?;
        let (key, reverse) = ((user.as_u128(), target.as_u128()), (target.as_u128(), user.as_u128()));
        let was = blocks.get(key).map_err(be)?.is_some();
        match (was, blocked) {
            (false, true) => {
                blocks.insert(key, at_ms).map_err(be)?;
                blockers.insert(reverse, ()).map_err(be)?;
                true
            }
            (true, false) => {
                blocks.remove(key).map_err(be)?;
                blockers.remove(reverse).map_err(be)?;
                true
            }
            _ => false,
        }
    };
    if changed {
        txn.commit().map_err(be)?
    } else {
        txn.abort().map_err(be)?
    }
    Ok(changed)
}

/// Up to `limit` records of `section` (privacy or blocks) after `after`, in key order.
pub(super) fn export(db: &Database, section: Section, after: Option<Position>, limit: usize) -> Result<(Vec<Record>, Option<Position>), StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let (mut out, mut last) = (Vec::new(), None);
    match section {
        Section::Privacy => {
            let table = txn.open_table(PRIVACY).map_err(be)?;
            let range = match after {
                Some(Position(u, ..)) if u == u128::MAX => return Ok((out, None)),
                Some(Position(u, ..)) => table.range(u + 1..).map_err(be)?,
                None => table.range::<u128>(..).map_err(be)?,
            };
            for entry in range.take(limit) {
                let (k, v) = entry.map_err(be)?;
                out.push(Record::Privacy { user_id: UserId::from_u128(k.value()), settings: decode(v.value())? });
                last = Some(Position(k.value(), 0, 0, 0));
            }
        }
        Section::Blocks => {
            let table = txn.open_table(BLOCKS).map_err(be)?;
            let range = match after {
                Some(Position(u, t, ..)) if t == u128::MAX => match u.checked_add(1) {
                    Some(next) => table.range((next, 0)..).map_err(be)?,
                    None => return Ok((out, None)),
                },
                Some(Position(u, t, ..)) => table.range((u, t + 1)..).map_err(be)?,
                None => table.range::<(u128, u128)>(..).map_err(be)?,
            };
            for entry in range.take(limit) {
                let (k, v) = entry.map_err(be)?;
                let (user, target) = k.value();
                out.push(Record::Block { user_id: UserId::from_u128(user), target: UserId::from_u128(target), at_ms: v.value() });
                last = Some(Position(user, target, 0, 0));
            }
        }
        other => return Err(StoreError::Backend(format!("embedded_privacy: not its section: {other:?}"))),
    }
    Ok((out, last))
}

/// Imports privacy and block records inside the import's transaction (idempotent).
pub(super) fn import(txn: &WriteTransaction, records: Vec<Record>) -> Result<(), StoreError> {
    let mut privacy = txn.open_table(PRIVACY).map_err(be)?;
    let mut blocks = txn.open_table(BLOCKS).map_err(be)?;
    let mut blockers = txn.open_table(BLOCKERS).map_err(be)?;
    for record in records {
        match record {
            Record::Privacy { user_id, settings } => {
                privacy.insert(user_id.as_u128(), encode(&settings)?.as_slice()).map_err(be)?;
            }
            Record::Block { user_id, target, at_ms } => {
                blocks.insert((user_id.as_u128(), target.as_u128()), at_ms).map_err(be)?;
                blockers.insert((target.as_u128(), user_id.as_u128()), ()).map_err(be)?;
            }
            other => return Err(StoreError::Backend(format!("embedded_privacy: unexpected record {other:?}"))),
        }
    }
    Ok(())
}

/// Whether a record is one [`import`] takes.
pub(super) fn is_privacy(record: &Record) -> bool {
    matches!(record, Record::Privacy { .. } | Record::Block { .. })
}

/// Records stored in `section` (privacy or blocks).
pub(super) fn count(db: &Database, section: Section) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    match section {
        Section::Privacy => txn.open_table(PRIVACY).map_err(be)?.len().map_err(be),
        _ => txn.open_table(BLOCKS).map_err(be)?.len().map_err(be),
    }
}
