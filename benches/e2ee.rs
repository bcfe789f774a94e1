//! What end-to-end encryption costs a client, per message, through the SDK's own code
//! (`switchboard::sdk`, vodozemac underneath): a conversation message encrypted with the
//! sender's Megolm session and decrypted by a recipient (with every check the SDK makes:
//! envelope, sender, conversation, replayed index), next to encoding the same plaintext
//! without encryption; and a room key sent to one device over an Olm session (what a
//! key share costs per recipient device).
//!
//! Run: `cargo bench --bench e2ee` (numbers in BENCHMARKS.md, "Encryption on the client").

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use std::hint::black_box;
use switchboard::cores::megolm_rotation::RotationPolicy;
use switchboard::ids::{ConversationId, DeviceId, UserId};
use switchboard::sdk::envelope::pb as e2ee;
use switchboard::sdk::megolm::MegolmState;
use switchboard::sdk::olm::OlmState;
use vodozemac::Curve25519PublicKey;
use vodozemac::megolm::{GroupSession, SessionConfig};

fn text(conversation: ConversationId, bytes: usize) -> e2ee::RoomPlaintext {
    e2ee::RoomPlaintext {
        conversation_id: conversation.uuid().as_bytes().to_vec().into(),
        body: Some(e2ee::room_plaintext::Body::Text("x".repeat(bytes))),
    }
}

/// A sender with an outbound session for `conversation` and a recipient holding its key.
fn megolm_pair(conversation: ConversationId, user: UserId, device: DeviceId, sender_key: Curve25519PublicKey) -> (MegolmState, MegolmState) {
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
    let inbound = MegolmState::inbound_from_room_key(&key, user, device, sender_key).expect("room key");
    bob.add_inbound(inbound).expect("inbound");
    (alice, bob)
}

fn megolm(c: &mut Criterion) {
    let mut group = c.benchmark_group("megolm");
    group.throughput(Throughput::Elements(1));
    let (conversation, user, device) = (ConversationId::random(), UserId::random(), DeviceId::random());
    let sender_key = vodozemac::olm::Account::new().curve25519_key();
    for size in [100usize, 4096] {
        let plaintext = text(conversation, size);
        group.bench_function(format!("plaintext_encode_only_{size}b"), |b| b.iter(|| black_box(&plaintext).encode_to_vec()));
        let (mut alice, _) = megolm_pair(conversation, user, device, sender_key);
        group.bench_function(format!("encrypt_{size}b"), |b| {
            b.iter(|| alice.encrypt(conversation, sender_key, device, black_box(&plaintext)).expect("session"))
        });
        // Each message is new (a fresh index, a fresh seq), as in a conversation.
        let (mut alice, mut bob) = megolm_pair(conversation, user, device, sender_key);
        let mut seq = 0u64;
        group.bench_function(format!("encrypt_and_decrypt_{size}b"), |b| {
            b.iter(|| {
                seq += 1;
                let payload = alice.encrypt(conversation, sender_key, device, black_box(&plaintext)).expect("session");
                bob.decrypt(conversation, seq, user, device, &payload).expect("decrypts")
            })
        });
        let (mut alice, mut bob) = megolm_pair(conversation, user, device, sender_key);
        let mut seq = 0u64;
        group.bench_function(format!("decrypt_{size}b"), |b| {
            b.iter_batched(
                || {
                    seq += 1;
                    (seq, alice.encrypt(conversation, sender_key, device, &plaintext).expect("session"))
                },
                |(seq, payload)| bob.decrypt(conversation, seq, user, device, &payload).expect("decrypts"),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn olm(c: &mut Criterion) {
    let mut group = c.benchmark_group("olm");
    group.throughput(Throughput::Elements(1));
    let (bob_user, bob_device) = (UserId::random(), DeviceId::random());
    let mut alice = OlmState::new();
    let mut bob = OlmState::new();
    let upload = bob.upload(bob_user, bob_device, 1, false, true);
    let identity = upload.identity.expect("identity keys");
    let bob_key = Curve25519PublicKey::from_slice(&identity.curve25519).expect("curve25519");
    let one_time = Curve25519PublicKey::from_slice(&upload.one_time_keys[0].key).expect("one-time key");
    alice.open_outbound(bob_key, one_time).expect("outbound session");
    let alice_key = Curve25519PublicKey::from_slice(&alice.identity(UserId::random(), DeviceId::random()).curve25519).expect("curve25519");
    let conversation = ConversationId::random();
    let session = GroupSession::new(SessionConfig::version_1());
    let room_key = e2ee::RoomKey {
        conversation_id: conversation.uuid().as_bytes().to_vec().into(),
        session_id: session.session_id(),
        session_key: session.session_key().to_bytes().into(),
    }
    .encode_to_vec();
    // The first message opens Bob's inbound session; what follows is the steady state.
    let first = alice.encrypt(&bob_key, &room_key).expect("session");
    bob.decrypt(alice_key, &first).expect("opens the inbound session");
    group.bench_function("room_key_encrypt_and_decrypt_one_device", |b| {
        b.iter(|| {
            let message = alice.encrypt(&bob_key, black_box(&room_key)).expect("session");
            bob.decrypt(alice_key, &message).expect("decrypts")
        })
    });
    group.finish();
}

criterion_group!(benches, megolm, olm);
criterion_main!(benches);
