//! The embedded store's device pairings (redb): `pairings`: code hash → [`PairingRecord`]
//! (postcard). Approvals and claims are read-decide-write in one write transaction on the
//! writer thread (redb runs one at a time), so racing approvals or claims see each other.
//! Expired pairings are deleted by `purge_expired` (and ignored before that).

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::embedded::{be, decode, encode};
use super::{DeviceId, PairingApproval, PairingClaim, PairingRecord, StoreError, UserId, code_matches};

const PAIRINGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pairings");

/// Creates the table (at open), so readers never meet a missing one.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(PAIRINGS).map_err(be)?;
    Ok(())
}

/// `Store::put_pairing`.
pub(super) fn put(db: &Database, pairing: &PairingRecord) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(be)?;
    txn.open_table(PAIRINGS).map_err(be)?.insert(pairing.code_hash.as_slice(), encode(pairing)?.as_slice()).map_err(be)?;
    txn.commit().map_err(be)
}

fn get(txn: &WriteTransaction, code_hash: &[u8; 32]) -> Result<Option<PairingRecord>, StoreError> {
    let table = txn.open_table(PAIRINGS).map_err(be)?;
    let found = table.get(code_hash.as_slice()).map_err(be)?.map(|g| decode("pairings", g.value())).transpose()?;
    Ok(found)
}

/// `Store::approve_pairing`.
pub(super) fn approve(db: &Database, code_hash: [u8; 32], user: UserId, device: DeviceId, now_ms: u64) -> Result<PairingApproval, StoreError> {
    let txn = db.begin_write().map_err(be)?;
    let outcome = match get(&txn, &code_hash)? {
        Some(p) if p.expires_ms < now_ms => PairingApproval::Missing,
        Some(p) if p.approved_by.is_some() => PairingApproval::AlreadyApproved,
        Some(mut p) => {
            p.approved_by = Some(user);
            p.approved_device = Some(device);
            txn.open_table(PAIRINGS).map_err(be)?.insert(code_hash.as_slice(), encode(&p)?.as_slice()).map_err(be)?;
            PairingApproval::Approved(p)
        }
        None => PairingApproval::Missing,
    };
    if matches!(outcome, PairingApproval::Approved(_)) {
        txn.commit().map_err(be)?
    } else {
        txn.abort().map_err(be)?
    }
    Ok(outcome)
}

/// `Store::claim_pairing`.
pub(super) fn claim(db: &Database, code_hash: [u8; 32], claim_hash: [u8; 32], now_ms: u64) -> Result<PairingClaim, StoreError> {
    let txn = db.begin_write().map_err(be)?;
    let outcome = match get(&txn, &code_hash)? {
        Some(p) if p.expires_ms < now_ms || !code_matches(&p.claim_hash, &claim_hash) => PairingClaim::Missing,
        Some(PairingRecord { approved_by: Some(user), approved_device: Some(approver), device_name, .. }) => {
            txn.open_table(PAIRINGS).map_err(be)?.remove(code_hash.as_slice()).map_err(be)?;
            PairingClaim::Claimed { user, device_name, approver }
        }
        Some(_) => PairingClaim::Pending,
        None => PairingClaim::Missing,
    };
    if matches!(outcome, PairingClaim::Claimed { .. }) {
        txn.commit().map_err(be)?
    } else {
        txn.abort().map_err(be)?
    }
    Ok(outcome)
}

/// Deletes up to `limit` pairings expired at `now_ms`, inside the purge's transaction.
pub(super) fn purge(txn: &WriteTransaction, now_ms: u64, limit: usize) -> Result<(), StoreError> {
    let mut table = txn.open_table(PAIRINGS).map_err(be)?;
    let mut expired = Vec::new();
    for entry in table.iter().map_err(be)? {
        let (k, v) = entry.map_err(be)?;
        let record: PairingRecord = decode("pairings", v.value())?;
        if record.expires_ms < now_ms {
            expired.push(k.value().to_vec());
            if expired.len() >= limit {
                break;
            }
        }
    }
    for key in expired {
        table.remove(key.as_slice()).map_err(be)?;
    }
    Ok(())
}
