//! The device's Megolm side, without a socket: an outbound group session per conversation
//! (with its rotation state, `crate::cores::megolm_rotation`), inbound group sessions per
//! (sender Curve25519 key, session id), and the decryption of conversation messages with
//! every check the envelope and the plaintext allow.

use std::collections::HashMap;

use prost::Message as _;
use serde::{Deserialize, Serialize};
use vodozemac::Curve25519PublicKey;
use vodozemac::megolm::{
    DecryptionError, ExportedSessionKey, GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle, SessionConfig, SessionKey,
};

use crate::cores::megolm_rotation::{Rotation, RotationPolicy, SessionState};
use crate::ids::{ConversationId, DeviceId, UserId};
use crate::sdk::envelope::{self, EnvelopeError, pb as e2ee};
use crate::sdk::store::{Op, Table};

/// Why a conversation message does not decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The payload is not an envelope (sent without encryption) or is malformed.
    #[error("not decryptable: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The room key of this session has not arrived (yet): kept and retried when it does.
    #[error("the room key of session {session_id} has not arrived")]
    MissingKey {
        /// The Megolm session id.
        session_id: String,
    },
    /// The key held starts after this message (it was shared with this device later):
    /// kept and retried if an earlier copy of the key arrives (a forwarded key).
    #[error("the room key of session {session_id} starts at message {first_known}, after this one ({index})")]
    UnknownIndex {
        /// The Megolm session id.
        session_id: String,
        /// First index the key held can decrypt.
        first_known: u32,
        /// The message's index.
        index: u32,
    },
    /// The ciphertext, its MAC or its signature does not verify: altered in transit or at
    /// rest. Never retried.
    #[error("tampered ciphertext rejected: {0}")]
    Tampered(String),
    /// The message claims a sender other than the device that shared the session, or a
    /// conversation other than the one it is in, or reuses a message index: refused.
    #[error("message refused: {0}")]
    Forged(String),
}

impl DecryptError {
    /// Whether the message may decrypt once a key arrives (kept as pending).
    pub fn is_retryable(&self) -> bool {
        matches!(self, DecryptError::MissingKey { .. } | DecryptError::UnknownIndex { .. })
    }
}

/// An inbound session and who it belongs to (as learnt from the Olm channel it came by).
pub struct Inbound {
    /// The session.
    pub session: InboundGroupSession,
    /// The conversation it is for.
    pub conversation: ConversationId,
    /// The device that created it.
    pub sender_user: UserId,
    /// The device that created it.
    pub sender_device: DeviceId,
    /// That device's Curve25519 key.
    pub sender_key: Curve25519PublicKey,
}

#[derive(Serialize, Deserialize)]
struct InboundRecord {
    pickle: InboundGroupSessionPickle,
    conversation: ConversationId,
    sender_user: UserId,
    sender_device: DeviceId,
    sender_key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct OutboundRecord {
    pickle: GroupSessionPickle,
    state: Option<SessionState>,
}

/// An outbound session of one conversation and its rotation state.
pub struct Outbound {
    /// The session (None before the first message).
    pub session: Option<GroupSession>,
    /// Rotation rules' state.
    pub rotation: Rotation,
}

/// A decrypted conversation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The plaintext.
    pub plaintext: e2ee::RoomPlaintext,
    /// The Megolm message index.
    pub index: u32,
    /// The session it was encrypted with.
    pub session_id: String,
}

/// Every Megolm session of one device.
#[derive(Default)]
pub struct MegolmState {
    inbound: HashMap<([u8; 32], String), Inbound>,
    outbound: HashMap<ConversationId, Outbound>,
    /// (session, index) → (conversation, seq) of what was decrypted: the same index under
    /// another seq is a replay by the server.
    seen_indices: HashMap<(String, u32), (ConversationId, u64)>,
}

impl std::fmt::Debug for MegolmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MegolmState").field("inbound", &self.inbound.len()).field("outbound", &self.outbound.len()).finish()
    }
}

/// Name of an inbound session's record.
fn inbound_name(sender_key: &Curve25519PublicKey, session_id: &str) -> Vec<u8> {
    [sender_key.as_bytes(), session_id.as_bytes()].concat()
}

impl MegolmState {
    /// From stored records.
    pub fn restore(policy: RotationPolicy, inbound: Vec<(Vec<u8>, Vec<u8>)>, outbound: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Self, serde_json::Error> {
        let mut state = MegolmState::default();
        for (_, value) in inbound {
            let r: InboundRecord = serde_json::from_slice(&value)?;
            let session = InboundGroupSession::from_pickle(r.pickle);
            let sender_key = Curve25519PublicKey::from_bytes(r.sender_key);
            state.inbound.insert(
                (r.sender_key, session.session_id()),
                Inbound { session, conversation: r.conversation, sender_user: r.sender_user, sender_device: r.sender_device, sender_key },
            );
        }
        for (name, value) in outbound {
            let Ok(id) = crate::protocol::parse_id::<ConversationId>("conversation", &name) else { continue };
            let r: OutboundRecord = serde_json::from_slice(&value)?;
            let session = r.state.as_ref().map(|_| GroupSession::from_pickle(r.pickle));
            state.outbound.insert(id, Outbound { session, rotation: Rotation::restore(policy, r.state) });
        }
        Ok(state)
    }

    /// The outbound state of a conversation (created empty).
    pub fn outbound(&mut self, conversation: ConversationId, policy: RotationPolicy) -> &mut Outbound {
        self.outbound.entry(conversation).or_insert_with(|| Outbound { session: None, rotation: Rotation::new(policy) })
    }

    /// A device presents new identity keys: every outbound session gives it the key again;
    /// returns the records to store.
    pub fn device_replaced(&mut self, device: crate::cores::megolm_rotation::DeviceAddr) -> Result<Vec<Op>, serde_json::Error> {
        let conversations: Vec<ConversationId> = self.outbound.keys().copied().collect();
        let mut ops = Vec::new();
        for c in conversations {
            if let Some(o) = self.outbound.get_mut(&c) {
                o.rotation.device_replaced(device);
            }
            ops.extend(self.outbound_op(c)?);
        }
        Ok(ops)
    }

    /// The record of a conversation's outbound session.
    pub fn outbound_op(&self, conversation: ConversationId) -> Result<Option<Op>, serde_json::Error> {
        let Some(o) = self.outbound.get(&conversation) else { return Ok(None) };
        let Some(session) = &o.session else { return Ok(None) };
        let record = OutboundRecord { pickle: session.pickle(), state: o.rotation.state().cloned() };
        Ok(Some(Op::Put(Table::OutboundGroup, conversation.uuid().as_bytes().to_vec(), serde_json::to_vec(&record)?)))
    }

    /// Adds an inbound session (a room key, a forwarded key, or our own new session). An
    /// existing session with the same id is replaced only by one that starts earlier and
    /// is connected to it (the same ratchet): a forwarded key can never swap a session for
    /// another with the same id. Returns the record to store, or None when nothing changed.
    pub fn add_inbound(&mut self, mut new: Inbound) -> Result<Option<Op>, serde_json::Error> {
        let id = new.session.session_id();
        let key = (new.sender_key.to_bytes(), id.clone());
        if let Some(old) = self.inbound.get_mut(&key)
            && (new.session.first_known_index() >= old.session.first_known_index() || !new.session.connected(&mut old.session))
        {
            return Ok(None);
        }
        let record = InboundRecord {
            pickle: new.session.pickle(),
            conversation: new.conversation,
            sender_user: new.sender_user,
            sender_device: new.sender_device,
            sender_key: new.sender_key.to_bytes(),
        };
        let op = Op::Put(Table::InboundGroup, inbound_name(&new.sender_key, &id), serde_json::to_vec(&record)?);
        self.inbound.insert(key, new);
        Ok(Some(op))
    }

    /// An inbound session from a room key sent by (sender_user, sender_device, sender_key).
    pub fn inbound_from_room_key(
        room_key: &e2ee::RoomKey,
        sender_user: UserId,
        sender_device: DeviceId,
        sender_key: Curve25519PublicKey,
    ) -> Result<Inbound, String> {
        let conversation = crate::protocol::parse_id::<ConversationId>("conversation_id", &room_key.conversation_id).map_err(|e| e.to_string())?;
        let key = SessionKey::from_bytes(&room_key.session_key).map_err(|e| format!("room key: {e}"))?;
        let session = InboundGroupSession::new(&key, SessionConfig::version_1());
        if session.session_id() != room_key.session_id {
            return Err("room key's session id does not match its key".into());
        }
        Ok(Inbound { session, conversation, sender_user, sender_device, sender_key })
    }

    /// An inbound session from a forwarded key (already checked to come from our own user).
    pub fn inbound_from_forwarded(key: &e2ee::ForwardedRoomKey) -> Result<Inbound, String> {
        let conversation = crate::protocol::parse_id::<ConversationId>("conversation_id", &key.conversation_id).map_err(|e| e.to_string())?;
        let sender_user = crate::protocol::parse_id::<UserId>("origin_user_id", &key.origin_user_id).map_err(|e| e.to_string())?;
        let sender_device = crate::protocol::parse_id::<DeviceId>("origin_device_id", &key.origin_device_id).map_err(|e| e.to_string())?;
        let sender_key = Curve25519PublicKey::from_slice(&key.origin_sender_key).map_err(|e| format!("origin key: {e}"))?;
        let exported = ExportedSessionKey::from_bytes(&key.exported_session_key).map_err(|e| format!("forwarded key: {e}"))?;
        let session = InboundGroupSession::import(&exported, SessionConfig::version_1());
        if session.session_id() != key.session_id {
            return Err("forwarded key's session id does not match its key".into());
        }
        Ok(Inbound { session, conversation, sender_user, sender_device, sender_key })
    }

    /// Every inbound session, exported at its first known index, as forwarded keys.
    pub fn export_all(&self) -> Vec<e2ee::ForwardedRoomKey> {
        let mut out: Vec<_> = self
            .inbound
            .values()
            .map(|i| e2ee::ForwardedRoomKey {
                conversation_id: i.conversation.uuid().as_bytes().to_vec().into(),
                origin_user_id: i.sender_user.uuid().as_bytes().to_vec().into(),
                origin_device_id: i.sender_device.uuid().as_bytes().to_vec().into(),
                origin_sender_key: i.sender_key.to_vec().into(),
                session_id: i.session.session_id(),
                exported_session_key: i.session.export_at_first_known_index().to_bytes().into(),
            })
            .collect();
        out.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        out
    }

    /// Whether an inbound session exists.
    pub fn has_inbound(&self, sender_key: &Curve25519PublicKey, session_id: &str) -> bool {
        self.inbound.contains_key(&(sender_key.to_bytes(), session_id.to_owned()))
    }

    /// Decrypts a conversation message's payload, sent in `conversation` at `seq` by
    /// (`sender_user`, `sender_device`) according to the server.
    pub fn decrypt(
        &mut self,
        conversation: ConversationId,
        seq: u64,
        sender_user: UserId,
        sender_device: DeviceId,
        payload: &[u8],
    ) -> Result<Opened, DecryptError> {
        let env = envelope::open_megolm(payload)?;
        let Some(inbound) = self.inbound.get_mut(&(env.sender_key.to_bytes(), env.session_id.clone())) else {
            return Err(DecryptError::MissingKey { session_id: env.session_id });
        };
        if inbound.sender_user != sender_user || inbound.sender_device != sender_device || env.sender_device != sender_device {
            return Err(DecryptError::Forged(format!(
                "session {} belongs to device {} of user {}, not the sender {sender_device} of user {sender_user}",
                env.session_id, inbound.sender_device, inbound.sender_user
            )));
        }
        if inbound.conversation != conversation {
            return Err(DecryptError::Forged(format!("session {} is for conversation {}, not {conversation}", env.session_id, inbound.conversation)));
        }
        let decrypted = inbound.session.decrypt(&env.message).map_err(|e| match e {
            DecryptionError::UnknownMessageIndex(first_known, index) => {
                DecryptError::UnknownIndex { session_id: env.session_id.clone(), first_known, index }
            }
            other => DecryptError::Tampered(other.to_string()),
        })?;
        let plaintext: e2ee::RoomPlaintext = envelope::plaintext(&decrypted.plaintext).map_err(|e| DecryptError::Tampered(e.to_string()))?;
        if plaintext.conversation_id[..] != conversation.uuid().as_bytes()[..] {
            return Err(DecryptError::Forged("the plaintext names another conversation (replayed)".into()));
        }
        match self.seen_indices.insert((env.session_id.clone(), decrypted.message_index), (conversation, seq)) {
            Some(earlier) if earlier != (conversation, seq) => {
                return Err(DecryptError::Forged(format!(
                    "message index {} of session {} was already used at seq {} (replayed)",
                    decrypted.message_index, env.session_id, earlier.1
                )));
            }
            _ => {}
        }
        Ok(Opened { plaintext, index: decrypted.message_index, session_id: env.session_id })
    }

    /// Encrypts a plaintext with a conversation's current outbound session; returns the
    /// envelope bytes. None if the conversation has no session (plan and rotate first).
    pub fn encrypt(
        &mut self,
        conversation: ConversationId,
        sender_key: Curve25519PublicKey,
        sender_device: DeviceId,
        plaintext: &e2ee::RoomPlaintext,
    ) -> Option<Vec<u8>> {
        let out = self.outbound.get_mut(&conversation)?;
        let session = out.session.as_mut()?;
        let message = session.encrypt(plaintext.encode_to_vec());
        out.rotation.encrypted();
        Some(envelope::megolm(sender_key, sender_device, &session.session_id(), &message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(conversation: ConversationId, t: &str) -> e2ee::RoomPlaintext {
        e2ee::RoomPlaintext {
            conversation_id: conversation.uuid().as_bytes().to_vec().into(),
            body: Some(e2ee::room_plaintext::Body::Text(t.into())),
        }
    }

    fn setup() -> (MegolmState, MegolmState, ConversationId, UserId, DeviceId, Curve25519PublicKey) {
        let (conversation, user, device) = (ConversationId::random(), UserId::random(), DeviceId::random());
        let sender_key = vodozemac::olm::Account::new().curve25519_key();
        let mut alice = MegolmState::default();
        let out = alice.outbound(conversation, RotationPolicy::default());
        let session = GroupSession::new(SessionConfig::version_1());
        let key = e2ee::RoomKey {
            conversation_id: conversation.uuid().as_bytes().to_vec().into(),
            session_id: session.session_id(),
            session_key: session.session_key().to_bytes().into(),
        };
        out.session = Some(session);
        out.rotation.rotated(0);
        let mut bob = MegolmState::default();
        bob.add_inbound(MegolmState::inbound_from_room_key(&key, user, device, sender_key).unwrap()).unwrap();
        (alice, bob, conversation, user, device, sender_key)
    }

    #[test]
    fn a_message_decrypts_once_and_tampering_forgery_and_replay_are_refused() {
        let (mut alice, mut bob, conversation, user, device, key) = setup();
        let payload = alice.encrypt(conversation, key, device, &text(conversation, "hi")).unwrap();
        let opened = bob.decrypt(conversation, 1, user, device, &payload).unwrap();
        assert_eq!(opened.plaintext, text(conversation, "hi"));
        assert_eq!(bob.decrypt(conversation, 1, user, device, &payload).unwrap().index, 0, "the same message again is fine");
        assert!(matches!(bob.decrypt(conversation, 2, user, device, &payload), Err(DecryptError::Forged(_))), "replayed under a new seq");
        assert!(matches!(bob.decrypt(conversation, 1, UserId::random(), device, &payload), Err(DecryptError::Forged(_))));
        assert!(matches!(bob.decrypt(ConversationId::random(), 1, user, device, &payload), Err(DecryptError::Forged(_))));

        let payload = alice.encrypt(conversation, key, device, &text(conversation, "second")).unwrap();
        let mut env = <envelope::pb::Envelope as prost::Message>::decode(&payload[..]).unwrap();
        let mut ct = env.ciphertext.to_vec();
        ct[10] ^= 1;
        env.ciphertext = ct.into();
        let err = bob.decrypt(conversation, 3, user, device, &env.encode_to_vec()).unwrap_err();
        assert!(matches!(err, DecryptError::Tampered(_)), "{err:?}");
        assert!(!err.is_retryable());
        assert_eq!(bob.decrypt(conversation, 3, user, device, &payload).unwrap().plaintext, text(conversation, "second"));
    }

    #[test]
    fn a_missing_key_is_retryable_and_a_forwarded_key_fills_it() {
        let (mut alice, bob, conversation, user, device, key) = setup();
        let payload = alice.encrypt(conversation, key, device, &text(conversation, "early")).unwrap();
        let mut carol = MegolmState::default();
        let err = carol.decrypt(conversation, 1, user, device, &payload).unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        for forwarded in bob.export_all() {
            carol.add_inbound(MegolmState::inbound_from_forwarded(&forwarded).unwrap()).unwrap();
        }
        assert_eq!(carol.decrypt(conversation, 1, user, device, &payload).unwrap().plaintext, text(conversation, "early"));
    }

    #[test]
    fn sessions_survive_the_store_records() {
        let (mut alice, bob, conversation, user, device, key) = setup();
        let Some(Op::Put(_, name, value)) = alice.outbound_op(conversation).unwrap() else { panic!("a record") };
        let mut restored = MegolmState::restore(RotationPolicy::default(), vec![], vec![(name, value)]).unwrap();
        let payload = restored.encrypt(conversation, key, device, &text(conversation, "after restart")).unwrap();
        let _ = alice.encrypt(conversation, key, device, &text(conversation, "x"));
        let inbound: Vec<_> = bob
            .inbound
            .values()
            .map(|i| {
                let r = InboundRecord {
                    pickle: i.session.pickle(),
                    conversation: i.conversation,
                    sender_user: i.sender_user,
                    sender_device: i.sender_device,
                    sender_key: i.sender_key.to_bytes(),
                };
                (vec![], serde_json::to_vec(&r).unwrap())
            })
            .collect();
        let mut bob = MegolmState::restore(RotationPolicy::default(), inbound, vec![]).unwrap();
        assert_eq!(bob.decrypt(conversation, 1, user, device, &payload).unwrap().plaintext, text(conversation, "after restart"));
    }
}
