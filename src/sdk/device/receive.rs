//! The receiving side of [`E2ee`]: every frame the app receives goes through
//! [`E2ee::handle`], which decrypts conversation messages (keeping those whose key has not
//! arrived, and retrying them when it does), applies to-device messages (room keys and
//! forwarded keys, over Olm, with every check of the sender and the recipient), follows
//! device-list changes (forwarding sessions to our own new devices) and tops up one-time
//! keys.

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message as _;
use vodozemac::Curve25519PublicKey;

use super::{E2ee, FORWARDED_PER_MESSAGE, POSITION_RECORD, SdkError, malformed};
use crate::client::{ClientError, Connection};
use crate::cores::megolm_rotation::DeviceAddr;
use crate::ids::{ConversationId, DeviceId, UserId};
use crate::protocol::{parse_id, pb, server_frame};
use crate::sdk::envelope::{self, EnvelopeError, pb as e2ee};
use crate::sdk::events::{Body, Event, Received, Undecryptable};
use crate::sdk::megolm::{DecryptError, MegolmState};
use crate::sdk::safety::KeyChange;
use crate::sdk::store::{Op, Table};

impl E2ee {
    /// Waits up to `wait` for the next frame and handles it (empty on timeout).
    pub async fn next_events(&mut self, conn: &mut Connection, wait: Duration) -> Result<Vec<Event>, SdkError> {
        match conn.recv_timeout(wait).await {
            Ok(kind) => self.handle(conn, kind).await,
            Err(ClientError::Timeout) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Handles one received frame: decrypts messages, takes in room keys (and retries the
    /// messages waiting for them), follows device-list changes (forwarding our sessions to
    /// our own new devices), tops up one-time keys; everything else comes back as
    /// [`Event::Frame`].
    pub async fn handle(&mut self, conn: &mut Connection, kind: server_frame::Kind) -> Result<Vec<Event>, SdkError> {
        let mut events = self.handle_frame(conn, kind).await?;
        // Device-list changes found along the way (here, or while sending) are reported
        // with the next events.
        events.extend(self.key_changes.drain(..).map(Event::KeyChanged));
        Ok(events)
    }

    /// Device-list changes found since the last [`Self::handle`] (while sending, or
    /// computing a safety number), which the next `handle` would report.
    pub fn take_key_changes(&mut self) -> Vec<KeyChange> {
        std::mem::take(&mut self.key_changes)
    }

    async fn handle_frame(&mut self, conn: &mut Connection, kind: server_frame::Kind) -> Result<Vec<Event>, SdkError> {
        match kind {
            server_frame::Kind::Message(m) if m.event.is_none() && !m.deleted && !m.payload.is_empty() => Ok(vec![self.on_message(m)?]),
            server_frame::Kind::ToDevice(td) => self.on_to_device(conn, td).await,
            server_frame::Kind::DeviceListsChanged(d) => self.on_device_lists(conn, d).await,
            server_frame::Kind::KeysLow(low) => {
                let count = usize::try_from(u64::from(low.target).saturating_sub(low.one_time_key_count)).unwrap_or(0).max(1);
                let upload = self.olm.upload(self.user, self.device, count, true, false);
                self.store.write(vec![self.olm.account_op()?])?;
                conn.upload_keys(upload).await?;
                Ok(vec![Event::Frame(Box::new(server_frame::Kind::KeysLow(low)))])
            }
            other => Ok(vec![Event::Frame(Box::new(other))]),
        }
    }

    /// Decrypts a message without keeping it for a retry (history pages).
    pub fn decrypt(&mut self, m: &pb::Message) -> Result<Received, DecryptError> {
        let (conversation, sender_user, sender_device) = ids_of(m).map_err(|e| DecryptError::Envelope(EnvelopeError::Malformed(e)))?;
        let opened = self.megolm.decrypt(conversation, m.seq, sender_user, sender_device, &m.payload)?;
        Ok(Received {
            conversation,
            seq: m.seq,
            sender_user,
            sender_device,
            server_time_ms: m.server_time_ms,
            body: Body::from_plaintext(opened.plaintext),
            retried: false,
        })
    }

    fn on_message(&mut self, m: pb::Message) -> Result<Event, SdkError> {
        match self.decrypt(&m) {
            Ok(received) => Ok(Event::Message(received)),
            Err(error) => {
                let (conversation, sender_user, sender_device) = ids_of(&m).map_err(SdkError::Malformed)?;
                if error.is_retryable() {
                    self.store.put(Table::Pending, &pending_name(conversation, m.seq), &m.encode_to_vec())?;
                    self.pending.insert((conversation, m.seq), m.clone());
                }
                Ok(Event::Undecryptable(Undecryptable { conversation, seq: m.seq, sender_user, sender_device, error }))
            }
        }
    }

    /// Retries the pending messages of one session.
    fn retry(&mut self, sender_key: &Curve25519PublicKey, session_id: &str) -> Result<Vec<Event>, SdkError> {
        let waiting: Vec<(ConversationId, u64)> = self
            .pending
            .iter()
            .filter(|(_, m)| envelope::open_megolm(&m.payload).is_ok_and(|e| e.sender_key == *sender_key && e.session_id == session_id))
            .map(|(k, _)| *k)
            .collect();
        let mut events = Vec::new();
        let mut ops = Vec::new();
        for key in waiting {
            let Some(m) = self.pending.get(&key).cloned() else { continue };
            match self.decrypt(&m) {
                Ok(mut received) => {
                    received.retried = true;
                    events.push(Event::Message(received));
                }
                Err(error) if error.is_retryable() => continue,
                Err(error) => events.push(Event::Undecryptable(Undecryptable {
                    conversation: key.0,
                    seq: key.1,
                    sender_user: parse_id("sender", &m.sender_user_id).map_err(malformed)?,
                    sender_device: parse_id("sender", &m.sender_device_id).map_err(malformed)?,
                    error,
                })),
            }
            self.pending.remove(&key);
            ops.push(Op::Delete(Table::Pending, pending_name(key.0, key.1)));
        }
        if !ops.is_empty() {
            self.store.write(ops)?;
        }
        Ok(events)
    }

    async fn on_to_device(&mut self, conn: &mut Connection, td: pb::ToDeviceMessage) -> Result<Vec<Event>, SdkError> {
        // Entries come again after a reconnect until acknowledged: each is handled once
        // (an Olm message cannot be decrypted twice anyway).
        if td.position <= self.to_device_position {
            conn.ack_to_device(td.position).await?;
            return Ok(Vec::new());
        }
        // A failure of the connection or the store leaves the entry unacknowledged: the
        // server sends it again after the reconnect. Only an unusable message is skipped.
        let result = match self.open_to_device(conn, &td).await {
            Ok(events) => Ok(events),
            Err(ToDeviceError::Unusable(reason)) => Err(reason),
            Err(ToDeviceError::Sdk(e)) => return Err(e),
        };
        self.to_device_position = td.position;
        self.store.put(Table::Meta, POSITION_RECORD, &serde_json::to_vec(&td.position)?)?;
        conn.ack_to_device(td.position).await?;
        match result {
            Ok(events) => Ok(events),
            Err(reason) => {
                tracing::warn!(position = td.position, %reason, "to-device message not used");
                Ok(vec![Event::ToDeviceFailed {
                    position: td.position,
                    sender_user: parse_id("sender", &td.sender_user_id).map_err(malformed)?,
                    sender_device: parse_id("sender", &td.sender_device_id).map_err(malformed)?,
                    reason,
                }])
            }
        }
    }

    /// Decrypts and applies one to-device message.
    async fn open_to_device(&mut self, conn: &mut Connection, td: &pb::ToDeviceMessage) -> Result<Vec<Event>, ToDeviceError> {
        let sender_user: UserId = parse_id("sender_user_id", &td.sender_user_id).map_err(unusable)?;
        let sender_device: DeviceId = parse_id("sender_device_id", &td.sender_device_id).map_err(unusable)?;
        let env = envelope::open_olm(&td.payload).map_err(unusable)?;
        if env.sender_device != sender_device {
            return Err(ToDeviceError::Unusable("the envelope names another sending device".into()));
        }
        let Some((curve, ed)) = self.device_keys(conn, sender_user, sender_device).await? else {
            return Err(ToDeviceError::Unusable(format!("device {sender_device} of user {sender_user} has no published keys")));
        };
        if env.sender_key.to_bytes() != curve {
            return Err(ToDeviceError::Unusable("the sender's Curve25519 key is not the one it published".into()));
        }
        let plain = self.olm.decrypt(env.sender_key, &env.message).map_err(unusable)?;
        let ops =
            [self.olm.account_op(), self.olm.sessions_op(&env.sender_key)].into_iter().collect::<Result<Vec<_>, _>>().map_err(SdkError::from)?;
        self.store.write(ops).map_err(SdkError::from)?;
        let p: e2ee::OlmPlaintext = envelope::plaintext(&plain).map_err(unusable)?;
        if p.sender_user_id[..] != sender_user.uuid().as_bytes()[..]
            || p.sender_device_id[..] != sender_device.uuid().as_bytes()[..]
            || p.sender_ed25519[..] != ed
        {
            return Err(ToDeviceError::Unusable("the plaintext's sender is not the device the message came from".into()));
        }
        if p.recipient_user_id[..] != self.user.uuid().as_bytes()[..]
            || p.recipient_device_id[..] != self.device.uuid().as_bytes()[..]
            || p.recipient_ed25519[..] != self.ed25519()
        {
            return Err(ToDeviceError::Unusable("the plaintext is addressed to another device".into()));
        }
        let mut added = Vec::new();
        match p.content {
            Some(e2ee::olm_plaintext::Content::RoomKey(key)) => {
                added.push(MegolmState::inbound_from_room_key(&key, sender_user, sender_device, env.sender_key).map_err(unusable)?);
            }
            Some(e2ee::olm_plaintext::Content::ForwardedRoomKeys(keys)) => {
                // Only our own devices may vouch for another device's session.
                if sender_user != self.user {
                    return Err(ToDeviceError::Unusable(format!("forwarded room keys from another user ({sender_user}) refused")));
                }
                for key in &keys.keys {
                    added.push(MegolmState::inbound_from_forwarded(key).map_err(unusable)?);
                }
            }
            None => return Err(ToDeviceError::Unusable("empty to-device content".into())),
        }
        let mut events = Vec::new();
        for inbound in added {
            let (sender_key, session_id) = (inbound.sender_key, inbound.session.session_id());
            if let Some(op) = self.megolm.add_inbound(inbound).map_err(SdkError::from)? {
                self.store.write(vec![op]).map_err(SdkError::from)?;
            }
            events.extend(self.retry(&sender_key, &session_id)?);
        }
        Ok(events)
    }

    async fn on_device_lists(&mut self, conn: &mut Connection, d: pb::DeviceListsChanged) -> Result<Vec<Event>, SdkError> {
        let users = d.user_ids.iter().map(|u| parse_id::<UserId>("user_id", u)).collect::<Result<Vec<_>, _>>().map_err(malformed)?;
        let before: BTreeSet<DeviceId> = self.devices.get(&self.user).map(|d| d.keys().copied().collect()).unwrap_or_default();
        self.refresh(conn, &users).await?;
        conn.ack_device_lists(&users).await?;
        // Our own user has a device we did not list before: give it every session we hold,
        // so it reads the conversation history it needs.
        if users.contains(&self.user) {
            let new: Vec<DeviceAddr> = self
                .devices
                .get(&self.user)
                .map(|d| d.keys().filter(|dev| !before.contains(dev) && **dev != self.device).map(|dev| (self.user, *dev)).collect())
                .unwrap_or_default();
            if !new.is_empty() && !before.is_empty() {
                self.forward_sessions(conn, &new).await?;
            }
        }
        Ok(Vec::new())
    }

    /// Sends every inbound session this device holds to some of our own devices.
    pub async fn forward_sessions(&mut self, conn: &mut Connection, to: &[DeviceAddr]) -> Result<(), SdkError> {
        let keys = self.megolm.export_all();
        for chunk in keys.chunks(FORWARDED_PER_MESSAGE) {
            let content = e2ee::olm_plaintext::Content::ForwardedRoomKeys(e2ee::ForwardedRoomKeys { keys: chunk.to_vec() });
            let items = to.iter().filter(|(u, _)| *u == self.user).map(|d| (*d, content.clone())).collect();
            self.send_olm(conn, items).await?;
        }
        Ok(())
    }
}

/// Why a to-device message was not applied.
enum ToDeviceError {
    /// It cannot be used, now or later (acknowledged and reported).
    Unusable(String),
    /// The connection or the store failed (not acknowledged: it comes again).
    Sdk(SdkError),
}

impl From<SdkError> for ToDeviceError {
    fn from(e: SdkError) -> Self {
        ToDeviceError::Sdk(e)
    }
}

fn unusable(e: impl std::fmt::Display) -> ToDeviceError {
    ToDeviceError::Unusable(e.to_string())
}

fn pending_name(conversation: ConversationId, seq: u64) -> Vec<u8> {
    [&conversation.uuid().as_bytes()[..], &seq.to_be_bytes()].concat()
}

fn ids_of(m: &pb::Message) -> Result<(ConversationId, UserId, DeviceId), String> {
    Ok((
        parse_id("conversation_id", &m.conversation_id).map_err(|e| e.to_string())?,
        parse_id("sender_user_id", &m.sender_user_id).map_err(|e| e.to_string())?,
        parse_id("sender_device_id", &m.sender_device_id).map_err(|e| e.to_string())?,
    ))
}
