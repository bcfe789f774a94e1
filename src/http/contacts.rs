//! HTTP for contact discovery ([`crate::contacts`]): a device submits its address book's
//! numbers and learns which belong to users; it removes numbers deleted from the address
//! book. docs/protocol.md §"Contact discovery".

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::api::{ApiState, ErrorBody, caller};
use crate::contacts::Discovered;

/// `POST /v1/contacts/discover` and `POST /v1/contacts/remove`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NumbersBody {
    /// Phone numbers as written in the address book (any spelling registration accepts);
    /// at most 1000.
    #[schema(max_items = 1000, example = json!(["+1 415 555 0123", "(415) 555-0199"]))]
    pub phones: Vec<String>,
    /// ISO 3166-1 alpha-2 country of numbers written without a country code (the user's
    /// own country, as an app knows it).
    #[serde(default)]
    #[schema(example = "US")]
    pub region: Option<String>,
}

/// Which submitted numbers belong to users; the valid ones join the caller's contacts.
#[utoipa::path(post, path = "/v1/contacts/discover", tag = "public", request_body = NumbersBody, security(("device_token" = [])), responses(
    (status = 200, description = "The numbers that belong to users, and the strings that are not phone numbers", body = Discovered),
    (status = 400, description = "bad_request: a malformed body", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 413, description = "too_many_numbers (over 1000 in one request), or a body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 429, description = "rate_limited: the numbers new to this account exceed its daily discovery budget (Retry-After); nothing was looked up", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn discover(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<NumbersBody>) -> Result<HttpResponse, super::api::ApiError> {
    let me = caller(&req, &state).await?;
    let found = state.contacts.discover(me.user_id, &body.phones, body.region.as_deref()).await?;
    Ok(HttpResponse::Ok().insert_header((actix_web::http::header::CACHE_CONTROL, "no-store")).json(found))
}

/// Removes numbers from the caller's contacts (deleted from the address book).
#[utoipa::path(post, path = "/v1/contacts/remove", tag = "public", request_body = NumbersBody, security(("device_token" = [])), responses(
    (status = 204, description = "Removed (numbers not in the contacts, and invalid strings, are ignored)"),
    (status = 400, description = "bad_request: a malformed body", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 413, description = "too_many_numbers (over 1000 in one request), or a body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn remove(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<NumbersBody>) -> Result<HttpResponse, super::api::ApiError> {
    let me = caller(&req, &state).await?;
    state.contacts.forget(me.user_id, &body.phones, body.region.as_deref()).await?;
    Ok(HttpResponse::NoContent().finish())
}
