//! The embedded store's contact lists (redb), kept apart from `embedded.rs`: the numbers
//! each user's devices submitted to contact discovery, and the phone → user lookup
//! discovery answers from. Writes run on the writer thread (one redb write transaction at
//! a time), reads on the caller.
//!
//! Table (partition key first, as the ScyllaDB model): `contacts`: (owner, E.164 number as
//! its digits) → (). A number is keyed by its digits as a `u64` (E.164 has at most 15
//! digits, the first not 0, so the mapping is one to one), which keeps the key small and
//! lets a store copy resume from a numeric position.

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::embedded::be;
use super::transfer::{Position, Record};
use super::{StoreError, UserId};

const CONTACTS: TableDefinition<(u128, u64), ()> = TableDefinition::new("contacts");
/// The phones table of `embedded.rs` (same definition: redb checks the types).
const PHONES: TableDefinition<&str, u128> = TableDefinition::new("phones");

/// Creates the table (at open), so readers never meet a missing one.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(CONTACTS).map_err(be)?;
    Ok(())
}

/// An E.164 number (`+14155550123`) as its digits; an error for anything else (the
/// accounts and contacts services normalise before they reach the store).
fn digits(phone: &str) -> Result<u64, StoreError> {
    phone
        .strip_prefix('+')
        .filter(|d| (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| StoreError::Backend(format!("contacts: {phone:?} is not an E.164 number")))
}

/// The E.164 string of stored digits.
fn phone(digits: u64) -> String {
    format!("+{digits}")
}

/// Deletes `owner`'s contact list inside a write transaction (account deletion).
pub(super) fn delete_owner(txn: &WriteTransaction, owner: UserId) -> Result<(), StoreError> {
    let mut table = txn.open_table(CONTACTS).map_err(be)?;
    let keys: Vec<(u128, u64)> = table
        .range((owner.as_u128(), 0)..=(owner.as_u128(), u64::MAX))
        .map_err(be)?
        .map(|e| e.map(|(k, _)| k.value()).map_err(be))
        .collect::<Result<_, _>>()?;
    for key in keys {
        table.remove(key).map_err(be)?;
    }
    Ok(())
}

/// `Store::users_by_phone`.
pub(super) fn users_by_phone(db: &Database, phones: &[String]) -> Result<Vec<(String, UserId)>, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let table = txn.open_table(PHONES).map_err(be)?;
    let mut out = Vec::new();
    for p in phones {
        if let Some(user) = table.get(p.as_str()).map_err(be)? {
            out.push((p.clone(), UserId::from_u128(user.value())));
        }
    }
    Ok(out)
}

/// `Store::known_contacts`.
pub(super) fn known(db: &Database, owner: UserId, phones: &[String]) -> Result<Vec<String>, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let table = txn.open_table(CONTACTS).map_err(be)?;
    let mut out = Vec::new();
    for p in phones {
        if table.get((owner.as_u128(), digits(p)?)).map_err(be)?.is_some() {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// `Store::contacts_of`: one key range, the owner's.
pub(super) fn all(db: &Database, owner: UserId) -> Result<Vec<String>, StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let table = txn.open_table(CONTACTS).map_err(be)?;
    let mut out = Vec::new();
    for entry in table.range((owner.as_u128(), 0)..=(owner.as_u128(), u64::MAX)).map_err(be)? {
        out.push(phone(entry.map_err(be)?.0.value().1));
    }
    Ok(out)
}

/// `Store::add_contacts` (`add`) and `Store::remove_contacts`, in one write transaction.
pub(super) fn change(db: &Database, owner: UserId, phones: &[String], add: bool) -> Result<(), StoreError> {
    // Check every number before writing any: all or nothing.
    let keys = phones.iter().map(|p| digits(p).map(|d| (owner.as_u128(), d))).collect::<Result<Vec<_>, _>>()?;
    let txn = db.begin_write().map_err(be)?;
    {
        let mut table = txn.open_table(CONTACTS).map_err(be)?;
        for key in keys {
            if add {
                table.insert(key, ()).map_err(be)?;
            } else {
                table.remove(key).map_err(be)?;
            }
        }
    }
    txn.commit().map_err(be)
}

/// Up to `limit` contact records after `after`, in key order (a store copy).
pub(super) fn export(db: &Database, after: Option<Position>, limit: usize) -> Result<(Vec<Record>, Option<Position>), StoreError> {
    let txn = db.begin_read().map_err(be)?;
    let table = txn.open_table(CONTACTS).map_err(be)?;
    let range = match after {
        // Strictly after (owner, digits): the next number of the same owner onwards.
        Some(Position(owner, _, d, _)) => table.range((owner, d.saturating_add(1))..).map_err(be)?,
        None => table.range::<(u128, u64)>(..).map_err(be)?,
    };
    let (mut out, mut last) = (Vec::new(), None);
    for entry in range.take(limit) {
        let (owner, d) = entry.map_err(be)?.0.value();
        out.push(Record::Contact { owner: UserId::from_u128(owner), phone: phone(d) });
        last = Some(Position(owner, 0, d, 0));
    }
    Ok((out, last))
}

/// Imports contact records inside the import's transaction.
pub(super) fn import(txn: &WriteTransaction, records: &[(UserId, String)]) -> Result<(), StoreError> {
    let mut table = txn.open_table(CONTACTS).map_err(be)?;
    for (owner, p) in records {
        table.insert((owner.as_u128(), digits(p)?), ()).map_err(be)?;
    }
    Ok(())
}

/// How many contact records are stored (a store copy's check).
pub(super) fn count(db: &Database) -> Result<u64, StoreError> {
    db.begin_read().map_err(be)?.open_table(CONTACTS).map_err(be)?.len().map_err(be)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers_map_to_digits_and_back_one_to_one() {
        for p in ["+14155550123", "+442079460018", "+999999999999999", "+1"] {
            assert_eq!(phone(digits(p).expect(p)), p);
        }
        for bad in ["14155550123", "+04155550123", "+1234567890123456", "+", "+1 415", "+1415a"] {
            assert!(digits(bad).is_err(), "{bad}");
        }
    }
}
