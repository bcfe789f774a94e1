//! Push notifications: devices without a live connection are notified through the webhook
//! sink (coalesced, without content, retried on failure); connected devices are not.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Kind, TestServer, online, push_receiver as receiver, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_get_a_coalesced_push_and_online_ones_do_not() {
    let (url, mut pushes) = receiver(1).await;
    let sink = format!("webhook:{url}");
    let server = TestServer::start_with(&["--push-sink", &sink, "--push-coalesce-ms", "200"]);
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let bob_laptop = api.link_device(&bob.token, "laptop").await.unwrap();
    for (creds, token) in [(&bob, "bob-phone"), (&bob_laptop, "bob-laptop"), (&carol, "carol-phone")] {
        api.set_push_token(&creds.token, "fcm", token).await.unwrap();
    }
    let mut a = online(&server, Kind::Tcp, &alice).await;
    // Bob's phone is connected; his laptop and Carol are not.
    let _b = online(&server, Kind::Tcp, &bob).await;
    let group = a.create_group("push", &[bob.user_id, carol.user_id]).await.unwrap();
    for i in 0..3 {
        a.send_and_ack(group, &format!("p-{i}"), &b"secret content"[..]).await.unwrap();
    }

    let mut counts: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while counts.values().sum::<u64>() < 6 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let push = tokio::time::timeout(remaining, pushes.recv()).await.expect("pushes for both offline devices").unwrap();
        assert_eq!(push["conversation_id"], group.to_string());
        assert_eq!(push["sender_user_id"], alice.user_id.to_string());
        assert!(!push.to_string().contains("secret"), "a push must carry no content: {push}");
        *counts.entry(push["token"].as_str().unwrap().to_owned()).or_default() += push["count"].as_u64().unwrap();
    }
    assert_eq!(counts.get("bob-laptop"), Some(&3));
    assert_eq!(counts.get("carol-phone"), Some(&3));
    assert!(!counts.contains_key("bob-phone"), "a connected device is not pushed");
    // The receiver failed the first delivery with 500: the counts above are only complete
    // because it was retried. Nothing else arrives (no push for the sender or online devices).
    assert!(tokio::time::timeout(Duration::from_millis(800), pushes.recv()).await.is_err());

    // Once Carol removes her token, she is no longer pushed.
    api.delete_push_token(&carol.token).await.unwrap();
    a.send_and_ack(group, "p-last", &b"x"[..]).await.unwrap();
    let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv()).await.unwrap().unwrap();
    assert_eq!(push["token"], "bob-laptop");
    assert!(tokio::time::timeout(Duration::from_millis(800), pushes.recv()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_leaves_with_unacknowledged_messages_is_pushed_for_them() {
    let (url, mut pushes) = receiver(0).await;
    let sink = format!("webhook:{url}");
    let server = TestServer::start_with(&["--push-sink", &sink, "--push-coalesce-ms", "200"]);
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    api.set_push_token(&bob.token, "fcm", "bob-phone").await.unwrap();
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let direct = a.open_direct(bob.user_id).await.unwrap();
    for i in 1..=2 {
        a.send_and_ack(direct, &format!("m-{i}"), &b"hi"[..]).await.unwrap();
    }
    for _ in 1..=2 {
        b.next_message(Duration::from_secs(10)).await.unwrap();
    }
    // Bob's device acknowledges the first message only, answers, and leaves: the second
    // one reached it but was never acknowledged (his own answer does not count).
    b.ack(direct, 1).await.unwrap();
    b.send_and_ack(direct, "answer", &b"yo"[..]).await.unwrap();
    b.bye().await.unwrap();
    let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv()).await.expect("a push for bob's device").unwrap();
    assert_eq!(push["token"], "bob-phone");
    assert_eq!(push["conversation_id"], direct.to_string());
    assert_eq!(push["sender_user_id"], alice.user_id.to_string());
    assert_eq!(push["count"], 1);
}

/// What the user read on another device is not pushed: Bob's phone is offline (it has a
/// push token), his laptop online. A message the laptop reads before the push is due is
/// never pushed; one whose first push failed (the gateway answered 500) and that the
/// laptop reads before the retry is not pushed on the retry either. An unread one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_read_on_another_device_is_not_pushed() {
    let (url, mut pushes, attempts) = common::counting_push_receiver(1).await;
    let sink = format!("webhook:{url}");
    // Pushes are due 1 s after a message; a failed one is retried 3 s later.
    let server = TestServer::start_with(&["--push-sink", &sink, "--push-coalesce-ms", "1000", "--push-retry-backoff-ms", "3000"]);
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let laptop = api.link_device(&bob.token, "laptop").await.unwrap();
    api.set_push_token(&bob.token, "fcm", "bob-phone").await.unwrap();
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut l = online(&server, Kind::Tcp, &laptop).await;
    let direct = a.open_direct(bob.user_id).await.unwrap();

    // 1. Read at once on the laptop: the phone is never pushed (the first attempt would
    //    have failed: it is never made).
    let first = a.send_and_ack(direct, "m-1", &b"hi"[..]).await.unwrap().seq;
    assert_eq!(l.next_message(Duration::from_secs(10)).await.unwrap().seq, first);
    l.read(direct, first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 0, "a message read on the laptop was pushed to the phone");

    // 2. Unread when due: the first attempt fails; read before the retry: not retried.
    let second = a.send_and_ack(direct, "m-2", &b"still there?"[..]).await.unwrap().seq;
    assert_eq!(l.next_message(Duration::from_secs(10)).await.unwrap().seq, second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while attempts.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no push attempt for an unread message");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    l.read(direct, second).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1, "the failed push was retried after the message was read");
    assert!(pushes.try_recv().is_err());

    // 3. Unread: pushed.
    let third = a.send_and_ack(direct, "m-3", &b"hello?"[..]).await.unwrap().seq;
    let push = tokio::time::timeout(Duration::from_secs(10), pushes.recv()).await.expect("a push for an unread message").unwrap();
    assert_eq!((push["token"].as_str(), push["count"].as_u64()), (Some("bob-phone"), Some(1)), "{push}");
    assert!(third > second);
}
