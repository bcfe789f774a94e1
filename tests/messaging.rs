//! 1:1 messaging through real sockets, on both transports: receipts, multi-device
//! fan-out, offline catch-up, idempotent resend, history, typing and presence.

#[macro_use]
mod common;

use std::time::Duration;

use common::{Kind, Pair, TestServer, WAIT, caught_up, online, pair, send_all, user};
use switchboard::client::Connection;
use switchboard::ids::{DeviceId, UserId};
use switchboard::protocol::{id_bytes, parse_id, pb, server_frame};

both_transports!(
    two_users_two_devices_get_all_three_receipts,
    offline_device_catches_up_in_order_without_gaps_or_duplicates,
    resend_with_same_client_id_returns_same_seq_and_stores_once,
    history_pages_newest_first_over_socket_and_http,
    typing_and_presence_reach_the_peer,
);

async fn receipt(conn: &mut Connection, kind: pb::ReceiptKind, by_device: DeviceId, seq: u64) -> pb::Receipt {
    conn.wait_for(WAIT, false, |k| match k {
        server_frame::Kind::Receipt(r) if r.kind() == kind && r.device_id == id_bytes(by_device) && r.up_to_seq >= seq => Some(r.clone()),
        _ => None,
    })
    .await
    .unwrap_or_else(|e| panic!("no {kind:?} receipt from {by_device}: {e}"))
}

async fn two_users_two_devices_get_all_three_receipts(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let alice_laptop = api.link_device(&alice.token, "laptop").await.unwrap();
    let bob_laptop = api.link_device(&bob.token, "laptop").await.unwrap();

    let mut a1 = online(&server, kind, &alice).await;
    let mut a2 = online(&server, kind, &alice_laptop).await;
    let mut b1 = online(&server, kind, &bob).await;
    let mut b2 = online(&server, kind, &bob_laptop).await;

    let conversation = a1.open_direct(bob.user_id).await.unwrap();
    // ✓ sent: the ack carries the server seq and time.
    let ack = a1.send_and_ack(conversation, "m-1", &b"ciphertext-1"[..]).await.unwrap();
    assert_eq!(ack.seq, 1);
    assert!(!ack.duplicate);
    assert!(ack.server_time_ms > 0);

    // Fan-out: both of Bob's devices and Alice's other device, never back to the sender.
    for conn in [&mut b1, &mut b2, &mut a2] {
        let m = conn.next_message(WAIT).await.unwrap();
        assert_eq!(m.seq, 1);
        assert_eq!(&m.payload[..], b"ciphertext-1");
        assert_eq!(parse_id::<UserId>("s", &m.sender_user_id).unwrap(), alice.user_id);
        assert_eq!(parse_id::<DeviceId>("d", &m.sender_device_id).unwrap(), alice.device_id);
        assert_eq!(m.client_msg_id, "m-1");
    }

    // ✓✓ delivered: Bob's phone acknowledges; Alice's devices both see it.
    b1.ack(conversation, 1).await.unwrap();
    for conn in [&mut a1, &mut a2] {
        let r = receipt(conn, pb::ReceiptKind::Delivered, bob.device_id, 1).await;
        assert_eq!(parse_id::<UserId>("u", &r.user_id).unwrap(), bob.user_id);
    }
    // Blue ✓✓ read.
    b1.read(conversation, 1).await.unwrap();
    for conn in [&mut a1, &mut a2] {
        receipt(conn, pb::ReceiptKind::Read, bob.device_id, 1).await;
    }
    // Bob's other device learns the read position too (read state syncs across devices).
    receipt(&mut b2, pb::ReceiptKind::Read, bob.device_id, 1).await;

    // And the other way round, from Bob's laptop.
    let ack = b2.send_and_ack(conversation, "m-2", &b"ciphertext-2"[..]).await.unwrap();
    assert_eq!(ack.seq, 2);
    for conn in [&mut a1, &mut a2, &mut b1] {
        assert_eq!(conn.next_message(WAIT).await.unwrap().seq, 2);
    }
}

async fn offline_device_catches_up_in_order_without_gaps_or_duplicates(kind: Kind) {
    let server = TestServer::start();
    let Pair { bob, mut a, conversation, .. } = pair(&server, kind).await;
    send_all(&mut a, conversation, 1..=300, "c").await;

    // Bob was offline for all 300 (more than one catch-up page).
    let (mut b, _) = Connection::open(&server.transport(kind), &bob.token).await.unwrap();
    let caught = caught_up(&mut b).await;
    assert_eq!(caught, 300);
    for expected in 1..=300u64 {
        let m = b.next_message(WAIT).await.unwrap();
        assert_eq!(m.seq, expected, "catch-up out of order");
        assert_eq!(m.payload, format!("payload {expected}").into_bytes());
    }
    b.ack(conversation, 300).await.unwrap();
    b.bye().await.unwrap();

    send_all(&mut a, conversation, 301..=310, "c").await;

    // Reconnecting gets exactly what was missed: 301..=310, nothing acknowledged before.
    let (mut b, _) = Connection::open(&server.transport(kind), &bob.token).await.unwrap();
    assert_eq!(caught_up(&mut b).await, 10);
    for expected in 301..=310u64 {
        assert_eq!(b.next_message(WAIT).await.unwrap().seq, expected);
    }
    // Live traffic continues right after catch-up, without a gap.
    a.send_message(conversation, "c-311", &b"live"[..]).await.unwrap();
    assert_eq!(b.next_message(WAIT).await.unwrap().seq, 311);
    assert!(matches!(b.recv_timeout(Duration::from_millis(300)).await, Err(switchboard::client::ClientError::Timeout)));
}

async fn resend_with_same_client_id_returns_same_seq_and_stores_once(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let mut a = online(&server, kind, &alice).await;
    let mut b = online(&server, kind, &bob).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    let first = a.send_and_ack(conversation, "same-id", &b"once"[..]).await.unwrap();
    let second = a.send_and_ack(conversation, "same-id", &b"once"[..]).await.unwrap();
    assert_eq!(first.seq, second.seq);
    assert_eq!(first.server_time_ms, second.server_time_ms);
    assert!(second.duplicate);
    // After a reconnect (fresh activation cache is not involved: the store answers).
    drop(a);
    let mut a = online(&server, kind, &alice).await;
    let third = a.send_and_ack(conversation, "same-id", &b"once"[..]).await.unwrap();
    assert_eq!(third.seq, first.seq);
    assert!(third.duplicate);

    assert_eq!(b.next_message(WAIT).await.unwrap().seq, first.seq);
    let next = a.send_and_ack(conversation, "other-id", &b"twice"[..]).await.unwrap();
    assert_eq!(next.seq, first.seq + 1, "a duplicate must not consume a seq");
    assert_eq!(b.next_message(WAIT).await.unwrap().seq, next.seq, "the duplicate was delivered twice");
    let page = a.history(conversation, 0, 50).await.unwrap();
    assert_eq!(page.messages.len(), 2);
}

async fn history_pages_newest_first_over_socket_and_http(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let Pair { bob, mut a, conversation, .. } = pair(&server, kind).await;
    send_all(&mut a, conversation, 1..=120, "h").await;

    let mut seen: Vec<u64> = Vec::new();
    let mut before = 0;
    loop {
        let page = a.history(conversation, before, 50).await.unwrap();
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] == w[1] + 1), "page not newest-first: {seqs:?}");
        seen.extend(&seqs);
        if !page.has_more {
            break;
        }
        before = *seqs.last().unwrap();
    }
    assert_eq!(seen, (1..=120).rev().collect::<Vec<u64>>());

    let page = api.history(&bob.token, conversation, 21, 10).await.unwrap();
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (11..=20).rev().collect::<Vec<u64>>());
    assert_eq!(page["has_more"], true);
    assert_eq!(page["messages"][0]["payload_hex"], hex::encode(b"payload 20"));

    // Someone outside the conversation gets nothing.
    let carol = user(&api).await;
    let err = api.history(&carol.token, conversation, 0, 10).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
}

async fn typing_and_presence_reach_the_peer(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let mut a = online(&server, kind, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();

    // Bob comes online: Alice (his 1:1 peer) is told.
    let mut b = online(&server, kind, &bob).await;
    a.wait_for(WAIT, false, |k| match k {
        server_frame::Kind::Presence(p) if p.user_id == id_bytes(bob.user_id) && p.online => Some(()),
        _ => None,
    })
    .await
    .unwrap();

    a.send(switchboard::protocol::client_frame::Kind::Typing(pb::Typing { conversation_id: id_bytes(conversation), active: true })).await.unwrap();
    let t = b
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::Typing(t) => Some(t.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert!(t.active);
    assert_eq!(parse_id::<UserId>("u", &t.user_id).unwrap(), alice.user_id);

    // Typing is never stored.
    assert!(a.history(conversation, 0, 10).await.unwrap().messages.is_empty());

    // Bob leaves: Alice sees him offline with a last-seen time, and can query it later.
    b.bye().await.unwrap();
    let p = a
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::Presence(p) if p.user_id == id_bytes(bob.user_id) && !p.online => Some(p.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert!(p.last_seen_ms > 0);
    a.send(switchboard::protocol::client_frame::Kind::PresenceQuery(pb::PresenceQuery { request_id: 7, user_ids: vec![id_bytes(bob.user_id)] }))
        .await
        .unwrap();
    let q = a
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::Presence(p) if p.request_id == 7 => Some(p.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert!(!q.online);
    assert!(q.last_seen_ms >= p.last_seen_ms.saturating_sub(1000));
}

/// Cursor moves are writes nobody waits for: the store writer lets them ride in the next
/// commit, or commits them alone after `--write-defer-ms` (here the longest, 1 s). Every
/// read that shows them still sees them at once: message info, history's ticks and the
/// conversation list, over the socket and HTTP, and a reconnecting device's catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_cursor_moves_are_read_back_at_once() {
    let server = TestServer::start_with(&["--write-defer-ms=1000"]);
    let api = server.api();
    let Pair { alice, bob, mut a, conversation } = pair(&server, Kind::Tcp).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let sent = a.send_and_ack(conversation, "d-1", &b"deferred"[..]).await.unwrap();
    assert_eq!(b.next_message(WAIT).await.unwrap().seq, sent.seq);
    b.ack(conversation, sent.seq).await.unwrap();
    b.read(conversation, sent.seq).await.unwrap();
    receipt(&mut a, pb::ReceiptKind::Read, bob.device_id, sent.seq).await;

    // The sender, right after the receipt: delivered and read times, and the ticks.
    let info = a.message_info(conversation, sent.seq).await.unwrap();
    assert_eq!(info.members.len(), 1);
    assert!(info.members[0].delivered_at_ms > 0 && info.members[0].read_at_ms > 0, "{info:?}");
    let page = a.history(conversation, 0, 10).await.unwrap();
    let m = page.messages.iter().find(|m| m.seq == sent.seq).expect("in history");
    assert_eq!((m.delivered_to, m.read_by), (1, 1));
    let page = api.history(&alice.token, conversation, 0, 10).await.unwrap();
    assert_eq!(page["messages"][0]["read_by"], 1, "{page}");

    // The reader's conversation list, both ways: read up to the message, nothing unread.
    let inbox = b.inbox(0, "", 10).await.unwrap();
    let entry = inbox.entries.iter().find(|e| e.conversation_id == id_bytes(conversation)).expect("listed");
    assert_eq!((entry.read_seq, entry.unread_count), (sent.seq, 0));
    let over_http: serde_json::Value = api.get("/v1/inbox", Some(&bob.token)).await.unwrap().json().await.unwrap();
    assert_eq!(over_http["entries"][0]["read_seq"], sent.seq, "{over_http}");

    // A reconnection of the reader is not sent what it acknowledged.
    b.bye().await.unwrap();
    let mut b = online(&server, Kind::Tcp, &bob).await;
    assert!(matches!(b.recv_timeout(Duration::from_millis(300)).await, Err(switchboard::client::ClientError::Timeout)));
}

/// A deferred cursor move that no read asks for is still committed, once it has waited
/// `--write-defer-ms`: after a `kill -9` a second later, the device is not sent again what
/// it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_cursor_move_is_committed_on_its_own() {
    let mut server = TestServer::start_with(&["--write-defer-ms=200"]);
    let Pair { bob, mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let sent = a.send_and_ack(conversation, "d-1", &b"deferred"[..]).await.unwrap();
    assert_eq!(b.next_message(WAIT).await.unwrap().seq, sent.seq);
    b.ack(conversation, sent.seq).await.unwrap();
    receipt(&mut a, pb::ReceiptKind::Delivered, bob.device_id, sent.seq).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill9();
    server.restart();
    let (mut b, _) = Connection::open(&server.transport(Kind::Tcp), &bob.token).await.unwrap();
    assert_eq!(caught_up(&mut b).await, 0, "the acknowledged message was sent again");
}
