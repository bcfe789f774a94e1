//! The conversation list (inbox) of a user, as pure decisions: the per-user state of
//! each conversation (muted until, archived, pinned, cleared up to), how a change to it
//! is checked and applied, how a muted one pushes, which conversations changed since a version a device holds,
//! the order of the list and its pages, and the unread count.
//!
//! Versions are times (ms since the Unix epoch), so that nothing has to be written per
//! message or per member to keep them: an entry changed after version `v` if its state
//! changed, a visible message arrived, or the user's read cursor moved after `v`. A page
//! answers with a version a margin ([`VERSION_MARGIN_MS`] by default) before the time it was read,
//! so that a write stamped before that time but committed after the read, or stamped by a
//! node whose clock is a little behind, is still "after" the version next time; the price
//! is that entries changed in the margin come again (entries are states: applying one
//! twice is harmless).
//!
//! The shell (`crate::inbox`) reads the facts out of the store; nothing here reads a
//! store, a clock or a socket.

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, UserId};

/// Most conversations a user may pin (WhatsApp's limit).
pub const MAX_PINNED: usize = 3;

/// How far before the time it was read a page's version is set by default (ms): longer
/// than a commit takes and than the clocks of a cluster's nodes differ (a setting:
/// `inbox_version_margin_ms`).
pub const VERSION_MARGIN_MS: u64 = 10_000;

/// Largest page of the list, in entries.
pub const MAX_PAGE: usize = 500;
/// Page size when the client asks for 0.
pub const DEFAULT_PAGE: usize = 100;

/// The unread count covers at most this many of a conversation's newest log entries
/// (beyond them, `unread_more` says that older unread messages exist).
pub const UNREAD_SCAN: usize = 200;

/// What a muted conversation's new messages push, as the user chose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MutedPush {
    /// Silent pushes (the app updates badges and fetches; no sound, no banner).
    #[default]
    Silent,
    /// No push at all.
    Off,
}

/// How a new message of a conversation is pushed to the user's offline devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    /// An ordinary notification.
    Alert,
    /// A silent one (muted, `MutedPush::Silent`).
    Silent,
    /// None (muted, `MutedPush::Off`).
    Skip,
}

/// A user's own state of one conversation, the same on each of the user's devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct ChatState {
    /// Notifications are silenced until this time (ms since the Unix epoch); 0: not
    /// muted; `u64::MAX`: always.
    pub muted_until_ms: u64,
    /// While muted: silent pushes or none.
    pub muted_push: MutedPush,
    /// Archived (kept out of the main list; new messages do not unarchive).
    pub archived: bool,
    /// When it was pinned (ms since the Unix epoch); 0: not pinned. Pinned conversations
    /// come first, the latest pinned first.
    pub pinned_ms: u64,
    /// "Delete for me" / "clear chat": messages with seq up to this are hidden from the
    /// user's devices (history, catch-up, the list). Only grows.
    pub cleared_up_to: u64,
    /// When this state last changed (ms since the Unix epoch).
    pub changed_ms: u64,
}

/// A change a device asks for; absent fields stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ChatUpdate {
    /// Mute until this time (ms since the Unix epoch; 0 unmutes, `u64::MAX` forever).
    pub muted_until_ms: Option<u64>,
    /// While muted: silent pushes or none.
    pub muted_push: Option<MutedPush>,
    /// Archive or unarchive.
    pub archived: Option<bool>,
    /// Pin or unpin.
    pub pinned: Option<bool>,
    /// Clear the conversation up to this seq (at most its last seq; a lower value than
    /// the current one changes nothing).
    pub cleared_up_to: Option<u64>,
}

/// Why a change is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// Pinning one more would pass [`MAX_PINNED`].
    #[error("at most {max} conversations can be pinned")]
    TooManyPins {
        /// The limit.
        max: usize,
    },
    /// `cleared_up_to` is past the conversation's last seq the user may see.
    #[error("cannot clear up to seq {asked}: the conversation ends at {last}")]
    ClearBeyondEnd {
        /// What was asked.
        asked: u64,
        /// The last seq the user may see.
        last: u64,
    },
}

/// Applies `update` to `current` at `now_ms`. `pinned_others` is how many of the user's
/// other conversations are pinned; `last_seq` the last seq of this one the user may see.
/// Returns the new state, or None if nothing would change (nothing to store or tell).
pub fn apply(current: ChatState, update: &ChatUpdate, pinned_others: usize, last_seq: u64, now_ms: u64) -> Result<Option<ChatState>, InboxError> {
    let mut next = current;
    if let Some(until) = update.muted_until_ms {
        next.muted_until_ms = until;
    }
    if let Some(mode) = update.muted_push {
        next.muted_push = mode;
    }
    if let Some(archived) = update.archived {
        next.archived = archived;
    }
    match update.pinned {
        Some(true) if current.pinned_ms == 0 => {
            if pinned_others >= MAX_PINNED {
                return Err(InboxError::TooManyPins { max: MAX_PINNED });
            }
            // Never 0 (that means "not pinned"), even for a clock at the epoch.
            next.pinned_ms = now_ms.max(1);
        }
        Some(false) => next.pinned_ms = 0,
        _ => {}
    }
    if let Some(asked) = update.cleared_up_to {
        if asked > last_seq {
            return Err(InboxError::ClearBeyondEnd { asked, last: last_seq });
        }
        next.cleared_up_to = current.cleared_up_to.max(asked);
    }
    if next == current {
        return Ok(None);
    }
    // Strictly after the previous change, so a version taken between the two sees it.
    next.changed_ms = now_ms.max(current.changed_ms + 1);
    Ok(Some(next))
}

/// True if the conversation is muted at `now_ms`.
pub fn muted(state: &ChatState, now_ms: u64) -> bool {
    state.muted_until_ms > now_ms
}

/// How a new message of the conversation is pushed at `now_ms`.
pub fn push_mode(state: &ChatState, now_ms: u64) -> PushMode {
    match (muted(state, now_ms), state.muted_push) {
        (false, _) => PushMode::Alert,
        (true, MutedPush::Silent) => PushMode::Silent,
        (true, MutedPush::Off) => PushMode::Skip,
    }
}

/// What the shell knows of one conversation of the user, for the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The conversation.
    pub id: ConversationId,
    /// The last seq the user may see (a former member's ends where they left); 0 if none.
    pub last_seq: u64,
    /// Time of that message, or of the conversation's creation when it has none (ms
    /// since the Unix epoch): its activity, the list's order.
    pub last_time_ms: u64,
    /// The user's read cursor (the furthest any of their devices read).
    pub read: u64,
    /// When the read cursor got there (ms); 0 if never read.
    pub read_ms: u64,
    /// The user's state of it (the default if never set).
    pub state: ChatState,
}

impl Facts {
    /// True if something the list shows changed after version `since` (0: everything
    /// counts as changed, the first sync of a device).
    pub fn changed_since(&self, since: u64) -> bool {
        since == 0 || self.state.changed_ms > since || self.last_time_ms > since || self.read_ms > since
    }

    /// Where it sits in the list: pinned ones first (latest pinned first), then the most
    /// recent activity first, ties by id.
    pub fn position(&self) -> Position {
        Position { pinned_ms: self.state.pinned_ms, last_time_ms: self.last_time_ms, id: self.id }
    }
}

/// A place in the list's order; a page's continuation token is the position of its last
/// entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// See [`ChatState::pinned_ms`].
    pub pinned_ms: u64,
    /// See [`Facts::last_time_ms`].
    pub last_time_ms: u64,
    /// The conversation.
    pub id: ConversationId,
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Descending by pin time and activity: larger first.
        other.pinned_ms.cmp(&self.pinned_ms).then(other.last_time_ms.cmp(&self.last_time_ms)).then(self.id.cmp(&other.id))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Position {}

/// Where a pass over the list stands: the version its first page answered with (every
/// page of the pass answers with it, so an entry that moved ahead of the position while
/// the pass went on is after that version and comes in the next sync) and the position
/// of the last entry given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    /// The pass's version.
    pub version: u64,
    /// The last entry given.
    pub position: Position,
}

impl Continuation {
    /// The token: `<version>.<pinned_ms>.<last_time_ms>.<conversation id>`.
    pub fn token(&self) -> String {
        let p = &self.position;
        format!("{}.{}.{}.{}", self.version, p.pinned_ms, p.last_time_ms, p.id.uuid().simple())
    }

    /// Parses a token, exactly as [`Continuation::token`] writes them (three numbers of 1
    /// to 19 digits, 32 lowercase hex digits, `.` between); None if it is not one.
    pub fn parse(token: &str) -> Option<Self> {
        let number = |part: &str| -> Option<u64> {
            (!part.is_empty() && part.len() <= 19 && part.bytes().all(|b| b.is_ascii_digit())).then(|| part.parse().ok()).flatten()
        };
        let mut parts = token.split('.');
        let version = number(parts.next()?)?;
        let pinned_ms = number(parts.next()?)?;
        let last_time_ms = number(parts.next()?)?;
        let id = parts.next()?;
        if parts.next().is_some() || id.len() != 32 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return None;
        }
        let id = uuid::Uuid::parse_str(id).ok()?;
        Some(Self { version, position: Position { pinned_ms, last_time_ms, id: ConversationId::from_uuid(id) } })
    }
}

/// A page of the list: the entries changed since `since`, in list order, after `after`
/// (exclusive), at most `limit` (0: [`DEFAULT_PAGE`]; capped at [`MAX_PAGE`]), in the pass
/// of version `version`. Returns the page and the continuation token of its last entry
/// if more follow.
pub fn page(mut facts: Vec<Facts>, since: u64, after: Option<Position>, limit: usize, version: u64) -> (Vec<Facts>, Option<String>) {
    let limit = if limit == 0 { DEFAULT_PAGE } else { limit.min(MAX_PAGE) };
    facts.retain(|f| f.changed_since(since) && after.is_none_or(|a| f.position() > a));
    facts.sort_by_key(Facts::position);
    let more = facts.len() > limit;
    facts.truncate(limit);
    let next = if more { facts.last().map(|f| Continuation { version, position: f.position() }.token()) } else { None };
    (facts, next)
}

/// The version a page answers with, read at `now_ms` with a margin of `margin_ms`: see
/// the module doc.
pub fn version_at(now_ms: u64, margin_ms: u64) -> u64 {
    // Never 0: that asks for everything.
    now_ms.saturating_sub(margin_ms).max(1)
}

/// One log entry, as the unread count sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its seq.
    pub seq: u64,
    /// Who sent it.
    pub sender: UserId,
    /// An ordinary message (not an event, an edit or a reaction) that was not deleted.
    pub countable: bool,
}

/// How many messages are unread: ordinary messages from others after the user's read
/// cursor and after what they cleared, among `newest` (the conversation's newest entries
/// up to its last visible seq, any order). The second value is true if unread entries
/// may exist beyond those (`newest` held [`UNREAD_SCAN`] entries, all unread).
pub fn unread(user: UserId, read: u64, cleared_up_to: u64, newest: &[Entry]) -> (u32, bool) {
    let floor = read.max(cleared_up_to);
    let count = newest.iter().filter(|e| e.seq > floor && e.countable && e.sender != user).count();
    let more = newest.len() >= UNREAD_SCAN && newest.iter().all(|e| e.seq > floor);
    (count as u32, more)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(n: u128) -> ConversationId {
        ConversationId::from_u128(n)
    }

    #[test]
    fn pin_limit_counts_the_others() {
        let update = ChatUpdate { pinned: Some(true), ..Default::default() };
        let pinned = apply(ChatState::default(), &update, 2, 0, 50).unwrap().unwrap();
        assert_eq!(pinned.pinned_ms, 50);
        assert_eq!(apply(ChatState::default(), &update, 3, 0, 50), Err(InboxError::TooManyPins { max: 3 }));
        // Pinning an already pinned one is no change, whatever the others.
        assert_eq!(apply(pinned, &update, 3, 0, 60), Ok(None));
    }

    #[test]
    fn clearing_only_grows_and_stops_at_the_end() {
        let s = apply(ChatState::default(), &ChatUpdate { cleared_up_to: Some(7), ..Default::default() }, 0, 9, 5).unwrap().unwrap();
        assert_eq!(s.cleared_up_to, 7);
        assert_eq!(apply(s, &ChatUpdate { cleared_up_to: Some(3), ..Default::default() }, 0, 9, 6), Ok(None));
        assert_eq!(
            apply(s, &ChatUpdate { cleared_up_to: Some(10), ..Default::default() }, 0, 9, 6),
            Err(InboxError::ClearBeyondEnd { asked: 10, last: 9 })
        );
    }

    #[test]
    fn changes_are_stamped_after_the_previous_one() {
        let a = apply(ChatState::default(), &ChatUpdate { archived: Some(true), ..Default::default() }, 0, 0, 100).unwrap().unwrap();
        // A clock that went back still moves the stamp forward.
        let b = apply(a, &ChatUpdate { archived: Some(false), ..Default::default() }, 0, 0, 90).unwrap().unwrap();
        assert_eq!((a.changed_ms, b.changed_ms), (100, 101));
    }

    #[test]
    fn muted_until_a_time_or_forever() {
        let s = ChatState { muted_until_ms: 1_000, ..Default::default() };
        assert!(muted(&s, 999));
        assert!(!muted(&s, 1_000));
        assert!(muted(&ChatState { muted_until_ms: u64::MAX, ..Default::default() }, u64::MAX - 1));
        assert!(!muted(&ChatState::default(), 0));
        assert_eq!(push_mode(&s, 999), PushMode::Silent);
        assert_eq!(push_mode(&ChatState { muted_push: MutedPush::Off, ..s }, 999), PushMode::Skip);
        assert_eq!(push_mode(&ChatState { muted_push: MutedPush::Off, ..s }, 1_000), PushMode::Alert, "the mute ran out");
    }

    #[test]
    fn unread_counts_ordinary_messages_of_others_after_read_and_clear() {
        let me = UserId::from_u128(1);
        let peer = UserId::from_u128(2);
        let e = |seq, sender, countable| Entry { seq, sender, countable };
        let newest = [e(1, peer, true), e(2, peer, true), e(3, me, true), e(4, peer, false), e(5, peer, true)];
        assert_eq!(unread(me, 1, 0, &newest), (2, false), "3 is mine, 4 is an event");
        assert_eq!(unread(me, 1, 2, &newest), (1, false), "2 was cleared");
        assert_eq!(unread(me, 5, 0, &newest), (0, false));
        let full: Vec<Entry> = (1..=UNREAD_SCAN as u64).map(|s| e(s + 10, peer, true)).collect();
        assert_eq!(unread(me, 0, 0, &full), (UNREAD_SCAN as u32, true));
        assert_eq!(unread(me, 11, 0, &full), (UNREAD_SCAN as u32 - 1, false));
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let c = Continuation { version: 5, position: Position { pinned_ms: 3, last_time_ms: 9, id: id(77) } };
        assert_eq!(Continuation::parse(&c.token()), Some(c));
        for bad in [
            "",
            "1.2",
            "7.1.2.zz",
            "7.a.2.00000000000000000000000000000001",
            "7.1.2.00000000000000000000000000000001.4",
            "7.+1.2.00000000000000000000000000000001",
            "7.1.2.0000000000000000000000000000000A",
            "7.12345678901234567890.2.00000000000000000000000000000001",
        ] {
            assert_eq!(Continuation::parse(bad), None, "{bad}");
        }
    }

    fn arb_facts() -> impl Strategy<Value = Vec<Facts>> {
        prop::collection::vec((0u64..4, 0u64..50, 0u64..50, 0u64..50), 0..40).prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(|(i, (pin, time, read_ms, changed))| Facts {
                    id: id(i as u128 + 1),
                    last_seq: time,
                    last_time_ms: time,
                    read: 0,
                    read_ms,
                    state: ChatState { pinned_ms: pin, changed_ms: changed, ..Default::default() },
                })
                .collect()
        })
    }

    proptest! {
        /// Following the continuation tokens visits every changed entry once, in list
        /// order, and nothing that did not change.
        #[test]
        fn pages_cover_each_changed_entry_once(facts in arb_facts(), since in 0u64..50, limit in 1usize..7) {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let (page, next) = page(facts.clone(), since, after, limit, 42);
                prop_assert!(page.len() <= limit);
                seen.extend(page);
                match next {
                    Some(token) => {
                        let c = Continuation::parse(&token).unwrap();
                        prop_assert_eq!(c.version, 42, "every page of a pass carries its version");
                        after = Some(c.position);
                    }
                    None => break,
                }
            }
            let mut expected: Vec<Facts> = facts.into_iter().filter(|f| f.changed_since(since)).collect();
            expected.sort_by_key(Facts::position);
            prop_assert_eq!(seen, expected);
        }

        /// Whatever sequence of changes, no more than MAX_PINNED are pinned, cleared never
        /// goes down, and every stored change is stamped after the one before.
        #[test]
        fn changes_keep_the_rules(steps in prop::collection::vec((0usize..6, any::<bool>(), 0u64..20, 0u64..100), 0..60)) {
            let mut states = [ChatState::default(); 6];
            for (i, pin, clear, now) in steps {
                let others = states.iter().enumerate().filter(|(j, s)| *j != i && s.pinned_ms != 0).count();
                let update = ChatUpdate { pinned: Some(pin), cleared_up_to: Some(clear), ..Default::default() };
                let before = states[i];
                if let Ok(Some(next)) = apply(before, &update, others, 15, now) {
                    prop_assert!(next.cleared_up_to >= before.cleared_up_to);
                    prop_assert!(next.changed_ms > before.changed_ms);
                    states[i] = next;
                }
                prop_assert!(states.iter().filter(|s| s.pinned_ms != 0).count() <= MAX_PINNED);
            }
        }
    }
}
