//! The admin API, on its own listener and behind its own bearer token: the live
//! supervision tree (like Erlang's observer), fault injection for drills, and a media
//! sweep on demand.

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
#[derive(Debug, Serialize, serde::Deserialize)]
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
    /// Restarts (supervisors).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
    /// Number of children.
    pub children_count: usize,
    /// Up to `SAMPLE` children, busiest mailboxes first.
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
        mailbox: gauge.map(|g| g.depth()),
        restarts,
        children_count,
        children: listed,
    }
}

fn authorized(req: &HttpRequest, state: &AdminState) -> bool {
    bearer(req).is_some_and(|t| constant_time_eq(t.as_bytes(), state.token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(serde::Deserialize)]
struct TreeQuery {
    /// Another node of the cluster, by name.
    node: Option<String>,
}

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

#[derive(serde::Deserialize)]
struct ProvisionBody {
    count: usize,
    #[serde(default = "default_prefix")]
    phone_prefix: String,
    #[serde(default)]
    first: u64,
}

fn default_prefix() -> String {
    "+1999".into()
}

/// Bulk provisioning (load tests, migrations): accounts with a primary device each,
/// without one-time codes. Returns their credentials.
async fn provision(req: HttpRequest, state: web::Data<AdminState>, body: web::Json<ProvisionBody>) -> HttpResponse {
    if !authorized(&req, &state) {
        return HttpResponse::Unauthorized().json(serde_json::json!({ "error": "unauthorized" }));
    }
    if body.count == 0 || body.count > 50_000 {
        return HttpResponse::BadRequest().json(serde_json::json!({ "error": "bad_request", "message": "count must be 1 to 50000" }));
    }
    match state.accounts.provision(&body.phone_prefix, body.first, body.count).await {
        Ok(credentials) => HttpResponse::Ok().json(credentials),
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({ "error": "provision_failed", "message": e.to_string() })),
    }
}

/// Runs one media sweep now (the periodic one runs every `media_sweep_interval_secs`);
/// answers with what it did.
async fn sweep_media(req: HttpRequest, state: web::Data<AdminState>) -> HttpResponse {
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
    cfg.route("/admin/tree", web::get().to(tree))
        .route("/admin/cluster", web::get().to(cluster))
        .route("/admin/drain", web::post().to(drain))
        .route("/admin/provision", web::post().to(provision))
        .route("/admin/media/sweep", web::post().to(sweep_media))
        .route("/admin/conversations/{id}/crash", web::post().to(crash_conversation));
}
