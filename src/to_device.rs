//! To-device messages and device-list change notices (docs/e2ee.md), as the session and
//! the HTTP API trigger them: a send is checked ([`crate::cores::to_device`]), its
//! permission decided (as the key directory's: the caller's own user, or users sharing a
//! conversation with the caller), stored whole, then offered live to each target device
//! wherever it is connected; a change of a user's device list is recorded for every device
//! that must hear of it and pushed to those connected.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::actors::Router;
use crate::actors::messages::SessionRequest;
use crate::cores::to_device::{SendRefusal, ToDeviceLimits, check_send};
use crate::ids::{DeviceId, UserId};
use crate::protocol::{self, RequestError, id_bytes, pb, server_frame};
use crate::store::{Store, ToDeviceEntry, ToDeviceSend, ToDeviceStored};

impl From<SendRefusal> for RequestError {
    fn from(r: SendRefusal) -> Self {
        match r {
            SendRefusal::Invalid(m) => RequestError::InvalidArgument(m),
            SendRefusal::TooLarge { len, max } => RequestError::PayloadTooLarge { len, max },
        }
    }
}

/// The `ToDeviceMessage` frame of a queued entry, encoded.
pub fn entry_frame(entry: ToDeviceEntry) -> Bytes {
    protocol::encode_server(&protocol::server(server_frame::Kind::ToDevice(pb::ToDeviceMessage {
        position: entry.position,
        sender_user_id: id_bytes(entry.sender_user),
        sender_device_id: id_bytes(entry.sender_device),
        payload: Bytes::from(entry.payload),
        sent_ms: entry.sent_ms,
    })))
}

/// Checks, stores and delivers a send (of `send.sender_device`, accepted at
/// `send.sent_ms`). `Ok` once every entry is durable (or was, for a retry of the same
/// client id).
pub async fn send(store: &dyn Store, router: &Router, limits: &ToDeviceLimits, send: ToDeviceSend) -> Result<(), RequestError> {
    let (user, device, now_ms) = (send.sender_user, send.sender_device, send.sent_ms);
    let targets = &send.targets;
    let shape: Vec<(UserId, DeviceId, usize)> = targets.iter().map(|t| (t.user, t.device, t.payload.len())).collect();
    check_send(&send.client_id, &shape, limits)?;
    let named: HashSet<UserId> = targets.iter().map(|t| t.user).collect();
    if named.iter().any(|u| *u != user) {
        let visible = crate::keys::visible_users(store, user).await?;
        if let Some(stranger) = named.iter().find(|u| !visible.contains(u)) {
            return Err(RequestError::NoSharedConversation(stranger.to_string()));
        }
    }
    // Kept for the live frames: the store takes the payloads (and may answer in another
    // order: PostgreSQL locks queues in device id order).
    let mut payloads: HashMap<DeviceId, Vec<u8>> = targets.iter().map(|t| (t.device, t.payload.clone())).collect();
    match store.enqueue_to_device(send, limits.bounds()).await? {
        ToDeviceStored::Stored(stored) => {
            metrics::counter!("switchboard_to_device_total").increment(stored.len() as u64);
            for (target_user, target_device, position) in stored {
                let payload = payloads.remove(&target_device).unwrap_or_default();
                let entry = ToDeviceEntry { position, sender_user: user, sender_device: device, payload, sent_ms: now_ms };
                let frame = entry_frame(entry);
                router.deliver_to_device(target_user, target_device, SessionRequest::ToDevice { position, frame });
            }
            Ok(())
        }
        // Stored before: its live deliveries went then, or the devices read it at catch-up.
        ToDeviceStored::Duplicate => Ok(()),
        ToDeviceStored::UnknownDevice { user, device } => Err(RequestError::UnknownDevice { user: user.to_string(), device: device.to_string() }),
        ToDeviceStored::QueueFull { device } => Err(RequestError::QueueFull { device: device.to_string(), max: limits.max_queued }),
        ToDeviceStored::SenderFull { device } => {
            metrics::counter!("switchboard_to_device_refused_total", "reason" => "sender_full").increment(1);
            Err(RequestError::SenderQueueFull { device: device.to_string(), max: limits.max_queued_per_sender })
        }
    }
}

/// The `DeviceListsChanged` frame for some users, encoded.
pub fn notice_frame(users: &[UserId]) -> Bytes {
    protocol::encode_server(&protocol::server(server_frame::Kind::DeviceListsChanged(pb::DeviceListsChanged {
        user_ids: users.iter().map(|u| id_bytes(*u)).collect(),
    })))
}

/// `user`'s device list changed (a device linked or revoked, new identity keys): every live
/// device of every user who shares a conversation with them, and their own other devices
/// (all but `except`, the device that caused it), get a durable notice, and those
/// connected hear it now. Errors are logged: the change itself has happened, and a notice
/// that could not be stored is a missed hint, not lost data (devices also re-query keys
/// before a key rotation).
pub async fn device_list_changed(store: &dyn Store, router: &Router, user: UserId, except: Option<DeviceId>, now_ms: u64) {
    if let Err(e) = notify(store, router, user, except, now_ms).await {
        tracing::warn!(error = %e, %user, "device-list change notices not stored");
    }
}

async fn notify(store: &dyn Store, router: &Router, user: UserId, except: Option<DeviceId>, now_ms: u64) -> Result<(), RequestError> {
    let mut users: Vec<UserId> = crate::keys::visible_users(store, user).await?.into_iter().collect();
    users.sort();
    let mut devices = Vec::new();
    for u in &users {
        devices
            .extend(store.devices_of(*u).await?.into_iter().filter(|d| d.revoked_ms.is_none() && Some(d.device_id) != except).map(|d| d.device_id));
    }
    store.note_device_list_change(user, devices, now_ms).await?;
    metrics::counter!("switchboard_device_list_changes_total").increment(1);
    let frame = notice_frame(&[user]);
    router.deliver_to_users(&users, except, || SessionRequest::Push(frame.clone()));
    Ok(())
}
