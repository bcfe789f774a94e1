//! The ScyllaDB backend's to-device queues and device-list notices.
//!
//! A device's queue is one partition of `to_device`; its static `last_position` is the
//! fence. An entry is written by one conditional batch on that partition (`IF
//! last_position = <previous>` — or `= null` for a queue's first entry — with the row), so
//! a position is allocated and its entry written atomically, and a reader never sees
//! position n+1 before n. Racing senders retry with the fence they lost to.
//!
//! No transaction spans partitions, so a send to many devices is not all or nothing here:
//! every target is checked first (live device, room in its queue) and nothing is written
//! if one fails, but a queue that fills between the check and the write refuses its entry
//! after earlier targets got theirs (the answer is QUEUE_FULL; a retry with the same client
//! id is not a duplicate, since the id is recorded only once every target is queued, and
//! queues those targets again: receivers see an Olm message twice, which Olm refuses as a
//! replay, never as a loss). The client id is recorded last, for the same reason.

use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

use super::{Kind, ScyllaStore, driver, int, lwt, prepare, uint};
use crate::cores::to_device::sender_bound_applies;
use crate::store::to_device::{QueueBounds, SEND_IDS_KEPT_MS, ToDeviceEntry, ToDeviceQueue, ToDeviceSend, ToDeviceStored};
use crate::store::transfer::Record;
use crate::store::{DeviceId, Store, StoreError, UserId};

/// How often a position is retried against racing senders before giving up (UNAVAILABLE,
/// the client retries the send).
const FENCE_ATTEMPTS: usize = 16;

/// The prepared statements of this module.
pub(super) struct ToDeviceStatements {
    queue_head: PreparedStatement,
    fence_first: PreparedStatement,
    fence_next: PreparedStatement,
    put_entry: PreparedStatement,
    entries_after: PreparedStatement,
    entry_senders: PreparedStatement,
    set_acked: PreparedStatement,
    import_fence: PreparedStatement,
    delete_up_to: PreparedStatement,
    delete_queue_rows: PreparedStatement,
    get_send: PreparedStatement,
    put_send: PreparedStatement,
    put_notice: PreparedStatement,
    notices: PreparedStatement,
    delete_notice: PreparedStatement,
    delete_notices: PreparedStatement,
}

impl ToDeviceStatements {
    pub(super) async fn prepare_all(s: &scylla::client::session::Session) -> Result<Self, StoreError> {
        use Kind::{Conditional, Read, SerialRead, Write};
        Ok(Self {
            queue_head: prepare(s, "SELECT last_position, acked FROM to_device WHERE device_id = ? LIMIT 1", SerialRead).await?,
            fence_first: prepare(s, "UPDATE to_device SET last_position = ? WHERE device_id = ? IF last_position = null", Conditional).await?,
            fence_next: prepare(s, "UPDATE to_device SET last_position = ? WHERE device_id = ? IF last_position = ?", Conditional).await?,
            put_entry: prepare(
                s,
                "INSERT INTO to_device (device_id, position, sender_user_id, sender_device_id, payload, sent_ms) VALUES (?, ?, ?, ?, ?, ?)",
                Write,
            )
            .await?,
            entries_after: prepare(
                s,
                "SELECT position, sender_user_id, sender_device_id, payload, sent_ms FROM to_device WHERE device_id = ? AND position > ? LIMIT ?",
                Read,
            )
            .await?,
            entry_senders: prepare(s, "SELECT sender_user_id FROM to_device WHERE device_id = ?", Read).await?,
            // Written with USING TIMESTAMP = the value: the largest acknowledgement wins.
            set_acked: prepare(s, "UPDATE to_device USING TIMESTAMP ? SET acked = ? WHERE device_id = ?", Write).await?,
            // `store copy` only (nothing else writes the fence without a condition).
            import_fence: prepare(s, "UPDATE to_device SET last_position = ? WHERE device_id = ?", Write).await?,
            delete_up_to: prepare(s, "DELETE FROM to_device WHERE device_id = ? AND position <= ?", Write).await?,
            delete_queue_rows: prepare(s, "DELETE FROM to_device WHERE device_id = ? AND position >= 0", Write).await?,
            get_send: prepare(s, "SELECT sent_ms FROM to_device_sends WHERE sender_device_id = ? AND client_id = ?", Read).await?,
            put_send: prepare(s, "INSERT INTO to_device_sends (sender_device_id, client_id, sent_ms) VALUES (?, ?, ?) USING TTL ?", Write).await?,
            put_notice: prepare(s, "INSERT INTO device_list_notices (device_id, user_id, changed_ms) VALUES (?, ?, ?)", Write).await?,
            notices: prepare(s, "SELECT user_id FROM device_list_notices WHERE device_id = ?", Read).await?,
            delete_notice: prepare(s, "DELETE FROM device_list_notices WHERE device_id = ? AND user_id = ?", Write).await?,
            delete_notices: prepare(s, "DELETE FROM device_list_notices WHERE device_id = ?", Write).await?,
        })
    }
}

impl ScyllaStore {
    /// `store copy` of a to-device queue's head, an entry or a notice (positions and
    /// acknowledgements only move forward).
    pub(super) async fn import_to_device(&self, record: Record) -> Result<(), StoreError> {
        match record {
            Record::ToDeviceQueue { device_id, last_position, acked } => {
                let (last, _) = self.queue_head(device_id).await?;
                self.exec(&self.td.import_fence, (int(last.max(last_position)), device_id)).await?;
                self.exec(&self.td.set_acked, (int(acked), int(acked), device_id)).await?;
            }
            Record::ToDeviceEntry { device_id, entry } => {
                let row = (device_id, int(entry.position), entry.sender_user, entry.sender_device, entry.payload.as_slice(), int(entry.sent_ms));
                self.exec(&self.td.put_entry, row).await?;
            }
            Record::DeviceListNotice { device_id, user_id, changed_ms } => {
                self.exec(&self.td.put_notice, (device_id, user_id, int(changed_ms))).await?;
            }
            other => return Err(StoreError::Backend(format!("not a to-device record: {other:?}"))),
        }
        Ok(())
    }

    /// (last position given, highest acknowledged) of a device's queue.
    async fn queue_head(&self, device: DeviceId) -> Result<(u64, u64), StoreError> {
        let row: Option<(Option<i64>, Option<i64>)> = self.first_row(&self.td.queue_head, (device,)).await?;
        Ok(row.map(|(l, a)| (l.map(uint).unwrap_or(0), a.map(uint).unwrap_or(0))).unwrap_or((0, 0)))
    }

    /// Appends one entry at the queue's next position (the conditional batch).
    async fn append_entry(&self, device: DeviceId, entry: &mut ToDeviceEntry, max_queued: u64) -> Result<bool, StoreError> {
        for _ in 0..FENCE_ATTEMPTS {
            let (last, acked) = self.queue_head(device).await?;
            if last.saturating_sub(acked) >= max_queued {
                return Ok(false);
            }
            let position = last + 1;
            let mut batch = Batch::new(BatchType::Logged);
            batch.set_consistency(Consistency::LocalQuorum);
            batch.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            batch.set_is_idempotent(false);
            let row = (device, int(position), entry.sender_user, entry.sender_device, entry.payload.as_slice(), int(entry.sent_ms));
            let result = if last == 0 {
                batch.append_statement(self.td.fence_first.clone());
                batch.append_statement(self.td.put_entry.clone());
                self.session.batch(&batch, ((int(position), device), row)).await
            } else {
                batch.append_statement(self.td.fence_next.clone());
                batch.append_statement(self.td.put_entry.clone());
                self.session.batch(&batch, ((int(position), device, int(last)), row)).await
            }
            .map_err(driver)?;
            if lwt(result)?.applied {
                entry.position = position;
                return Ok(true);
            }
        }
        Err(StoreError::Backend("scylla: to-device queue contended; retry".into()))
    }

    /// How many entries of `device`'s queue come from `sender` (one partition, at most a
    /// queue's bound of rows).
    async fn entries_from(&self, device: DeviceId, sender: UserId) -> Result<u64, StoreError> {
        let mut count = 0u64;
        self.all_rows(&self.td.entry_senders, (device,), |(user,): (Option<UserId>,)| {
            count += u64::from(user == Some(sender));
            Ok(())
        })
        .await?;
        Ok(count)
    }

    pub(super) async fn enqueue_to_device_impl(&self, send: ToDeviceSend, bounds: QueueBounds) -> Result<ToDeviceStored, StoreError> {
        let max_queued = bounds.per_device;
        let seen: Option<(Option<i64>,)> = self.first_row(&self.td.get_send, (send.sender_device, send.client_id.as_str())).await?;
        if seen.is_some() {
            return Ok(ToDeviceStored::Duplicate);
        }
        for target in &send.targets {
            match self.device(target.device).await? {
                Some(d) if d.user_id == target.user && d.revoked_ms.is_none() => {}
                _ => return Ok(ToDeviceStored::UnknownDevice { user: target.user, device: target.device }),
            }
            let (last, acked) = self.queue_head(target.device).await?;
            let queued = last.saturating_sub(acked);
            if queued >= max_queued {
                return Ok(ToDeviceStored::QueueFull { device: target.device });
            }
            // Read before the writes (no transaction spans them): concurrent sends of one
            // user may pass the per-sender bound by their number; the per-device bound is
            // exact (the fence).
            if sender_bound_applies(send.sender_user, target.user, queued, &bounds)
                && self.entries_from(target.device, send.sender_user).await? >= bounds.per_sender
            {
                return Ok(ToDeviceStored::SenderFull { device: target.device });
            }
        }
        let mut stored = Vec::with_capacity(send.targets.len());
        for target in send.targets {
            let mut entry = ToDeviceEntry {
                position: 0,
                sender_user: send.sender_user,
                sender_device: send.sender_device,
                payload: target.payload,
                sent_ms: send.sent_ms,
            };
            if !self.append_entry(target.device, &mut entry, max_queued).await? {
                return Ok(ToDeviceStored::QueueFull { device: target.device });
            }
            stored.push((target.user, target.device, entry.position));
        }
        let ttl = i32::try_from(SEND_IDS_KEPT_MS / 1000).unwrap_or(i32::MAX);
        self.exec(&self.td.put_send, (send.sender_device, send.client_id.as_str(), int(send.sent_ms), ttl)).await?;
        Ok(ToDeviceStored::Stored(stored))
    }

    pub(super) async fn to_device_after_impl(&self, device: DeviceId, after: u64, limit: usize) -> Result<ToDeviceQueue, StoreError> {
        let (_, acked) = self.queue_head(device).await?;
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut entries = Vec::new();
        type EntryRow = (i64, Option<UserId>, Option<DeviceId>, Option<Vec<u8>>, Option<i64>);
        self.all_rows(&self.td.entries_after, (device, int(after), limit), |(position, user, sender, payload, sent): EntryRow| {
            // A row without its columns is a static-only row (a queue with no entries).
            if let (Some(sender_user), Some(sender_device), Some(payload)) = (user, sender, payload) {
                entries.push(ToDeviceEntry { position: uint(position), sender_user, sender_device, payload, sent_ms: sent.map(uint).unwrap_or(0) });
            }
            Ok(())
        })
        .await?;
        entries.truncate(limit.max(0) as usize);
        Ok(ToDeviceQueue { acked, entries })
    }

    pub(super) async fn ack_to_device_impl(&self, device: DeviceId, up_to: u64) -> Result<(), StoreError> {
        let (last, acked) = self.queue_head(device).await?;
        let up_to = up_to.min(last);
        if up_to <= acked {
            return Ok(());
        }
        self.exec(&self.td.set_acked, (int(up_to), int(up_to), device)).await?;
        self.exec(&self.td.delete_up_to, (device, int(up_to))).await?;
        Ok(())
    }

    /// A revoked device's entries and notices (the fence stays: positions are not reused).
    pub(super) async fn remove_to_device(&self, device: DeviceId) -> Result<(), StoreError> {
        self.exec(&self.td.delete_queue_rows, (device,)).await?;
        self.exec(&self.td.delete_notices, (device,)).await?;
        Ok(())
    }

    pub(super) async fn note_device_list_change_impl(&self, changed: UserId, devices: Vec<DeviceId>, at_ms: u64) -> Result<(), StoreError> {
        for device in devices {
            self.exec(&self.td.put_notice, (device, changed, int(at_ms))).await?;
        }
        Ok(())
    }

    pub(super) async fn device_list_changes_impl(&self, device: DeviceId) -> Result<Vec<UserId>, StoreError> {
        let mut out = Vec::new();
        self.all_rows(&self.td.notices, (device,), |(user,): (UserId,)| {
            out.push(user);
            Ok(())
        })
        .await?;
        out.sort();
        Ok(out)
    }

    pub(super) async fn ack_device_list_changes_impl(&self, device: DeviceId, users: Vec<UserId>) -> Result<(), StoreError> {
        for user in users {
            self.exec(&self.td.delete_notice, (device, user)).await?;
        }
        Ok(())
    }
}
