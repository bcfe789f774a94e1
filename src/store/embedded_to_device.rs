//! The embedded store's to-device queues and device-list notices (redb), kept apart from
//! `embedded.rs` (the message log): the functions here run inside a redb transaction, on
//! the writer thread for writes (so a send's positions are allocated by one writer at a
//! time and never collide), on the caller for reads. Sends and acknowledgements are
//! logged writes (`embedded.rs`: write-ahead log, group commit): durable at the log's
//! fsync, and idempotent when the log is replayed (a replayed send finds its client id and
//! stores nothing; an acknowledgement only moves forward).
//!
//! Tables (partition key first, as the ScyllaDB model):
//! - `to_device`: (device, position) → [`ToDeviceEntry`] (postcard);
//! - `to_device_queues`: device → (last position given, highest acknowledged);
//! - `to_device_sends`: (sending device, client id) → sent_ms, and `to_device_sends_by_time`
//!   (sent_ms, sending device, client id) to prune ids older than a day;
//! - `device_list_notices`: (device, changed user) → ms of the newest change.

use super::embedded_snapshot::Snapshot;
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use super::embedded::{be, decode, encode};
use super::to_device::{QueueBounds, SEND_IDS_KEPT_MS, ToDeviceEntry, ToDeviceQueue, ToDeviceSend, ToDeviceStored};
use super::{DeviceId, DeviceRecord, StoreError, UserId};
use crate::cores::to_device::sender_bound_applies;

pub(super) const TO_DEVICE: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("to_device");
pub(super) const QUEUES: TableDefinition<u128, (u64, u64)> = TableDefinition::new("to_device_queues");
const SENDS: TableDefinition<(u128, &str), u64> = TableDefinition::new("to_device_sends");
const SENDS_BY_TIME: TableDefinition<(u64, u128, &str), ()> = TableDefinition::new("to_device_sends_by_time");
pub(super) const NOTICES: TableDefinition<(u128, u128), u64> = TableDefinition::new("device_list_notices");
/// The devices table of `embedded.rs` (same definition: redb checks the types).
const DEVICES: TableDefinition<u128, &[u8]> = TableDefinition::new("devices");

/// Creates the tables (at open), so readers never meet a missing one.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(TO_DEVICE).map_err(be)?;
    txn.open_table(QUEUES).map_err(be)?;
    txn.open_table(SENDS).map_err(be)?;
    txn.open_table(SENDS_BY_TIME).map_err(be)?;
    txn.open_table(NOTICES).map_err(be)?;
    Ok(())
}

/// `Store::enqueue_to_device`, inside the writer's transaction.
pub(super) fn enqueue_in(txn: &WriteTransaction, send: &ToDeviceSend, bounds: QueueBounds) -> Result<ToDeviceStored, StoreError> {
    let sender = send.sender_device.as_u128();
    let mut sends = txn.open_table(SENDS).map_err(be)?;
    if let Some(at) = sends.get((sender, send.client_id.as_str())).map_err(be)? {
        // An id older than the window (not pruned yet) may be used again.
        if at.value().saturating_add(SEND_IDS_KEPT_MS) > send.sent_ms {
            return Ok(ToDeviceStored::Duplicate);
        }
    }
    let devices = txn.open_table(DEVICES).map_err(be)?;
    let mut queues = txn.open_table(QUEUES).map_err(be)?;
    let mut entries = txn.open_table(TO_DEVICE).map_err(be)?;
    // Check everything before writing anything: all or nothing.
    let mut next = Vec::with_capacity(send.targets.len());
    for target in &send.targets {
        let record: Option<DeviceRecord> = devices.get(target.device.as_u128()).map_err(be)?.map(|g| decode("devices", g.value())).transpose()?;
        if !record.is_some_and(|d| d.user_id == target.user && d.revoked_ms.is_none()) {
            return Ok(ToDeviceStored::UnknownDevice { user: target.user, device: target.device });
        }
        let (last, acked) = queues.get(target.device.as_u128()).map_err(be)?.map(|g| g.value()).unwrap_or((0, 0));
        let queued = last.saturating_sub(acked);
        if queued >= bounds.per_device {
            return Ok(ToDeviceStored::QueueFull { device: target.device });
        }
        if sender_bound_applies(send.sender_user, target.user, queued, &bounds)
            && entries_from(&entries, target.device, send.sender_user)? >= bounds.per_sender
        {
            return Ok(ToDeviceStored::SenderFull { device: target.device });
        }
        next.push((last + 1, acked));
    }
    let mut stored = Vec::with_capacity(send.targets.len());
    for (target, (position, acked)) in send.targets.iter().zip(next) {
        let entry = ToDeviceEntry {
            position,
            sender_user: send.sender_user,
            sender_device: send.sender_device,
            payload: target.payload.clone(),
            sent_ms: send.sent_ms,
        };
        entries.insert((target.device.as_u128(), position), encode(&entry)?.as_slice()).map_err(be)?;
        queues.insert(target.device.as_u128(), (position, acked)).map_err(be)?;
        stored.push((target.user, target.device, position));
    }
    sends.insert((sender, send.client_id.as_str()), send.sent_ms).map_err(be)?;
    txn.open_table(SENDS_BY_TIME).map_err(be)?.insert((send.sent_ms, sender, send.client_id.as_str()), ()).map_err(be)?;
    Ok(ToDeviceStored::Stored(stored))
}

/// How many entries of `device`'s queue come from `sender` (reads each entry's head only:
/// position and sender, the first fields of its encoding).
fn entries_from(entries: &impl ReadableTable<(u128, u64), &'static [u8]>, device: DeviceId, sender: UserId) -> Result<u64, StoreError> {
    #[derive(serde::Deserialize)]
    struct Head {
        _position: u64,
        sender_user: UserId,
    }
    let dev = device.as_u128();
    let mut count = 0;
    for entry in entries.range((dev, 0)..=(dev, u64::MAX)).map_err(be)? {
        let (_, value) = entry.map_err(be)?;
        let (head, _): (Head, _) =
            postcard::take_from_bytes(value.value()).map_err(|e| StoreError::Corrupt { table: "to_device", detail: e.to_string() })?;
        count += u64::from(head.sender_user == sender);
    }
    Ok(count)
}

/// `Store::to_device_after`.
pub(super) fn after(snap: &Snapshot, device: DeviceId, after: u64, limit: usize) -> Result<ToDeviceQueue, StoreError> {
    let dev = device.as_u128();
    let acked = snap.table(QUEUES)?.get(dev).map_err(be)?.map(|g| g.value().1).unwrap_or(0);
    let table = snap.table(TO_DEVICE)?;
    let mut entries = Vec::new();
    for entry in table.range((dev, after.saturating_add(1))..=(dev, u64::MAX)).map_err(be)?.take(limit) {
        let (_, value) = entry.map_err(be)?;
        entries.push(decode::<ToDeviceEntry>("to_device", value.value())?);
    }
    Ok(ToDeviceQueue { acked, entries })
}

/// `Store::ack_to_device`, inside the writer's transaction.
pub(super) fn ack_in(txn: &WriteTransaction, device: DeviceId, up_to: u64) -> Result<(), StoreError> {
    let dev = device.as_u128();
    let mut queues = txn.open_table(QUEUES).map_err(be)?;
    let Some((last, acked)) = queues.get(dev).map_err(be)?.map(|g| g.value()) else {
        return Ok(());
    };
    // Never past what was given out: an ack cannot reserve positions.
    let up_to = up_to.min(last);
    if up_to <= acked {
        return Ok(());
    }
    queues.insert(dev, (last, up_to)).map_err(be)?;
    let mut entries = txn.open_table(TO_DEVICE).map_err(be)?;
    for position in acked + 1..=up_to {
        entries.remove((dev, position)).map_err(be)?;
    }
    Ok(())
}

/// Removes a revoked device's queue and notices, inside the revocation's transaction. The
/// queue's counter stays, so positions are never reused.
pub(super) fn remove_device(txn: &WriteTransaction, device: DeviceId) -> Result<(), StoreError> {
    let dev = device.as_u128();
    let mut entries = txn.open_table(TO_DEVICE).map_err(be)?;
    let positions: Vec<u64> =
        entries.range((dev, 0)..=(dev, u64::MAX)).map_err(be)?.map(|e| e.map(|(k, _)| k.value().1)).collect::<Result<_, _>>().map_err(be)?;
    for position in positions {
        entries.remove((dev, position)).map_err(be)?;
    }
    let mut notices = txn.open_table(NOTICES).map_err(be)?;
    let users: Vec<u128> =
        notices.range((dev, 0)..=(dev, u128::MAX)).map_err(be)?.map(|e| e.map(|(k, _)| k.value().1)).collect::<Result<_, _>>().map_err(be)?;
    for user in users {
        notices.remove((dev, user)).map_err(be)?;
    }
    Ok(())
}

/// Forgets send ids older than the window, at most `limit`, inside the purge's transaction.
pub(super) fn prune_send_ids(txn: &WriteTransaction, now_ms: u64, limit: usize) -> Result<(), StoreError> {
    let cutoff = now_ms.saturating_sub(SEND_IDS_KEPT_MS);
    let mut by_time = txn.open_table(SENDS_BY_TIME).map_err(be)?;
    let old: Vec<(u64, u128, String)> = by_time
        .range((0, 0, "")..(cutoff, 0, ""))
        .map_err(be)?
        .take(limit)
        .map(|e| e.map(|(k, _)| (k.value().0, k.value().1, k.value().2.to_owned())))
        .collect::<Result<_, _>>()
        .map_err(be)?;
    let mut sends = txn.open_table(SENDS).map_err(be)?;
    for (at, device, id) in old {
        by_time.remove((at, device, id.as_str())).map_err(be)?;
        // A newer send may have reused the id after the window: keep its record.
        if sends.get((device, id.as_str())).map_err(be)?.is_some_and(|g| g.value() == at) {
            sends.remove((device, id.as_str())).map_err(be)?;
        }
    }
    Ok(())
}

/// `Store::note_device_list_change`, in one durable transaction.
pub(super) fn note_change(db: &Database, changed: UserId, devices: Vec<DeviceId>, at_ms: u64) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(be)?;
    {
        let mut notices = txn.open_table(NOTICES).map_err(be)?;
        for device in devices {
            notices.insert((device.as_u128(), changed.as_u128()), at_ms).map_err(be)?;
        }
    }
    txn.commit().map_err(be)
}

/// `Store::device_list_changes`.
pub(super) fn changes(snap: &Snapshot, device: DeviceId) -> Result<Vec<UserId>, StoreError> {
    let dev = device.as_u128();
    let notices = snap.table(NOTICES)?;
    notices.range((dev, 0)..=(dev, u128::MAX)).map_err(be)?.map(|e| e.map(|(k, _)| UserId::from_u128(k.value().1)).map_err(be)).collect()
}

/// `Store::ack_device_list_changes`, in one durable transaction.
pub(super) fn ack_changes(db: &Database, device: DeviceId, users: Vec<UserId>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(be)?;
    {
        let mut notices = txn.open_table(NOTICES).map_err(be)?;
        for user in users {
            notices.remove((device.as_u128(), user.as_u128())).map_err(be)?;
        }
    }
    txn.commit().map_err(be)
}
