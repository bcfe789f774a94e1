//! The session's side of to-device messages and device-list notices (docs/e2ee.md): the
//! SendToDevice, AckToDevice and AckDeviceLists frames, the queue sent after Welcome and
//! as entries arrive, in the order the [`Receiver`] core decides (in order, once, at most
//! a window ahead of the device's acknowledgements), and the unacknowledged notices sent
//! after Welcome.

use bytes::Bytes;

use super::{SessionState, Stop, push};
use crate::cores::to_device::{Offer, Receiver};
use crate::ids::{DeviceId, UserId};
use crate::protocol::{self, RequestError, parse_id, pb, server_frame};
use crate::store::{ToDeviceSend, ToDeviceTarget, now_ms};

type Answer = Result<Option<pb::ServerFrame>, RequestError>;

/// SendToDevice → ToDeviceSent (once every entry is durable).
pub async fn send(state: &mut SessionState, req: pb::SendToDevice) -> Answer {
    if req.targets.len() > state.ctx.limits.to_device.max_targets {
        // Before parsing a thousand ids of a request that is refused anyway.
        return Err(RequestError::invalid(format!("a to-device send addresses 1 to {} devices", state.ctx.limits.to_device.max_targets)));
    }
    let mut targets = Vec::with_capacity(req.targets.len());
    for t in req.targets {
        targets.push(ToDeviceTarget {
            user: parse_id::<UserId>("user_id", &t.user_id)?,
            device: parse_id::<DeviceId>("device_id", &t.device_id)?,
            payload: t.payload.to_vec(),
        });
    }
    let ctx = &state.ctx;
    let send = ToDeviceSend { sender_user: state.user, sender_device: state.device, client_id: req.client_id.clone(), sent_ms: now_ms(), targets };
    crate::to_device::send(ctx.store.as_ref(), &ctx.router, &ctx.limits.to_device, send).await?;
    Ok(Some(protocol::server(server_frame::Kind::ToDeviceSent(pb::ToDeviceSent { client_id: req.client_id }))))
}

/// AckToDevice: deletes the acknowledged entries and sends what the window now allows.
pub async fn ack(state: &mut SessionState, req: pb::AckToDevice) -> Result<(), Stop> {
    let Some(up_to) = state.to_device.ack(req.up_to) else { return Ok(()) };
    if let Err(e) = state.ctx.store.ack_to_device(state.device, up_to).await {
        // Not fatal: the entries stay queued and come again on the next connection, where
        // the device (which dedupes by position) acknowledges them again.
        tracing::warn!(error = %e, device = %state.device, "to-device acknowledgement not stored");
    }
    fill(state).await
}

/// AckDeviceLists: forgets the notices for these users.
pub async fn ack_lists(state: &mut SessionState, req: pb::AckDeviceLists) -> Answer {
    let users = req.user_ids.iter().map(|raw| parse_id::<UserId>("user_ids", raw)).collect::<Result<Vec<_>, _>>()?;
    if !users.is_empty() {
        state.ctx.store.ack_device_list_changes(state.device, users).await?;
    }
    Ok(None)
}

/// A live entry for this device.
pub async fn live(state: &mut SessionState, position: u64, frame: Bytes) -> Result<(), Stop> {
    match state.to_device.offer(position) {
        Offer::Send => {
            push(state, frame).await?;
            state.to_device.sent(position);
            Ok(())
        }
        Offer::Duplicate | Offer::Hold => Ok(()),
        Offer::Gap => fill(state).await,
    }
}

/// Sends queued entries after the last sent, from the store, as far as the window allows.
async fn fill(state: &mut SessionState) -> Result<(), Stop> {
    loop {
        let room = state.to_device.room();
        if room == 0 {
            return Ok(());
        }
        let asked = room.min(state.ctx.limits.catch_up_page as u64) as usize;
        let queue = match state.ctx.store.to_device_after(state.device, state.to_device.sent_up_to(), asked).await {
            Ok(queue) => queue,
            Err(e) => {
                // Left in the store: the next acknowledgement, live entry or connection
                // reads it again.
                tracing::warn!(error = %e, device = %state.device, "to-device queue not read");
                return Ok(());
            }
        };
        let read = queue.entries.len();
        send_entries(state, queue.entries).await?;
        if read < asked {
            return Ok(());
        }
    }
}

/// Sends entries read from the store, in order (the store's order is the truth: see
/// `Receiver::sent`).
async fn send_entries(state: &mut SessionState, entries: Vec<crate::store::ToDeviceEntry>) -> Result<(), Stop> {
    for entry in entries {
        let position = entry.position;
        push(state, crate::to_device::entry_frame(entry)).await?;
        state.to_device.sent(position);
    }
    Ok(())
}

/// After Welcome (before CatchUpComplete): the queue's first window, and the users whose
/// device-list notices this device has not acknowledged.
pub async fn catch_up(state: &mut SessionState) -> Result<(), Stop> {
    let limits = state.ctx.limits.to_device;
    let store = state.ctx.store.clone();
    let first = store.to_device_after(state.device, 0, limits.window.min(state.ctx.limits.catch_up_page as u64) as usize).await;
    match first {
        Ok(queue) => {
            state.to_device = Receiver::new(queue.acked, limits.window);
            send_entries(state, queue.entries).await?;
            fill(state).await?;
        }
        Err(e) => {
            tracing::warn!(error = %e, device = %state.device, "to-device queue not read at catch-up");
            return Err(super::delivery::store_down(state, &e, "to-device catch-up"));
        }
    }
    match store.device_list_changes(state.device).await {
        Ok(users) if users.is_empty() => Ok(()),
        Ok(users) => push(state, crate::to_device::notice_frame(&users)).await,
        Err(e) => Err(super::delivery::store_down(state, &e, "device-list notices")),
    }
}
