//! The router actor: the one actor of a node that other nodes address.
//!
//! It joins the process group [`GROUP`]; ractor_cluster mirrors it on every connected
//! peer as a remote actor, and mirrors theirs here. Its only remotable message is a
//! [`LinkMsg::Batch`] (an encoded `cluster.v1.Batch`), so cluster traffic is one stream
//! of batches per pair of nodes, whatever the number of sessions and conversations.
//!
//! Every heartbeat interval it: sends a heartbeat to each connected peer, applies the
//! failure detector's timeouts (`membership`), maps newly connected remote routers to
//! node names, and reconnects, with exponential backoff, to every known peer address
//! that has no connection (seeds, the addresses peers announced and the peers they
//! know), over TLS when configured. ractor_cluster has no failure detector and no
//! reconnection of its own; these are ours.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::{NodeServer, NodeServerMessage};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::tls;
use super::wire::{self, pb};
use super::{Cluster, ClusterError};
use crate::actors::messages::{ConversationRequest, SessionMsg, SessionRequest};
use crate::protocol::{self, parse_id};

/// The process group of router actors.
pub const GROUP: &str = "switchboard.routers";

/// Largest encoded batch; bigger flushes are split (peers accept 16 MiB frames).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Messages of the router actor.
pub enum LinkMsg {
    /// A batch from another node: the only message that crosses nodes.
    Batch(Vec<u8>),
    /// Send what is queued for this peer.
    Flush(Arc<str>),
    /// Heartbeats, failure detection, reconnection.
    Tick,
}

const BATCH_VARIANT: &str = "Batch";

impl ractor::Message for LinkMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            LinkMsg::Batch(args) => Ok(SerializedMessage::Cast { variant: BATCH_VARIANT.into(), args, metadata: None }),
            // Local bookkeeping never leaves the node.
            LinkMsg::Flush(_) | LinkMsg::Tick => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match message {
            SerializedMessage::Cast { variant, args, .. } if variant == BATCH_VARIANT => Ok(LinkMsg::Batch(args)),
            _ => Err(BoxedDowncastErr),
        }
    }
}

/// The router actor.
pub struct Link;

/// Its arguments.
pub struct LinkArgs {
    cluster: Arc<Cluster>,
    node_server: ActorRef<NodeServerMessage>,
    stop: CancellationToken,
}

/// Reconnection state of one peer address.
struct Backoff {
    next: Instant,
    delay: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Its state.
pub struct LinkState {
    args: LinkArgs,
    /// Remote routers whose node name is not known yet.
    unmapped: Vec<ActorCell>,
    /// Remote router actor → node name.
    by_actor: HashMap<ActorId, Arc<str>>,
    reconnect: HashMap<String, Backoff>,
}

/// Starts the NodeServer and the router actor under `root`.
pub(super) async fn start(cluster: Arc<Cluster>, root: ActorCell, stop: CancellationToken) -> Result<(), ClusterError> {
    let config = cluster.config();
    let host = config.advertise.rsplit_once(':').map(|(h, _)| h.to_owned()).unwrap_or_else(|| config.advertise.clone());
    let encryption = cluster.tls.as_ref().map(|tls| ractor_cluster::IncomingEncryptionMode::Tls(tls.acceptor.clone()));
    let server = NodeServer::new(
        config.listen.port(),
        config.cookie.clone(),
        config.node_name.clone(),
        host,
        encryption,
        // The full mesh is built by our reconnection from the addresses heartbeats carry:
        // ractor_cluster's transitive mode would dial peers-of-peers without TLS.
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr(config.listen.ip());
    let (node_server, _) = Actor::spawn_linked(Some("cluster-node-server".into()), server, (), root.clone()).await?;
    let args = LinkArgs { cluster: cluster.clone(), node_server, stop };
    let (link, _) = Actor::spawn_linked(Some("cluster-router".into()), Link, args, root).await?;
    let _ = cluster.link.set(link);
    Ok(())
}

impl Actor for Link {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: Self::Arguments) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(GROUP.into(), vec![myself.get_cell()]);
        ractor::pg::monitor(GROUP.into(), myself.get_cell());
        myself.send_interval(args.cluster.config().heartbeat, || LinkMsg::Tick);
        Ok(LinkState { args, unmapped: Vec::new(), by_actor: HashMap::new(), reconnect: HashMap::new() })
    }

    async fn post_start(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        reconnect(state);
        Ok(())
    }

    async fn post_stop(&self, myself: ActorRef<Self::Msg>, _state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        ractor::pg::leave(GROUP.into(), vec![myself.get_cell()]);
        Ok(())
    }

    async fn handle(&self, _myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match message {
            LinkMsg::Batch(bytes) => receive(state, &bytes),
            LinkMsg::Flush(node) => flush(&state.args.cluster, &node),
            LinkMsg::Tick => {
                if state.args.stop.is_cancelled() {
                    return Ok(());
                }
                let cluster = state.args.cluster.clone();
                cluster.send_heartbeats();
                let change = super::lock(&cluster.membership).tick(Instant::now());
                cluster.apply(change);
                if !state.unmapped.is_empty() {
                    let cells = std::mem::take(&mut state.unmapped);
                    map_routers(state, cells).await;
                }
                let silent = cluster.silent_connections(Instant::now());
                if !silent.is_empty() {
                    reset_connections(state, &silent).await;
                }
                reconnect(state);
                report_peers(&cluster);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = event {
            match change {
                ractor::pg::GroupChangeMessage::Join(_, group, cells) if group == GROUP => {
                    let remote: Vec<ActorCell> = cells.into_iter().filter(|c| !c.get_id().is_local()).collect();
                    map_routers(state, remote).await;
                }
                ractor::pg::GroupChangeMessage::Leave(_, group, cells) if group == GROUP => {
                    for cell in cells {
                        if let Some(name) = state.by_actor.remove(&cell.get_id()) {
                            // Another connection to the same node may have replaced it.
                            if !state.by_actor.values().any(|n| *n == name) {
                                state.args.cluster.peer_disconnected(&name);
                            }
                        }
                        state.unmapped.retain(|c| c.get_id() != cell.get_id());
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Learns which node each remote router belongs to (from the NodeServer's sessions).
async fn map_routers(state: &mut LinkState, cells: Vec<ActorCell>) {
    if cells.is_empty() {
        return;
    }
    let sessions = match ractor::call_t!(state.args.node_server, NodeServerMessage::GetSessions, 2000) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cluster sessions unavailable; retrying");
            state.unmapped.extend(cells);
            return;
        }
    };
    for cell in cells {
        // ractor_cluster names a peer `<node name>@<host>`; ours is the part before the `@`
        // (node names cannot contain one).
        let name = sessions
            .get(&cell.get_id().node())
            .and_then(|s| s.peer_name.as_ref())
            .map(|n| n.name.split_once('@').map(|(name, _)| name.to_owned()).unwrap_or_else(|| n.name.clone()));
        match name {
            Some(name) => {
                let name: Arc<str> = Arc::from(name.as_str());
                state.by_actor.insert(cell.get_id(), name.clone());
                state.args.cluster.peer_connected(name, ActorRef::from(cell));
            }
            None => state.unmapped.push(cell),
        }
    }
}

/// Closes the ractor_cluster sessions to these peers; the reconnection loop dials again.
async fn reset_connections(state: &mut LinkState, peers: &[Arc<str>]) {
    let sessions = match ractor::call_t!(state.args.node_server, NodeServerMessage::GetSessions, 2000) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cluster sessions unavailable; silent connections not reset");
            return;
        }
    };
    for session in sessions.values() {
        let Some(peer) = session.peer_name.as_ref().map(|n| n.name.split_once('@').map(|(name, _)| name).unwrap_or(&n.name)) else { continue };
        if peers.iter().any(|p| p.as_ref() == peer) {
            tracing::warn!(peer, "cluster connection carries nothing from the peer; resetting it");
            metrics::counter!("switchboard_cluster_connection_resets_total").increment(1);
            session.actor.stop(Some("silent connection".into()));
        }
    }
}

/// Sends what is queued for `node` as one batch (or a few, if it is large).
pub(super) fn flush(cluster: &Cluster, node: &str) {
    let (router, envelopes) = {
        let mut peers = super::lock(&cluster.peers);
        let Some(peer) = peers.get_mut(node) else { return };
        peer.flush_queued = false;
        let Some(router) = peer.router.clone() else {
            peer.outbox.clear();
            return;
        };
        (router, std::mem::take(&mut peer.outbox))
    };
    let mut batch =
        pb::Batch { from_node: cluster.name.to_string(), incarnation: cluster.incarnation, envelopes: Vec::new(), sent_ms: crate::store::now_ms() };
    let mut size = 0;
    let mut sent = true;
    for envelope in envelopes {
        let len = envelope.encoded_len();
        if size + len > MAX_BATCH_BYTES && !batch.envelopes.is_empty() {
            sent &= send(&router, &mut batch);
            size = 0;
        }
        size += len;
        batch.envelopes.push(envelope);
    }
    if !batch.envelopes.is_empty() {
        sent &= send(&router, &mut batch);
    }
    if !sent {
        cluster.peer_disconnected(node);
    }
}

fn send(router: &ActorRef<LinkMsg>, batch: &mut pb::Batch) -> bool {
    metrics::histogram!("switchboard_cluster_batch_envelopes").record(batch.envelopes.len() as f64);
    let bytes = batch.encode_to_vec();
    batch.envelopes.clear();
    metrics::counter!("switchboard_cluster_bytes_out_total").increment(bytes.len() as u64);
    router.cast(LinkMsg::Batch(bytes)).is_ok()
}

/// Handles a batch from a peer: the peer is alive, then each envelope in order.
fn receive(state: &mut LinkState, bytes: &[u8]) {
    let cluster = state.args.cluster.clone();
    metrics::counter!("switchboard_cluster_bytes_in_total").increment(bytes.len() as u64);
    let batch = match pb::Batch::decode(bytes) {
        Ok(b) => b,
        Err(e) => {
            // A peer running incompatible code: drop the batch, never the node.
            metrics::counter!("switchboard_cluster_bad_envelopes_total").increment(1);
            tracing::warn!(error = %e, "undecodable cluster batch dropped");
            return;
        }
    };
    let from: Arc<str> = Arc::from(batch.from_node.as_str());
    if from == cluster.name {
        return;
    }
    // The sender's stamp, but never later than now by our clock (a peer whose clock runs
    // ahead must not make its devices "last seen" in the future).
    let arrived_ms = crate::store::now_ms();
    let heard_ms = if batch.sent_ms == 0 { arrived_ms } else { batch.sent_ms.min(arrived_ms) };
    let change = super::lock(&cluster.membership).heard(&from, batch.incarnation, Instant::now(), heard_ms);
    cluster.apply(change);
    for envelope in batch.envelopes {
        let Some(kind) = envelope.kind else { continue };
        if let Err(e) = dispatch(&cluster, &from, kind) {
            metrics::counter!("switchboard_cluster_bad_envelopes_total").increment(1);
            tracing::warn!(peer = %from, error = %e, "bad cluster envelope dropped");
        }
    }
}

fn dispatch(cluster: &Arc<Cluster>, from: &Arc<str>, kind: pb::envelope::Kind) -> Result<(), wire::WireError> {
    use pb::envelope::Kind;
    match kind {
        Kind::Heartbeat(hb) => {
            let draining = hb.draining;
            {
                let mut peers = super::lock(&cluster.peers);
                peers.entry(from.clone()).or_default().heartbeat = Some(hb);
            }
            let changed = super::lock(&cluster.membership).set_draining(from, draining);
            if changed {
                tracing::info!(peer = %from, draining, "cluster peer drain state changed");
                cluster.apply(super::membership::Change { members_changed: true, ..Default::default() });
            }
        }
        Kind::ToConversation(request) => {
            let (id, message) = wire::from_to_conversation(request)?;
            hand_to_conversation(cluster, id, message);
        }
        Kind::ToUsers(to) => {
            let users = to.user_ids.iter().map(|u| parse_id("user_ids", u)).collect::<Result<Vec<_>, _>>()?;
            let except = if to.except_device_id.is_empty() { None } else { Some(parse_id("except_device_id", &to.except_device_id)?) };
            match wire::from_session_payload(to.payload.ok_or(wire::WireError::Missing("payload"))?)? {
                SessionMsg::Request(request) => {
                    cluster.router.deliver_here(&users, except, || wire::duplicate(&request).unwrap_or(SessionRequest::Frames(Vec::new())))
                }
                SessionMsg::Control(_) => return Err(wire::WireError::Missing("a request for many users")),
            }
        }
        Kind::ToDevice(to) => {
            let user = parse_id("user_id", &to.user_id)?;
            let device = parse_id("device_id", &to.device_id)?;
            let message = match wire::from_session_payload(to.payload.ok_or(wire::WireError::Missing("payload"))?)? {
                // The older single-ack form names no device: it is this one.
                SessionMsg::Request(SessionRequest::Conversation(batch)) if batch.frames.iter().any(|f| f.device == crate::ids::DeviceId::nil()) => {
                    let mut batch = batch.as_ref().clone();
                    for f in batch.frames.iter_mut().filter(|f| f.device == crate::ids::DeviceId::nil()) {
                        (f.user, f.device) = (user, device);
                    }
                    SessionMsg::Request(SessionRequest::Conversation(Arc::new(batch)))
                }
                other => other,
            };
            cluster.router.deliver_to_device_here(user, device, message);
        }
        Kind::Directory(update) => {
            let user = parse_id("user_id", &update.user_id)?;
            let device = parse_id("device_id", &update.device_id)?;
            cluster.directory.update(from, user, device, update.online);
        }
        Kind::Snapshot(snapshot) => {
            let devices = snapshot
                .devices
                .iter()
                .map(|d| Ok((parse_id("user_id", &d.user_id)?, parse_id("device_id", &d.device_id)?)))
                .collect::<Result<Vec<_>, wire::WireError>>()?;
            cluster.snapshot(from, devices);
        }
        Kind::SnapshotRequest(_) => cluster.send_snapshot(from),
    }
    Ok(())
}

/// Queues a forwarded request for its local conversation. Activating a conversation
/// takes store reads; done here in the router actor it would hold up every other
/// envelope, heartbeats included, and an activation storm after a node loss could then
/// make this node declare healthy peers dead. So each conversation gets a FIFO of
/// forwarded requests, drained by one task at a time: order per conversation is kept
/// (as it arrived on the wire) and the router actor never waits.
fn hand_to_conversation(cluster: &Arc<Cluster>, id: crate::ids::ConversationId, message: ConversationRequest) {
    {
        let mut waiting = super::lock(&cluster.forwarded);
        if let Some(queue) = waiting.get_mut(&id) {
            if queue.len() >= MAX_FORWARDED_WAITING {
                // Bounded like a conversation mailbox: the device hears UNAVAILABLE and
                // retries, instead of this node's memory growing.
                drop(waiting);
                metrics::counter!("switchboard_cluster_dropped_total").increment(1);
                refuse(cluster, wire::requesters(&message), crate::actors::router::RouteError::Overloaded);
                return;
            }
            queue.push_back(message);
            return;
        }
        waiting.insert(id, std::collections::VecDeque::from([message]));
    }
    let cluster = cluster.clone();
    tokio::spawn(async move {
        loop {
            let next = {
                let mut waiting = super::lock(&cluster.forwarded);
                match waiting.get_mut(&id).and_then(|q| q.pop_front()) {
                    Some(message) => message,
                    None => {
                        waiting.remove(&id);
                        return;
                    }
                }
            };
            let requesters = wire::requesters(&next);
            if let Err(e) = cluster.router.send_to_local_conversation(id, next).await {
                refuse(&cluster, requesters, e);
            }
        }
    });
}

/// Requests forwarded for one conversation that may wait for it here.
const MAX_FORWARDED_WAITING: usize = 8192;

/// Answers a forwarded request that could not be handed over, as the device's own node
/// would have: the device retries. (Receipts have no requester: nobody waits for them.)
fn refuse(cluster: &Cluster, requesters: Vec<(crate::ids::UserId, crate::ids::DeviceId, String)>, error: crate::actors::router::RouteError) {
    let error = crate::protocol::RequestError::from(error);
    for (user, device, request_ref) in requesters {
        let frame = protocol::encode_server(&error.frame(request_ref));
        cluster.router.deliver_to_device(user, device, SessionRequest::Push(frame));
    }
}

/// Connects to every known peer address without a connection, each on its own backoff.
fn reconnect(state: &mut LinkState) {
    let cluster = &state.args.cluster;
    let me = cluster.config().advertise.clone();
    let (mut known, connected) = {
        let peers = super::lock(&cluster.peers);
        let mut known: Vec<String> = cluster.config().seeds.clone();
        let mut connected = Vec::new();
        for peer in peers.values() {
            if let Some(hb) = &peer.heartbeat {
                known.push(hb.cluster_addr.clone());
                known.extend(hb.peer_addrs.iter().cloned());
                if peer.router.is_some() {
                    connected.push(hb.cluster_addr.clone());
                }
            }
        }
        (known, connected)
    };
    let now = Instant::now();
    known.sort();
    known.dedup();
    state.reconnect.retain(|addr, _| known.contains(addr) && !connected.contains(addr));
    for addr in known {
        if addr == me || addr.is_empty() || connected.contains(&addr) {
            continue;
        }
        let backoff = state.reconnect.entry(addr.clone()).or_insert(Backoff { next: now, delay: BACKOFF_MIN });
        if backoff.next > now {
            continue;
        }
        // Full jitter: nodes that lost the same peer do not retry in lockstep.
        let jitter = rand::rng().random_range(0..=backoff.delay.as_millis() as u64 / 2);
        backoff.next = now + backoff.delay + Duration::from_millis(jitter);
        backoff.delay = (backoff.delay * 2).min(BACKOFF_MAX);
        let server = state.args.node_server.clone();
        let tls = cluster.tls.clone();
        tokio::spawn(async move {
            let connect = async {
                match &tls {
                    Some(tls) => {
                        let name = tls::server_name(&addr)
                            .map_err(|e| ractor_cluster::ClientConnectErr::Encryption(std::io::Error::other(e.to_string())))?;
                        ractor_cluster::client_connect_enc(&server, addr.as_str(), tls.connector.clone(), name).await
                    }
                    None => ractor_cluster::client_connect(&server, addr.as_str()).await,
                }
            };
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(())) => tracing::debug!(%addr, "cluster connection opened"),
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "cluster connection failed"),
                Err(_) => tracing::debug!(%addr, "cluster connection timed out"),
            }
        });
    }
}

fn report_peers(cluster: &Cluster) {
    let membership = super::lock(&cluster.membership);
    let (mut alive, mut suspect, mut dead) = (0, 0, 0);
    for (_, view) in membership.peers() {
        match view.status {
            super::membership::PeerStatus::Alive => alive += 1,
            super::membership::PeerStatus::Suspect => suspect += 1,
            super::membership::PeerStatus::Dead => dead += 1,
        }
    }
    metrics::gauge!("switchboard_cluster_peers", "status" => "alive").set(alive as f64);
    metrics::gauge!("switchboard_cluster_peers", "status" => "suspect").set(suspect as f64);
    metrics::gauge!("switchboard_cluster_peers", "status" => "dead").set(dead as f64);
}
