//! The device's Olm side, without a socket: its account (identity, one-time and fallback
//! keys, and the signed `UploadKeys` the key directory checks, `crate::cores::keys`), and
//! its Olm sessions with peer devices (Double Ratchet, vodozemac), keyed by the peer's
//! Curve25519 identity key. `crate::sdk::device` does the network parts around it.

use std::collections::HashMap;

use vodozemac::Curve25519PublicKey;
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};

use crate::cores::keys::{identity_signed_bytes, one_time_key_signed_bytes};
use crate::ids::{DeviceId, UserId};
use crate::protocol::pb;
use crate::sdk::store::{Op, Table};

/// Olm failures.
#[derive(Debug, thiserror::Error)]
pub enum OlmError {
    /// The message does not decrypt with any session with this peer, and cannot open one.
    #[error("olm message from {sender_key} does not decrypt: {reason}")]
    Decrypt {
        /// The sender's Curve25519 key (base64).
        sender_key: String,
        /// Why.
        reason: String,
    },
    /// A session could not be created with a claimed key.
    #[error("cannot open an olm session: {0}")]
    Session(#[from] vodozemac::olm::SessionCreationError),
    /// A stored pickle does not read back.
    #[error("stored olm state unreadable: {0}")]
    Pickle(#[from] serde_json::Error),
}

/// Olm sessions hold at most this many sessions per peer (oldest dropped first): enough for
/// races where both sides open one at once, bounded against a peer that opens many.
pub const MAX_SESSIONS_PER_PEER: usize = 8;

/// The account and the Olm sessions of one device.
pub struct OlmState {
    /// The Olm account.
    pub account: Account,
    /// Sessions by peer Curve25519 key; the last is the one used to encrypt.
    sessions: HashMap<[u8; 32], Vec<Session>>,
}

impl std::fmt::Debug for OlmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OlmState").field("peers", &self.sessions.len()).finish()
    }
}

/// Name of the account record in [`Table::Meta`].
pub const ACCOUNT_RECORD: &[u8] = b"account";

impl OlmState {
    /// A new account.
    pub fn new() -> Self {
        OlmState { account: Account::new(), sessions: HashMap::new() }
    }

    /// From stored records: the account pickle and every (peer key, session pickles).
    pub fn restore(account: &[u8], sessions: crate::sdk::store::Records) -> Result<Self, OlmError> {
        let account = Account::from_pickle(serde_json::from_slice::<AccountPickle>(account)?);
        let mut map = HashMap::new();
        for (peer, pickles) in sessions {
            let Ok(peer) = <[u8; 32]>::try_from(&peer[..]) else { continue };
            let pickles: Vec<SessionPickle> = serde_json::from_slice(&pickles)?;
            map.insert(peer, pickles.into_iter().map(Session::from_pickle).collect());
        }
        Ok(OlmState { account, sessions: map })
    }

    /// The account record to store.
    pub fn account_op(&self) -> Result<Op, OlmError> {
        Ok(Op::Put(Table::Meta, ACCOUNT_RECORD.to_vec(), serde_json::to_vec(&self.account.pickle())?))
    }

    /// The sessions record of one peer to store.
    pub fn sessions_op(&self, peer: &Curve25519PublicKey) -> Result<Op, OlmError> {
        let pickles: Vec<SessionPickle> = self.sessions.get(peer.as_bytes()).map(|v| v.iter().map(Session::pickle).collect()).unwrap_or_default();
        Ok(Op::Put(Table::OlmSessions, peer.to_vec(), serde_json::to_vec(&pickles)?))
    }

    /// The identity keys, signed for `device` of `user` (the key directory's canonical
    /// bytes, `crate::cores::keys::identity_signed_bytes`).
    pub fn identity(&self, user: UserId, device: DeviceId) -> pb::DeviceIdentity {
        let curve = self.account.curve25519_key().to_bytes();
        let ed = *self.account.ed25519_key().as_bytes();
        let signature = self.account.sign(identity_signed_bytes(user, device, &curve, &ed)).to_bytes();
        pb::DeviceIdentity { curve25519: curve.to_vec().into(), ed25519: ed.to_vec().into(), signature: signature.to_vec().into() }
    }

    /// An upload of `count` new one-time keys (and a new fallback key if `fallback`), each
    /// signed over `crate::cores::keys::one_time_key_signed_bytes`; with the identity keys
    /// if `identity`. The keys are marked published: call once the caller will upload.
    pub fn upload(&mut self, user: UserId, device: DeviceId, count: usize, fallback: bool, identity: bool) -> pb::UploadKeys {
        self.account.generate_one_time_keys(count);
        let sign = |account: &Account, id: &vodozemac::KeyId, key: &Curve25519PublicKey, fallback: bool| {
            let id = id.to_base64();
            let signature = account.sign(one_time_key_signed_bytes(device, &id, &key.to_bytes(), fallback)).to_bytes();
            pb::SignedKey { key_id: id, key: key.to_vec().into(), signature: signature.to_vec().into() }
        };
        let mut one_time_keys: Vec<pb::SignedKey> =
            self.account.one_time_keys().iter().map(|(id, key)| sign(&self.account, id, key, false)).collect();
        one_time_keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        let fallback_key = if fallback {
            self.account.generate_fallback_key();
            self.account.fallback_key().iter().next().map(|(id, key)| sign(&self.account, id, key, true))
        } else {
            None
        };
        self.account.mark_keys_as_published();
        pb::UploadKeys { request_id: 0, identity: identity.then(|| self.identity(user, device)), one_time_keys, fallback_key }
    }

    /// Whether a session with this peer exists.
    pub fn has_session(&self, peer: &Curve25519PublicKey) -> bool {
        self.sessions.get(peer.as_bytes()).is_some_and(|v| !v.is_empty())
    }

    /// Opens an outbound session with a peer's identity key and a claimed one-time (or
    /// fallback) key, whose signature the caller has checked.
    pub fn open_outbound(&mut self, peer: Curve25519PublicKey, one_time_key: Curve25519PublicKey) -> Result<(), OlmError> {
        let session = self.account.create_outbound_session(SessionConfig::version_1(), peer, one_time_key)?;
        self.push(peer, session);
        Ok(())
    }

    fn push(&mut self, peer: Curve25519PublicKey, session: Session) {
        let list = self.sessions.entry(peer.to_bytes()).or_default();
        list.push(session);
        if list.len() > MAX_SESSIONS_PER_PEER {
            list.remove(0);
        }
    }

    /// Encrypts for a peer with its current session (None: no session; claim a key first).
    pub fn encrypt(&mut self, peer: &Curve25519PublicKey, plaintext: &[u8]) -> Option<OlmMessage> {
        let session = self.sessions.get_mut(peer.as_bytes())?.last_mut()?;
        // vodozemac fails only on a non-contributory key, which open_outbound refused.
        session.encrypt(plaintext).ok()
    }

    /// Decrypts a message from `sender`: with an existing session, or (a pre-key message)
    /// by opening an inbound session, which consumes the one-time key it names. The
    /// session that worked becomes the one used to answer. The account changes when a
    /// session is opened: store both the account and the peer's sessions afterwards.
    pub fn decrypt(&mut self, sender: Curve25519PublicKey, message: &OlmMessage) -> Result<Vec<u8>, OlmError> {
        let failed = |reason: String| OlmError::Decrypt { sender_key: sender.to_base64(), reason };
        let list = self.sessions.entry(sender.to_bytes()).or_default();
        // Pre-key messages name their session: only that one may decrypt them. Normal
        // messages are tried against each session, newest first.
        let pre_key_id = match message {
            OlmMessage::PreKey(m) => Some(m.session_id()),
            OlmMessage::Normal(_) => None,
        };
        let mut last_error = None;
        let mut matched = false;
        for i in (0..list.len()).rev() {
            if pre_key_id.as_ref().is_some_and(|id| *id != list[i].session_id()) {
                continue;
            }
            matched = true;
            match list[i].decrypt(message) {
                Ok(plain) => {
                    let used = list.remove(i);
                    list.push(used);
                    return Ok(plain);
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        match message {
            // A pre-key message of a session we do not have yet opens it (a replay of one
            // we have fails above: its message key is used up).
            OlmMessage::PreKey(m) if !matched => {
                let created = self.account.create_inbound_session(SessionConfig::version_1(), sender, m).map_err(|e| failed(e.to_string()))?;
                self.push(sender, created.session);
                Ok(created.plaintext)
            }
            _ => Err(failed(last_error.unwrap_or_else(|| "no olm session with this device".into()))),
        }
    }
}

impl Default for OlmState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cores::keys::{KeyLimits, Upload, check_upload};

    fn as_upload(u: &pb::UploadKeys) -> Upload {
        Upload {
            identity: u.identity.as_ref().map(|i| (i.curve25519.to_vec(), i.ed25519.to_vec(), i.signature.to_vec())),
            one_time_keys: u.one_time_keys.iter().map(|k| (k.key_id.clone(), k.key.to_vec(), k.signature.to_vec())).collect(),
            fallback: u.fallback_key.as_ref().map(|k| (k.key_id.clone(), k.key.to_vec(), k.signature.to_vec())),
        }
    }

    #[test]
    fn uploads_pass_the_servers_checks() {
        let (user, device) = (UserId::random(), DeviceId::random());
        let mut olm = OlmState::new();
        let first = olm.upload(user, device, 50, true, true);
        let checked = check_upload(user, device, &as_upload(&first), None, 0, &KeyLimits::default(), 1).expect("passes");
        assert_eq!(checked.one_time_keys.len(), 50);
        assert!(checked.fallback.is_some());
        // A top-up: only the new keys, signed against the published identity.
        let more = olm.upload(user, device, 5, false, false);
        assert_eq!(more.one_time_keys.len(), 5);
        check_upload(user, device, &as_upload(&more), checked.identity.as_ref(), 50, &KeyLimits::default(), 2).expect("top-up passes");
    }

    #[test]
    fn sessions_open_from_a_claimed_key_and_survive_a_pickle() {
        let (mut alice, mut bob) = (OlmState::new(), OlmState::new());
        let upload = bob.upload(UserId::random(), DeviceId::random(), 1, false, true);
        let otk = Curve25519PublicKey::from_slice(&upload.one_time_keys[0].key).unwrap();
        let bob_key = bob.account.curve25519_key();
        let alice_key = alice.account.curve25519_key();
        alice.open_outbound(bob_key, otk).unwrap();
        let m1 = alice.encrypt(&bob_key, b"one").unwrap();
        assert_eq!(bob.decrypt(alice_key, &m1).unwrap(), b"one");
        // A replay of the same pre-key message does not decrypt twice.
        assert!(bob.decrypt(alice_key, &m1).is_err());
        let answer = bob.encrypt(&alice_key, b"two").unwrap();
        assert_eq!(alice.decrypt(bob_key, &answer).unwrap(), b"two");
        // Through the store's records.
        let Op::Put(_, _, account) = bob.account_op().unwrap() else { unreachable!() };
        let Op::Put(_, peer, sessions) = bob.sessions_op(&alice_key).unwrap() else { unreachable!() };
        let mut bob = OlmState::restore(&account, vec![(peer, sessions)]).unwrap();
        let m3 = alice.encrypt(&bob_key, b"three").unwrap();
        assert_eq!(bob.decrypt(alice_key, &m3).unwrap(), b"three");
        // A flipped bit is refused.
        let m4 = alice.encrypt(&bob_key, b"four").unwrap();
        let (t, mut bytes) = m4.to_parts();
        let n = bytes.len();
        bytes[n - 12] ^= 1;
        let tampered = OlmMessage::from_parts(t, &bytes).unwrap();
        assert!(matches!(bob.decrypt(alice_key, &tampered), Err(OlmError::Decrypt { .. })));
    }
}
