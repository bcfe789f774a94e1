//! To-device messages and device-list change notices through real sockets (docs/e2ee.md):
//! live delivery and redelivery until acknowledged, idempotent sends, the window that
//! paces a long queue, every refusal, survival of `kill -9` between the acknowledgement of
//! a send and its delivery, and the notices that follow linking, key uploads and
//! revocation.

#[macro_use]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Kind, TestServer, online, rejected, signed_upload, user};
use switchboard::client::Connection;
use switchboard::ids::{DeviceId, UserId};
use switchboard::protocol::{ErrorCode, parse_id, pb, server_frame};

both_transports!(entries_arrive_live_and_again_until_acknowledged, device_list_changes_reach_who_shares_a_conversation);

/// The next ToDeviceMessage (buffered frames first).
async fn next_entry(conn: &mut Connection) -> pb::ToDeviceMessage {
    conn.wait_for(Duration::from_secs(10), true, |k| match k {
        server_frame::Kind::ToDevice(m) => Some(m.clone()),
        _ => None,
    })
    .await
    .expect("a to-device message")
}

/// True if a ToDeviceMessage arrives within `wait`.
async fn entry_within(conn: &mut Connection, wait: Duration) -> Option<pb::ToDeviceMessage> {
    conn.wait_for(wait, false, |k| match k {
        server_frame::Kind::ToDevice(m) => Some(m.clone()),
        _ => None,
    })
    .await
    .ok()
}

/// The next DeviceListsChanged within `wait`, as user ids.
async fn notice_within(conn: &mut Connection, wait: Duration) -> Option<Vec<UserId>> {
    conn.wait_for(wait, false, |k| match k {
        server_frame::Kind::DeviceListsChanged(n) => Some(n.user_ids.iter().map(|raw| parse_id::<UserId>("user_ids", raw).unwrap()).collect()),
        _ => None,
    })
    .await
    .ok()
}

/// Returns once the session has handled every frame sent before (it answers requests in
/// order; Ping is answered by the connection, ahead of the session's work).
async fn settled(conn: &mut Connection, me: UserId) {
    conn.query_devices(&[me]).await.expect("an answer in order");
}

fn target(user: UserId, device: DeviceId, payload: &str) -> (UserId, DeviceId, Bytes) {
    (user, device, Bytes::copy_from_slice(payload.as_bytes()))
}

async fn entries_arrive_live_and_again_until_acknowledged(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let bob2 = api.link_device(&bob.token, "laptop").await.unwrap();
    let mut a = online(&server, kind, &alice).await;
    let mut b = online(&server, kind, &bob).await;
    a.open_direct(bob.user_id).await.unwrap();

    // One send, one ciphertext per device: Bob's phone online, his laptop offline.
    a.send_to_device("share-1", vec![target(bob.user_id, bob.device_id, "for-phone"), target(bob.user_id, bob2.device_id, "for-laptop")])
        .await
        .unwrap();
    let live = next_entry(&mut b).await;
    assert_eq!((live.position, &live.payload[..]), (1, &b"for-phone"[..]));
    assert_eq!(parse_id::<UserId>("u", &live.sender_user_id).unwrap(), alice.user_id);
    assert_eq!(parse_id::<DeviceId>("d", &live.sender_device_id).unwrap(), alice.device_id);
    assert!(live.sent_ms > 0);

    // The laptop gets its own ciphertext when it connects, before CatchUpComplete.
    let mut laptop = online(&server, kind, &bob2).await;
    let waiting = next_entry(&mut laptop).await;
    assert_eq!((waiting.position, &waiting.payload[..]), (1, &b"for-laptop"[..]));

    // A retry with the same client id is answered again and stores nothing: the next send
    // takes position 2.
    a.send_to_device("share-1", vec![target(bob.user_id, bob.device_id, "retry")]).await.unwrap();
    a.send_to_device("share-2", vec![target(bob.user_id, bob.device_id, "second")]).await.unwrap();
    let second = next_entry(&mut b).await;
    assert_eq!((second.position, &second.payload[..]), (2, &b"second"[..]));

    // Unacknowledged entries come again after a reconnect, in order, at the same positions.
    drop(b);
    let mut b = online(&server, kind, &bob).await;
    assert_eq!(next_entry(&mut b).await.position, 1);
    assert_eq!(next_entry(&mut b).await.position, 2);
    // Acknowledged ones do not.
    b.ack_to_device(1).await.unwrap();
    settled(&mut b, bob.user_id).await;
    drop(b);
    let mut b = online(&server, kind, &bob).await;
    assert_eq!(next_entry(&mut b).await.position, 2);
    b.ack_to_device(2).await.unwrap();
    settled(&mut b, bob.user_id).await;
    drop(b);
    let mut b = online(&server, kind, &bob).await;
    assert!(entry_within(&mut b, Duration::from_millis(300)).await.is_none(), "everything was acknowledged");

    // Alice may send to her own other devices without any conversation.
    let alice2 = api.link_device(&alice.token, "tablet").await.unwrap();
    a.send_to_device("self-1", vec![target(alice.user_id, alice2.device_id, "link bundle")]).await.unwrap();
    let mut tablet = online(&server, kind, &alice2).await;
    assert_eq!(&next_entry(&mut tablet).await.payload[..], b"link bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_clear_and_touches_nothing() {
    // The whole queue open to one sender here: the share is `a_stranger_cannot_fill_a_queue_for_everybody`.
    let server = TestServer::start_with(&["--to-device-queue", "3", "--to-device-queue-per-sender", "3"]);
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let bob2 = api.link_device(&bob.token, "laptop").await.unwrap();
    let mut a = online(&server, Kind::Tcp, &alice).await;
    a.open_direct(bob.user_id).await.unwrap();
    let to_bob = |p: &str| vec![target(bob.user_id, bob.device_id, p)];

    // No shared conversation with Carol.
    assert_eq!(rejected(a.send_to_device("c1", vec![target(carol.user_id, carol.device_id, "x")]).await), ErrorCode::NoSharedConversation);
    // A device that does not exist, one named under the wrong user.
    assert_eq!(rejected(a.send_to_device("c2", vec![target(bob.user_id, DeviceId::random(), "x")]).await), ErrorCode::UnknownDevice);
    assert_eq!(rejected(a.send_to_device("c3", vec![target(bob.user_id, alice.device_id, "x")]).await), ErrorCode::UnknownDevice);
    // Sizes and shapes.
    let big = "x".repeat(16 * 1024 + 1);
    assert_eq!(rejected(a.send_to_device("c4", to_bob(&big)).await), ErrorCode::PayloadTooLarge);
    assert_eq!(rejected(a.send_to_device("", to_bob("x")).await), ErrorCode::InvalidArgument);
    assert_eq!(rejected(a.send_to_device("c5", to_bob("")).await), ErrorCode::InvalidArgument);
    assert_eq!(rejected(a.send_to_device("c6", vec![]).await), ErrorCode::InvalidArgument);
    assert_eq!(
        rejected(a.send_to_device("c7", vec![target(bob.user_id, bob.device_id, "x"), target(bob.user_id, bob.device_id, "y")]).await),
        ErrorCode::InvalidArgument
    );
    let mut too_many = Vec::new();
    for _ in 0..1025 {
        too_many.push(target(bob.user_id, DeviceId::random(), "x"));
    }
    assert_eq!(rejected(a.send_to_device("c8", too_many).await), ErrorCode::InvalidArgument);

    // The queue bound (3 here): a send that would pass it is refused whole, the laptop's
    // queue included.
    for i in 0..3 {
        a.send_to_device(&format!("fill-{i}"), to_bob("x")).await.unwrap();
    }
    assert_eq!(
        rejected(a.send_to_device("over", vec![target(bob.user_id, bob2.device_id, "x"), target(bob.user_id, bob.device_id, "x")]).await),
        ErrorCode::QueueFull
    );
    let mut laptop = online(&server, Kind::Tcp, &bob2).await;
    assert!(entry_within(&mut laptop, Duration::from_millis(300)).await.is_none(), "the refused send queued nothing");
    // Bob acknowledges: room again.
    let mut b = online(&server, Kind::Tcp, &bob).await;
    for expected in 1..=3 {
        assert_eq!(next_entry(&mut b).await.position, expected);
    }
    b.ack_to_device(3).await.unwrap();
    settled(&mut b, bob.user_id).await;
    a.send_to_device("after-ack", to_bob("fits")).await.unwrap();
    assert_eq!(&next_entry(&mut b).await.payload[..], b"fits");

    // A revoked device is unknown from then on.
    api.revoke(&bob.token, bob2.device_id).await.unwrap();
    assert_eq!(rejected(a.send_to_device("c9", vec![target(bob.user_id, bob2.device_id, "x")]).await), ErrorCode::UnknownDevice);
    // After all that, the connection still works.
    a.send_to_device("last", to_bob("still fine")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_fill_a_queue_for_everybody() {
    // A queue of 10 with a share of 3 per other user. Mallory opens a 1:1 with Bob (anyone
    // may) and sends until refused; Bob's contact Alice still reaches him, and so do
    // Bob's own devices.
    let server = TestServer::start_with(&["--to-device-queue", "10", "--to-device-queue-per-sender", "3"]);
    let api = server.api();
    let (alice, bob, mallory) = (user(&api).await, user(&api).await, user(&api).await);
    let bob2 = api.link_device(&bob.token, "laptop").await.unwrap();
    let mut m = online(&server, Kind::Tcp, &mallory).await;
    m.open_direct(bob.user_id).await.unwrap();
    let to_bob = |p: &str| vec![target(bob.user_id, bob.device_id, p)];
    for i in 0..3 {
        m.send_to_device(&format!("m{i}"), to_bob("junk")).await.unwrap();
    }
    match m.send_to_device("m3", to_bob("junk")).await {
        Err(switchboard::client::ClientError::Rejected { code, message }) => {
            assert_eq!(code, ErrorCode::QueueFull);
            assert!(message.contains(&bob.device_id.to_string()) && message.contains("3 entries from you"), "{message}");
        }
        other => panic!("expected QUEUE_FULL, got {other:?}"),
    }
    let mut a = online(&server, Kind::Tcp, &alice).await;
    a.open_direct(bob.user_id).await.unwrap();
    a.send_to_device("key-share", to_bob("room key from alice")).await.unwrap();
    let mut laptop = online(&server, Kind::Tcp, &bob2).await;
    laptop.send_to_device("own", to_bob("forwarded keys from the laptop")).await.unwrap();
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(String::from_utf8(next_entry(&mut b).await.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["junk", "junk", "junk", "room key from alice", "forwarded keys from the laptop"]);
    // Once Bob's device has read them, Mallory's share is free again (and still bounded).
    b.ack_to_device(5).await.unwrap();
    settled(&mut b, bob.user_id).await;
    m.send_to_device("m4", to_bob("junk")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_comes_a_window_at_a_time() {
    let server = TestServer::start_with(&["--to-device-window", "4"]);
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    a.open_direct(bob.user_id).await.unwrap();
    for i in 1..=10 {
        a.send_to_device(&format!("s{i}"), vec![target(bob.user_id, bob.device_id, &format!("m{i}"))]).await.unwrap();
    }
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(next_entry(&mut b).await.position);
    }
    assert!(entry_within(&mut b, Duration::from_millis(300)).await.is_none(), "no more than the window before an ack");
    // Live entries beyond the window wait too.
    a.send_to_device("s11", vec![target(bob.user_id, bob.device_id, "m11")]).await.unwrap();
    assert!(entry_within(&mut b, Duration::from_millis(300)).await.is_none());
    b.ack_to_device(4).await.unwrap();
    for _ in 0..4 {
        seen.push(next_entry(&mut b).await.position);
    }
    b.ack_to_device(8).await.unwrap();
    for _ in 0..3 {
        seen.push(next_entry(&mut b).await.position);
    }
    assert_eq!(seen, (1..=11).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_send_survives_kill_9() {
    let mut server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    a.open_direct(bob.user_id).await.unwrap();
    for i in 0..20 {
        a.send_to_device(&format!("k{i}"), vec![target(bob.user_id, bob.device_id, &format!("before-kill-{i}"))]).await.unwrap();
    }
    // ToDeviceSent came back for all 20; the device never saw them.
    server.kill9();
    server.restart();
    let mut b = online(&server, Kind::Tcp, &bob).await;
    for i in 0..20u64 {
        let entry = next_entry(&mut b).await;
        assert_eq!(entry.position, i + 1);
        assert_eq!(entry.payload, Bytes::from(format!("before-kill-{i}")));
    }
}

async fn device_list_changes_reach_who_shares_a_conversation(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let mut a = online(&server, kind, &alice).await;
    let mut b = online(&server, kind, &bob).await;
    let mut c = online(&server, kind, &carol).await;
    a.open_direct(bob.user_id).await.unwrap();

    // Alice links a laptop: Bob (who shares a conversation) and Alice's phone hear it live;
    // Carol does not.
    let laptop = api.link_device(&alice.token, "laptop").await.unwrap();
    assert_eq!(notice_within(&mut b, Duration::from_secs(5)).await, Some(vec![alice.user_id]));
    assert_eq!(notice_within(&mut a, Duration::from_secs(5)).await, Some(vec![alice.user_id]));
    assert_eq!(notice_within(&mut c, Duration::from_millis(300)).await, None);

    // Unacknowledged, it comes again after a reconnect; acknowledged, it does not.
    drop(b);
    let mut b = online(&server, kind, &bob).await;
    assert_eq!(notice_within(&mut b, Duration::from_secs(5)).await, Some(vec![alice.user_id]));
    b.ack_device_lists(&[alice.user_id]).await.unwrap();
    settled(&mut b, bob.user_id).await;
    drop(b);
    let mut b = online(&server, kind, &bob).await;
    assert_eq!(notice_within(&mut b, Duration::from_millis(300)).await, None);

    // The laptop publishes identity keys: a change again (not told to the laptop itself).
    let mut l = online(&server, kind, &laptop).await;
    let mut account = vodozemac::olm::Account::new();
    l.upload_keys(signed_upload(&mut account, alice.user_id, laptop.device_id, 2, true)).await.unwrap();
    assert_eq!(notice_within(&mut b, Duration::from_secs(5)).await, Some(vec![alice.user_id]));
    assert_eq!(notice_within(&mut l, Duration::from_millis(300)).await, None);
    b.ack_device_lists(&[alice.user_id]).await.unwrap();

    // Revoking it: once more.
    drop(l);
    api.revoke(&alice.token, laptop.device_id).await.unwrap();
    assert_eq!(notice_within(&mut b, Duration::from_secs(5)).await, Some(vec![alice.user_id]));
}
