//! Presence: telling the user's 1:1 peers that the user came online or went offline.

use super::SessionState;
use crate::actors::messages::SessionRequest;
use crate::ids::UserId;
use crate::protocol::{self, id_bytes, pb, server_frame};
use crate::store::{ConversationKind, now_ms};

/// Tells the online devices of every 1:1 peer that this user came online (`online`) or
/// went offline at `last_seen_ms`.
pub fn broadcast(state: &SessionState, online: bool, last_seen_ms: u64) {
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Presence(pb::Presence {
        user_id: id_bytes(state.user),
        online,
        last_seen_ms: if online { now_ms() } else { last_seen_ms },
        request_id: 0,
    })));
    let mut peers: Vec<UserId> = state
        .core
        .views()
        .filter(|v| v.record.kind == ConversationKind::Direct)
        .flat_map(|v| v.record.members.iter().copied())
        .filter(|m| *m != state.user)
        .collect();
    peers.sort();
    peers.dedup();
    for peer in peers {
        state.ctx.router.deliver_to_user(peer, None, || SessionRequest::Push(frame.clone()));
    }
}
