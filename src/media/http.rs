//! The HTTP shell of the media service (actix-web): tus 1.0 under `/v1/media`, downloads,
//! signed URLs and public image uploads. Every decision is made by `service`, `tus`,
//! `range` or `signed`; this file translates headers and statuses (docs/media.md).
//!
//! | route | what |
//! | --- | --- |
//! | `OPTIONS /v1/media` | tus discovery (`Tus-Version`, `Tus-Extension`, `Tus-Max-Size`, `Tus-Checksum-Algorithm`) |
//! | `POST /v1/media` | tus creation → 201, `Location: /v1/media/{id}` |
//! | `HEAD /v1/media/{id}` | tus offset (owner only) |
//! | `PATCH /v1/media/{id}` | tus chunk → 204 `Upload-Offset` |
//! | `DELETE /v1/media/{id}` | tus termination (owner only) |
//! | `GET /v1/media/{id}` | download (Range, ETag, immutable caching), members and the owner |
//! | `GET /v1/media/{id}/url` | a signed, short-lived download URL |
//! | `GET /v1/media/blob/{sha256}?expires=&sig=` | download by signed URL, no token, no database |
//! | `POST /v1/media/public` | a public image → metadata-free renditions (96 and 640 px) |

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use futures_util::StreamExt;

use super::range::{self, RangeAnswer};
use super::service::{Download, MediaError, MediaService, PatchRequest};
use super::signed::SignedUrlError;
use super::tus::{self, TusError};
use crate::accounts::Accounts;
use crate::ids::{MediaId, UserId};
use crate::store::MediaRecord;

/// The tus protocol version every request but `OPTIONS` carries in `Tus-Resumable`.
#[derive(utoipa::ToSchema)]
pub enum TusVersion {
    /// tus 1.0.0, the only version served.
    #[schema(rename = "1.0.0")]
    V1_0_0,
}

/// The answer to a creation.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct CreatedUpload {
    /// The upload's media id (also in `Location`).
    #[schema(value_type = String, format = Uuid)]
    pub media_id: MediaId,
}

/// A signed download URL.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SignedUrl {
    /// Path and query of the URL (`/v1/media/blob/{sha256}?expires=…&sig=…`), served
    /// without a token by any node or a CDN in front of it.
    pub url: String,
    /// When it expires, seconds since the Unix epoch.
    pub expires: u64,
}

/// The renditions of a public image.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Renditions {
    /// One per size, smallest first.
    pub renditions: Vec<super::service::StoredRendition>,
}

/// What the media handlers need.
#[derive(Clone)]
pub struct MediaState {
    /// The service.
    pub media: MediaService,
    /// Bearer tokens → devices.
    pub accounts: Accounts,
}

/// Registers the media routes (the signed blob route before `{id}`, which would match it).
pub fn routes(cfg: &mut web::ServiceConfig) {
    // Each path answers its own methods, and 405 with `Allow` to any other.
    use crate::http::api::resource;
    cfg.service(
        resource("/v1/media", &["OPTIONS", "POST"]).route(web::method(actix_web::http::Method::OPTIONS).to(options)).route(web::post().to(create)),
    )
    .service(resource("/v1/media/public", &["POST"]).route(web::post().to(public_image)))
    .service(resource("/v1/media/blob/{digest}", &["GET"]).route(web::get().to(signed_download)))
    .service(resource("/v1/media/{id}/url", &["GET"]).route(web::get().to(signed_url)))
    .service(
        resource("/v1/media/{id}", &["HEAD", "PATCH", "DELETE", "GET"])
            .route(web::head().to(head))
            .route(web::patch().to(patch))
            .route(web::delete().to(terminate))
            .route(web::get().to(download)),
    );
}

/// An answer with `Tus-Resumable`, as every tus response but OPTIONS must carry.
fn tus_response(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    b.insert_header(("Tus-Resumable", tus::VERSION)).insert_header((header::CACHE_CONTROL, "no-store"));
    b
}

fn error_response(e: &MediaError) -> HttpResponse {
    let (status, code) = match e {
        MediaError::Tus(t) => (StatusCode::from_u16(t.status()).unwrap_or(StatusCode::BAD_REQUEST), t.code()),
        MediaError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        MediaError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
        MediaError::Locked => (StatusCode::LOCKED, "locked"),
        MediaError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        MediaError::Incomplete { .. } => (StatusCode::CONFLICT, "incomplete"),
        MediaError::Store(_) | MediaError::Blob(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        MediaError::Image(super::public_image::ImageError::TooLarge(_)) => (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
        MediaError::Image(super::public_image::ImageError::NotAnImage(_)) => (StatusCode::BAD_REQUEST, "not_an_image"),
        MediaError::Image(super::public_image::ImageError::Encode(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        MediaError::Signed(SignedUrlError::Expired) => (StatusCode::FORBIDDEN, "url_expired"),
        MediaError::Signed(SignedUrlError::BadSignature) => (StatusCode::FORBIDDEN, "bad_signature"),
    };
    if matches!(e, MediaError::Store(_) | MediaError::Blob(_)) {
        tracing::warn!(error = %e, "media request failed");
    }
    let mut b = tus_response(status);
    match e {
        MediaError::Tus(TusError::UnsupportedVersion) => {
            b.insert_header(("Tus-Version", tus::VERSION));
        }
        MediaError::Tus(TusError::RateLimited { retry_after_secs }) => {
            b.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        _ => {}
    }
    b.json(serde_json::json!({ "error": code, "message": e.to_string() }))
}

fn unauthorized() -> HttpResponse {
    tus_response(StatusCode::UNAUTHORIZED).json(serde_json::json!({ "error": "unauthorized", "message": "missing or invalid bearer token" }))
}

/// The same 401 as the rest of the API gives a revoked device's token.
fn device_revoked() -> HttpResponse {
    tus_response(StatusCode::UNAUTHORIZED).json(serde_json::json!({ "error": "device_revoked", "message": "this device was revoked" }))
}

fn header_str<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The authenticated user, or the 401 to answer.
async fn caller(req: &HttpRequest, state: &MediaState) -> Result<UserId, HttpResponse> {
    let token = crate::http::bearer(req).ok_or_else(unauthorized)?;
    state.accounts.authenticate(token).await.map(|d| d.user_id).map_err(|e| match e {
        crate::accounts::AuthError::Store(_) => error_response(&MediaError::Store(crate::store::StoreError::Backend("accounts".into()))),
        crate::accounts::AuthError::Revoked => device_revoked(),
        crate::accounts::AuthError::InvalidToken => unauthorized(),
    })
}

/// The media id of a path; an unparseable one names no media.
fn media_id(path: &str) -> Result<MediaId, MediaError> {
    path.parse().map_err(|_| MediaError::NotFound)
}

/// `Upload-Expires` (RFC 9110 date).
fn expires_header(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    header::HttpDate::from(at).to_string()
}

/// tus discovery: the version, extensions, maximum size and checksum algorithms.
#[utoipa::path(options, path = "/v1/media", tag = "public", responses(
    (status = 204, description = "tus discovery", headers(
        ("Tus-Version" = String, description = "1.0.0"),
        ("Tus-Extension" = String, description = "creation,checksum,termination,expiration"),
        ("Tus-Max-Size" = u64, description = "Largest upload, bytes"),
        ("Tus-Checksum-Algorithm" = String, description = "sha1,sha256"),
    )),
))]
pub async fn options(state: web::Data<MediaState>) -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(("Tus-Resumable", tus::VERSION))
        .insert_header(("Tus-Version", tus::VERSION))
        .insert_header(("Tus-Extension", tus::EXTENSIONS))
        .insert_header(("Tus-Max-Size", state.media.config().max_upload_bytes.to_string()))
        .insert_header(("Tus-Checksum-Algorithm", tus::CHECKSUM_ALGORITHMS))
        .finish()
}

/// tus creation: a new upload of `Upload-Length` bytes, counted against the caller's quota
/// and upload rate from now on (docs/media.md).
#[utoipa::path(post, path = "/v1/media", tag = "public", security(("device_token" = [])), params(
    ("Tus-Resumable" = TusVersion, Header, description = "tus version: 1.0.0 (else 412 with Tus-Version)"),
    ("Upload-Length" = u64, Header, minimum = 0, description = "Total bytes of the (encrypted) file"),
    ("Upload-Metadata" = Option<String>, Header, description = "tus metadata: comma-separated `key base64(value)`; `sha256` (base64 of the 32-byte SHA-256 of the bytes) is checked on completion"),
), responses(
    (status = 201, description = "Created", body = CreatedUpload, headers(
        ("Location" = String, description = "/v1/media/{id}"),
        ("Upload-Offset" = u64, description = "0 (the whole file when Upload-Length is 0)"),
    )),
    (status = 400, description = "bad_header, length_required (Upload-Length missing or not a number; bad Upload-Metadata)", body = crate::http::api::ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = crate::http::api::ErrorBody),
    (status = 412, description = "unsupported_version: Tus-Resumable is not 1.0.0", body = crate::http::api::ErrorBody),
    (status = 503, description = "unavailable: the store or the blob store", body = crate::http::api::ErrorBody),
    (status = 413, description = "too_large or quota_exceeded", body = crate::http::api::ErrorBody),
    (status = 429, description = "rate_limited (Retry-After says when)", body = crate::http::api::ErrorBody),
))]
pub async fn create(req: HttpRequest, state: web::Data<MediaState>) -> HttpResponse {
    // Who asks first: without a valid token the answer is 401 whatever else is wrong.
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(e) = tus::check_version(header_str(&req, "Tus-Resumable")) {
        return error_response(&e.into());
    }
    if req.headers().contains_key("Upload-Defer-Length") && !req.headers().contains_key("Upload-Length") {
        return error_response(&TusError::LengthRequired.into());
    }
    let length = match tus::parse_u64("Upload-Length", header_str(&req, "Upload-Length")) {
        Ok(l) => l,
        Err(e) => return error_response(&e.into()),
    };
    match state.media.create(user, length, header_str(&req, "Upload-Metadata")).await {
        Ok(record) => {
            let mut b = tus_response(StatusCode::CREATED);
            b.insert_header((header::LOCATION, format!("/v1/media/{}", record.media_id)));
            b.insert_header(("Upload-Offset", record.offset.to_string()));
            if !record.is_complete() {
                b.insert_header(("Upload-Expires", expires_header(state.media.expires_ms(&record))));
            }
            b.json(serde_json::json!({ "media_id": record.media_id }))
        }
        Err(e) => error_response(&e),
    }
}

fn upload_headers(b: &mut HttpResponseBuilder, state: &MediaState, record: &MediaRecord) {
    b.insert_header(("Upload-Offset", record.offset.to_string())).insert_header(("Upload-Length", record.length.to_string()));
    if !record.metadata.is_empty()
        && let Ok(v) = HeaderValue::from_str(&record.metadata)
    {
        b.insert_header(("Upload-Metadata", v));
    }
    if !record.is_complete() {
        b.insert_header(("Upload-Expires", expires_header(state.media.expires_ms(record))));
    }
}

/// tus offset: how much of an upload is stored (the uploader only).
#[utoipa::path(head, path = "/v1/media/{id}", tag = "public", security(("device_token" = [])), params(("Tus-Resumable" = TusVersion, Header, description = "tus version: 1.0.0 (else 412 with Tus-Version)"), ("id" = String, Path, description = "Media id (UUID); anything else names no media (404)")), responses(
    (status = 200, description = "The upload's state", headers(
        ("Upload-Offset" = u64, description = "Bytes stored"),
        ("Upload-Length" = u64, description = "Declared length"),
    )),
    (status = 401, description = "unauthorized or device_revoked"),
    (status = 403, description = "forbidden: not the uploader"),
    (status = 404, description = "not_found"),
    (status = 412, description = "unsupported_version"),
    (status = 503, description = "unavailable"),
))]
pub async fn head(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>) -> HttpResponse {
    // Who asks first: without a valid token the answer is 401 whatever else is wrong.
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(e) = tus::check_version(header_str(&req, "Tus-Resumable")) {
        return error_response(&e.into());
    }
    let id = match media_id(&path) {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    match state.media.upload_of(user, id).await {
        Ok(record) => {
            let mut b = tus_response(StatusCode::OK);
            upload_headers(&mut b, &state, &record);
            b.finish()
        }
        Err(e) => error_response(&e),
    }
}

/// tus chunk: appends the body at `Upload-Offset` (the uploader only); the chunk that
/// reaches `Upload-Length` completes the upload once every byte is durable.
#[utoipa::path(patch, path = "/v1/media/{id}", tag = "public", security(("device_token" = [])), params(
    ("Tus-Resumable" = TusVersion, Header, description = "tus version: 1.0.0 (else 412 with Tus-Version)"), ("id" = String, Path, description = "Media id (UUID); anything else names no media (404)"),
    ("Upload-Offset" = u64, Header, minimum = 0, description = "Where this chunk starts: the upload's current offset"),
    ("Upload-Checksum" = Option<String>, Header, description = "`sha1 <base64>` or `sha256 <base64>` of this chunk (checksum extension)"),
), request_body(content = Vec<u8>, content_type = "application/offset+octet-stream", description = "The chunk"), responses(
    (status = 204, description = "Stored", headers(("Upload-Offset" = u64, description = "The new offset"))),
    (status = 400, description = "bad_header or unsupported_checksum", body = crate::http::api::ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = crate::http::api::ErrorBody),
    (status = 412, description = "unsupported_version: Tus-Resumable is not 1.0.0", body = crate::http::api::ErrorBody),
    (status = 503, description = "unavailable: the store or the blob store", body = crate::http::api::ErrorBody),
    (status = 403, description = "forbidden: not the uploader", body = crate::http::api::ErrorBody),
    (status = 404, description = "not_found", body = crate::http::api::ErrorBody),
    (status = 409, description = "offset_mismatch (HEAD says where to resume) or already complete", body = crate::http::api::ErrorBody),
    (status = 413, description = "past_length: the chunk goes past Upload-Length", body = crate::http::api::ErrorBody),
    (status = 415, description = "wrong_content_type", body = crate::http::api::ErrorBody),
    (status = 423, description = "locked: another PATCH of this upload is running", body = crate::http::api::ErrorBody),
    (status = 460, description = "checksum_mismatch (tus checksum extension): nothing of the chunk, or of the file, is kept", body = crate::http::api::ErrorBody),
))]
pub async fn patch(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>, body: web::Payload) -> HttpResponse {
    // Who asks first: without a valid token the answer is 401 whatever else is wrong.
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(e) = tus::check_version(header_str(&req, "Tus-Resumable")) {
        return error_response(&e.into());
    }
    let id = match media_id(&path) {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    let offset = match tus::parse_u64("Upload-Offset", header_str(&req, "Upload-Offset")) {
        Ok(o) => o,
        Err(e) => return error_response(&e.into()),
    };
    let content_length = header_str(&req, "Content-Length").and_then(|v| v.trim().parse().ok());
    let chunk =
        PatchRequest { content_type: header_str(&req, "Content-Type"), offset, content_length, checksum: header_str(&req, "Upload-Checksum") };
    let result = state.media.patch(user, id, chunk, body).await;
    match result {
        Ok(record) => {
            let mut b = tus_response(StatusCode::NO_CONTENT);
            b.insert_header(("Upload-Offset", record.offset.to_string()));
            if !record.is_complete() {
                b.insert_header(("Upload-Expires", expires_header(state.media.expires_ms(&record))));
            }
            b.finish()
        }
        Err(e) => error_response(&e),
    }
}

/// tus termination: deletes an upload (the uploader only; not one a message references).
#[utoipa::path(delete, path = "/v1/media/{id}", tag = "public", security(("device_token" = [])), params(("Tus-Resumable" = TusVersion, Header, description = "tus version: 1.0.0 (else 412 with Tus-Version)"), ("id" = String, Path, description = "Media id (UUID); anything else names no media (404)")), responses(
    (status = 204, description = "Deleted"),
    (status = 401, description = "unauthorized or device_revoked", body = crate::http::api::ErrorBody),
    (status = 412, description = "unsupported_version: Tus-Resumable is not 1.0.0", body = crate::http::api::ErrorBody),
    (status = 503, description = "unavailable: the store or the blob store", body = crate::http::api::ErrorBody),
    (status = 403, description = "forbidden: not the uploader", body = crate::http::api::ErrorBody),
    (status = 404, description = "not_found", body = crate::http::api::ErrorBody),
    (status = 409, description = "conflict: messages reference it, or it changed meanwhile", body = crate::http::api::ErrorBody),
    (status = 423, description = "locked: a PATCH of this upload is running", body = crate::http::api::ErrorBody),
))]
pub async fn terminate(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>) -> HttpResponse {
    // Who asks first: without a valid token the answer is 401 whatever else is wrong.
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(e) = tus::check_version(header_str(&req, "Tus-Resumable")) {
        return error_response(&e.into());
    }
    let id = match media_id(&path) {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    match state.media.terminate(user, id).await {
        Ok(()) => tus_response(StatusCode::NO_CONTENT).finish(),
        Err(e) => error_response(&e),
    }
}

/// Serves a blob: `If-None-Match` → 304, `Range` → 206 or 416, else 200; the content is
/// immutable (content-addressed), so it may be cached for a year under `cache_control`.
async fn serve(req: &HttpRequest, state: &MediaState, download: Download, content_type: &str, cache_control: String) -> HttpResponse {
    let etag = format!("\"{}\"", hex::encode(download.digest));
    let common = |b: &mut HttpResponseBuilder| {
        b.insert_header((header::ETAG, etag.clone()))
            .insert_header((header::CACHE_CONTROL, cache_control.clone()))
            .insert_header((header::ACCEPT_RANGES, "bytes"));
    };
    if header_str(req, "If-None-Match").is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        let mut b = HttpResponse::NotModified();
        common(&mut b);
        return b.finish();
    }
    let size = download.size;
    let (status, range) = match range::answer(header_str(req, "Range"), size) {
        RangeAnswer::Whole => (StatusCode::OK, None),
        RangeAnswer::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, Some((start, end))),
        RangeAnswer::Unsatisfiable => {
            let mut b = HttpResponse::RangeNotSatisfiable();
            common(&mut b);
            return b.insert_header((header::CONTENT_RANGE, format!("bytes */{size}"))).finish();
        }
    };
    if size == 0 {
        let mut b = HttpResponse::Ok();
        common(&mut b);
        return b.content_type(content_type).finish();
    }
    let stream = match state.media.read(&download, range).await {
        Ok(s) => s,
        Err(e) => return error_response(&e),
    };
    let len = range.map(|(s, e)| e - s + 1).unwrap_or(size);
    metrics::counter!("switchboard_media_downloads_total").increment(1);
    let counted = stream.inspect(|chunk| {
        if let Ok(bytes) = chunk {
            metrics::counter!("switchboard_media_bytes_out_total").increment(bytes.len() as u64);
        }
    });
    let mut b = HttpResponse::build(status);
    common(&mut b);
    if let Some((s, e)) = range {
        b.insert_header((header::CONTENT_RANGE, format!("bytes {s}-{e}/{size}")));
    }
    b.content_type(content_type).no_chunking(len).streaming(counted)
}

/// Downloads a complete media: its uploader, or a member who can see a message that
/// declares it (docs/media.md, download rules). Range requests and ETags.
#[utoipa::path(get, path = "/v1/media/{id}", tag = "public", security(("device_token" = [])), params(
    ("id" = String, Path, description = "Media id (UUID); anything else names no media (404)"),
    ("Range" = Option<String>, Header, description = "bytes=start-end (one range)"),
    ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier answer"),
), responses(
    (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>, headers(
        ("ETag" = String, description = "Quoted hex SHA-256 of the bytes"),
        ("Cache-Control" = String, description = "immutable"),
        ("Accept-Ranges" = String, description = "bytes"),
    )),
    (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>, headers(("Content-Range" = String, description = "bytes start-end/size"))),
    (status = 304, description = "Not modified (If-None-Match)"),
    (status = 416, description = "Range not satisfiable", headers(("Content-Range" = String, description = "bytes */size"))),
    (status = 401, description = "unauthorized or device_revoked", body = crate::http::api::ErrorBody),
    (status = 403, description = "forbidden", body = crate::http::api::ErrorBody),
    (status = 404, description = "not_found (to anyone but its uploader, an upload in progress too)", body = crate::http::api::ErrorBody),
    (status = 409, description = "incomplete: the uploader asked for an upload in progress", body = crate::http::api::ErrorBody),
    (status = 503, description = "unavailable", body = crate::http::api::ErrorBody),
))]
pub async fn download(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>) -> HttpResponse {
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let id = match media_id(&path) {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    let (download, public) = match state.media.open_download(user, id).await {
        Ok(d) => d,
        Err(e) => return error_response(&e),
    };
    let content_type = if public { "image/jpeg" } else { "application/octet-stream" };
    // Private: a shared cache must not hand one user's authorised download to another.
    serve(&req, &state, download, content_type, "private, max-age=31536000, immutable".into()).await
}

/// A short-lived signed URL for a media the caller may download.
#[utoipa::path(get, path = "/v1/media/{id}/url", tag = "public", security(("device_token" = [])), params(("id" = String, Path, description = "Media id (UUID); anything else names no media (404)")), responses(
    (status = 200, description = "The URL", body = SignedUrl),
    (status = 401, description = "unauthorized or device_revoked", body = crate::http::api::ErrorBody),
    (status = 403, description = "forbidden", body = crate::http::api::ErrorBody),
    (status = 404, description = "not_found (to anyone but its uploader, an upload in progress too)", body = crate::http::api::ErrorBody),
    (status = 409, description = "incomplete: the uploader asked for an upload in progress", body = crate::http::api::ErrorBody),
    (status = 503, description = "unavailable", body = crate::http::api::ErrorBody),
))]
pub async fn signed_url(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>) -> HttpResponse {
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let id = match media_id(&path) {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    match state.media.signed_url(user, id).await {
        Ok((url, expires)) => {
            HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).json(serde_json::json!({ "url": url, "expires": expires }))
        }
        Err(e) => error_response(&e),
    }
}

/// The query of a signed download URL.
#[derive(serde::Deserialize)]
pub struct SignedQuery {
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
    /// HMAC-SHA256 signature, hex.
    pub sig: String,
}

/// Downloads by signed URL: no token, no database (a CDN may serve it).
#[utoipa::path(get, path = "/v1/media/blob/{digest}", tag = "public", params(
    ("digest" = String, Path, description = "Hex SHA-256 of the bytes"),
    ("expires" = u64, Query, description = "Seconds since the Unix epoch"),
    ("sig" = String, Query, description = "HMAC-SHA256 signature (hex)"),
    ("Range" = Option<String>, Header, description = "bytes=start-end (one range)"),
), responses(
    (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>, headers(
        ("ETag" = String, description = "Quoted hex SHA-256 of the bytes"),
        ("Cache-Control" = String, description = "immutable"),
        ("Accept-Ranges" = String, description = "bytes"),
    )),
    (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>, headers(("Content-Range" = String, description = "bytes start-end/size"))),
    (status = 304, description = "Not modified (If-None-Match)"),
    (status = 416, description = "Range not satisfiable", headers(("Content-Range" = String, description = "bytes */size"))),
    (status = 400, description = "bad_header: expires or sig missing", body = crate::http::api::ErrorBody),
    (status = 403, description = "url_expired or bad_signature", body = crate::http::api::ErrorBody),
    (status = 404, description = "not_found", body = crate::http::api::ErrorBody),
    (status = 503, description = "unavailable", body = crate::http::api::ErrorBody),
))]
pub async fn signed_download(
    req: HttpRequest,
    state: web::Data<MediaState>,
    path: web::Path<String>,
    query: Option<web::Query<SignedQuery>>,
) -> HttpResponse {
    // A missing or malformed query gets the media API's JSON error, not actix's text.
    let Some(query) = query else { return error_response(&MediaError::Tus(TusError::BadHeader("expires and sig query parameters"))) };
    let digest_hex = path.into_inner().to_ascii_lowercase();
    match state.media.check_signed(&digest_hex, query.expires, &query.sig).await {
        Ok(download) => {
            // Until the URL expires, any cache may keep it: the URL names immutable bytes.
            let left = query.expires.saturating_sub(crate::store::now_ms() / 1000);
            serve(&req, &state, download, "application/octet-stream", format!("public, max-age={left}, immutable")).await
        }
        Err(e) => error_response(&e),
    }
}

/// A public image (profile photo, group icon): decoded, stripped of metadata and stored
/// as fixed-size JPEG renditions, readable by any authenticated user.
#[utoipa::path(post, path = "/v1/media/public", tag = "public", security(("device_token" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The image (JPEG, PNG, WebP, GIF)"), responses(
    (status = 201, description = "Stored", body = Renditions),
    (status = 400, description = "not_an_image", body = crate::http::api::ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = crate::http::api::ErrorBody),
    (status = 413, description = "image_too_large (bytes or pixels) or quota_exceeded", body = crate::http::api::ErrorBody),
    (status = 429, description = "rate_limited", body = crate::http::api::ErrorBody),
    (status = 503, description = "unavailable", body = crate::http::api::ErrorBody),
))]
pub async fn public_image(req: HttpRequest, state: web::Data<MediaState>, body: web::Payload) -> HttpResponse {
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let max = state.media.config().max_image_bytes;
    // Read at most max + 1 bytes: one more is enough to know it is too large.
    let bytes = match body.to_bytes_limited(max + 1).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => return error_response(&MediaError::Tus(TusError::BadHeader("body"))),
        Err(_) => return error_response(&MediaError::Image(super::public_image::ImageError::TooLarge(format!("more than {max} bytes")))),
    };
    match state.media.store_public_image(user, &bytes).await {
        Ok(renditions) => HttpResponse::Created().json(serde_json::json!({ "renditions": renditions })),
        Err(e) => error_response(&e),
    }
}
