//! HTTP for the conversation list ([`crate::inbox`]): a page of it, and a change to the
//! caller's state of one conversation (which reaches the user's connected devices as
//! `InboxChanged`). docs/protocol.md §"Conversation list".

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::api::{ApiError, ApiState, ErrorBody, caller};
use crate::cores::inbox::ChatUpdate;
use crate::ids::ConversationId;
use crate::inbox::{InboxEntry, InboxPage};

/// The query of `GET /v1/inbox`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// Only conversations changed after this version (the `version` of the last complete
    /// sync); 0 or absent: every conversation.
    #[serde(default)]
    #[param(minimum = 0, maximum = 9007199254740991_u64)]
    pub since: u64,
    /// Continue after this entry: the previous page's `next`.
    #[serde(default)]
    #[param(pattern = r"^([0-9]{1,19}\.[0-9]{1,19}\.[0-9]{1,19}\.[0-9a-f]{32})?$")]
    pub after: Option<String>,
    /// Page size; 0 or absent: 100; capped at 500.
    #[serde(default)]
    #[param(minimum = 0, maximum = 4294967295_u64)]
    pub limit: u64,
}

/// The largest `since` taken: versions are times in ms, far below JSON's largest exact
/// integer (2^53 - 1), which clients in JavaScript can hold.
const MAX_SAFE_VERSION: u64 = 9_007_199_254_740_991;

fn no_store<T: serde::Serialize>(body: &T) -> HttpResponse {
    HttpResponse::Ok().insert_header((actix_web::http::header::CACHE_CONTROL, "no-store")).json(body)
}

/// A page of the caller's conversation list (the same on each of the user's devices).
#[utoipa::path(get, path = "/v1/inbox", tag = "public", security(("device_token" = [])), params(InboxQuery), responses(
    (status = 200, description = "A page of the list, pinned first, then the most recent activity first", body = InboxPage),
    (status = 400, description = "bad_request: a bad query or continuation token", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn list(req: HttpRequest, state: web::Data<ApiState>, query: web::Query<InboxQuery>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let q = query.into_inner();
    if q.since > MAX_SAFE_VERSION {
        return Err(ApiError::BadRequest(format!("since: at most {MAX_SAFE_VERSION}")));
    }
    if q.limit > u64::from(u32::MAX) {
        return Err(ApiError::BadRequest(format!("limit: at most {}", u32::MAX)));
    }
    let asked = crate::inbox::PageRequest {
        since: q.since,
        after: q.after.as_deref(),
        limit: q.limit as usize,
        now_ms: crate::store::now_ms(),
        margin_ms: state.node.ctx.limits.inbox_version_margin_ms,
    };
    // Read cursors (unread counts, read times) may still be deferred at the writer.
    state.node.ctx.writer.barrier().await;
    let page = crate::inbox::page(state.store.as_ref(), me.user_id, asked).await?;
    Ok(no_store(&page))
}

/// Changes the caller's state of a conversation (mute, archive, pin, clear); the user's
/// other devices are told.
#[utoipa::path(patch, path = "/v1/inbox/{conversation_id}", tag = "public", request_body = ChatUpdate, security(("device_token" = [])),
    params(("conversation_id" = String, Path, format = Uuid, description = "The conversation")),
    responses(
        (status = 200, description = "The entry after the change", body = InboxEntry),
        (status = 400, description = "bad_request: not a UUID, an unknown field, or clearing past the last seq", body = ErrorBody),
        (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
        (status = 403, description = "not_a_member: never a member", body = ErrorBody),
        (status = 404, description = "unknown_conversation", body = ErrorBody),
        (status = 409, description = "too_many_pins: 3 are pinned already", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn change(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: web::Json<super::JsonObject>,
) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let id: ConversationId = path.parse().map_err(|_| ApiError::BadRequest("conversation_id must be a UUID".into()))?;
    let change: ChatUpdate = super::from_object(super::integral_numbers(body.into_inner()))?;
    let (entry, changed) = crate::inbox::update(state.store.as_ref(), me.user_id, id, change, crate::store::now_ms()).await?;
    if changed {
        // Every device: this one did not ask over a connection.
        crate::inbox::announce(&state.node.ctx.router, me.user_id, None, &crate::inbox::entry_frame(&entry));
    }
    Ok(no_store(&entry))
}
