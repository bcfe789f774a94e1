//! Key directory decisions (docs/e2ee.md), without a store or a socket: what a device may
//! publish, whether its signatures hold, and when it must be told to upload more one-time
//! keys. The shells (`crate::keys`, used by the session and the HTTP API) read and write
//! the store around these.
//!
//! Signatures are Ed25519 (RFC 8032, strict verification, through vodozemac) by the
//! device's identity key over the canonical byte strings below: binary, length-fixed or
//! length-prefixed, with a distinct label per kind of key, so a signature over one thing can
//! never be replayed as a signature over another (a fallback key as a one-time key, keys of
//! one device as another's). Olm itself (the Double Ratchet and its 3DH handshake, which
//! mixes both identity keys) is what stops a server that swaps keys; the signatures let a
//! client check, before it opens a session, that the keys it was handed are the device's.

use vodozemac::{Ed25519PublicKey, Ed25519Signature};

use crate::ids::{DeviceId, UserId};
use crate::store::{DeviceKeys, OneTimeKey};

/// Label of identity key signatures.
pub const IDENTITY_LABEL: &[u8] = b"switchboard/device-keys/v1";
/// Label of one-time key signatures.
pub const ONE_TIME_KEY_LABEL: &[u8] = b"switchboard/one-time-key/v1";
/// Label of fallback key signatures.
pub const FALLBACK_KEY_LABEL: &[u8] = b"switchboard/fallback-key/v1";

/// Limits of the key directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// One-time keys accepted in one upload.
    pub per_upload: usize,
    /// Unclaimed one-time keys a device may hold.
    pub unclaimed: u64,
    /// Below this many unclaimed one-time keys, the device is told to upload more.
    pub low_water: u64,
    /// How many it should then hold (vodozemac's `max_number_of_one_time_keys` is 50).
    pub target: u64,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits { per_upload: 100, unclaimed: 500, low_water: 10, target: 50 }
    }
}

/// Longest key id, in bytes.
pub const MAX_KEY_ID_BYTES: usize = 64;

/// Why an upload is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    /// A field has the wrong size or is missing.
    #[error("{0}")]
    Malformed(String),
    /// A signature does not verify against the device's Ed25519 identity key.
    #[error("{0}")]
    BadSignature(String),
    /// More one-time keys than allowed (in this upload, or unclaimed on the device).
    #[error("{0}")]
    TooMany(String),
}

/// An upload as received (byte fields unchecked).
#[derive(Debug, Clone, Default)]
pub struct Upload {
    /// Identity keys: curve25519, ed25519, signature.
    pub identity: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// One-time keys: key id, key, signature.
    pub one_time_keys: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// Fallback key: key id, key, signature.
    pub fallback: Option<(String, Vec<u8>, Vec<u8>)>,
}

/// An upload that passed every check: ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUpload {
    /// New (or the same) identity keys, `uploaded_ms` set to the time given.
    pub identity: Option<DeviceKeys>,
    /// One-time keys.
    pub one_time_keys: Vec<OneTimeKey>,
    /// Fallback key.
    pub fallback: Option<OneTimeKey>,
}

/// The bytes an identity signature covers: label ‖ user (16) ‖ device (16) ‖ curve25519
/// (32) ‖ ed25519 (32).
pub fn identity_signed_bytes(user: UserId, device: DeviceId, curve25519: &[u8; 32], ed25519: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(IDENTITY_LABEL.len() + 96);
    out.extend_from_slice(IDENTITY_LABEL);
    out.extend_from_slice(user.uuid().as_bytes());
    out.extend_from_slice(device.uuid().as_bytes());
    out.extend_from_slice(curve25519);
    out.extend_from_slice(ed25519);
    out
}

/// The bytes a one-time (or, with `fallback`, a fallback) key signature covers: label ‖
/// device (16) ‖ key id length (1 byte) ‖ key id ‖ key (32). Key ids are at most 64 bytes.
pub fn one_time_key_signed_bytes(device: DeviceId, key_id: &str, key: &[u8; 32], fallback: bool) -> Vec<u8> {
    let label = if fallback { FALLBACK_KEY_LABEL } else { ONE_TIME_KEY_LABEL };
    let id = &key_id.as_bytes()[..key_id.len().min(MAX_KEY_ID_BYTES)];
    let mut out = Vec::with_capacity(label.len() + 16 + 1 + id.len() + 32);
    out.extend_from_slice(label);
    out.extend_from_slice(device.uuid().as_bytes());
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(key);
    out
}

/// Checks an Ed25519 signature (strict RFC 8032 verification).
pub fn verify(ed25519: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = Ed25519PublicKey::from_slice(ed25519) else { return false };
    let Ok(signature) = Ed25519Signature::from_slice(signature) else { return false };
    key.verify(message, &signature).is_ok()
}

fn key32(what: &str, bytes: &[u8]) -> Result<[u8; 32], KeyRefusal> {
    bytes.try_into().map_err(|_| KeyRefusal::Malformed(format!("{what} must be 32 bytes, not {}", bytes.len())))
}

fn signature64(what: &str, bytes: &[u8]) -> Result<(), KeyRefusal> {
    if bytes.len() != 64 {
        return Err(KeyRefusal::Malformed(format!("{what} signature must be 64 bytes, not {}", bytes.len())));
    }
    Ok(())
}

/// Checks an upload of `device` of `user`: sizes, limits and every signature. One-time and
/// fallback keys are checked against the identity keys of this upload if it has them, else
/// against `published` (the device's stored identity keys). `unclaimed` is how many
/// unclaimed one-time keys the device has now (a re-sent key id counts again here: the
/// limit is checked before the store skips it, which errs on the side of refusing).
pub fn check_upload(
    user: UserId,
    device: DeviceId,
    upload: &Upload,
    published: Option<&DeviceKeys>,
    unclaimed: u64,
    limits: &KeyLimits,
    now_ms: u64,
) -> Result<CheckedUpload, KeyRefusal> {
    if upload.one_time_keys.len() > limits.per_upload {
        return Err(KeyRefusal::TooMany(format!("at most {} one-time keys per upload, not {}", limits.per_upload, upload.one_time_keys.len())));
    }
    if unclaimed + upload.one_time_keys.len() as u64 > limits.unclaimed {
        return Err(KeyRefusal::TooMany(format!(
            "a device holds at most {} unclaimed one-time keys; it has {unclaimed} and sent {}",
            limits.unclaimed,
            upload.one_time_keys.len()
        )));
    }
    let identity = match &upload.identity {
        Some((curve, ed, signature)) => {
            let curve25519 = key32("identity curve25519 key", curve)?;
            let ed25519 = key32("identity ed25519 key", ed)?;
            signature64("identity", signature)?;
            if !verify(&ed25519, &identity_signed_bytes(user, device, &curve25519, &ed25519), signature) {
                return Err(KeyRefusal::BadSignature("the identity keys' signature does not verify".into()));
            }
            Some(DeviceKeys { user_id: user, device_id: device, curve25519, ed25519, signature: signature.clone(), uploaded_ms: now_ms })
        }
        None => None,
    };
    let signer = identity.as_ref().or(published).map(|k| k.ed25519);
    let key = |(key_id, key, signature): &(String, Vec<u8>, Vec<u8>), fallback: bool| -> Result<OneTimeKey, KeyRefusal> {
        let what = if fallback { "fallback key" } else { "one-time key" };
        if key_id.is_empty() || key_id.len() > MAX_KEY_ID_BYTES {
            return Err(KeyRefusal::Malformed(format!("{what} ids must be 1 to {MAX_KEY_ID_BYTES} bytes")));
        }
        let public = key32(what, key)?;
        signature64(what, signature)?;
        let Some(ed25519) = signer else {
            return Err(KeyRefusal::Malformed(format!("a {what} needs identity keys (in this upload or published before)")));
        };
        if !verify(&ed25519, &one_time_key_signed_bytes(device, key_id, &public, fallback), signature) {
            return Err(KeyRefusal::BadSignature(format!("the signature of {what} {key_id:?} does not verify")));
        }
        Ok(OneTimeKey { key_id: key_id.clone(), key: public, signature: signature.clone() })
    };
    let one_time_keys = upload.one_time_keys.iter().map(|k| key(k, false)).collect::<Result<Vec<_>, _>>()?;
    let fallback = upload.fallback.as_ref().map(|k| key(k, true)).transpose()?;
    Ok(CheckedUpload { identity, one_time_keys, fallback })
}

/// Whether a device with `count` unclaimed one-time keys must be told to upload more.
pub fn is_low(count: u64, limits: &KeyLimits) -> bool {
    count < limits.low_water
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodozemac::olm::Account;

    fn signed_upload(account: &mut Account, user: UserId, device: DeviceId, keys: usize) -> Upload {
        let ids = account.identity_keys();
        let (curve, ed) = (ids.curve25519.to_bytes(), *ids.ed25519.as_bytes());
        let identity_sig = account.sign(identity_signed_bytes(user, device, &curve, &ed)).to_bytes().to_vec();
        account.generate_one_time_keys(keys);
        let one_time_keys = account
            .one_time_keys()
            .into_iter()
            .map(|(id, k)| {
                let id = id.to_base64();
                let sig = account.sign(one_time_key_signed_bytes(device, &id, &k.to_bytes(), false)).to_bytes().to_vec();
                (id, k.to_bytes().to_vec(), sig)
            })
            .collect();
        Upload { identity: Some((curve.to_vec(), ed.to_vec(), identity_sig)), one_time_keys, fallback: None }
    }

    #[test]
    fn a_signed_upload_passes_and_keeps_every_key() {
        let (user, device) = (UserId::random(), DeviceId::random());
        let mut account = Account::new();
        let upload = signed_upload(&mut account, user, device, 5);
        let checked = check_upload(user, device, &upload, None, 0, &KeyLimits::default(), 7).unwrap();
        let identity = checked.identity.unwrap();
        assert_eq!(identity.ed25519, *account.ed25519_key().as_bytes());
        assert_eq!(identity.uploaded_ms, 7);
        assert_eq!(checked.one_time_keys.len(), 5);
    }

    #[test]
    fn keys_signed_for_another_device_or_as_another_kind_are_refused() {
        let (user, device) = (UserId::random(), DeviceId::random());
        let mut account = Account::new();
        let upload = signed_upload(&mut account, user, device, 1);
        // The same bytes claimed by another device of the same user.
        let other = check_upload(user, DeviceId::random(), &upload, None, 0, &KeyLimits::default(), 0);
        assert!(matches!(other, Err(KeyRefusal::BadSignature(_))), "{other:?}");
        // A one-time key's signature offered as a fallback key's.
        let mut as_fallback = upload.clone();
        as_fallback.fallback = as_fallback.one_time_keys.pop();
        let refused = check_upload(user, device, &as_fallback, None, 0, &KeyLimits::default(), 0);
        assert!(matches!(refused, Err(KeyRefusal::BadSignature(_))), "{refused:?}");
        // A flipped bit in a key.
        let mut tampered = upload;
        tampered.one_time_keys[0].1[0] ^= 1;
        assert!(matches!(check_upload(user, device, &tampered, None, 0, &KeyLimits::default(), 0), Err(KeyRefusal::BadSignature(_))));
    }

    #[test]
    fn one_time_keys_need_identity_keys_now_or_before() {
        let (user, device) = (UserId::random(), DeviceId::random());
        let mut account = Account::new();
        let mut upload = signed_upload(&mut account, user, device, 2);
        let published = check_upload(user, device, &upload, None, 0, &KeyLimits::default(), 0).unwrap().identity.unwrap();
        upload.identity = None;
        assert!(matches!(check_upload(user, device, &upload, None, 0, &KeyLimits::default(), 0), Err(KeyRefusal::Malformed(_))));
        assert_eq!(check_upload(user, device, &upload, Some(&published), 0, &KeyLimits::default(), 0).unwrap().one_time_keys.len(), 2);
    }

    #[test]
    fn sizes_and_limits_are_enforced() {
        let (user, device) = (UserId::random(), DeviceId::random());
        let mut account = Account::new();
        let limits = KeyLimits { per_upload: 3, unclaimed: 5, low_water: 2, target: 4 };
        let upload = signed_upload(&mut account, user, device, 4);
        assert!(matches!(check_upload(user, device, &upload, None, 0, &limits, 0), Err(KeyRefusal::TooMany(_))));
        let mut three = upload.clone();
        three.one_time_keys.truncate(3);
        assert!(check_upload(user, device, &three, None, 2, &limits, 0).is_ok());
        assert!(matches!(check_upload(user, device, &three, None, 3, &limits, 0), Err(KeyRefusal::TooMany(_))));
        let mut short = three.clone();
        short.identity.as_mut().unwrap().0.pop();
        assert!(matches!(check_upload(user, device, &short, None, 0, &limits, 0), Err(KeyRefusal::Malformed(_))));
        let mut long_id = three;
        long_id.one_time_keys[0].0 = "x".repeat(MAX_KEY_ID_BYTES + 1);
        assert!(matches!(check_upload(user, device, &long_id, None, 0, &limits, 0), Err(KeyRefusal::Malformed(_))));
        assert!(is_low(1, &limits) && !is_low(2, &limits));
    }
}
