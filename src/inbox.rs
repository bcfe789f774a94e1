//! The shell of the conversation list (inbox): gathers the facts of a user's
//! conversations out of the store for [`crate::cores::inbox`], which decides what changed,
//! the order, the pages and the unread counts; applies a device's change to the user's
//! state of a conversation. Shared by the socket (`InboxRequest`, `UpdateChat`) and the
//! HTTP API (`GET /v1/inbox`, `PATCH /v1/inbox/{conversation_id}`), so both answer alike.
//!
//! Cost of a page: per conversation of the user, its record, its last visible message and
//! the user's member cursor (and, once read, when it was read); then, per entry of the
//! page that has unread messages, at most [`inbox::UNREAD_SCAN`] of its newest entries.

use serde::Serialize;

use std::collections::HashMap;

use futures_util::StreamExt;

use crate::cores::inbox::{self, ChatState, ChatUpdate, Continuation, Entry, Facts, InboxError};
use crate::ids::{ConversationId, UserId};
use crate::protocol::{RequestError, id_bytes, pb};
use crate::store::{ContentKind, ConversationKind, ConversationRecord, Store, StoreError, StoredMessage};

/// One conversation of a user's list (the same on each of the user's devices).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InboxEntry {
    /// The conversation.
    #[schema(value_type = String, format = Uuid)]
    pub conversation_id: ConversationId,
    /// A group (false: 1:1).
    pub group: bool,
    /// The group's subject ("" for 1:1).
    pub subject: String,
    /// 1:1 only: the other user.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub peer_user_id: Option<UserId>,
    /// False once the user left the group or was removed (history up to then stays).
    pub member: bool,
    /// The last seq the user may see (0: nothing yet).
    pub last_seq: u64,
    /// Time of that message, or of the conversation's creation when it has none (ms since
    /// the Unix epoch): the list's order.
    pub last_time_ms: u64,
    /// The last message's metadata (no content): absent if none, cleared or expired.
    pub last_message: Option<LastMessage>,
    /// Ordinary messages from others after the read cursor and what was cleared, among
    /// the newest 200 log entries.
    pub unread_count: u32,
    /// Older unread messages exist beyond those counted.
    pub unread_more: bool,
    /// The user's read cursor (the furthest any of their devices read).
    pub read_seq: u64,
    /// The user's own state of it.
    pub state: ChatState,
}

/// The metadata of a conversation's last message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LastMessage {
    /// Its seq.
    pub seq: u64,
    /// Who sent it (who made the change, for events).
    #[schema(value_type = String, format = Uuid)]
    pub sender_user_id: UserId,
    /// When the server sequenced it, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// `normal`, `edit` or `reaction`.
    pub kind: &'static str,
    /// Deleted for everyone.
    pub deleted: bool,
    /// A server-generated event (membership, settings).
    pub event: bool,
}

/// A page of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InboxPage {
    /// Entries in list order: pinned first (latest pinned first), then the most recent
    /// activity first.
    pub entries: Vec<InboxEntry>,
    /// Continuation token for the next page (`after`); absent on the last page.
    pub next: Option<String>,
    /// The `since` of the next sync once every page of this pass is read (every page of a
    /// pass carries the same one). Entries changed in the margin before it (10 s by
    /// default) may come again: they are states, apply them again.
    pub version: u64,
}

/// Where a page is asked from: which page, and when.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    /// Conversations changed after this version (0: all).
    pub since: u64,
    /// The continuation token of the previous page (None or "": from the start).
    pub after: Option<&'a str>,
    /// At most this many entries (0: 100; at most 500).
    pub limit: usize,
    /// The time of the read, ms since the Unix epoch.
    pub now_ms: u64,
    /// The version margin, ms (`inbox_version_margin_ms`).
    pub margin_ms: u64,
}

/// One page of `user`'s list. Errors: `InvalidArgument` for a token that is not one,
/// `Unavailable` if the store failed.
pub async fn page(store: &dyn Store, user: UserId, req: PageRequest<'_>) -> Result<InboxPage, RequestError> {
    let PageRequest { since, after, limit, now_ms, margin_ms } = req;
    let after = match after.filter(|a| !a.is_empty()) {
        Some(token) => Some(Continuation::parse(token).ok_or_else(|| RequestError::invalid("after: not a continuation token of this list"))?),
        None => None,
    };
    // Every page of a pass answers with the version of its first page.
    let version = after.map_or_else(|| inbox::version_at(now_ms, margin_ms), |c| c.version);
    let states: HashMap<ConversationId, ChatState> = store.chat_states(user).await?.into_iter().collect();
    let ids = store.conversations_of(user).await?;
    // Reads of different conversations overlap (a remote store's round trips); what
    // decides a change needs the read position only after a first sync.
    let with_reads = since > 0;
    let gathered: Vec<Result<Option<Gathered>, RequestError>> = futures_util::stream::iter(ids)
        .map(|id| {
            let state = states.get(&id).copied().unwrap_or_default();
            async move { facts(store, user, id, state, with_reads).await }
        })
        .buffer_unordered(GATHER_CONCURRENCY)
        .collect()
        .await;
    let mut by_id = HashMap::new();
    for g in gathered {
        if let Some(g) = g? {
            by_id.insert(g.facts.id, g);
        }
    }
    let (chosen, next) = inbox::page(by_id.values().map(|g| g.facts.clone()).collect(), since, after.map(|c| c.position), limit, version);
    let mut entries = Vec::with_capacity(chosen.len());
    for f in chosen {
        if let Some(g) = by_id.get_mut(&f.id) {
            if !with_reads {
                read_position(store, user, &mut g.facts).await?;
            }
            entries.push(entry_of(store, user, g, now_ms).await?);
        }
    }
    Ok(InboxPage { entries, next, version })
}

/// Conversations whose facts are read at once.
const GATHER_CONCURRENCY: usize = 16;

/// The entry of one conversation of `user`'s list at `now_ms`; None if the user never
/// was a member (or it does not exist).
pub async fn entry(store: &dyn Store, user: UserId, id: ConversationId, now_ms: u64) -> Result<Option<InboxEntry>, RequestError> {
    let state = store.chat_state(user, id).await?;
    match facts(store, user, id, state, true).await? {
        Some(g) => Ok(Some(entry_of(store, user, &g, now_ms).await?)),
        None => Ok(None),
    }
}

/// Applies a device's change to `user`'s state of `id` at `now_ms` and returns the entry
/// as it is now, and whether anything changed (if so, the user's other devices must be
/// told). Errors: `UnknownConversation`, `NotAMember` (never one: a former member may
/// still mute, archive or clear what they saw), `TooManyPins`, `InvalidArgument`
/// (clearing past the last seq), `Unavailable`. An empty change changes nothing.
pub async fn update(
    store: &dyn Store,
    user: UserId,
    id: ConversationId,
    change: ChatUpdate,
    now_ms: u64,
) -> Result<(InboxEntry, bool), RequestError> {
    let record = store.conversation(id).await?.ok_or(RequestError::UnknownConversation)?;
    let range = record.visible_range(user).ok_or(RequestError::NotAMember)?;
    let last = last_visible(store, &record, range).await?;
    let last_seq = last.as_ref().map_or(0, |m| m.seq);
    let changed = match store.update_chat_state(user, id, change, last_seq, now_ms).await? {
        Ok(changed) => changed.is_some(),
        Err(InboxError::TooManyPins { max }) => return Err(RequestError::TooManyPins(max)),
        Err(e @ InboxError::ClearBeyondEnd { .. }) => return Err(RequestError::invalid(e.to_string())),
    };
    let entry = entry(store, user, id, now_ms).await?.ok_or(RequestError::NotAMember)?;
    Ok((entry, changed))
}

/// What was read of one conversation: the core's facts and what the entry shows.
#[derive(Debug, Clone)]
struct Gathered {
    facts: Facts,
    record: ConversationRecord,
    range: (u64, u64),
    last: Option<StoredMessage>,
}

async fn facts(store: &dyn Store, user: UserId, id: ConversationId, state: ChatState, with_reads: bool) -> Result<Option<Gathered>, RequestError> {
    let Some(record) = store.conversation(id).await? else { return Ok(None) };
    let Some(range) = record.visible_range(user) else { return Ok(None) };
    let last = last_visible(store, &record, range).await?;
    let last_seq = last.as_ref().map_or(0, |m| m.seq);
    // A conversation with nothing in it yet is as recent as its creation.
    let last_time_ms = last.as_ref().map_or(0, |m| m.server_time_ms).max(record.created_ms);
    let mut facts = Facts { id, last_seq, last_time_ms, read: 0, read_ms: 0, state };
    if with_reads {
        read_position(store, user, &mut facts).await?;
    }
    Ok(Some(Gathered { facts, record, range, last }))
}

/// The user's read cursor in the conversation and when it got there.
async fn read_position(store: &dyn Store, user: UserId, facts: &mut Facts) -> Result<(), StoreError> {
    facts.read = store.member_cursor(facts.id, user).await?.read;
    facts.read_ms = if facts.read > 0 { store.receipt_times(facts.id, user, facts.read).await?.1.unwrap_or(0) } else { 0 };
    Ok(())
}

/// The newest entry of the log the user may see (a former member's ends where they left).
async fn last_visible(store: &dyn Store, record: &ConversationRecord, (first, last): (u64, u64)) -> Result<Option<StoredMessage>, StoreError> {
    let before = if last == u64::MAX { 0 } else { last + 1 };
    let newest = store.messages_before(record.conversation_id, before, 1).await?;
    Ok(newest.into_iter().next().filter(|m| m.seq >= first))
}

async fn entry_of(store: &dyn Store, user: UserId, g: &Gathered, now_ms: u64) -> Result<InboxEntry, RequestError> {
    let f = &g.facts;
    let floor = f.read.max(f.state.cleared_up_to).max(g.range.0.saturating_sub(1));
    let (unread_count, unread_more) = if f.last_seq > floor {
        // No more than the entries after the floor (up to the scan's bound).
        let want = ((f.last_seq - floor) as usize).min(inbox::UNREAD_SCAN);
        let newest = store.messages_before(f.id, f.last_seq + 1, want).await?;
        let entries: Vec<Entry> = newest
            .iter()
            .filter(|m| m.seq >= g.range.0)
            .map(|m| {
                let ordinary = m.event.is_none() && m.kind == ContentKind::Normal && !m.deleted;
                // Expired but not swept yet: gone by rule, not unread.
                Entry { seq: m.seq, sender: m.sender_user_id, countable: ordinary && !g.record.expired(m.server_time_ms, now_ms) }
            })
            .collect();
        inbox::unread(user, floor, 0, &entries)
    } else {
        (0, false)
    };
    // Not shown: a last message that was cleared, or that expired (not swept yet).
    let shown = |m: &&StoredMessage| m.seq > f.state.cleared_up_to && (m.event.is_some() || !g.record.expired(m.server_time_ms, now_ms));
    let member = g.record.is_member(user);
    let subject = match &g.record.group {
        Some(group) if member => group.subject.clone(),
        // A former member knows the subject as it was when they left, not later renames.
        Some(_) => subject_at(store, g.record.conversation_id, g.range.1).await?,
        None => String::new(),
    };
    let last_message = g.last.as_ref().filter(shown).map(|m| LastMessage {
        seq: m.seq,
        sender_user_id: m.sender_user_id,
        server_time_ms: m.server_time_ms,
        kind: match m.kind {
            ContentKind::Normal => "normal",
            ContentKind::Edit => "edit",
            ContentKind::Reaction => "reaction",
        },
        deleted: m.deleted,
        event: m.event.is_some(),
    });
    Ok(InboxEntry {
        conversation_id: f.id,
        group: g.record.kind == ConversationKind::Group,
        subject,
        peer_user_id: if g.record.kind == ConversationKind::Direct { g.record.members.iter().copied().find(|m| *m != user) } else { None },
        member,
        last_seq: f.last_seq,
        last_time_ms: f.last_time_ms,
        last_message,
        unread_count,
        unread_more,
        read_seq: f.read,
        state: f.state,
    })
}

/// A group's subject as of `seq` (the newest `created` or `subject_changed` event at or
/// before it), read backwards a page at a time; "" if none is found within
/// [`SUBJECT_SCAN_PAGES`] pages.
async fn subject_at(store: &dyn Store, id: ConversationId, seq: u64) -> Result<String, StoreError> {
    use pb::conversation_event::Kind;
    use prost::Message as _;
    let mut before = seq.saturating_add(1);
    for _ in 0..SUBJECT_SCAN_PAGES {
        let page = store.messages_before(id, before, 256).await?;
        for m in &page {
            let event = m.event.as_ref().and_then(|bytes| pb::ConversationEvent::decode(bytes.as_ref()).ok()).and_then(|e| e.kind);
            match event {
                Some(Kind::Created(c)) => return Ok(c.subject),
                Some(Kind::SubjectChanged(subject)) => return Ok(subject),
                _ => {}
            }
        }
        match page.last() {
            Some(m) if page.len() == 256 => before = m.seq,
            _ => break,
        }
    }
    Ok(String::new())
}

/// Pages of 256 entries a former member's subject is looked for in.
const SUBJECT_SCAN_PAGES: usize = 8;

/// The wire form of an entry.
pub fn entry_frame(e: &InboxEntry) -> pb::InboxEntry {
    pb::InboxEntry {
        conversation_id: id_bytes(e.conversation_id),
        group: e.group,
        subject: e.subject.clone(),
        member: e.member,
        peer_user_id: e.peer_user_id.map(id_bytes).unwrap_or_default(),
        last_seq: e.last_seq,
        last_message: e.last_message.as_ref().map(|m| pb::LastMessage {
            seq: m.seq,
            sender_user_id: id_bytes(m.sender_user_id),
            server_time_ms: m.server_time_ms,
            kind: match m.kind {
                "edit" => pb::MessageKind::Edit,
                "reaction" => pb::MessageKind::Reaction,
                _ => pb::MessageKind::Normal,
            } as i32,
            deleted: m.deleted,
            event: m.event,
        }),
        unread_count: e.unread_count,
        unread_more: e.unread_more,
        read_seq: e.read_seq,
        muted_until_ms: e.state.muted_until_ms,
        archived: e.state.archived,
        pinned_ms: e.state.pinned_ms,
        cleared_up_to: e.state.cleared_up_to,
        last_time_ms: e.last_time_ms,
        muted_push: match e.state.muted_push {
            inbox::MutedPush::Silent => pb::MutedPush::Silent,
            inbox::MutedPush::Off => pb::MutedPush::Off,
        } as i32,
    }
}

/// Tells the user's devices (all but `except`, which got the answer) that an entry of
/// their list changed, wherever they are connected (an `InboxChanged` frame).
pub fn announce(router: &crate::actors::Router, user: UserId, except: Option<crate::ids::DeviceId>, entry: &pb::InboxEntry) {
    let frame = crate::protocol::encode_server(&crate::protocol::server(pb::server_frame::Kind::InboxChanged(pb::InboxChanged {
        request_id: 0,
        entry: Some(entry.clone()),
    })));
    router.deliver_to_users(&[user], except, || crate::actors::messages::SessionRequest::Push(frame.clone()));
}
