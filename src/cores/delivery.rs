//! The delivery core of one device session: what the device has been sent of each
//! conversation, and what to do with the next message, as a pure state machine.
//!
//! For each conversation it keeps a watermark: the highest seq put in the device's
//! outbox (or covered by its delivered cursor). Catch-up after connecting pages
//! everything after the cursor; a live message at or below the watermark is a duplicate
//! and is skipped; one above watermark + 1 means something was missed in between, which
//! the shell reads from the store ([`Verdict::Gap`]) and feeds back as a page. So the
//! device sees each conversation in seq order, without gaps or duplicates, however
//! catch-up and live traffic interleave. The device's own messages are not sent back to
//! it (it has their SendAck) but move the watermark; events are sent to everyone.
//! Membership limits what it sees: from the event that made the user a member to the one
//! that removed them (`ConversationRecord::visible_range`).
//!
//! Also here: cursor moves (a device cannot acknowledge what it was never sent; cursors
//! only grow) and the slow-consumer decision ([`Backpressure`]).

use std::collections::HashMap;

use std::sync::Arc;

use crate::ids::{ConversationId, DeviceId, UserId};
use crate::store::{ConversationRecord, Cursor, StoredMessage};

/// What the session knows of one conversation.
#[derive(Debug, Clone)]
pub struct ConvView {
    /// The conversation as of the latest event this session saw. Shared: every session of
    /// a group holds the same record (a 1,000-member group's is ~48 KB), not a copy each.
    pub record: Arc<ConversationRecord>,
    /// The seqs this user may see (from joining a group to leaving it).
    pub range: (u64, u64),
    /// Highest seq put in the outbox (or covered by the delivered cursor).
    pub pushed: u64,
    /// Highest seq the device acknowledged (✓✓).
    pub delivered: u64,
    /// Highest seq the device read (blue ✓✓).
    pub read: u64,
}

impl ConvView {
    /// A view of `record` for `user`, resuming after `cursor` (None if the user may see
    /// nothing of it).
    pub fn new(record: Arc<ConversationRecord>, user: UserId, cursor: Cursor) -> Option<Self> {
        let range = record.visible_range(user)?;
        // Nothing before joining: start at the joining event at the earliest.
        let pushed = cursor.delivered.max(range.0.saturating_sub(1));
        Some(Self { record, range, pushed, delivered: cursor.delivered, read: cursor.read })
    }

    /// True if `seq` is in the user's visible range.
    pub fn visible(&self, seq: u64) -> bool {
        seq >= self.range.0 && seq <= self.range.1
    }
}

/// What to do with a live message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Put it in the outbox, then call [`DeliveryCore::pushed`].
    Push,
    /// The device's own message: nothing to send, but call [`DeliveryCore::pushed`].
    Own,
    /// Already sent, or outside what the user may see.
    Skip,
    /// Messages in `(after, up_to]` were missed: read them, feed them through
    /// [`DeliveryCore::page`], then ask again.
    Gap {
        /// The watermark.
        after: u64,
        /// The seq before the live message.
        up_to: u64,
    },
    /// No view of this conversation yet (it began, or the user joined it, after
    /// catch-up): load its record and call [`DeliveryCore::add_view`].
    Unknown,
}

/// A cursor move to store and relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorAdvance {
    /// The new delivered cursor.
    pub delivered: u64,
    /// The new read cursor (0: unchanged).
    pub read: u64,
}

/// The outcome of feeding a page of stored messages.
#[derive(Debug, Default)]
pub struct Page<'a> {
    /// What to send, in order.
    pub send: Vec<&'a StoredMessage>,
    /// True when the page reached the end of what the user may see (or of `up_to`):
    /// no further page is needed.
    pub done: bool,
}

/// The delivery state of one device.
#[derive(Debug)]
pub struct DeliveryCore {
    user: UserId,
    device: DeviceId,
    views: HashMap<ConversationId, ConvView>,
}

impl DeliveryCore {
    /// An empty core for `device` of `user`.
    pub fn new(user: UserId, device: DeviceId) -> Self {
        Self { user, device, views: HashMap::new() }
    }

    /// The view of a conversation, if the session has one.
    pub fn view(&self, id: ConversationId) -> Option<&ConvView> {
        self.views.get(&id)
    }

    /// Every view (presence broadcast, tests).
    pub fn views(&self) -> impl Iterator<Item = &ConvView> {
        self.views.values()
    }

    /// Adds (or replaces) the view of a conversation from its record and the device's
    /// stored cursor. Returns false if the user may see nothing of it.
    pub fn add_view(&mut self, record: Arc<ConversationRecord>, cursor: Cursor) -> bool {
        let id = record.conversation_id;
        match ConvView::new(record, self.user, cursor) {
            Some(view) => {
                self.views.insert(id, view);
                true
            }
            None => false,
        }
    }

    /// Catch-up of `id` starts after `seq`: what is older is left to history (a device's
    /// first catch-up brings only the newest messages of each conversation; what the user
    /// cleared is never sent). The watermark moves up to `seq`, never back and never past
    /// what the user may see.
    pub fn start_after(&mut self, id: ConversationId, seq: u64) {
        if let Some(view) = self.views.get_mut(&id) {
            view.pushed = view.pushed.max(seq.min(view.range.1));
        }
    }

    /// What to do with a live message of `id` at `seq`.
    pub fn live(&self, id: ConversationId, seq: u64, sender_device: DeviceId, is_event: bool) -> Verdict {
        let Some(view) = self.views.get(&id) else { return Verdict::Unknown };
        if seq <= view.pushed || !view.visible(seq) {
            return Verdict::Skip;
        }
        if seq > view.pushed + 1 {
            return Verdict::Gap { after: view.pushed, up_to: seq - 1 };
        }
        if sender_device == self.device && !is_event { Verdict::Own } else { Verdict::Push }
    }

    /// The live message at `seq` was sent (or was the device's own): the watermark moves.
    pub fn pushed(&mut self, id: ConversationId, seq: u64) {
        if let Some(view) = self.views.get_mut(&id)
            && view.pushed + 1 == seq
        {
            view.pushed = seq;
        }
    }

    /// A page of stored messages of `id` with seqs after the watermark, oldest first
    /// (catch-up, or a gap up to `up_to`): which to send, and whether paging is done.
    /// The watermark moves over the whole page (own messages, invisible ones and messages
    /// expired by `now_ms` — not yet swept — included), so nothing is looked at twice.
    pub fn page<'a>(&mut self, id: ConversationId, messages: &'a [StoredMessage], up_to: u64, page_size: usize, now_ms: u64) -> Page<'a> {
        let device = self.device;
        let Some(view) = self.views.get_mut(&id) else { return Page { send: Vec::new(), done: true } };
        let mut page = Page::default();
        let last = up_to.min(view.range.1);
        for m in messages {
            if m.seq > last {
                page.done = true;
                break;
            }
            if m.seq <= view.pushed {
                continue;
            }
            view.pushed = m.seq;
            if m.event.is_none() && view.record.expired(m.server_time_ms, now_ms) {
                continue;
            }
            if m.seq >= view.range.0 && (m.sender_device_id != device || m.event.is_some()) {
                page.send.push(m);
            }
        }
        if messages.len() < page_size {
            // The store has nothing more now. For a gap (a live message at `up_to + 1`
            // was committed after everything before it), what is still missing in it
            // is gone for good (expired and purged): skip over it.
            if up_to != u64::MAX {
                view.pushed = view.pushed.max(last);
            }
            page.done = true;
        }
        if view.pushed >= last {
            page.done = true;
        }
        page
    }

    /// An event of `id` changed the record (membership, settings): the visible range
    /// follows it.
    pub fn record_changed(&mut self, record: Arc<ConversationRecord>, event_seq: u64) {
        let user = self.user;
        if let Some(view) = self.views.get_mut(&record.conversation_id) {
            view.range = record.visible_range(user).unwrap_or((view.range.0, event_seq));
            view.record = record;
        }
    }

    /// The device acknowledged (`read` = false) or read up to `seq`. Clamped to what it
    /// was sent; returns what moved, if anything (cursors only grow).
    pub fn cursor(&mut self, id: ConversationId, seq: u64, read: bool) -> Option<CursorAdvance> {
        let view = self.views.get_mut(&id)?;
        // A device cannot acknowledge what it was never sent.
        let seq = seq.min(view.pushed);
        let moved_delivered = seq > view.delivered;
        let moved_read = read && seq > view.read;
        if !moved_delivered && !moved_read {
            return None;
        }
        view.delivered = view.delivered.max(seq);
        if read {
            view.read = view.read.max(seq);
        }
        Some(CursorAdvance { delivered: view.delivered, read: if read { view.read } else { 0 } })
    }
}

/// The slow-consumer decision: a full outbox is given `grace_ms` to drain (bursts pass),
/// a device that stopped reading does not.
#[derive(Debug, Clone, Copy)]
pub struct Backpressure {
    grace_ms: u64,
    full_since_ms: Option<u64>,
}

/// What to do about a full outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Wait up to this many ms for room.
    Wait(u64),
    /// The device is too slow: close it with SLOW_CONSUMER.
    Disconnect,
}

impl Backpressure {
    /// A device gets `grace_ms` of a full outbox before it is disconnected.
    pub fn new(grace_ms: u64) -> Self {
        Self { grace_ms, full_since_ms: None }
    }

    /// The outbox was full at `now_ms`.
    pub fn full(&mut self, now_ms: u64) -> Pressure {
        let since = *self.full_since_ms.get_or_insert(now_ms);
        let waited = now_ms.saturating_sub(since);
        if waited >= self.grace_ms { Pressure::Disconnect } else { Pressure::Wait(self.grace_ms - waited) }
    }

    /// The outbox had room again.
    pub fn drained(&mut self) {
        self.full_since_ms = None;
    }
}

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod tests;
