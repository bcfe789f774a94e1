//! Delete for everyone, edits and reactions, and disappearing messages, in 1:1 and groups.

mod common;

use std::time::{Duration, Instant};

use common::{Kind, Pair, TestServer, WAIT, online, pair, user};
use switchboard::client::{ClientError, Connection};
use switchboard::protocol::{ErrorCode, pb};

async fn event(conn: &mut Connection) -> (u64, pb::conversation_event::Kind) {
    loop {
        let m = conn.next_message(WAIT).await.expect("message");
        if let Some(kind) = m.event.and_then(|e| e.kind) {
            return (m.seq, kind);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_for_everyone_reaches_every_device_and_erases_the_payload() {
    let server = TestServer::start();
    let api = server.api();
    let Pair { alice, bob, mut a, conversation } = pair(&server, Kind::Tcp).await;
    let alice_laptop = api.link_device(&alice.token, "laptop").await.unwrap();
    let mut a2 = online(&server, Kind::Ws, &alice_laptop).await;
    let mut b = online(&server, Kind::Ws, &bob).await;
    a.send_and_ack(conversation, "secret", &b"oops, wrong chat"[..]).await.unwrap();
    assert_eq!(b.next_message(WAIT).await.unwrap().seq, 1);
    assert_eq!(a2.next_message(WAIT).await.unwrap().seq, 1);

    // Only the sender may delete in a 1:1.
    let refused = b.delete_message(conversation, 1).await.unwrap_err();
    assert!(matches!(refused, ClientError::Rejected { code: ErrorCode::NotAdmin, .. }), "{refused}");

    let answer = a.delete_message(conversation, 1).await.unwrap();
    assert_eq!(answer.seq, 2);
    for conn in [&mut a, &mut a2, &mut b] {
        let (seq, kind) = event(conn).await;
        assert_eq!(seq, 2);
        assert_eq!(kind, pb::conversation_event::Kind::MessageDeleted(1));
    }
    let page = b.history(conversation, 0, 10).await.unwrap();
    let original = page.messages.iter().find(|m| m.seq == 1).unwrap();
    assert!(original.deleted);
    assert!(original.payload.is_empty(), "the stored payload must be erased");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_admins_delete_any_message_members_only_their_own() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let mut c = online(&server, Kind::Tcp, &carol).await;
    let group = a.create_group("g", &[bob.user_id, carol.user_id]).await.unwrap();
    let bobs = b.send_and_ack(group, "b1", &b"from bob"[..]).await.unwrap();
    let refused = c.delete_message(group, bobs.seq).await.unwrap_err();
    assert!(matches!(refused, ClientError::Rejected { code: ErrorCode::NotAdmin, .. }), "{refused}");
    a.delete_message(group, bobs.seq).await.unwrap();
    let (_, kind) = event(&mut c).await; // creation event
    assert!(matches!(kind, pb::conversation_event::Kind::Created(_)));
    let (_, kind) = event(&mut c).await;
    assert_eq!(kind, pb::conversation_event::Kind::MessageDeleted(bobs.seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_reactions_reference_their_target() {
    let server = TestServer::start();
    let Pair { bob, mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    a.send_and_ack(conversation, "m1", &b"hello"[..]).await.unwrap();
    assert_eq!(b.next_message(WAIT).await.unwrap().seq, 1);
    let reaction = b.send_reference(conversation, "r1", pb::MessageKind::Reaction, 1, &b"thumbs-up"[..]).await.unwrap();
    let got = a.next_message(WAIT).await.unwrap();
    assert_eq!(got.seq, reaction.seq);
    assert_eq!(got.kind(), pb::MessageKind::Reaction);
    assert_eq!(got.reference_seq, 1);
    a.send_reference(conversation, "e1", pb::MessageKind::Edit, 1, &b"hello, edited"[..]).await.unwrap();
    let got = b.next_message(WAIT).await.unwrap();
    assert_eq!(got.kind(), pb::MessageKind::Edit);
    assert_eq!(got.reference_seq, 1);
    // Only the sender edits; anyone in the conversation may react.
    let not_yours = b.send_reference(conversation, "e-bob", pb::MessageKind::Edit, 1, &b"hijack"[..]).await.unwrap_err();
    assert!(matches!(not_yours, ClientError::Rejected { code: ErrorCode::InvalidArgument, .. }), "{not_yours}");
    let bad = a.send_reference(conversation, "e2", pb::MessageKind::Edit, 99, &b"x"[..]).await.unwrap_err();
    assert!(matches!(bad, ClientError::Rejected { code: ErrorCode::InvalidArgument, .. }), "{bad}");
    // The original is untouched: an edit is a new message, the content stays opaque.
    let page = a.history(conversation, 0, 10).await.unwrap();
    assert_eq!(page.messages.iter().find(|m| m.seq == 1).unwrap().payload.as_ref(), b"hello");
}

/// Deleting for everyone takes what refers to the message with it: its edit and the
/// reactions to it are blanked in the store, so neither socket nor HTTP history nor a new
/// device's catch-up serves the edited text; and what is deleted can no longer be edited
/// or reacted to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_for_everyone_takes_its_edits_and_reactions_with_it() {
    let server = TestServer::start();
    let api = server.api();
    let Pair { bob, mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let secret = a.send_and_ack(conversation, "s", &b"secret"[..]).await.unwrap().seq;
    let edit = a.send_reference(conversation, "s-edit", pb::MessageKind::Edit, secret, &b"secret v2"[..]).await.unwrap().seq;
    let reaction = b.send_reference(conversation, "s-react", pb::MessageKind::Reaction, secret, &b"wow"[..]).await.unwrap().seq;
    let other = a.send_and_ack(conversation, "o", &b"unrelated"[..]).await.unwrap().seq;
    a.delete_message(conversation, secret).await.unwrap();

    let blanked = |m: &pb::Message| m.deleted && m.payload.is_empty();
    let page = b.history(conversation, 0, 50).await.unwrap();
    for seq in [secret, edit, reaction] {
        let m = page.messages.iter().find(|m| m.seq == seq).unwrap();
        assert!(blanked(m), "socket history still serves seq {seq}: {m:?}");
    }
    assert_eq!(page.messages.iter().find(|m| m.seq == other).unwrap().payload.as_ref(), b"unrelated");
    let http = api.history(&bob.token, conversation, 0, 50).await.unwrap();
    let text = http.to_string();
    assert!(!text.contains(&hex::encode("secret")), "HTTP history serves the message or its edit: {http}");
    // A device linked now catches up with nothing of it.
    let laptop = api.link_device(&bob.token, "laptop").await.unwrap();
    let (mut fresh, _) = Connection::open(&server.transport(Kind::Tcp), &laptop.token).await.unwrap();
    common::caught_up(&mut fresh).await;
    while let Ok(m) = fresh.next_message(Duration::from_millis(300)).await {
        if [secret, edit, reaction].contains(&m.seq) {
            assert!(blanked(&m), "catch-up serves seq {}: {m:?}", m.seq);
        }
    }
    // Nothing more refers to a deleted message.
    for (kind, who) in [(pb::MessageKind::Edit, &mut a), (pb::MessageKind::Reaction, &mut b)] {
        let refused = who.send_reference(conversation, &format!("late-{kind:?}"), kind, secret, &b"late"[..]).await.unwrap_err();
        assert!(matches!(refused, ClientError::Rejected { code: ErrorCode::InvalidArgument, .. }), "{kind:?}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disappearing_messages_drop_out_of_history() {
    let server = TestServer::start_with(&["--purge-interval-secs", "1"]);
    let Pair { bob, mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    let mut b = online(&server, Kind::Ws, &bob).await;
    let set = a.set_retention(conversation, 1).await.unwrap();
    let (seq, kind) = event(&mut b).await;
    assert_eq!((seq, kind), (set.seq, pb::conversation_event::Kind::RetentionChanged(1)));
    for i in 0..3 {
        a.send_and_ack(conversation, &format!("d-{i}"), &b"vanishing"[..]).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let page = b.history(conversation, 0, 50).await.unwrap();
        let ordinary = page.messages.iter().filter(|m| m.event.is_none()).count();
        if ordinary == 0 {
            // The retention event itself stays, so everyone knows why messages vanish.
            assert!(page.messages.iter().any(|m| m.seq == set.seq));
            break;
        }
        assert!(Instant::now() < deadline, "expired messages are still in history");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The log goes on without a gap in seq.
    let next = a.send_and_ack(conversation, "after", &b"x"[..]).await.unwrap();
    assert_eq!(next.seq, set.seq + 4);
    // Turning it off keeps new messages.
    a.set_retention(conversation, 0).await.unwrap();
}

/// Expiry is a rule, not the sweep's doing: with the sweep far away (600 s), a message
/// past its retention is no longer served by catch-up (nor counted in CatchUpComplete),
/// socket or HTTP history, or MessageInfo, while a fresh one still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_is_not_served_before_the_sweep_runs() {
    let server = TestServer::start_with(&["--purge-interval-secs", "600"]);
    let api = server.api();
    let Pair { alice, bob, mut a, conversation } = pair(&server, Kind::Tcp).await;
    a.set_retention(conversation, 2).await.unwrap();
    let old = a.send_and_ack(conversation, "old", &b"expiring"[..]).await.unwrap().seq;
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let fresh = a.send_and_ack(conversation, "fresh", &b"still here"[..]).await.unwrap().seq;

    // Catch-up of a device that never saw either: only the fresh one (and the event).
    let (mut b, _) = Connection::open(&server.transport(Kind::Tcp), &bob.token).await.unwrap();
    let counted = common::caught_up(&mut b).await;
    let mut payloads = Vec::new();
    while let Ok(m) = b.next_message(Duration::from_millis(300)).await {
        if m.event.is_none() {
            payloads.push(m.seq);
        }
    }
    assert_eq!(payloads, vec![fresh], "catch-up served an expired message");
    assert_eq!(counted, 2, "CatchUpComplete counts the retention event and the fresh message");

    // History, over the socket and over HTTP.
    let page = b.history(conversation, 0, 50).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().filter(|m| m.event.is_none()).map(|m| m.seq).collect();
    assert_eq!(seqs, vec![fresh]);
    let http = api.history(&bob.token, conversation, 0, 50).await.unwrap();
    let seqs: Vec<u64> = http["messages"].as_array().unwrap().iter().filter(|m| m["event_hex"].is_null()).filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![fresh], "HTTP history served an expired message: {http}");

    // MessageInfo: the sender asks about both.
    match a.message_info(conversation, old).await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::InvalidArgument),
        other => panic!("message info on an expired message: {other:?}"),
    }
    assert_eq!(a.message_info(conversation, fresh).await.unwrap().seq, fresh);

    // The expired message's client id is free again: sent once more, it is a new message,
    // not a duplicate of the expired one (the sweep has not run: only the rule can tell).
    let again = a.send_and_ack(conversation, "old", &b"expiring"[..]).await.unwrap();
    assert!(!again.duplicate && again.seq > fresh, "a resend of an expired client id: {again:?}");
    let retry = a.send_and_ack(conversation, "old", &b"expiring"[..]).await.unwrap();
    assert!(retry.duplicate && retry.seq == again.seq, "and a retry of that one is its duplicate: {retry:?}");
    let _ = alice;
}
