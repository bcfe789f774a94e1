//! Where each conversation's sequencer lives: rendezvous (highest random weight) hashing
//! over the live members.
//!
//! Every node computes the owner from its own view of the members, with no coordination:
//! the owner of a conversation is the member whose `xxh3(member name, conversation id)`
//! is highest. When a member joins or leaves, only the conversations whose highest score
//! belonged to (or now belongs to) that member change owner — about 1/N of them — and the
//! others stay where they are.
//!
//! Views can disagree for a moment (a node hears of a death before another does); then
//! two nodes may both activate a conversation. That is safe because the store fences
//! every append (see ARCHITECTURE.md, "Fencing"): this module only decides where
//! conversations *should* live, never whether a write is allowed.
//!
//! xxh3 is used because its output is fixed by its specification: every node, whatever
//! its build or version (rolling upgrades), computes the same owner.

use std::sync::Arc;

use crate::store::ConversationId;

/// A set of live member names, in a canonical (sorted) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    names: Vec<Arc<str>>,
}

impl Members {
    /// The members, deduplicated and sorted.
    pub fn new(names: impl IntoIterator<Item = Arc<str>>) -> Self {
        let mut names: Vec<Arc<str>> = names.into_iter().collect();
        names.sort();
        names.dedup();
        Self { names }
    }

    /// The member names, sorted.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// True if `name` is a member.
    pub fn contains(&self, name: &str) -> bool {
        self.names.binary_search_by(|n| n.as_ref().cmp(name)).is_ok()
    }

    /// The member that owns `conversation`, or None if there are no members.
    pub fn owner(&self, conversation: ConversationId) -> Option<&Arc<str>> {
        self.names.iter().max_by_key(|name| (score(name, conversation), Arc::clone(name)))
    }
}

/// The rendezvous weight of `member` for `conversation`.
fn score(member: &str, conversation: ConversationId) -> u64 {
    let mut key = Vec::with_capacity(member.len() + 17);
    key.extend_from_slice(member.as_bytes());
    // Names vary in length and the id is always the last 16 bytes, so the key is
    // unambiguous; the separator only keeps it readable in a hex dump.
    key.push(0);
    key.extend_from_slice(conversation.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConversationId;

    fn members(names: &[&str]) -> Members {
        Members::new(names.iter().map(|n| Arc::<str>::from(*n)))
    }

    fn ids(n: usize) -> Vec<ConversationId> {
        (0..n as u128).map(|i| ConversationId::from_u128(i * 0x9e37_79b9_7f4a_7c15 + 1)).collect()
    }

    #[test]
    fn every_node_computes_the_same_owner_whatever_the_order_it_learned_members_in() {
        let a = members(&["n1", "n2", "n3"]);
        let b = members(&["n3", "n1", "n2", "n1"]);
        for id in ids(1000) {
            assert_eq!(a.owner(id), b.owner(id));
        }
    }

    #[test]
    fn load_is_spread_evenly() {
        let m = members(&["n1", "n2", "n3"]);
        let mut counts = std::collections::HashMap::new();
        for id in ids(30_000) {
            *counts.entry(m.owner(id).cloned()).or_insert(0) += 1;
        }
        for (_, c) in counts {
            assert!((9_000..11_000).contains(&c), "uneven share {c}");
        }
    }

    #[test]
    fn adding_a_member_moves_only_conversations_to_it() {
        let before = members(&["n1", "n2", "n3"]);
        let after = members(&["n1", "n2", "n3", "n4"]);
        let mut moved = 0;
        for id in ids(20_000) {
            let (b, a) = (before.owner(id).cloned(), after.owner(id).cloned());
            if b != a {
                assert_eq!(a.as_deref(), Some("n4"), "a conversation moved between old members");
                moved += 1;
            }
        }
        // About a quarter moves; none of the others.
        assert!((4_000..6_000).contains(&moved), "moved {moved}");
    }

    #[test]
    fn removing_a_member_moves_only_its_conversations() {
        let before = members(&["n1", "n2", "n3"]);
        let after = members(&["n1", "n3"]);
        for id in ids(20_000) {
            let b = before.owner(id).cloned();
            if b.as_deref() != Some("n2") {
                assert_eq!(after.owner(id).cloned(), b);
            }
        }
    }

    #[test]
    fn no_members_means_no_owner() {
        assert_eq!(Members::default().owner(ConversationId::nil()), None);
    }
}
