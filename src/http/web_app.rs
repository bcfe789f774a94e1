//! The web client (`web/`, TypeScript built by Vite into `web/dist/`, committed) served at
//! `/app/` on the public listener, from files embedded in the binary at build time (the
//! list comes from `build.rs`), so the one command that runs the server serves the app.
//!
//! Every answer carries a Content-Security-Policy: scripts, styles, the WebAssembly of
//! libolm and connections (HTTP API and the `/v1/ws` socket) from this origin only, no
//! inline script, never framed. Hashed assets are immutable; the page is revalidated, so
//! a new server version brings its own client at once.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The app's Content-Security-Policy. `'wasm-unsafe-eval'` lets the page compile libolm's
/// WebAssembly (nothing else: no `eval`); `blob:` images are decrypted attachments.
pub const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; connect-src 'self'; \
                       img-src 'self' blob: data:; media-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The content type of a built file, by its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") | Some("mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The embedded file at `path` (relative to `/app/`).
pub fn asset(path: &str) -> Option<&'static [u8]> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, bytes)| *bytes)
}

fn respond(path: &str) -> HttpResponse {
    let Some(body) = asset(path) else {
        return HttpResponse::NotFound()
            .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
            .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
            .body("not found");
    };
    // Vite names every asset by its content hash: those never change.
    let cache = if path.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type(path)))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, cache))
        .body(body)
}

async fn index() -> HttpResponse {
    respond("index.html")
}

async fn file(path: web::Path<String>) -> HttpResponse {
    respond(&path.into_inner())
}

/// `/app` without its slash: the page's relative paths need it.
async fn to_slash() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/app/")).finish()
}

/// Registers the app's routes (on the public listener).
pub fn routes(cfg: &mut web::ServiceConfig) {
    use super::api::resource;
    cfg.service(resource("/app", &["GET"]).route(web::get().to(to_slash)))
        .service(resource("/app/", &["GET"]).route(web::get().to(index)))
        .service(resource("/app/{path:.*}", &["GET"]).route(web::get().to(file)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_client_is_embedded_with_its_page_and_scripts() {
        let page = std::str::from_utf8(asset("index.html").expect("index.html embedded")).expect("utf-8");
        assert!(page.contains("/app/assets/"), "the page loads its assets under /app/");
        assert!(!page.contains("<script>"), "no inline script (the CSP forbids it)");
        assert!(ASSETS.iter().any(|(p, _)| p.ends_with(".js")), "a script is embedded");
        assert!(ASSETS.iter().any(|(p, _)| p.ends_with(".wasm")), "libolm's WebAssembly is embedded");
        assert_eq!(content_type("assets/x.wasm"), "application/wasm");
        assert_eq!(content_type("assets/x.js"), "text/javascript; charset=utf-8");
    }
}
