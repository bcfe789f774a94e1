//! HTTP surfaces: the public API (accounts, devices, history, health, metrics, the
//! WebSocket upgrade) and the admin API on its own listener behind a token.

pub mod admin;
pub mod api;
pub mod openapi;

use actix_web::HttpRequest;

/// The bearer token of a request, if any.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}
