//! The conversation list's frames: `InboxRequest` (a page of the list) and `UpdateChat`
//! (mute, archive, pin, clear), answered from [`crate::inbox`]; a change is also sent to
//! the user's other devices as `InboxChanged`.

use super::SessionState;
use super::requests::Answer;
use crate::cores::inbox::{ChatUpdate, MutedPush};
use crate::protocol::{self, RequestError, parse_id, pb, server_frame};
use crate::store::now_ms;

/// `InboxRequest`: one page of the list.
pub async fn page(state: &mut SessionState, req: pb::InboxRequest) -> Answer {
    let asked = crate::inbox::PageRequest {
        since: req.since_version,
        after: Some(&req.after),
        limit: req.limit as usize,
        now_ms: now_ms(),
        margin_ms: state.ctx.limits.inbox_version_margin_ms,
    };
    // Read cursors (unread counts, read times) may still be deferred at the writer.
    state.ctx.writer.barrier().await;
    let page = crate::inbox::page(state.ctx.store.as_ref(), state.user, asked).await?;
    Ok(Some(protocol::server(server_frame::Kind::Inbox(pb::InboxPage {
        request_id: req.request_id,
        entries: page.entries.iter().map(crate::inbox::entry_frame).collect(),
        next: page.next.unwrap_or_default(),
        version: page.version,
    }))))
}

/// `UpdateChat`: the change, answered with the entry as it is now.
pub async fn update(state: &mut SessionState, req: pb::UpdateChat) -> Answer {
    let id = parse_id("conversation_id", &req.conversation_id)?;
    let muted_push = match req.muted_push.map(pb::MutedPush::try_from) {
        None => None,
        Some(Ok(pb::MutedPush::Silent)) => Some(MutedPush::Silent),
        Some(Ok(pb::MutedPush::Off)) => Some(MutedPush::Off),
        Some(Err(_)) => return Err(RequestError::invalid("muted_push: unknown value")),
    };
    let change =
        ChatUpdate { muted_until_ms: req.muted_until_ms, muted_push, archived: req.archived, pinned: req.pinned, cleared_up_to: req.cleared_up_to };
    let (entry, changed) = crate::inbox::update(state.ctx.store.as_ref(), state.user, id, change, now_ms()).await?;
    let entry = crate::inbox::entry_frame(&entry);
    if changed {
        crate::inbox::announce(&state.ctx.router, state.user, Some(state.device), &entry);
    }
    Ok(Some(protocol::server(server_frame::Kind::InboxChanged(pb::InboxChanged { request_id: req.request_id, entry: Some(entry) }))))
}
