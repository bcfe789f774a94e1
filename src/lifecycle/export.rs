//! "Request account info": a JSON archive of the caller's account: the account, its
//! devices, its settings (profile, privacy, blocks), its conversation list, and the
//! user's own stored messages as the server has them (ciphertext, hex: the server never
//! had the plaintext; messages the user cleared from their devices included, expired
//! ones not). Rate-limited per account ([`EXPORTS_PER_DAY`]); at most
//! [`MAX_EXPORTED_MESSAGES`] messages and [`MAX_EXPORTED_PAYLOAD_BYTES`] of payload
//! (`messages_truncated` says when more exist). Not in it: the contact list.

use serde::Serialize;

use crate::accounts::{AccountError, DeviceInfo};
use crate::cores::token_bucket::{BucketRule, Taken};
use crate::ids::{ConversationId, UserId};
use crate::inbox::{InboxEntry, PageRequest};
use crate::store::{ContentKind, PrivacySettings, Profile, Store, StoreError, now_ms};

/// Exports one account may ask for per day.
pub const EXPORTS_PER_DAY: u32 = 5;
/// Most messages one export holds.
pub const MAX_EXPORTED_MESSAGES: usize = 200_000;
/// Most payload bytes one export holds (hex doubles them in the archive).
pub const MAX_EXPORTED_PAYLOAD_BYTES: usize = 64 << 20;

/// The archive (`format`: `switchboard-export-1`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Export {
    /// The archive's format and version.
    pub format: &'static str,
    /// When it was made, ms since the Unix epoch.
    pub exported_ms: u64,
    /// The account.
    pub account: ExportedAccount,
    /// Every device, revoked ones included.
    pub devices: Vec<DeviceInfo>,
    /// The profile (absent if never set).
    pub profile: Option<Profile>,
    /// Privacy settings.
    pub privacy: PrivacySettings,
    /// Users this account blocked.
    #[schema(value_type = Vec<String>)]
    pub blocks: Vec<UserId>,
    /// The conversation list, in list order.
    pub conversations: Vec<InboxEntry>,
    /// The user's own messages, by conversation then seq.
    pub messages: Vec<ExportedMessage>,
    /// More messages exist than the archive holds.
    pub messages_truncated: bool,
}

/// The account part of an archive.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExportedAccount {
    /// Id.
    #[schema(value_type = String, format = Uuid)]
    pub user_id: UserId,
    /// E.164 number.
    pub phone: String,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
}

/// One of the user's own stored messages.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExportedMessage {
    /// Conversation.
    #[schema(value_type = String, format = Uuid)]
    pub conversation_id: ConversationId,
    /// Position in its log.
    pub seq: u64,
    /// The sending device's idempotency key.
    pub client_msg_id: String,
    /// When the server sequenced it, ms since the Unix epoch.
    pub server_time_ms: u64,
    /// `normal`, `edit` or `reaction`.
    pub kind: &'static str,
    /// For edits and reactions: the target's seq.
    pub reference_seq: u64,
    /// Deleted for everyone (the payload is gone).
    pub deleted: bool,
    /// The stored payload (ciphertext), hex.
    pub payload_hex: String,
    /// Media the message declared.
    #[schema(value_type = Vec<String>)]
    pub attachments: Vec<crate::store::MediaId>,
}

/// Builds the archive of `user`'s account. Errors: `TooOften` (the daily budget),
/// `Store`.
pub async fn export(store: &dyn Store, user: UserId) -> Result<Export, AccountError> {
    let now = now_ms();
    if let Taken::No { retry_after_ms } =
        store.take_token(&format!("export/{user}"), BucketRule::per(EXPORTS_PER_DAY, std::time::Duration::from_secs(86_400)), now).await?
    {
        return Err(AccountError::TooOften { retry_after_secs: retry_after_ms.div_ceil(1000).max(1) });
    }
    let record = store.user(user).await?.ok_or(AccountError::UnknownDevice)?;
    let mut conversations = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let asked = PageRequest { since: 0, after: after.as_deref(), limit: crate::cores::inbox::MAX_PAGE, now_ms: now, margin_ms: 0 };
        let page = crate::inbox::page(store, user, asked).await.map_err(|e| AccountError::Store(StoreError::Backend(e.to_string())))?;
        conversations.extend(page.entries);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let (messages, messages_truncated) = own_messages(store, user, &conversations, now).await?;
    Ok(Export {
        format: "switchboard-export-1",
        exported_ms: now,
        account: ExportedAccount { user_id: user, phone: record.phone, created_ms: record.created_ms },
        devices: store.devices_of(user).await?.into_iter().map(DeviceInfo::from).collect(),
        profile: store.profile(user).await?,
        privacy: store.privacy(user).await?,
        blocks: store.blocks_of(user).await?,
        conversations,
        messages,
        messages_truncated,
    })
}

/// The user's own messages in the conversations of the list (within what they may see),
/// at most [`MAX_EXPORTED_MESSAGES`].
async fn own_messages(store: &dyn Store, user: UserId, conversations: &[InboxEntry], now: u64) -> Result<(Vec<ExportedMessage>, bool), StoreError> {
    const PAGE: usize = 1000;
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    for entry in conversations {
        let Some(record) = store.conversation(entry.conversation_id).await? else { continue };
        let Some((first, last)) = record.visible_range(user) else { continue };
        // Everything still stored, what the user cleared from their devices included;
        // not what expired under the conversation's retention (gone by rule).
        let mut after = first.saturating_sub(1);
        loop {
            let page = store.messages_after(entry.conversation_id, after, PAGE).await?;
            let own = |m: &&crate::store::StoredMessage| {
                m.seq <= last && m.sender_user_id == user && m.event.is_none() && !record.expired(m.server_time_ms, now)
            };
            for m in page.iter().filter(own) {
                bytes += m.payload.len();
                if out.len() == MAX_EXPORTED_MESSAGES || bytes > MAX_EXPORTED_PAYLOAD_BYTES {
                    return Ok((out, true));
                }
                out.push(ExportedMessage {
                    conversation_id: m.conversation_id,
                    seq: m.seq,
                    client_msg_id: m.client_msg_id.clone(),
                    server_time_ms: m.server_time_ms,
                    kind: match m.kind {
                        ContentKind::Normal => "normal",
                        ContentKind::Edit => "edit",
                        ContentKind::Reaction => "reaction",
                    },
                    reference_seq: m.reference_seq,
                    deleted: m.deleted,
                    payload_hex: hex::encode(&m.payload),
                    attachments: m.attachments.clone(),
                });
            }
            match page.last() {
                Some(m) if page.len() == PAGE && m.seq < last => after = m.seq,
                _ => break,
            }
        }
    }
    Ok((out, false))
}
