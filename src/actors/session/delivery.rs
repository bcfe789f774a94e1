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
use crate::store::{Cursor, StoreError};

pub(super) fn store_down(state: &SessionState, e: &StoreError, what: &'static str) -> Stop {
    tracing::warn!(error = %e, what, "session could not read the store");
    state.outbox.close(protocol::encode_server(&protocol::closing_frame(ErrorCode::Internal, "store unavailable", 2000)));
    Stop::Gone
}

/// Sends everything after the device's delivered cursor, conversation by conversation,
/// then `CatchUpComplete`.
pub async fn catch_up(state: &mut SessionState) -> Result<(), Stop> {
    let store = state.ctx.store.clone();
    let ids = store.conversations_of(state.user).await.map_err(|e| store_down(state, &e, "conversations"))?;
    let cursors: HashMap<ConversationId, Cursor> =
        store.cursors_of(state.device).await.map_err(|e| store_down(state, &e, "cursors"))?.into_iter().collect();
    let mut visible = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(record) = store.conversation(id).await.map_err(|e| store_down(state, &e, "conversation"))?
            && state.core.add_view(record, cursors.get(&id).copied().unwrap_or_default())
        {
            visible.push(id);
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
            let page = state.core.page(id, &batch, u64::MAX, page_size);
            let done = page.done;
            let frames: Vec<_> = page.send.into_iter().map(encoded_message).collect();
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
                state.core.record_changed(record.as_ref().clone(), d.seq);
            } else {
                state.core.add_view(record.as_ref().clone(), Cursor::default());
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
                    match state.ctx.store.conversation(id).await {
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
        let page = state.core.page(id, &batch, up_to, want);
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
