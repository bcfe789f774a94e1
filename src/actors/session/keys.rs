//! The key directory's frames (docs/e2ee.md): UploadKeys, QueryDevices and ClaimKeys, each
//! answered through [`crate::keys`], and the KeysLow notice (after catch-up, and to a
//! device whose keys a claim took low, wherever it is connected).

use super::SessionState;
use crate::cores::keys::{KeyLimits, Upload, is_low};
use crate::ids::{DeviceId, UserId};
use crate::keys;
use crate::protocol::{self, RequestError, id_bytes, parse_id, pb, server_frame};
use crate::store::{DeviceKeys, OneTimeKey, now_ms};

type Answer = Result<Option<pb::ServerFrame>, RequestError>;

/// UploadKeys → KeysUploaded.
pub async fn upload(state: &mut SessionState, req: pb::UploadKeys) -> Answer {
    let signed = |k: pb::SignedKey| (k.key_id, k.key.to_vec(), k.signature.to_vec());
    let upload = Upload {
        identity: req.identity.map(|i| (i.curve25519.to_vec(), i.ed25519.to_vec(), i.signature.to_vec())),
        one_time_keys: req.one_time_keys.into_iter().map(signed).collect(),
        fallback: req.fallback_key.map(signed),
    };
    let done = keys::upload(state.ctx.store.as_ref(), &state.ctx.limits.keys, state.user, state.device, upload, now_ms()).await?;
    if done.identity_changed() {
        crate::to_device::device_list_changed(state.ctx.store.as_ref(), &state.ctx.router, state.user, Some(state.device), now_ms()).await;
    }
    Ok(Some(protocol::server(server_frame::Kind::KeysUploaded(pb::KeysUploaded {
        request_id: req.request_id,
        one_time_key_count: done.one_time_key_count,
    }))))
}

/// QueryDevices → DeviceList.
pub async fn query(state: &mut SessionState, req: pb::QueryDevices) -> Answer {
    let users = req.user_ids.iter().map(|raw| parse_id("user_ids", raw)).collect::<Result<Vec<UserId>, _>>()?;
    let found = keys::query(state.ctx.store.as_ref(), state.user, &users).await?;
    let users = found
        .into_iter()
        .map(|(user, devices)| pb::UserDevices {
            user_id: id_bytes(user),
            devices: devices.iter().map(|k| pb::PublishedDevice { device_id: id_bytes(k.device_id), identity: Some(identity(k)) }).collect(),
        })
        .collect();
    Ok(Some(protocol::server(server_frame::Kind::DeviceList(pb::DeviceList { request_id: req.request_id, users }))))
}

/// ClaimKeys → ClaimedKeys, and KeysLow to each device the claim took low.
pub async fn claim(state: &mut SessionState, req: pb::ClaimKeys) -> Answer {
    let mut devices = Vec::with_capacity(req.devices.len());
    for d in &req.devices {
        devices.push((parse_id::<UserId>("user_id", &d.user_id)?, parse_id::<DeviceId>("device_id", &d.device_id)?));
    }
    let claims = keys::claim(state.ctx.store.as_ref(), state.user, &devices, now_ms()).await?;
    let limits = state.ctx.limits.keys;
    for (user, device, key, left) in &claims.keys {
        if key.fallback || is_low(*left, &limits) {
            tell_low(&state.ctx.router, *user, *device, *left, &limits);
        }
    }
    let address = |(u, d): &(UserId, DeviceId)| pb::DeviceAddress { user_id: id_bytes(*u), device_id: id_bytes(*d) };
    Ok(Some(protocol::server(server_frame::Kind::ClaimedKeys(pb::ClaimedKeys {
        request_id: req.request_id,
        keys: claims
            .keys
            .iter()
            .map(|(u, d, k, _)| pb::ClaimedKey {
                user_id: id_bytes(*u),
                device_id: id_bytes(*d),
                key: Some(signed_key(&k.key)),
                fallback: k.fallback,
            })
            .collect(),
        unavailable: claims.unavailable.iter().map(address).collect(),
    }))))
}

/// After catch-up: a device that publishes keys and is low on one-time keys is told so.
/// Devices that never published identity keys (no end-to-end encryption) are not.
pub async fn notice_if_low(state: &mut SessionState) -> Result<(), super::Stop> {
    let limits = state.ctx.limits.keys;
    let count = match state.ctx.store.one_time_key_count(state.device).await {
        Ok(count) if is_low(count, &limits) => count,
        Ok(_) => return Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "one-time key count not read at connect");
            return Ok(());
        }
    };
    match state.ctx.store.device_keys_of(state.user).await {
        Ok(published) if published.iter().any(|k| k.device_id == state.device) => {
            super::push(state, protocol::encode_server(&keys_low(count, &limits))).await
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "device keys not read at connect");
            Ok(())
        }
    }
}

/// Sends KeysLow to a device wherever it is connected (nothing if it is not: it hears at
/// its next connection).
pub fn tell_low(router: &crate::actors::Router, user: UserId, device: DeviceId, count: u64, limits: &KeyLimits) {
    let frame = protocol::encode_server(&keys_low(count, limits));
    router.deliver_to_device(user, device, crate::actors::messages::SessionRequest::Push(frame));
}

fn keys_low(count: u64, limits: &KeyLimits) -> pb::ServerFrame {
    protocol::server(server_frame::Kind::KeysLow(pb::KeysLow {
        one_time_key_count: count,
        low_water: u32::try_from(limits.low_water).unwrap_or(u32::MAX),
        target: u32::try_from(limits.target).unwrap_or(u32::MAX),
    }))
}

/// The wire form of identity keys.
pub fn identity(k: &DeviceKeys) -> pb::DeviceIdentity {
    pb::DeviceIdentity { curve25519: k.curve25519.to_vec().into(), ed25519: k.ed25519.to_vec().into(), signature: k.signature.clone().into() }
}

/// The wire form of a one-time or fallback key.
pub fn signed_key(k: &OneTimeKey) -> pb::SignedKey {
    pb::SignedKey { key_id: k.key_id.clone(), key: k.key.to_vec().into(), signature: k.signature.clone().into() }
}
