//! HTTP for an account's lifecycle ([`crate::lifecycle`]): changing its number (a code to
//! the new number, then its check), deleting it, exporting its data. docs/protocol.md
//! §12 "Account lifecycle".

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{ApiError, ApiState, ErrorBody, RegisterBody, caller};
use crate::lifecycle::delete::Deleted;
use crate::lifecycle::export::Export;

/// The new number and the code sent to it.
#[derive(Deserialize, ToSchema)]
pub struct NumberCodeBody {
    /// The new number, written as in the request for the code.
    #[schema(example = "+14155550002", max_length = 64)]
    pub phone: String,
    /// As in the request for the code.
    #[serde(default)]
    pub region: Option<String>,
    /// The one-time code sent to the new number.
    #[schema(example = "123456", max_length = 64)]
    pub code: String,
    /// The one-time code sent to the old number at the same time.
    #[schema(example = "654321", max_length = 64)]
    pub old_code: String,
}

/// The codes sent for a number change.
#[derive(Serialize, ToSchema)]
pub struct NumberCodesIssued {
    /// Seconds until the codes expire.
    pub expires_in_s: u64,
    /// The new number's code, only in development mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_code: Option<String>,
    /// The old number's code, only in development mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_old_code: Option<String>,
}

/// The account's number after a change.
#[derive(Serialize, ToSchema)]
pub struct NumberChanged {
    /// E.164.
    pub phone: String,
}

/// Sends one-time codes to the number the account moves to and to its current number
/// (primary device only): both prove the change.
#[utoipa::path(post, path = "/v1/account/number", tag = "public", request_body = RegisterBody, security(("device_token" = [])), responses(
    (status = 202, description = "Codes issued to the new and the old number", body = NumberCodesIssued),
    (status = 400, description = "invalid_phone, or a malformed body", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 403, description = "not_primary", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 429, description = "rate_limited: the number's cooldown or daily cap, or this address's (Retry-After)", body = ErrorBody),
    (status = 502, description = "code_not_sent", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn request_number(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<RegisterBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    if !me.primary {
        return Err(crate::accounts::AccountError::NotPrimary.into());
    }
    let from = req.peer_addr().map(|a| a.ip());
    let old = state.store.user(me.user_id).await.map_err(|_| ApiError::Unavailable)?.ok_or(ApiError::Unauthorized)?.phone;
    let new = state.accounts.register(&body.phone, body.region.as_deref(), from).await?;
    let old = state.accounts.register(&old, None, from).await?;
    Ok(HttpResponse::Accepted().json(NumberCodesIssued { expires_in_s: new.expires_in_s, dev_code: new.dev_code, dev_old_code: old.dev_code }))
}

/// Moves the account to the new number once both codes check (primary device only); the
/// user's devices and the 1:1 peers who had the old number get `NumberChanged`.
#[utoipa::path(post, path = "/v1/account/number/verify", tag = "public", request_body = NumberCodeBody, security(("device_token" = [])), responses(
    (status = 200, description = "The account has the new number", body = NumberChanged),
    (status = 400, description = "invalid_phone, or a malformed body", body = ErrorBody),
    (status = 401, description = "invalid_code (either code wrong, expired or used), unauthorized or device_revoked", body = ErrorBody),
    (status = 403, description = "not_primary", body = ErrorBody),
    (status = 409, description = "number_taken: another account has this number", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 429, description = "rate_limited: the number's attempts (Retry-After)", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn verify_number(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<NumberCodeBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let proof = crate::lifecycle::number::Proof {
        phone: &body.phone,
        region: body.region.as_deref(),
        code: &body.code,
        old_code: &body.old_code,
        from: req.peer_addr().map(|a| a.ip()),
    };
    let phone = crate::lifecycle::number::change(&state.accounts, state.store.as_ref(), &state.node.ctx.router, &me, proof).await?;
    Ok(HttpResponse::Ok().json(NumberChanged { phone }))
}

/// Deletes the account (primary device only), confirmed by its number.
#[utoipa::path(post, path = "/v1/account/delete", tag = "public", request_body = RegisterBody, security(("device_token" = [])), responses(
    (status = 200, description = "Deleted: every device revoked and disconnected, groups left, data removed", body = Deleted),
    (status = 400, description = "wrong_number (not this account's), invalid_phone, or a malformed body", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 403, description = "not_primary", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn delete(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<RegisterBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let deleted = crate::lifecycle::delete::delete(&state.node.ctx, &state.media, &me, &body.phone, body.region.as_deref()).await?;
    Ok(HttpResponse::Ok().json(deleted))
}

/// A JSON archive of the caller's account (any of its devices; 5 per day).
#[utoipa::path(get, path = "/v1/account/export", tag = "public", security(("device_token" = [])), responses(
    (status = 200, description = "The archive", body = Export),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 429, description = "rate_limited: 5 exports per day (Retry-After)", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn export(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let archive = crate::lifecycle::export::export(state.store.as_ref(), me.user_id).await?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .insert_header((actix_web::http::header::CONTENT_DISPOSITION, "attachment; filename=\"switchboard-export.json\""))
        .json(archive))
}
