//! The cluster: membership, placement, node-to-node routing, and the Redis directory.
//!
//! ```text
//! node supervisor
//! ├── … (sessions, conversations, writer, push: see `actors`)
//! ├── cluster-node-server ── ractor_cluster NodeServer: the TCP listener and one
//! │                          NodeSession per connected peer (cookie handshake)
//! └── cluster-router ──────── the one actor other nodes address (process group
//!                             `switchboard.routers`); carries batched envelopes,
//!                             runs heartbeats, failure detection and reconnection
//! ```
//!
//! - [`membership`] decides who is alive (the documented dead rule), [`placement`] who
//!   owns each conversation (rendezvous hashing over the live members).
//! - [`Cluster`] implements [`RemoteRoutes`] for the node's router: forwarding requests to
//!   owners, deliveries to the nodes where devices are connected (per the replicated
//!   [`directory`]), each through a per-peer outbox flushed as one batch.
//! - [`link`] is the router actor: it flushes outboxes, dispatches incoming batches to
//!   the local router, and maps ractor_cluster's remote actors to node names.
//! - [`presence`] keeps the cluster-wide directory and presence in Redis.
//!
//! Invariant: nothing here knows sessions' or conversations' internals; it moves
//! [`wire`] envelopes between routers. Safety under disagreement does not depend on this
//! module at all: the store fences every append (ARCHITECTURE.md, "Fencing").

pub mod directory;
pub mod link;
pub mod membership;
pub mod placement;
pub mod presence;
pub mod tls;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use ractor::ActorRef;

use crate::actors::messages::{ConversationRequest, SessionMsg, SessionRequest};
use crate::actors::router::{RemoteRoutes, RouteError};
use crate::actors::session_end::{self, Ended, Ending};
use crate::actors::{NodeContext, Router};
use crate::config::ClusterConfig;
use crate::ids::{ConversationId, DeviceId, UserId};
use crate::protocol::id_bytes;
use directory::RemoteDirectory;
use link::LinkMsg;
use membership::{Change, Gone, Membership, PeerStatus};
use placement::Members;
use presence::{DeviceChange, RedisPresence};
use wire::pb;

/// (user, device) pairs of another node.
type RemoteDevices = Vec<(UserId, DeviceId)>;

/// Envelopes queued towards one peer before new ones are dropped (counted in
/// `switchboard_cluster_dropped_total`): a peer that cannot keep up must not grow our memory.
const MAX_OUTBOX: usize = 200_000;

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// An actor did not start.
    #[error("cluster actors: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    /// Redis settings are wrong.
    #[error(transparent)]
    Presence(#[from] presence::PresenceError),
    /// The TLS files are missing or wrong.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// What this node tells its peers about itself (its listeners, as others reach them).
#[derive(Debug, Clone, Default)]
pub struct LocalAddrs {
    /// Admin listener.
    pub admin: String,
    /// TCP listener for devices.
    pub tcp: String,
    /// HTTP/WebSocket listener for devices.
    pub http: String,
}

impl LocalAddrs {
    /// The bound addresses as peers and operators reach them: a listener bound to every
    /// interface (`0.0.0.0`, `[::]`) is announced with the host of `cluster_advertise`.
    pub fn announced(admin: std::net::SocketAddr, tcp: std::net::SocketAddr, http: std::net::SocketAddr, cluster_advertise: &str) -> Self {
        let host = match cluster_advertise.rsplit_once(':') {
            Some((host, _)) => host,
            None => cluster_advertise,
        };
        let announce = |bound: std::net::SocketAddr| if bound.ip().is_unspecified() { format!("{host}:{}", bound.port()) } else { bound.to_string() };
        Self { admin: announce(admin), tcp: announce(tcp), http: announce(http) }
    }
}

/// One peer as the link sees it.
#[derive(Default)]
struct Peer {
    /// Its router actor (a ractor_cluster remote actor), while connected.
    router: Option<ActorRef<LinkMsg>>,
    /// Envelopes waiting for the next flush.
    outbox: Vec<pb::Envelope>,
    /// A flush is already queued at the link actor.
    flush_queued: bool,
    /// Its last heartbeat.
    heartbeat: Option<pb::Heartbeat>,
    /// When its router was mapped (the connection became usable), for the silent
    /// connection check.
    connected_at: Option<Instant>,
}

/// The cluster state of one node, shared by the router (through [`RemoteRoutes`]), the
/// link actor and the admin API.
pub struct Cluster {
    name: Arc<str>,
    incarnation: u64,
    config: ClusterConfig,
    router: Router,
    /// The node's services, for the end of sessions of other nodes (`session_end`).
    ctx: NodeContext,
    membership: Mutex<Membership>,
    members: RwLock<Members>,
    peers: Mutex<HashMap<Arc<str>, Peer>>,
    directory: RemoteDirectory,
    presence: OnceLock<RedisPresence>,
    link: OnceLock<ActorRef<LinkMsg>>,
    addrs: OnceLock<LocalAddrs>,
    tls: Option<Arc<tls::ClusterTls>>,
    /// Requests forwarded here, per conversation, waiting for its activation (see
    /// `link::hand_to_conversation`).
    forwarded: Mutex<HashMap<ConversationId, std::collections::VecDeque<ConversationRequest>>>,
    /// True once start-up waited for the seeds (`wait_for_peers`): the member view is
    /// then worth deciding on.
    joined: tokio::sync::watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section leaves the state consistent; a panic elsewhere must not
    // take routing down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A member of `switchboard admin cluster`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MemberReport {
    /// Node name.
    pub name: String,
    /// alive / suspect / dead (this node's view), "self" for the answering node.
    pub status: String,
    /// Owns conversations in this node's view.
    pub member: bool,
    /// Draining.
    pub draining: bool,
    /// Connected devices.
    pub sessions: u64,
    /// Active conversations.
    pub conversations: u64,
    /// Admin listener.
    pub admin_addr: String,
    /// TCP listener.
    pub tcp_addr: String,
    /// HTTP listener.
    pub http_addr: String,
    /// Milliseconds since last heard (0 for self).
    pub last_heard_ms: u64,
    /// When it was last heard from, in ms since the Unix epoch (its own stamp; now for
    /// self): for a dead node, the last moment it is known to have been alive.
    #[serde(default)]
    pub last_heard_at_ms: u64,
    /// `sessions` and `conversations` are what the node last reported before it died, not
    /// current: its devices have reconnected elsewhere or are offline, its conversations
    /// have moved.
    #[serde(default)]
    pub counts_stale: bool,
}

/// What this node knows of a node, by name (`admin tree --node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLookup {
    /// The answering node itself.
    Me,
    /// A peer that is not dead, reachable at its announced admin address.
    Peer {
        /// Its admin listener (empty if it never announced one).
        admin_addr: String,
    },
    /// A peer declared dead.
    Dead {
        /// Milliseconds since it was last heard from.
        last_heard_ms_ago: u64,
        /// When, in ms since the Unix epoch.
        last_heard_at_ms: u64,
    },
    /// No node of that name was ever heard from (or it was forgotten).
    Unknown,
}

/// `GET /admin/cluster`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClusterReport {
    /// The answering node.
    pub node: String,
    /// Its view of the owners of conversations.
    pub members: Vec<String>,
    /// Every node it knows, itself first.
    pub nodes: Vec<MemberReport>,
    /// Redis, if configured.
    pub redis: Option<presence::RedisHealth>,
}

impl Cluster {
    fn new(config: ClusterConfig, ctx: NodeContext, tls: Option<Arc<tls::ClusterTls>>) -> Arc<Self> {
        let router = ctx.router.clone();
        let name: Arc<str> = Arc::from(config.node_name.as_str());
        let membership = Membership::new(name.clone(), config.heartbeat, config.dead_after);
        let members = membership.members();
        Arc::new(Self {
            name,
            incarnation: crate::store::now_ms(),
            config,
            router,
            ctx,
            membership: Mutex::new(membership),
            members: RwLock::new(members),
            peers: Mutex::new(HashMap::new()),
            directory: RemoteDirectory::default(),
            presence: OnceLock::new(),
            link: OnceLock::new(),
            addrs: OnceLock::new(),
            tls,
            forwarded: Mutex::new(HashMap::new()),
            joined: tokio::sync::watch::Sender::new(false),
        })
    }

    /// This node's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The current owners of conversations.
    pub fn members(&self) -> Members {
        self.members.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Redis presence, if configured.
    pub fn presence(&self) -> Option<&RedisPresence> {
        self.presence.get()
    }

    /// True once this node started draining.
    pub fn draining(&self) -> bool {
        lock(&self.membership).draining()
    }

    /// Starts draining: this node leaves the member view (its conversations move to their
    /// new owners) and says so in its heartbeats. Devices are closed by the caller.
    pub fn start_drain(&self) {
        let changed = lock(&self.membership).drain_me();
        if changed {
            tracing::info!(node = %self.name, "draining");
            self.apply(Change { members_changed: true, ..Change::default() });
            self.send_heartbeats();
        }
    }

    /// At start-up: waits (at most `dead_after`) until every seed is connected, so that a
    /// joining node knows the members before it places any conversation. (Placing one
    /// early would be safe, the store fences appends, but would move it twice.)
    pub async fn wait_for_peers(&self) {
        self.join_seeds().await;
        self.joined.send_replace(true);
    }

    async fn join_seeds(&self) {
        if self.config.seeds.is_empty() {
            return;
        }
        let deadline = Instant::now() + self.config.dead_after;
        while Instant::now() < deadline {
            let connected: Vec<String> = lock(&self.peers)
                .values()
                .filter(|p| p.router.is_some())
                .filter_map(|p| p.heartbeat.as_ref().map(|h| h.cluster_addr.clone()))
                .collect();
            if self.config.seeds.iter().all(|s| *s == self.config.advertise || connected.contains(s)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // One more heartbeat: peers of peers (learned from heartbeats) are dialled too.
        tokio::time::sleep(self.config.heartbeat).await;
        tracing::info!(members = ?self.members().names(), "joined the cluster");
    }

    /// Sends every queued envelope now (shutdown).
    pub fn flush_now(&self) {
        let names: Vec<Arc<str>> = lock(&self.peers).keys().cloned().collect();
        for name in names {
            link::flush(self, &name);
        }
    }

    /// Queues an envelope for `node`. False if the node is not connected now or its
    /// outbox is full.
    fn queue(&self, node: &str, envelope: pb::envelope::Kind) -> bool {
        let mut peers = lock(&self.peers);
        let Some(peer) = peers.get_mut(node) else { return false };
        if peer.router.is_none() {
            return false;
        }
        if peer.outbox.len() >= MAX_OUTBOX {
            metrics::counter!("switchboard_cluster_dropped_total").increment(1);
            return false;
        }
        peer.outbox.push(pb::Envelope { kind: Some(envelope) });
        if !peer.flush_queued {
            peer.flush_queued = true;
            if let Some(link) = self.link.get() {
                let _ = link.cast(LinkMsg::Flush(Arc::from(node)));
            }
        }
        true
    }

    /// Queues an envelope for every connected peer.
    fn broadcast(&self, envelope: pb::envelope::Kind) {
        let names: Vec<Arc<str>> = lock(&self.peers).iter().filter(|(_, p)| p.router.is_some()).map(|(n, _)| n.clone()).collect();
        for name in names {
            self.queue(&name, envelope.clone());
        }
    }

    fn heartbeat(&self) -> pb::Heartbeat {
        let addrs = self.addrs.get().cloned().unwrap_or_default();
        pb::Heartbeat {
            cluster_addr: self.config.advertise.clone(),
            admin_addr: addrs.admin,
            tcp_addr: addrs.tcp,
            http_addr: addrs.http,
            draining: self.draining(),
            sessions: self.router.session_count() as u64,
            conversations: self.router.conversation_count() as u64,
            members: self.members().names().iter().map(|n| n.to_string()).collect(),
            peer_addrs: self.peer_addrs(),
        }
    }

    /// Cluster addresses of the peers not declared dead.
    fn peer_addrs(&self) -> Vec<String> {
        let membership = lock(&self.membership);
        let peers = lock(&self.peers);
        peers
            .iter()
            .filter(|(name, _)| membership.peer(name).is_some_and(|v| v.status != PeerStatus::Dead))
            .filter_map(|(_, p)| p.heartbeat.as_ref().map(|h| h.cluster_addr.clone()))
            .collect()
    }

    fn send_heartbeats(&self) {
        self.broadcast(pb::envelope::Kind::Heartbeat(self.heartbeat()));
    }

    /// A connection to `node` is up: say hello and send our directory.
    fn peer_connected(&self, node: Arc<str>, router: ActorRef<LinkMsg>) {
        {
            let mut peers = lock(&self.peers);
            let peer = peers.entry(node.clone()).or_default();
            peer.router = Some(router);
            peer.connected_at = Some(Instant::now());
        }
        tracing::info!(peer = %node, "cluster peer connected");
        self.queue(&node, pb::envelope::Kind::Heartbeat(self.heartbeat()));
        self.send_snapshot(&node);
        // Theirs may have been dropped here (a death we declared while the connection
        // stayed up): ask for it again.
        self.queue(&node, pb::envelope::Kind::SnapshotRequest(pb::SnapshotRequest {}));
    }

    /// Queues our directory for `node`, ordered among our arrival/departure announcements.
    fn send_snapshot(&self, node: &str) {
        self.router.with_local_devices(|devices| {
            let devices =
                devices.into_iter().map(|(u, d)| pb::DirectoryUpdate { user_id: id_bytes(u), device_id: id_bytes(d), online: true }).collect();
            self.queue(node, pb::envelope::Kind::Snapshot(pb::DirectorySnapshot { devices }));
        });
    }

    /// The connection to `node` is gone (its actor left the process group). The peer is
    /// not dead until the membership says so.
    fn peer_disconnected(&self, node: &str) {
        let mut peers = lock(&self.peers);
        if let Some(peer) = peers.get_mut(node) {
            peer.router = None;
            peer.connected_at = None;
            peer.outbox.clear();
            peer.flush_queued = false;
            tracing::warn!(peer = %node, "cluster peer disconnected");
        }
    }

    /// Peers we hold a connection to but have heard nothing from for `dead_after` since it
    /// was opened (or since they were last heard): such a connection carries our traffic
    /// one way only (seen with ractor_cluster when two nodes dial each other at once), so
    /// the link resets it and redials. Each is reported once per `dead_after`.
    fn silent_connections(&self, now: Instant) -> Vec<Arc<str>> {
        let membership = lock(&self.membership);
        let mut peers = lock(&self.peers);
        let mut silent = Vec::new();
        for (name, peer) in peers.iter_mut() {
            let Some(connected_at) = peer.connected_at else { continue };
            if peer.router.is_none() {
                continue;
            }
            let heard = membership.peer(name).map(|v| v.last_heard).unwrap_or(connected_at).max(connected_at);
            if now.saturating_duration_since(heard) >= self.config.dead_after {
                peer.connected_at = Some(now);
                silent.push(name.clone());
            }
        }
        silent
    }

    /// Applies a membership change: new placement, handoffs, dropped directories, and the
    /// end of the sessions of peers that died or restarted (`session_end`).
    fn apply(&self, change: Change) {
        // How each peer's sessions ended, when, and its devices this node knew of.
        let mut ended: Vec<(Ending, Gone, RemoteDevices)> = Vec::new();
        for dead in &change.died {
            let ago = crate::store::now_ms().saturating_sub(dead.last_heard_ms);
            tracing::warn!(peer = %dead.name, last_heard_ms_ago = ago, "cluster peer declared dead");
            metrics::counter!("switchboard_cluster_peers_died_total").increment(1);
            ended.push((Ending::NodeDead, dead.clone(), self.directory.drop_node(&dead.name)));
            if let Some(presence) = self.presence.get() {
                presence.node_died(&dead.name);
            }
        }
        if !change.forgotten.is_empty() {
            let mut peers = lock(&self.peers);
            for gone in &change.forgotten {
                tracing::info!(peer = %gone, "dead cluster peer forgotten");
                peers.remove(gone);
            }
        }
        for back in &change.rejoined {
            tracing::info!(peer = %back, "cluster peer rejoined");
            // What we knew of its devices is stale (a restart) or was dropped (we declared
            // it dead): ask for a fresh snapshot, and send ours, which it may have dropped.
            let dropped = self.directory.drop_node(back);
            if let Some(restarted) = change.restarted.iter().find(|g| g.name == *back) {
                tracing::warn!(peer = %back, devices = dropped.len(), "cluster peer restarted; its previous sessions ended");
                ended.push((Ending::NodeRestarted, restarted.clone(), dropped));
            }
            self.queue(back, pb::envelope::Kind::SnapshotRequest(pb::SnapshotRequest {}));
            self.send_snapshot(back);
        }
        if change.members_changed {
            let (members, draining) = {
                // Published while the membership is locked: two concurrent changes (a
                // drain asked through the admin API, a peer's heartbeat) cannot leave the
                // older view in place.
                let m = lock(&self.membership);
                let members = m.members();
                *self.members.write().unwrap_or_else(|p| p.into_inner()) = members.clone();
                (members, m.draining())
            };
            tracing::info!(members = ?members.names(), "cluster members changed");
            metrics::gauge!("switchboard_cluster_members").set(members.names().len() as f64);
            let moved = self.router.hand_off_moved(draining);
            if moved > 0 {
                tracing::info!(conversations = moved, "handing off conversations to their new owners");
                metrics::counter!("switchboard_conversations_handed_off_total").increment(moved as u64);
            }
        }
        // After the new view is published: the node with the push duty is chosen in it.
        if !ended.is_empty() {
            let members = self.members();
            for (ending, gone, devices) in ended {
                let push_duty = push_duty(&self.name, members.names(), &gone.name);
                session_end::remote_ended(&self.ctx, Ended { ending, devices, last_seen_ms: gone.last_heard_ms, push_duty });
            }
        }
    }

    /// `node`'s directory snapshot arrived: devices it listed before and not now ended
    /// there without this node hearing of it (see `session_end::Ending::Vanished`).
    fn snapshot(&self, node: &Arc<str>, devices: Vec<(UserId, DeviceId)>) {
        let vanished = self.directory.replace_node(node, devices);
        if !vanished.is_empty() {
            session_end::remote_ended(&self.ctx, Ended { ending: Ending::Vanished, devices: vanished, last_seen_ms: 0, push_duty: false });
        }
    }

    /// `GET /admin/cluster`.
    pub async fn report(&self) -> ClusterReport {
        let now = Instant::now();
        let addrs = self.addrs.get().cloned().unwrap_or_default();
        let members = self.members();
        let mut nodes = vec![MemberReport {
            name: self.name.to_string(),
            status: "self".into(),
            member: members.contains(&self.name),
            draining: self.draining(),
            sessions: self.router.session_count() as u64,
            conversations: self.router.conversation_count() as u64,
            admin_addr: addrs.admin,
            tcp_addr: addrs.tcp,
            http_addr: addrs.http,
            last_heard_ms: 0,
            last_heard_at_ms: crate::store::now_ms(),
            counts_stale: false,
        }];
        {
            let membership = lock(&self.membership);
            let peers = lock(&self.peers);
            for (name, view) in membership.peers() {
                let hb = peers.get(name).and_then(|p| p.heartbeat.clone()).unwrap_or_default();
                nodes.push(MemberReport {
                    name: name.to_string(),
                    status: match view.status {
                        PeerStatus::Alive => "alive",
                        PeerStatus::Suspect => "suspect",
                        PeerStatus::Dead => "dead",
                    }
                    .into(),
                    member: members.contains(name),
                    draining: view.draining,
                    sessions: hb.sessions,
                    conversations: hb.conversations,
                    admin_addr: hb.admin_addr,
                    tcp_addr: hb.tcp_addr,
                    http_addr: hb.http_addr,
                    last_heard_ms: now.saturating_duration_since(view.last_heard).as_millis() as u64,
                    last_heard_at_ms: view.last_heard_ms,
                    counts_stale: view.status == PeerStatus::Dead,
                });
            }
        }
        let redis = match self.presence.get() {
            Some(p) => Some(p.health().await),
            None => None,
        };
        ClusterReport { node: self.name.to_string(), members: members.names().iter().map(|n| n.to_string()).collect(), nodes, redis }
    }

    /// What this node knows of `node`: itself, a peer (and where its admin listener is), a
    /// dead peer (and when it was last heard), or nothing.
    pub fn lookup(&self, node: &str) -> NodeLookup {
        if node == self.name.as_ref() {
            return NodeLookup::Me;
        }
        let membership = lock(&self.membership);
        let Some(view) = membership.peer(node) else { return NodeLookup::Unknown };
        if view.status == PeerStatus::Dead {
            return NodeLookup::Dead {
                last_heard_ms_ago: Instant::now().saturating_duration_since(view.last_heard).as_millis() as u64,
                last_heard_at_ms: view.last_heard_ms,
            };
        }
        let admin_addr = lock(&self.peers).get(node).and_then(|p| p.heartbeat.as_ref().map(|h| h.admin_addr.clone())).unwrap_or_default();
        NodeLookup::Peer { admin_addr }
    }
}

#[async_trait::async_trait]
impl RemoteRoutes for Cluster {
    fn owner(&self, id: ConversationId) -> Option<Arc<str>> {
        let members = self.members.read().unwrap_or_else(|p| p.into_inner());
        match members.owner(id) {
            Some(owner) if *owner != self.name => Some(owner.clone()),
            _ => None,
        }
    }

    fn to_conversation(&self, node: &str, id: ConversationId, request: ConversationRequest) -> Result<(), RouteError> {
        let envelopes = wire::to_conversation(id, &request);
        let n = envelopes.len() as u64;
        for envelope in envelopes {
            if !self.queue(node, pb::envelope::Kind::ToConversation(envelope)) {
                return Err(RouteError::Unavailable(format!("owner node {node} unreachable")));
            }
        }
        metrics::counter!("switchboard_cluster_forwarded_total").increment(n);
        Ok(())
    }

    fn to_users(&self, users: &[UserId], except: Option<DeviceId>, make: &dyn Fn() -> SessionRequest) {
        let targets = self.directory.nodes_for(users, except);
        if targets.is_empty() {
            return;
        }
        let Some(payload) = wire::session_payload(&SessionMsg::Request(make())) else { return };
        for (node, users) in targets {
            let envelope = pb::ToUsers {
                user_ids: users.into_iter().map(id_bytes).collect(),
                except_device_id: except.map(id_bytes).unwrap_or_default(),
                payload: Some(payload.clone()),
            };
            self.queue(&node, pb::envelope::Kind::ToUsers(envelope));
        }
    }

    fn to_device(&self, user: UserId, device: DeviceId, message: SessionMsg) {
        let nodes = self.directory.nodes_of_device(user, device);
        if nodes.is_empty() {
            return;
        }
        let Some(payload) = wire::session_payload(&message) else { return };
        for node in nodes {
            let envelope = pb::ToDevice { user_id: id_bytes(user), device_id: id_bytes(device), payload: Some(payload.clone()) };
            self.queue(&node, pb::envelope::Kind::ToDevice(envelope));
        }
    }

    fn session_changed(&self, user: UserId, device: DeviceId, online: bool, last_here: bool) {
        self.broadcast(pb::envelope::Kind::Directory(pb::DirectoryUpdate { user_id: id_bytes(user), device_id: id_bytes(device), online }));
        if let Some(presence) = self.presence.get() {
            let gone = !online && last_here && !self.directory.has_user(user);
            presence.changed(DeviceChange { user, device, online, last_seen_ms: gone.then(crate::store::now_ms) });
        }
    }

    fn user_elsewhere(&self, user: UserId) -> bool {
        self.directory.has_user(user)
    }

    fn device_elsewhere(&self, user: UserId, device: DeviceId) -> bool {
        !self.directory.nodes_of_device(user, device).is_empty()
    }

    async fn presence(&self, users: &[UserId]) -> Option<Vec<(bool, Option<u64>)>> {
        let presence = self.presence.get()?;
        if !presence.is_up() {
            return None;
        }
        let dead = |node: &str| lock(&self.membership).peer(node).is_some_and(|v| v.status == PeerStatus::Dead);
        match presence.presence(users, &dead).await {
            Ok(answers) => Some(answers.into_iter().map(|p| (p.online, p.last_seen_ms)).collect()),
            Err(e) => {
                tracing::debug!(error = %e, "redis presence unavailable; answering from this node's view");
                None
            }
        }
    }
}

/// Starts the cluster for a node whose actor tree is running: the NodeServer, the router
/// actor, Redis presence, and the hook into the node's router.
pub async fn start(
    config: ClusterConfig,
    node: &crate::actors::node::Node,
    addrs: LocalAddrs,
    stop: tokio_util::sync::CancellationToken,
) -> Result<Arc<Cluster>, ClusterError> {
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(tls::ClusterTls::load(files)?)),
        None => None,
    };
    let cluster = Cluster::new(config, node.ctx.clone(), tls);
    let _ = cluster.addrs.set(addrs);
    if let Some(url) = cluster.config.redis.clone() {
        let router = node.ctx.router.clone();
        // The devices this node's previous run held when it ended (found in Redis): their
        // sessions ended with it. Peers that saw it restart or die did the same for their
        // own 1:1 peers, and one of them pushes; this node pushes only if it is alone.
        let me = Arc::downgrade(&cluster);
        let previous_run: presence::PreviousRun = Arc::new(move |devices, last_seen_ms| {
            let me = me.clone();
            tokio::spawn(async move {
                // Alone or not is known once start-up has joined the seeds.
                let Some(mut joined) = me.upgrade().map(|c| c.joined.subscribe()) else { return };
                if joined.wait_for(|j| *j).await.is_err() {
                    return;
                }
                let Some(cluster) = me.upgrade() else { return };
                let push_duty = cluster.members().names() == [cluster.name.clone()];
                session_end::remote_ended(&cluster.ctx, Ended { ending: Ending::PreviousRun, devices, last_seen_ms, push_duty });
            });
        });
        let ca = cluster.config.redis_tls_ca.clone();
        let presence =
            RedisPresence::start(&url, ca.as_deref(), cluster.name.clone(), Arc::new(move || router.local_devices()), previous_run, stop.clone())?;
        let _ = cluster.presence.set(presence);
    }
    node.ctx.router.set_remote(cluster.clone());
    link::start(cluster.clone(), node.root.get_cell(), stop).await?;
    Ok(cluster)
}

/// True if `me` pushes the devices of sessions that ended with `ended_node` (it died or
/// restarted): the lowest-named member other than that node. Every node computes it from
/// its own view, so exactly one node pushes while views agree (a disagreement costs a
/// duplicate notification, never a lost one: each node that thinks it is chosen pushes).
fn push_duty(me: &str, members: &[Arc<str>], ended_node: &str) -> bool {
    members.iter().map(|m| m.as_ref()).filter(|m| *m != ended_node).min() == Some(me)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_named_member_other_than_the_ended_node_pushes() {
        let members: Vec<Arc<str>> = vec!["n0".into(), "n1".into(), "n2".into()];
        // n0 restarted: n1 pushes for its previous sessions, n0 does not.
        assert!(push_duty("n1", &members, "n0"));
        assert!(!push_duty("n0", &members, "n0"));
        assert!(!push_duty("n2", &members, "n0"));
        // n2 died (and has left the view): n0.
        let survivors = &members[..2];
        assert!(push_duty("n0", survivors, "n2"));
        assert!(!push_duty("n1", survivors, "n2"));
    }

    #[test]
    fn listeners_on_every_interface_are_announced_with_the_advertised_host() {
        let addrs = LocalAddrs::announced(
            "0.0.0.0:8082".parse().expect("addr"),
            "[::]:8081".parse().expect("addr"),
            "10.0.0.5:8080".parse().expect("addr"),
            "node-1.peers.svc:4369",
        );
        assert_eq!(
            (addrs.admin.as_str(), addrs.tcp.as_str(), addrs.http.as_str()),
            ("node-1.peers.svc:8082", "node-1.peers.svc:8081", "10.0.0.5:8080")
        );
    }
}
