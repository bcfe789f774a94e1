//! The shell of privacy settings and blocking: gathers what [`crate::cores::privacy`]
//! decides from (a user's settings, both users' block lists, the owner's contacts) out of
//! the store, for the session's paths, the end-of-session presence, the group requests and
//! the HTTP handlers, and tells sessions when settings or blocks change.

use std::collections::{HashMap, HashSet};

use crate::actors::messages::SessionRequest;
use crate::actors::router::Router;
use crate::cores::privacy::{self, Audience, PresenceView, PrivacySettings, Relation};
use crate::ids::UserId;
use crate::store::{Store, StoreError};

/// What a session keeps of its own user's privacy: the settings and both directions of
/// blocks, loaded when it starts and again when told they changed
/// ([`SessionRequest::PrivacyChanged`]).
#[derive(Debug, Clone, Default)]
pub struct PrivacyCache {
    /// The user's settings.
    pub mine: PrivacySettings,
    /// Users this user blocked.
    pub blocked: HashSet<UserId>,
    /// Users who blocked this user.
    pub blocked_by: HashSet<UserId>,
}

impl PrivacyCache {
    /// Reads `user`'s settings and blocks.
    pub async fn load(store: &dyn Store, user: UserId) -> Result<Self, StoreError> {
        Ok(Self {
            mine: store.privacy(user).await?,
            blocked: store.blocks_of(user).await?.into_iter().collect(),
            blocked_by: store.blockers_of(user).await?.into_iter().collect(),
        })
    }

    /// Whether a block stands between this user and `other`, either way.
    pub fn blocked_with(&self, other: UserId) -> bool {
        self.blocked.contains(&other) || self.blocked_by.contains(&other)
    }
}

/// Whether a block stands between `a` and `b`, either way (two point reads).
pub async fn blocked_between(store: &dyn Store, a: UserId, b: UserId) -> Result<bool, StoreError> {
    Ok(store.is_blocked(a, b).await? || store.is_blocked(b, a).await?)
}

/// Whether `owner` has `viewer`'s number in their contacts.
pub async fn is_contact(store: &dyn Store, owner: UserId, viewer: UserId) -> Result<bool, StoreError> {
    match store.user(viewer).await? {
        Some(v) => Ok(!store.known_contacts(owner, vec![v.phone]).await?.is_empty()),
        None => Ok(false),
    }
}

/// How `viewer` stands to `owner` (contact only looked up when `need_contact`).
pub async fn relation(store: &dyn Store, owner: UserId, viewer: UserId, need_contact: bool) -> Result<Relation, StoreError> {
    let blocked = blocked_between(store, owner, viewer).await?;
    let contact = need_contact && !blocked && is_contact(store, owner, viewer).await?;
    Ok(Relation { contact, blocked })
}

/// Whether deciding presence under `settings` needs to know who is a contact (online is
/// shown to everyone or to last seen's audience, so only last seen's audience matters).
fn presence_needs_contacts(settings: &PrivacySettings) -> bool {
    settings.last_seen == Audience::Contacts
}

/// What each of `viewers` may see of `owner`'s presence. Reads the owner's settings and
/// blocks once, and the viewers' numbers only when a "contacts" audience needs them.
pub async fn presence_views(store: &dyn Store, owner: UserId, viewers: &[UserId]) -> Result<Vec<(UserId, PresenceView)>, StoreError> {
    let settings = store.privacy(owner).await?;
    let blocks: HashSet<UserId> = store.blocks_of(owner).await?.into_iter().chain(store.blockers_of(owner).await?).collect();
    let contacts: HashSet<UserId> = if presence_needs_contacts(&settings) {
        let mut phones: HashMap<String, UserId> = HashMap::new();
        for v in viewers {
            if let Some(u) = store.user(*v).await? {
                phones.insert(u.phone, *v);
            }
        }
        store.known_contacts(owner, phones.keys().cloned().collect()).await?.into_iter().filter_map(|p| phones.get(&p).copied()).collect()
    } else {
        HashSet::new()
    };
    Ok(viewers.iter().map(|v| (*v, privacy::presence(&settings, Relation { contact: contacts.contains(v), blocked: blocks.contains(v) }))).collect())
}

/// Whether read receipts flow between `me` (settings `mine`) and `peer` in their 1:1
/// conversation: reads the peer's settings.
pub async fn read_receipts_flow(store: &dyn Store, mine: &PrivacySettings, peer: UserId, blocked: bool) -> Result<bool, StoreError> {
    if !mine.read_receipts || blocked {
        return Ok(false);
    }
    Ok(privacy::read_receipts_flow(mine, &store.privacy(peer).await?, blocked))
}

/// Tells every session of `users` (on every node) that the privacy of `changed` changed.
pub fn notify(router: &Router, users: &[UserId], changed: UserId) {
    router.deliver_to_users(users, None, || SessionRequest::PrivacyChanged(changed));
}
