//! Privacy settings and blocking, WhatsApp's model, as pure decisions: who may see a
//! user's last seen and online status, who may add the user to groups, whether read
//! receipts flow in a 1:1 conversation, and what a block between two users stops.
//!
//! The shells (the session's presence, typing, receipt and send paths; the group
//! requests; the HTTP handlers) gather a [`Relation`] between the two users from the store
//! (the owner's contacts, both users' block lists) and ask these functions; nothing here
//! reads a store or knows about frames.
//!
//! Rules:
//! - an audience is `everyone`, `contacts` (the numbers the owner submitted to contact
//!   discovery) or `nobody`;
//! - "online" is shown to everyone, or to the same audience as last seen;
//! - read receipts are reciprocal in 1:1 conversations: if either user turned them off,
//!   neither sees the other's (groups always count reads);
//! - a block (either way) hides everything between the two users: presence, last seen,
//!   typing, read receipts, profile photo and about (the name stays: groups show it); it refuses opening and sending in their 1:1 conversation, and
//!   adding either to a group by the other. Group conversations they share are otherwise
//!   unaffected.

use serde::{Deserialize, Serialize};

/// Who may see something of a user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Every user.
    #[default]
    Everyone,
    /// Users whose number the owner has in their contacts.
    Contacts,
    /// No one.
    Nobody,
}

/// Who may see that a user is online now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnlineAudience {
    /// Every user (who is not blocked).
    #[default]
    Everyone,
    /// The audience of last seen.
    SameAsLastSeen,
}

/// A user's privacy settings. Absent fields take their defaults (WhatsApp's: everyone,
/// read receipts on), so settings stored by an older version read as they were meant;
/// unknown fields (stored by a newer version during a rolling upgrade) are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct PrivacySettings {
    /// Who sees the user's last-seen time.
    pub last_seen: Audience,
    /// Who sees that the user is online.
    pub online: OnlineAudience,
    /// Who may add the user to groups (others get `not_allowed` and must send an invite).
    pub groups: Audience,
    /// Who sees the user's profile photo.
    pub profile_photo: Audience,
    /// Who sees the user's "about" line.
    pub about: Audience,
    /// Whether the user sends read receipts in 1:1 conversations (and so sees others').
    pub read_receipts: bool,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        Self {
            last_seen: Audience::Everyone,
            online: OnlineAudience::Everyone,
            groups: Audience::Everyone,
            profile_photo: Audience::Everyone,
            about: Audience::Everyone,
            read_receipts: true,
        }
    }
}

/// How a viewer stands to the owner of the settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relation {
    /// The owner has the viewer's number in their contacts.
    pub contact: bool,
    /// The owner blocked the viewer, or the viewer blocked the owner.
    pub blocked: bool,
}

/// Whether a viewer in `relation` is in `audience`.
pub fn in_audience(audience: Audience, relation: Relation) -> bool {
    !relation.blocked
        && match audience {
            Audience::Everyone => true,
            Audience::Contacts => relation.contact,
            Audience::Nobody => false,
        }
}

/// What a viewer may see of the owner's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceView {
    /// Whether the owner being online is shown.
    pub online: bool,
    /// Whether the owner's last-seen time is shown.
    pub last_seen: bool,
}

/// What a viewer in `relation` may see of the presence of a user with `owner` settings.
pub fn presence(owner: &PrivacySettings, relation: Relation) -> PresenceView {
    let last_seen = in_audience(owner.last_seen, relation);
    let online = match owner.online {
        OnlineAudience::Everyone => !relation.blocked,
        OnlineAudience::SameAsLastSeen => last_seen,
    };
    PresenceView { online, last_seen }
}

/// What a presence answer says: `(online, last_seen_ms)` of the true values, or what a
/// viewer sees when they are hidden (offline, last seen 0 = unknown).
pub fn shown_presence(view: PresenceView, online: bool, last_seen_ms: u64) -> (bool, u64) {
    match (view.online && online, view.last_seen) {
        (true, _) => (true, last_seen_ms),
        (false, true) if !online => (false, last_seen_ms),
        // Online but not shown as such: last seen would give it away (its time is now).
        (false, _) => (false, 0),
    }
}

/// What a viewer may see of a profile besides its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileView {
    /// The photo.
    pub photo: bool,
    /// The "about" line.
    pub about: bool,
}

/// What a viewer in `relation` may see of the profile of a user with `owner` settings
/// (the name is always shown: groups show it to every member).
pub fn profile(owner: &PrivacySettings, relation: Relation) -> ProfileView {
    ProfileView { photo: in_audience(owner.profile_photo, relation), about: in_audience(owner.about, relation) }
}

/// Whether a user in `relation` to the target may add a target with `target` settings
/// to a group.
pub fn may_add_to_group(target: &PrivacySettings, relation: Relation) -> bool {
    in_audience(target.groups, relation)
}

/// Whether read receipts flow between two users of a 1:1 conversation (both ways or not
/// at all), given their settings and whether either blocked the other.
pub fn read_receipts_flow(a: &PrivacySettings, b: &PrivacySettings, blocked: bool) -> bool {
    a.read_receipts && b.read_receipts && !blocked
}

/// Whether typing and presence broadcasts reach a 1:1 peer: not across a block.
pub fn ephemeral_flows(blocked: bool) -> bool {
    !blocked
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn audience() -> impl Strategy<Value = Audience> {
        prop_oneof![Just(Audience::Everyone), Just(Audience::Contacts), Just(Audience::Nobody)]
    }

    fn settings() -> impl Strategy<Value = PrivacySettings> {
        (
            audience(),
            prop_oneof![Just(OnlineAudience::Everyone), Just(OnlineAudience::SameAsLastSeen)],
            audience(),
            audience(),
            audience(),
            any::<bool>(),
        )
            .prop_map(|(last_seen, online, groups, profile_photo, about, read_receipts)| PrivacySettings {
                last_seen,
                online,
                groups,
                profile_photo,
                about,
                read_receipts,
            })
    }

    #[test]
    fn audiences_as_whatsapp_defines_them() {
        let stranger = Relation::default();
        let contact = Relation { contact: true, blocked: false };
        let contacts_only = PrivacySettings { last_seen: Audience::Contacts, online: OnlineAudience::SameAsLastSeen, ..Default::default() };
        assert_eq!(presence(&contacts_only, stranger), PresenceView { online: false, last_seen: false });
        assert_eq!(presence(&contacts_only, contact), PresenceView { online: true, last_seen: true });
        // Last seen hidden, online shown to everyone (WhatsApp's separate setting).
        let nobody = PrivacySettings { last_seen: Audience::Nobody, ..Default::default() };
        assert_eq!(presence(&nobody, contact), PresenceView { online: true, last_seen: false });
        assert_eq!(presence(&PrivacySettings::default(), stranger), PresenceView { online: true, last_seen: true });
    }

    #[test]
    fn a_hidden_presence_gives_nothing_away() {
        let hidden = PresenceView { online: false, last_seen: false };
        assert_eq!(shown_presence(hidden, true, 5), (false, 0));
        assert_eq!(shown_presence(hidden, false, 5), (false, 0));
        // Last seen shown but online not: while online, no time (it would be "now").
        let seen_only = PresenceView { online: false, last_seen: true };
        assert_eq!(shown_presence(seen_only, true, 5), (false, 0));
        assert_eq!(shown_presence(seen_only, false, 5), (false, 5));
        let all = PresenceView { online: true, last_seen: true };
        assert_eq!(shown_presence(all, true, 5), (true, 5));
    }

    #[test]
    fn settings_read_with_defaults_for_what_is_absent() {
        let s: PrivacySettings = serde_json::from_str(r#"{"last_seen": "contacts"}"#).expect("json");
        assert_eq!(s, PrivacySettings { last_seen: Audience::Contacts, ..Default::default() });
        assert!(serde_json::from_str::<PrivacySettings>(r#"{"last_seen": "friends"}"#).is_err());
        let newer: PrivacySettings = serde_json::from_str(r#"{"read_receipts": false, "from_a_newer_version": 1}"#).expect("json");
        assert_eq!(newer, PrivacySettings { read_receipts: false, ..Default::default() });
    }

    proptest! {
        /// A block hides everything, whatever the settings and contacts.
        #[test]
        fn a_block_hides_everything(owner in settings(), other in settings(), contact in any::<bool>(), online in any::<bool>(), seen in any::<u64>()) {
            let relation = Relation { contact, blocked: true };
            prop_assert_eq!(shown_presence(presence(&owner, relation), online, seen), (false, 0));
            prop_assert!(!may_add_to_group(&owner, relation));
            prop_assert_eq!(profile(&owner, relation), ProfileView { photo: false, about: false });
            prop_assert!(!read_receipts_flow(&owner, &other, true));
            prop_assert!(!ephemeral_flows(true));
        }

        /// Read receipts are reciprocal: they flow one way exactly when they flow the other.
        #[test]
        fn read_receipts_are_reciprocal(a in settings(), b in settings(), blocked in any::<bool>()) {
            prop_assert_eq!(read_receipts_flow(&a, &b, blocked), read_receipts_flow(&b, &a, blocked));
            prop_assert_eq!(read_receipts_flow(&a, &b, blocked), a.read_receipts && b.read_receipts && !blocked);
        }

        /// Being a contact never shows less than being a stranger; `nobody` shows nothing.
        #[test]
        fn contacts_see_at_least_what_strangers_see(owner in settings()) {
            let stranger = presence(&owner, Relation::default());
            let contact = presence(&owner, Relation { contact: true, blocked: false });
            prop_assert!(contact.online >= stranger.online && contact.last_seen >= stranger.last_seen);
            if owner.last_seen == Audience::Nobody {
                prop_assert!(!contact.last_seen);
            }
        }
    }
}
