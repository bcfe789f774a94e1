//! The router: where a message for a user, a device or a conversation goes.
//!
//! It holds the node's directory (user → connected devices → session mailbox) and the
//! cache of active conversations (conversation id → mailbox, activated through the
//! conversation supervisor). Sessions and conversations only ever deliver through it, so
//! routing to another node later changes this module, not theirs.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use ractor::{ActorId, ActorRef};

use super::conversation::ConversationMsg;
use super::conversation_supervisor::{ActivateError, ConversationSupervisorMsg};
use super::mailbox::{Mailbox, MailboxError};
use super::session::SessionMsg;
use crate::protocol::ErrorCode;
use crate::store::{ConversationId, DeviceId, UserId};

/// Why a conversation could not be reached.
#[derive(Debug, thiserror::Error)]
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

type SessionEntry = (DeviceId, Mailbox<SessionMsg>);

struct Inner {
    sessions: RwLock<HashMap<UserId, Vec<SessionEntry>>>,
    conversations: RwLock<HashMap<ConversationId, Mailbox<ConversationMsg>>>,
    supervisor: OnceLock<ActorRef<ConversationSupervisorMsg>>,
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
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Writers only insert/remove whole entries, so a poisoned lock holds consistent data.
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    /// An empty router; [`Router::set_conversation_supervisor`] must follow before use.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                sessions: RwLock::new(HashMap::new()),
                conversations: RwLock::new(HashMap::new()),
                supervisor: OnceLock::new(),
            }),
        }
    }

    /// Connects the router to the supervisor that activates conversations.
    pub fn set_conversation_supervisor(&self, supervisor: ActorRef<ConversationSupervisorMsg>) {
        let _ = self.inner.supervisor.set(supervisor);
    }

    // ---- directory -------------------------------------------------------------------

    /// Adds a device's session, replacing an older session of the same device.
    pub fn register_session(&self, user: UserId, device: DeviceId, session: Mailbox<SessionMsg>) -> Registration {
        let mut sessions = write(&self.inner.sessions);
        let entries = sessions.entry(user).or_default();
        let first_device = entries.iter().all(|(d, _)| *d == device);
        let replaced = match entries.iter().position(|(d, _)| *d == device) {
            Some(i) => Some(std::mem::replace(&mut entries[i].1, session)),
            None => {
                entries.push((device, session));
                None
            }
        };
        let first_device = first_device && replaced.is_none();
        Registration { replaced, first_device }
    }

    /// Removes a session if it is still the registered one for its device. Returns true if
    /// the user has no device online any more.
    pub fn unregister_session(&self, user: UserId, device: DeviceId, session: ActorId) -> bool {
        let mut sessions = write(&self.inner.sessions);
        let Some(entries) = sessions.get_mut(&user) else { return false };
        let before = entries.len();
        entries.retain(|(d, mb)| !(*d == device && mb.actor().get_id() == session));
        let removed = entries.len() != before;
        if entries.is_empty() {
            sessions.remove(&user);
            return removed;
        }
        false
    }

    /// True if any device of the user is connected to this node.
    pub fn is_online(&self, user: UserId) -> bool {
        read(&self.inner.sessions).get(&user).is_some_and(|e| !e.is_empty())
    }

    /// True if this device of the user is connected to this node.
    pub fn is_device_online(&self, user: UserId, device: DeviceId) -> bool {
        self.device_mailbox(user, device).is_some()
    }

    /// Number of connected devices on this node.
    pub fn session_count(&self) -> usize {
        read(&self.inner.sessions).values().map(Vec::len).sum()
    }

    /// Delivers to every connected device of `user` except `except`. `make` builds one
    /// message per device. A device whose mailbox is full is disconnected as slow.
    pub fn deliver_to_user(&self, user: UserId, except: Option<DeviceId>, make: impl Fn() -> SessionMsg) {
        // Sent under the read lock: `deliver` never blocks, and collecting the targets
        // first cost an allocation per member per message in group fan-out profiles.
        let sessions = read(&self.inner.sessions);
        let Some(entries) = sessions.get(&user) else { return };
        for (device, mailbox) in entries {
            if Some(*device) != except {
                Self::deliver(mailbox, make());
            }
        }
    }

    /// Delivers to one device if it is connected here.
    pub fn deliver_to_device(&self, user: UserId, device: DeviceId, message: SessionMsg) {
        if let Some(mailbox) = self.device_mailbox(user, device) {
            Self::deliver(&mailbox, message);
        }
    }

    fn device_mailbox(&self, user: UserId, device: DeviceId) -> Option<Mailbox<SessionMsg>> {
        read(&self.inner.sessions)
            .get(&user)
            .and_then(|entries| entries.iter().find(|(d, _)| *d == device).map(|(_, mb)| mb.clone()))
    }

    /// Closes a device's live connection (revocation), if it has one here.
    pub fn close_device(&self, user: UserId, device: DeviceId, code: ErrorCode, reason: &str) {
        if let Some(mailbox) = self.device_mailbox(user, device) {
            let _ = mailbox.actor().cast(SessionMsg::Close { code, reason: reason.to_owned(), reconnect_after_ms: 0 });
        }
    }

    /// Every registered session, for shutdown.
    pub fn all_sessions(&self) -> Vec<Mailbox<SessionMsg>> {
        read(&self.inner.sessions).values().flat_map(|e| e.iter().map(|(_, mb)| mb.clone())).collect()
    }

    fn deliver(mailbox: &Mailbox<SessionMsg>, message: SessionMsg) {
        if let Err((MailboxError::Full, _)) = mailbox.send(message) {
            // The session cannot keep up: shed it rather than grow its mailbox. The Close
            // bypasses the bound (it is one message, and it ends the session).
            metrics::counter!("switchboard_slow_consumers_total").increment(1);
            mailbox.gauge().close();
            let _ = mailbox.actor().cast(SessionMsg::Close {
                code: ErrorCode::SlowConsumer,
                reason: "session mailbox full".into(),
                reconnect_after_ms: 1000,
            });
        }
    }

    // ---- conversations ---------------------------------------------------------------

    /// Sends to a conversation's actor, activating it if needed. A message that meets a
    /// passivating activation is handed to a fresh one.
    pub async fn send_to_conversation(&self, id: ConversationId, message: ConversationMsg) -> Result<(), RouteError> {
        let mut message = message;
        for _ in 0..3 {
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
        if let Some(mb) = read(&self.inner.conversations).get(&id) {
            if !mb.gauge().is_closed() {
                return Ok(mb.clone());
            }
        }
        let supervisor = self
            .inner
            .supervisor
            .get()
            .ok_or_else(|| RouteError::Unavailable("conversation supervisor not started".into()))?;
        let reply = ractor::call!(supervisor, ConversationSupervisorMsg::Activate, id)
            .map_err(|e| RouteError::Unavailable(e.to_string()))?;
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

    /// Every active conversation, for shutdown.
    pub fn all_conversations(&self) -> Vec<Mailbox<ConversationMsg>> {
        read(&self.inner.conversations).values().cloned().collect()
    }

    /// Number of active conversations.
    pub fn conversation_count(&self) -> usize {
        read(&self.inner.conversations).len()
    }
}
