//! HTTP for device pairing ([`crate::pairing`]): the new device starts a pairing (no
//! token: it has none yet) and claims its own token once the primary approved the code
//! over its connection (`ApprovePairing`). docs/protocol.md §"Device pairing".

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{ApiError, ApiState, ErrorBody};
use crate::accounts::DeviceCredentials;
use crate::pairing::PairingStarted;

/// `POST /v1/pairing`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PairingStartBody {
    /// The new device's name: 1 to 64 characters, not all blank; trimmed.
    #[schema(min_length = 1, max_length = 64, pattern = r"[^\s]", example = "Chrome on Linux")]
    pub device_name: String,
}

/// `POST /v1/pairing/claim`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PairingClaimBody {
    /// The code the pairing started with.
    pub code: String,
    /// The claim secret the pairing started with.
    pub claim_secret: String,
    /// Seconds to wait for the approval before answering 202 (0 to 30, default 25;
    /// fractions allowed).
    #[serde(default = "default_wait")]
    #[schema(minimum = 0, maximum = 30)]
    pub wait_s: f64,
}

fn default_wait() -> f64 {
    25.0
}

/// The answer while the approval has not come.
#[derive(Debug, Serialize, ToSchema)]
pub struct PairingPending {
    /// `pending`.
    pub status: &'static str,
}

/// Starts a pairing for a new device: show `qr` as a QR code (or `code` as text) for the
/// primary device to approve, then claim the token.
#[utoipa::path(post, path = "/v1/pairing", tag = "public", request_body = PairingStartBody, responses(
    (status = 201, description = "Pairing started (valid 120 s, single-use)", body = PairingStarted),
    (status = 400, description = "invalid_name, or a malformed body", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 429, description = "rate_limited: this address's registrations and pairings (Retry-After)", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn start(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<PairingStartBody>) -> Result<HttpResponse, ApiError> {
    let started = state.accounts.start_pairing(&body.device_name, req.peer_addr().map(|a| a.ip())).await?;
    Ok(HttpResponse::Created().insert_header((actix_web::http::header::CACHE_CONTROL, "no-store")).json(started))
}

/// The new device claims its token: waits up to `wait_s` for the primary's approval.
#[utoipa::path(post, path = "/v1/pairing/claim", tag = "public", request_body = PairingClaimBody, responses(
    (status = 200, description = "Approved: the new device's own credentials (shown once)", body = DeviceCredentials),
    (status = 202, description = "Not approved yet: claim again", body = PairingPending),
    (status = 400, description = "bad_request: a malformed body", body = ErrorBody),
    (status = 404, description = "unknown_pairing: unknown, used or expired code, or a wrong claim secret", body = ErrorBody),
    (status = 409, description = "too_many_devices: the account filled up since the approval (the pairing is used up)", body = ErrorBody),
    (status = 429, description = "rate_limited: this address's claims (Retry-After)", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn claim(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<PairingClaimBody>) -> Result<HttpResponse, ApiError> {
    let wait = Duration::from_secs_f64(body.wait_s.clamp(0.0, crate::pairing::MAX_CLAIM_WAIT.as_secs_f64()));
    match state.accounts.claim_pairing(&body.code, &body.claim_secret, wait, req.peer_addr().map(|a| a.ip())).await? {
        Some(credentials) => {
            // The account has a new device: those who share keys with the user must know.
            crate::to_device::device_list_changed(
                state.store.as_ref(),
                &state.node.ctx.router,
                credentials.user_id,
                Some(credentials.device_id),
                crate::store::now_ms(),
            )
            .await;
            Ok(HttpResponse::Ok().insert_header((actix_web::http::header::CACHE_CONTROL, "no-store")).json(credentials))
        }
        None => Ok(HttpResponse::Accepted().json(PairingPending { status: "pending" })),
    }
}
