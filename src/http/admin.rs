//! The admin API, on its own listener and behind its own bearer token: the live
//! supervision tree (like Erlang's observer), the hottest actors, fault injection for
//! drills, and a media sweep on demand. The SRE console (`/admin/ui/`, `console.rs`) is
//! a static page over these endpoints.

use std::sync::atomic::Ordering;

use crate::store::ConversationId;
use actix_web::{HttpRequest, HttpResponse, web};
use ractor::ActorCell;
use serde::Serialize;

use super::bearer;
use crate::actors::messages::ConversationControl;
use crate::actors::node::Node;
use crate::actors::{ActorStats, conversation_supervisor, session_supervisor};
use crate::cluster::NodeLookup;

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    /// The tree.
    pub node: Node,
    /// Bulk provisioning.
    pub accounts: crate::accounts::Accounts,
    /// Required bearer token.
    pub token: String,
    /// The cluster, if any.
    pub cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    /// Starts a drain of this node.
    pub drain: crate::server::DrainHandle,
    /// Media (a sweep on demand).
    pub media: crate::media::MediaService,
}

/// Children listed per actor at most; the rest are counted, not listed.
const SAMPLE: usize = 20;
/// Depth of the walk.
const MAX_DEPTH: usize = 4;

/// One actor in the tree.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TreeNode {
    /// On the root only: the cluster node whose tree this is (absent on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// ractor id.
    pub id: String,
    /// Registered name, or the mailbox label.
    pub name: String,
    /// ractor status.
    pub status: String,
    /// Messages waiting (for actors with a counted mailbox).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<usize>,
    /// Time spent handling messages since the actor started, in milliseconds (for actors
    /// with a counted mailbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_ms: Option<f64>,
    /// The conversation a conversation actor runs (what its crash drill takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// Restarts (supervisors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
    /// Number of children.
    pub children_count: usize,
    /// Up to `SAMPLE` children, busiest mailboxes first.
    #[schema(no_recursion)]
    pub children: Vec<TreeNode>,
}

fn walk(cell: &ActorCell, stats: &ActorStats, depth: usize) -> TreeNode {
    let gauge = stats.gauge(cell.get_id());
    let name = cell.get_name().or_else(|| gauge.as_ref().map(|g| g.label())).unwrap_or_else(|| "actor".into());
    let restarts = match name.as_str() {
        session_supervisor::NAME | conversation_supervisor::NAME => Some(stats.restarts(&name).load(Ordering::Relaxed)),
        _ => None,
    };
    let mut children = cell.get_children();
    let children_count = children.len();
    let mut listed = Vec::new();
    if depth < MAX_DEPTH {
        // Busiest first: that is what an SRE opens the tree to find.
        children.sort_by_key(|c| std::cmp::Reverse(stats.gauge(c.get_id()).map(|g| g.depth()).unwrap_or(0)));
        listed = children.iter().take(SAMPLE).map(|c| walk(c, stats, depth + 1)).collect();
    }
    TreeNode {
        node: None,
        id: cell.get_id().to_string(),
        name,
        status: format!("{:?}", cell.get_status()),
        mailbox: gauge.as_ref().map(|g| g.depth()),
        busy_ms: gauge.as_ref().map(|g| g.busy_ns() as f64 / 1e6),
        conversation_id: gauge.as_ref().and_then(|g| g.conversation_id()).map(|c| c.to_string()),
        restarts,
        children_count,
        children: listed,
    }
}

fn authorized(req: &HttpRequest, state: &AdminState) -> bool {
    bearer(req).is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes()))
}

/// Equality in time independent of where the inputs differ (`subtle`); a length
/// difference is told at once (the token's length is no secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

/// Query of `GET /admin/tree`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TreeQuery {
    /// Another node of the cluster, by name (its tree is fetched from it).
    node: Option<String>,
}

/// The body of an admin error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdminError {
    /// `unauthorized`, `bad_request`, `not_clustered`, `unknown_node`, `not_active`, …
    pub error: String,
    /// Human text, when there is more to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The live supervision tree of this node (or of `node`).
#[utoipa::path(get, path = "/admin/tree", tag = "admin", params(TreeQuery), security(("admin_token" = [])), responses(
    (status = 200, description = "The tree, 20 children per actor at most, depth 4", body = TreeNode),
    (status = 400, description = "Bad query", body = AdminError),
    (status = 401, description = "unauthorized", body = AdminError),
    (status = 404, description = "unknown_node", body = AdminError),
    (status = 502, description = "The other node did not answer", body = AdminError),
    (status = 503, description = "The node is dead (last heard …)", body = AdminError),
))]
async fn tree(req: HttpRequest, state: web::Data<AdminState>, query: web::Query<TreeQuery>) -> HttpResponse {
    if !authorized(&req, &state) {
        return HttpResponse::Unauthorized().json(serde_json::json!({ "error": "unauthorized" }));
    }
    match (&query.node, &state.cluster) {
        (Some(node), Some(cluster)) => match cluster.lookup(node) {
            NodeLookup::Me => {}
            NodeLookup::Peer { admin_addr } => return proxy_tree(&req, node, &admin_addr).await,
            NodeLookup::Dead { last_heard_ms_ago, last_heard_at_ms } => {
                let message = format!("node {node} is dead (last heard {} ago)", crate::http::ago(last_heard_ms_ago));
                return HttpResponse::ServiceUnavailable().json(serde_json::json!({
                    "error": "node_dead", "node": node, "message": message,
                    "last_heard_ms_ago": last_heard_ms_ago, "last_heard_at_ms": last_heard_at_ms,
                }));
            }
            NodeLookup::Unknown => return no_such_node(node),
        },
        (Some(node), None) => return no_such_node(node),
        (None, _) => {}
    }
    let mut tree = walk(&state.node.root.get_cell(), &state.node.ctx.stats, 0);
    tree.node = state.cluster.as_ref().map(|c| c.name().to_string());
    HttpResponse::Ok().json(tree)
}

fn no_such_node(node: &str) -> HttpResponse {
    HttpResponse::NotFound().json(serde_json::json!({ "error": "no_such_node", "node": node, "message": format!("no such node {node}") }))
}

/// `/admin/tree?node=X` asked of another node: fetched from X's admin listener (as its
/// heartbeats announce it) with the caller's own token.
async fn proxy_tree(req: &HttpRequest, node: &str, addr: &str) -> HttpResponse {
    let unreachable = |why: String| {
        HttpResponse::BadGateway().json(serde_json::json!({
            "error": "unreachable", "node": node, "message": format!("node {node} did not answer at {addr}: {why}"),
        }))
    };
    if addr.is_empty() {
        return unreachable("it has not announced its admin address yet".into());
    }
    let token = bearer(req).unwrap_or_default().to_owned();
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(5)).build();
    let result = match client {
        Ok(c) => c.get(format!("http://{addr}/admin/tree")).bearer_auth(token).send().await,
        Err(e) => Err(e),
    };
    match result {
        Ok(r) if r.status().is_success() => match r.json::<TreeNode>().await {
            Ok(mut tree) => {
                tree.node = Some(node.to_owned());
                HttpResponse::Ok().json(tree)
            }
            Err(e) => unreachable(format!("unreadable answer: {e}")),
        },
        Ok(r) => unreachable(format!("it answered {}", r.status())),
        Err(e) => unreachable(e.to_string()),
    }
}

/// Query of `GET /admin/hot`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HotQuery {
    /// Actors per list, 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// The answer of `GET /admin/hot`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HotReport {
    /// The cluster node that answered (absent on a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Device sessions on this node.
    pub sessions: usize,
    /// Conversations active on this node.
    pub conversations: usize,
    /// The actors with the deepest mailboxes, deepest first (none queued: empty).
    pub deepest: Vec<crate::actors::HotActor>,
    /// The actors that spent the most time handling messages, most first.
    pub busiest: Vec<crate::actors::HotActor>,
}

/// The hottest actors of this node: deepest mailboxes and most busy time, with the
/// node's session and conversation counts.
#[utoipa::path(get, path = "/admin/hot", tag = "admin", params(HotQuery), security(("admin_token" = [])), responses(
    (status = 200, description = "The hottest actors", body = HotReport),
    (status = 400, description = "bad_request: limit out of range", body = AdminError),
    (status = 401, description = "unauthorized", body = AdminError),
))]
async fn hot(req: HttpRequest, state: web::Data<AdminState>, query: web::Query<HotQuery>) -> HttpResponse {
    if !authorized(&req, &state) {
        return HttpResponse::Unauthorized().json(serde_json::json!({ "error": "unauthorized" }));
    }
    let limit = query.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return HttpResponse::BadRequest().json(serde_json::json!({ "error": "bad_request", "message": "limit must be 1 to 100" }));
    }
    let hottest = state.node.ctx.stats.hottest(limit);
    let router = &state.node.ctx.router;
    HttpResponse::Ok().json(HotReport {
        node: state.cluster.as_ref().map(|c| c.name().to_string()),
        sessions: router.session_count(),
        conversations: router.conversation_count(),
        deepest: hottest.deepest,
        busiest: hottest.busiest,
    })
}

/// Members, health and load of every node.
#[utoipa::path(get, path = "/admin/cluster", tag = "admin", security(("admin_token" = [])), responses(
    (status = 200, description = "The cluster report", body = Object),
    (status = 401, description = "unauthorized", body = AdminError),
    (status = 404, description = "not_clustered", body = AdminError),
))]
async fn cluster(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if !authorized(&req, &state) {
        return HttpResponse::Unauthorized().json(serde_json::json!({ "error": "unauthorized" }));
    }
    match &state.cluster {
        Some(cluster) => HttpResponse::Ok().json(cluster.report().await),
        None => HttpResponse::NotFound().json(serde_json::json!({ "error": "not_clustered" })),
    }
}

/// Starts draining this node; answers at once (the node exits when the drain is done).
#[utoipa::path(post, path = "/admin/drain", tag = "admin", security(("admin_token" = [])), responses(
    (status = 202, description = "Draining", body = Object),
    (status = 401, description = "unauthorized", body = AdminError),
    (status = 409, description = "not_clustered: a single node cannot hand its work to anyone", body = AdminError),
))]
async fn drain(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if !authorized(&req, &state) {
        return HttpResponse::Unauthorized().json(serde_json::json!({ "error": "unauthorized" }));
    }
    match &state.cluster {
        Some(cluster) => {
            state.drain.start(cluster.clone(), state.node.clone());
            HttpResponse::Accepted().json(serde_json::json!({ "draining": cluster.name().as_ref() }))
        }
        None => {
            HttpResponse::Conflict().json(serde_json::json!({ "error": "not_clustered", "message": "a single node cannot hand its work to anyone" }))
        }
    }
}

/// Fault injection: makes a conversation's actor fail (its supervisor restarts it).
#[utoipa::path(post, path = "/admin/conversations/{id}/crash", tag = "admin", security(("admin_token" = [])),
    params(("id" = String, Path, format = Uuid, description = "Conversation id")),
    responses(
        (status = 202, description = "Crashed", body = Object),
        (status = 400, description = "bad_request: not a UUID", body = AdminError),
        (status = 401, description = "unauthorized", body = AdminError),
        (status = 404, description = "not_active: the conversation has no actor on this node", body = AdminError),
))]
async fn crash_conversation(req: HttpRequest, state: web::Data<AdminState>, path: web::Path<String>) -> HttpResponse {
    if !authorized(&req, &state) {
        return HttpResponse::Unauthorized().json(serde_json::json!({ "error": "unauthorized" }));
    }
    let Ok(id) = path.parse::<ConversationId>() else {
        return HttpResponse::BadRequest().json(serde_json::json!({ "error": "bad_request" }));
    };
    match state.node.ctx.router.active_conversation(id) {
        Some(mailbox) => {
            mailbox.control(ConversationControl::Crash);
            HttpResponse::Accepted().json(serde_json::json!({ "crashed": mailbox.actor().get_id().to_string() }))
        }
        None => HttpResponse::NotFound().json(serde_json::json!({ "error": "not_active" })),
    }
}

/// `POST /admin/provision`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
pub struct ProvisionBody {
    /// Accounts to create, 1 to 50,000.
    #[schema(minimum = 1, maximum = 50000)]
    pub count: usize,
    /// Phones are `<prefix><n>`, n zero-padded to E.164's 15 digits (default `+1999`).
    #[serde(default = "default_prefix")]
    pub phone_prefix: String,
    /// The first n.
    #[serde(default)]
    pub first: u64,
}

fn default_prefix() -> String {
    "+1999".into()
}

/// Bulk provisioning (load tests, migrations): accounts with a primary device each,
/// without one-time codes. Returns their credentials (phones already registered are
/// skipped and not returned).
#[utoipa::path(post, path = "/admin/provision", tag = "admin", request_body = ProvisionBody, security(("admin_token" = [])), responses(
    (status = 200, description = "Credentials of the accounts created", body = Vec<crate::accounts::DeviceCredentials>),
    (status = 400, description = "bad_request (count out of range, malformed body) or provision_failed (a phone is not E.164)", body = AdminError),
    (status = 401, description = "unauthorized", body = AdminError),
    (status = 413, description = "Body over 64 KiB", body = AdminError),
    (status = 415, description = "Not JSON", body = AdminError),
    (status = 503, description = "unavailable: the store failed", body = AdminError),
))]
async fn provision(req: HttpRequest, state: web::Data<AdminState>, body: web::Json<ProvisionBody>) -> HttpResponse {
    if !authorized(&req, &state) {
        return HttpResponse::Unauthorized().json(serde_json::json!({ "error": "unauthorized" }));
    }
    if body.count == 0 || body.count > 50_000 {
        return HttpResponse::BadRequest().json(serde_json::json!({ "error": "bad_request", "message": "count must be 1 to 50000" }));
    }
    match state.accounts.provision(&body.phone_prefix, body.first, body.count).await {
        Ok(credentials) => HttpResponse::Ok().json(credentials),
        Err(e @ (crate::accounts::AccountError::Store(_) | crate::accounts::AccountError::Auth(crate::accounts::AuthError::Store(_)))) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": "unavailable", "message": e.to_string() }))
        }
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({ "error": "provision_failed", "message": e.to_string() })),
    }
}

/// Runs one media sweep now (the periodic one runs every `media_sweep_interval_secs`);
/// answers with what it did. Safe while other nodes sweep too.
#[utoipa::path(post, path = "/admin/media/sweep", tag = "admin", security(("admin_token" = [])), responses(
    (status = 200, description = "What the sweep did", body = crate::media::sweep::SweepReport),
    (status = 401, description = "No or wrong admin token", body = AdminError),
    (status = 503, description = "The store or the blob store failed", body = AdminError),
))]
pub async fn sweep_media(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
    if !authorized(&req, &state) {
        return HttpResponse::Unauthorized().json(serde_json::json!({ "error": "unauthorized" }));
    }
    match state.media.sweep_once().await {
        Ok(report) => HttpResponse::Ok().json(report),
        Err(e) => HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": "unavailable", "message": e.to_string() })),
    }
}

/// Registers the admin routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use super::api::resource;
    cfg.service(resource("/admin/tree", &["GET"]).route(web::get().to(tree)))
        .service(resource("/admin/hot", &["GET"]).route(web::get().to(hot)))
        .service(resource("/admin/cluster", &["GET"]).route(web::get().to(cluster)))
        .service(resource("/admin/drain", &["POST"]).route(web::post().to(drain)))
        .service(resource("/admin/provision", &["POST"]).route(web::post().to(provision)))
        .service(resource("/admin/media/sweep", &["POST"]).route(web::post().to(sweep_media)))
        .service(resource("/admin/conversations/{id}/crash", &["POST"]).route(web::post().to(crash_conversation)))
        .configure(super::console::routes);
}
