//! The shell of privacy settings and blocking: gathers what [`crate::cores::privacy`]
//! decides from (a user's settings, both users' block lists, the owner's contacts) out of
//! the store, for the session's paths, the end-of-session presence, the group requests and
//! the HTTP handlers, and tells sessions when settings or blocks change.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::actors::messages::SessionRequest;
use crate::actors::router::Router;
use crate::cores::privacy::{self, Audience, PresenceView, PrivacySettings, Relation};
use crate::ids::{ConversationId, UserId};
use crate::store::{Store, StoreError, direct_conversation_id};

/// How long a session trusts a peer's settings it read (a peer's change also reaches the
/// sessions of its 1:1 peers that are connected, which drop it at once).
const PEER_SETTINGS_TTL: Duration = Duration::from_secs(30);

/// What a session keeps of its own user's privacy: the settings, both directions of
/// blocks (and the 1:1 conversations they close), the user's number (for others'
/// "contacts" audiences), and peers' settings read lately; loaded when it starts and
/// again when told they changed ([`SessionRequest::PrivacyChanged`]).
#[derive(Debug, Clone, Default)]
pub struct PrivacyCache {
    /// The user's settings.
    pub mine: PrivacySettings,
    /// The user's phone number (E.164).
    pub phone: String,
    /// Users this user blocked.
    pub blocked: HashSet<UserId>,
    /// Users who blocked this user.
    pub blocked_by: HashSet<UserId>,
    /// The 1:1 conversations with users across a block, either way.
    pub closed: HashSet<ConversationId>,
    /// Peers' settings, with when they were read.
    peers: HashMap<UserId, (PrivacySettings, Instant)>,
}

impl PrivacyCache {
    /// Reads `user`'s settings, number and blocks.
    pub async fn load(store: &dyn Store, user: UserId) -> Result<Self, StoreError> {
        let blocked: HashSet<UserId> = store.blocks_of(user).await?.into_iter().collect();
        let blocked_by: HashSet<UserId> = store.blockers_of(user).await?.into_iter().collect();
        let closed = blocked.iter().chain(&blocked_by).map(|p| direct_conversation_id(user, *p)).collect();
        Ok(Self {
            mine: store.privacy(user).await?,
            phone: store.user(user).await?.map(|u| u.phone).unwrap_or_default(),
            blocked,
            blocked_by,
            closed,
            peers: HashMap::new(),
        })
    }

    /// Whether a block stands between this user and `other`, either way.
    pub fn blocked_with(&self, other: UserId) -> bool {
        self.blocked.contains(&other) || self.blocked_by.contains(&other)
    }

    /// Whether `conversation` is a 1:1 across a block (no opening, sending, typing or
    /// changing it).
    pub fn closes(&self, conversation: ConversationId) -> bool {
        self.closed.contains(&conversation)
    }

    /// `peer`'s settings: cached for [`PEER_SETTINGS_TTL`], else read.
    pub async fn peer_settings(&mut self, store: &dyn Store, peer: UserId) -> Result<PrivacySettings, StoreError> {
        if let Some((settings, at)) = self.peers.get(&peer)
            && at.elapsed() < PEER_SETTINGS_TTL
        {
            return Ok(*settings);
        }
        let settings = store.privacy(peer).await?;
        if self.peers.len() >= 1_024 {
            self.peers.clear();
        }
        self.peers.insert(peer, (settings, Instant::now()));
        Ok(settings)
    }

    /// What a viewer with this cache (this user) may see of `owner`'s presence: one
    /// settings read, and a contacts lookup only for a "contacts" audience.
    pub async fn presence_of(&self, store: &dyn Store, me: UserId, owner: UserId) -> Result<PresenceView, StoreError> {
        if owner == me {
            return Ok(PresenceView { online: true, last_seen: true });
        }
        let blocked = self.blocked_with(owner);
        let settings = store.privacy(owner).await?;
        let contact =
            !blocked && settings.last_seen == Audience::Contacts && !store.known_contacts(owner, vec![self.phone.clone()]).await?.is_empty();
        Ok(privacy::presence(&settings, Relation { contact, blocked }))
    }
}

/// Whether deciding presence under `settings` needs to know who is a contact (online is
/// shown to everyone or to last seen's audience, so only last seen's audience matters).
fn presence_needs_contacts(settings: &PrivacySettings) -> bool {
    settings.last_seen == Audience::Contacts
}

/// Which of `users` are `owner`'s contacts (their numbers are in the owner's contact
/// list): one user read each, one contacts lookup.
pub async fn contacts_among(store: &dyn Store, owner: UserId, users: &[UserId]) -> Result<HashSet<UserId>, StoreError> {
    let mut phones: HashMap<String, UserId> = HashMap::new();
    for u in users {
        if let Some(record) = store.user(*u).await? {
            phones.insert(record.phone, *u);
        }
    }
    Ok(store.known_contacts(owner, phones.keys().cloned().collect()).await?.into_iter().filter_map(|p| phones.get(&p).copied()).collect())
}

/// What each of `viewers` may see of `owner`'s presence. Reads the owner's settings and
/// blocks once, and the viewers' numbers only when a "contacts" audience needs them.
pub async fn presence_views(store: &dyn Store, owner: UserId, viewers: &[UserId]) -> Result<Vec<(UserId, PresenceView)>, StoreError> {
    let settings = store.privacy(owner).await?;
    let blocks: HashSet<UserId> = store.blocks_of(owner).await?.into_iter().chain(store.blockers_of(owner).await?).collect();
    let contacts = if presence_needs_contacts(&settings) { contacts_among(store, owner, viewers).await? } else { HashSet::new() };
    Ok(viewers.iter().map(|v| (*v, privacy::presence(&settings, Relation { contact: contacts.contains(v), blocked: blocks.contains(v) }))).collect())
}

/// Whether read receipts flow between this session's user and `peer` in their 1:1
/// conversation (the peer's settings from the cache).
pub async fn read_receipts_flow(cache: &mut PrivacyCache, store: &dyn Store, peer: UserId) -> Result<bool, StoreError> {
    let blocked = cache.blocked_with(peer);
    if !cache.mine.read_receipts || blocked {
        return Ok(false);
    }
    let theirs = cache.peer_settings(store, peer).await?;
    Ok(privacy::read_receipts_flow(&cache.mine, &theirs, blocked))
}

/// Tells every session of `users` (on every node) that the privacy of `changed` changed.
pub fn notify(router: &Router, users: &[UserId], changed: UserId) {
    router.deliver_to_users(users, None, || SessionRequest::PrivacyChanged(changed));
}
