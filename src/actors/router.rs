//! The router: where a message for a user, a device or a conversation goes.
//!
//! It holds the node's directory (user → connected devices → session mailbox) and the
//! cache of active conversations (conversation id → mailbox, activated through the
//! conversation supervisor). Sessions and conversations only ever deliver through it.
//!
//! In a cluster it also consults [`RemoteRoutes`] (implemented by `crate::cluster`): a
//! conversation owned by another node gets its requests forwarded there, and devices
//! connected to other nodes get their deliveries through their node. The router knows
//! that other nodes exist, not how they are reached: no sockets, peers or wire formats.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use ractor::{ActorId, ActorRef};

use super::mailbox::{Mailbox, MailboxError};
use super::messages::{
    ActivateError, ConversationControl, ConversationMsg, ConversationRequest, ConversationSupervisorMsg, SessionControl, SessionMsg, SessionRequest,
};
use super::outbox::Outbox;
use crate::ids::{ConversationId, DeviceId, UserId};
use crate::protocol::{self, ErrorCode, RequestError};

/// Why a conversation could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No conversation has that id.
    #[error("unknown conversation")]
    UnknownConversation,
    /// The conversation's mailbox is full; the sender should retry later.
    #[error("conversation overloaded")]
    Overloaded,
    /// The conversation could not be activated (store down, restart limit).
    #[error("conversation unavailable: {0}")]
    Unavailable(String),
}

/// Node-to-node routing, supplied by the cluster; a single node has none. Every method but
/// `presence` is non-blocking: remote traffic is queued and sent in batches.
#[async_trait::async_trait]
pub trait RemoteRoutes: Send + Sync + 'static {
    /// The node that should run this conversation's sequencer, or None if it is this node.
    fn owner(&self, id: ConversationId) -> Option<Arc<str>>;
    /// Queues a request for a conversation owned by `node`. Fails if `node` cannot be
    /// reached now (the device gets UNAVAILABLE and retries).
    fn to_conversation(&self, node: &str, id: ConversationId, request: ConversationRequest) -> Result<(), RouteError>;
    /// Queues `make()` for the devices of `users` connected to other nodes, except device
    /// `except`: one envelope per node that has any of them, however many they are.
    fn to_users(&self, users: &[UserId], except: Option<DeviceId>, make: &dyn Fn() -> SessionRequest);
    /// Queues a message (a request, or a close) for one device if it is connected to
    /// another node.
    fn to_device(&self, user: UserId, device: DeviceId, message: SessionMsg);
    /// A device connected to (`online`) or left this node; `last_here` says the user has no
    /// other device on this node. Called with the router's directory lock held, so that
    /// peers hear a device's arrivals and departures in the order they happened: it must
    /// only queue, and never call back into the router.
    fn session_changed(&self, user: UserId, device: DeviceId, online: bool, last_here: bool);
    /// True if a device of `user` is connected to another node.
    fn user_elsewhere(&self, user: UserId) -> bool;
    /// True if this device is connected to another node.
    fn device_elsewhere(&self, user: UserId, device: DeviceId) -> bool;
    /// The cluster-wide view of presence (online, last seen in ms), if one is available
    /// and answers now.
    async fn presence(&self, users: &[UserId]) -> Option<Vec<(bool, Option<u64>)>>;
}

impl From<RouteError> for RequestError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::UnknownConversation => RequestError::UnknownConversation,
            RouteError::Overloaded => RequestError::Unavailable("conversation overloaded".into()),
            RouteError::Unavailable(_) => RequestError::Unavailable("conversation unavailable".into()),
        }
    }
}

/// A connected device: its session's mailbox, and its connection's outbox (so that a
/// close takes effect at once, ahead of the session's queued work).
struct SessionEntry {
    device: DeviceId,
    mailbox: Mailbox<SessionMsg>,
    outbox: Outbox,
}

/// How long after a session of a device ended its cursor writes may still be queued at
/// the writer (a new session of the device waits for them only within this time).
const RECENT_WRITES: Duration = Duration::from_secs(30);
/// Bound of the recently ended devices remembered for that purpose.
const RECENT_ENDS: usize = 100_000;

struct Inner {
    sessions: RwLock<HashMap<UserId, Vec<SessionEntry>>>,
    /// Devices whose session ended recently, and when.
    ended: Mutex<HashMap<DeviceId, Instant>>,
    conversations: RwLock<HashMap<ConversationId, Mailbox<ConversationMsg>>>,
    supervisor: OnceLock<ActorRef<ConversationSupervisorMsg>>,
    remote: OnceLock<Arc<dyn RemoteRoutes>>,
}

/// Cheaply cloneable handle to the node's router.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

/// Result of registering a session.
pub struct Registration {
    /// The session this one replaced (same device connected again), to be closed.
    pub replaced: Option<Mailbox<SessionMsg>>,
    /// True if no other device of the user was online (the user just came online).
    pub first_device: bool,
    /// A session of this device ended moments ago (or is being replaced): its writes may
    /// still be queued at the writer.
    pub recent_writes: bool,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Writers only insert/remove whole entries, so a poisoned lock holds consistent data.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    /// An empty router; [`Router::set_conversation_supervisor`] must follow before use.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions: RwLock::new(HashMap::new()),
                ended: Mutex::new(HashMap::new()),
                conversations: RwLock::new(HashMap::new()),
                supervisor: OnceLock::new(),
                remote: OnceLock::new(),
            }),
        }
    }

    /// Connects the router to the supervisor that activates conversations.
    pub fn set_conversation_supervisor(&self, supervisor: ActorRef<ConversationSupervisorMsg>) {
        let _ = self.inner.supervisor.set(supervisor);
    }

    /// Connects the router to the cluster (once, at start-up, before any device connects).
    pub fn set_remote(&self, remote: Arc<dyn RemoteRoutes>) {
        let _ = self.inner.remote.set(remote);
    }

    fn remote(&self) -> Option<&Arc<dyn RemoteRoutes>> {
        self.inner.remote.get()
    }

    // ---- directory -------------------------------------------------------------------

    /// Adds a device's session, replacing an older session of the same device.
    pub fn register_session(&self, user: UserId, device: DeviceId, session: Mailbox<SessionMsg>, outbox: Outbox) -> Registration {
        let ended_recently = lock(&self.inner.ended).remove(&device).is_some_and(|at| at.elapsed() < RECENT_WRITES);
        let mut sessions = write(&self.inner.sessions);
        let entries = sessions.entry(user).or_default();
        let first_device = entries.iter().all(|e| e.device == device);
        let entry = SessionEntry { device, mailbox: session, outbox };
        let replaced = match entries.iter().position(|e| e.device == device) {
            Some(i) => Some(std::mem::replace(&mut entries[i], entry).mailbox),
            None => {
                entries.push(entry);
                None
            }
        };
        let recent_writes = ended_recently || replaced.is_some();
        let mut first_device = first_device && replaced.is_none();
        if let Some(remote) = self.remote() {
            // Announced under the lock: see `RemoteRoutes::session_changed`.
            remote.session_changed(user, device, true, false);
        }
        drop(sessions);
        if let Some(remote) = self.remote() {
            if replaced.is_none() && remote.device_elsewhere(user, device) {
                // The device moved here (its node is draining or was lost, or the client
                // simply reconnected through another node): its old connection must go.
                let close = SessionControl::Close { code: ErrorCode::Replaced, reason: "this device connected again".into(), reconnect_after_ms: 0 };
                remote.to_device(user, device, SessionMsg::Control(close));
            }
            first_device = first_device && !remote.user_elsewhere(user);
        }
        Registration { replaced, first_device, recent_writes }
    }

    /// Removes a session if it is still the registered one for its device. Returns true if
    /// the user has no device online any more (on any node).
    pub fn unregister_session(&self, user: UserId, device: DeviceId, session: ActorId) -> bool {
        let mut sessions = write(&self.inner.sessions);
        let Some(entries) = sessions.get_mut(&user) else { return false };
        let before = entries.len();
        entries.retain(|e| !(e.device == device && e.mailbox.actor().get_id() == session));
        let removed = entries.len() != before;
        let last = entries.is_empty();
        if last {
            sessions.remove(&user);
        }
        if removed && let Some(remote) = self.remote() {
            // Announced under the lock: see `RemoteRoutes::session_changed`.
            remote.session_changed(user, device, false, last);
        }
        drop(sessions);
        if removed {
            let mut ended = lock(&self.inner.ended);
            if ended.len() >= RECENT_ENDS {
                ended.retain(|_, at| at.elapsed() < RECENT_WRITES);
                if ended.len() >= RECENT_ENDS {
                    // Still full: forget them all; the cost is one needless barrier each.
                    ended.clear();
                }
            }
            ended.insert(device, Instant::now());
        }
        let elsewhere = self.remote().is_some_and(|r| r.user_elsewhere(user));
        last && removed && !elsewhere
    }

    /// True if any device of the user is connected to this node.
    pub fn is_online_here(&self, user: UserId) -> bool {
        read(&self.inner.sessions).get(&user).is_some_and(|e| !e.is_empty())
    }

    /// True if any device of the user is connected, to this node or another.
    pub fn is_online(&self, user: UserId) -> bool {
        self.is_online_here(user) || self.remote().is_some_and(|r| r.user_elsewhere(user))
    }

    /// True if this device of the user is connected, to this node or another.
    pub fn is_device_online(&self, user: UserId, device: DeviceId) -> bool {
        self.device_mailbox(user, device).is_some() || self.remote().is_some_and(|r| r.device_elsewhere(user, device))
    }

    /// The cluster-wide presence of `users` (online, last seen in ms), when the cluster has
    /// a shared view that answers now; None on a single node or when it does not.
    pub async fn cluster_presence(&self, users: &[UserId]) -> Option<Vec<(bool, Option<u64>)>> {
        match self.remote() {
            Some(remote) => remote.presence(users).await,
            None => None,
        }
    }

    /// Every (user, device) connected to this node.
    pub fn local_devices(&self) -> Vec<(UserId, DeviceId)> {
        self.with_local_devices(|devices| devices)
    }

    /// Calls `f` with every (user, device) connected to this node while holding the
    /// directory lock: arrivals and departures are announced under the same lock, so a
    /// snapshot queued by `f` is ordered exactly among them.
    pub fn with_local_devices<T>(&self, f: impl FnOnce(Vec<(UserId, DeviceId)>) -> T) -> T {
        let sessions = read(&self.inner.sessions);
        f(sessions.iter().flat_map(|(u, entries)| entries.iter().map(|e| (*u, e.device))).collect())
    }

    /// Number of connected devices on this node.
    pub fn session_count(&self) -> usize {
        read(&self.inner.sessions).values().map(Vec::len).sum()
    }

    /// Delivers to every connected device of `user` except `except`, on this node and
    /// others. `make` builds one message per local device (and one per other node). A
    /// device whose mailbox is full is disconnected as slow.
    pub fn deliver_to_user(&self, user: UserId, except: Option<DeviceId>, make: impl Fn() -> SessionRequest) {
        self.deliver_to_users(std::slice::from_ref(&user), except, make);
    }

    /// [`Router::deliver_to_user`] for many users at once (fan-out): each other node gets
    /// one envelope for all of its recipients.
    pub fn deliver_to_users(&self, users: &[UserId], except: Option<DeviceId>, make: impl Fn() -> SessionRequest) {
        self.deliver_here(users, except, &make);
        if let Some(remote) = self.remote() {
            remote.to_users(users, except, &make);
        }
    }

    /// Delivers to one device, wherever it is connected.
    pub fn deliver_to_device(&self, user: UserId, device: DeviceId, request: SessionRequest) {
        match self.device_mailbox(user, device) {
            Some(mailbox) => Self::deliver(&mailbox, request),
            None => {
                if let Some(remote) = self.remote() {
                    remote.to_device(user, device, SessionMsg::Request(request));
                }
            }
        }
    }

    /// Delivers to the devices of `users` connected to this node only (also what another
    /// node's envelope asks: it already chose this node).
    pub fn deliver_here(&self, users: &[UserId], except: Option<DeviceId>, make: impl Fn() -> SessionRequest) {
        // Sent under the read lock: `deliver` never blocks, and collecting the targets
        // first cost an allocation per member per message in group fan-out profiles.
        let sessions = read(&self.inner.sessions);
        for user in users {
            let Some(entries) = sessions.get(user) else { continue };
            for e in entries {
                if Some(e.device) != except {
                    Self::deliver(&e.mailbox, make());
                }
            }
        }
    }

    /// Delivers to one device only if it is connected to this node.
    pub fn deliver_to_device_here(&self, user: UserId, device: DeviceId, message: SessionMsg) {
        let Some((mailbox, outbox)) = self.device_entry(user, device) else { return };
        match message {
            SessionMsg::Request(request) => Self::deliver(&mailbox, request),
            SessionMsg::Control(control) => Self::control(&mailbox, &outbox, control),
        }
    }

    fn device_entry(&self, user: UserId, device: DeviceId) -> Option<(Mailbox<SessionMsg>, Outbox)> {
        read(&self.inner.sessions)
            .get(&user)
            .and_then(|entries| entries.iter().find(|e| e.device == device).map(|e| (e.mailbox.clone(), e.outbox.clone())))
    }

    fn device_mailbox(&self, user: UserId, device: DeviceId) -> Option<Mailbox<SessionMsg>> {
        self.device_entry(user, device).map(|(mailbox, _)| mailbox)
    }

    /// A control message for a session. A close takes effect on the connection at once,
    /// ahead of whatever the session is busy with (and, for a revocation or replacement,
    /// of the frames queued for the device: `messages::close_preempts`); the session stops
    /// when it reaches the message, abandoning the work queued before it.
    fn control(mailbox: &Mailbox<SessionMsg>, outbox: &Outbox, control: SessionControl) {
        if let SessionControl::Close { code, reason, reconnect_after_ms } = &control {
            crate::actors::messages::close_outbox(
                outbox,
                *code,
                protocol::encode_server(&protocol::closing_frame(*code, reason.clone(), *reconnect_after_ms)),
            );
            mailbox.gauge().close();
        }
        mailbox.control(control);
    }

    /// Closes a device's live connection (revocation, replacement, drain, shutdown),
    /// wherever it is connected.
    pub fn close_device(&self, user: UserId, device: DeviceId, code: ErrorCode, reason: &str) {
        self.close_device_after(user, device, code, reason, 0);
    }

    /// [`Router::close_device`] with a suggested reconnect delay (ms).
    pub fn close_device_after(&self, user: UserId, device: DeviceId, code: ErrorCode, reason: &str, reconnect_after_ms: u32) {
        let close = SessionControl::Close { code, reason: reason.to_owned(), reconnect_after_ms };
        match self.device_entry(user, device) {
            Some((mailbox, outbox)) => Self::control(&mailbox, &outbox, close),
            None => {
                if let Some(remote) = self.remote() {
                    remote.to_device(user, device, SessionMsg::Control(close));
                }
            }
        }
    }

    /// Closes every device connected to this node (shutdown, drain), each at once.
    pub fn close_all_here(&self, code: ErrorCode, reason: &str, reconnect_after_ms: impl Fn() -> u32) {
        for (user, device) in self.local_devices() {
            if let Some((mailbox, outbox)) = self.device_entry(user, device) {
                let close = SessionControl::Close { code, reason: reason.to_owned(), reconnect_after_ms: reconnect_after_ms() };
                Self::control(&mailbox, &outbox, close);
            }
        }
    }

    /// Every registered session, for shutdown.
    pub fn all_sessions(&self) -> Vec<Mailbox<SessionMsg>> {
        read(&self.inner.sessions).values().flat_map(|e| e.iter().map(|e| e.mailbox.clone())).collect()
    }

    fn deliver(mailbox: &Mailbox<SessionMsg>, request: SessionRequest) {
        if let Err((MailboxError::Full, _)) = mailbox.send(request) {
            // The session cannot keep up: shed it rather than grow its mailbox. The Close
            // bypasses the bound (it is one message, and it ends the session).
            metrics::counter!("switchboard_slow_consumers_total").increment(1);
            mailbox.gauge().close();
            mailbox.control(SessionControl::Close { code: ErrorCode::SlowConsumer, reason: "session mailbox full".into(), reconnect_after_ms: 1000 });
        }
    }

    // ---- conversations ---------------------------------------------------------------

    /// Sends to a conversation's actor: forwarded to its owner if that is another node,
    /// otherwise activated here if needed. A message that meets a passivating (or handing
    /// off) activation is routed again.
    pub async fn send_to_conversation(&self, id: ConversationId, request: ConversationRequest) -> Result<(), RouteError> {
        self.route_conversation(id, request, true).await
    }

    /// Sends to a conversation's actor on this node, whoever its owner: for requests another
    /// node forwarded here. Forwarding again could bounce a request between two nodes whose
    /// views of the membership differ for a moment; running it here is safe because the
    /// store fences every append.
    pub async fn send_to_local_conversation(&self, id: ConversationId, request: ConversationRequest) -> Result<(), RouteError> {
        self.route_conversation(id, request, false).await
    }

    async fn route_conversation(&self, id: ConversationId, request: ConversationRequest, may_forward: bool) -> Result<(), RouteError> {
        let mut message = request;
        for _ in 0..3 {
            if may_forward
                && let Some(remote) = self.remote()
                && let Some(owner) = remote.owner(id)
            {
                return remote.to_conversation(&owner, id, message);
            }
            let mailbox = self.conversation(id).await?;
            match mailbox.send(message) {
                Ok(()) => return Ok(()),
                Err((MailboxError::Full, _)) => return Err(RouteError::Overloaded),
                Err((MailboxError::Closed, returned)) => {
                    self.forget_conversation(id, mailbox.actor().get_id());
                    match returned {
                        Some(m) => message = m,
                        None => return Err(RouteError::Unavailable("conversation stopped".into())),
                    }
                }
            }
        }
        Err(RouteError::Unavailable("conversation kept stopping".into()))
    }

    async fn conversation(&self, id: ConversationId) -> Result<Mailbox<ConversationMsg>, RouteError> {
        if let Some(mb) = read(&self.inner.conversations).get(&id)
            && !mb.gauge().is_closed()
        {
            return Ok(mb.clone());
        }
        let supervisor = self.inner.supervisor.get().ok_or_else(|| RouteError::Unavailable("conversation supervisor not started".into()))?;
        let reply = ractor::call!(supervisor, ConversationSupervisorMsg::Activate, id).map_err(|e| RouteError::Unavailable(e.to_string()))?;
        match reply {
            Ok(mb) => Ok(mb),
            Err(ActivateError::Unknown) => Err(RouteError::UnknownConversation),
            Err(ActivateError::Failed(e)) => Err(RouteError::Unavailable(e)),
        }
    }

    /// Caches an activation (called by the conversation supervisor).
    pub fn cache_conversation(&self, id: ConversationId, mailbox: Mailbox<ConversationMsg>) {
        write(&self.inner.conversations).insert(id, mailbox);
    }

    /// Drops a cached activation if it is still the given actor.
    pub fn forget_conversation(&self, id: ConversationId, actor: ActorId) {
        let mut map = write(&self.inner.conversations);
        if map.get(&id).is_some_and(|mb| mb.actor().get_id() == actor) {
            map.remove(&id);
        }
    }

    /// The active conversation's mailbox, if there is one (fault injection, admin).
    pub fn active_conversation(&self, id: ConversationId) -> Option<Mailbox<ConversationMsg>> {
        read(&self.inner.conversations).get(&id).cloned()
    }

    /// True if another node of the cluster owns this conversation now.
    pub fn owned_elsewhere(&self, id: ConversationId) -> bool {
        self.remote().is_some_and(|r| r.owner(id).is_some())
    }

    /// Hands off every active conversation that another node now owns (after a membership
    /// change, or all of them when draining). Returns how many were asked to move.
    pub fn hand_off_moved(&self, all: bool) -> usize {
        let Some(remote) = self.remote() else { return 0 };
        let moved: Vec<Mailbox<ConversationMsg>> =
            read(&self.inner.conversations).iter().filter(|(id, _)| all || remote.owner(**id).is_some()).map(|(_, mb)| mb.clone()).collect();
        for mailbox in &moved {
            // Closed first, so that new requests are routed to the new owner; the Handoff
            // then queues behind the requests already accepted.
            mailbox.gauge().close();
            mailbox.control(ConversationControl::Handoff);
        }
        moved.len()
    }

    /// Every active conversation, for shutdown.
    pub fn all_conversations(&self) -> Vec<Mailbox<ConversationMsg>> {
        read(&self.inner.conversations).values().cloned().collect()
    }

    /// Number of active conversations.
    pub fn conversation_count(&self) -> usize {
        read(&self.inner.conversations).len()
    }
}
