//! Groups through real sockets: membership at each seq, removal, catch-up of an offline
//! member, admin-only changes, invites, the size limit, and a 1024-member group.

#[macro_use]
mod common;

use std::time::Duration;

use common::{Kind, TestServer, WAIT, caught_up, online, user};
use switchboard::client::{ClientError, Connection};
use switchboard::ids::{ConversationId, UserId};
use switchboard::protocol::{ErrorCode, id_bytes, pb, server_frame};

both_transports!(membership_decides_who_gets_each_seq, offline_member_catches_up_in_order);

fn event_of(m: &pb::Message) -> Option<pb::conversation_event::Kind> {
    m.event.as_ref().and_then(|e| e.kind.clone())
}

/// Next message that is not an event.
async fn next_text(conn: &mut Connection) -> pb::Message {
    loop {
        let m = conn.next_message(WAIT).await.expect("message");
        if m.event.is_none() {
            return m;
        }
    }
}

async fn nothing_more(conn: &mut Connection) {
    match conn.recv_timeout(Duration::from_millis(300)).await {
        Err(ClientError::Timeout) => {}
        Ok(server_frame::Kind::Message(m)) => panic!("unexpected message seq {}", m.seq),
        other => {
            let _ = other;
        }
    }
}

async fn membership_decides_who_gets_each_seq(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob, carol, dave) = (user(&api).await, user(&api).await, user(&api).await, user(&api).await);
    let mut a = online(&server, kind, &alice).await;
    let mut b = online(&server, kind, &bob).await;
    let mut c = online(&server, kind, &carol).await;
    let mut d = online(&server, kind, &dave).await;

    let group = a.create_group("trip", &[bob.user_id, carol.user_id]).await.unwrap();
    // Every member's devices get the creation event at seq 1, the creator's included.
    for conn in [&mut a, &mut b, &mut c] {
        let m = conn.next_message(WAIT).await.unwrap();
        assert_eq!(m.seq, 1);
        match event_of(&m) {
            Some(pb::conversation_event::Kind::Created(created)) => {
                assert_eq!(created.subject, "trip");
                assert_eq!(created.member_user_ids.len(), 3);
                assert_eq!(created.admin_user_ids, vec![id_bytes(alice.user_id)]);
            }
            other => panic!("expected Created, got {other:?}"),
        }
    }
    let ack = a.send_and_ack(group, "g-1", &b"to three"[..]).await.unwrap();
    assert_eq!(ack.seq, 2);
    for conn in [&mut b, &mut c] {
        assert_eq!(next_text(conn).await.seq, 2);
    }
    nothing_more(&mut d).await;

    // Non-admins cannot change membership.
    let refused =
        b.group_change(group, pb::group_change::Change::AddMembers(pb::UserList { user_ids: vec![id_bytes(dave.user_id)] })).await.unwrap_err();
    assert!(matches!(refused, ClientError::Rejected { code: ErrorCode::NotAdmin, .. }), "{refused}");
    let refused = b.group_change(group, pb::group_change::Change::RemoveMember(id_bytes(carol.user_id))).await.unwrap_err();
    assert!(matches!(refused, ClientError::Rejected { code: ErrorCode::NotAdmin, .. }), "{refused}");

    // Dave joins at seq 3 and sees nothing before it.
    let added = a.group_change(group, pb::group_change::Change::AddMembers(pb::UserList { user_ids: vec![id_bytes(dave.user_id)] })).await.unwrap();
    assert_eq!(added.seq, 3);
    let joined = d.next_message(WAIT).await.unwrap();
    assert_eq!(joined.seq, 3);
    assert!(matches!(event_of(&joined), Some(pb::conversation_event::Kind::MembersAdded(_))));
    let page = d.history(group, 0, 50).await.unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3], "history starts at the join");
    // A late joiner learns the group's state by asking for it.
    let info = d.group_info(group).await.unwrap();
    assert_eq!(info.subject, "trip");
    assert_eq!(info.member_user_ids.len(), 4);
    assert_eq!(info.admin_user_ids, vec![id_bytes(alice.user_id)]);
    assert_eq!(info.last_seq, 3);

    // Carol is removed at seq 5: she gets seq 4 and her removal, and nothing after.
    c.ack(group, 2).await.unwrap();
    a.send_and_ack(group, "g-4", &b"before removal"[..]).await.unwrap();
    let removed = a.group_change(group, pb::group_change::Change::RemoveMember(id_bytes(carol.user_id))).await.unwrap();
    assert_eq!(removed.seq, 5);
    let after = a.send_and_ack(group, "g-6", &b"after removal"[..]).await.unwrap();
    assert_eq!(after.seq, 6);
    let mut carol_seqs = Vec::new();
    while let Ok(m) = c.next_message(Duration::from_millis(500)).await {
        carol_seqs.push(m.seq);
    }
    assert_eq!(carol_seqs, vec![3, 4, 5], "carol must get nothing after her removal");
    for conn in [&mut b, &mut d] {
        let mut seqs = Vec::new();
        while let Ok(m) = conn.next_message(Duration::from_millis(300)).await {
            seqs.push(m.seq);
        }
        assert!(seqs.ends_with(&[4, 5, 6]), "{seqs:?}");
    }
    // She cannot send any more, and a reconnect does not bring anything after seq 5 either.
    let refused = c.send_and_ack(group, "late", &b"x"[..]).await.unwrap_err();
    assert!(matches!(refused, ClientError::Rejected { code: ErrorCode::NotAMember, .. }), "{refused}");
    drop(c);
    let (mut c, _) = Connection::open(&server.transport(kind), &carol.token).await.unwrap();
    caught_up(&mut c).await;
    let mut seen = Vec::new();
    while let Ok(m) = c.next_message(Duration::from_millis(300)).await {
        seen.push(m.seq);
    }
    assert!(seen.iter().all(|s| *s <= 5), "catch-up after removal leaked {seen:?}");
    let page = c.history(group, 0, 50).await.unwrap();
    assert_eq!(page.messages.first().map(|m| m.seq), Some(5), "former members keep history up to their removal");
    // HTTP history applies the same range.
    let http = api.history(&carol.token, group, 0, 50).await.unwrap();
    assert_eq!(http["messages"][0]["seq"], 5);
    let dave_http = api.history(&dave.token, group, 0, 50).await.unwrap();
    let seqs: Vec<u64> = dave_http["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(seqs.iter().all(|s| *s >= 3), "{seqs:?}");
    assert!(dave_http["messages"].as_array().unwrap().iter().any(|m| m["event_hex"].is_string()));
}

async fn offline_member_catches_up_in_order(kind: Kind) {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let mut a = online(&server, kind, &alice).await;
    let mut b = online(&server, kind, &bob).await;
    let group = a.create_group("news", &[bob.user_id, carol.user_id]).await.unwrap();
    // Carol is offline for the creation and 100 messages from two senders.
    for i in 0..50 {
        a.send_message(group, &format!("a-{i}"), &b"from alice"[..]).await.unwrap();
        b.send_message(group, &format!("b-{i}"), &b"from bob"[..]).await.unwrap();
    }
    for conn in [&mut a, &mut b] {
        let mut acks = 0;
        while acks < 50 {
            if let server_frame::Kind::SendAck(_) = conn.recv_timeout(WAIT).await.unwrap() {
                acks += 1;
            }
        }
    }
    let (mut c, _) = Connection::open(&server.transport(kind), &carol.token).await.unwrap();
    assert_eq!(caught_up(&mut c).await, 101);
    for expected in 1..=101u64 {
        assert_eq!(c.next_message(WAIT).await.unwrap().seq, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_only_settings_invites_and_the_size_limit() {
    let server = TestServer::start_with(&["--max-group-members", "3"]);
    let api = server.api();
    let (alice, bob, carol, eve) = (user(&api).await, user(&api).await, user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let mut e = online(&server, Kind::Ws, &eve).await;
    let group = a.create_group("club", &[bob.user_id]).await.unwrap();

    a.group_change(group, pb::group_change::Change::SetAdminsOnlySend(true)).await.unwrap();
    let refused = b.send_and_ack(group, "b-1", &b"x"[..]).await.unwrap_err();
    assert!(matches!(refused, ClientError::Rejected { code: ErrorCode::SendRestricted, .. }), "{refused}");
    a.send_and_ack(group, "a-1", &b"announcement"[..]).await.unwrap();
    a.group_change(group, pb::group_change::Change::Promote(id_bytes(bob.user_id))).await.unwrap();
    b.send_and_ack(group, "b-2", &b"now allowed"[..]).await.unwrap();
    let subject = b.group_change(group, pb::group_change::Change::SetSubject("renamed".into())).await.unwrap();
    assert!(subject.seq > 0);

    // Invite link: Eve joins with it; once revoked it no longer works.
    let invite = a.group_change(group, pb::group_change::Change::CreateInvite(pb::CreateInvite {})).await.unwrap();
    assert!(!invite.invite_token.is_empty());
    let joined = e.join_group(&invite.invite_token).await.unwrap();
    assert_eq!(switchboard::protocol::parse_id::<ConversationId>("conversation_id", &joined.conversation_id).unwrap(), group);
    // The group is now full (limit 3).
    let full =
        a.group_change(group, pb::group_change::Change::AddMembers(pb::UserList { user_ids: vec![id_bytes(carol.user_id)] })).await.unwrap_err();
    assert!(matches!(full, ClientError::Rejected { code: ErrorCode::GroupFull, .. }), "{full}");
    e.group_change(group, pb::group_change::Change::Leave(pb::Leave {})).await.unwrap();
    a.group_change(group, pb::group_change::Change::RevokeInvite(pb::RevokeInvite {})).await.unwrap();
    let revoked = e.join_group(&invite.invite_token).await.unwrap_err();
    assert!(matches!(revoked, ClientError::Rejected { code: ErrorCode::InvalidInvite, .. }), "{revoked}");
    let too_big = a.create_group("big", &[bob.user_id, carol.user_id, eve.user_id]).await.unwrap_err();
    assert!(matches!(too_big, ClientError::Rejected { code: ErrorCode::GroupFull, .. }), "{too_big}");
}

/// A 1024-member group with every member connected: one message reaches every device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1024_member_group_reaches_every_device() {
    // 1,024 sign-ups from one test client: the per-address sign-up limits do not apply to it.
    let server = TestServer::start_with(&["--rate-per-sec", "100000", "--rate-burst", "100000", "--address-limits-exempt", "127.0.0.1"]);
    let api = server.api();
    let users = switchboard::loadgen::provision(&api, 1024, 32, |_| {}).await.unwrap();
    let transport = server.transport(Kind::Tcp);
    let mut conns = Vec::with_capacity(users.len());
    for u in &users {
        let (mut conn, _) = Connection::open(&transport, &u.token).await.unwrap();
        caught_up(&mut conn).await;
        conns.push(conn);
    }
    let others: Vec<UserId> = users[1..].iter().map(|u| u.user_id).collect();
    let group = conns[0].create_group("everyone", &others).await.unwrap();
    let ack = conns[0].send_and_ack(group, "hello-all", &b"hello, 1023 people"[..]).await.unwrap();
    assert_eq!(ack.seq, 2);
    let mut received = 0;
    for conn in conns.iter_mut().skip(1) {
        let m = next_text(conn).await;
        assert_eq!(m.seq, 2);
        assert_eq!(&m.payload[..], b"hello, 1023 people");
        received += 1;
    }
    assert_eq!(received, 1023);
}

/// Group receipts: the sender sees coalesced "delivered to N of M" / "read by N of M"
/// counts, never one receipt per member; message info gives per-member times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_receipts_are_counted_and_coalesced() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob, carol, dave) = (user(&api).await, user(&api).await, user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let mut c = online(&server, Kind::Ws, &carol).await;
    let mut d = online(&server, Kind::Tcp, &dave).await;
    let group = a.create_group("receipts", &[bob.user_id, carol.user_id, dave.user_id]).await.unwrap();
    let sent = a.send_and_ack(group, "r-1", &b"count me"[..]).await.unwrap();
    for conn in [&mut b, &mut c, &mut d] {
        assert_eq!(next_text(conn).await.seq, sent.seq);
    }
    b.ack(group, sent.seq).await.unwrap();
    c.read(group, sent.seq).await.unwrap();
    d.ack(group, sent.seq).await.unwrap();
    let summary = a
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::ReceiptSummary(s) if s.delivered == 3 && s.read == 1 => Some(s.clone()),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!((summary.seq, summary.members), (sent.seq, 3));
    a.discard_buffered();
    // No per-member receipts reached the sender.
    while let Ok(frame) = a.recv_timeout(Duration::from_millis(400)).await {
        assert!(!matches!(frame, server_frame::Kind::Receipt(_)), "group receipts must be coalesced: {frame:?}");
    }
    let info = a.message_info(group, sent.seq).await.unwrap();
    assert_eq!(info.members.len(), 3);
    let of = |u: UserId| info.members.iter().find(|m| m.user_id == id_bytes(u)).unwrap().clone();
    assert!(of(bob.user_id).delivered_at_ms > 0 && of(bob.user_id).read_at_ms == 0);
    assert!(of(carol.user_id).delivered_at_ms > 0 && of(carol.user_id).read_at_ms > 0);
    assert!(of(dave.user_id).delivered_at_ms > 0);
    // Only the sender may ask.
    let refused = b.message_info(group, sent.seq).await.unwrap_err();
    assert!(matches!(refused, ClientError::Rejected { code: ErrorCode::NotAdmin, .. }), "{refused}");
}

/// A group actor that panics is restarted by its supervisor and loses nothing
/// acknowledged; the admin tree shows it with its member count and mailbox depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_group_actor_restarts_and_the_tree_shows_it() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let group = a.create_group("sturdy", &[bob.user_id]).await.unwrap();
    a.send_and_ack(group, "s-1", &b"one"[..]).await.unwrap();
    let label = |tree: &serde_json::Value| -> Option<(String, u64, u64)> {
        let sup = tree["children"].as_array()?.iter().find(|c| c["name"] == "conversation-supervisor")?.clone();
        let child = sup["children"].as_array()?.first()?.clone();
        Some((child["name"].as_str()?.to_owned(), sup["restarts"].as_u64()?, child["mailbox"].as_u64()?))
    };
    let (name, restarts, _) = label(&server.admin_tree().await).unwrap();
    assert_eq!(name, format!("group {group} members=2"));
    assert_eq!(restarts, 0);
    let crash = reqwest::Client::new()
        .post(format!("http://{}/admin/conversations/{group}/crash", server.admin))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(crash.status().as_u16(), 202);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some((name, 1, _)) = label(&server.admin_tree().await)
            && name.starts_with("group ")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "group actor not restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ack = a.send_and_ack(group, "s-2", &b"two"[..]).await.unwrap();
    assert_eq!(ack.seq, 3);
    let seqs: Vec<u64> = [next_text(&mut b).await.seq, next_text(&mut b).await.seq].to_vec();
    assert_eq!(seqs, vec![2, 3]);
}
