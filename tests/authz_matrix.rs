//! The authorisation matrix: every client frame and every HTTP endpoint, asked by each
//! kind of caller that must be refused — no token, a wrong token, a revoked device,
//! another user, a non-member, a removed member, a non-admin (for HTTP: a non-primary
//! device; for the admin API: no token, a wrong one, a device's token) — gets the
//! refusal docs/protocol.md documents, and changes nothing: afterwards the logs, the
//! group's state and the accounts are exactly as before, and no other device was told
//! anything.
//!
//! The world: A (admin) created group G with B and R, and removed R; G2 {A admin, B} has
//! "admins only send" and "admins only info" on and a revoked invite; D is A and B's 1:1;
//! N belongs to nothing. A, B, R and N are connected throughout, and L is B's linked
//! device.

mod common;

use std::time::Duration;

use common::{ADMIN_TOKEN, TestServer, next_closing, next_error, online, user};
use switchboard::client::{ClientError, Connection, Transport};
use switchboard::ids::{ConversationId, UserId};
use switchboard::protocol::pb::group_change::Change;
use switchboard::protocol::{ErrorCode, client_frame, id_bytes, pb, server_frame};

/// The answer to a request: its code, when it was refused.
fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Rejected { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Everything a caller could have changed in a conversation, as its admin sees it.
#[derive(Debug, PartialEq)]
struct Snapshot {
    log: Vec<(u64, String, bool)>,
    group: Option<pb::GroupInfo>,
}

async fn snapshot(conn: &mut Connection, conversation: ConversationId, group: bool) -> Snapshot {
    let page = conn.history(conversation, 0, 200).await.expect("history");
    let log = page.messages.iter().map(|m| (m.seq, m.client_msg_id.clone(), m.deleted)).collect();
    let group = if group {
        let mut info = conn.group_info(conversation).await.expect("group info");
        info.request_id = 0;
        Some(info)
    } else {
        None
    };
    Snapshot { log, group }
}

/// One frame of every kind the client can send (except Hello), aimed at `target`.
fn every_frame(target: ConversationId, peer: UserId) -> Vec<(&'static str, client_frame::Kind)> {
    let c = || id_bytes(target);
    let change = |change: Change| client_frame::Kind::GroupChange(pb::GroupChange { request_id: 7, conversation_id: c(), change: Some(change) });
    vec![
        ("ping", client_frame::Kind::Ping(pb::Ping { nonce: 1 })),
        ("open_direct", client_frame::Kind::OpenDirect(pb::OpenDirect { request_id: 1, peer_user_id: id_bytes(peer) })),
        (
            "send",
            client_frame::Kind::Send(pb::Send {
                client_msg_id: "intruder".into(),
                conversation_id: c(),
                payload: "x".into(),
                kind: 0,
                reference_seq: 0,
                attachments: Vec::new(),
            }),
        ),
        ("ack", client_frame::Kind::Ack(pb::Ack { conversation_id: c(), seq: 1000 })),
        ("read", client_frame::Kind::Read(pb::Read { conversation_id: c(), seq: 1000 })),
        ("typing", client_frame::Kind::Typing(pb::Typing { conversation_id: c(), active: true })),
        ("history", client_frame::Kind::History(pb::HistoryRequest { request_id: 3, conversation_id: c(), before_seq: 0, limit: 50 })),
        ("presence_query", client_frame::Kind::PresenceQuery(pb::PresenceQuery { request_id: 4, user_ids: vec![id_bytes(peer)] })),
        ("bye", client_frame::Kind::Bye(pb::Bye {})),
        (
            "create_group",
            client_frame::Kind::CreateGroup(pb::CreateGroup { request_id: 5, subject: "intruders".into(), member_user_ids: vec![id_bytes(peer)] }),
        ),
        ("group_change", change(Change::AddMembers(pb::UserList { user_ids: vec![id_bytes(peer)] }))),
        ("join_group", client_frame::Kind::JoinGroup(pb::JoinGroup { request_id: 8, invite_token: "0".repeat(32) })),
        ("delete_message", client_frame::Kind::DeleteMessage(pb::DeleteMessage { request_id: 9, conversation_id: c(), seq: 2 })),
        ("set_retention", client_frame::Kind::SetRetention(pb::SetRetention { request_id: 10, conversation_id: c(), seconds: 1 })),
        ("message_info", client_frame::Kind::MessageInfo(pb::MessageInfo { request_id: 11, conversation_id: c(), seq: 2 })),
        ("group_info", client_frame::Kind::GroupInfo(pb::GroupInfoRequest { request_id: 12, conversation_id: c() })),
        ("inbox", client_frame::Kind::Inbox(pb::InboxRequest { request_id: 13, since_version: 0, after: String::new(), limit: 0 })),
        (
            "update_chat",
            client_frame::Kind::UpdateChat(pb::UpdateChat { request_id: 14, conversation_id: c(), archived: Some(true), ..Default::default() }),
        ),
    ]
}

/// The fatal error and Closing that end a refused connection, and nothing else of
/// consequence (no answer to the frame that followed).
async fn refused_connection(conn: &mut Connection, code: ErrorCode, what: &str) {
    let error = next_error(conn).await;
    assert_eq!((error.code(), error.fatal), (code, true), "{what}: {error:?}");
    let closing = next_closing(conn).await;
    assert_eq!(closing.code(), code, "{what}");
    let after = drain(conn).await;
    assert!(after.is_empty(), "{what}: frames after the refusal: {after:?}");
}

/// Frames still arriving within a short while (None once the connection ended).
async fn drain(conn: &mut Connection) -> Vec<server_frame::Kind> {
    let mut frames = Vec::new();
    while let Ok(frame) = conn.recv_timeout(Duration::from_millis(200)).await {
        if !matches!(frame, server_frame::Kind::Error(_) | server_frame::Kind::Closing(_)) {
            frames.push(frame);
        }
    }
    frames
}

/// Nothing arrived on `conn` that an intruder might have caused (typing, messages,
/// receipts, events); presence, pongs and device-list notices are expected.
async fn told_nothing(conn: &mut Connection, who: &str) {
    conn.discard_buffered();
    while let Ok(frame) = conn.recv_timeout(Duration::from_millis(300)).await {
        match frame {
            server_frame::Kind::Presence(_) | server_frame::Kind::Pong(_) => {}
            // The links and revocations this test makes itself (accepted ones) change A's
            // and B's device lists, which their devices are told; that a refused link or
            // revocation changed no device is checked on the device lists themselves.
            server_frame::Kind::DeviceListsChanged(_) => {}
            other => panic!("{who} was told something by a refused request: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_and_endpoint_refuses_whoever_may_not_and_changes_nothing() {
    let server = TestServer::start();
    let api = server.api();
    let (a, b, r, n) = (user(&api).await, user(&api).await, user(&api).await, user(&api).await);
    let linked = api.link_device(&b.token, "laptop").await.expect("link");
    let mut ca = online(&server, common::Kind::Tcp, &a).await;
    let mut cb = online(&server, common::Kind::Tcp, &b).await;
    let mut cr = online(&server, common::Kind::Tcp, &r).await;
    let mut cn = online(&server, common::Kind::Tcp, &n).await;

    // The world.
    let g = ca.create_group("matrix", &[b.user_id, r.user_id]).await.expect("group");
    let a_msg = ca.send_and_ack(g, "a-1", b"from a".to_vec()).await.expect("a sends").seq;
    let b_msg = cb.send_and_ack(g, "b-1", b"from b".to_vec()).await.expect("b sends").seq;
    let removal = ca.group_change(g, Change::RemoveMember(id_bytes(r.user_id))).await.expect("remove r").seq;
    let g2 = ca.create_group("admins only", &[b.user_id]).await.expect("group 2");
    ca.group_change(g2, Change::SetAdminsOnlySend(true)).await.expect("admins only send");
    ca.group_change(g2, Change::SetAdminsOnlyInfo(true)).await.expect("admins only info");
    let invite = ca.group_change(g2, Change::CreateInvite(pb::CreateInvite {})).await.expect("invite").invite_token;
    ca.group_change(g2, Change::RevokeInvite(pb::RevokeInvite {})).await.expect("revoke invite");
    let a_msg2 = ca.send_and_ack(g2, "a-2", b"admins only".to_vec()).await.expect("a sends in g2").seq;
    // N named twice in one AddMembers, then removed (a user named twice once kept a
    // second join entry, and with it the log after the removal).
    let g3 = ca.create_group("twice", &[]).await.expect("group 3");
    ca.group_change(g3, Change::AddMembers(pb::UserList { user_ids: vec![id_bytes(n.user_id), id_bytes(n.user_id)] })).await.expect("add n twice");
    let n_removed = ca.group_change(g3, Change::RemoveMember(id_bytes(n.user_id))).await.expect("remove n").seq;
    let after_n = ca.send_and_ack(g3, "a-3", b"after n left".to_vec()).await.expect("a sends in g3").seq;
    assert!(after_n > n_removed);
    let d = ca.open_direct(b.user_id).await.expect("direct");
    let a_direct = ca.send_and_ack(d, "a-d", b"direct".to_vec()).await.expect("a sends in d").seq;
    // A file A sends in G after R's removal (its bytes are what A encrypted).
    let file = bytes::Bytes::from_static(b"ciphertext of a holiday photo");
    let m = switchboard::media_client::MediaClient::new(format!("http://{}", server.http), &a.token).upload(file.clone(), 16).await.expect("upload");
    ca.send_with_attachments_and_ack(g, "a-file", b"a file".to_vec(), &[m]).await.expect("a sends the file");
    // Devices see what they are shown: B and R read their groups up to here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for conn in [&mut cb, &mut cr, &mut cn] {
        conn.discard_buffered();
        while conn.recv_timeout(Duration::from_millis(200)).await.is_ok() {}
    }
    let before = [snapshot(&mut ca, g, true).await, snapshot(&mut ca, g2, true).await, snapshot(&mut ca, d, false).await];
    let devices_before = api.devices(&b.token).await.expect("devices");

    // ---- frames: no token, a wrong token, a revoked device ----------------------------
    let revoked = api.link_device(&a.token, "old tablet").await.expect("link");
    api.revoke(&a.token, revoked.device_id).await.expect("revoke");
    for (name, frame) in every_frame(g, b.user_id) {
        // No token: the first frame is not Hello.
        let mut conn = Connection::connect(&Transport::Tcp(server.tcp)).await.expect("connect");
        conn.send(frame.clone()).await.expect("send");
        refused_connection(&mut conn, ErrorCode::NotAuthenticated, &format!("{name} without hello")).await;
        // A wrong token, and a revoked device's token, with the frame pipelined behind.
        for (token, code, who) in
            [("f".repeat(64), ErrorCode::InvalidToken, "wrong token"), (revoked.token.clone(), ErrorCode::DeviceRevoked, "revoked device")]
        {
            let mut conn = Connection::connect(&Transport::Tcp(server.tcp)).await.expect("connect");
            let hello = pb::Hello { protocol_version: 1, token, client_name: "intruder".into() };
            conn.send_many(vec![client_frame::Kind::Hello(hello), frame.clone()]).await.expect("send");
            refused_connection(&mut conn, code, &format!("{name} with a {who}")).await;
        }
    }
    // A device revoked while connected is closed, and what it sends then is not taken.
    let mut cl = online(&server, common::Kind::Tcp, &linked).await;
    api.revoke(&b.token, linked.device_id).await.expect("primary revokes the laptop");
    let closing = next_closing(&mut cl).await;
    assert_eq!((closing.code(), closing.reconnect_after_ms), (ErrorCode::DeviceRevoked, 0));
    let _ = cl.send_message(g, "after-revocation", b"late".to_vec()).await;
    let _ = drain(&mut cl).await;

    // ---- frames: a non-member (N), a removed member (R), a non-admin (B) --------------
    for (who, conn) in [("non-member", &mut cn), ("removed member", &mut cr)] {
        assert_eq!(refused(conn.send_and_ack(g, "intruder", b"x".to_vec()).await), ErrorCode::NotAMember, "{who}: send");
        assert_eq!(refused(conn.group_info(g).await), ErrorCode::NotAMember, "{who}: group info");
        assert_eq!(refused(conn.message_info(g, a_msg).await), ErrorCode::NotAMember, "{who}: message info");
        assert_eq!(refused(conn.delete_message(g, a_msg).await), ErrorCode::NotAMember, "{who}: delete");
        assert_eq!(refused(conn.set_retention(g, 1).await), ErrorCode::NotAMember, "{who}: retention");
        for change in [
            Change::AddMembers(pb::UserList { user_ids: vec![id_bytes(n.user_id)] }),
            Change::RemoveMember(id_bytes(b.user_id)),
            Change::Leave(pb::Leave {}),
            Change::Promote(id_bytes(b.user_id)),
            Change::SetSubject("taken over".into()),
            Change::CreateInvite(pb::CreateInvite {}),
        ] {
            assert_eq!(refused(conn.group_change(g, change.clone()).await), ErrorCode::NotAMember, "{who}: {change:?}");
        }
        conn.send(client_frame::Kind::Typing(pb::Typing { conversation_id: id_bytes(g), active: true })).await.expect("typing");
        assert_eq!(next_error(conn).await.code(), ErrorCode::NotAMember, "{who}: typing");
        // Sending to a 1:1 of others.
        assert_eq!(refused(conn.send_and_ack(d, "intruder-d", b"x".to_vec()).await), ErrorCode::NotAMember, "{who}: send in d");
    }
    // Reads: a non-member may not read; a removed member reads up to its removal only.
    assert_eq!(refused(cn.history(g, 0, 50).await), ErrorCode::NotAMember);
    cn.send(client_frame::Kind::Ack(pb::Ack { conversation_id: id_bytes(g), seq: 1000 })).await.expect("ack");
    assert_eq!(next_error(&mut cn).await.code(), ErrorCode::NotAMember, "non-member: ack");
    let page = cr.history(g, 0, 50).await.expect("a removed member reads its past");
    assert!(page.messages.iter().all(|m| m.seq <= removal), "a removed member sees past its removal: {:?}", page.messages);
    // A member added twice and removed sees nothing after its removal, on either path.
    let page = cn.history(g3, 0, 50).await.expect("a former member reads its stint");
    assert!(page.messages.iter().all(|m| m.seq <= n_removed), "seen after removal: {:?}", page.messages.iter().map(|m| m.seq).collect::<Vec<_>>());
    let page = api.history(&n.token, g3, 0, 50).await.expect("http history");
    assert!(page["messages"].as_array().expect("messages").iter().all(|m| m["seq"].as_u64() <= Some(n_removed)), "{page}");
    assert_eq!(refused(cn.send_and_ack(g3, "n-g3", b"x".to_vec()).await), ErrorCode::NotAMember);
    // A non-admin member.
    assert_eq!(refused(cb.group_change(g, Change::RemoveMember(id_bytes(a.user_id))).await), ErrorCode::NotAdmin, "non-admin: remove");
    assert_eq!(refused(cb.group_change(g, Change::AddMembers(pb::UserList { user_ids: vec![id_bytes(n.user_id)] })).await), ErrorCode::NotAdmin);
    assert_eq!(refused(cb.group_change(g, Change::Promote(id_bytes(b.user_id))).await), ErrorCode::NotAdmin, "non-admin: promote self");
    assert_eq!(refused(cb.group_change(g, Change::Demote(id_bytes(a.user_id))).await), ErrorCode::NotAdmin, "non-admin: demote");
    assert_eq!(refused(cb.group_change(g, Change::SetAdminsOnlySend(true)).await), ErrorCode::NotAdmin);
    assert_eq!(refused(cb.group_change(g, Change::SetAdminsOnlyInfo(true)).await), ErrorCode::NotAdmin);
    assert_eq!(refused(cb.group_change(g, Change::CreateInvite(pb::CreateInvite {})).await), ErrorCode::NotAdmin);
    assert_eq!(refused(cb.group_change(g, Change::RevokeInvite(pb::RevokeInvite {})).await), ErrorCode::NotAdmin);
    assert_eq!(refused(cb.group_change(g2, Change::SetSubject("mine".into())).await), ErrorCode::NotAdmin, "admins only info");
    assert_eq!(refused(cb.group_change(g2, Change::SetDescription("mine".into())).await), ErrorCode::NotAdmin, "admins only info");
    assert_eq!(refused(cb.set_retention(g2, 1).await), ErrorCode::NotAdmin, "admins only info: retention");
    assert_eq!(refused(cb.send_and_ack(g2, "b-g2", b"x".to_vec()).await), ErrorCode::SendRestricted, "admins only send");
    // Another user's messages: not deleted, not edited, no receipts shown.
    assert_eq!(refused(cb.delete_message(g, a_msg).await), ErrorCode::NotAdmin, "non-admin deletes another's message");
    assert_eq!(refused(cb.delete_message(d, a_direct).await), ErrorCode::NotAdmin, "a peer deletes the other's 1:1 message");
    assert_eq!(refused(cb.message_info(g, a_msg).await), ErrorCode::NotAdmin, "message info of another's message");
    assert_eq!(refused(ca.message_info(g, b_msg).await), ErrorCode::NotAdmin, "even an admin gets no message info of another's message");
    assert_eq!(refused(cb.delete_message(g2, a_msg2).await), ErrorCode::NotAdmin, "non-admin deletes the admin's message");
    let edit = cb.send_reference(g, "b-edit", pb::MessageKind::Edit, a_msg, b"rewritten".to_vec()).await;
    assert_eq!(refused(edit), ErrorCode::InvalidArgument, "an edit of another's message");
    // Invites: a revoked one, and one that never existed.
    assert_eq!(refused(cn.join_group(&invite).await), ErrorCode::InvalidInvite, "revoked invite");
    assert_eq!(refused(cn.join_group(&"0".repeat(32)).await), ErrorCode::InvalidInvite, "unknown invite");
    // A second Hello on an authenticated connection.
    cn.send(client_frame::Kind::Hello(pb::Hello { protocol_version: 1, token: a.token.clone(), client_name: "x".into() })).await.expect("hello");
    assert_eq!(next_error(&mut cn).await.code(), ErrorCode::AlreadyAuthenticated);

    // ---- HTTP: no token, wrong token, revoked device, another user, non-member, a
    // removed member, a non-primary device -------------------------------------------
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.http);
    let endpoints: Vec<(reqwest::Method, String, Option<serde_json::Value>)> = vec![
        (reqwest::Method::GET, "/v1/devices".into(), None),
        (reqwest::Method::POST, "/v1/devices".into(), Some(serde_json::json!({ "name": "intruder" }))),
        (reqwest::Method::DELETE, format!("/v1/devices/{}", b.device_id), None),
        (reqwest::Method::PUT, "/v1/devices/push-token".into(), Some(serde_json::json!({ "platform": "fcm", "token": "t" }))),
        (reqwest::Method::DELETE, "/v1/devices/push-token".into(), None),
        (reqwest::Method::GET, format!("/v1/conversations/{g}/messages"), None),
        (reqwest::Method::POST, "/v1/media".into(), None),
        (reqwest::Method::POST, "/v1/media/public".into(), None),
        (reqwest::Method::GET, format!("/v1/media/{m}"), None),
        (reqwest::Method::GET, format!("/v1/media/{m}/url"), None),
        (reqwest::Method::PATCH, format!("/v1/media/{m}"), None),
        (reqwest::Method::DELETE, format!("/v1/media/{m}"), None),
        (reqwest::Method::POST, "/v1/contacts/discover".into(), Some(serde_json::json!({ "phones": ["+14155550123"] }))),
        (reqwest::Method::POST, "/v1/contacts/remove".into(), Some(serde_json::json!({ "phones": ["+14155550123"] }))),
        (reqwest::Method::POST, "/v1/devices/logout-others".into(), None),
        (reqwest::Method::GET, "/v1/profile".into(), None),
        (reqwest::Method::PATCH, "/v1/profile".into(), Some(serde_json::json!({ "name": "intruder" }))),
        (reqwest::Method::GET, format!("/v1/profiles/{}", b.user_id), None),
        (reqwest::Method::POST, "/v1/account/number".into(), Some(serde_json::json!({ "phone": "+14155550123" }))),
        (
            reqwest::Method::POST,
            "/v1/account/number/verify".into(),
            Some(serde_json::json!({ "phone": "+14155550123", "code": "123456", "old_code": "654321" })),
        ),
        (reqwest::Method::POST, "/v1/account/delete".into(), Some(serde_json::json!({ "phone": "+14155550123" }))),
        (reqwest::Method::GET, "/v1/account/export".into(), None),
        (reqwest::Method::GET, "/v1/inbox".into(), None),
        (reqwest::Method::PATCH, format!("/v1/inbox/{g}"), Some(serde_json::json!({ "archived": true }))),
        (reqwest::Method::GET, "/v1/privacy".into(), None),
        (reqwest::Method::PATCH, "/v1/privacy".into(), Some(serde_json::json!({ "last_seen": "nobody" }))),
        (reqwest::Method::GET, "/v1/blocks".into(), None),
        (reqwest::Method::PUT, format!("/v1/blocks/{}", b.user_id), None),
        (reqwest::Method::DELETE, format!("/v1/blocks/{}", b.user_id), None),
        (reqwest::Method::POST, "/v1/status".into(), Some(serde_json::json!({ "payload_hex": "00" }))),
        (reqwest::Method::GET, "/v1/status".into(), None),
        (reqwest::Method::GET, "/v1/status/mine".into(), None),
        (reqwest::Method::POST, format!("/v1/status/{}/{}/seen", b.user_id, uuid::Uuid::new_v4()), None),
        (reqwest::Method::DELETE, format!("/v1/status/mine/{}", uuid::Uuid::new_v4()), None),
    ];
    let call = |method: reqwest::Method, path: &str, body: &Option<serde_json::Value>, token: Option<&str>| {
        let mut req = http.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send()
    };
    for (method, path, body) in &endpoints {
        for (token, status, code) in [
            (None, 401, "unauthorized"),
            (Some("f".repeat(64)), 401, "unauthorized"),
            (Some(revoked.token.clone()), 401, "device_revoked"),
            (Some(linked.token.clone()), 401, "device_revoked"),
        ] {
            let response = call(method.clone(), path, body, token.as_deref()).await.expect("http");
            assert_eq!(response.status().as_u16(), status, "{method} {path} with {token:?}");
            let answer: serde_json::Value = response.json().await.expect("json error");
            assert_eq!(answer["error"], code, "{method} {path} with {token:?}");
        }
    }
    // HEAD answers without a body: its status says it.
    for token in [None, Some("f".repeat(64)), Some(revoked.token.clone())] {
        let response = call(reqwest::Method::HEAD, &format!("/v1/media/{m}"), &None, token.as_deref()).await.expect("http");
        assert_eq!(response.status().as_u16(), 401, "HEAD /v1/media/{{id}} with {token:?}");
    }
    // Media: a non-member and a member removed before the message was sent may not fetch
    // it nor get a signed URL for it; a member who is not the uploader may not touch the
    // upload (tus headers all valid, so only ownership decides).
    for (who, token) in [("non-member", &n.token), ("removed member", &r.token)] {
        for path in [format!("/v1/media/{m}"), format!("/v1/media/{m}/url")] {
            let response = call(reqwest::Method::GET, &path, &None, Some(token)).await.expect("http");
            assert_eq!(response.status().as_u16(), 403, "{who}: GET {path}");
            assert_eq!(response.json::<serde_json::Value>().await.expect("json")["error"], "forbidden", "{who}: GET {path}");
        }
    }
    for method in [reqwest::Method::HEAD, reqwest::Method::PATCH, reqwest::Method::DELETE] {
        let response = http
            .request(method.clone(), format!("{base}/v1/media/{m}"))
            .bearer_auth(&b.token)
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", "0")
            .header("Content-Type", "application/offset+octet-stream")
            .body(if method == reqwest::Method::PATCH { b"x".to_vec() } else { Vec::new() })
            .send()
            .await
            .expect("http");
        assert_eq!(response.status().as_u16(), 403, "a member who did not upload it: {method} /v1/media/{{id}}");
    }
    let media = switchboard::media_client::MediaClient::new(base.clone(), &a.token);
    assert_eq!(media.offset(m).await.expect("head"), file.len() as u64, "the upload is as it was");
    assert_eq!(switchboard::media_client::MediaClient::new(base.clone(), &b.token).download(m).await.expect("a member fetches"), file);
    // Another user: B's devices are not N's to revoke; the conversation is not N's to read.
    let other = call(reqwest::Method::DELETE, &format!("/v1/devices/{}", b.device_id), &None, Some(&n.token)).await.expect("http");
    assert_eq!(other.status().as_u16(), 404, "another user's device is unknown to the caller");
    let read = call(reqwest::Method::GET, &format!("/v1/conversations/{g}/messages"), &None, Some(&n.token)).await.expect("http");
    assert_eq!(read.status().as_u16(), 403, "non-member history");
    let read = call(reqwest::Method::GET, &format!("/v1/conversations/{d}/messages"), &None, Some(&r.token)).await.expect("http");
    assert_eq!(read.status().as_u16(), 403, "another pair's 1:1 history");
    // The conversation list: not another pair's 1:1, not a group never joined.
    let change =
        call(reqwest::Method::PATCH, &format!("/v1/inbox/{d}"), &Some(serde_json::json!({ "archived": true })), Some(&r.token)).await.expect("http");
    assert_eq!(change.status().as_u16(), 403, "another pair's 1:1 in the list");
    let update = pb::UpdateChat { conversation_id: id_bytes(g2), archived: Some(true), ..Default::default() };
    assert_eq!(refused(cn.update_chat(update).await), ErrorCode::NotAMember, "a group never joined, in the list");
    let listed = cn.inbox(0, "", 0).await.expect("inbox");
    let theirs = [id_bytes(g), id_bytes(g2), id_bytes(d)];
    assert!(listed.entries.iter().all(|e| !theirs.contains(&e.conversation_id)), "N's list shows only what N was in");
    // The removed member reads up to its removal.
    let page = api.history(&r.token, g, 0, 200).await.expect("removed member's history");
    let seqs: Vec<u64> = page["messages"].as_array().expect("messages").iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(!seqs.is_empty() && seqs.iter().all(|s| *s <= removal), "removed member's HTTP history: {seqs:?}");
    // A linked (non-primary) device may neither link nor revoke another device.
    let second = api.link_device(&a.token, "a's laptop").await.expect("link a's laptop");
    let link = call(reqwest::Method::POST, "/v1/devices", &Some(serde_json::json!({ "name": "x" })), Some(&second.token)).await.expect("http");
    assert_eq!(link.status().as_u16(), 403, "a linked device links");
    let revoke = call(reqwest::Method::DELETE, &format!("/v1/devices/{}", a.device_id), &None, Some(&second.token)).await.expect("http");
    assert_eq!(revoke.status().as_u16(), 403, "a linked device revokes the primary");

    // ---- the admin API: no token, a wrong one, a device's token ------------------------
    let admin = format!("http://{}", server.admin);
    let admin_calls: Vec<(reqwest::Method, String, Option<serde_json::Value>)> = vec![
        (reqwest::Method::GET, "/admin/tree".into(), None),
        (reqwest::Method::GET, "/admin/cluster".into(), None),
        (reqwest::Method::GET, "/admin/hot".into(), None),
        (reqwest::Method::POST, "/admin/drain".into(), None),
        (reqwest::Method::POST, "/admin/provision".into(), Some(serde_json::json!({ "count": 1, "phone_prefix": "+1666", "first": 1 }))),
        (reqwest::Method::POST, format!("/admin/conversations/{g}/crash"), None),
    ];
    let restarts_before = restarts(&server.admin_tree().await);
    for (method, path, body) in &admin_calls {
        for token in [None, Some("wrong"), Some(a.token.as_str())] {
            let mut req = http.request(method.clone(), format!("{admin}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            let response = req.send().await.expect("admin http");
            assert_eq!(response.status().as_u16(), 401, "{method} {path} with {token:?}");
        }
    }
    // Nothing was provisioned: the same request with the admin token creates the account
    // now (phones that exist are skipped), and no conversation actor was crashed.
    let provisioned: Vec<serde_json::Value> = http
        .post(format!("{admin}/admin/provision"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "count": 1, "phone_prefix": "+1666", "first": 1 }))
        .send()
        .await
        .expect("provision")
        .json()
        .await
        .expect("credentials");
    assert_eq!(provisioned.len(), 1, "a refused provisioning created the account");
    assert_eq!(restarts(&server.admin_tree().await), restarts_before, "a refused crash restarted a conversation");

    // ---- nothing changed --------------------------------------------------------------
    let after = [snapshot(&mut ca, g, true).await, snapshot(&mut ca, g2, true).await, snapshot(&mut ca, d, false).await];
    assert_eq!(after, before, "a refused request changed a conversation");
    let devices_after = api.devices(&b.token).await.expect("devices");
    let live = |list: &[switchboard::accounts::DeviceInfo]| {
        list.iter().filter(|d| d.revoked_ms.is_none()).map(|d| (d.device_id, d.name.clone())).collect::<Vec<_>>()
    };
    assert_eq!(live(&devices_after), live(&devices_before).into_iter().filter(|(id, _)| *id != linked.device_id).collect::<Vec<_>>());
    assert!(api.devices(&a.token).await.expect("a's devices").iter().all(|d| d.name != "intruder"), "a refused link created a device");
    // Nobody was told anything by a refused request (no typing, no message, no event).
    told_nothing(&mut ca, "A").await;
    told_nothing(&mut cb, "B").await;
    // The members' cursors did not move for the intruders: B still gets a's next message
    // as the next seq, and A's own delivered counts are unchanged.
    let next = ca.send_and_ack(g, "a-after", b"after".to_vec()).await.expect("a sends after").seq;
    assert_eq!(next, before[0].log.first().map(|m| m.0).unwrap_or(0) + 1, "seqs were consumed by refused requests");
}

/// The conversation supervisor's restart count in an `/admin/tree` answer.
fn restarts(tree: &serde_json::Value) -> u64 {
    if tree["name"] == "conversation-supervisor" {
        return tree["restarts"].as_u64().unwrap_or(0);
    }
    tree["children"].as_array().map(|c| c.iter().map(restarts).sum()).unwrap_or(0)
}
