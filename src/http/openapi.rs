//! The OpenAPI 3 description of the HTTP API (public and admin), generated from the
//! handlers' annotations with utoipa and served at `GET /v1/openapi.json`. The admin
//! operations (tag `admin`) are served by the admin listener, not the public one; their
//! paths say where (`servers` is left to the reader: the two listeners have their own
//! addresses).

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{account, admin, api, contacts, history, inbox, keys, pairing, privacy, profiles, status};
use crate::media::http as media;
use crate::transport::ws;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard HTTP API",
        description = "Accounts, devices, contact discovery, Status, history, keys, media (tus 1.0, docs/media.md), health and metrics on the public listener (tag `public`); \
                       operations on the admin listener (tag `admin`). The messaging protocol itself runs over \
                       the WebSocket at /v1/ws or raw TCP: see docs/protocol.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        api::healthz,
        api::metrics_text,
        ws::upgrade,
        api::register,
        api::verify,
        api::list_devices,
        api::link_device,
        api::revoke_device,
        api::logout_others,
        api::set_push_token,
        api::delete_push_token,
        history::history,
        keys::upload,
        keys::count,
        keys::query,
        keys::claim,
        contacts::discover,
        contacts::remove,
        profiles::mine,
        profiles::change,
        profiles::of_user,
        inbox::list,
        inbox::change,
        account::request_number,
        account::verify_number,
        account::delete,
        account::export,
        status::post,
        status::feed,
        status::mine,
        status::seen,
        status::delete,
        pairing::start,
        pairing::claim,
        privacy::get_settings,
        privacy::change_settings,
        privacy::list_blocks,
        privacy::block,
        privacy::unblock,
        media::options,
        media::create,
        media::head,
        media::patch,
        media::terminate,
        media::download,
        media::signed_url,
        media::signed_download,
        media::public_image,
        serve,
        admin::tree,
        admin::hot,
        admin::cluster,
        admin::drain,
        admin::provision,
        admin::crash_conversation,
        admin::sweep_media,
    ),
    components(schemas(api::ErrorBody, admin::AdminError, media::TusVersion)),
    modifiers(&Security),
    tags(
        (name = "public", description = "The public listener (--http-listen)"),
        (name = "admin", description = "The admin listener (--admin-listen), behind the admin token")
    )
)]
pub struct ApiDoc;

/// Adds the two bearer schemes: a device's token, and the admin token.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("device_token", bearer());
        components.add_security_scheme("admin_token", bearer());
    }
}

/// The document as JSON (built once).
pub fn document() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")))
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "public", responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let doc: serde_json::Value = serde_json::from_str(document()).expect("json");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
        let paths = doc["paths"].as_object().expect("paths");
        for (path, method) in [
            ("/healthz", "get"),
            ("/metrics", "get"),
            ("/v1/ws", "get"),
            ("/v1/openapi.json", "get"),
            ("/v1/accounts/register", "post"),
            ("/v1/accounts/verify", "post"),
            ("/v1/devices", "get"),
            ("/v1/devices", "post"),
            ("/v1/devices/{device_id}", "delete"),
            ("/v1/devices/logout-others", "post"),
            ("/v1/devices/push-token", "put"),
            ("/v1/devices/push-token", "delete"),
            ("/v1/conversations/{conversation_id}/messages", "get"),
            ("/v1/keys/upload", "post"),
            ("/v1/keys/count", "get"),
            ("/v1/keys/query", "post"),
            ("/v1/keys/claim", "post"),
            ("/v1/contacts/discover", "post"),
            ("/v1/contacts/remove", "post"),
            ("/v1/profile", "get"),
            ("/v1/profile", "patch"),
            ("/v1/profiles/{user_id}", "get"),
            ("/v1/inbox", "get"),
            ("/v1/inbox/{conversation_id}", "patch"),
            ("/v1/account/number", "post"),
            ("/v1/account/number/verify", "post"),
            ("/v1/account/delete", "post"),
            ("/v1/account/export", "get"),
            ("/v1/status", "post"),
            ("/v1/status", "get"),
            ("/v1/status/mine", "get"),
            ("/v1/status/mine/{post_id}", "delete"),
            ("/v1/status/{user_id}/{post_id}/seen", "post"),
            ("/v1/pairing", "post"),
            ("/v1/pairing/claim", "post"),
            ("/v1/privacy", "get"),
            ("/v1/privacy", "patch"),
            ("/v1/blocks", "get"),
            ("/v1/blocks/{user_id}", "put"),
            ("/v1/blocks/{user_id}", "delete"),
            ("/admin/tree", "get"),
            ("/admin/hot", "get"),
            ("/admin/cluster", "get"),
            ("/admin/drain", "post"),
            ("/admin/provision", "post"),
            ("/admin/conversations/{id}/crash", "post"),
            ("/admin/media/sweep", "post"),
            ("/v1/media", "options"),
            ("/v1/media", "post"),
            ("/v1/media/{id}", "head"),
            ("/v1/media/{id}", "patch"),
            ("/v1/media/{id}", "delete"),
            ("/v1/media/{id}", "get"),
            ("/v1/media/{id}/url", "get"),
            ("/v1/media/blob/{digest}", "get"),
            ("/v1/media/public", "post"),
        ] {
            assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is not in the document");
        }
        assert_eq!(paths.values().map(|p| p.as_object().map_or(0, |m| m.len())).sum::<usize>(), 56, "a route is described but not listed here");
    }
}
