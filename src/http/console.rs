//! The SRE console: a static page (HTML, CSS, JavaScript; no build step, no framework)
//! served at `/admin/ui/` on the admin listener. It holds no data: it asks the operator
//! for the admin token (kept in the tab's sessionStorage) and calls the token-protected
//! JSON endpoints (`/admin/tree`, `/admin/hot`, `/admin/cluster`, `/admin/drain`,
//! `/admin/conversations/{id}/crash`) with it, so serving the page itself needs no token.
//!
//! The files are compiled in (`include_str!`), so the console is the same version as the
//! API it calls. Every answer carries a strict Content-Security-Policy (scripts and
//! styles from this origin only, no inline script, nothing may frame the page), so an
//! actor name that slipped past the page's escaping still could not run as script.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The console's Content-Security-Policy: its own script and style only, API calls to its
/// own origin only, never framed (clickjacking of the drain and crash buttons).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                       base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Revalidated on every load: a new server version brings its own console at once.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// `/admin/ui` without its slash: relative asset paths need the slash.
async fn to_slash() -> HttpResponse {
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, "/admin/ui/")).finish()
}

/// Registers the console's routes (on the admin listener).
pub fn routes(cfg: &mut web::ServiceConfig) {
    use super::api::resource;
    cfg.service(resource("/admin/ui", &["GET"]).route(web::get().to(to_slash)))
        .service(resource("/admin/ui/", &["GET"]).route(web::get().to(index)))
        .service(resource("/admin/ui/console.js", &["GET"]).route(web::get().to(script)))
        .service(resource("/admin/ui/console.css", &["GET"]).route(web::get().to(style)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        // The CSP forbids them: an inline one would silently not run.
        assert!(INDEX.contains(r#"<script src="console.js""#));
        assert_eq!(INDEX.matches("<script").count(), 1, "one script element, loaded from its own file");
        assert!(!INDEX.contains("<style"), "styles go in console.css");
        assert!(!has_inline_handler(INDEX), "no inline event handlers");
    }

    #[test]
    fn the_script_never_writes_markup_from_data() {
        // Names come from clients (labels hold ids only today, but the page must not care):
        // text goes in with textContent, never as markup.
        for forbidden in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!SCRIPT.contains(forbidden), "console.js uses {forbidden}");
        }
    }

    /// True if the markup has an `on…=` attribute (onclick, onload, …).
    fn has_inline_handler(html: &str) -> bool {
        html.split('<').skip(1).any(|tag| {
            let tag = tag.split('>').next().unwrap_or_default();
            tag.split_whitespace().skip(1).any(|attr| attr.to_ascii_lowercase().starts_with("on") && attr.contains('='))
        })
    }

    #[actix_web::test]
    async fn assets_carry_their_type_and_the_security_headers() {
        use actix_web::test;
        let app = test::init_service(actix_web::App::new().configure(routes)).await;
        for (path, kind) in [("/admin/ui/", "text/html"), ("/admin/ui/console.js", "text/javascript"), ("/admin/ui/console.css", "text/css")] {
            let res = test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
            assert!(res.status().is_success(), "{path}");
            let h = res.headers();
            let get = |name: header::HeaderName| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            assert!(get(header::CONTENT_TYPE).starts_with(kind), "{path}: {}", get(header::CONTENT_TYPE));
            assert_eq!(get(header::CONTENT_SECURITY_POLICY), CSP, "{path}");
            assert_eq!(get(header::X_FRAME_OPTIONS), "DENY", "{path}");
            assert_eq!(get(header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        }
        let res = test::call_service(&app, test::TestRequest::get().uri("/admin/ui").to_request()).await;
        assert_eq!(res.status().as_u16(), 308);
        assert_eq!(res.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()), Some("/admin/ui/"));
        let res = test::call_service(&app, test::TestRequest::post().uri("/admin/ui/").to_request()).await;
        assert_eq!(res.status().as_u16(), 405);
    }
}
