//! The public HTTP API (JSON). Errors are `{"error": code, "message": text}` with a
//! status that says whose fault it was.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;

use super::bearer;
use crate::accounts::{AccountError, Accounts, AuthError};
use crate::actors::node::Node;
use crate::actors::push::PushMsg;
use crate::actors::session::history_page;
use crate::protocol::ErrorCode;
use crate::store::{ConversationId, DeviceId, DeviceRecord, PushToken, Store};
use crate::transport::{ConnectionDeps, ws};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    /// Accounts service.
    pub accounts: Accounts,
    /// The actor tree.
    pub node: Node,
    /// Reads for history and health.
    pub store: Arc<dyn Store>,
    /// Prometheus text renderer.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The cluster, if any (health reports membership, drain and Redis).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// An HTTP-facing error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the accounts service.
    #[error(transparent)]
    Account(#[from] AccountError),
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
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Account(AccountError::InvalidPhone) => "invalid_phone",
            ApiError::Account(AccountError::InvalidName) => "invalid_name",
            ApiError::Account(AccountError::InvalidCode) => "invalid_code",
            ApiError::Account(AccountError::SendFailed(_)) => "code_not_sent",
            ApiError::Account(AccountError::TooManyDevices(_)) => "too_many_devices",
            ApiError::Account(AccountError::NotPrimary) => "not_primary",
            ApiError::Account(AccountError::UnknownDevice) => "unknown_device",
            ApiError::Account(AccountError::Auth(AuthError::Revoked)) => "device_revoked",
            ApiError::Account(AccountError::Auth(AuthError::InvalidToken)) | ApiError::Unauthorized => "unauthorized",
            ApiError::Account(AccountError::Auth(AuthError::Store(_))) | ApiError::Account(AccountError::Store(_)) | ApiError::Unavailable => {
                "unavailable"
            }
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnknownConversation => "unknown_conversation",
            ApiError::NotAMember => "not_a_member",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Account(AccountError::InvalidPhone | AccountError::InvalidName) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Account(AccountError::InvalidCode) | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Account(AccountError::Auth(AuthError::InvalidToken | AuthError::Revoked)) => StatusCode::UNAUTHORIZED,
            ApiError::Account(AccountError::NotPrimary) | ApiError::NotAMember => StatusCode::FORBIDDEN,
            ApiError::Account(AccountError::UnknownDevice) | ApiError::UnknownConversation => StatusCode::NOT_FOUND,
            ApiError::Account(AccountError::TooManyDevices(_)) => StatusCode::CONFLICT,
            ApiError::Account(AccountError::SendFailed(_)) => StatusCode::BAD_GATEWAY,
            ApiError::Account(AccountError::Store(_) | AccountError::Auth(AuthError::Store(_))) | ApiError::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(serde_json::json!({ "error": self.code(), "message": self.to_string() }))
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

/// Registers every public route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics_text))
        .route("/v1/ws", web::get().to(ws::upgrade))
        .route("/v1/accounts/register", web::post().to(register))
        .route("/v1/accounts/verify", web::post().to(verify))
        .route("/v1/devices", web::get().to(list_devices))
        .route("/v1/devices", web::post().to(link_device))
        .route("/v1/devices/push-token", web::put().to(set_push_token))
        .route("/v1/devices/push-token", web::delete().to(delete_push_token))
        .route("/v1/devices/{device_id}", web::delete().to(revoke_device))
        .route("/v1/conversations/{conversation_id}/messages", web::get().to(history));
}

async fn caller(req: &HttpRequest, state: &ApiState) -> Result<DeviceRecord, ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthorized)?;
    Ok(state.accounts.authenticate(token).await.map_err(AccountError::from)?)
}

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
    let body = serde_json::json!({
        "status": if draining { "draining" } else if store.is_ok() { "ok" } else { "degraded" },
        "cluster": cluster,
        "store": {
            "backend": state.store.backend(),
            "ok": store.is_ok(),
            "latency_ms": latency_ms,
            "error": store.as_ref().err().map(|e| e.to_string()),
        },
        "sessions": state.node.ctx.router.session_count(),
        "conversations": state.node.ctx.router.conversation_count(),
    });
    // A draining node answers 503 so that load balancers stop sending it devices.
    if healthy { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

async fn metrics_text(state: web::Data<ApiState>) -> HttpResponse {
    let (sum, max) = state.node.ctx.stats.depth_summary();
    metrics::gauge!("switchboard_mailbox_depth_total").set(sum as f64);
    metrics::gauge!("switchboard_mailbox_depth_max").set(max as f64);
    let text = state.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
}

#[derive(Deserialize)]
struct RegisterBody {
    phone: String,
}

async fn register(state: web::Data<ApiState>, body: web::Json<RegisterBody>) -> Result<HttpResponse, ApiError> {
    let issued = state.accounts.register(&body.phone).await?;
    Ok(HttpResponse::Accepted().json(issued))
}

#[derive(Deserialize)]
struct VerifyBody {
    phone: String,
    code: String,
    #[serde(default = "default_device_name")]
    device_name: String,
}

fn default_device_name() -> String {
    "phone".into()
}

async fn verify(state: web::Data<ApiState>, body: web::Json<VerifyBody>) -> Result<HttpResponse, ApiError> {
    let (credentials, revoked) = state.accounts.verify(&body.phone, &body.code, &body.device_name).await?;
    for device in revoked {
        state.node.ctx.router.close_device(credentials.user_id, device, ErrorCode::DeviceRevoked, "account registered on a new phone");
    }
    Ok(HttpResponse::Ok().json(credentials))
}

#[derive(Deserialize)]
struct LinkBody {
    name: String,
}

async fn link_device(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<LinkBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let credentials = state.accounts.link_device(&me, &body.name).await?;
    Ok(HttpResponse::Created().json(credentials))
}

async fn list_devices(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    Ok(HttpResponse::Ok().json(state.accounts.list_devices(&me).await?))
}

async fn revoke_device(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let device: DeviceId = path.parse().map_err(|_| ApiError::BadRequest("device_id must be a UUID".into()))?;
    state.accounts.revoke_device(&me, device).await?;
    // A revoked device gets no more pushes.
    state.store.set_push_token(me.user_id, device, None).await.map_err(|_| ApiError::Unavailable)?;
    let _ = state.node.ctx.push.send(PushMsg::TokensChanged(me.user_id));
    state.node.ctx.router.close_device(me.user_id, device, ErrorCode::DeviceRevoked, "this device was revoked");
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct PushTokenBody {
    platform: String,
    token: String,
}

async fn set_push_token(req: HttpRequest, state: web::Data<ApiState>, body: web::Json<PushTokenBody>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    if body.platform.is_empty() || body.platform.len() > 32 || body.token.is_empty() || body.token.len() > 4096 {
        return Err(ApiError::BadRequest("platform (1-32 chars) and token (1-4096 chars) are required".into()));
    }
    let token = PushToken { platform: body.platform.clone(), token: body.token.clone() };
    state.store.set_push_token(me.user_id, me.device_id, Some(token)).await.map_err(|_| ApiError::Unavailable)?;
    let _ = state.node.ctx.push.send(PushMsg::TokensChanged(me.user_id));
    Ok(HttpResponse::NoContent().finish())
}

async fn delete_push_token(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    state.store.set_push_token(me.user_id, me.device_id, None).await.map_err(|_| ApiError::Unavailable)?;
    let _ = state.node.ctx.push.send(PushMsg::TokensChanged(me.user_id));
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    before: u64,
    #[serde(default)]
    limit: usize,
}

async fn history(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let id: ConversationId = path.parse().map_err(|_| ApiError::BadRequest("conversation_id must be a UUID".into()))?;
    let record = state.store.conversation(id).await.map_err(|_| ApiError::Unavailable)?.ok_or(ApiError::UnknownConversation)?;
    // The same membership range as over the socket: from joining to leaving.
    let range = record.visible_range(me.user_id).ok_or(ApiError::NotAMember)?;
    let (messages, has_more) = history_page(state.store.as_ref(), id, range, query.before, query.limit).await.map_err(|_| ApiError::Unavailable)?;
    let items: Vec<_> = messages
        .iter()
        .map(|m| {
            serde_json::json!({
                "seq": m.seq,
                "sender_user_id": m.sender_user_id,
                "sender_device_id": m.sender_device_id,
                "client_msg_id": m.client_msg_id,
                "server_time_ms": m.server_time_ms,
                "payload_hex": hex::encode(&m.payload),
                "kind": match m.kind {
                    crate::store::ContentKind::Normal => "normal",
                    crate::store::ContentKind::Edit => "edit",
                    crate::store::ContentKind::Reaction => "reaction",
                },
                "reference_seq": m.reference_seq,
                "deleted": m.deleted,
                // A server event, as the protobuf bytes of ConversationEvent.
                "event_hex": m.event.as_ref().map(hex::encode),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "conversation_id": id, "messages": items, "has_more": has_more })))
}

/// The WebSocket route needs the connection dependencies as app data.
pub fn ws_data(deps: ConnectionDeps) -> web::Data<ConnectionDeps> {
    web::Data::new(deps)
}
