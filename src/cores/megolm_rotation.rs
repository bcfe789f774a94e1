//! When a sender's outbound Megolm session of one conversation must be replaced, and who
//! must be given its key: the client SDK's rotation rules (docs/e2ee.md, "Rotation"), as a
//! pure state machine. No vodozemac, store, socket or clock: the SDK (`crate::sdk`) asks
//! [`Rotation::plan`] before each encryption with the current time and the devices that
//! should be able to read the message, carries the plan out (new session, Olm to-device
//! key shares), and reports back with [`Rotation::rotated`], [`Rotation::shared`] and
//! [`Rotation::encrypted`].
//!
//! The rules (those of Matrix clients, after the Megolm specification's advice that a
//! session be replaced when a recipient leaves and after a bounded number of messages or
//! time):
//! - no session yet → create one;
//! - a device that holds the current key is no longer a recipient (its user left or was
//!   removed, or the device was revoked) → rotate: Megolm ratchets only forward, so a
//!   holder of the key could read everything sent later with the same session;
//! - the session encrypted `max_messages` messages, or is `max_age_ms` old → rotate (bounds
//!   what one leaked session key exposes);
//! - otherwise keep the session, and give its key to recipients that do not hold it yet
//!   (a new member or a newly linked device: they receive the key at the current ratchet
//!   index, so they cannot read earlier messages of this session from it).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, UserId};

/// A device that may receive a session key.
pub type DeviceAddr = (UserId, DeviceId);

/// When to rotate regardless of membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPolicy {
    /// Messages one session encrypts before it is replaced (≥ 1).
    pub max_messages: u32,
    /// Age, in ms, after which a session is replaced before its next message.
    pub max_age_ms: u64,
}

impl Default for RotationPolicy {
    /// 100 messages or one week, the defaults of Matrix's `m.room.encryption`.
    fn default() -> Self {
        RotationPolicy { max_messages: 100, max_age_ms: 7 * 24 * 3600 * 1000 }
    }
}

/// Why a new session is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateReason {
    /// There is no session (first message, or after [`Rotation::discard`]).
    NoSession,
    /// A device that holds the key is no longer a recipient.
    RecipientRemoved(DeviceAddr),
    /// The session encrypted `max_messages` messages.
    MessageLimit,
    /// The session is older than `max_age_ms`.
    Age,
}

/// What to do before the next encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Create a new session first (and forget the old one for sending).
    pub rotate: Option<RotateReason>,
    /// Recipients to give the (new or current) session key to, in order.
    pub share_to: Vec<DeviceAddr>,
}

/// What is known of the current outbound session (persisted by the SDK with the session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Messages encrypted with it.
    pub messages: u32,
    /// Devices that were given its key.
    pub shared_with: BTreeSet<DeviceAddr>,
}

/// The rotation state of one conversation's outbound session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    policy: RotationPolicy,
    session: Option<SessionState>,
}

impl Rotation {
    /// No session yet.
    pub fn new(policy: RotationPolicy) -> Self {
        Rotation { policy, session: None }
    }

    /// The state of a session loaded from the SDK's store.
    pub fn restore(policy: RotationPolicy, session: Option<SessionState>) -> Self {
        Rotation { policy, session }
    }

    /// The current session's state, to persist.
    pub fn state(&self) -> Option<&SessionState> {
        self.session.as_ref()
    }

    /// What to do before encrypting at `now_ms` for `recipients` (every device of every
    /// member, the sender's own other devices included, the sending device excluded).
    pub fn plan(&self, now_ms: u64, recipients: &BTreeSet<DeviceAddr>) -> Plan {
        let rotate = match &self.session {
            None => Some(RotateReason::NoSession),
            Some(s) => {
                if let Some(gone) = s.shared_with.iter().find(|d| !recipients.contains(d)) {
                    Some(RotateReason::RecipientRemoved(*gone))
                } else if s.messages >= self.policy.max_messages.max(1) {
                    Some(RotateReason::MessageLimit)
                } else if now_ms.saturating_sub(s.created_ms) >= self.policy.max_age_ms {
                    Some(RotateReason::Age)
                } else {
                    None
                }
            }
        };
        let share_to = match (&rotate, &self.session) {
            (None, Some(s)) => recipients.iter().filter(|d| !s.shared_with.contains(d)).copied().collect(),
            _ => recipients.iter().copied().collect(),
        };
        Plan { rotate, share_to }
    }

    /// A new session was created at `now_ms`: nobody holds its key yet.
    pub fn rotated(&mut self, now_ms: u64) {
        self.session = Some(SessionState { created_ms: now_ms, messages: 0, shared_with: BTreeSet::new() });
    }

    /// These devices were given the current session's key.
    pub fn shared(&mut self, devices: impl IntoIterator<Item = DeviceAddr>) {
        if let Some(s) = &mut self.session {
            s.shared_with.extend(devices);
        }
    }

    /// One message was encrypted with the current session.
    pub fn encrypted(&mut self) {
        if let Some(s) = &mut self.session {
            s.messages = s.messages.saturating_add(1);
        }
    }

    /// A device now presents other identity keys (a reinstall under the same id): whatever
    /// it held was held by its old keys, so the next plan gives it the key again (no
    /// rotation: the old keys were a legitimate holder).
    pub fn device_replaced(&mut self, device: DeviceAddr) {
        if let Some(s) = &mut self.session {
            s.shared_with.remove(&device);
        }
    }

    /// Forget the session: the next plan rotates (a user's explicit request, or a store
    /// that lost the session itself).
    pub fn discard(&mut self) {
        self.session = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn devices(n: usize) -> Vec<DeviceAddr> {
        (0..n).map(|_| (UserId::random(), DeviceId::random())).collect()
    }

    /// Runs a plan as the SDK does; returns whether it rotated.
    fn carry_out(r: &mut Rotation, now: u64, recipients: &BTreeSet<DeviceAddr>) -> bool {
        let plan = r.plan(now, recipients);
        if plan.rotate.is_some() {
            r.rotated(now);
        }
        r.shared(plan.share_to);
        r.encrypted();
        plan.rotate.is_some()
    }

    #[test]
    fn the_first_message_creates_a_session_and_shares_with_everyone() {
        let all: BTreeSet<_> = devices(3).into_iter().collect();
        let r = Rotation::new(RotationPolicy::default());
        let plan = r.plan(0, &all);
        assert_eq!(plan.rotate, Some(RotateReason::NoSession));
        assert_eq!(plan.share_to.len(), 3);
    }

    #[test]
    fn a_new_device_gets_the_current_key_and_a_removed_one_forces_a_rotation() {
        let d = devices(3);
        let mut r = Rotation::new(RotationPolicy::default());
        let two: BTreeSet<_> = d[..2].iter().copied().collect();
        assert!(carry_out(&mut r, 0, &two));
        // A device joins: no rotation, only the newcomer gets the key.
        let three: BTreeSet<_> = d.iter().copied().collect();
        let plan = r.plan(1, &three);
        assert_eq!(plan, Plan { rotate: None, share_to: vec![d[2]] });
        assert!(!carry_out(&mut r, 1, &three));
        // A device leaves: rotate, and the new key goes to the others only.
        let without_first: BTreeSet<_> = d[1..].iter().copied().collect();
        let plan = r.plan(2, &without_first);
        assert_eq!(plan.rotate, Some(RotateReason::RecipientRemoved(d[0])));
        assert_eq!(plan.share_to, without_first.iter().copied().collect::<Vec<_>>());
    }

    #[test]
    fn a_device_with_new_identity_keys_gets_the_key_again() {
        let d = devices(2);
        let all: BTreeSet<_> = d.iter().copied().collect();
        let mut r = Rotation::new(RotationPolicy::default());
        assert!(carry_out(&mut r, 0, &all));
        assert_eq!(r.plan(1, &all).share_to, vec![]);
        r.device_replaced(d[1]);
        assert_eq!(r.plan(1, &all), Plan { rotate: None, share_to: vec![d[1]] });
    }

    #[test]
    fn limits_of_messages_and_age_rotate() {
        let all: BTreeSet<_> = devices(1).into_iter().collect();
        let mut r = Rotation::new(RotationPolicy { max_messages: 2, max_age_ms: 1000 });
        assert!(carry_out(&mut r, 0, &all));
        assert!(!carry_out(&mut r, 10, &all));
        assert_eq!(r.plan(20, &all).rotate, Some(RotateReason::MessageLimit));
        assert!(carry_out(&mut r, 20, &all));
        assert_eq!(r.plan(1020, &all).rotate, Some(RotateReason::Age));
        r.discard();
        assert_eq!(r.plan(1020, &all).rotate, Some(RotateReason::NoSession));
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Recipients become this subset (bit mask over the universe).
        Recipients(u8),
        /// Time passes by this many ms, then a message is encrypted.
        Send(u16),
        /// The device at this index of the universe comes back with new identity keys.
        Replaced(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![any::<u8>().prop_map(Step::Recipients), (0u16..400).prop_map(Step::Send), (0u8..6).prop_map(Step::Replaced)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever the membership history (and devices coming back with new keys), at
        /// every encryption exactly the current
        /// recipients hold the session's key (a removed device never holds a key used
        /// after its removal; nobody current lacks it), a session never exceeds its
        /// limits, and a rotation happens only for one of the stated reasons.
        #[test]
        fn holders_of_the_key_are_exactly_the_recipients(steps in proptest::collection::vec(step(), 1..80), max in 1u32..6) {
            let universe = devices(6);
            let policy = RotationPolicy { max_messages: max, max_age_ms: 1000 };
            let mut r = Rotation::new(policy);
            let mut recipients: BTreeSet<DeviceAddr> = BTreeSet::new();
            let mut now = 0u64;
            // The model: who was given the key of the session in use (as the shell saw it).
            let mut holders: BTreeSet<DeviceAddr> = BTreeSet::new();
            let mut created = 0u64;
            let mut count = 0u32;
            for s in steps {
                match s {
                    Step::Recipients(mask) => {
                        recipients = universe.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, d)| *d).collect();
                    }
                    Step::Replaced(i) => {
                        // Its new keys hold nothing: the model forgets it as a holder.
                        let d = universe[usize::from(i)];
                        r.device_replaced(d);
                        holders.remove(&d);
                    }
                    Step::Send(dt) => {
                        now += u64::from(dt);
                        let plan = r.plan(now, &recipients);
                        let removed = holders.iter().any(|h| !recipients.contains(h));
                        match &plan.rotate {
                            Some(RotateReason::NoSession) => prop_assert_eq!(r.state(), None),
                            Some(RotateReason::RecipientRemoved(d)) => prop_assert!(holders.contains(d) && !recipients.contains(d)),
                            Some(RotateReason::MessageLimit) => prop_assert!(count >= max),
                            Some(RotateReason::Age) => prop_assert!(now - created >= 1000),
                            None => prop_assert!(!removed && count < max && now - created < 1000),
                        }
                        if plan.rotate.is_some() {
                            r.rotated(now);
                            holders.clear();
                            created = now;
                            count = 0;
                        }
                        for d in &plan.share_to {
                            prop_assert!(recipients.contains(d) && !holders.contains(d), "shared with a non-recipient or twice");
                        }
                        holders.extend(plan.share_to.iter().copied());
                        r.shared(plan.share_to);
                        r.encrypted();
                        count += 1;
                        prop_assert_eq!(&holders, &recipients);
                        prop_assert!(count <= max);
                        prop_assert_eq!(r.state().map(|s| &s.shared_with), Some(&holders));
                    }
                }
            }
        }
    }
}
