//! Safety numbers: a short number two users compare (read aloud, or side by side) to know
//! that the identity keys each device sees for the other are the real ones, and the
//! trust-on-first-use record that warns when a peer's keys change. Pure functions.
//!
//! The scheme follows Signal's numeric fingerprints (version 1 of its
//! `NumericFingerprintGenerator`), adapted to a user with several devices:
//! - a user's **fingerprint** is SHA-512 iterated 5,200 times over
//!   `"switchboard/safety-number/v1" ‖ user id (16) ‖ the Ed25519 keys of all the user's
//!   devices, sorted bytewise (32 each)`, each round hashing `previous ‖ keys`;
//! - its first 30 bytes become six groups of five digits (each 5-byte big-endian chunk
//!   modulo 100,000), 30 digits;
//! - the **safety number** of two users is both fingerprints, the one of the smaller user
//!   id first: 60 digits in 12 groups, the same on both sides, and independent of the order
//!   in which devices were listed. It changes when either user adds, removes or replaces a
//!   device.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::ids::{DeviceId, UserId};

/// Label of fingerprint version 1.
pub const SAFETY_LABEL: &[u8] = b"switchboard/safety-number/v1";
/// Hash rounds (Signal's figure: slows down a search for a colliding key set).
pub const ITERATIONS: usize = 5200;

/// The 30-digit fingerprint of one user's device keys.
pub fn fingerprint(user: UserId, ed25519_keys: &[[u8; 32]]) -> String {
    let keys: BTreeSet<[u8; 32]> = ed25519_keys.iter().copied().collect();
    let keys: Vec<u8> = keys.into_iter().flatten().collect();
    let mut hash: Vec<u8> = [SAFETY_LABEL, user.uuid().as_bytes(), &keys].concat();
    for _ in 0..ITERATIONS {
        let mut h = Sha512::new();
        h.update(&hash);
        h.update(&keys);
        hash = h.finalize().to_vec();
    }
    hash[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

/// The safety number of two users, as 12 groups of five digits separated by spaces.
/// `mine` and `theirs` are each (user, the Ed25519 keys of all its devices).
pub fn safety_number(mine: (UserId, &[[u8; 32]]), theirs: (UserId, &[[u8; 32]])) -> String {
    let (first, second) = if mine.0 <= theirs.0 { (mine, theirs) } else { (theirs, mine) };
    let digits = fingerprint(first.0, first.1) + &fingerprint(second.0, second.1);
    digits.as_bytes().chunks(5).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ")
}

/// What changed in a user's device list since it was first seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A device not seen before (a newly linked device: normal, but it changes the safety
    /// number).
    NewDevice {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// A device kept its id but now presents other identity keys: a warning (a reinstalled
    /// app, or a server that substitutes keys). Until the users compare safety numbers
    /// again, the new keys are used but marked as changed.
    IdentityChanged {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
        /// The Ed25519 key first seen.
        old_ed25519: [u8; 32],
        /// The Ed25519 key now published.
        new_ed25519: [u8; 32],
    },
    /// A device is no longer listed (revoked).
    Removed {
        /// The user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
}

/// The keys seen for one user's devices: device → (Curve25519, Ed25519).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenDevices {
    /// Devices and their identity keys.
    pub devices: BTreeMap<DeviceId, ([u8; 32], [u8; 32])>,
}

/// Compares a user's device list with what was seen before; returns the changes and the
/// record to keep. The first list ever seen for a user is trusted as is (no change
/// reported): trust on first use.
pub fn compare(user: UserId, seen: Option<&SeenDevices>, now: &BTreeMap<DeviceId, ([u8; 32], [u8; 32])>) -> (Vec<KeyChange>, SeenDevices) {
    let next = SeenDevices { devices: now.clone() };
    let Some(seen) = seen else { return (Vec::new(), next) };
    let mut changes = Vec::new();
    for (device, (_, ed)) in now {
        match seen.devices.get(device) {
            None => changes.push(KeyChange::NewDevice { user, device: *device }),
            Some((_, old)) if old != ed => changes.push(KeyChange::IdentityChanged { user, device: *device, old_ed25519: *old, new_ed25519: *ed }),
            Some(_) => {}
        }
    }
    for device in seen.devices.keys() {
        if !now.contains_key(device) {
            changes.push(KeyChange::Removed { user, device: *device });
        }
    }
    (changes, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_sides_see_the_same_number_of_12_groups() {
        let (alice, bob) = (UserId::random(), UserId::random());
        let a = [[1u8; 32], [2u8; 32]];
        let b = [[3u8; 32]];
        let n = safety_number((alice, &a), (bob, &b));
        assert_eq!(n, safety_number((bob, &b), (alice, &a)));
        let groups: Vec<&str> = n.split(' ').collect();
        assert_eq!(groups.len(), 12);
        assert!(groups.iter().all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit())));
        // Another device (or another key) changes it.
        assert_ne!(n, safety_number((alice, &[[1u8; 32], [2u8; 32], [4u8; 32]]), (bob, &b)));
        assert_ne!(n, safety_number((alice, &a), (bob, &[[5u8; 32]])));
    }

    #[test]
    fn changes_are_reported_after_the_first_sight() {
        let user = UserId::random();
        let (d1, d2) = (DeviceId::random(), DeviceId::random());
        let first: BTreeMap<_, _> = [(d1, ([1; 32], [1; 32]))].into();
        let (changes, seen) = compare(user, None, &first);
        assert!(changes.is_empty());
        let (changes, _) = compare(user, Some(&seen), &first);
        assert!(changes.is_empty());
        let later: BTreeMap<_, _> = [(d1, ([1; 32], [9; 32])), (d2, ([2; 32], [2; 32]))].into();
        let (changes, _) = compare(user, Some(&seen), &later);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes.contains(&KeyChange::IdentityChanged { user, device: d1, old_ed25519: [1; 32], new_ed25519: [9; 32] }));
        assert!(changes.contains(&KeyChange::NewDevice { user, device: d2 }));
        let (changes, _) = compare(user, Some(&seen), &BTreeMap::new());
        assert_eq!(changes, vec![KeyChange::Removed { user, device: d1 }]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

        /// The order of devices never matters, and the number is symmetric.
        #[test]
        fn order_independent_and_symmetric(keys in proptest::collection::vec(any::<[u8; 32]>(), 1..5), other in any::<[u8; 32]>()) {
            let (a, b) = (UserId::random(), UserId::random());
            let mut reversed = keys.clone();
            reversed.reverse();
            prop_assert_eq!(fingerprint(a, &keys), fingerprint(a, &reversed));
            prop_assert_eq!(safety_number((a, &keys), (b, &[other])), safety_number((b, &[other]), (a, &reversed)));
        }
    }
}
