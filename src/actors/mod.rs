//! The actor tree of one node (ractor).
//!
//! ```text
//! node supervisor (NodeSupervisor)
//! ├── store-writer ─────────── group commit of every durable write
//! ├── push-dispatcher ──────── notifications for devices without a connection
//! ├── session-supervisor ───── one DeviceSession per connected device (never restarted:
//! │                            a session lives and dies with its connection)
//! └── conversation-supervisor ─ one Conversation per active conversation, the single
//!                               sequencer of its log; activated on demand, passivated
//!                               when idle, restarted (reloaded from the store) on a panic
//! ```
//!
//! Actors never address each other directly across kinds: deliveries go through the
//! [`router::Router`] (user → devices → session, conversation id → activation), which is
//! the seam where the cluster will route to other nodes.

pub mod conversation;
pub mod conversation_supervisor;
pub mod mailbox;
pub mod messages;
pub mod node;
pub mod outbox;
pub mod push;
pub mod router;
pub mod session;
pub mod session_end;
pub mod session_supervisor;
pub mod store_writer;

use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;

pub use mailbox::{ActorStats, HotActor, Hottest, Label, Mailbox, MailboxError};
pub use router::Router;
pub use store_writer::StoreWriterHandle;

/// Limits and timings of the actors, from the server configuration.
#[derive(Debug, Clone)]
pub struct ActorLimits {
    /// Messages a session's mailbox may hold before its device counts as slow.
    pub session_mailbox: usize,
    /// Messages a conversation's mailbox may hold before senders get UNAVAILABLE.
    pub conversation_mailbox: usize,
    /// A conversation with no traffic for this long is passivated.
    pub conversation_idle: Duration,
    /// Largest accepted message payload, in bytes.
    pub max_payload: usize,
    /// Messages per store read during catch-up.
    pub catch_up_page: usize,
    /// Of a conversation a device never acknowledged anything of (a new or reinstalled
    /// device), catch-up starts at the newest this many log entries, or earlier to include
    /// all sent since the device was created; older ones are read through history
    /// (docs/protocol.md §3, "Catch-up").
    pub catch_up_recent: usize,
    /// How far before its read time a conversation-list page's version is set, in ms
    /// ([`crate::cores::inbox::VERSION_MARGIN_MS`] by default).
    pub inbox_version_margin_ms: u64,
    /// How long a full outbound queue may stay full before the device counts as slow.
    pub slow_consumer_timeout: Duration,
    /// Largest group, in members.
    pub max_group_members: usize,
    /// Largest batch the store writer commits at once.
    pub max_write_batch: usize,
    /// How long a write nobody waits for (a device's cursor moves, a user's last-seen
    /// time) may wait to ride in another batch before it is committed alone (zero: never).
    pub write_defer: Duration,
    /// Conversation restarts allowed within `restart_window` before a failing conversation
    /// is left passive (reactivated by the next request) instead of restarted at once.
    pub max_restarts: u32,
    /// See `max_restarts`.
    pub restart_window: Duration,
    /// Key directory limits (one-time keys per upload and per device, low-keys notice).
    pub keys: crate::cores::keys::KeyLimits,
    /// To-device limits (targets per send, payload size, queue bound, window).
    pub to_device: crate::cores::to_device::ToDeviceLimits,
}

impl Default for ActorLimits {
    fn default() -> Self {
        Self {
            session_mailbox: 4096,
            conversation_mailbox: 8192,
            conversation_idle: Duration::from_secs(300),
            max_payload: 64 * 1024,
            catch_up_page: 256,
            catch_up_recent: 20,
            inbox_version_margin_ms: crate::cores::inbox::VERSION_MARGIN_MS,
            slow_consumer_timeout: Duration::from_secs(5),
            max_group_members: 1024,
            max_write_batch: 2048,
            write_defer: Duration::from_millis(10),
            max_restarts: 5,
            restart_window: Duration::from_secs(10),
            keys: crate::cores::keys::KeyLimits::default(),
            to_device: crate::cores::to_device::ToDeviceLimits::default(),
        }
    }
}

/// What every actor of a node shares: the store, the writer, the router, the stats.
#[derive(Clone)]
pub struct NodeContext {
    /// Durable state (reads; writes go through `writer`).
    pub store: Arc<dyn Store>,
    /// Group-commit writer.
    pub writer: StoreWriterHandle,
    /// Directory and delivery.
    pub router: Router,
    /// Mailbox gauges and restart counters.
    pub stats: Arc<ActorStats>,
    /// Limits.
    pub limits: Arc<ActorLimits>,
    /// Push notifications for devices without a live connection.
    pub push: Mailbox<push::PushMsg>,
}
