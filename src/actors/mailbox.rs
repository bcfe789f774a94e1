//! Bounded, observable mailboxes on top of ractor's unbounded ones.
//!
//! ractor's mailboxes have no length and no bound, so every actor that others write to is
//! addressed through a [`Mailbox`]: a handle that counts messages in flight, refuses new
//! ones past a limit (the caller then sheds load, e.g. disconnects a slow device instead
//! of growing memory), and can be closed so that a passivating actor never silently drops
//! a message that raced with its shutdown. The same counters feed `/admin/tree` and the
//! `switchboard_mailbox_depth` metric.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{ActorId, ActorRef, Message};

use crate::ids::{ConversationId, DeviceId, UserId};

/// What an actor is, for the admin tree.
#[derive(Debug, Clone)]
pub enum Label {
    /// A device session.
    Session(UserId, DeviceId),
    /// A 1:1 conversation.
    Conversation(ConversationId),
    /// A group, with its member count.
    Group(ConversationId, usize),
    /// An infrastructure actor.
    Named(&'static str),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Session(user, device) => write!(f, "session user={user} device={device}"),
            Label::Conversation(id) => write!(f, "conversation {id}"),
            Label::Group(id, members) => write!(f, "group {id} members={members}"),
            Label::Named(name) => f.write_str(name),
        }
    }
}

/// Why a message was not enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    /// The actor has as many messages waiting as its bound allows.
    #[error("mailbox full")]
    Full,
    /// The actor is stopping (passivated or closed) and takes no more messages.
    #[error("actor closed")]
    Closed,
}

/// Shared counters of one actor's mailbox.
#[derive(Debug)]
pub struct MailboxGauge {
    depth: AtomicUsize,
    closed: AtomicBool,
    limit: usize,
    /// What the admin tree calls the actor (formatted only when asked: a string per
    /// session would cost more than the rest of its gauge).
    label: Mutex<Label>,
}

impl MailboxGauge {
    /// Messages sent and not yet taken by the actor.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    /// The label shown in the admin tree.
    pub fn label(&self) -> String {
        self.label.lock().unwrap_or_else(|p| p.into_inner()).to_string()
    }

    /// Changes the label (e.g. a group's member count).
    pub fn set_label(&self, label: Label) {
        *self.label.lock().unwrap_or_else(|p| p.into_inner()) = label;
    }

    /// Called by the actor with every message it takes from its mailbox: requests (the
    /// counted part) leave the count. The one place where the count goes down.
    pub fn received<M: Addressed>(&self, message: &M) {
        if message.is_request() {
            self.depth.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Refuses further messages; returns true if nothing was in flight (the actor may stop
    /// without losing anything). If something raced in, the mailbox is reopened and false
    /// is returned: the actor must keep running and handle it.
    pub fn try_close_idle(&self) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        if self.depth.load(Ordering::SeqCst) == 0 {
            true
        } else {
            self.closed.store(false, Ordering::SeqCst);
            false
        }
    }

    /// Refuses further messages unconditionally.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// An actor message type whose requests go through a [`Mailbox`]: requests are counted
/// and bounded, everything else (control, internal follow-ups) is not.
pub trait Addressed: Message + Sized {
    /// The counted part.
    type Request: Send + 'static;
    /// Wraps a request.
    fn request(request: Self::Request) -> Self;
    /// Unwraps a request (a refused one goes back to its sender).
    fn into_request(self) -> Option<Self::Request>;
    /// True for the counted part.
    fn is_request(&self) -> bool;
}

/// A counted, bounded, closable handle to an actor.
pub struct Mailbox<M: Addressed> {
    actor: ActorRef<M>,
    gauge: Arc<MailboxGauge>,
}

impl<M: Addressed> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Self { actor: self.actor.clone(), gauge: self.gauge.clone() }
    }
}

impl<M: Addressed> std::fmt::Debug for Mailbox<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mailbox({}, depth={})", self.gauge.label(), self.gauge.depth())
    }
}

impl<M: Addressed> Mailbox<M> {
    /// Wraps an actor with a gauge created by [`ActorStats::register`].
    pub fn new(actor: ActorRef<M>, gauge: Arc<MailboxGauge>) -> Self {
        Self { actor, gauge }
    }

    /// Enqueues a request unless the mailbox is full or closed; on refusal the request
    /// comes back so the caller can route it elsewhere (e.g. to a fresh activation).
    pub fn send(&self, request: M::Request) -> Result<(), (MailboxError, Option<M::Request>)> {
        // Increment before checking `closed`: paired with `try_close_idle`, which sets
        // `closed` before reading the depth, one of the two always sees the other.
        let before = self.gauge.depth.fetch_add(1, Ordering::SeqCst);
        if self.gauge.closed.load(Ordering::SeqCst) {
            self.gauge.depth.fetch_sub(1, Ordering::SeqCst);
            return Err((MailboxError::Closed, Some(request)));
        }
        if before >= self.gauge.limit {
            self.gauge.depth.fetch_sub(1, Ordering::SeqCst);
            return Err((MailboxError::Full, Some(request)));
        }
        match self.actor.cast(M::request(request)) {
            Ok(()) => Ok(()),
            Err(err) => {
                self.gauge.depth.fetch_sub(1, Ordering::SeqCst);
                match err {
                    ractor::MessagingErr::SendErr(m) => Err((MailboxError::Closed, m.into_request())),
                    // The channel is gone with the message inside: the actor is stopped.
                    _ => Err((MailboxError::Closed, None)),
                }
            }
        }
    }

    /// Sends a control message: never counted, never refused by the bound (it is one
    /// message, and it stops, closes or syncs). False if the actor is gone.
    pub fn control(&self, message: impl Into<M>) -> bool {
        self.actor.cast(message.into()).is_ok()
    }

    /// The underlying actor.
    pub fn actor(&self) -> &ActorRef<M> {
        &self.actor
    }

    /// The shared counters.
    pub fn gauge(&self) -> &Arc<MailboxGauge> {
        &self.gauge
    }
}

/// Per-node registry of mailbox gauges and restart counters, read by `/admin/tree` and
/// `/metrics`. Actors register in `pre_start` and deregister in `post_stop`.
#[derive(Debug, Default)]
pub struct ActorStats {
    gauges: Mutex<HashMap<ActorId, Arc<MailboxGauge>>>,
    restarts: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl ActorStats {
    /// Creates and registers the gauge of a new actor.
    pub fn register(&self, id: ActorId, label: Label, limit: usize) -> Arc<MailboxGauge> {
        let gauge = Arc::new(MailboxGauge { depth: AtomicUsize::new(0), closed: AtomicBool::new(false), limit, label: Mutex::new(label) });
        self.lock_gauges().insert(id, gauge.clone());
        gauge
    }

    /// Forgets a stopped actor.
    pub fn deregister(&self, id: ActorId) {
        self.lock_gauges().remove(&id);
    }

    /// The gauge of a live actor, if it registered one.
    pub fn gauge(&self, id: ActorId) -> Option<Arc<MailboxGauge>> {
        self.lock_gauges().get(&id).cloned()
    }

    /// Sum and maximum of every registered mailbox depth.
    pub fn depth_summary(&self) -> (usize, usize) {
        let gauges = self.lock_gauges();
        gauges.values().fold((0, 0), |(sum, max), g| {
            let d = g.depth();
            (sum + d, max.max(d))
        })
    }

    /// The restart counter of a supervisor, by name.
    pub fn restarts(&self, supervisor: &str) -> Arc<AtomicU64> {
        let mut map = self.restarts.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(supervisor.to_owned()).or_default().clone()
    }

    fn lock_gauges(&self) -> std::sync::MutexGuard<'_, HashMap<ActorId, Arc<MailboxGauge>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // insert/remove), so a poisoned lock is still safe to use.
        self.gauges.lock().unwrap_or_else(|p| p.into_inner())
    }
}
