//! HTTP for privacy settings and the block list (WhatsApp's model; the rules are
//! `cores::privacy`). A change reaches every session of the user (they reload their rules
//! and tell their devices with `PrivacyChanged`) and, for a block, the sessions of the
//! blocked user. docs/protocol.md §"Privacy and blocking".

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{ApiError, ApiState, ErrorBody, caller};
use crate::cores::privacy::{Audience, OnlineAudience, PrivacySettings};
use crate::ids::UserId;
use crate::protocol::RequestError;
use crate::store::now_ms;

/// `PATCH /v1/privacy`: the settings to change; absent ones stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyPatch {
    /// Who sees the user's last-seen time.
    pub last_seen: Option<Audience>,
    /// Who sees that the user is online.
    pub online: Option<OnlineAudience>,
    /// Who may add the user to groups.
    pub groups: Option<Audience>,
    /// Who sees the profile photo.
    pub profile_photo: Option<Audience>,
    /// Who sees the "about" line.
    pub about: Option<Audience>,
    /// Whether the user sends (and so sees) read receipts in 1:1 conversations.
    pub read_receipts: Option<bool>,
}

/// `GET /v1/blocks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlockList {
    /// The users the caller blocked.
    #[schema(value_type = Vec<String>)]
    pub blocked: Vec<UserId>,
}

/// The caller's privacy settings.
#[utoipa::path(get, path = "/v1/privacy", tag = "public", security(("device_token" = [])), responses(
    (status = 200, description = "The settings", body = PrivacySettings),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn get_settings(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let settings = state.store.privacy(me.user_id).await.map_err(|_| ApiError::Unavailable)?;
    Ok(HttpResponse::Ok().insert_header((actix_web::http::header::CACHE_CONTROL, "no-store")).json(settings))
}

/// Changes some of the caller's privacy settings; answers all of them.
#[utoipa::path(patch, path = "/v1/privacy", tag = "public", request_body = PrivacyPatch, security(("device_token" = [])), responses(
    (status = 200, description = "The settings after the change", body = PrivacySettings),
    (status = 400, description = "bad_request: an unknown field or value", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn change_settings(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<super::JsonObject>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let patch: PrivacyPatch = super::from_object(body.into_inner())?;
    let mut settings = state.store.privacy(me.user_id).await.map_err(|_| ApiError::Unavailable)?;
    settings.last_seen = patch.last_seen.unwrap_or(settings.last_seen);
    settings.online = patch.online.unwrap_or(settings.online);
    settings.groups = patch.groups.unwrap_or(settings.groups);
    settings.profile_photo = patch.profile_photo.unwrap_or(settings.profile_photo);
    settings.about = patch.about.unwrap_or(settings.about);
    settings.read_receipts = patch.read_receipts.unwrap_or(settings.read_receipts);
    state.store.set_privacy(me.user_id, settings).await.map_err(|_| ApiError::Unavailable)?;
    crate::privacy::notify(&state.node.ctx.router, &[me.user_id], me.user_id);
    Ok(HttpResponse::Ok().insert_header((actix_web::http::header::CACHE_CONTROL, "no-store")).json(settings))
}

/// Whom the caller blocked.
#[utoipa::path(get, path = "/v1/blocks", tag = "public", security(("device_token" = [])), responses(
    (status = 200, description = "The block list", body = BlockList),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn list_blocks(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let mut blocked = state.store.blocks_of(me.user_id).await.map_err(|_| ApiError::Unavailable)?;
    blocked.sort();
    Ok(HttpResponse::Ok().insert_header((actix_web::http::header::CACHE_CONTROL, "no-store")).json(BlockList { blocked }))
}

/// The user of a `/v1/blocks/{user_id}` path: an existing user other than the caller.
async fn target(state: &ApiState, me: UserId, raw: &str) -> Result<UserId, ApiError> {
    let target: UserId = raw.parse().map_err(|_| ApiError::BadRequest("user_id must be a UUID".into()))?;
    if target == me {
        return Err(ApiError::BadRequest("you cannot block yourself".into()));
    }
    if state.store.user(target).await.map_err(|_| ApiError::Unavailable)?.is_none() {
        return Err(ApiError::Request(RequestError::UnknownUser(target.to_string())));
    }
    Ok(target)
}

/// Tells both users' sessions that the block between them changed: the caller's reload
/// their rules and tell their devices; the target's reload theirs, silently.
fn notify_both(state: &ApiState, me: UserId, target: UserId) {
    crate::privacy::notify(&state.node.ctx.router, &[me, target], me);
}

/// Blocks a user.
#[utoipa::path(put, path = "/v1/blocks/{user_id}", tag = "public", security(("device_token" = [])),
    params(("user_id" = String, Path, format = Uuid, description = "The user to block")),
    responses(
        (status = 204, description = "Blocked (also when already blocked)"),
        (status = 400, description = "bad_request: not a UUID, or the caller", body = ErrorBody),
        (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
        (status = 404, description = "unknown_user", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn block(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let target = target(&state, me.user_id, &path).await?;
    state.store.set_blocked(me.user_id, target, true, now_ms()).await.map_err(|_| ApiError::Unavailable)?;
    // Told even when nothing changed: a retry after a lost answer must still reach the
    // sessions (reloading is idempotent). The caller's sessions then tell the blocked user
    // that the caller is offline to them.
    notify_both(&state, me.user_id, target);
    Ok(HttpResponse::NoContent().finish())
}

/// Unblocks a user.
#[utoipa::path(delete, path = "/v1/blocks/{user_id}", tag = "public", security(("device_token" = [])),
    params(("user_id" = String, Path, format = Uuid, description = "The user to unblock")),
    responses(
        (status = 204, description = "Unblocked (also when not blocked)"),
        (status = 400, description = "bad_request: not a UUID, or the caller", body = ErrorBody),
        (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
        (status = 404, description = "unknown_user", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn unblock(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let target = target(&state, me.user_id, &path).await?;
    state.store.set_blocked(me.user_id, target, false, now_ms()).await.map_err(|_| ApiError::Unavailable)?;
    notify_both(&state, me.user_id, target);
    // Device-list notices skipped the pair during the block (their 1:1 did not count):
    // both should query each other's devices again.
    for user in [me.user_id, target] {
        crate::to_device::device_list_changed(state.store.as_ref(), &state.node.ctx.router, user, None, now_ms()).await;
    }
    Ok(HttpResponse::NoContent().finish())
}
