//! Presence: telling the user's 1:1 peers that the user came online, within the user's
//! privacy settings (`cores::privacy`: who sees online, blocks); and a change of the
//! user's privacy, or of someone's towards the user, reaching the session.
//! (The offline side is `actors::session_end`, on every way a session can end.)

use super::{SessionState, Stop, push};
use crate::actors::messages::SessionRequest;
use crate::ids::UserId;
use crate::protocol::{self, id_bytes, pb, server_frame};
use crate::store::{ConversationKind, now_ms};

/// The user's 1:1 peers, as this session knows them.
fn direct_peers(state: &SessionState) -> Vec<UserId> {
    let mut peers: Vec<UserId> = state
        .core
        .views()
        .filter(|v| v.record.kind == ConversationKind::Direct)
        .flat_map(|v| v.record.members.iter().copied())
        .filter(|m| *m != state.user)
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

/// Tells the online devices of every 1:1 peer allowed to see it that this user came
/// online. Peers whose view cannot be decided (the store failed) are told nothing.
pub async fn broadcast_online(state: &SessionState) {
    announce(state, &direct_peers(state), false).await;
}

/// Tells `peers` (1:1 peers of this user, who is online) what they may now see: online,
/// or — with `hide_from_others` — offline without a time for those who may not (after a
/// change of settings or blocks, so that no one keeps seeing a stale "online").
async fn announce(state: &SessionState, peers: &[UserId], hide_from_others: bool) {
    if peers.is_empty() {
        return;
    }
    let views = match crate::privacy::presence_views(state.ctx.store.as_ref(), state.user, peers).await {
        Ok(views) => views,
        Err(e) => {
            tracing::warn!(user = %state.user, error = %e, "privacy unreadable; presence not told");
            return;
        }
    };
    let (allowed, hidden): (Vec<_>, Vec<_>) = views.into_iter().partition(|(_, v)| v.online);
    let frame = |online: bool| {
        protocol::encode_server(&protocol::server(server_frame::Kind::Presence(pb::Presence {
            user_id: id_bytes(state.user),
            online,
            last_seen_ms: if online { now_ms() } else { 0 },
            request_id: 0,
        })))
    };
    let (on, off) = (frame(true), frame(false));
    let allowed: Vec<UserId> = allowed.into_iter().map(|(p, _)| p).collect();
    state.ctx.router.deliver_to_users(&allowed, None, || SessionRequest::Push(on.clone()));
    if hide_from_others {
        let hidden: Vec<UserId> = hidden.into_iter().map(|(p, _)| p).collect();
        state.ctx.router.deliver_to_users(&hidden, None, || SessionRequest::Push(off.clone()));
    }
}

/// The privacy of `changed` changed: this session's user's own settings or blocks (from
/// another device or HTTP: reload, tell the device, tell the 1:1 peers what they may see
/// of this user now and that they should read this user's settings again), or another
/// user's settings or blocks towards this user (reload, and tell that user what they may
/// see of this one now).
pub async fn privacy_changed(state: &mut SessionState, changed: UserId) -> Result<(), Stop> {
    match crate::privacy::PrivacyCache::load(state.ctx.store.as_ref(), state.user).await {
        Ok(cache) => state.privacy = cache,
        Err(e) => {
            // Failing closed: a session that cannot know its rules ends (the device
            // reconnects and loads them again).
            tracing::warn!(user = %state.user, error = %e, "privacy settings unreadable after a change; closing");
            state.outbox.close(protocol::encode_server(&protocol::closing_frame(crate::protocol::ErrorCode::Unavailable, "store unavailable", 1000)));
            return Err(Stop::Gone);
        }
    }
    let peers = direct_peers(state);
    if changed == state.user {
        let frame = protocol::server(server_frame::Kind::PrivacyChanged(pb::PrivacyChanged {}));
        push(state, protocol::encode_server(&frame)).await?;
        announce(state, &peers, true).await;
        // Their sessions reload their rules, dropping the settings they cached of this
        // user (read receipts).
        state.ctx.router.deliver_to_users(&peers, None, || SessionRequest::PrivacyChanged(state.user));
    } else if peers.contains(&changed) {
        announce(state, &[changed], true).await;
    }
    Ok(())
}
