//! Status records (WhatsApp's "Status": posts that live 24 hours): a post is stored once,
//! under its poster, with the ciphertext its device made (the server never reads it), the
//! audience the poster chose and when it expires; each viewer who saw it is recorded once,
//! under the post. What they mean (who may see a post, when it expires, the limits) is
//! decided by [`crate::cores::status`]; the backends are `embedded_status.rs`,
//! `postgres/status.rs` and `scylla/status.rs`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use crate::cores::status::StatusAudience;
use crate::ids::{StatusId, UserId};

/// One status post as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusPost {
    /// Who posted it (the partition: a poster's posts are read together).
    pub poster: UserId,
    /// Its id, chosen by the posting device (so that a retried post is stored once) or by
    /// the server.
    pub post_id: StatusId,
    /// The content, encrypted by the client like a message: opaque bytes.
    pub payload: Bytes,
    /// Who may see it (within the poster's contacts; decided when read).
    pub audience: StatusAudience,
    /// When it was posted, ms since the Unix epoch.
    pub posted_ms: u64,
    /// When it expires, ms since the Unix epoch (`posted_ms` + 24 h): from then on no read
    /// returns it, and the purge (ScyllaDB: the TTL) deletes it with its views.
    pub expires_ms: u64,
}

impl StatusPost {
    /// Whether the post is still live at `now_ms` (it expires at `expires_ms` exactly).
    pub fn live_at(&self, now_ms: u64) -> bool {
        crate::cores::status::is_live(self.expires_ms, now_ms)
    }
}

/// A viewer who saw a post, with when they first did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// Who saw it.
    pub viewer: UserId,
    /// When they first marked it seen, ms since the Unix epoch.
    pub seen_ms: u64,
}

/// What storing a post found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusPut {
    /// Stored now.
    Stored,
    /// The poster already has a post with this id (live or expired and not yet deleted):
    /// nothing was stored; this is the stored one.
    Exists(Box<StatusPost>),
}

/// An audience as the SQL and CQL backends store it: a kind (0 contacts, 1 only these
/// users, 2 every contact but these) and the list.
pub(crate) fn audience_columns(audience: &StatusAudience) -> (i8, &[UserId]) {
    match audience {
        StatusAudience::Contacts => (0, &[]),
        StatusAudience::Allow(users) => (1, users),
        StatusAudience::Deny(users) => (2, users),
    }
}

/// The audience stored as `kind` and `users` ([`audience_columns`]); None for an unknown
/// kind (a corrupt row, or one written by a newer version).
pub(crate) fn audience_from_columns(kind: i8, users: Vec<UserId>) -> Option<StatusAudience> {
    match kind {
        0 => Some(StatusAudience::Contacts),
        1 => Some(StatusAudience::Allow(users)),
        2 => Some(StatusAudience::Deny(users)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_read_back_from_their_columns() {
        let users = vec![UserId::from_u128(1), UserId::from_u128(2)];
        for audience in [StatusAudience::Contacts, StatusAudience::Allow(users.clone()), StatusAudience::Deny(users), StatusAudience::Deny(vec![])] {
            let (kind, list) = audience_columns(&audience);
            assert_eq!(audience_from_columns(kind, list.to_vec()), Some(audience.clone()));
        }
        assert_eq!(audience_from_columns(3, vec![]), None);
    }
}
