//! HTTP for profiles ([`crate::profiles`]): the caller's own, changes to it (which reach
//! contacts and conversation members as `ProfileChanged`), and another user's as the
//! caller may see it. docs/protocol.md §"Profiles".

use actix_web::{HttpRequest, HttpResponse, web};

use super::api::{ApiError, ApiState, ErrorBody, caller};
use crate::ids::UserId;
use crate::profiles::{ProfileAnswer, ProfilePatch};

fn no_store(answer: &ProfileAnswer) -> HttpResponse {
    HttpResponse::Ok().insert_header((actix_web::http::header::CACHE_CONTROL, "no-store")).json(answer)
}

/// The caller's profile.
#[utoipa::path(get, path = "/v1/profile", tag = "public", security(("device_token" = [])), responses(
    (status = 200, description = "The profile (empty name: never set)", body = ProfileAnswer),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn mine(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    Ok(no_store(&crate::profiles::view(state.store.as_ref(), me.user_id, me.user_id).await?))
}

/// Changes the caller's profile; contacts and conversation members are told.
#[utoipa::path(patch, path = "/v1/profile", tag = "public", request_body = ProfilePatch, security(("device_token" = [])), responses(
    (status = 200, description = "The profile after the change", body = ProfileAnswer),
    (status = 400, description = "bad_request: a name, about or photo out of bounds, or an unknown field", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn change(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<super::JsonObject>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let patch: ProfilePatch = super::from_object(body.into_inner())?;
    let (_, changed) = crate::profiles::change(state.store.as_ref(), me.user_id, patch).await?;
    // A replaced or removed photo is no longer served.
    for id in &changed.dropped_photo {
        if let Err(e) = state.media.delete_public_image(me.user_id, *id).await {
            tracing::warn!(media = %id, error = %e, "old profile photo not deleted (the sweep does not take public images)");
        }
    }
    if let Err(e) = crate::profiles::tell_changed(state.store.as_ref(), &state.node.ctx.router, me.user_id, changed).await {
        // Stored; only the live notice is missed (devices fetch profiles when they show them).
        tracing::warn!(user = %me.user_id, error = %e, "profile change not told");
    }
    Ok(no_store(&crate::profiles::view(state.store.as_ref(), me.user_id, me.user_id).await?))
}

/// Another user's profile, as the caller may see it (photo and about within the owner's
/// privacy settings; across a block, the name only).
#[utoipa::path(get, path = "/v1/profiles/{user_id}", tag = "public", security(("device_token" = [])),
    params(("user_id" = String, Path, format = Uuid, description = "Whose profile")),
    responses(
        (status = 200, description = "The profile as the caller may see it", body = ProfileAnswer),
        (status = 400, description = "bad_request: not a UUID", body = ErrorBody),
        (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
        (status = 404, description = "unknown_user", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn of_user(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let owner: UserId = path.parse().map_err(|_| ApiError::BadRequest("user_id must be a UUID".into()))?;
    Ok(no_store(&crate::profiles::view(state.store.as_ref(), me.user_id, owner).await?))
}
