//! What a session sends its device: catch-up after connecting, committed batches as they
//! come, and the gaps between. The [`DeliveryCore`](crate::cores::delivery::DeliveryCore)
//! decides every step; this module reads the store and fills the outbox.

use std::collections::HashMap;

use super::{SessionState, Stop, push};
use crate::actors::conversation::encoded_message;
use crate::actors::messages::ConversationBatch;
use crate::cores::delivery::Verdict;
use crate::ids::ConversationId;
use crate::protocol::{self, ErrorCode, pb, server_frame};
use crate::store::{Cursor, StoreError, now_ms};

pub(super) fn store_down(state: &SessionState, e: &StoreError, what: &'static str) -> Stop {
    tracing::warn!(error = %e, what, "session could not read the store");
    state.outbox.close(protocol::encode_server(&protocol::closing_frame(ErrorCode::Internal, "store unavailable", 2000)));
    Stop::Gone
}

/// Sends everything after the device's delivered cursor, conversation by conversation,
/// then `CatchUpComplete`; of a conversation the device never acknowledged anything of,
/// only the newest `catch_up_recent` log entries (or more, to include all sent since the
/// device was created); nothing the user cleared.
pub async fn catch_up(state: &mut SessionState) -> Result<(), Stop> {
    let store = state.ctx.store.clone();
    let ids = store.conversations_of(state.user).await.map_err(|e| store_down(state, &e, "conversations"))?;
    let cursors: HashMap<ConversationId, Cursor> =
        store.cursors_of(state.device).await.map_err(|e| store_down(state, &e, "cursors"))?.into_iter().collect();
    // What the user cleared ("delete for me") is never sent again.
    let cleared: HashMap<ConversationId, u64> = store
        .chat_states(state.user)
        .await
        .map_err(|e| store_down(state, &e, "chat states"))?
        .into_iter()
        .filter(|(_, s)| s.cleared_up_to > 0)
        .map(|(id, s)| (id, s.cleared_up_to))
        .collect();
    let recent = state.ctx.limits.catch_up_recent as u64;
    // Since when this device exists: what was sent after that is its backlog, always sent.
    let created_ms = store.device(state.device).await.map_err(|e| store_down(state, &e, "device"))?.map_or(0, |d| d.created_ms);
    let mut visible = Vec::with_capacity(ids.len());
    for id in ids {
        let cursor = cursors.get(&id).copied();
        if let Some(record) = store.conversation_shared(id).await.map_err(|e| store_down(state, &e, "conversation"))?
            && state.core.add_view(record, cursor.unwrap_or_default())
        {
            visible.push(id);
            let mut start = cleared.get(&id).copied().unwrap_or(0);
            if cursor.is_none() {
                // This device never acknowledged anything here (a new or reinstalled
                // device): the newest entries and its own backlog, the rest through
                // history; not a flood of every conversation's past.
                start = start.max(first_unflooded(state, id, recent, created_ms).await?);
            }
            if start > 0 {
                state.core.start_after(id, start);
            }
        }
    }
    let page_size = state.ctx.limits.catch_up_page;
    let mut total = 0u64;
    for &id in &visible {
        loop {
            if state.outbox.is_closed() {
                // Closed from outside (revoked, replaced): stop at once.
                return Err(Stop::Gone);
            }
            let after = state.core.view(id).map(|v| v.pushed).unwrap_or(u64::MAX);
            let batch = store.messages_after(id, after, page_size).await.map_err(|e| store_down(state, &e, "catch-up"))?;
            let page = state.core.page(id, &batch, u64::MAX, page_size, now_ms());
            let done = page.done;
            let frames = with_ticks(state, id, &page.send).await?;
            total += frames.len() as u64;
            for frame in frames {
                push(state, frame).await?;
            }
            if done {
                break;
            }
        }
    }
    Box::pin(super::to_device::catch_up(state)).await?;
    let done = protocol::server(server_frame::Kind::CatchUpComplete(pb::CatchUpComplete { conversations: visible.len() as u32, messages: total }));
    push(state, protocol::encode_server(&done)).await
}

/// The frames of catch-up messages, the user's own (sent from another device) with their
/// tick state, so that a new device shows ✓ / ✓✓ / blue ✓✓ without asking per message.
async fn with_ticks(state: &mut SessionState, id: ConversationId, sent: &[&crate::store::StoredMessage]) -> Result<Vec<bytes::Bytes>, Stop> {
    let user = state.user;
    let record = match state.core.view(id) {
        Some(v) if sent.iter().any(|m| m.sender_user_id == user && m.event.is_none()) => v.record.clone(),
        _ => return Ok(sent.iter().map(|m| encoded_message(m)).collect()),
    };
    let store = state.ctx.store.clone();
    let ticks = match crate::history::TickFlow::of(&mut state.privacy, store.as_ref(), &record, user).await {
        Ok(flow) => crate::history::ticks(store.as_ref(), &record, user, sent.iter().copied(), flow).await,
        Err(e) => Err(e),
    }
    .map_err(|e| store_down(state, &e, "ticks"))?;
    Ok(sent
        .iter()
        .map(|m| {
            let frame = crate::actors::conversation::message_frame_with_ticks(m, ticks.get(&m.seq).copied());
            protocol::encode_server(&protocol::server(server_frame::Kind::Message(frame)))
        })
        .collect())
}

/// Where the catch-up of a conversation this device never acknowledged anything of
/// starts (the seq of the last entry skipped): the newest `recent` log entries the user
/// may see are sent, and earlier ones as long as they were sent after the device was
/// created at `created_ms` (its backlog).
async fn first_unflooded(state: &SessionState, id: ConversationId, recent: u64, created_ms: u64) -> Result<u64, Stop> {
    let store = state.ctx.store.clone();
    // Within what the user may see: a former member's log ends where they left.
    let (first, end) = state.core.view(id).map_or((1, u64::MAX), |v| v.range);
    let last = store.last_seq(id).await.map_err(|e| store_down(state, &e, "last seq"))?.min(end);
    let floor = first.saturating_sub(1);
    let mut start = last.saturating_sub(recent).max(floor);
    // Walk back over what came after the device was created (its own backlog): one entry
    // first (usually older than the device: done), then pages.
    let mut want = 1;
    while start > floor {
        let older = store.messages_before(id, start + 1, want).await.map_err(|e| store_down(state, &e, "catch-up"))?;
        want = state.ctx.limits.catch_up_page;
        let before = start;
        for m in &older {
            if m.server_time_ms < created_ms || m.seq <= floor {
                return Ok(start);
            }
            start = m.seq - 1;
        }
        if older.is_empty() || start == before {
            break;
        }
    }
    Ok(start)
}

/// A committed batch of one conversation: its SendAcks and answers for this device and its
/// messages, in seq order, by the watermark rules.
pub async fn live(state: &mut SessionState, batch: &ConversationBatch) -> Result<(), Stop> {
    let id = batch.conversation_id;
    let me = state.device;
    // Frames for this device, in seq order (indexes: an iterator adapter held across the
    // awaits below would not be `Send`).
    let mine: Vec<usize> = (0..batch.frames.len()).filter(|&i| batch.frames[i].device == me).collect();
    let mut next = 0;
    for d in &batch.deliveries {
        // Acks and answers up to this message go first (an answer precedes its event).
        while next < mine.len() && batch.frames[mine[next]].seq <= d.seq {
            push(state, batch.frames[mine[next]].frame.clone()).await?;
            next += 1;
        }
        if let Some(record) = &d.event_record {
            // Membership and settings follow the log: a re-added member sees again, a
            // removed one stops at the event that removed them.
            if state.core.view(id).is_some() {
                state.core.record_changed(record.clone(), d.seq);
            } else {
                state.core.add_view(record.clone(), Cursor::default());
            }
        }
        loop {
            match state.core.live(id, d.seq, d.sender_device, d.event_record.is_some()) {
                Verdict::Push => {
                    push(state, d.frame.clone()).await?;
                    state.core.pushed(id, d.seq);
                    break;
                }
                Verdict::Own => {
                    state.core.pushed(id, d.seq);
                    break;
                }
                Verdict::Skip => break,
                Verdict::Gap { after, up_to } => fill_gap(state, id, after, up_to).await?,
                Verdict::Unknown => {
                    // A conversation that began (or that this user joined) after catch-up.
                    match state.ctx.store.conversation_shared(id).await {
                        Ok(Some(record)) => {
                            if !state.core.add_view(record, Cursor::default()) {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(conversation = %id, error = %e, "conversation read failed; delivery skipped (catch-up brings it)");
                            break;
                        }
                    }
                }
            }
        }
    }
    for &i in &mine[next..] {
        push(state, batch.frames[i].frame.clone()).await?;
    }
    Ok(())
}

/// Sends the stored messages in (after, up_to] that this connection has not seen.
async fn fill_gap(state: &mut SessionState, id: ConversationId, after: u64, up_to: u64) -> Result<(), Stop> {
    let page_size = state.ctx.limits.catch_up_page;
    let mut after = after;
    loop {
        let want = ((up_to - after) as usize).clamp(1, page_size);
        let batch = match state.ctx.store.messages_after(id, after, want).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "gap fill read failed");
                return Err(Stop::Gone);
            }
        };
        let page = state.core.page(id, &batch, up_to, want, now_ms());
        let done = page.done;
        let frames: Vec<_> = page.send.into_iter().map(encoded_message).collect();
        for frame in frames {
            push(state, frame).await?;
        }
        let pushed = state.core.view(id).map(|v| v.pushed).unwrap_or(up_to);
        if done || pushed >= up_to || pushed == after {
            return Ok(());
        }
        after = pushed;
    }
}
