//! The key directory service (docs/e2ee.md): uploads, device-list queries and one-time key
//! claims, as the session (protocol frames) and the HTTP API (JSON mirrors) both serve
//! them. The decisions are in [`crate::cores::keys`]; this reads and writes the store
//! around them and says who may see whose keys. It never holds a private key.
//!
//! Who may query or claim: a user's own devices, and the members of a conversation the
//! caller is currently a member of (the store's records are the truth). Claims consume
//! keys, so a stranger cannot drain a device's keys either.

use std::collections::HashSet;

use crate::cores::keys::{self as core, KeyLimits, KeyRefusal, Upload};
use crate::ids::{DeviceId, UserId};
use crate::protocol::RequestError;
use crate::store::{ClaimedKey, DeviceKeys, KeysStored, Store};

/// Most users in one query.
pub const MAX_QUERY_USERS: usize = 256;
/// Most devices in one claim.
pub const MAX_CLAIM_DEVICES: usize = 256;

impl From<KeyRefusal> for RequestError {
    fn from(r: KeyRefusal) -> Self {
        match r {
            KeyRefusal::Malformed(m) => RequestError::InvalidArgument(m),
            KeyRefusal::BadSignature(m) => RequestError::InvalidSignature(m),
            KeyRefusal::TooMany(m) => RequestError::TooManyKeys(m),
        }
    }
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// Unclaimed one-time keys the device has now.
    pub one_time_key_count: u64,
    /// What happened to the identity keys (None: the upload had none).
    pub identity: Option<KeysStored>,
}

impl Uploaded {
    /// True if the device published identity keys it did not have (new or replaced): its
    /// user's device list changed for those who encrypt to it.
    pub fn identity_changed(&self) -> bool {
        matches!(self.identity, Some(KeysStored::New | KeysStored::Replaced))
    }
}

/// Checks and stores an upload of the calling device.
pub async fn upload(
    store: &dyn Store,
    limits: &KeyLimits,
    user: UserId,
    device: DeviceId,
    upload: Upload,
    now_ms: u64,
) -> Result<Uploaded, RequestError> {
    let published = if upload.identity.is_none() && (!upload.one_time_keys.is_empty() || upload.fallback.is_some()) {
        store.device_keys_of(user).await?.into_iter().find(|k| k.device_id == device)
    } else {
        None
    };
    let unclaimed = if upload.one_time_keys.is_empty() { 0 } else { store.one_time_key_count(device).await? };
    let checked = core::check_upload(user, device, &upload, published.as_ref(), unclaimed, limits, now_ms)?;
    let identity = match checked.identity {
        Some(keys) => Some(store.put_device_keys(keys).await?),
        None => None,
    };
    let one_time_key_count = if checked.one_time_keys.is_empty() && checked.fallback.is_none() {
        store.one_time_key_count(device).await?
    } else {
        store.add_one_time_keys(device, checked.one_time_keys, checked.fallback).await?
    };
    Ok(Uploaded { one_time_key_count, identity })
}

/// The users `caller` may see the keys of (and reach with to-device messages and
/// device-list notices): themselves and every current member of every conversation they
/// are a current member of — but a 1:1 across a block (either way) does not count (a
/// group they share still does: groups are unaffected by blocks).
pub(crate) async fn visible_users(store: &dyn Store, caller: UserId) -> Result<HashSet<UserId>, RequestError> {
    let blocked: HashSet<UserId> = store.blocks_of(caller).await?.into_iter().chain(store.blockers_of(caller).await?).collect();
    let mut users = HashSet::from([caller]);
    for id in store.conversations_of(caller).await? {
        if let Some(record) = store.conversation(id).await?
            && record.is_member(caller)
        {
            if record.kind == crate::store::ConversationKind::Direct && record.members.iter().any(|m| blocked.contains(m)) {
                continue;
            }
            users.extend(record.members.iter().copied());
        }
    }
    Ok(users)
}

/// The published identity keys of the live devices of `user`.
async fn live_keys(store: &dyn Store, user: UserId) -> Result<Vec<DeviceKeys>, RequestError> {
    let live: HashSet<DeviceId> = store.devices_of(user).await?.into_iter().filter(|d| d.revoked_ms.is_none()).map(|d| d.device_id).collect();
    // Revocation removes keys, but on ScyllaDB only after the revocation itself: never list
    // a revoked device, whatever the store still holds.
    Ok(store.device_keys_of(user).await?.into_iter().filter(|k| live.contains(&k.device_id)).collect())
}

/// The devices (with identity keys) of each of `users`, for `caller`.
pub async fn query(store: &dyn Store, caller: UserId, users: &[UserId]) -> Result<Vec<(UserId, Vec<DeviceKeys>)>, RequestError> {
    if users.len() > MAX_QUERY_USERS {
        return Err(RequestError::invalid(format!("at most {MAX_QUERY_USERS} users per query")));
    }
    let visible = visible_users(store, caller).await?;
    if let Some(stranger) = users.iter().find(|u| !visible.contains(u)) {
        return Err(RequestError::NoSharedConversation(stranger.to_string()));
    }
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        out.push((*user, live_keys(store, *user).await?));
    }
    Ok(out)
}

/// What a claim handed out.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// One key per device that had one: (user, device, key, unclaimed one-time keys left).
    pub keys: Vec<(UserId, DeviceId, ClaimedKey, u64)>,
    /// Devices without a key to give (unknown, revoked, another user's, no identity keys,
    /// none left and no fallback).
    pub unavailable: Vec<(UserId, DeviceId)>,
}

/// Claims one one-time key of each device, for `caller`.
pub async fn claim(store: &dyn Store, caller: UserId, devices: &[(UserId, DeviceId)], now_ms: u64) -> Result<Claims, RequestError> {
    if devices.len() > MAX_CLAIM_DEVICES {
        return Err(RequestError::invalid(format!("at most {MAX_CLAIM_DEVICES} devices per claim")));
    }
    let visible = visible_users(store, caller).await?;
    if let Some((stranger, _)) = devices.iter().find(|(u, _)| !visible.contains(u)) {
        return Err(RequestError::NoSharedConversation(stranger.to_string()));
    }
    let mut claims = Claims::default();
    let mut published: std::collections::HashMap<UserId, HashSet<DeviceId>> = std::collections::HashMap::new();
    for (user, device) in devices {
        if !published.contains_key(user) {
            let ids = live_keys(store, *user).await?.into_iter().map(|k| k.device_id).collect();
            published.insert(*user, ids);
        }
        let claimable = published.get(user).is_some_and(|ids| ids.contains(device));
        match if claimable { store.claim_one_time_key(*device, now_ms).await? } else { None } {
            Some(key) => {
                let left = if key.fallback { 0 } else { store.one_time_key_count(*device).await? };
                claims.keys.push((*user, *device, key, left));
            }
            None => claims.unavailable.push((*user, *device)),
        }
    }
    Ok(claims)
}
