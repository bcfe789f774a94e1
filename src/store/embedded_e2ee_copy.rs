//! The embedded store's side of `switchboard store copy` for end-to-end encryption state
//! (`transfer::Section::DeviceKeys` and after): the key directory, the to-device queues
//! and the device-list notices, exported in key order and imported idempotently (a record
//! imported twice leaves one; positions, acknowledgements and claims only move forward).
//!
//! One-time keys are keyed by (device, key id), a string the copy's `Position` cannot
//! hold: they are exported a device at a time (every key of a device in one chunk, so a
//! chunk may pass its limit by one device's keys) and resume after the last device.

use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::embedded::{DEVICE_KEYS, FALLBACK_KEYS, ONE_TIME_KEYS, SPENT_KEYS, be, decode, encode};
use super::embedded_to_device::{NOTICES, QUEUES, TO_DEVICE};
use super::transfer::{Position, Record, Section};
use super::{DeviceId, StoreError, ToDeviceEntry, UserId};

/// Range bounds strictly after `after` (or everything).
fn after<K>(after: Option<K>) -> (Bound<K>, Bound<K>) {
    (after.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded)
}

/// Up to about `limit` records of one of this module's sections strictly after `from`, and
/// the position of the last one (None when there are no more).
pub(super) fn export(
    txn: &ReadTransaction,
    section: Section,
    from: Option<Position>,
    limit: usize,
) -> Result<(Vec<Record>, Option<Position>), StoreError> {
    let mut out = Vec::new();
    let mut last = None;
    match section {
        Section::DeviceKeys => {
            let t = txn.open_table(DEVICE_KEYS).map_err(be)?;
            for e in t.range(after(from.map(|p| p.0))).map_err(be)?.take(limit) {
                let (k, v) = e.map_err(be)?;
                out.push(Record::DeviceKeys(decode("device_keys", v.value())?));
                last = Some(Position(k.value(), 0, 0, 0));
            }
        }
        Section::OneTimeKeys => {
            let unclaimed = txn.open_table(ONE_TIME_KEYS).map_err(be)?;
            let spent = txn.open_table(SPENT_KEYS).map_err(be)?;
            // Devices strictly after the last one exported.
            let mut next_device = match from {
                None => Some(0u128),
                Some(p) => p.0.checked_add(1),
            };
            while let Some(device) = next_device
                && out.len() < limit
            {
                // The next device holding a key in either table.
                let start = (device, "");
                let next_unclaimed = unclaimed.range(start..).map_err(be)?.next().transpose().map_err(be)?.map(|(k, _)| k.value().0);
                let next_spent = spent.range(start..).map_err(be)?.next().transpose().map_err(be)?.map(|(k, _)| k.value().0);
                let Some(dev) = [next_unclaimed, next_spent].into_iter().flatten().min() else { break };
                for e in unclaimed.range((dev, "")..=(dev, "\u{10ffff}")).map_err(be)? {
                    let (_, v) = e.map_err(be)?;
                    out.push(Record::OneTimeKey { device_id: DeviceId::from_u128(dev), key: decode("one_time_keys", v.value())? });
                }
                for e in spent.range((dev, "")..=(dev, "\u{10ffff}")).map_err(be)? {
                    let (k, v) = e.map_err(be)?;
                    out.push(Record::SpentKey { device_id: DeviceId::from_u128(dev), key_id: k.value().1.to_owned(), claimed_ms: v.value() });
                }
                last = Some(Position(dev, 0, 0, 0));
                next_device = dev.checked_add(1);
            }
        }
        Section::FallbackKeys => {
            let t = txn.open_table(FALLBACK_KEYS).map_err(be)?;
            for e in t.range(after(from.map(|p| p.0))).map_err(be)?.take(limit) {
                let (k, v) = e.map_err(be)?;
                out.push(Record::FallbackKey { device_id: DeviceId::from_u128(k.value()), key: decode("fallback_keys", v.value())? });
                last = Some(Position(k.value(), 0, 0, 0));
            }
        }
        Section::ToDeviceQueues => {
            let t = txn.open_table(QUEUES).map_err(be)?;
            for e in t.range(after(from.map(|p| p.0))).map_err(be)?.take(limit) {
                let (k, v) = e.map_err(be)?;
                let (last_position, acked) = v.value();
                out.push(Record::ToDeviceQueue { device_id: DeviceId::from_u128(k.value()), last_position, acked });
                last = Some(Position(k.value(), 0, 0, 0));
            }
        }
        Section::ToDeviceEntries => {
            let t = txn.open_table(TO_DEVICE).map_err(be)?;
            for e in t.range(after(from.map(|p| (p.0, p.2)))).map_err(be)?.take(limit) {
                let (k, v) = e.map_err(be)?;
                let (dev, position) = k.value();
                out.push(Record::ToDeviceEntry { device_id: DeviceId::from_u128(dev), entry: decode("to_device", v.value())? });
                last = Some(Position(dev, 0, position, 0));
            }
        }
        Section::DeviceListNotices => {
            let t = txn.open_table(NOTICES).map_err(be)?;
            for e in t.range(after(from.map(|p| (p.0, p.1)))).map_err(be)?.take(limit) {
                let (k, v) = e.map_err(be)?;
                let (dev, user) = k.value();
                out.push(Record::DeviceListNotice { device_id: DeviceId::from_u128(dev), user_id: UserId::from_u128(user), changed_ms: v.value() });
                last = Some(Position(dev, user, 0, 0));
            }
        }
        other => return Err(StoreError::Backend(format!("section {} is not end-to-end state", other.name()))),
    }
    Ok((out, last))
}

/// Records of this module's kinds, inside an import's transaction; any other kind is an
/// error (the caller imports those).
pub(super) fn import(txn: &WriteTransaction, records: Vec<Record>) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let mut device_keys = txn.open_table(DEVICE_KEYS).map_err(be)?;
    let mut unclaimed = txn.open_table(ONE_TIME_KEYS).map_err(be)?;
    let mut spent = txn.open_table(SPENT_KEYS).map_err(be)?;
    let mut fallback = txn.open_table(FALLBACK_KEYS).map_err(be)?;
    let mut queues = txn.open_table(QUEUES).map_err(be)?;
    let mut entries = txn.open_table(TO_DEVICE).map_err(be)?;
    let mut notices = txn.open_table(NOTICES).map_err(be)?;
    for record in records {
        match record {
            Record::DeviceKeys(keys) => {
                device_keys.insert(keys.device_id.as_u128(), encode(&keys)?.as_slice()).map_err(be)?;
            }
            Record::OneTimeKey { device_id, key } => {
                // A key claimed already (in an earlier chunk of a resumed copy) stays spent.
                let id = (device_id.as_u128(), key.key_id.as_str());
                if spent.get(id).map_err(be)?.is_none() {
                    unclaimed.insert(id, encode(&key)?.as_slice()).map_err(be)?;
                }
            }
            Record::SpentKey { device_id, key_id, claimed_ms } => {
                let id = (device_id.as_u128(), key_id.as_str());
                unclaimed.remove(id).map_err(be)?;
                spent.insert(id, claimed_ms).map_err(be)?;
            }
            Record::FallbackKey { device_id, key } => {
                fallback.insert(device_id.as_u128(), encode(&key)?.as_slice()).map_err(be)?;
            }
            Record::ToDeviceQueue { device_id, last_position, acked } => {
                let dev = device_id.as_u128();
                let (l, a) = queues.get(dev).map_err(be)?.map(|g| g.value()).unwrap_or((0, 0));
                queues.insert(dev, (l.max(last_position), a.max(acked))).map_err(be)?;
            }
            Record::ToDeviceEntry { device_id, entry } => {
                let entry: ToDeviceEntry = entry;
                entries.insert((device_id.as_u128(), entry.position), encode(&entry)?.as_slice()).map_err(be)?;
            }
            Record::DeviceListNotice { device_id, user_id, changed_ms } => {
                let key = (device_id.as_u128(), user_id.as_u128());
                let at = notices.get(key).map_err(be)?.map(|g| g.value()).unwrap_or(0);
                notices.insert(key, at.max(changed_ms)).map_err(be)?;
            }
            other => return Err(StoreError::Backend(format!("not an end-to-end record: {other:?}"))),
        }
    }
    Ok(())
}

/// Whether a record belongs to this module.
pub(super) fn is_e2ee(record: &Record) -> bool {
    matches!(
        record,
        Record::DeviceKeys(_)
            | Record::OneTimeKey { .. }
            | Record::SpentKey { .. }
            | Record::FallbackKey { .. }
            | Record::ToDeviceQueue { .. }
            | Record::ToDeviceEntry { .. }
            | Record::DeviceListNotice { .. }
    )
}

/// How many records one of this module's sections holds (as `export` counts them).
pub(super) fn count(txn: &ReadTransaction, section: Section) -> Result<u64, StoreError> {
    let n = match section {
        Section::DeviceKeys => txn.open_table(DEVICE_KEYS).map_err(be)?.len(),
        Section::OneTimeKeys => {
            let unclaimed = txn.open_table(ONE_TIME_KEYS).map_err(be)?.len().map_err(be)?;
            return Ok(unclaimed + txn.open_table(SPENT_KEYS).map_err(be)?.len().map_err(be)?);
        }
        Section::FallbackKeys => txn.open_table(FALLBACK_KEYS).map_err(be)?.len(),
        Section::ToDeviceQueues => txn.open_table(QUEUES).map_err(be)?.len(),
        Section::ToDeviceEntries => txn.open_table(TO_DEVICE).map_err(be)?.len(),
        Section::DeviceListNotices => txn.open_table(NOTICES).map_err(be)?.len(),
        other => return Err(StoreError::Backend(format!("section {} is not end-to-end state", other.name()))),
    };
    n.map_err(be)
}
