//! HTTP mirrors of the key directory frames (docs/e2ee.md, docs/protocol.md §"Key
//! directory"), for apps that fetch keys outside their socket. Same service
//! ([`crate::keys`]), same checks, same answers; byte fields are base64 (standard alphabet;
//! written without padding as vodozemac and libolm do, read with or without).

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::api::{ApiError, ApiState, ErrorBody, caller};
use crate::cores::keys::Upload;
use crate::ids::{DeviceId, UserId};
use crate::store::{DeviceKeys, OneTimeKey, now_ms};

/// Base64 as keys are written by vodozemac: standard alphabet, no padding; padding accepted.
const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_encode_padding(false).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn bytes(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(text).map_err(|_| ApiError::BadRequest(format!("{field} is not base64")))
}

/// Identity keys (base64).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IdentityJson {
    /// Curve25519 identity key, 32 bytes.
    pub curve25519: String,
    /// Ed25519 fingerprint key, 32 bytes.
    pub ed25519: String,
    /// Ed25519 signature, 64 bytes (docs/e2ee.md: what it covers).
    pub signature: String,
}

/// A signed one-time or fallback key (base64).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignedKeyJson {
    /// The device's key id, 1 to 64 bytes.
    #[schema(min_length = 1, max_length = 64)]
    pub key_id: String,
    /// Curve25519 public key, 32 bytes.
    pub key: String,
    /// Ed25519 signature, 64 bytes.
    pub signature: String,
}

/// `POST /v1/keys/upload`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UploadBody {
    /// New or the same identity keys.
    pub identity: Option<IdentityJson>,
    /// At most 100.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub one_time_keys: Vec<SignedKeyJson>,
    /// Replaces the fallback key.
    pub fallback_key: Option<SignedKeyJson>,
}

impl UploadBody {
    /// The upload the body stands for (base64 decoded); `BadRequest` for a field that is
    /// not base64. Sizes and signatures are checked next, by `cores::keys::check_upload`.
    pub fn to_upload(&self) -> Result<Upload, ApiError> {
        let identity = match &self.identity {
            Some(i) => Some((bytes("curve25519", &i.curve25519)?, bytes("ed25519", &i.ed25519)?, bytes("signature", &i.signature)?)),
            None => None,
        };
        Ok(Upload {
            identity,
            one_time_keys: self.one_time_keys.iter().map(signed).collect::<Result<_, _>>()?,
            fallback: self.fallback_key.as_ref().map(signed).transpose()?,
        })
    }
}

/// Answer of an upload (and of `GET /v1/keys/count`).
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyCount {
    /// Unclaimed one-time keys of the calling device.
    pub one_time_key_count: u64,
    /// True when below the low-water mark: upload more.
    pub low: bool,
}

/// `POST /v1/keys/query`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct QueryBody {
    /// At most 256 user ids.
    #[schema(max_items = 256)]
    pub user_ids: Vec<Uuid>,
}

/// One device with its identity keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedDeviceJson {
    /// Device id.
    pub device_id: String,
    /// Its identity keys.
    pub identity: IdentityJson,
}

/// One user's devices.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserDevicesJson {
    /// User id.
    pub user_id: String,
    /// Live devices that published identity keys.
    pub devices: Vec<PublishedDeviceJson>,
}

/// A device, by user and device id.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceAddressJson {
    /// User id.
    pub user_id: Uuid,
    /// Device id.
    pub device_id: Uuid,
}

/// `POST /v1/keys/claim`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ClaimBody {
    /// At most 256 devices.
    #[schema(max_items = 256)]
    pub devices: Vec<DeviceAddressJson>,
}

/// One claimed key.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimedKeyJson {
    /// User id.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// The key.
    pub key: SignedKeyJson,
    /// No one-time key was left: this is the fallback key.
    pub fallback: bool,
}

/// Answer of a claim.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimAnswer {
    /// One key per device that had one.
    pub keys: Vec<ClaimedKeyJson>,
    /// Devices without a key to give.
    pub unavailable: Vec<DeviceAddressJson>,
}

fn identity_json(k: &DeviceKeys) -> IdentityJson {
    IdentityJson { curve25519: B64.encode(k.curve25519), ed25519: B64.encode(k.ed25519), signature: B64.encode(&k.signature) }
}

fn key_json(k: &OneTimeKey) -> SignedKeyJson {
    SignedKeyJson { key_id: k.key_id.clone(), key: B64.encode(k.key), signature: B64.encode(&k.signature) }
}

fn signed(k: &SignedKeyJson) -> Result<(String, Vec<u8>, Vec<u8>), ApiError> {
    Ok((k.key_id.clone(), bytes("key", &k.key)?, bytes("signature", &k.signature)?))
}

/// Publishes the calling device's keys (the UploadKeys frame).
#[utoipa::path(post, path = "/v1/keys/upload", tag = "public", request_body = UploadBody, security(("device_token" = [])), responses(
    (status = 200, description = "Stored (idempotent)", body = KeyCount),
    (status = 400, description = "bad_request, invalid_signature or too_many_keys", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn upload(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<UploadBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let upload = body.to_upload()?;
    let limits = state.node.ctx.limits.keys;
    let done = crate::keys::upload(state.store.as_ref(), &limits, me.user_id, me.device_id, upload, now_ms()).await?;
    if done.identity_changed() {
        crate::to_device::device_list_changed(state.store.as_ref(), &state.node.ctx.router, me.user_id, Some(me.device_id), now_ms()).await;
    }
    Ok(HttpResponse::Ok()
        .json(KeyCount { one_time_key_count: done.one_time_key_count, low: crate::cores::keys::is_low(done.one_time_key_count, &limits) }))
}

/// How many unclaimed one-time keys the calling device has.
#[utoipa::path(get, path = "/v1/keys/count", tag = "public", security(("device_token" = [])), responses(
    (status = 200, description = "The count", body = KeyCount),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn count(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let count = state.store.one_time_key_count(me.device_id).await.map_err(|_| ApiError::Unavailable)?;
    Ok(HttpResponse::Ok().json(KeyCount { one_time_key_count: count, low: crate::cores::keys::is_low(count, &state.node.ctx.limits.keys) }))
}

/// The devices and identity keys of users who share a conversation with the caller (the
/// QueryDevices frame).
#[utoipa::path(post, path = "/v1/keys/query", tag = "public", request_body = QueryBody, security(("device_token" = [])), responses(
    (status = 200, description = "Every queried user, in order", body = Vec<UserDevicesJson>),
    (status = 400, description = "bad_request", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 403, description = "no_shared_conversation", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn query(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<QueryBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let users: Vec<UserId> = body.user_ids.iter().map(|u| UserId::from_uuid(*u)).collect();
    let found = crate::keys::query(state.store.as_ref(), me.user_id, &users).await?;
    let answer: Vec<UserDevicesJson> = found
        .into_iter()
        .map(|(user, devices)| UserDevicesJson {
            user_id: user.to_string(),
            devices: devices.iter().map(|k| PublishedDeviceJson { device_id: k.device_id.to_string(), identity: identity_json(k) }).collect(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(answer))
}

/// Claims one one-time key per device (the ClaimKeys frame).
#[utoipa::path(post, path = "/v1/keys/claim", tag = "public", request_body = ClaimBody, security(("device_token" = [])), responses(
    (status = 200, description = "The keys, and the devices without one", body = ClaimAnswer),
    (status = 400, description = "bad_request", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 403, description = "no_shared_conversation", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn claim(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<ClaimBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let devices: Vec<(UserId, DeviceId)> = body.devices.iter().map(|d| (UserId::from_uuid(d.user_id), DeviceId::from_uuid(d.device_id))).collect();
    let claims = crate::keys::claim(state.store.as_ref(), me.user_id, &devices, now_ms()).await?;
    let limits = state.node.ctx.limits.keys;
    for (user, device, key, left) in &claims.keys {
        if key.fallback || crate::cores::keys::is_low(*left, &limits) {
            crate::actors::session::keys::tell_low(&state.node.ctx.router, *user, *device, *left, &limits);
        }
    }
    Ok(HttpResponse::Ok().json(ClaimAnswer {
        keys: claims
            .keys
            .iter()
            .map(|(u, d, k, _)| ClaimedKeyJson { user_id: u.to_string(), device_id: d.to_string(), key: key_json(&k.key), fallback: k.fallback })
            .collect(),
        unavailable: claims.unavailable.iter().map(|(u, d)| DeviceAddressJson { user_id: u.uuid(), device_id: d.uuid() }).collect(),
    }))
}
