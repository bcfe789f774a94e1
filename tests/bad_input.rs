//! Bad input never crashes the node or disturbs other sessions: each case gets a clear
//! error frame or HTTP status, and a broken protocol gets a close with a reason.

#[macro_use]
mod common;

use bytes::Bytes;
use common::{Kind, TestServer, WAIT, next_closing, next_error, online, user};
use switchboard::client::{ClientError, Connection};
use switchboard::ids::{ConversationId, UserId};
use switchboard::protocol::{ErrorCode, PROTOCOL_VERSION, client_frame, id_bytes, pb, server_frame};

both_transports!(
    malformed_frame_gets_an_error_and_the_connection_survives,
    frame_before_hello_is_refused_and_closed,
    wrong_token_and_wrong_version_are_refused,
    revoking_a_device_closes_its_connection_and_its_token,
    unknown_conversation_and_non_member_get_errors,
    oversize_frame_closes_with_reason,
    flood_is_rate_limited_without_hurting_others,
    a_rate_limited_request_is_named_in_its_error,
    invalid_fields_get_invalid_argument,
);

/// The fatal error and the Closing frame that must end a refused connection.
async fn expect_refusal(conn: &mut Connection, code: ErrorCode) {
    let err = conn
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::Error(e) if e.fatal => Some(e.clone()),
            _ => None,
        })
        .await
        .expect("fatal error frame");
    assert_eq!(err.code(), code, "{err:?}");
    assert!(err.fatal);
    let closing = next_closing(conn).await;
    assert_eq!(closing.code(), code);
    assert!(!closing.reason.is_empty());
    // Nothing follows Closing: the server closes the connection. (Frames before it, kept
    // by the waits above, are dropped first.)
    conn.discard_buffered();
    // The end of the stream, or a reset/protocol error: either way, closed.
    match conn.recv_timeout(WAIT).await {
        Ok(frame) => panic!("frame after Closing: {frame:?}"),
        Err(ClientError::Timeout) => panic!("connection not closed within {WAIT:?}"),
        Err(_) => {}
    }
}

async fn ping_works(conn: &mut Connection) {
    conn.send(client_frame::Kind::Ping(pb::Ping { nonce: 42 })).await.unwrap();
    conn.wait_for(WAIT, false, |k| matches!(k, server_frame::Kind::Pong(p) if p.nonce == 42).then_some(())).await.unwrap();
}

async fn malformed_frame_gets_an_error_and_the_connection_survives(kind: Kind) {
    let server = TestServer::start();
    let alice = user(&server.api()).await;
    let mut a = online(&server, kind, &alice).await;
    a.send_raw(Bytes::from_static(&[0xff, 0xff, 0xff, 0x0f, 0x01])).await.unwrap();
    let e = next_error(&mut a).await;
    assert_eq!(e.code(), ErrorCode::BadFrame);
    assert!(!e.fatal);
    // An empty frame (no kind) is also refused, non-fatally.
    a.send_raw(Bytes::new()).await.unwrap();
    let e = next_error(&mut a).await;
    assert_eq!(e.code(), ErrorCode::BadFrame);
    ping_works(&mut a).await;

    // A stream of garbage ends with a close that says why.
    for _ in 0..20 {
        // The server may close before the last ones are written: that is the point.
        if a.send_raw(Bytes::from_static(&[0x0a, 0xff])).await.is_err() {
            break;
        }
    }
    expect_refusal(&mut a, ErrorCode::BadFrame).await;
    // The node is fine.
    let mut again = online(&server, kind, &alice).await;
    ping_works(&mut again).await;
}

async fn frame_before_hello_is_refused_and_closed(kind: Kind) {
    let server = TestServer::start();
    let mut conn = Connection::connect(&server.transport(kind)).await.unwrap();
    conn.send(client_frame::Kind::Send(pb::Send {
        client_msg_id: "x".into(),
        conversation_id: id_bytes(ConversationId::random()),
        payload: Bytes::from_static(b"sneaky"),
        kind: 0,
        reference_seq: 0,
        attachments: Vec::new(),
    }))
    .await
    .unwrap();
    expect_refusal(&mut conn, ErrorCode::NotAuthenticated).await;
}

async fn wrong_token_and_wrong_version_are_refused(kind: Kind) {
    let server = TestServer::start();
    let mut conn = Connection::connect(&server.transport(kind)).await.unwrap();
    conn.send(client_frame::Kind::Hello(pb::Hello { protocol_version: PROTOCOL_VERSION, token: "nope".into(), client_name: String::new() }))
        .await
        .unwrap();
    expect_refusal(&mut conn, ErrorCode::InvalidToken).await;

    let alice = user(&server.api()).await;
    let mut conn = Connection::connect(&server.transport(kind)).await.unwrap();
    conn.send(client_frame::Kind::Hello(pb::Hello { protocol_version: 99, token: alice.token.clone(), client_name: String::new() })).await.unwrap();
    expect_refusal(&mut conn, ErrorCode::UnsupportedVersion).await;

    // A second Hello on a live connection is refused without closing it.
    let mut a = online(&server, kind, &alice).await;
    a.send(client_frame::Kind::Hello(pb::Hello { protocol_version: PROTOCOL_VERSION, token: alice.token.clone(), client_name: String::new() }))
        .await
        .unwrap();
    let e = next_error(&mut a).await;
    assert_eq!(e.code(), ErrorCode::AlreadyAuthenticated);
    ping_works(&mut a).await;
}

async fn revoking_a_device_closes_its_connection_and_its_token(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let laptop = api.link_device(&alice.token, "laptop").await.unwrap();
    let mut l = online(&server, kind, &laptop).await;
    let mut phone = online(&server, kind, &alice).await;

    // A linked device may not revoke others.
    let err = api.revoke(&laptop.token, alice.device_id).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");

    api.revoke(&alice.token, laptop.device_id).await.unwrap();
    let closing = next_closing(&mut l).await;
    assert_eq!(closing.code(), ErrorCode::DeviceRevoked);
    assert_eq!(closing.reconnect_after_ms, 0);

    let mut conn = Connection::connect(&server.transport(kind)).await.unwrap();
    conn.send(client_frame::Kind::Hello(pb::Hello { protocol_version: PROTOCOL_VERSION, token: laptop.token.clone(), client_name: String::new() }))
        .await
        .unwrap();
    expect_refusal(&mut conn, ErrorCode::DeviceRevoked).await;
    let err = api.devices(&laptop.token).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    let devices = api.devices(&alice.token).await.unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().any(|d| d.device_id == laptop.device_id && d.revoked_ms.is_some()));
    ping_works(&mut phone).await;
}

async fn unknown_conversation_and_non_member_get_errors(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let carol = user(&api).await;
    let mut a = online(&server, kind, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    a.send_and_ack(conversation, "1", &b"hi"[..]).await.unwrap();

    let unknown = a.send_and_ack(ConversationId::random(), "2", &b"x"[..]).await.unwrap_err();
    assert!(matches!(unknown, ClientError::Rejected { code: ErrorCode::UnknownConversation, .. }), "{unknown}");

    let mut c = online(&server, kind, &carol).await;
    let not_member = c.send_and_ack(conversation, "3", &b"x"[..]).await.unwrap_err();
    assert!(matches!(not_member, ClientError::Rejected { code: ErrorCode::NotAMember, .. }), "{not_member}");
    let history = c.history(conversation, 0, 10).await.unwrap_err();
    assert!(matches!(history, ClientError::Rejected { code: ErrorCode::NotAMember, .. }), "{history}");
    let unknown_user = c.open_direct(UserId::random()).await.unwrap_err();
    assert!(matches!(unknown_user, ClientError::Rejected { code: ErrorCode::UnknownUser, .. }), "{unknown_user}");
    ping_works(&mut c).await;
    // Nothing was stored by the refused sends.
    assert_eq!(a.history(conversation, 0, 10).await.unwrap().messages.len(), 1);
}

async fn oversize_frame_closes_with_reason(kind: Kind) {
    let server = TestServer::start_with(&["--max-frame-bytes", "8192", "--max-payload-bytes", "4096"]);
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let mut a = online(&server, kind, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    // A payload over the payload limit but inside the frame limit: refused, not fatal.
    let err = a.send_and_ack(conversation, "big", vec![7u8; 6000]).await.unwrap_err();
    assert!(matches!(err, ClientError::Rejected { code: ErrorCode::PayloadTooLarge, .. }), "{err}");
    ping_works(&mut a).await;
    // A frame over the frame limit: the connection is closed with FRAME_TOO_LARGE.
    a.send_message(conversation, "huge", vec![7u8; 20_000]).await.unwrap();
    expect_refusal(&mut a, ErrorCode::FrameTooLarge).await;
    let mut b = online(&server, kind, &bob).await;
    ping_works(&mut b).await;
}

async fn flood_is_rate_limited_without_hurting_others(kind: Kind) {
    let server = TestServer::start_with(&["--rate-per-sec", "50", "--rate-burst", "50"]);
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let mut a = online(&server, kind, &alice).await;
    let mut b = online(&server, kind, &bob).await;
    let conversation = b.open_direct(alice.user_id).await.unwrap();
    let flood: Vec<_> = (0..400).map(|n| client_frame::Kind::Ping(pb::Ping { nonce: n })).collect();
    a.send_many(flood).await.unwrap();
    a.wait_for(WAIT, false, |k| matches!(k, server_frame::Kind::Error(e) if e.code() == ErrorCode::RateLimited).then_some(())).await.unwrap();
    // Bob is unaffected while Alice floods.
    let ack = b.send_and_ack(conversation, "during-flood", &b"hello"[..]).await.unwrap();
    assert_eq!(ack.seq, 1);
    // A flood that never stops ends with a close.
    let mut closed = false;
    for round in 0..30u64 {
        let burst: Vec<_> = (0..200).map(|n| client_frame::Kind::Ping(pb::Ping { nonce: round * 1000 + n })).collect();
        if a.send_many(burst).await.is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        let outcome = a
            .wait_for(WAIT, false, |k| match k {
                server_frame::Kind::Closing(c) => Some(c.code()),
                _ => None,
            })
            .await;
        match outcome {
            Ok(code) => assert_eq!(code, ErrorCode::RateLimited),
            Err(ClientError::Closed) => {}
            Err(e) => panic!("flooding connection was not closed: {e}"),
        }
    }
    ping_works(&mut b).await;
}

async fn a_rate_limited_request_is_named_in_its_error(kind: Kind) {
    let server = TestServer::start_with(&["--rate-per-sec", "1", "--rate-burst", "5"]);
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = online(&server, kind, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    // Ten requests at once: the bucket (5, minus the OpenDirect) takes four; those it
    // drops are each named in their RATE_LIMITED error (request_id, or client_msg_id).
    let mut frames: Vec<_> = (1..=9u64)
        .map(|n| {
            client_frame::Kind::History(pb::HistoryRequest { request_id: 1000 + n, conversation_id: id_bytes(conversation), before_seq: 0, limit: 1 })
        })
        .collect();
    frames.push(client_frame::Kind::Send(pb::Send {
        client_msg_id: "dropped-send".into(),
        conversation_id: id_bytes(conversation),
        payload: Bytes::from_static(b"x"),
        kind: 0,
        reference_seq: 0,
        attachments: Vec::new(),
    }));
    a.send_many(frames).await.unwrap();
    let mut refs = Vec::new();
    while refs.last().map(String::as_str) != Some("dropped-send") {
        let e = next_error(&mut a).await;
        assert_eq!(e.code(), ErrorCode::RateLimited, "{e:?}");
        assert!(!e.fatal);
        refs.push(e.request_ref);
    }
    // (Four, or five if the bucket refilled a token meanwhile, went through.)
    let expected: Vec<String> = (1005..=1009).map(|n: u64| n.to_string()).chain(["dropped-send".to_owned()]).collect();
    assert!(refs.len() >= 5 && expected.ends_with(&refs), "{refs:?}");
}

async fn invalid_fields_get_invalid_argument(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let mut a = online(&server, kind, &alice).await;
    a.send(client_frame::Kind::Send(pb::Send {
        client_msg_id: "x".into(),
        conversation_id: Bytes::from_static(b"short"),
        payload: Bytes::new(),
        kind: 0,
        reference_seq: 0,
        attachments: Vec::new(),
    }))
    .await
    .unwrap();
    let e = next_error(&mut a).await;
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert_eq!(e.request_ref, "x");
    let long_id = "x".repeat(65);
    let bob = user(&api).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    let err = a.send_and_ack(conversation, &long_id, &b"p"[..]).await.unwrap_err();
    assert!(matches!(err, ClientError::Rejected { code: ErrorCode::InvalidArgument, .. }), "{err}");
    ping_works(&mut a).await;
}

#[tokio::test]
async fn http_account_errors_have_clear_statuses() {
    // The same number registered again at once (a new phone): no resend cooldown here
    // (the cooldown has its own test, tests/signup_limits.rs).
    let server = TestServer::start_with(&["--code-cooldown-secs", "0"]);
    let api = server.api();
    let bad_phone = api.register("12345").await.unwrap_err();
    assert!(bad_phone.to_string().contains("400"), "{bad_phone}");
    let phone = common::phone();
    api.register(&phone).await.unwrap();
    let wrong = api.verify(&phone, "000000x", "phone").await.unwrap_err();
    assert!(wrong.to_string().contains("401"), "{wrong}");
    let no_token = api.devices("").await.unwrap_err();
    assert!(no_token.to_string().contains("401"), "{no_token}");
    let garbage = api.get("/v1/conversations/not-a-uuid/messages", Some("t")).await.unwrap();
    assert_eq!(garbage.status().as_u16(), 401);

    // A phone plus four linked devices, and no more.
    let alice_phone = common::phone();
    let alice = api.sign_up(&alice_phone, "phone").await.unwrap();
    for n in 0..4 {
        api.link_device(&alice.token, &format!("linked {n}")).await.unwrap();
    }
    let full = api.link_device(&alice.token, "one too many").await.unwrap_err();
    assert!(full.to_string().contains("409"), "{full}");

    // Re-registering the number on a new phone revokes the old primary.
    let code = api.register(&alice_phone).await.unwrap().unwrap();
    let again = api.verify(&alice_phone, &code, "new phone").await.unwrap();
    assert_eq!(again.user_id, alice.user_id);
    assert!(api.devices(&alice.token).await.is_err());
}
