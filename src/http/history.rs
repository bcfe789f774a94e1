//! HTTP history: `GET /v1/conversations/{conversation_id}/messages`, a page of a
//! conversation's log as the caller may see it (membership range, retention, what they
//! cleared) with the tick state of their own messages, the same as `HistoryRequest`
//! answers over the socket ([`crate::history`]). docs/protocol.md §12.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::api::{ApiError, ApiState, ErrorBody, caller};
use crate::history::history_page;
use crate::store::{ConversationId, DeviceId};

/// Query of `GET /v1/conversations/{id}/messages`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Exclusive upper bound; 0 or absent: from the newest message.
    #[serde(default)]
    #[param(minimum = 0, maximum = 9007199254740991_u64)]
    pub before: u64,
    /// Page size; 0 or absent: 50; capped at 200.
    #[serde(default)]
    #[param(minimum = 0, maximum = 4294967295_u64)]
    pub limit: usize,
}

/// One message of a history page.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryItem {
    /// Position in the conversation's log.
    pub seq: u64,
    /// Sender (for events: who made the change).
    #[schema(value_type = String, format = Uuid)]
    pub sender_user_id: crate::ids::UserId,
    /// Sending device.
    #[schema(value_type = String, format = Uuid)]
    pub sender_device_id: DeviceId,
    /// The sender's idempotency key (`event-<seq>` for events).
    pub client_msg_id: String,
    /// When the server sequenced it (ms since the Unix epoch).
    pub server_time_ms: u64,
    /// The opaque payload in hex (empty for events and deleted messages).
    pub payload_hex: String,
    /// `normal`, `edit` or `reaction`.
    pub kind: HistoryKind,
    /// For edits and reactions: the target's seq.
    pub reference_seq: u64,
    /// Deleted for everyone.
    pub deleted: bool,
    /// For server events: the protobuf bytes of `ConversationEvent`, in hex.
    pub event_hex: Option<String>,
    /// The caller's own messages: how many other members had it delivered (✓✓) when
    /// the page was read (1:1: 0 or 1; 0 across a block). 0 for others' messages.
    pub delivered_to: u32,
    /// The caller's own messages: how many other members read it (blue ✓✓; 1:1: 0 when
    /// read receipts are off on either side). 0 for others' messages.
    pub read_by: u32,
}

/// The kind of a history item.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HistoryKind {
    /// An ordinary message.
    Normal,
    /// An edit of `reference_seq`.
    Edit,
    /// A reaction to `reference_seq`.
    Reaction,
}

/// A page of history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// The conversation.
    #[schema(value_type = String, format = Uuid)]
    pub conversation_id: ConversationId,
    /// Newest first.
    pub messages: Vec<HistoryItem>,
    /// Older visible messages exist (ask again with `before` = the last seq here).
    pub has_more: bool,
}

impl From<&crate::store::StoredMessage> for HistoryItem {
    fn from(m: &crate::store::StoredMessage) -> Self {
        Self {
            seq: m.seq,
            sender_user_id: m.sender_user_id,
            sender_device_id: m.sender_device_id,
            client_msg_id: m.client_msg_id.clone(),
            server_time_ms: m.server_time_ms,
            payload_hex: hex::encode(&m.payload),
            kind: match m.kind {
                crate::store::ContentKind::Normal => HistoryKind::Normal,
                crate::store::ContentKind::Edit => HistoryKind::Edit,
                crate::store::ContentKind::Reaction => HistoryKind::Reaction,
            },
            reference_seq: m.reference_seq,
            deleted: m.deleted,
            event_hex: m.event.as_ref().map(hex::encode),
            delivered_to: 0,
            read_by: 0,
        }
    }
}

/// One page of a conversation's log, limited to the caller's membership range.
#[utoipa::path(get, path = "/v1/conversations/{conversation_id}/messages", tag = "public", security(("device_token" = [])),
    params(("conversation_id" = String, Path, format = Uuid, description = "The conversation"), HistoryQuery),
    responses(
        (status = 200, description = "A page, newest first", body = HistoryPage),
        (status = 400, description = "bad_request: not a UUID, or a bad query", body = ErrorBody),
        (status = 401, description = "unauthorized or device_revoked", body = ErrorBody),
        (status = 403, description = "not_a_member: never a member", body = ErrorBody),
        (status = 404, description = "unknown_conversation", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody),
))]
pub async fn history(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let me = caller(&req, &state).await?;
    let id: ConversationId = path.parse().map_err(|_| ApiError::BadRequest("conversation_id must be a UUID".into()))?;
    let record = state.store.conversation(id).await.map_err(|_| ApiError::Unavailable)?.ok_or(ApiError::UnknownConversation)?;
    // The same membership range as over the socket: from joining to leaving.
    let range = record.visible_range(me.user_id).ok_or(ApiError::NotAMember)?;
    let store = state.store.as_ref();
    // Cursor moves (read times, ✓✓) may still be deferred at the writer: read after them.
    state.node.ctx.writer.barrier().await;
    let range = crate::history::without_cleared(store, me.user_id, &record, range).await.map_err(|_| ApiError::Unavailable)?;
    let (messages, has_more) =
        history_page(store, &record, range, query.before, query.limit, crate::store::now_ms()).await.map_err(|_| ApiError::Unavailable)?;
    // Ticks only for a page with the caller's own messages; the privacy rules only matter
    // in a 1:1.
    let ticks = if messages.iter().any(|m| m.sender_user_id == me.user_id) {
        let flow = if record.kind == crate::store::ConversationKind::Direct {
            let mut privacy = crate::privacy::PrivacyCache::load(store, me.user_id).await.map_err(|_| ApiError::Unavailable)?;
            crate::history::TickFlow::of(&mut privacy, store, &record, me.user_id).await.map_err(|_| ApiError::Unavailable)?
        } else {
            crate::history::TickFlow { delivered: true, read: true }
        };
        crate::history::ticks(store, &record, me.user_id, &messages, flow).await.map_err(|_| ApiError::Unavailable)?
    } else {
        Default::default()
    };
    let messages = messages
        .iter()
        .map(|m| {
            let (delivered_to, read_by) = ticks.get(&m.seq).copied().unwrap_or_default();
            HistoryItem { delivered_to, read_by, ..HistoryItem::from(m) }
        })
        .collect();
    Ok(HttpResponse::Ok().json(HistoryPage { conversation_id: id, messages, has_more }))
}
