//! Status (WhatsApp's "Status": posts that live 24 hours) as pure decisions: what a post
//! may hold, when it expires, who may see it, whose views are recorded and shown, and how
//! a viewer's feed is ordered and paged. Nothing here reads a store or a clock: the shell
//! (`crate::status`) gathers the relation between poster and viewer (both contact lists,
//! both block lists) and the time, and asks these functions.
//!
//! Rules (WhatsApp's):
//! - a post lives [`LIFETIME_MS`] (24 hours) from when it was posted: it is live while
//!   `now < posted + 24 h` and, from then on, served by no read, whether or not a purge
//!   (or a ScyllaDB TTL) has deleted it yet;
//! - an audience is `contacts` (every contact), `deny` ("my contacts except…") or `allow`
//!   ("only share with…"), chosen with each post; it is always within the poster's
//!   contacts (WhatsApp's pickers list only contacts), so an allowed user who is not a
//!   contact sees nothing until they are;
//! - contacts are mutual for status: the viewer must be in the poster's contacts (the
//!   numbers the poster's devices submitted to contact discovery) and have the poster's
//!   number in their own ("you and your contact must both have each other's numbers
//!   saved"); that is also what lets a feed walk the viewer's own contact list;
//! - a block, either way, hides every post;
//! - the poster always sees their own posts, and only the poster sees who viewed them;
//! - a view is recorded only if the viewer sends read receipts, and the poster sees the
//!   viewers only if the poster sends them (WhatsApp ties both to read receipts);
//! - who may see a post is decided when it is read, not when it was posted: a contact
//!   removed or blocked afterwards stops seeing it at once.

use std::cmp::Reverse;

use crate::ids::{StatusId, UserId};
use crate::store::status::{StatusPost, StatusView};

/// How long a post lives, ms (24 hours).
pub const LIFETIME_MS: u64 = 86_400_000;

/// The largest payload, bytes: a text status's ciphertext, or a media status's descriptor
/// (media id, key, digest and a small thumbnail), encrypted. Its hex form and a full
/// audience list fit the API's 64 KiB body.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// The most users an `allow` or `deny` list may name.
pub const MAX_AUDIENCE_USERS: usize = 512;

/// Posts a user may make per day: a burst of this many, then this many spread over each
/// day (a rate bucket shared by every node). With the 24-hour lifetime, at most twice
/// this many are live at once, which bounds every read of a poster's posts.
pub const POSTS_PER_DAY: u32 = 30;

/// The most viewers listed per post (the most recent first); the count is always exact.
pub const MAX_VIEWERS_LISTED: usize = 1_000;

/// Posts per feed page when none is asked for.
pub const FEED_PAGE_DEFAULT: usize = 50;

/// The most posts per feed page.
pub const FEED_PAGE_MAX: usize = 100;

/// Who may see a post, within the poster's contacts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StatusAudience {
    /// Every contact.
    #[default]
    Contacts,
    /// Only these users (who must also be contacts), sorted, without repeats.
    Allow(Vec<UserId>),
    /// Every contact but these, sorted, without repeats.
    Deny(Vec<UserId>),
}

/// Why a post is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No content.
    #[error("the payload is empty")]
    EmptyPayload,
    /// Content over [`MAX_PAYLOAD_BYTES`].
    #[error("a payload of {bytes} bytes is over the limit of {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge {
        /// Its size.
        bytes: usize,
    },
    /// An `allow` or `deny` list over [`MAX_AUDIENCE_USERS`].
    #[error("an audience list of {users} users is over the limit of {MAX_AUDIENCE_USERS}")]
    TooManyUsers {
        /// Distinct users named.
        users: usize,
    },
    /// An `allow` list that names nobody but the poster.
    #[error("an allow list must name at least one user other than the poster")]
    NobodyAllowed,
}

/// How a viewer stands to a poster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relation {
    /// The viewer's number is in the poster's contacts.
    pub in_posters_contacts: bool,
    /// The poster's number is in the viewer's contacts.
    pub has_posters_number: bool,
    /// The poster blocked the viewer, or the viewer blocked the poster.
    pub blocked: bool,
}

/// Checks a post before it is stored: the payload's size and the audience, which comes
/// back normalised (lists sorted, repeats and the poster dropped).
pub fn check_post(poster: UserId, payload_bytes: usize, audience: StatusAudience) -> Result<StatusAudience, Refusal> {
    if payload_bytes == 0 {
        return Err(Refusal::EmptyPayload);
    }
    if payload_bytes > MAX_PAYLOAD_BYTES {
        return Err(Refusal::PayloadTooLarge { bytes: payload_bytes });
    }
    let normalise = |mut users: Vec<UserId>| {
        users.sort();
        users.dedup();
        users.retain(|u| *u != poster);
        if users.len() > MAX_AUDIENCE_USERS { Err(Refusal::TooManyUsers { users: users.len() }) } else { Ok(users) }
    };
    match audience {
        StatusAudience::Contacts => Ok(StatusAudience::Contacts),
        StatusAudience::Allow(users) => {
            let users = normalise(users)?;
            if users.is_empty() { Err(Refusal::NobodyAllowed) } else { Ok(StatusAudience::Allow(users)) }
        }
        StatusAudience::Deny(users) => normalise(users).map(StatusAudience::Deny),
    }
}

/// When a post made at `posted_ms` expires (ms since the Unix epoch).
pub fn expires_at(posted_ms: u64) -> u64 {
    posted_ms.saturating_add(LIFETIME_MS)
}

/// Whether a post expiring at `expires_ms` is still live at `now_ms`: it is up to the
/// last millisecond before `expires_ms`, and from `expires_ms` on it is gone.
pub fn is_live(expires_ms: u64, now_ms: u64) -> bool {
    now_ms < expires_ms
}

/// Whether `viewer` may see a post of `poster` with `audience`, standing to the poster
/// as `relation` says (see the module's rules).
pub fn may_see(poster: UserId, viewer: UserId, audience: &StatusAudience, relation: Relation) -> bool {
    if viewer == poster {
        return true;
    }
    if relation.blocked || !relation.in_posters_contacts || !relation.has_posters_number {
        return false;
    }
    match audience {
        StatusAudience::Contacts => true,
        StatusAudience::Allow(users) => users.contains(&viewer),
        StatusAudience::Deny(users) => !users.contains(&viewer),
    }
}

/// Whether a view by a viewer who sends read receipts or not (`read_receipts`) is
/// recorded for the poster to see.
pub fn records_view(viewer_read_receipts: bool) -> bool {
    viewer_read_receipts
}

/// Whether a poster who sends read receipts or not sees who viewed their posts.
pub fn shows_viewers(poster_read_receipts: bool) -> bool {
    poster_read_receipts
}

/// The viewers of a post as its poster sees them: how many there are, and at most
/// [`MAX_VIEWERS_LISTED`] of them, the most recent first.
pub fn viewers_listed(mut views: Vec<StatusView>) -> (usize, Vec<StatusView>) {
    let count = views.len();
    views.sort_by_key(|v| (Reverse(v.seen_ms), v.viewer));
    views.truncate(MAX_VIEWERS_LISTED);
    (count, views)
}

/// A position in a feed: the post a page ended with. Feeds are ordered newest first,
/// ties broken by poster and post id, so every post has one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedCursor {
    /// The post's time.
    pub posted_ms: u64,
    /// Its poster.
    pub poster: UserId,
    /// Its id.
    pub post_id: StatusId,
}

impl FeedCursor {
    /// The position of `post`.
    pub fn of(post: &StatusPost) -> Self {
        Self { posted_ms: post.posted_ms, poster: post.poster, post_id: post.post_id }
    }

    /// The sort key: ascending keys are the feed's order.
    fn key(&self) -> (Reverse<u64>, UserId, StatusId) {
        (Reverse(self.posted_ms), self.poster, self.post_id)
    }

    /// Reads the text form `<posted_ms>.<poster>.<post_id>` (1 to 19 digits, then each id
    /// as 32 lowercase hex digits), as [`std::fmt::Display`] writes it; None otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let (ms, poster, post) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !(1..=19).contains(&ms.len()) || !ms.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let id = |hex: &str| {
            let lower_hex = hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            lower_hex.then(|| u128::from_str_radix(hex, 16).ok()).flatten()
        };
        Some(Self { posted_ms: ms.parse().ok()?, poster: UserId::from_u128(id(poster)?), post_id: StatusId::from_u128(id(post)?) })
    }
}

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:032x}.{:032x}", self.posted_ms, self.poster.as_u128(), self.post_id.as_u128())
    }
}

/// The page size for a request that asked for `asked` posts (0: the default; capped).
pub fn page_size(asked: usize) -> usize {
    if asked == 0 { FEED_PAGE_DEFAULT } else { asked.min(FEED_PAGE_MAX) }
}

/// One page of a feed made of `posts` (any order): the first `page_size(limit)` posts
/// after `after` in feed order, and the cursor to ask for the next page with (None when
/// this page is the last).
pub fn feed_page(mut posts: Vec<StatusPost>, after: Option<FeedCursor>, limit: usize) -> (Vec<StatusPost>, Option<FeedCursor>) {
    posts.sort_by_key(|p| FeedCursor::of(p).key());
    if let Some(after) = after {
        posts.retain(|p| FeedCursor::of(p).key() > after.key());
    }
    let size = page_size(limit);
    let more = posts.len() > size;
    posts.truncate(size);
    let next = if more { posts.last().map(FeedCursor::of) } else { None };
    (posts, next)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn user(n: u128) -> UserId {
        UserId::from_u128(n)
    }

    fn post(poster: u128, id: u128, posted_ms: u64) -> StatusPost {
        StatusPost {
            poster: user(poster),
            post_id: StatusId::from_u128(id),
            payload: Bytes::from_static(b"ciphertext"),
            audience: StatusAudience::Contacts,
            posted_ms,
            expires_ms: expires_at(posted_ms),
        }
    }

    const MUTUAL: Relation = Relation { in_posters_contacts: true, has_posters_number: true, blocked: false };

    #[test]
    fn a_post_lives_exactly_24_hours() {
        let t = 1_700_000_000_000;
        let expires = expires_at(t);
        assert_eq!(expires, t + 86_400_000);
        assert!(is_live(expires, t));
        assert!(is_live(expires, expires - 1), "live at t + 24 h - 1 ms");
        assert!(!is_live(expires, expires), "gone at t + 24 h");
        assert!(!is_live(expires, u64::MAX));
        assert_eq!(expires_at(u64::MAX), u64::MAX, "no overflow");
    }

    #[test]
    fn posts_are_checked_and_audiences_normalised() {
        let me = user(1);
        assert_eq!(check_post(me, 0, StatusAudience::Contacts), Err(Refusal::EmptyPayload));
        assert_eq!(check_post(me, MAX_PAYLOAD_BYTES, StatusAudience::Contacts), Ok(StatusAudience::Contacts));
        assert_eq!(check_post(me, MAX_PAYLOAD_BYTES + 1, StatusAudience::Contacts), Err(Refusal::PayloadTooLarge { bytes: MAX_PAYLOAD_BYTES + 1 }));
        // Sorted, repeats and the poster dropped.
        assert_eq!(check_post(me, 1, StatusAudience::Allow(vec![user(3), me, user(2), user(3)])), Ok(StatusAudience::Allow(vec![user(2), user(3)])));
        assert_eq!(check_post(me, 1, StatusAudience::Allow(vec![me])), Err(Refusal::NobodyAllowed));
        assert_eq!(check_post(me, 1, StatusAudience::Allow(vec![])), Err(Refusal::NobodyAllowed));
        assert_eq!(check_post(me, 1, StatusAudience::Deny(vec![])), Ok(StatusAudience::Deny(vec![])), "nobody denied: every contact");
        let many: Vec<UserId> = (10..10 + MAX_AUDIENCE_USERS as u128).map(user).collect();
        assert!(check_post(me, 1, StatusAudience::Deny(many.clone())).is_ok(), "exactly the limit");
        let mut over = many.clone();
        over.push(user(5));
        assert_eq!(check_post(me, 1, StatusAudience::Deny(over)), Err(Refusal::TooManyUsers { users: MAX_AUDIENCE_USERS + 1 }));
        // Repeats do not count against the limit.
        let mut repeated = many;
        repeated.extend(repeated.clone());
        assert!(check_post(me, 1, StatusAudience::Allow(repeated)).is_ok());
    }

    #[test]
    fn audiences_as_whatsapp_defines_them() {
        let (poster, a, b) = (user(1), user(2), user(3));
        assert!(may_see(poster, a, &StatusAudience::Contacts, MUTUAL));
        assert!(
            !may_see(poster, a, &StatusAudience::Contacts, Relation { has_posters_number: false, ..MUTUAL }),
            "one-way: the viewer lacks the number"
        );
        assert!(!may_see(poster, a, &StatusAudience::Contacts, Relation { in_posters_contacts: false, ..MUTUAL }), "not the poster's contact");
        assert!(may_see(poster, a, &StatusAudience::Allow(vec![a]), MUTUAL));
        assert!(!may_see(poster, b, &StatusAudience::Allow(vec![a]), MUTUAL), "not on the allow list");
        assert!(!may_see(poster, a, &StatusAudience::Allow(vec![a]), Relation { in_posters_contacts: false, ..MUTUAL }), "allowed, not a contact");
        assert!(!may_see(poster, a, &StatusAudience::Deny(vec![a]), MUTUAL), "denied");
        assert!(may_see(poster, b, &StatusAudience::Deny(vec![a]), MUTUAL));
        assert!(may_see(poster, poster, &StatusAudience::Allow(vec![a]), Relation::default()), "the poster sees their own");
        assert!(records_view(true) && !records_view(false));
        assert!(shows_viewers(true) && !shows_viewers(false));
    }

    #[test]
    fn viewers_are_listed_most_recent_first_and_counted_exactly() {
        let views: Vec<StatusView> = (0..MAX_VIEWERS_LISTED as u128 + 5).map(|n| StatusView { viewer: user(n), seen_ms: n as u64 % 7 }).collect();
        let (count, listed) = viewers_listed(views);
        assert_eq!(count, MAX_VIEWERS_LISTED + 5);
        assert_eq!(listed.len(), MAX_VIEWERS_LISTED);
        assert!(listed.windows(2).all(|w| (Reverse(w[0].seen_ms), w[0].viewer) < (Reverse(w[1].seen_ms), w[1].viewer)));
        assert_eq!(listed[0].seen_ms, 6);
    }

    #[test]
    fn cursors_read_back_what_they_write_and_nothing_else() {
        let c = FeedCursor::of(&post(0xabc, u128::MAX, 1_700_000_000_123));
        assert_eq!(FeedCursor::parse(&c.to_string()), Some(c));
        let (poster, id) = ("0".repeat(29) + "abc", "f".repeat(32));
        assert_eq!(c.to_string(), format!("1700000000123.{poster}.{id}"));
        for bad in [
            "",
            "1.2.3",
            &format!("1.{poster}"),
            &format!("1.{poster}.{id}.4"),
            &format!("x.{poster}.{id}"),
            &format!("12345678901234567890.{poster}.{id}"),
            &format!("1.{}.{id}", "F".repeat(32)),
            &format!("1.{}.{id}", "+".to_owned() + &"0".repeat(31)),
            &format!("1.{}.{id}", "0".repeat(31)),
        ] {
            assert_eq!(FeedCursor::parse(bad), None, "{bad:?}");
        }
        assert_eq!(FeedCursor::parse(&format!("{}.{poster}.{id}", "9".repeat(19))).map(|c| c.posted_ms), Some(9_999_999_999_999_999_999));
    }

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0), FEED_PAGE_DEFAULT);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(usize::MAX), FEED_PAGE_MAX);
    }

    proptest! {
        /// Paging through a feed gives every post exactly once, newest first, whatever
        /// the page size and however many posts share a time.
        #[test]
        fn pages_give_every_post_once_newest_first(
            raw in proptest::collection::vec((0u128..4, 0u128..1_000, 0u64..5), 0..120),
            limit in 0usize..10,
        ) {
            let mut posts: Vec<StatusPost> = raw.iter().map(|(poster, id, t)| post(*poster, *id, *t)).collect();
            posts.sort_by_key(|p| (p.poster, p.post_id));
            posts.dedup_by_key(|p| (p.poster, p.post_id));
            let (mut seen, mut after) = (Vec::new(), None);
            loop {
                let (page, next) = feed_page(posts.clone(), after, limit);
                prop_assert!(page.len() <= page_size(limit));
                seen.extend(page);
                match next {
                    Some(n) => after = Some(FeedCursor::parse(&n.to_string()).expect("a cursor reads back")),
                    None => break,
                }
            }
            prop_assert_eq!(seen.len(), posts.len());
            prop_assert!(seen.windows(2).all(|w| FeedCursor::of(&w[0]).key() < FeedCursor::of(&w[1]).key()));
        }

        /// A block or a missing number hides every post but the poster's own; the poster
        /// always sees theirs; the audiences nest: allowed ⊆ contacts, denied ∩ seen = ∅.
        #[test]
        fn who_sees_what(
            poster in 0u128..6, viewer in 0u128..6,
            list in proptest::collection::vec(0u128..6, 0..6),
            in_posters_contacts in any::<bool>(), has_posters_number in any::<bool>(), blocked in any::<bool>(),
        ) {
            let (poster, viewer) = (user(poster), user(viewer));
            let list: Vec<UserId> = list.into_iter().map(user).collect();
            let relation = Relation { in_posters_contacts, has_posters_number, blocked };
            let contacts = may_see(poster, viewer, &StatusAudience::Contacts, relation);
            let allow = may_see(poster, viewer, &StatusAudience::Allow(list.clone()), relation);
            let deny = may_see(poster, viewer, &StatusAudience::Deny(list.clone()), relation);
            if viewer == poster {
                prop_assert!(contacts && allow && deny);
            } else {
                if blocked || !in_posters_contacts || !has_posters_number {
                    prop_assert!(!contacts && !allow && !deny);
                }
                prop_assert!(!allow || contacts, "allowed implies a mutual contact");
                prop_assert!(!deny || contacts, "not denied implies a mutual contact");
                prop_assert!(!deny || !list.contains(&viewer), "a listed user is denied");
                prop_assert!(!allow || list.contains(&viewer), "allowed only if listed");
            }
        }

        /// Only what `check_post` accepts is stored, and what it returns is accepted again
        /// unchanged (normalised once).
        #[test]
        fn checks_are_idempotent(
            poster in 0u128..700, users in proptest::collection::vec(0u128..700, 0..600), kind in 0u8..3, bytes in 0usize..20_000,
        ) {
            let users: Vec<UserId> = users.into_iter().map(user).collect();
            let audience = match kind { 0 => StatusAudience::Contacts, 1 => StatusAudience::Allow(users), _ => StatusAudience::Deny(users) };
            if let Ok(normal) = check_post(user(poster), bytes, audience) {
                prop_assert!((1..=MAX_PAYLOAD_BYTES).contains(&bytes));
                prop_assert_eq!(check_post(user(poster), bytes, normal.clone()), Ok(normal.clone()));
                if let StatusAudience::Allow(l) | StatusAudience::Deny(l) = &normal {
                    prop_assert!(l.len() <= MAX_AUDIENCE_USERS && !l.contains(&user(poster)));
                    prop_assert!(l.windows(2).all(|w| w[0] < w[1]));
                }
            }
        }
    }
}
