//! Fault kinds that other chat servers' public bug reports point at, each tried over the
//! real protocol the way the report's user met it (issue "Hardening"): a connection's
//! idea of membership going stale, frames after Bye, a revocation waiting behind a
//! catch-up, a half-open device that is never pushed. The rules they check are stated in
//! ARCHITECTURE.md (invariants) and docs/protocol.md.

mod common;

use std::time::{Duration, Instant};

use common::{Kind, TestServer, WAIT, online, user};
use switchboard::client::{ClientError, Connection};
use switchboard::protocol::{ErrorCode, client_frame, id_bytes, pb, server_frame};

/// The next message that is not an event.
async fn next_text(conn: &mut Connection) -> pb::Message {
    loop {
        let m = conn.next_message(WAIT).await.expect("message");
        if m.event.is_none() {
            return m;
        }
    }
}

/// Removed and added back while connected: the open connection of the member sees and
/// does what a fresh one does (membership lives in one place, and every change reaches
/// live sessions), not only after a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_and_added_back_is_served_on_the_same_connection() {
    use pb::group_change::Change;
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob, carol) = (user(&api).await, user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let mut c = online(&server, Kind::Ws, &carol).await;
    let group = a.create_group("stale?", &[bob.user_id, carol.user_id]).await.unwrap();
    a.group_change(group, Change::RemoveMember(id_bytes(bob.user_id))).await.unwrap();
    a.group_change(group, Change::AddMembers(pb::UserList { user_ids: vec![id_bytes(bob.user_id)] })).await.unwrap();
    let sent = c.send_and_ack(group, "after-readd", &b"welcome back"[..]).await.unwrap().seq;

    // Bob's connection, open all along, gets Carol's message…
    let got = next_text(&mut b).await;
    assert_eq!((got.seq, got.payload.as_ref()), (sent, &b"welcome back"[..]));
    // …and may send and ask for the group's info on it.
    let own = b.send_and_ack(group, "bob-back", &b"thanks"[..]).await.expect("a re-added member sends on the same connection");
    assert!(own.seq > sent);
    let info = b.group_info(group).await.expect("group info on the same connection");
    assert!(info.member_user_ids.contains(&id_bytes(bob.user_id)));
    assert_eq!(next_text(&mut c).await.seq, own.seq, "and the others get what he sends");
}

/// After Bye the server reads nothing more from the connection: a Ping behind it is not
/// answered and a Send behind it is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_after_bye_are_ignored() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    let send = client_frame::Kind::Send(pb::Send {
        conversation_id: id_bytes(conversation),
        client_msg_id: "after-bye".into(),
        payload: b"should not be stored".to_vec().into(),
        ..Default::default()
    });
    a.send_many(vec![client_frame::Kind::Bye(pb::Bye {}), client_frame::Kind::Ping(pb::Ping { nonce: 7 }), send]).await.unwrap();
    // Two seconds of whatever the server still says (or the end of the connection).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match a.recv_timeout(deadline.saturating_duration_since(Instant::now())).await {
            Ok(server_frame::Kind::Pong(p)) => panic!("a Ping after Bye was answered ({})", p.nonce),
            Ok(server_frame::Kind::SendAck(s)) => panic!("a Send after Bye was stored at seq {}", s.seq),
            Ok(_) => continue,
            Err(ClientError::Closed | ClientError::Timeout) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let page = b.history(conversation, 0, 10).await.unwrap();
    assert!(page.messages.iter().all(|m| m.client_msg_id != "after-bye"), "{:?}", page.messages);
}

/// A revocation pre-empts a catch-up in progress: a tablet offline while thousands of
/// messages arrived connects on a slow link, reads a little, and is revoked by the phone.
/// When it reads again it gets what was already on the wire, then Closing{DEVICE_REVOKED}:
/// not the rest of the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_cuts_a_catch_up_short() {
    // 5,000 × 4 KiB = 20 MiB: far more than the kernel can hold between the server and
    // the tablet (a send buffer grows to 4 MiB at most here), so most of the backlog is
    // still the server's when the revocation comes. (The sender's frame budget is raised
    // for the burst.)
    const BACKLOG: u64 = 5_000;
    let server = TestServer::start_with(&["--rate-per-sec", "100000", "--rate-burst", "100000"]);
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    let tablet = api.link_device(&bob.token, "tablet").await.unwrap();
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    for i in 1..=BACKLOG {
        a.send_message(conversation, &format!("backlog-{i}"), vec![b'x'; 4096]).await.unwrap();
    }
    a.wait_for(WAIT, true, |k| matches!(k, server_frame::Kind::SendAck(s) if s.seq == BACKLOG).then_some(())).await.unwrap();

    let mut t = Connection::connect_tcp_with_recv_buffer(server.tcp, 8 * 1024).await.unwrap();
    t.hello(&tablet.token).await.unwrap();
    let mut read = 0u64;
    while read < 200 {
        if let server_frame::Kind::Message(_) = t.recv_timeout(WAIT).await.unwrap() {
            read += 1;
        }
    }
    let revoked_at = Instant::now();
    api.revoke(&bob.token, tablet.device_id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after = 0u64;
    let closing = loop {
        match t.recv_timeout(WAIT).await {
            Ok(server_frame::Kind::Message(_)) => after += 1,
            Ok(server_frame::Kind::Closing(c)) => break Some(c),
            Ok(_) => {}
            Err(ClientError::Closed) => break t.closing(),
            Err(e) => panic!("no end after the revocation: {e}"),
        }
    };
    let closing = closing.expect("a Closing frame");
    assert_eq!(closing.code(), ErrorCode::DeviceRevoked);
    assert!(read + after < BACKLOG / 2, "{} of the backlog of {BACKLOG} reached a revoked device", read + after);
    assert!(revoked_at.elapsed() < Duration::from_secs(5), "the revocation waited {:?}", revoked_at.elapsed());
}

/// A phone that connects, catches up and then goes silent (a half-open connection) is
/// closed for idleness, and pushed for what reached it unacknowledged in the meantime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_device_is_pushed_for_what_it_did_not_acknowledge() {
    let (url, mut pushes) = common::push_receiver(0).await;
    let sink = format!("webhook:{url}");
    let server = TestServer::start_with(&["--push-sink", &sink, "--push-coalesce-ms", "200", "--heartbeat-secs", "1"]);
    let api = server.api();
    let (alice, bob) = (user(&api).await, user(&api).await);
    api.set_push_token(&bob.token, "apns", "bob-phone").await.unwrap();
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    // Bob's phone: connected, caught up, then silent (no heartbeat, no acknowledgement; the
    // socket stays open, as a phone that lost its network would leave it).
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let seq = a.send_and_ack(conversation, "while-silent", &b"are you there?"[..]).await.unwrap().seq;
    assert_eq!(b.next_message(WAIT).await.unwrap().seq, seq, "delivered on the open connection");
    let push = tokio::time::timeout(Duration::from_secs(15), pushes.recv()).await.expect("a push once the idle connection is closed").unwrap();
    assert_eq!((push["token"].as_str(), push["count"].as_u64()), (Some("bob-phone"), Some(1)), "{push}");
    assert_eq!(push["conversation_id"], conversation.to_string());
    drop(b);
}

/// Sends `n` Pings at once and counts, over `wait`, the Pongs and the RATE_LIMITED
/// refusals; stops early at a Closing (returned) or the end of the connection.
async fn pings_until_closed(conn: &mut Connection, n: u64, wait: Duration) -> (u64, u64, Option<pb::Closing>) {
    // The server may close the connection while the burst is still being written (that is
    // what an exhausted budget ends in): a failed write is not the test's failure, what
    // was answered is read below.
    let _ = conn.send_many((0..n).map(|i| client_frame::Kind::Ping(pb::Ping { nonce: i })).collect()).await;
    let (mut pongs, mut refused) = (0, 0);
    let deadline = Instant::now() + wait;
    while pongs + refused < n {
        match conn.recv_timeout(deadline.saturating_duration_since(Instant::now())).await {
            Ok(server_frame::Kind::Pong(_)) => pongs += 1,
            Ok(server_frame::Kind::Error(e)) if e.code() == ErrorCode::RateLimited => refused += 1,
            Ok(server_frame::Kind::Closing(c)) => return (pongs, refused, Some(c)),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (pongs, refused, None)
}

/// [`pings_until_closed`] on a connection that stays open.
async fn pings(conn: &mut Connection, n: u64, wait: Duration) -> (u64, u64) {
    let (pongs, refused, closing) = pings_until_closed(conn, n, wait).await;
    assert!(closing.is_none(), "closed: {closing:?}");
    (pongs, refused)
}

/// Limits are keyed by what a client cannot renew for free: a device that spent its frame
/// budget and reconnects at once gets no new one, a user's further devices share the
/// user's budget, and a device closed for its rate with `reconnect_after_ms` is refused at
/// Hello until that delay is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_buys_no_budget_and_the_advised_delay_is_enforced() {
    // A device: 50 at once, then 10 a second; a user's devices together: 100, then 2.
    let server = TestServer::start_with(&["--rate-per-sec", "10", "--rate-burst", "50", "--user-rate-per-sec", "2", "--user-rate-burst", "100"]);
    let api = server.api();
    let alice = user(&api).await;
    let transport = server.transport(Kind::Tcp);
    let mut first = Connection::open(&transport, &alice.token).await.unwrap().0;
    let (pongs, refused) = pings(&mut first, 60, Duration::from_secs(3)).await;
    assert!((50..=53).contains(&pongs) && pongs + refused == 60, "first connection: {pongs} answered, {refused} refused");
    drop(first);
    // At once again: the bucket is the one the first connection left.
    let mut second = Connection::open(&transport, &alice.token).await.unwrap().0;
    let (pongs, refused) = pings(&mut second, 40, Duration::from_secs(3)).await;
    assert!(pongs <= 15 && refused >= 25, "a reconnect renewed the budget: {pongs} answered, {refused} refused");
    // Another device of the same user has a budget of its own, within the user's (about
    // 55 of its 100 are spent).
    let laptop = api.link_device(&alice.token, "laptop").await.unwrap();
    let mut other = Connection::open(&transport, &laptop.token).await.unwrap().0;
    assert_eq!(pings(&mut other, 40, Duration::from_secs(3)).await, (40, 0));
    let tablet = api.link_device(&alice.token, "tablet").await.unwrap();
    let mut third = Connection::open(&transport, &tablet.token).await.unwrap().0;
    let (pongs, refused) = pings(&mut third, 40, Duration::from_secs(3)).await;
    assert!(pongs <= 15 && refused >= 25, "more devices renewed the user's budget: {pongs} answered, {refused} refused");
    // Someone else is not affected.
    let bob = user(&api).await;
    let mut b = Connection::open(&transport, &bob.token).await.unwrap().0;
    assert_eq!(pings(&mut b, 40, Duration::from_secs(3)).await, (40, 0));

    // More than 1,000 dropped frames close the connection with a delay to keep…
    // (Whether it was that close is shown by the refusal of the next Hello below: only a
    // rate-limit close leaves a penalty.)
    let (_, _, closing) = pings_until_closed(&mut second, 1_100, Duration::from_secs(5)).await;
    // (The Closing itself can be lost: the server closes with the rest of the burst unread,
    // which resets the connection. When it arrives it says how long to wait.)
    if let Some(closing) = closing {
        assert_eq!((closing.code(), closing.reconnect_after_ms), (ErrorCode::RateLimited, 5000));
    }
    let closed_at = Instant::now();
    // …and kept: a Hello within it is refused, with the time left.
    let mut early = Connection::connect(&transport).await.unwrap();
    let answer = early.hello(&alice.token).await;
    assert!(matches!(answer, Err(ClientError::Rejected { code: ErrorCode::RateLimited, .. })), "{answer:?}");
    let refusal = match early.recv_timeout(WAIT).await {
        Ok(server_frame::Kind::Closing(c)) => c,
        other => panic!("a Closing frame after the refusal, not {other:?}"),
    };
    assert_eq!(refusal.code(), ErrorCode::RateLimited);
    assert!((1..=5000).contains(&refusal.reconnect_after_ms), "{refusal:?}");
    // After it, the device is served again.
    tokio::time::sleep(Duration::from_millis(5_100).saturating_sub(closed_at.elapsed())).await;
    let (mut back, _) = Connection::open(&transport, &alice.token).await.expect("served after the delay");
    assert_eq!(pings(&mut back, 1, Duration::from_secs(3)).await, (1, 0));
}

/// A connection costs its client nothing until Hello, so one address may hold only so many
/// that have not finished their handshake: beyond the cap a new one is refused at once
/// (TCP: Closing{RATE_LIMITED}; WebSocket: 429 before the upgrade), and a handshake that
/// ends gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_say_hello_are_capped_per_address() {
    let server = TestServer::start_with(&["--max-handshakes-per-address", "8"]);
    let alice = user(&server.api()).await;
    let laptop = server.api().link_device(&alice.token, "laptop").await.unwrap();
    let transport = server.transport(Kind::Tcp);
    // Eight connections that never say Hello (counted in the order they are accepted).
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(server.tcp).await.unwrap());
    }
    let mut ninth = Connection::connect(&transport).await.unwrap();
    match ninth.recv_timeout(WAIT).await {
        Ok(server_frame::Kind::Closing(c)) => {
            assert_eq!((c.code(), c.reconnect_after_ms), (ErrorCode::RateLimited, 1000), "{c:?}");
        }
        other => panic!("the ninth connection in its handshake was not refused: {other:?}"),
    }
    let upgrade = reqwest::get(format!("http://{}/v1/ws", server.http)).await.unwrap();
    assert_eq!(upgrade.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upgrade.headers()["retry-after"], "1");
    assert_eq!(upgrade.json::<serde_json::Value>().await.unwrap()["error"], "too_many_handshakes");

    // One idle connection goes: its place is free again, and a device connects with it.
    drop(idle.pop());
    let deadline = Instant::now() + WAIT;
    let (mut device, _) = loop {
        match Connection::open(&transport, &alice.token).await {
            Ok(open) => break open,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no place freed: {e}"),
        }
    };
    // Past its handshake it no longer counts: another connection (another device) fits
    // beside the seven idle ones, and the first device stays connected.
    let mut another = Connection::connect(&transport).await.unwrap();
    another.hello(&laptop.token).await.expect("a place for a handshake beside a connected device");
    device.send(client_frame::Kind::Ping(pb::Ping { nonce: 1 })).await.unwrap();
    device.wait_for(WAIT, true, |k| matches!(k, server_frame::Kind::Pong(_)).then_some(())).await.expect("the first device is still served");
}
