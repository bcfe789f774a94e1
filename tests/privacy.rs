//! Privacy settings and blocking through real sockets and HTTP (issue 15 item 7): who
//! sees presence and last seen (everyone, contacts, nobody), who may add whom to groups,
//! read receipts off both ways, and a block that refuses 1:1 opens and sends and keeps
//! presence, typing and read receipts from crossing, while groups go on. Changes reach the
//! user's other devices live.

mod common;

use std::time::Duration;

use common::{Kind, TestServer, WAIT, online, phone, rejected};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::accounts::DeviceCredentials;
use switchboard::client::Connection;
use switchboard::ids::UserId;
use switchboard::protocol::{ErrorCode, client_frame, id_bytes, pb, server_frame};

async fn http(server: &TestServer, method: reqwest::Method, token: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("http://{}{path}", server.http)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("http")
}

async fn set_privacy(server: &TestServer, who: &DeviceCredentials, patch: Value) -> Value {
    let response = http(server, reqwest::Method::PATCH, &who.token, "/v1/privacy", Some(patch)).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

async fn set_block(server: &TestServer, who: &DeviceCredentials, target: UserId, blocked: bool) {
    let method = if blocked { reqwest::Method::PUT } else { reqwest::Method::DELETE };
    let response = http(server, method, &who.token, &format!("/v1/blocks/{target}"), None).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

/// A user signed up with a known number.
async fn user_with_number(server: &TestServer) -> (DeviceCredentials, String) {
    let number = phone();
    (server.api().sign_up(&number, "phone").await.expect("sign up"), number)
}

/// What `conn` is told of `user`'s presence when it asks: (online, last_seen_ms).
async fn presence(conn: &mut Connection, user: UserId) -> (bool, u64) {
    let request_id = rand::random::<u64>();
    conn.send(client_frame::Kind::PresenceQuery(pb::PresenceQuery { request_id, user_ids: vec![id_bytes(user)] })).await.expect("query");
    conn.wait_for(WAIT, true, |k| match k {
        server_frame::Kind::Presence(p) if p.request_id == request_id => Some((p.online, p.last_seen_ms)),
        _ => None,
    })
    .await
    .expect("presence answer")
}

/// Whether a frame `pick` accepts arrives within a short while (for what must not).
async fn arrives(conn: &mut Connection, wait: Duration, pick: impl FnMut(&server_frame::Kind) -> Option<()>) -> bool {
    conn.wait_for(wait, false, pick).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_and_online_follow_the_owners_audience() {
    let server = TestServer::start();
    let (alice, _) = user_with_number(&server).await;
    let (bob, bob_number) = user_with_number(&server).await;
    let (stranger, _) = user_with_number(&server).await;
    // Bob is in Alice's contacts (she discovered his number); the stranger is not.
    let found = http(&server, reqwest::Method::POST, &alice.token, "/v1/contacts/discover", Some(json!({ "phones": [bob_number] }))).await;
    assert_eq!(found.status(), StatusCode::OK);
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let mut s = online(&server, Kind::Ws, &stranger).await;

    // Defaults: everyone sees Alice's last seen (she has been offline: 0 = never online).
    let a = online(&server, Kind::Tcp, &alice).await;
    assert!(presence(&mut s, alice.user_id).await.0, "by default a stranger sees her online");
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, seen) = presence(&mut s, alice.user_id).await;
    assert!(seen > 0, "by default a stranger sees her last seen");

    // Last seen and online for contacts only.
    let settings = set_privacy(&server, &alice, json!({ "last_seen": "contacts", "online": "same_as_last_seen" })).await;
    assert_eq!(
        settings,
        json!({ "last_seen": "contacts", "online": "same_as_last_seen", "groups": "everyone", "profile_photo": "everyone", "about": "everyone", "read_receipts": true })
    );
    assert_eq!(presence(&mut s, alice.user_id).await, (false, 0), "a stranger sees nothing");
    let (online_b, seen_b) = presence(&mut b, alice.user_id).await;
    assert!(!online_b && seen_b > 0, "a contact sees her last seen");
    let _a = online(&server, Kind::Tcp, &alice).await;
    assert!(presence(&mut b, alice.user_id).await.0, "a contact sees her online");
    assert_eq!(presence(&mut s, alice.user_id).await, (false, 0), "the stranger does not, while she is online either");

    // Nobody: not even a contact sees last seen; online follows it.
    set_privacy(&server, &alice, json!({ "last_seen": "nobody" })).await;
    assert_eq!(presence(&mut b, alice.user_id).await, (false, 0));
    // Online shown to everyone again, last seen still to nobody: online, but no time.
    set_privacy(&server, &alice, json!({ "online": "everyone" })).await;
    assert!(presence(&mut s, alice.user_id).await.0);

    // Bad settings are refused clearly and change nothing.
    for bad in [json!({ "last_seen": "friends" }), json!({ "lastseen": "nobody" }), json!({ "read_receipts": "no" })] {
        let response = http(&server, reqwest::Method::PATCH, &alice.token, "/v1/privacy", Some(bad.clone())).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let now: Value = http(&server, reqwest::Method::GET, &alice.token, "/v1/privacy", None).await.json().await.expect("json");
    assert_eq!(now["last_seen"], "nobody");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_stops_the_1_1_and_everything_ephemeral_but_not_groups() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, _) = user_with_number(&server).await;
    let (bob, _) = user_with_number(&server).await;
    let (carol, _) = user_with_number(&server).await;
    let tablet = api.link_device(&alice.token, "tablet").await.expect("link");
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut at = online(&server, Kind::Ws, &tablet).await;
    let mut b = online(&server, Kind::Ws, &bob).await;
    let direct = a.open_direct(bob.user_id).await.expect("open");
    let group = a.create_group("friends", &[bob.user_id, carol.user_id]).await.expect("group");
    b.send_and_ack(direct, "before", &b"hello"[..]).await.expect("before the block");

    set_block(&server, &alice, bob.user_id, true).await;
    // Alice's other device is told live; Bob's devices are not told anything.
    assert!(arrives(&mut at, WAIT, |k| matches!(k, server_frame::Kind::PrivacyChanged(_)).then_some(())).await);
    let list: Value = http(&server, reqwest::Method::GET, &tablet.token, "/v1/blocks", None).await.json().await.expect("json");
    assert_eq!(list, json!({ "blocked": [bob.user_id.to_string()] }), "the block list is the account's, on every device");
    // Bob sees Alice go offline (hidden), and his queries show nothing.
    assert!(
        arrives(&mut b, WAIT, |k| match k {
            server_frame::Kind::Presence(p) if p.user_id == id_bytes(alice.user_id) && !p.online && p.last_seen_ms == 0 => Some(()),
            _ => None,
        })
        .await
    );
    assert_eq!(presence(&mut b, alice.user_id).await, (false, 0));

    // The 1:1: neither may send, Bob may not open it again.
    assert_eq!(rejected(b.send_and_ack(direct, "after", &b"hi"[..]).await), ErrorCode::Blocked);
    assert_eq!(rejected(a.send_and_ack(direct, "a-after", &b"hi"[..]).await), ErrorCode::Blocked);
    assert_eq!(rejected(b.open_direct(alice.user_id).await), ErrorCode::Blocked);
    // Typing in the 1:1 does not reach Alice.
    b.send(client_frame::Kind::Typing(pb::Typing { conversation_id: id_bytes(direct), active: true })).await.expect("typing");
    assert!(!arrives(&mut a, Duration::from_millis(500), |k| matches!(k, server_frame::Kind::Typing(_)).then_some(())).await);
    // Bob may not add Alice to a new group.
    assert_eq!(rejected(b.create_group("bob's", &[alice.user_id]).await), ErrorCode::Blocked);

    // Groups they share are unaffected: Bob's message reaches Alice there.
    let ack = b.send_and_ack(group, "in-group", &b"group hello"[..]).await.expect("group send");
    let m = a
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::Message(m) if m.seq == ack.seq && m.conversation_id == id_bytes(group) => Some(m.clone()),
            _ => None,
        })
        .await
        .expect("group message");
    assert_eq!(&m.payload[..], b"group hello");

    // Unblocked: the 1:1 works again.
    set_block(&server, &alice, bob.user_id, false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.send_and_ack(direct, "after-unblock", &b"again"[..]).await.expect("after the unblock");
    // Blocking oneself, or nobody, is refused clearly.
    let me = http(&server, reqwest::Method::PUT, &alice.token, &format!("/v1/blocks/{}", alice.user_id), None).await;
    assert_eq!(me.status(), StatusCode::BAD_REQUEST);
    let nobody = http(&server, reqwest::Method::PUT, &alice.token, &format!("/v1/blocks/{}", UserId::random()), None).await;
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_add_me_to_groups_and_read_receipts_both_ways() {
    let server = TestServer::start();
    let (alice, _) = user_with_number(&server).await;
    let (bob, bob_number) = user_with_number(&server).await;
    let (stranger, _) = user_with_number(&server).await;
    http(&server, reqwest::Method::POST, &alice.token, "/v1/contacts/discover", Some(json!({ "phones": [bob_number] }))).await;
    set_privacy(&server, &alice, json!({ "groups": "contacts" })).await;
    let mut s = online(&server, Kind::Tcp, &stranger).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    assert_eq!(rejected(s.create_group("spam", &[alice.user_id]).await), ErrorCode::NotAllowed, "a stranger may not add her");
    let own = s.create_group("own", &[]).await.expect("a group of one");
    let add = s.group_change(own, pb::group_change::Change::AddMembers(pb::UserList { user_ids: vec![id_bytes(alice.user_id)] })).await;
    assert_eq!(rejected(add), ErrorCode::NotAllowed, "nor to an existing group");
    b.create_group("friends", &[alice.user_id]).await.expect("a contact may");

    // Read receipts off (Alice): Bob gets no blue ticks from her, and she none from him;
    // delivered ticks still flow.
    set_privacy(&server, &alice, json!({ "read_receipts": false })).await;
    let mut a = online(&server, Kind::Ws, &alice).await;
    let direct = b.open_direct(alice.user_id).await.expect("open");
    let ack = b.send_and_ack(direct, "m1", &b"read me"[..]).await.expect("send");
    a.ack(direct, ack.seq).await.expect("ack");
    a.read(direct, ack.seq).await.expect("read");
    let receipt = |kind: pb::ReceiptKind| {
        move |k: &server_frame::Kind| match k {
            server_frame::Kind::Receipt(r) if r.kind() == kind => Some(()),
            _ => None,
        }
    };
    assert!(arrives(&mut b, WAIT, receipt(pb::ReceiptKind::Delivered)).await, "delivered still flows");
    assert!(!arrives(&mut b, Duration::from_millis(500), receipt(pb::ReceiptKind::Read)).await, "no read receipt from Alice");
    let info = b.message_info(direct, ack.seq).await.expect("message info");
    assert_eq!(info.members.len(), 1);
    assert!(info.members[0].delivered_at_ms > 0);
    assert_eq!(info.members[0].read_at_ms, 0, "nor a read time");
    let back = a.send_and_ack(direct, "m2", &b"reply"[..]).await.expect("reply");
    b.read(direct, back.seq).await.expect("read");
    assert!(!arrives(&mut a, Duration::from_millis(500), receipt(pb::ReceiptKind::Read)).await, "reciprocal: she sees none either");
    // Turned on again: blue ticks flow.
    set_privacy(&server, &alice, json!({ "read_receipts": true })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = b.send_and_ack(direct, "m3", &b"and now"[..]).await.expect("send");
    a.read(direct, again.seq).await.expect("read");
    assert!(arrives(&mut b, WAIT, receipt(pb::ReceiptKind::Read)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_and_offline_broadcasts_reach_only_the_audience() {
    let server = TestServer::start();
    let (alice, _) = user_with_number(&server).await;
    let (bob, bob_number) = user_with_number(&server).await;
    let (stranger, _) = user_with_number(&server).await;
    http(&server, reqwest::Method::POST, &alice.token, "/v1/contacts/discover", Some(json!({ "phones": [bob_number] }))).await;
    set_privacy(&server, &alice, json!({ "last_seen": "contacts", "online": "same_as_last_seen" })).await;
    // Both have a 1:1 with Alice (the peers presence is broadcast to).
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let mut s = online(&server, Kind::Tcp, &stranger).await;
    b.open_direct(alice.user_id).await.expect("open");
    s.open_direct(alice.user_id).await.expect("open");
    let about_alice = |online: bool| {
        let alice = alice.user_id;
        move |k: &server_frame::Kind| match k {
            server_frame::Kind::Presence(p) if p.user_id == id_bytes(alice) && p.online == online && p.request_id == 0 => Some(()),
            _ => None,
        }
    };
    let a = online(&server, Kind::Ws, &alice).await;
    assert!(arrives(&mut b, WAIT, about_alice(true)).await, "her contact sees her come online");
    assert!(!arrives(&mut s, Duration::from_millis(500), about_alice(true)).await, "the stranger does not");
    a.bye().await.expect("bye");
    assert!(arrives(&mut b, WAIT, about_alice(false)).await, "her contact sees her go");
    assert!(!arrives(&mut s, Duration::from_millis(500), about_alice(false)).await, "the stranger does not");
}

/// From review: a block holds where the session has not loaded the 1:1 yet, on the
/// to-device and key paths and for conversation changes; a read the peer may not see
/// does not tell when it happened; changes of settings or blocks correct what peers see
/// of someone online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_holds_on_every_path_and_changes_correct_presence_live() {
    let server = TestServer::start();
    let (alice, _) = user_with_number(&server).await;
    let (bob, _) = user_with_number(&server).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let mut a = online(&server, Kind::Ws, &alice).await;
    // Alice opens the 1:1; Bob's session has never seen it (nothing was sent yet).
    let direct = a.open_direct(bob.user_id).await.expect("open");
    let is_alice = |online: bool, last_seen_zero: bool| {
        let alice = alice.user_id;
        move |k: &server_frame::Kind| match k {
            server_frame::Kind::Presence(p)
                if p.user_id == id_bytes(alice) && p.online == online && (p.last_seen_ms == 0) == last_seen_zero && p.request_id == 0 =>
            {
                Some(())
            }
            _ => None,
        }
    };
    // Settings narrowed while online: Bob (not a contact) is told she is offline, no time.
    set_privacy(&server, &alice, json!({ "last_seen": "contacts", "online": "same_as_last_seen" })).await;
    assert!(arrives(&mut b, WAIT, is_alice(false, true)).await, "a stale online is corrected");
    set_privacy(&server, &alice, json!({ "last_seen": "everyone", "online": "everyone" })).await;
    assert!(arrives(&mut b, WAIT, is_alice(true, false)).await, "and shown again when allowed");

    set_block(&server, &alice, bob.user_id, true).await;
    assert!(arrives(&mut b, WAIT, is_alice(false, true)).await, "blocked: she is offline to him");
    assert_eq!(rejected(b.send_and_ack(direct, "unseen-view", &b"x"[..]).await), ErrorCode::Blocked, "without a loaded view too");
    assert_eq!(rejected(b.set_retention(direct, 60).await), ErrorCode::Blocked, "no changes to the 1:1 either");
    // No to-device messages or key claims across the block (their only conversation is the 1:1).
    let to_device = b.send_to_device("td-1", vec![(alice.user_id, alice.device_id, bytes::Bytes::from_static(b"olm"))]).await;
    assert_eq!(rejected(to_device), ErrorCode::NoSharedConversation);
    assert_eq!(rejected(b.claim_keys(&[(alice.user_id, alice.device_id)]).await), ErrorCode::NoSharedConversation);
    set_block(&server, &alice, bob.user_id, false).await;
    assert!(arrives(&mut b, WAIT, is_alice(true, false)).await, "unblocked: online again");

    // Read receipts off: after Bob's Delivered, Alice reading later sends Bob nothing.
    set_privacy(&server, &alice, json!({ "read_receipts": false })).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ack = b.send_and_ack(direct, "m1", &b"hello"[..]).await.expect("send");
    a.ack(direct, ack.seq).await.expect("ack");
    let receipt = |kind: pb::ReceiptKind| {
        move |k: &server_frame::Kind| match k {
            server_frame::Kind::Receipt(r) if r.kind() == kind => Some(()),
            _ => None,
        }
    };
    assert!(arrives(&mut b, WAIT, receipt(pb::ReceiptKind::Delivered)).await);
    a.read(direct, ack.seq).await.expect("read");
    assert!(!arrives(&mut b, Duration::from_millis(700), receipt(pb::ReceiptKind::Delivered)).await, "no second Delivered at read time");
    assert!(!arrives(&mut b, Duration::from_millis(100), receipt(pb::ReceiptKind::Read)).await);
}
