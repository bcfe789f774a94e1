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
    cfg.route("/v1/media", web::method(actix_web::http::Method::OPTIONS).to(options))
        .route("/v1/media", web::post().to(create))
        .route("/v1/media/public", web::post().to(public_image))
        .route("/v1/media/blob/{digest}", web::get().to(signed_download))
        .route("/v1/media/{id}/url", web::get().to(signed_url))
        .route("/v1/media/{id}", web::head().to(head))
        .route("/v1/media/{id}", web::patch().to(patch))
        .route("/v1/media/{id}", web::delete().to(terminate))
        .route("/v1/media/{id}", web::get().to(download));
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

fn header_str<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The authenticated user, or the 401 to answer.
async fn caller(req: &HttpRequest, state: &MediaState) -> Result<UserId, HttpResponse> {
    let token = crate::http::bearer(req).ok_or_else(unauthorized)?;
    state.accounts.authenticate(token).await.map(|d| d.user_id).map_err(|e| match e {
        crate::accounts::AuthError::Store(_) => error_response(&MediaError::Store(crate::store::StoreError::Backend("accounts".into()))),
        _ => unauthorized(),
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

async fn options(state: web::Data<MediaState>) -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header(("Tus-Resumable", tus::VERSION))
        .insert_header(("Tus-Version", tus::VERSION))
        .insert_header(("Tus-Extension", tus::EXTENSIONS))
        .insert_header(("Tus-Max-Size", state.media.config().max_upload_bytes.to_string()))
        .insert_header(("Tus-Checksum-Algorithm", tus::CHECKSUM_ALGORITHMS))
        .finish()
}

async fn create(req: HttpRequest, state: web::Data<MediaState>) -> HttpResponse {
    if let Err(e) = tus::check_version(header_str(&req, "Tus-Resumable")) {
        return error_response(&e.into());
    }
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
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

async fn head(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>) -> HttpResponse {
    if let Err(e) = tus::check_version(header_str(&req, "Tus-Resumable")) {
        return error_response(&e.into());
    }
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
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

async fn patch(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>, body: web::Payload) -> HttpResponse {
    if let Err(e) = tus::check_version(header_str(&req, "Tus-Resumable")) {
        return error_response(&e.into());
    }
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
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

async fn terminate(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>) -> HttpResponse {
    if let Err(e) = tus::check_version(header_str(&req, "Tus-Resumable")) {
        return error_response(&e.into());
    }
    let user = match caller(&req, &state).await {
        Ok(u) => u,
        Err(r) => return r,
    };
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

async fn download(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>) -> HttpResponse {
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

async fn signed_url(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>) -> HttpResponse {
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

#[derive(serde::Deserialize)]
struct SignedQuery {
    expires: u64,
    sig: String,
}

async fn signed_download(req: HttpRequest, state: web::Data<MediaState>, path: web::Path<String>, query: web::Query<SignedQuery>) -> HttpResponse {
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

async fn public_image(req: HttpRequest, state: web::Data<MediaState>, body: web::Payload) -> HttpResponse {
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
