//! The client SDK's end-to-end encryption through real sockets against a private server:
//! every device decrypts what it should (its own user's messages from other devices too),
//! a removed member and a revoked device get no new keys, a device linked later gets the
//! keys of the history it needs from its user's other devices, the server's files never
//! hold a plaintext, and tampered, replayed or unencrypted payloads are reported, never
//! dropped; a message whose key comes late is decrypted when it arrives.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Kind, TestServer, WAIT, user};
use prost::Message as _;
use switchboard::accounts::DeviceCredentials;
use switchboard::client::Connection;
use switchboard::ids::{ConversationId, UserId};
use switchboard::protocol::{id_bytes, pb, server_frame};
use switchboard::sdk::envelope::pb as e2ee;
use switchboard::sdk::megolm::DecryptError;
use switchboard::sdk::safety::KeyChange;
use switchboard::sdk::{Body, E2ee, E2eeConfig, Event, Received, StoreKey, Undecryptable};

/// A device running the SDK, and what it has seen.
struct Dev {
    creds: DeviceCredentials,
    conn: Connection,
    sdk: E2ee,
    dir: tempfile::TempDir,
    got: Vec<Received>,
    bad: Vec<Undecryptable>,
    changes: Vec<KeyChange>,
}

/// Connects a device, opens its SDK state (a fresh store), publishes its keys and handles
/// everything up to CatchUpComplete.
async fn dev(server: &TestServer, creds: &DeviceCredentials) -> Dev {
    dev_with(server, creds, E2eeConfig::default()).await
}

async fn dev_with(server: &TestServer, creds: &DeviceCredentials, config: E2eeConfig) -> Dev {
    let dir = tempfile::tempdir().unwrap();
    let sdk = E2ee::open(&dir.path().join("sdk.redb"), &StoreKey::random(), creds.user_id, creds.device_id, config).unwrap();
    let (conn, _) = Connection::open(&server.transport(Kind::Tcp), &creds.token).await.unwrap();
    let mut d = Dev { creds: creds.clone(), conn, sdk, dir, got: Vec::new(), bad: Vec::new(), changes: Vec::new() };
    d.sdk.publish_keys(&mut d.conn).await.unwrap();
    loop {
        let kind = d.conn.recv_timeout(WAIT).await.unwrap();
        let done = matches!(kind, server_frame::Kind::CatchUpComplete(_));
        let events = d.sdk.handle(&mut d.conn, kind).await.unwrap();
        d.absorb(events).await;
        if done {
            return d;
        }
    }
}

impl Dev {
    async fn absorb(&mut self, events: Vec<Event>) {
        for e in events {
            match e {
                Event::Message(r) => {
                    self.conn.ack(r.conversation, r.seq).await.unwrap();
                    self.got.push(r);
                }
                Event::Undecryptable(u) => self.bad.push(u),
                Event::KeyChanged(c) => self.changes.push(c),
                Event::ToDeviceFailed { reason, .. } => panic!("a to-device message failed: {reason}"),
                Event::Frame(_) => {}
            }
        }
    }

    /// Handles frames until `done` holds (panics after WAIT).
    async fn until(&mut self, what: &str, done: impl Fn(&Dev) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(Instant::now() < deadline, "device {} waited in vain for {what}", self.creds.device_id);
            let events = self.sdk.next_events(&mut self.conn, Duration::from_millis(100)).await.unwrap();
            self.absorb(events).await;
        }
    }

    /// Waits for a decrypted text message.
    async fn text(&mut self, text: &str) -> Received {
        self.until(text, |d| d.got.iter().any(|r| r.body == Body::Text(text.into()))).await;
        self.got.iter().find(|r| r.body == Body::Text(text.into())).cloned().unwrap()
    }

    /// Handles whatever arrives within `quiet`.
    async fn settle(&mut self, quiet: Duration) {
        loop {
            let events = self.sdk.next_events(&mut self.conn, quiet).await.unwrap();
            if events.is_empty() {
                return;
            }
            self.absorb(events).await;
        }
    }

    /// Sends as an app would: after handling what arrived (device-list notices above all:
    /// they say whom to share keys with).
    async fn send_direct(&mut self, peer: UserId, text: &str) -> pb::SendAck {
        self.settle(Duration::from_millis(150)).await;
        self.sdk.send_direct(&mut self.conn, peer, &Body::Text(text.into())).await.unwrap()
    }

    async fn send_group(&mut self, group: ConversationId, text: &str) -> pb::SendAck {
        self.settle(Duration::from_millis(150)).await;
        self.sdk.send_group(&mut self.conn, group, &Body::Text(text.into())).await.unwrap()
    }

    /// The stored message at `seq` (as the server keeps it: ciphertext).
    async fn stored(&mut self, conversation: ConversationId, seq: u64) -> pb::Message {
        let page = self.conn.history(conversation, seq + 1, 1).await.unwrap();
        page.messages.into_iter().find(|m| m.seq == seq).expect("the message is in history")
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(files_under(&path)) } else { out.push(path) }
    }
    out
}

fn assert_no_canary(dir: &std::path::Path, canary: &[u8]) {
    let files = files_under(dir);
    assert!(!files.is_empty(), "nothing under {}", dir.display());
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(!bytes.windows(canary.len()).any(|w| w == canary), "plaintext found in {}", file.display());
    }
}

/// Two users with three devices each talk 1:1, then five users in a group: every device
/// decrypts every message it should, its own user's messages from other devices included.
/// No file of the server (the redb store and its log, or PostgreSQL's tables and WAL on a
/// PostgreSQL run) nor of any device's SDK store holds the plaintext canary the messages
/// carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_decrypts_what_it_should_and_no_file_holds_the_plaintext() {
    let mut server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut creds = vec![alice.clone()];
    creds.push(api.link_device(&alice.token, "alice laptop").await.unwrap());
    creds.push(api.link_device(&alice.token, "alice tablet").await.unwrap());
    creds.push(bob.clone());
    creds.push(api.link_device(&bob.token, "bob laptop").await.unwrap());
    creds.push(api.link_device(&bob.token, "bob tablet").await.unwrap());
    let (carol, dave, erin) = (user(&api).await, user(&api).await, user(&api).await);
    creds.extend([carol.clone(), dave.clone(), erin.clone()]);
    let mut devs = Vec::new();
    for c in &creds {
        devs.push(dev(&server, c).await);
    }
    let canary = "CANARY-e2ee-plaintext";

    // 1:1, from each user's second device: the five others read it.
    devs[1].send_direct(bob.user_id, &format!("{canary} from alice's laptop")).await;
    for i in [0, 2, 3, 4, 5] {
        let r = devs[i].text(&format!("{canary} from alice's laptop")).await;
        assert_eq!((r.sender_user, r.sender_device), (alice.user_id, creds[1].device_id));
    }
    devs[4].send_direct(alice.user_id, &format!("{canary} from bob's laptop")).await;
    for i in [0, 1, 2, 3, 5] {
        devs[i].text(&format!("{canary} from bob's laptop")).await;
    }

    // A group of five users (nine devices): each user's first device writes once.
    let group = devs[0].conn.create_group("five", &[bob.user_id, carol.user_id, dave.user_id, erin.user_id]).await.unwrap();
    for sender in [0, 3, 6, 7, 8] {
        let text = format!("{canary} in the group from device {sender}");
        devs[sender].send_group(group, &text).await;
        for (i, d) in devs.iter_mut().enumerate() {
            if i != sender {
                d.text(&text).await;
            }
        }
    }
    for d in &devs {
        assert!(d.bad.is_empty(), "undecryptable: {:?}", d.bad);
    }
    assert_no_canary(server.dir.path(), canary.as_bytes());
    // On a PostgreSQL run, its files too (tables and write-ahead log).
    if let Some(pg) = server.postgres_mut() {
        assert_no_canary(&pg.data_dir(), canary.as_bytes());
    }
    for d in &devs {
        assert_no_canary(d.dir.path(), canary.as_bytes());
    }
}

/// After Carol is removed from the group she cannot decrypt what Alice sends next, and
/// after Bob revokes his laptop, the laptop gets no key of what follows either: Alice's
/// SDK rotated its session both times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_and_a_revoked_device_cannot_read_what_follows() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let laptop = api.link_device(&bob.token, "bob laptop").await.unwrap();
    let mut a = dev(&server, &alice).await;
    let mut b = dev(&server, &bob).await;
    let mut bl = dev(&server, &laptop).await;
    let mut c = dev(&server, &carol).await;
    let group = a.conn.create_group("three", &[bob.user_id, carol.user_id]).await.unwrap();

    a.send_group(group, "before the removal").await;
    for d in [&mut b, &mut bl, &mut c] {
        d.text("before the removal").await;
    }
    a.conn.group_change(group, pb::group_change::Change::RemoveMember(id_bytes(carol.user_id))).await.unwrap();
    let after = a.send_group(group, "after the removal").await;
    b.text("after the removal").await;
    bl.text("after the removal").await;
    c.settle(Duration::from_millis(300)).await;
    let stored = b.stored(group, after.seq).await;
    match c.sdk.decrypt(&stored) {
        Err(DecryptError::MissingKey { .. }) => {}
        other => panic!("a removed member decrypted, or failed otherwise: {other:?}"),
    }

    api.revoke(&bob.token, laptop.device_id).await.unwrap();
    a.until("the laptop's removal", |d| d.changes.contains(&KeyChange::Removed { user: bob.user_id, device: laptop.device_id })).await;
    let revoked = a.send_group(group, "after the revocation").await;
    b.text("after the revocation").await;
    let stored = b.stored(group, revoked.seq).await;
    match bl.sdk.decrypt(&stored) {
        Err(DecryptError::MissingKey { .. }) => {}
        other => panic!("a revoked device decrypted, or failed otherwise: {other:?}"),
    }
    // Bob's phone is still fine, and nothing was reported undecryptable to members.
    assert!(b.bad.is_empty() && a.bad.is_empty(), "{:?} {:?}", b.bad, a.bad);

    // A device revoked while Alice has not handled the notice yet: she has an Olm session
    // with it (from a group key) and opens a new conversation, so her SDK shares the new
    // session's key with it; the server refuses that (UNKNOWN_DEVICE), and the SDK lists
    // Bob's devices again and shares with the others.
    let tablet = api.link_device(&bob.token, "bob tablet").await.unwrap();
    let mut bt = dev(&server, &tablet).await;
    a.send_group(group, "the tablet gets this key").await;
    bt.text("the tablet gets this key").await;
    api.revoke(&bob.token, tablet.device_id).await.unwrap();
    let ack = a.sdk.send_direct(&mut a.conn, bob.user_id, &Body::Text("to bob, tablet just revoked".into())).await.unwrap();
    b.text("to bob, tablet just revoked").await;
    let conversation = switchboard::protocol::parse_id::<ConversationId>("c", &ack.conversation_id).unwrap();
    let stored = b.stored(conversation, ack.seq).await;
    assert!(matches!(bt.sdk.decrypt(&stored), Err(DecryptError::MissingKey { .. })));
    // And Alice's SDK now knows the tablet is gone.
    a.until("the tablet's removal", |d| d.changes.contains(&KeyChange::Removed { user: bob.user_id, device: tablet.device_id })).await;
}

/// Alice and Bob talk; Alice links a tablet; her phone sees the new device and forwards
/// the sessions it holds, so the tablet reads the earlier history (both users' messages);
/// Bob's next message reaches the tablet too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_linked_later_gets_the_keys_it_needs() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = dev(&server, &alice).await;
    let mut b = dev(&server, &bob).await;
    let first = a.send_direct(bob.user_id, "old, from alice").await;
    b.text("old, from alice").await;
    let second = b.send_direct(alice.user_id, "old, from bob").await;
    a.text("old, from bob").await;
    let conversation = switchboard::protocol::parse_id::<ConversationId>("c", &first.conversation_id).unwrap();

    let tablet = api.link_device(&alice.token, "tablet").await.unwrap();
    let mut t = dev(&server, &tablet).await;
    a.until("the tablet", |d| d.changes.contains(&KeyChange::NewDevice { user: alice.user_id, device: tablet.device_id })).await;
    let deadline = Instant::now() + WAIT;
    loop {
        t.settle(Duration::from_millis(100)).await;
        let page = t.conn.history(conversation, 0, 10).await.unwrap();
        let texts: Vec<Body> = page.messages.iter().filter_map(|m| t.sdk.decrypt(m).ok()).map(|r| r.body).collect();
        if texts.contains(&Body::Text("old, from alice".into())) && texts.contains(&Body::Text("old, from bob".into())) {
            break;
        }
        assert!(Instant::now() < deadline, "the tablet never got the history's keys (it reads {texts:?})");
    }
    assert_eq!((first.seq, second.seq), (1, 2));

    b.until("alice's tablet", |d| d.changes.contains(&KeyChange::NewDevice { user: alice.user_id, device: tablet.device_id })).await;
    b.send_direct(alice.user_id, "new, from bob").await;
    t.text("new, from bob").await;
    a.text("new, from bob").await;
    t.send_direct(bob.user_id, "hello from the tablet").await;
    b.text("hello from the tablet").await;
    a.text("hello from the tablet").await;
}

/// A tampered ciphertext is rejected with a clear error, a replayed one and a plaintext
/// payload are reported (never dropped silently), and a message that arrives before its
/// key is reported, kept, and decrypted once the key comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_replayed_and_early_messages_are_reported_and_late_keys_retry() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = dev(&server, &alice).await;
    let mut b = dev(&server, &bob).await;
    let genuine = a.send_direct(bob.user_id, "genuine").await;
    b.text("genuine").await;
    let conversation = switchboard::protocol::parse_id::<ConversationId>("c", &genuine.conversation_id).unwrap();
    let original = b.stored(conversation, genuine.seq).await.payload;

    let mut envelope = e2ee::Envelope::decode(&original[..]).unwrap();
    let mut ciphertext = envelope.ciphertext.to_vec();
    ciphertext[12] ^= 0x01;
    envelope.ciphertext = ciphertext.into();
    let tampered = a.conn.send_and_ack(conversation, "tampered", Bytes::from(envelope.encode_to_vec())).await.unwrap();
    let replayed = a.conn.send_and_ack(conversation, "replayed", original.clone()).await.unwrap();
    let plain = a.conn.send_and_ack(conversation, "plain", Bytes::from_static(b"hello in the clear")).await.unwrap();
    b.until("three reports", |d| d.bad.len() >= 3).await;
    let report = |seq: u64| b.bad.iter().find(|u| u.seq == seq).map(|u| u.error.clone()).expect("reported");
    let t = report(tampered.seq);
    assert!(matches!(t, DecryptError::Tampered(_)), "{t:?}");
    assert!(t.to_string().contains("tampered ciphertext rejected"), "{t}");
    assert!(matches!(report(replayed.seq), DecryptError::Forged(_)));
    assert!(matches!(report(plain.seq), DecryptError::Envelope(_)));
    assert_eq!(b.sdk.pending(), 0, "none of these is worth a retry");

    // A new session whose key Bob's device handles only after the message.
    a.sdk.discard_session(conversation).unwrap();
    let late = a.send_direct(bob.user_id, "late key").await;
    let mut held = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "the message never came");
        match b.conn.recv_timeout(WAIT).await.unwrap() {
            server_frame::Kind::ToDevice(td) => held.push(td),
            server_frame::Kind::Message(m) if m.seq == late.seq => {
                let events = b.sdk.handle(&mut b.conn, server_frame::Kind::Message(m)).await.unwrap();
                assert!(matches!(&events[..], [Event::Undecryptable(Undecryptable { error: DecryptError::MissingKey { .. }, .. })]), "{events:?}");
                break;
            }
            other => {
                let events = b.sdk.handle(&mut b.conn, other).await.unwrap();
                b.absorb(events).await;
            }
        }
    }
    assert_eq!(b.sdk.pending(), 1);
    assert!(!held.is_empty(), "the room key came before the message and was held back");
    let mut retried = Vec::new();
    for td in held {
        retried.extend(b.sdk.handle(&mut b.conn, server_frame::Kind::ToDevice(td)).await.unwrap());
    }
    match &retried[..] {
        [Event::Message(r)] => assert!(r.retried && r.body == Body::Text("late key".into()) && r.seq == late.seq, "{r:?}"),
        other => panic!("expected the retried message, got {other:?}"),
    }
    assert_eq!(b.sdk.pending(), 0);
}

/// The safety number is the same on both sides, changes when a device is added, and a
/// device's state opens only with its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_numbers_agree_and_the_store_needs_its_key() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = dev(&server, &alice).await;
    let mut b = dev(&server, &bob).await;
    a.conn.open_direct(bob.user_id).await.unwrap();
    let from_alice = a.sdk.safety_number(&mut a.conn, bob.user_id).await.unwrap();
    let from_bob = b.sdk.safety_number(&mut b.conn, alice.user_id).await.unwrap();
    assert_eq!(from_alice, from_bob);
    let laptop = api.link_device(&bob.token, "laptop").await.unwrap();
    let _bl = dev(&server, &laptop).await;
    assert_ne!(a.sdk.safety_number(&mut a.conn, bob.user_id).await.unwrap(), from_alice);

    let path = a.dir.path().join("sdk.redb");
    drop(a.sdk);
    let wrong = E2ee::open(&path, &StoreKey::random(), alice.user_id, alice.device_id, E2eeConfig::default());
    assert!(matches!(wrong, Err(switchboard::sdk::SdkError::Store(switchboard::sdk::store::StoreError::WrongKey))), "{wrong:?}");
}

/// A device that published few one-time keys is told it runs low when a claim takes one,
/// and its SDK tops its keys up to the server's target (with a new fallback key); the
/// session opened with the claimed key works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_keys_are_topped_up_when_the_server_says_they_run_low() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = dev_with(&server, &alice, E2eeConfig { one_time_keys: 10, ..E2eeConfig::default() }).await;
    let mut b = dev(&server, &bob).await;
    let count = |token: String| {
        let url = format!("http://{}/v1/keys/count", server.http);
        async move {
            let answer: serde_json::Value = reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
            answer["one_time_key_count"].as_u64().unwrap()
        }
    };
    assert_eq!(count(alice.token.clone()).await, 10);
    b.send_direct(alice.user_id, "takes one of alice's keys").await;
    a.text("takes one of alice's keys").await;
    let deadline = Instant::now() + WAIT;
    while count(alice.token.clone()).await < 50 {
        assert!(Instant::now() < deadline, "alice's keys were not topped up");
        a.settle(Duration::from_millis(100)).await;
    }
    a.send_direct(bob.user_id, "answer").await;
    b.text("answer").await;
}

/// Bob reinstalls: his device comes back with new identity keys under the same id. Alice's
/// SDK warns (IdentityChanged), and her next message gives the reinstalled device the key
/// again (its old keys held the session, not its new ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstalled_device_is_a_warning_and_gets_the_key_again() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = dev(&server, &alice).await;
    let mut b = dev(&server, &bob).await;
    a.send_direct(bob.user_id, "before the reinstall").await;
    b.text("before the reinstall").await;
    let old_ed25519 = b.sdk.ed25519();
    let Dev { conn, .. } = b;
    conn.bye().await.unwrap();

    // A fresh store: a new Olm account, published under the same device id.
    let mut b = dev(&server, &bob).await;
    assert_ne!(b.sdk.ed25519(), old_ed25519);
    a.until("the warning", |d| {
        d.changes.iter().any(|c| matches!(c, KeyChange::IdentityChanged { user, device, old_ed25519: old, .. } if *user == bob.user_id && *device == bob.device_id && *old == old_ed25519))
    })
    .await;
    a.send_direct(bob.user_id, "after the reinstall").await;
    b.text("after the reinstall").await;
}
