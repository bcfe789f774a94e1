//! Deleting an account (WhatsApp's "Delete my account"): asked by the primary device,
//! which confirms the account's number. The user leaves every group (an admin is handed
//! over by the group's own rule when the last admin leaves), lifts their blocks, deletes
//! their Status posts, every device is revoked (keys, to-device queues and push tokens go with it) and disconnected,
//! and the account's own data is deleted: contact list, conversation-list states,
//! profile, privacy settings; the number is released for a new account. Messages the user
//! sent stay in their conversations, under each conversation's retention (they are
//! part of the other members' history); the tokens are refused from then on.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::accounts::AccountError;
use crate::actors::NodeContext;
use crate::actors::messages::ConversationRequest;
use crate::actors::push::PushRequest;
use crate::cores::group::GroupOp;
use crate::cores::requests::GroupRequest;
use crate::protocol::ErrorCode;
use crate::store::{ConversationKind, DeviceRecord, StoreError, now_ms};

/// How long the deletion waits for the group leaves it sent to be committed.
const LEAVE_WAIT: Duration = Duration::from_secs(10);

/// What a deletion did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    /// Groups the user left.
    pub groups_left: usize,
    /// Devices revoked (the caller's included).
    pub devices_revoked: usize,
}

/// Deletes `caller`'s account, if `confirm_phone` (as written, with an optional
/// `region`) is its number. Errors: `NotPrimary`, `InvalidPhone`, `WrongNumber`, `Store`
/// (a group could not be left in time, or the store failed: nothing irreversible was
/// done before the step that failed, and the same request may be retried).
pub async fn delete(
    ctx: &NodeContext,
    media: &crate::media::MediaService,
    caller: &DeviceRecord,
    confirm_phone: &str,
    region: Option<&str>,
) -> Result<Deleted, AccountError> {
    if !caller.primary {
        return Err(AccountError::NotPrimary);
    }
    let store = ctx.store.as_ref();
    let user = caller.user_id;
    let record = store.user(user).await?.ok_or(AccountError::UnknownDevice)?;
    // A retry of a deletion that stopped after its data was deleted has no number left
    // to confirm: the caller's token still working is proof enough then.
    if !record.is_deleted() && crate::phone::normalize(confirm_phone, region)? != record.phone {
        return Err(AccountError::WrongNumber);
    }
    // First what can fail without harm: leave every group (sequenced by each group like a
    // member's own Leave). If one is not confirmed, nothing else is done: retry.
    let mut groups = Vec::new();
    for id in store.conversations_of(user).await? {
        if let Some(conversation) = store.conversation(id).await?
            && conversation.kind == ConversationKind::Group
            && conversation.is_member(user)
        {
            let request = GroupRequest { user, device: caller.device_id, request_id: 0, op: GroupOp::Leave };
            if let Err(e) = ctx.router.send_to_conversation(id, ConversationRequest::Group(Box::new(request))).await {
                tracing::warn!(conversation = %id, error = %e, "account deletion: leave not sent");
            }
            groups.push(id);
        }
    }
    let groups_left = wait_for_leaves(ctx, user, groups).await?;
    // Then the account's data (one transaction) and its profile photo (no longer served),
    // its Status posts with their viewers, and its blocks.
    let photo = store.profile(user).await?.and_then(|p| p.photo);
    store.delete_account_data(user).await?;
    for id in photo.iter().flat_map(|p| [p.small, p.large]) {
        if let Err(e) = media.delete_public_image(user, id).await {
            tracing::warn!(media = %id, error = %e, "account deletion: profile photo not deleted");
        }
    }
    for post in store.status_posts(vec![user], now_ms()).await? {
        store.delete_status(user, post.post_id, now_ms()).await?;
    }
    for target in store.blocks_of(user).await? {
        store.set_blocked(user, target, false, now_ms()).await?;
        crate::privacy::notify(&ctx.router, &[target], user);
    }
    // Last the devices, the caller's at the very end: until then a failed step can be
    // retried with the same token.
    let now = now_ms();
    let mut devices: Vec<DeviceRecord> = store.devices_of(user).await?.into_iter().filter(|d| d.revoked_ms.is_none()).collect();
    devices.sort_by_key(|d| d.device_id == caller.device_id);
    let mut devices_revoked = 0;
    for device in devices {
        store.set_push_token(user, device.device_id, None).await?;
        if store.revoke_device(user, device.device_id, now).await? {
            devices_revoked += 1;
        }
        ctx.router.close_device(user, device.device_id, ErrorCode::DeviceRevoked, "account deleted");
    }
    let _ = ctx.push.send(PushRequest::TokensChanged(user));
    crate::to_device::device_list_changed(store, &ctx.router, user, None, now).await;
    tracing::info!(%user, groups_left, devices_revoked, "account deleted");
    Ok(Deleted { groups_left, devices_revoked })
}

/// Waits (up to [`LEAVE_WAIT`]) until the store shows `user` out of each group; returns
/// how many it left, or `Store` (retry) if one is still not left then.
async fn wait_for_leaves(ctx: &NodeContext, user: crate::ids::UserId, mut pending: Vec<crate::ids::ConversationId>) -> Result<usize, StoreError> {
    let total = pending.len();
    let deadline = Instant::now() + LEAVE_WAIT;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for id in pending {
            if ctx.store.conversation(id).await?.is_some_and(|c| c.is_member(user)) {
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !pending.is_empty() {
        tracing::warn!(%user, groups = pending.len(), "account deletion: some groups not left in time");
        return Err(StoreError::Backend(format!("{} groups not left in time", pending.len())));
    }
    Ok(total)
}
