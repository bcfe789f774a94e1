//! [`E2ee`]: one device's end-to-end encryption over a [`Connection`]. It publishes the
//! device's keys, encrypts conversation messages with Megolm (rotating and sharing room
//! keys over Olm to-device messages as `crate::cores::megolm_rotation` decides), and turns
//! received frames into events: decrypted messages, messages it cannot decrypt (yet),
//! identity key changes, and the frames it does not consume.
//!
//! Every change of secret state is written to the encrypted store ([`SecretStore`]) before
//! anything that depends on it leaves the device (a Megolm index is never reused after a
//! crash; an Olm session is stored before its message is sent).
//!
//! This file holds the state, the key directory and the sending side; `receive.rs` turns
//! received frames into events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use bytes::Bytes;
use prost::Message as _;
use vodozemac::Curve25519PublicKey;
use vodozemac::megolm::{GroupSession, SessionConfig};

use crate::client::{ClientError, Connection};
use crate::cores::keys::{identity_signed_bytes, one_time_key_signed_bytes, verify};
use crate::cores::megolm_rotation::{DeviceAddr, RotationPolicy};
use crate::ids::{ConversationId, DeviceId, UserId};
use crate::protocol::{ErrorCode, id_bytes, parse_id, pb};
use crate::sdk::envelope::{self, pb as e2ee};
use crate::sdk::events::Body;
use crate::sdk::megolm::MegolmState;
use crate::sdk::olm::{OlmError, OlmState};
use crate::sdk::safety::{self, KeyChange, SeenDevices};
use crate::sdk::store::{Op, SecretStore, StoreError, StoreKey, Table};

mod receive;

/// Settings of the SDK.
#[derive(Debug, Clone, Copy)]
pub struct E2eeConfig {
    /// When outbound Megolm sessions are replaced regardless of membership.
    pub rotation: RotationPolicy,
    /// One-time keys published at first (the server's target is 50).
    pub one_time_keys: usize,
}

impl Default for E2eeConfig {
    fn default() -> Self {
        E2eeConfig { rotation: RotationPolicy::default(), one_time_keys: 50 }
    }
}

/// SDK failures (a message that does not decrypt is not one: it is an [`Event`](crate::sdk::Event)).
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The connection failed or the server refused a request.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The local store failed, was opened with the wrong key, or was altered.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An Olm operation failed.
    #[error(transparent)]
    Olm(#[from] OlmError),
    /// Stored state does not read back.
    #[error("stored state unreadable: {0}")]
    Pickle(#[from] serde_json::Error),
    /// The store belongs to another device.
    #[error("this store belongs to device {stored} of user {user}, not {wanted}")]
    OtherDevice {
        /// Its user.
        user: UserId,
        /// Its device.
        stored: DeviceId,
        /// The device asked for.
        wanted: DeviceId,
    },
    /// The server sent something malformed (an id, a key).
    #[error("malformed answer from the server: {0}")]
    Malformed(String),
}

/// A peer device's identity keys (signature checked): Curve25519, Ed25519.
type Keys = ([u8; 32], [u8; 32]);

const IDS_RECORD: &[u8] = b"ids";
const PUBLISHED_RECORD: &[u8] = b"published";
const POSITION_RECORD: &[u8] = b"to-device-position";
/// Forwarded keys per Olm message (each to-device payload is at most 16 KiB).
const FORWARDED_PER_MESSAGE: usize = 40;
/// Targets per SendToDevice (the server's limit).
const TARGETS_PER_SEND: usize = 1024;
/// Devices per ClaimKeys and users per QueryDevices (the server's limits).
const CLAIMS_PER_REQUEST: usize = 256;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn malformed(e: impl std::fmt::Display) -> SdkError {
    SdkError::Malformed(e.to_string())
}

/// One device's end-to-end encryption state.
pub struct E2ee {
    user: UserId,
    device: DeviceId,
    config: E2eeConfig,
    store: SecretStore,
    olm: OlmState,
    megolm: MegolmState,
    /// Current device lists (signatures checked), by user.
    devices: HashMap<UserId, BTreeMap<DeviceId, Keys>>,
    /// What was first seen of each user (trust on first use), persisted.
    seen: HashMap<UserId, SeenDevices>,
    /// Messages waiting for their room key, by (conversation, seq).
    pending: BTreeMap<(ConversationId, u64), pb::Message>,
    /// Highest to-device position handled.
    to_device_position: u64,
    /// Device-list changes not reported yet.
    key_changes: Vec<KeyChange>,
}

impl std::fmt::Debug for E2ee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2ee").field("user", &self.user).field("device", &self.device).finish()
    }
}

impl E2ee {
    /// Opens (or creates) the SDK state of `device` of `user` in the store at `path`,
    /// encrypted with `key`.
    pub fn open(path: &Path, key: &StoreKey, user: UserId, device: DeviceId, config: E2eeConfig) -> Result<Self, SdkError> {
        let store = SecretStore::open(path, key)?;
        match store.get(Table::Meta, IDS_RECORD)? {
            Some(ids) => {
                let (u, d): (UserId, DeviceId) = serde_json::from_slice(&ids)?;
                if (u, d) != (user, device) {
                    return Err(SdkError::OtherDevice { user: u, stored: d, wanted: device });
                }
            }
            None => store.put(Table::Meta, IDS_RECORD, &serde_json::to_vec(&(user, device))?)?,
        }
        let olm = match store.get(Table::Meta, crate::sdk::olm::ACCOUNT_RECORD)? {
            Some(account) => OlmState::restore(&account, store.all(Table::OlmSessions)?)?,
            None => {
                let olm = OlmState::new();
                store.write(vec![olm.account_op()?])?;
                olm
            }
        };
        let megolm = MegolmState::restore(config.rotation, store.all(Table::InboundGroup)?, store.all(Table::OutboundGroup)?)?;
        let mut seen = HashMap::new();
        for (name, value) in store.all(Table::PeerDevices)? {
            let user = parse_id::<UserId>("user", &name).map_err(malformed)?;
            seen.insert(user, serde_json::from_slice(&value)?);
        }
        let mut pending = BTreeMap::new();
        for (_, value) in store.all(Table::Pending)? {
            let m = pb::Message::decode(&value[..]).map_err(malformed)?;
            let conversation = parse_id::<ConversationId>("conversation", &m.conversation_id).map_err(malformed)?;
            pending.insert((conversation, m.seq), m);
        }
        let to_device_position = match store.get(Table::Meta, POSITION_RECORD)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => 0,
        };
        Ok(E2ee { user, device, config, store, olm, megolm, devices: HashMap::new(), seen, pending, to_device_position, key_changes: Vec::new() })
    }

    /// This device's user.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// This device's Curve25519 identity key.
    pub fn curve25519(&self) -> Curve25519PublicKey {
        self.olm.account.curve25519_key()
    }

    /// This device's Ed25519 identity key.
    pub fn ed25519(&self) -> [u8; 32] {
        *self.olm.account.ed25519_key().as_bytes()
    }

    /// Messages waiting for their room key.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Publishes the identity keys, one-time keys and a fallback key, once per device (a
    /// no-op after the first success); then learns its own user's devices.
    pub async fn publish_keys(&mut self, conn: &mut Connection) -> Result<(), SdkError> {
        if self.store.get(Table::Meta, PUBLISHED_RECORD)?.is_none() {
            let upload = self.olm.upload(self.user, self.device, self.config.one_time_keys, true, true);
            // The private halves are stored before the public ones leave.
            self.store.write(vec![self.olm.account_op()?])?;
            conn.upload_keys(upload).await?;
            self.store.put(Table::Meta, PUBLISHED_RECORD, b"1")?;
        }
        self.refresh(conn, &[self.user]).await?;
        Ok(())
    }

    /// Queries device lists, checks every signature, records what is new (trust on first
    /// use), queues the changes for the next [`Self::handle`] and returns them. A user the server no longer lets us see (no shared
    /// conversation) is forgotten from the current lists.
    async fn refresh(&mut self, conn: &mut Connection, users: &[UserId]) -> Result<Vec<KeyChange>, SdkError> {
        let mut lists = Vec::new();
        for chunk in users.chunks(CLAIMS_PER_REQUEST) {
            match conn.query_devices(chunk).await {
                Ok(list) => lists.extend(list.users),
                // One user out of reach refuses the whole query: ask one by one.
                Err(ClientError::Rejected { code: ErrorCode::NoSharedConversation, .. }) => {
                    for user in chunk {
                        match conn.query_devices(&[*user]).await {
                            Ok(list) => lists.extend(list.users),
                            Err(ClientError::Rejected { code: ErrorCode::NoSharedConversation, .. }) => {
                                self.devices.remove(user);
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut changes = Vec::new();
        let mut ops = Vec::new();
        for listed in lists {
            let user = parse_id::<UserId>("user_id", &listed.user_id).map_err(malformed)?;
            let mut devices = BTreeMap::new();
            for d in listed.devices {
                let device = parse_id::<DeviceId>("device_id", &d.device_id).map_err(malformed)?;
                let Some(identity) = d.identity else { continue };
                let (Ok(curve), Ok(ed)) = (<[u8; 32]>::try_from(&identity.curve25519[..]), <[u8; 32]>::try_from(&identity.ed25519[..])) else {
                    continue;
                };
                // A device whose keys are not signed by itself for this user and device is
                // left out: nothing is shared with it.
                if !verify(&ed, &identity_signed_bytes(user, device, &curve, &ed), &identity.signature) {
                    tracing::warn!(%user, %device, "device keys with a bad signature ignored");
                    continue;
                }
                devices.insert(device, (curve, ed));
            }
            let (mut found, next) = safety::compare(user, self.seen.get(&user), &devices);
            for change in &found {
                if let KeyChange::IdentityChanged { user, device, .. } = change {
                    ops.extend(self.megolm.device_replaced((*user, *device))?);
                }
            }
            if self.seen.get(&user) != Some(&next) {
                ops.push(Op::Put(Table::PeerDevices, user.uuid().as_bytes().to_vec(), serde_json::to_vec(&next)?));
                self.seen.insert(user, next);
            }
            changes.append(&mut found);
            self.devices.insert(user, devices);
        }
        if !ops.is_empty() {
            self.store.write(ops)?;
        }
        self.key_changes.extend(changes.iter().cloned());
        Ok(changes)
    }

    /// The keys of one device, from the current lists or a fresh query.
    async fn device_keys(&mut self, conn: &mut Connection, user: UserId, device: DeviceId) -> Result<Option<Keys>, SdkError> {
        if let Some(keys) = self.devices.get(&user).and_then(|d| d.get(&device)) {
            return Ok(Some(*keys));
        }
        self.refresh(conn, &[user]).await?;
        Ok(self.devices.get(&user).and_then(|d| d.get(&device)).copied())
    }

    /// Every device of these users but this one.
    async fn recipients(&mut self, conn: &mut Connection, members: &[UserId]) -> Result<BTreeSet<DeviceAddr>, SdkError> {
        let unknown: Vec<UserId> = members.iter().filter(|u| !self.devices.contains_key(u)).copied().collect();
        if !unknown.is_empty() {
            self.refresh(conn, &unknown).await?;
        }
        let mut out = BTreeSet::new();
        for user in members {
            for device in self.devices.get(user).into_iter().flat_map(|d| d.keys()) {
                if (*user, *device) != (self.user, self.device) {
                    out.insert((*user, *device));
                }
            }
        }
        Ok(out)
    }

    /// Opens Olm sessions (claiming one-time keys) with the devices that have none.
    async fn ensure_olm(&mut self, conn: &mut Connection, targets: &[DeviceAddr]) -> Result<(), SdkError> {
        let missing: Vec<DeviceAddr> = targets
            .iter()
            .filter(|(u, d)| {
                self.devices.get(u).and_then(|l| l.get(d)).is_some_and(|(curve, _)| !self.olm.has_session(&Curve25519PublicKey::from_bytes(*curve)))
            })
            .copied()
            .collect();
        let mut ops = Vec::new();
        for chunk in missing.chunks(CLAIMS_PER_REQUEST) {
            let claimed = conn.claim_keys(chunk).await?;
            for c in claimed.keys {
                let (Ok(user), Ok(device)) = (parse_id::<UserId>("user_id", &c.user_id), parse_id::<DeviceId>("device_id", &c.device_id)) else {
                    continue;
                };
                let (Some((curve, ed)), Some(key)) = (self.devices.get(&user).and_then(|l| l.get(&device)).copied(), c.key) else { continue };
                let Ok(otk) = <[u8; 32]>::try_from(&key.key[..]) else { continue };
                // A one-time key not signed by the device is refused (a server could
                // otherwise hand out a key of its own).
                if !verify(&ed, &one_time_key_signed_bytes(device, &key.key_id, &otk, c.fallback), &key.signature) {
                    tracing::warn!(%user, %device, "claimed key with a bad signature refused");
                    continue;
                }
                let peer = Curve25519PublicKey::from_bytes(curve);
                if let Err(e) = self.olm.open_outbound(peer, Curve25519PublicKey::from_bytes(otk)) {
                    tracing::warn!(%user, %device, error = %e, "olm session not opened");
                    continue;
                }
                ops.push(self.olm.sessions_op(&peer)?);
            }
        }
        if !ops.is_empty() {
            self.store.write(ops)?;
        }
        Ok(())
    }

    /// Sends each target its content over Olm (opening sessions as needed); returns the
    /// targets it was sent to (devices without any claimable key are left out).
    async fn send_olm(&mut self, conn: &mut Connection, items: Vec<(DeviceAddr, e2ee::olm_plaintext::Content)>) -> Result<Vec<DeviceAddr>, SdkError> {
        let targets: Vec<DeviceAddr> = items.iter().map(|(d, _)| *d).collect();
        self.ensure_olm(conn, &targets).await?;
        let me = (self.user, self.device, self.ed25519(), self.curve25519());
        let mut wire = Vec::new();
        let mut ops = Vec::new();
        for ((user, device), content) in items {
            let Some((curve, ed)) = self.devices.get(&user).and_then(|l| l.get(&device)).copied() else { continue };
            let peer = Curve25519PublicKey::from_bytes(curve);
            let plaintext = e2ee::OlmPlaintext {
                sender_user_id: id_bytes(me.0),
                sender_device_id: id_bytes(me.1),
                sender_ed25519: me.2.to_vec().into(),
                recipient_user_id: id_bytes(user),
                recipient_device_id: id_bytes(device),
                recipient_ed25519: ed.to_vec().into(),
                content: Some(content),
            };
            let Some(message) = self.olm.encrypt(&peer, &plaintext.encode_to_vec()) else { continue };
            ops.push(self.olm.sessions_op(&peer)?);
            wire.push((user, device, Bytes::from(envelope::olm(me.3, me.1, &message))));
        }
        // The ratchets moved: stored before the messages leave.
        if !ops.is_empty() {
            self.store.write(ops)?;
        }
        let mut delivered = Vec::with_capacity(wire.len());
        for chunk in wire.chunks(TARGETS_PER_SEND) {
            match conn.send_to_device(&uuid::Uuid::new_v4().to_string(), chunk.to_vec()).await {
                Ok(()) => delivered.extend(chunk.iter().map(|(u, d, _)| (*u, *d))),
                // A device was revoked after we listed it (its notice not handled yet): list
                // its users again and send to the devices still there. Their messages are
                // valid as they are (an unsent Olm message only skips a ratchet step).
                Err(ClientError::Rejected { code: ErrorCode::UnknownDevice, .. }) => {
                    let users: BTreeSet<UserId> = chunk.iter().map(|(u, _, _)| *u).collect();
                    self.refresh(conn, &users.into_iter().collect::<Vec<_>>()).await?;
                    let still: Vec<_> = chunk.iter().filter(|(u, d, _)| self.devices.get(u).is_some_and(|l| l.contains_key(d))).cloned().collect();
                    if !still.is_empty() {
                        conn.send_to_device(&uuid::Uuid::new_v4().to_string(), still.clone()).await?;
                    }
                    delivered.extend(still.iter().map(|(u, d, _)| (*u, *d)));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(delivered)
    }

    /// Encrypts `body` for every device of `members` (the caller's user included: its
    /// other devices read it too) and sends it to `conversation`; returns the SendAck.
    /// Rotates the conversation's Megolm session and shares its key as the rotation rules
    /// say. `members` must be the conversation's current members (see [`Self::send_group`]
    /// and [`Self::send_direct`]).
    pub async fn send(
        &mut self,
        conn: &mut Connection,
        conversation: ConversationId,
        members: &[UserId],
        body: &Body,
    ) -> Result<pb::SendAck, SdkError> {
        self.send_with_attachments(conn, conversation, members, body, &[]).await
    }

    /// [`Self::send`], declaring the media ids the message references (so that the server
    /// lets its readers download them); their keys belong in `body` ([`Body::Media`]).
    pub async fn send_with_attachments(
        &mut self,
        conn: &mut Connection,
        conversation: ConversationId,
        members: &[UserId],
        body: &Body,
        attachments: &[crate::ids::MediaId],
    ) -> Result<pb::SendAck, SdkError> {
        let recipients = self.recipients(conn, members).await?;
        let now = now_ms();
        let plan = self.megolm.outbound(conversation, self.config.rotation).rotation.plan(now, &recipients);
        if let Some(reason) = &plan.rotate {
            tracing::debug!(%conversation, ?reason, "new megolm session");
            let session = GroupSession::new(SessionConfig::version_1());
            let own = e2ee::RoomKey {
                conversation_id: id_bytes(conversation),
                session_id: session.session_id(),
                session_key: session.session_key().to_bytes().into(),
            };
            // Our own inbound copy: this device reads its own messages in history too.
            let inbound = MegolmState::inbound_from_room_key(&own, self.user, self.device, self.curve25519()).map_err(SdkError::Malformed)?;
            let out = self.megolm.outbound(conversation, self.config.rotation);
            out.session = Some(session);
            out.rotation.rotated(now);
            let mut ops: Vec<Op> = self.megolm.add_inbound(inbound)?.into_iter().collect();
            ops.extend(self.megolm.outbound_op(conversation)?);
            self.store.write(ops)?;
        }
        if !plan.share_to.is_empty() {
            let key = {
                let out = self.megolm.outbound(conversation, self.config.rotation);
                let session = out.session.as_ref().ok_or_else(|| SdkError::Malformed("no outbound session".into()))?;
                e2ee::RoomKey {
                    conversation_id: id_bytes(conversation),
                    session_id: session.session_id(),
                    session_key: session.session_key().to_bytes().into(),
                }
            };
            let items = plan.share_to.iter().map(|d| (*d, e2ee::olm_plaintext::Content::RoomKey(key.clone()))).collect();
            let shared = self.send_olm(conn, items).await?;
            self.megolm.outbound(conversation, self.config.rotation).rotation.shared(shared);
        }
        let payload = self
            .megolm
            .encrypt(conversation, self.curve25519(), self.device, &body.to_plaintext(conversation))
            .ok_or_else(|| SdkError::Malformed("no outbound session".into()))?;
        if let Some(op) = self.megolm.outbound_op(conversation)? {
            self.store.write(vec![op])?;
        }
        Ok(conn.send_with_attachments_and_ack(conversation, &uuid::Uuid::new_v4().to_string(), payload, attachments).await?)
    }

    /// [`Self::send`] to a group, with its current members as the server's record has them.
    pub async fn send_group(&mut self, conn: &mut Connection, conversation: ConversationId, body: &Body) -> Result<pb::SendAck, SdkError> {
        let info = conn.group_info(conversation).await?;
        let members = info.member_user_ids.iter().map(|m| parse_id::<UserId>("member", m)).collect::<Result<Vec<_>, _>>().map_err(malformed)?;
        self.send(conn, conversation, &members, body).await
    }

    /// [`Self::send`] to the 1:1 conversation with `peer` (opened if needed).
    pub async fn send_direct(&mut self, conn: &mut Connection, peer: UserId, body: &Body) -> Result<pb::SendAck, SdkError> {
        let conversation = conn.open_direct(peer).await?;
        self.send(conn, conversation, &[self.user, peer], body).await
    }

    /// [`Self::send_direct`] declaring attachments (see [`Self::send_with_attachments`]).
    pub async fn send_direct_with_attachments(
        &mut self,
        conn: &mut Connection,
        peer: UserId,
        body: &Body,
        attachments: &[crate::ids::MediaId],
    ) -> Result<pb::SendAck, SdkError> {
        let conversation = conn.open_direct(peer).await?;
        self.send_with_attachments(conn, conversation, &[self.user, peer], body, attachments).await
    }

    /// Forgets a conversation's outbound session: the next message starts a new one.
    pub fn discard_session(&mut self, conversation: ConversationId) -> Result<(), SdkError> {
        self.megolm.outbound(conversation, self.config.rotation).rotation.discard();
        self.store.write(vec![Op::Delete(Table::OutboundGroup, conversation.uuid().as_bytes().to_vec())])?;
        Ok(())
    }

    /// The safety number of this user and `other` (12 groups of five digits), from both
    /// users' current device lists.
    pub async fn safety_number(&mut self, conn: &mut Connection, other: UserId) -> Result<String, SdkError> {
        self.refresh(conn, &[self.user, other]).await?;
        let keys = |u: &UserId| -> Vec<[u8; 32]> { self.devices.get(u).map(|d| d.values().map(|(_, ed)| *ed).collect()).unwrap_or_default() };
        Ok(safety::safety_number((self.user, &keys(&self.user)), (other, &keys(&other))))
    }
}
