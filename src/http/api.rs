//! The public HTTP API (JSON). Errors are `{"error": code, "message": text}` with a
//! status that says whose fault it was.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::bearer;
use crate::accounts::{AccountError, Accounts, AuthError, CodeIssued, DeviceCredentials, DeviceInfo};
use crate::actors::node::Node;
use crate::actors::push::PushRequest;
use crate::contacts::ContactsError;
use crate::cores::status::Refusal;
use crate::protocol::{ErrorCode, RequestError};
use crate::status::StatusError;
use crate::store::{DeviceId, DeviceRecord, PushToken, Store};
use crate::transport::{ConnectionDeps, ws};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Accounts service.
    pub accounts: Accounts,
    /// Contact discovery.
    pub contacts: crate::contacts::Contacts,
    /// Status posts.
    pub statuses: crate::status::Statuses,
    /// The actor tree.
    pub node: Node,
    /// Reads for history and health.
    pub store: Arc<dyn Store>,
    /// Prometheus text renderer.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The cluster, if any (health reports membership, drain and Redis).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Media (health reports the blob store).
    pub media: crate::media::MediaService,
}

/// An HTTP-facing error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the accounts service.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// From contact discovery.
    #[error(transparent)]
    Contacts(#[from] crate::contacts::ContactsError),
    /// Missing or bad bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Bad request parameter.
    #[error("{0}")]
    BadRequest(String),
    /// Conversation does not exist.
    #[error("unknown conversation")]
    UnknownConversation,
    /// Caller is not a member.
    #[error("not a member of this conversation")]
    NotAMember,
    /// Store failure.
    #[error("store unavailable")]
    Unavailable,
    /// A refusal of the key directory (the same as its frames get).
    #[error(transparent)]
    Request(#[from] crate::protocol::RequestError),
    /// From Status.
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
}

/// The body of every error of the API.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code (`invalid_phone`, `unauthorized`, …; docs/protocol.md §12).
    pub error: String,
    /// Human text; do not parse it.
    pub message: String,
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Account(AccountError::InvalidPhone(_)) => "invalid_phone",
            ApiError::Account(AccountError::InvalidName) => "invalid_name",
            ApiError::Account(AccountError::InvalidCode) => "invalid_code",
            ApiError::Account(AccountError::RateLimited { .. }) => "rate_limited",
            ApiError::Account(AccountError::SendFailed(_)) => "code_not_sent",
            ApiError::Account(AccountError::TooManyDevices(_)) => "too_many_devices",
            ApiError::Account(AccountError::NotPrimary) => "not_primary",
            ApiError::Account(AccountError::UnknownDevice) => "unknown_device",
            ApiError::Account(AccountError::UnknownPairing) => "unknown_pairing",
            ApiError::Account(AccountError::PairingAlreadyApproved) => "pairing_already_approved",
            ApiError::Account(AccountError::NumberTaken) => "number_taken",
            ApiError::Account(AccountError::WrongNumber) => "wrong_number",
            ApiError::Account(AccountError::TooOften { .. }) => "rate_limited",
            ApiError::Account(AccountError::Auth(AuthError::Revoked)) => "device_revoked",
            ApiError::Account(AccountError::Auth(AuthError::InvalidToken)) | ApiError::Unauthorized => "unauthorized",
            ApiError::Account(AccountError::Auth(AuthError::Store(_))) | ApiError::Account(AccountError::Store(_)) | ApiError::Unavailable => {
                "unavailable"
            }
            ApiError::Contacts(ContactsError::TooMany(_)) => "too_many_numbers",
            ApiError::Contacts(ContactsError::RateLimited { .. }) => "rate_limited",
            ApiError::Contacts(ContactsError::Store(_)) => "unavailable",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnknownConversation => "unknown_conversation",
            ApiError::NotAMember => "not_a_member",
            ApiError::Request(e) => match e {
                RequestError::TooManyKeys(_) => "too_many_keys",
                RequestError::InvalidSignature(_) => "invalid_signature",
                RequestError::NoSharedConversation(_) => "no_shared_conversation",
                RequestError::Unavailable(_) => "unavailable",
                RequestError::UnknownUser(_) => "unknown_user",
                RequestError::UnknownConversation => "unknown_conversation",
                RequestError::NotAMember => "not_a_member",
                RequestError::TooManyPins(_) => "too_many_pins",
                _ => "bad_request",
            },
            ApiError::Status(e) => match e {
                StatusError::Refused(Refusal::PayloadTooLarge { .. }) => "status_too_large",
                StatusError::Refused(Refusal::TooManyUsers { .. }) => "too_many_users",
                StatusError::Refused(Refusal::EmptyPayload | Refusal::NobodyAllowed) => "bad_request",
                StatusError::RateLimited { .. } => "rate_limited",
                StatusError::Unknown => "unknown_status",
                StatusError::IdTaken => "status_exists",
                StatusError::Store(_) => "unavailable",
            },
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Account(AccountError::InvalidPhone(_) | AccountError::InvalidName | AccountError::WrongNumber) | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Account(AccountError::InvalidCode) | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Account(AccountError::Auth(AuthError::InvalidToken | AuthError::Revoked)) => StatusCode::UNAUTHORIZED,
            ApiError::Account(AccountError::NotPrimary) | ApiError::NotAMember => StatusCode::FORBIDDEN,
            ApiError::Account(AccountError::UnknownDevice | AccountError::UnknownPairing) | ApiError::UnknownConversation => StatusCode::NOT_FOUND,
            ApiError::Account(AccountError::TooManyDevices(_) | AccountError::PairingAlreadyApproved | AccountError::NumberTaken) => {
                StatusCode::CONFLICT
            }
            ApiError::Account(AccountError::RateLimited { .. } | AccountError::TooOften { .. })
            | ApiError::Contacts(ContactsError::RateLimited { .. }) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Contacts(ContactsError::TooMany(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Contacts(ContactsError::Store(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Account(AccountError::SendFailed(_)) => StatusCode::BAD_GATEWAY,
            ApiError::Account(AccountError::Store(_) | AccountError::Auth(AuthError::Store(_))) | ApiError::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Request(e) => match e {
                RequestError::NoSharedConversation(_) => StatusCode::FORBIDDEN,
                RequestError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                RequestError::UnknownUser(_) | RequestError::UnknownConversation => StatusCode::NOT_FOUND,
                RequestError::NotAMember => StatusCode::FORBIDDEN,
                RequestError::TooManyPins(_) => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            },
            ApiError::Status(e) => match e {
                StatusError::Refused(Refusal::PayloadTooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
                StatusError::Refused(_) => StatusCode::BAD_REQUEST,
                StatusError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                StatusError::Unknown => StatusCode::NOT_FOUND,
                StatusError::IdTaken => StatusCode::CONFLICT,
                StatusError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Account(AccountError::RateLimited { retry_after_secs } | AccountError::TooOften { retry_after_secs })
        | ApiError::Contacts(ContactsError::RateLimited { retry_after_secs, .. })
        | ApiError::Status(StatusError::RateLimited { retry_after_secs }) = self
        {
            response.insert_header((actix_web::http::header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        response.json(ErrorBody { error: self.code().into(), message: self.to_string() })
    }
}

/// The JSON body extractor: at most 64 KiB, and a refused body answers in the API's own
/// error shape (`bad_request`; 413 when too large, 415 without a JSON content type).
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().limit(64 * 1024).error_handler(|e, _req| {
        let status = match &e {
            actix_web::error::JsonPayloadError::OverflowKnownLength { .. } | actix_web::error::JsonPayloadError::Overflow { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            actix_web::error::JsonPayloadError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        framework_error(status, e.to_string())
    })
}

/// The query-string extractor, answering in the API's error shape.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|e, _req| framework_error(StatusCode::BAD_REQUEST, e.to_string()))
}

/// The path extractor, answering in the API's error shape.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|e, _req| framework_error(StatusCode::BAD_REQUEST, e.to_string()))
}

fn framework_error(status: StatusCode, message: String) -> actix_web::Error {
    let body = serde_json::json!({ "error": "bad_request", "message": message });
    actix_web::error::InternalError::from_response(message, HttpResponse::build(status).json(body)).into()
}

/// A resource answering its `methods` (route them with `.route`), and 405 with an `Allow`
/// header and the API's error body to any other method (RFC 9110 §15.5.6).
pub fn resource(path: &str, methods: &'static [&'static str]) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        HttpResponse::MethodNotAllowed()
            .insert_header((actix_web::http::header::ALLOW, methods.join(", ")))
            .json(ErrorBody { error: "method_not_allowed".into(), message: format!("allowed: {}", methods.join(", ")) })
    }))
}

/// Registers every public route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz", &["GET"]).route(web::get().to(healthz)))
        .service(resource("/metrics", &["GET"]).route(web::get().to(metrics_text)))
        .service(resource("/v1/ws", &["GET"]).route(web::get().to(ws::upgrade)))
        .service(resource("/v1/openapi.json", &["GET"]).route(web::get().to(super::openapi::serve)))
        .service(resource("/v1/accounts/register", &["POST"]).route(web::post().to(register)))
        .service(resource("/v1/accounts/verify", &["POST"]).route(web::post().to(verify)))
        .service(resource("/v1/devices", &["GET", "POST"]).route(web::get().to(list_devices)).route(web::post().to(link_device)))
        // Before `{device_id}`, which would match it too.
        .service(
            resource("/v1/devices/push-token", &["PUT", "DELETE"]).route(web::put().to(set_push_token)).route(web::delete().to(delete_push_token)),
        )
        .service(resource("/v1/devices/logout-others", &["POST"]).route(web::post().to(logout_others)))
        .service(resource("/v1/devices/{device_id}", &["DELETE"]).route(web::delete().to(revoke_device)))
        .service(resource("/v1/conversations/{conversation_id}/messages", &["GET"]).route(web::get().to(super::history::history)))
        .service(resource("/v1/keys/upload", &["POST"]).route(web::post().to(super::keys::upload)))
        .service(resource("/v1/keys/count", &["GET"]).route(web::get().to(super::keys::count)))
        .service(resource("/v1/keys/query", &["POST"]).route(web::post().to(super::keys::query)))
        .service(resource("/v1/keys/claim", &["POST"]).route(web::post().to(super::keys::claim)))
        .service(resource("/v1/contacts/discover", &["POST"]).route(web::post().to(super::contacts::discover)))
        .service(resource("/v1/contacts/remove", &["POST"]).route(web::post().to(super::contacts::remove)))
        .service(
            resource("/v1/privacy", &["GET", "PATCH"])
                .route(web::get().to(super::privacy::get_settings))
                .route(web::patch().to(super::privacy::change_settings)),
        )
        .service(
            resource("/v1/profile", &["GET", "PATCH"]).route(web::get().to(super::profiles::mine)).route(web::patch().to(super::profiles::change)),
        )
        .service(resource("/v1/profiles/{user_id}", &["GET"]).route(web::get().to(super::profiles::of_user)))
        .service(resource("/v1/status", &["GET", "POST"]).route(web::get().to(super::status::feed)).route(web::post().to(super::status::post)))
        .service(resource("/v1/status/mine", &["GET"]).route(web::get().to(super::status::mine)))
        .service(resource("/v1/status/mine/{post_id}", &["DELETE"]).route(web::delete().to(super::status::delete)))
        .service(resource("/v1/status/{user_id}/{post_id}/seen", &["POST"]).route(web::post().to(super::status::seen)))
        .service(resource("/v1/inbox", &["GET"]).route(web::get().to(super::inbox::list)))
        .service(resource("/v1/account/number", &["POST"]).route(web::post().to(super::account::request_number)))
        .service(resource("/v1/account/number/verify", &["POST"]).route(web::post().to(super::account::verify_number)))
        .service(resource("/v1/account/delete", &["POST"]).route(web::post().to(super::account::delete)))
        .service(resource("/v1/account/export", &["GET"]).route(web::get().to(super::account::export)))
        .service(resource("/v1/inbox/{conversation_id}", &["PATCH"]).route(web::patch().to(super::inbox::change)))
        .service(resource("/v1/pairing", &["POST"]).route(web::post().to(super::pairing::start)))
        .service(resource("/v1/pairing/claim", &["POST"]).route(web::post().to(super::pairing::claim)))
        .service(resource("/v1/blocks", &["GET"]).route(web::get().to(super::privacy::list_blocks)))
        .service(
            resource("/v1/blocks/{user_id}", &["PUT", "DELETE"])
                .route(web::put().to(super::privacy::block))
                .route(web::delete().to(super::privacy::unblock)),
        );
}

pub(crate) async fn caller(req: &HttpRequest, state: &ApiState) -> Result<DeviceRecord, ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    Ok(state.accounts.authenticate(token).await.map_err(AccountError::from)?)
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, `degraded` (the store does not answer) or `draining` (cluster).
    pub status: &'static str,
    /// This node's view of the cluster, when clustered.
    #[schema(value_type = Option<Object>)]
    pub cluster: Option<serde_json::Value>,
    /// The store's answer to a ping.
    pub store: StoreHealth,
    /// The media blob store's answer to a ping (`backend`, `ok`, `latency_ms`, `error`).
    #[schema(value_type = Object)]
    pub media: serde_json::Value,
    /// Connected devices on this node.
    pub sessions: usize,
    /// Active conversations on this node.
    pub conversations: usize,
}

/// The store part of [`Health`].
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreHealth {
    /// `embedded`, `postgres` or `scylla`.
    pub backend: &'static str,
    /// Answered the ping.
    pub ok: bool,
    /// How long the ping took, in milliseconds.
    pub latency_ms: f64,
    /// Why it failed.
    pub error: Option<String>,
}

/// Health of this node and its store. 503 when the store does not answer or the node
/// drains (load balancers should stop sending it devices).
#[utoipa::path(get, path = "/healthz", tag = "public", responses(
    (status = 200, description = "Healthy", body = Health),
    (status = 503, description = "Store unreachable, or the node drains", body = Health),
))]
async fn healthz(state: web::Data<ApiState>) -> HttpResponse {
    let started = Instant::now();
    let store = state.store.ping().await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (cluster, draining) = match &state.cluster {
        Some(c) => {
            let redis = match c.presence() {
                Some(p) => Some(p.health().await),
                None => None,
            };
            let body = serde_json::json!({
                "node": c.name().as_ref(),
                "members": c.members().names().iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
                "draining": c.draining(),
                // Redis down degrades presence only; messages are unaffected, so it does
                // not fail the health check.
                "redis": redis,
            });
            (Some(body), c.draining())
        }
        None => (None, false),
    };
    let healthy = store.is_ok() && !draining;
    let body = Health {
        status: if draining {
            "draining"
        } else if store.is_ok() {
            "ok"
        } else {
            "degraded"
        },
        cluster,
        store: StoreHealth { backend: state.store.backend(), ok: store.is_ok(), latency_ms, error: store.as_ref().err().map(|e| e.to_string()) },
        // The blob store down degrades media only (uploads and downloads answer 503);
        // messages are unaffected, so it does not fail the health check.
        media: state.media.health().await,
        sessions: state.node.ctx.router.session_count(),
        conversations: state.node.ctx.router.conversation_count(),
    };
    // A draining node answers 503 so that load balancers stop sending it devices.
    if healthy { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "public", responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
async fn metrics_text(state: web::Data<ApiState>) -> HttpResponse {
    let (sum, max) = state.node.ctx.stats.depth_summary();
    metrics::gauge!("switchboard_mailbox_depth_total").set(sum as f64);
    metrics::gauge!("switchboard_mailbox_depth_max").set(max as f64);
    let text = state.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
}

/// A phone number as a user writes it: `POST /v1/accounts/register`, and the number
/// changes and deletion of `/v1/account/…`.
#[derive(Deserialize, ToSchema)]
pub struct RegisterBody {
    /// The phone number as the user wrote it: with its country code (`+1 (415) 555-0001`),
    /// or without it and with `region`; normalised to E.164, and refused when its
    /// country's numbering plan cannot assign it (libphonenumber's metadata).
    #[schema(example = "+1 415 555 0001", max_length = 64)]
    pub phone: String,
    /// ISO 3166-1 alpha-2 country (`US`, `GB`) of a number written without its country
    /// code; ignored when `phone` starts with `+`.
    #[serde(default)]
    #[schema(example = "US")]
    pub region: Option<String>,
}

/// Issues a one-time code for a phone number and sends it.
#[utoipa::path(post, path = "/v1/accounts/register", tag = "public", request_body = RegisterBody, responses(
    (status = 202, description = "Code issued", body = CodeIssued),
    (status = 400, description = "invalid_phone, or a malformed body", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 429, description = "rate_limited: the number's cooldown or daily cap, or this address's registrations (Retry-After); the same whether the number is registered or not", body = ErrorBody),
    (status = 502, description = "code_not_sent: the SMS gateway failed", body = ErrorBody),
    (status = 503, description = "unavailable: the store failed", body = ErrorBody),
))]
async fn register(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<RegisterBody>) -> Result<HttpResponse, ApiError> {
    let issued = state.accounts.register(&body.phone, body.region.as_deref(), req.peer_addr().map(|a| a.ip())).await?;
    Ok(HttpResponse::Accepted().json(issued))
}

/// `POST /v1/accounts/verify`.
#[derive(Deserialize, ToSchema)]
pub struct VerifyBody {
    /// The phone number, written any way `register` accepts (normalised the same way).
    #[schema(example = "+14155550001", max_length = 64)]
    pub phone: String,
    /// As in `register`.
    #[serde(default)]
    #[schema(example = "US")]
    pub region: Option<String>,
    /// The 6-digit code.
    #[schema(example = "123456")]
    pub code: String,
    /// 1 to 64 characters, not all blank; trimmed (default `phone`).
    #[serde(default = "default_device_name")]
    #[schema(min_length = 1, max_length = 64, pattern = r"[^\s]")]
    pub device_name: String,
}

fn default_device_name() -> String {
    "phone".into()
}

/// Checks a code and creates the account (or takes it over) with a new primary device.
#[utoipa::path(post, path = "/v1/accounts/verify", tag = "public", request_body = VerifyBody, responses(
    (status = 200, description = "The new primary device", body = DeviceCredentials),
    (status = 400, description = "invalid_phone, invalid_name, or a malformed body", body = ErrorBody),
    (status = 401, description = "invalid_code", body = ErrorBody),
    (status = 409, description = "too_many_devices", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 429, description = "rate_limited: the number's attempts (every code issued to it counts) or this address's (Retry-After)", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
async fn verify(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<VerifyBody>) -> Result<HttpResponse, ApiError> {
    let (credentials, revoked) =
        state.accounts.verify(&body.phone, body.region.as_deref(), &body.code, &body.device_name, req.peer_addr().map(|a| a.ip())).await?;
    for device in revoked {
        state.node.ctx.router.close_device(credentials.user_id, device, ErrorCode::DeviceRevoked, "account registered on a new phone");
    }
    // A new device (and maybe revoked ones): those who share keys with the user must know.
    crate::to_device::device_list_changed(
        state.store.as_ref(),
        &state.node.ctx.router,
        credentials.user_id,
        Some(credentials.device_id),
        crate::store::now_ms(),
    )
    .await;
    Ok(HttpResponse::Ok().json(credentials))
}

/// `POST /v1/devices`.
#[derive(Deserialize, ToSchema)]
pub struct LinkBody {
    /// 1 to 64 characters, not all blank; trimmed.
    #[schema(min_length = 1, max_length = 64, pattern = r"[^\s]")]
    pub name: String,
}

/// Links a new device to the caller's account (primary only).
#[utoipa::path(post, path = "/v1/devices", tag = "public", request_body = LinkBody, security(("device_token" = [])), responses(
    (status = 201, description = "The new linked device", body = DeviceCredentials),
    (status = 400, description = "invalid_name, or a malformed body", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 403, description = "not_primary", body = ErrorBody),
    (status = 409, description = "too_many_devices", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
async fn link_device(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<LinkBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let credentials = state.accounts.link_device(&me, &body.name).await?;
    crate::to_device::device_list_changed(
        state.store.as_ref(),
        &state.node.ctx.router,
        me.user_id,
        Some(credentials.device_id),
        crate::store::now_ms(),
    )
    .await;
    Ok(HttpResponse::Created().json(credentials))
}

/// Every device of the caller's account, revoked ones included, oldest first.
#[utoipa::path(get, path = "/v1/devices", tag = "public", security(("device_token" = [])), responses(
    (status = 200, description = "The devices", body = Vec<DeviceInfo>),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
async fn list_devices(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    Ok(HttpResponse::Ok().json(state.accounts.list_devices(&me).await?))
}

/// Revokes a device: the primary any device of the account, any device itself.
#[utoipa::path(delete, path = "/v1/devices/{device_id}", tag = "public", security(("device_token" = [])),
    params(("device_id" = String, Path, format = Uuid, description = "The device to revoke")),
    responses(
        (status = 204, description = "Revoked (also when it already was)"),
        (status = 400, description = "bad_request: not a UUID", body = ErrorBody),
        (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
        (status = 403, description = "not_primary", body = ErrorBody),
        (status = 404, description = "unknown_device", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
))]
async fn revoke_device(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let device: DeviceId = path.parse().map_err(|_| ApiError::BadRequest("device_id must be a UUID".into()))?;
    state.accounts.revoke_device(&me, device).await?;
    // A revoked device gets no more pushes.
    state.store.set_push_token(me.user_id, device, None).await.map_err(|_| ApiError::Unavailable)?;
    let _ = state.node.ctx.push.send(PushRequest::TokensChanged(me.user_id));
    state.node.ctx.router.close_device(me.user_id, device, ErrorCode::DeviceRevoked, "this device was revoked");
    crate::to_device::device_list_changed(state.store.as_ref(), &state.node.ctx.router, me.user_id, Some(device), crate::store::now_ms()).await;
    Ok(HttpResponse::NoContent().finish())
}

/// The devices "log out all other devices" revoked.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    /// Their ids.
    #[schema(value_type = Vec<String>)]
    pub revoked: Vec<DeviceId>,
}

/// Logs out every other device of the account (primary only): each is revoked, its live
/// connection closed with `DEVICE_REVOKED`, its push token dropped; those who share keys
/// with the user are told the device list changed.
#[utoipa::path(post, path = "/v1/devices/logout-others", tag = "public", security(("device_token" = [])), responses(
    (status = 200, description = "The devices revoked (none: an empty list)", body = Revoked),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 403, description = "not_primary", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
async fn logout_others(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let revoked = state.accounts.revoke_others(&me).await?;
    for device in &revoked {
        state.store.set_push_token(me.user_id, *device, None).await.map_err(|_| ApiError::Unavailable)?;
        state.node.ctx.router.close_device(me.user_id, *device, ErrorCode::DeviceRevoked, "logged out from the primary device");
    }
    if !revoked.is_empty() {
        let _ = state.node.ctx.push.send(PushRequest::TokensChanged(me.user_id));
        crate::to_device::device_list_changed(state.store.as_ref(), &state.node.ctx.router, me.user_id, None, crate::store::now_ms()).await;
    }
    Ok(HttpResponse::Ok().json(Revoked { revoked }))
}

/// `PUT /v1/devices/push-token`.
#[derive(Deserialize, ToSchema)]
pub struct PushTokenBody {
    /// 1 to 32 characters, e.g. `fcm`, `apns`.
    #[schema(min_length = 1, max_length = 32)]
    pub platform: String,
    /// 1 to 4,096 characters.
    #[schema(min_length = 1, max_length = 4096)]
    pub token: String,
}

impl PushTokenBody {
    /// Lengths in characters, as documented (not bytes).
    pub fn check(&self) -> Result<(), ApiError> {
        let (platform, token) = (self.platform.chars().count(), self.token.chars().count());
        if !(1..=32).contains(&platform) || !(1..=4096).contains(&token) {
            return Err(ApiError::BadRequest("platform (1-32 chars) and token (1-4096 chars) are required".into()));
        }
        Ok(())
    }
}

/// Registers the calling device's push token.
#[utoipa::path(put, path = "/v1/devices/push-token", tag = "public", request_body = PushTokenBody, security(("device_token" = [])), responses(
    (status = 204, description = "Stored"),
    (status = 400, description = "bad_request: field lengths, or a malformed body", body = ErrorBody),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 413, description = "Body over 64 KiB", body = ErrorBody),
    (status = 415, description = "Not JSON", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
async fn set_push_token(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<PushTokenBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    body.check()?;
    let token = PushToken { platform: body.platform.clone(), token: body.token.clone() };
    state.store.set_push_token(me.user_id, me.device_id, Some(token)).await.map_err(|_| ApiError::Unavailable)?;
    let _ = state.node.ctx.push.send(PushRequest::TokensChanged(me.user_id));
    Ok(HttpResponse::NoContent().finish())
}

/// Removes the calling device's push token.
#[utoipa::path(delete, path = "/v1/devices/push-token", tag = "public", security(("device_token" = [])), responses(
    (status = 204, description = "Removed"),
    (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
    (status = 503, description = "unavailable", body = ErrorBody),
))]
async fn delete_push_token(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    state.store.set_push_token(me.user_id, me.device_id, None).await.map_err(|_| ApiError::Unavailable)?;
    let _ = state.node.ctx.push.send(PushRequest::TokensChanged(me.user_id));
    Ok(HttpResponse::NoContent().finish())
}

/// The WebSocket route needs the connection dependencies as app data.
pub fn ws_data(deps: ConnectionDeps) -> web::Data<ConnectionDeps> {
    web::Data::new(deps)
}
