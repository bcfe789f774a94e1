//! Failure detection and the live-member view, as a pure state machine over explicit
//! instants (no I/O, no timers: the cluster link feeds it and acts on what it returns).
//!
//! The rule, documented for operators in ARCHITECTURE.md ("Failure detection"):
//!
//! - A peer is **alive** from the moment anything (a heartbeat or any other batch) is
//!   heard from it.
//! - It is **suspect** once nothing has been heard for two heartbeat intervals. A suspect
//!   peer is still a member: its conversations stay where they are, and the link keeps
//!   trying to reconnect to it with backoff.
//! - It is **dead** once nothing has been heard for `dead_after`. A dead peer leaves the
//!   member view: its conversations are reactivated by their new owners and its devices
//!   are dropped from the directory. Losing the TCP connection alone never kills a peer:
//!   a connection that breaks and comes back within `dead_after` moves nothing.
//! - A peer that announces it is **draining** leaves the member view at once (it owns no
//!   conversations) but stays reachable, so its devices still get their deliveries.
//! - A dead peer heard from again (a healed partition, or a restart under the same name)
//!   is alive again and rejoins the view.
//! - A peer heard from under a new incarnation without having been declared dead
//!   restarted within `dead_after`: the sessions of its previous incarnation are over, as
//!   if it had died (reported in [`Change::restarted`]).
//! - Each peer's last word is also kept as a wall-clock time (ms since the epoch, as the
//!   peer stamped it, never later than when it arrived): the last moment it is known to
//!   have been alive, which becomes the last-seen time of the devices it held.
//! - A peer dead for twelve times `dead_after` (at least a minute) is forgotten: it no
//!   longer shows in `admin cluster` and is no longer redialled (unless it is a seed).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::placement::Members;

/// Where a peer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerStatus {
    /// Heard from recently.
    Alive,
    /// Silent for more than two heartbeat intervals, not yet dead.
    Suspect,
    /// Silent for longer than `dead_after`.
    Dead,
}

/// What the membership knows of one peer.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// Where it stands.
    pub status: PeerStatus,
    /// When it was last heard from.
    pub last_heard: Instant,
    /// The same moment in ms since the Unix epoch (see the module doc): the last moment
    /// the peer is known to have been alive.
    pub last_heard_ms: u64,
    /// It asked to be drained.
    pub draining: bool,
    /// Its process start time: a new value means the peer restarted.
    pub incarnation: u64,
}

/// The failure detector of one node.
#[derive(Debug)]
pub struct Membership {
    me: Arc<str>,
    me_draining: bool,
    heartbeat: Duration,
    dead_after: Duration,
    peers: BTreeMap<Arc<str>, PeerView>,
}

/// A peer whose sessions are over (it died, or restarted), and when it was last alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    /// The peer.
    pub name: Arc<str>,
    /// Its last word, in ms since the Unix epoch (see [`PeerView::last_heard_ms`]).
    pub last_heard_ms: u64,
}

/// What changed after an event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The member view (placement) changed.
    pub members_changed: bool,
    /// These peers were just declared dead.
    pub died: Vec<Gone>,
    /// These peers restarted (new incarnation) or came back from the dead.
    pub rejoined: Vec<Arc<str>>,
    /// These peers restarted without having been declared dead: their previous
    /// incarnation's sessions are over (its last word is given). Also in `rejoined`.
    pub restarted: Vec<Gone>,
    /// These peers had been dead long enough to be forgotten.
    pub forgotten: Vec<Arc<str>>,
}

impl Membership {
    /// A node alone, with its timings.
    pub fn new(me: Arc<str>, heartbeat: Duration, dead_after: Duration) -> Self {
        Self { me, me_draining: false, heartbeat, dead_after, peers: BTreeMap::new() }
    }

    /// This node's name.
    pub fn me(&self) -> &Arc<str> {
        &self.me
    }

    /// Something arrived from `peer` at `now`, stamped `heard_ms` (ms since the epoch: the
    /// peer's clock, never later than ours when it arrived).
    pub fn heard(&mut self, peer: &str, incarnation: u64, now: Instant, heard_ms: u64) -> Change {
        let mut change = Change::default();
        if peer == self.me.as_ref() {
            return change;
        }
        match self.peers.get_mut(peer) {
            Some(view) => {
                let was = view.status;
                if view.incarnation != incarnation {
                    view.incarnation = incarnation;
                    change.rejoined.push(Arc::from(peer));
                    if was != PeerStatus::Dead {
                        // Its death was never declared: the previous incarnation's sessions
                        // end here, last alive at its last word.
                        change.restarted.push(Gone { name: Arc::from(peer), last_heard_ms: view.last_heard_ms });
                    }
                    view.last_heard_ms = heard_ms;
                } else if was == PeerStatus::Dead {
                    change.rejoined.push(Arc::from(peer));
                }
                view.last_heard = now;
                // Batches of one incarnation arrive in order on one connection, but not
                // across reconnections: keep the latest.
                view.last_heard_ms = view.last_heard_ms.max(heard_ms);
                view.status = PeerStatus::Alive;
                change.members_changed = was == PeerStatus::Dead && !view.draining;
            }
            None => {
                self.peers.insert(
                    Arc::from(peer),
                    PeerView { status: PeerStatus::Alive, last_heard: now, last_heard_ms: heard_ms, draining: false, incarnation },
                );
                change.members_changed = true;
            }
        }
        change
    }

    /// A peer's heartbeat said whether it is draining.
    pub fn set_draining(&mut self, peer: &str, draining: bool) -> bool {
        match self.peers.get_mut(peer) {
            Some(view) if view.draining != draining => {
                view.draining = draining;
                view.status != PeerStatus::Dead
            }
            _ => false,
        }
    }

    /// This node starts draining: it leaves its own member view.
    pub fn drain_me(&mut self) -> bool {
        let changed = !self.me_draining;
        self.me_draining = true;
        changed
    }

    /// True once this node is draining.
    pub fn draining(&self) -> bool {
        self.me_draining
    }

    /// Applies the timeouts at `now`.
    pub fn tick(&mut self, now: Instant) -> Change {
        let mut change = Change::default();
        let suspect_after = self.heartbeat * 2;
        let forget_after = self.forget_after();
        for (name, view) in &mut self.peers {
            let silent = now.saturating_duration_since(view.last_heard);
            let status = if silent >= self.dead_after {
                PeerStatus::Dead
            } else if silent >= suspect_after {
                PeerStatus::Suspect
            } else {
                PeerStatus::Alive
            };
            if status == PeerStatus::Dead && view.status != PeerStatus::Dead {
                change.died.push(Gone { name: name.clone(), last_heard_ms: view.last_heard_ms });
                change.members_changed |= !view.draining;
            }
            view.status = status;
            if silent >= forget_after {
                change.forgotten.push(name.clone());
            }
        }
        for name in &change.forgotten {
            self.peers.remove(name);
        }
        change
    }

    fn forget_after(&self) -> Duration {
        (self.dead_after * 12).max(Duration::from_secs(60))
    }

    /// The members that own conversations: this node and every peer not dead, minus the
    /// draining ones. A draining cluster of one still owns its conversations (there is
    /// nobody to hand them to).
    pub fn members(&self) -> Members {
        let peers = self.peers.iter().filter(|(_, v)| v.status != PeerStatus::Dead && !v.draining).map(|(n, _)| n.clone());
        let me = (!self.me_draining).then(|| self.me.clone());
        let members = Members::new(peers.chain(me));
        if members.names().is_empty() { Members::new([self.me.clone()]) } else { members }
    }

    /// Every peer ever heard from, with its state.
    pub fn peers(&self) -> impl Iterator<Item = (&Arc<str>, &PeerView)> {
        self.peers.iter()
    }

    /// The peer's state, if it was ever heard from.
    pub fn peer(&self, name: &str) -> Option<&PeerView> {
        self.peers.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(500);
    const DEAD: Duration = Duration::from_secs(3);

    fn names(m: &Members) -> Vec<&str> {
        m.names().iter().map(|n| n.as_ref()).collect()
    }

    #[test]
    fn a_peer_is_a_member_from_its_first_word_until_silent_for_dead_after() {
        let t0 = Instant::now();
        let mut m = Membership::new("a".into(), HB, DEAD);
        assert_eq!(names(&m.members()), ["a"]);
        assert!(m.heard("b", 1, t0, 1_000).members_changed);
        assert_eq!(names(&m.members()), ["a", "b"]);
        // Silent for a while: suspect, still a member.
        assert_eq!(m.tick(t0 + Duration::from_secs(2)), Change::default());
        assert_eq!(m.peer("b").map(|v| v.status), Some(PeerStatus::Suspect));
        assert_eq!(names(&m.members()), ["a", "b"]);
        // Silent for dead_after: dead, and out.
        let change = m.tick(t0 + DEAD);
        assert!(change.members_changed);
        assert_eq!(change.died, vec![Gone { name: "b".into(), last_heard_ms: 1_000 }]);
        assert_eq!(names(&m.members()), ["a"]);
        // Dying is reported once.
        assert_eq!(m.tick(t0 + DEAD * 2), Change::default());
        // Long dead: forgotten.
        let change = m.tick(t0 + Duration::from_secs(61));
        assert_eq!(change.forgotten, vec![Arc::<str>::from("b")]);
        assert!(m.peer("b").is_none());
    }

    #[test]
    fn a_peer_heard_within_dead_after_never_moves_anything() {
        let t0 = Instant::now();
        let mut m = Membership::new("a".into(), HB, DEAD);
        m.heard("b", 1, t0, 1_000);
        let change = m.tick(t0 + Duration::from_millis(2900));
        assert!(!change.members_changed);
        assert!(!m.heard("b", 1, t0 + Duration::from_millis(2950), 3_950).members_changed);
        assert_eq!(m.peer("b").map(|v| v.status), Some(PeerStatus::Alive));
    }

    #[test]
    fn the_dead_come_back_and_restarts_are_noticed() {
        let t0 = Instant::now();
        let mut m = Membership::new("a".into(), HB, DEAD);
        m.heard("b", 1, t0, 1_000);
        m.tick(t0 + DEAD);
        let back = m.heard("b", 1, t0 + DEAD * 2, 7_000);
        assert!(back.members_changed);
        assert_eq!(back.rejoined, vec![Arc::<str>::from("b")]);
        // Its sessions ended when it was declared dead, not now.
        assert!(back.restarted.is_empty());
        let restarted = m.heard("b", 2, t0 + DEAD * 2, 7_100);
        assert!(!restarted.members_changed);
        assert_eq!(restarted.rejoined, vec![Arc::<str>::from("b")]);
        // A restart within dead_after: the previous incarnation's sessions are over, last
        // alive at its last word.
        assert_eq!(restarted.restarted, vec![Gone { name: "b".into(), last_heard_ms: 7_000 }]);
        assert_eq!(m.peer("b").map(|v| v.last_heard_ms), Some(7_100));
    }

    #[test]
    fn the_last_word_is_the_latest_time_a_peer_stamped() {
        let t0 = Instant::now();
        let mut m = Membership::new("a".into(), HB, DEAD);
        m.heard("b", 1, t0, 5_000);
        // A batch from before a reconnection arrives late: the later time stays.
        m.heard("b", 1, t0 + HB, 4_900);
        assert_eq!(m.peer("b").map(|v| v.last_heard_ms), Some(5_000));
        let change = m.tick(t0 + HB + DEAD);
        assert_eq!(change.died, vec![Gone { name: "b".into(), last_heard_ms: 5_000 }]);
    }

    #[test]
    fn draining_nodes_own_nothing_unless_alone() {
        let t0 = Instant::now();
        let mut m = Membership::new("a".into(), HB, DEAD);
        m.heard("b", 1, t0, 1_000);
        assert!(m.set_draining("b", true));
        assert_eq!(names(&m.members()), ["a"]);
        assert!(m.drain_me());
        // Everybody is draining: the last node keeps its conversations.
        assert_eq!(names(&m.members()), ["a"]);
        assert!(m.set_draining("b", false));
        assert_eq!(names(&m.members()), ["b"]);
    }

    #[test]
    fn a_node_never_counts_itself_as_a_peer() {
        let mut m = Membership::new("a".into(), HB, DEAD);
        assert_eq!(m.heard("a", 1, Instant::now(), 1_000), Change::default());
        assert_eq!(m.peers().count(), 0);
    }
}
