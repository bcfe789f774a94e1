//! Bounded, observable mailboxes on top of ractor's unbounded ones.
//!
//! ractor's mailboxes have no length and no bound, so every actor that others write to is
//! addressed through a [`Mailbox`]: a handle that counts messages in flight, refuses new
//! ones past a limit (the caller then sheds load, e.g. disconnects a slow device instead
//! of growing memory), and can be closed so that a passivating actor never silently drops
//! a message that raced with its shutdown. The same counters feed `/admin/tree` and the
//! `switchboard_mailbox_depth` metric.
//!
//! Each gauge also adds up the time its actor spent handling messages (busy time), which
//! `/admin/hot` ranks with [`ActorStats::hottest`]: one clock read at each end of a
//! message and one relaxed atomic add, nothing more on the message path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    /// Nanoseconds spent handling messages since the actor started.
    busy_ns: AtomicU64,
    /// When the actor registered (its age puts the busy time in proportion).
    started: Instant,
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

    /// The conversation this actor runs, if it runs one (the console's crash button).
    pub fn conversation_id(&self) -> Option<ConversationId> {
        match &*self.label.lock().unwrap_or_else(|p| p.into_inner()) {
            Label::Conversation(id) | Label::Group(id, _) => Some(*id),
            _ => None,
        }
    }

    /// Adds the time since `since` to the busy time: called by the actor at the end of
    /// each message it handled (a message that panics is not counted; its actor is gone).
    pub fn add_busy(&self, since: Instant) {
        // Relaxed: a statistic, read by nobody who decides anything from it.
        self.busy_ns.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Time spent handling messages since the actor started, in nanoseconds.
    pub fn busy_ns(&self) -> u64 {
        self.busy_ns.load(Ordering::Relaxed)
    }

    /// Time since the actor registered.
    pub fn age(&self) -> std::time::Duration {
        self.started.elapsed()
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
        let gauge = Arc::new(MailboxGauge {
            depth: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            limit,
            busy_ns: AtomicU64::new(0),
            started: Instant::now(),
            label: Mutex::new(label),
        });
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

    /// The `limit` actors with the deepest mailboxes and the `limit` with the most busy
    /// time, each list hottest first (actors with nothing queued, or never busy, are left
    /// out). One pass over the registry under its lock, keeping only `limit` candidates
    /// per list, so it stays cheap with millions of sessions; labels are formatted for
    /// the winners only.
    pub fn hottest(&self, limit: usize) -> Hottest {
        // Ranked by reference, and only the winners' gauges cloned: no per-actor refcount
        // traffic while the registry is locked.
        let owned = |(id, g): (&ActorId, &Arc<MailboxGauge>)| (*id, g.clone());
        let (deepest, busiest): (Vec<_>, Vec<_>) = {
            let gauges = self.lock_gauges();
            let deepest = top_by(gauges.iter(), limit, |(_, g)| g.depth() as u64).into_iter().map(owned).collect();
            let busiest = top_by(gauges.iter(), limit, |(_, g)| g.busy_ns()).into_iter().map(owned).collect();
            (deepest, busiest)
        };
        let hot = |(id, g): (ActorId, Arc<MailboxGauge>)| HotActor {
            id: id.to_string(),
            name: g.label(),
            conversation_id: g.conversation_id().map(|c| c.to_string()),
            mailbox: g.depth(),
            busy_ms: g.busy_ns() as f64 / 1e6,
            age_ms: g.age().as_millis() as u64,
        };
        Hottest { deepest: deepest.into_iter().map(hot).collect(), busiest: busiest.into_iter().map(hot).collect() }
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

/// One actor of [`Hottest`].
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HotActor {
    /// ractor id.
    pub id: String,
    /// The mailbox label (`session user=… device=…`, `conversation …`, `group …`).
    pub name: String,
    /// The conversation it runs, for conversation actors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// Messages waiting.
    pub mailbox: usize,
    /// Time spent handling messages since it started, in milliseconds.
    pub busy_ms: f64,
    /// Time since it started, in milliseconds.
    pub age_ms: u64,
}

/// The hottest actors of a node (`GET /admin/hot`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Hottest {
    /// Deepest mailboxes first.
    pub deepest: Vec<HotActor>,
    /// Most busy time first.
    pub busiest: Vec<HotActor>,
}

/// The `limit` items with the largest non-zero keys, largest first (equal keys in the
/// order met). Pure: a bounded min-heap over one pass, O(n log limit), so ranking a
/// million actors allocates `limit` entries, not a million.
pub fn top_by<T>(items: impl IntoIterator<Item = T>, limit: usize, key: impl Fn(&T) -> u64) -> Vec<T> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    if limit == 0 {
        return Vec::new();
    }
    // (key, Reverse(order)) ordered so that the heap's top (after Reverse) is the weakest
    // candidate: the smallest key, and among equal keys the one met last.
    let mut heap: BinaryHeap<Reverse<(u64, Reverse<usize>)>> = BinaryHeap::with_capacity(limit + 1);
    let mut kept: HashMap<usize, T> = HashMap::with_capacity(limit + 1);
    for (order, item) in items.into_iter().enumerate() {
        let k = key(&item);
        if k == 0 {
            continue;
        }
        if heap.len() == limit && heap.peek().is_some_and(|Reverse((weakest, _))| k <= *weakest) {
            continue;
        }
        heap.push(Reverse((k, Reverse(order))));
        kept.insert(order, item);
        if heap.len() > limit
            && let Some(Reverse((_, Reverse(dropped)))) = heap.pop()
        {
            kept.remove(&dropped);
        }
    }
    let mut ranked: Vec<(u64, usize)> = heap.into_iter().map(|Reverse((k, Reverse(o)))| (k, o)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().filter_map(|(_, o)| kept.remove(&o)).collect()
}

#[cfg(test)]
mod tests {
    use super::top_by;

    #[test]
    fn the_largest_keys_come_first_and_zeros_are_left_out() {
        let items = [("a", 3), ("b", 0), ("c", 9), ("d", 1), ("e", 7)];
        assert_eq!(top_by(items, 3, |(_, k)| *k), vec![("c", 9), ("e", 7), ("a", 3)]);
        assert_eq!(top_by(items, 10, |(_, k)| *k), vec![("c", 9), ("e", 7), ("a", 3), ("d", 1)]);
        assert!(top_by(items, 0, |(_, k)| *k).is_empty());
        assert!(top_by([("z", 0)], 5, |(_, k)| *k).is_empty());
    }

    #[test]
    fn equal_keys_keep_the_order_they_were_met_in() {
        let items = [("a", 5), ("b", 5), ("c", 5), ("d", 6)];
        assert_eq!(top_by(items, 3, |(_, k)| *k), vec![("d", 6), ("a", 5), ("b", 5)]);
    }

    #[test]
    fn a_long_run_agrees_with_a_full_sort() {
        // A deterministic pseudo-random sequence with many ties.
        let keys: Vec<u64> = (0..5000u64).map(|i| (i * 7919 + 13) % 101).collect();
        for limit in [1, 7, 100, 6000] {
            let mut expected: Vec<(usize, u64)> = keys.iter().copied().enumerate().filter(|(_, k)| *k > 0).collect();
            expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            expected.truncate(limit);
            assert_eq!(top_by(keys.iter().copied().enumerate(), limit, |(_, k)| *k), expected, "limit {limit}");
        }
    }
}
