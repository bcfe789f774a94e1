//! The embedded store's profiles (redb): `profiles`: user → [`Profile`] as JSON (so that a
//! field added by a newer version is skipped by an older one during a rolling upgrade).
//! Writes on the writer thread, reads on the caller.

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::embedded::be;
use super::transfer::{Position, Record};
use super::{Profile, StoreError, UserId};

const PROFILES: TableDefinition<u128, &[u8]> = TableDefinition::new("profiles");

/// Creates the table (at open), so readers never meet a missing one.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(PROFILES).map_err(be)?;
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<Profile, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { table: "profiles", detail: e.to_string() })
}

fn encode(profile: &Profile) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(profile).map_err(|e| StoreError::Backend(format!("profiles: {e}")))
}

/// `Store::profile`.
pub(super) fn get(db: &Database, user: UserId) -> Result<Option<Profile>, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let table = txn.open_table(PROFILES).map_err(be)?;
    table.get(user.as_u128()).map_err(be)?.map(|g| decode(g.value())).transpose()
}

/// `Store::set_profile`.
pub(super) fn set(db: &Database, user: UserId, profile: &Profile) -> Result<(), StoreError> {
    let bytes = encode(profile)?;
    let txn = db.begin_write().map_err(be)?;
    txn.open_table(PROFILES).map_err(be)?.insert(user.as_u128(), bytes.as_slice()).map_err(be)?;
    txn.commit().map_err(be)
}

/// Deletes `user`'s profile inside a write transaction (account deletion).
pub(super) fn delete(txn: &WriteTransaction, user: UserId) -> Result<(), StoreError> {
    txn.open_table(PROFILES).map_err(be)?.remove(user.as_u128()).map_err(be)?;
    Ok(())
}

/// Up to `limit` profiles after `after`, in user order (a store copy).
pub(super) fn export(db: &Database, after: Option<Position>, limit: usize) -> Result<(Vec<Record>, Option<Position>), StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let table = txn.open_table(PROFILES).map_err(be)?;
    let range = match after {
        Some(Position(u, ..)) if u == u128::MAX => return Ok((Vec::new(), None)),
        Some(Position(u, ..)) => table.range(u + 1..).map_err(be)?,
        None => table.range::<u128>(..).map_err(be)?,
    };
    let (mut out, mut last) = (Vec::new(), None);
    for entry in range.take(limit) {
        let (k, v) = entry.map_err(be)?;
        out.push(Record::Profile { user_id: UserId::from_u128(k.value()), profile: decode(v.value())? });
        last = Some(Position(k.value(), 0, 0, 0));
    }
    Ok((out, last))
}

/// Imports profile records inside the import's transaction (idempotent).
pub(super) fn import(txn: &WriteTransaction, records: &[(UserId, Profile)]) -> Result<(), StoreError> {
    let mut table = txn.open_table(PROFILES).map_err(be)?;
    for (user, profile) in records {
        table.insert(user.as_u128(), encode(profile)?.as_slice()).map_err(be)?;
    }
    Ok(())
}

/// How many profiles are stored.
pub(super) fn count(db: &Database) -> Result<u64, StoreError> {
    db.begin_read().map_err(be)?.open_table(PROFILES).map_err(be)?.len().map_err(be)
}
