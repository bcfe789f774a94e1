//! Reliability: kill -9 in the middle of a stream of sends, a crashing conversation
//! actor, graceful shutdown, slow consumers and a device reconnecting over itself.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{ADMIN_TOKEN, Kind, Pair, TestServer, WAIT, next_closing, online, pair, send_all, user};
use switchboard::client::{ClientError, Connection};
use switchboard::protocol::{ErrorCode, server_frame};

/// Sends continuously, recording every SendAck, and SIGKILLs the server mid-stream. After
/// a restart every acknowledged message must be in history at its acknowledged seq, with
/// seqs 1..=n and no gap; unacknowledged sends retried with their client ids must land
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_message_and_leaves_no_gap() {
    let mut server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();

    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let total = 2000u64;
    let mut sent = 0u64;
    let mut killed = false;
    // Pipelined sends in windows of 50, kill after a few hundred acks.
    'outer: while sent < total {
        let window: Vec<_> = (sent..(sent + 50).min(total))
            .map(|i| {
                switchboard::protocol::client_frame::Kind::Send(switchboard::protocol::pb::Send {
                    client_msg_id: format!("k-{i}"),
                    conversation_id: switchboard::protocol::id_bytes(conversation),
                    payload: format!("payload {i}").into_bytes().into(),
                    kind: 0,
                    reference_seq: 0,
                    attachments: Vec::new(),
                })
            })
            .collect();
        let n = window.len() as u64;
        if a.send_many(window).await.is_err() {
            break;
        }
        sent += n;
        loop {
            match a.recv_timeout(Duration::from_secs(5)).await {
                Ok(server_frame::Kind::SendAck(ack)) => {
                    acked.insert(ack.client_msg_id.clone(), ack.seq);
                    if !killed && acked.len() >= 500 {
                        server.kill9();
                        killed = true;
                    }
                    if acked.len() as u64 == sent {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break 'outer,
            }
        }
    }
    assert!(killed, "the server was never killed");
    assert!(acked.len() >= 500);

    server.restart();
    let api = server.api();
    let mut a = online(&server, Kind::Tcp, &alice).await;
    // Everything acknowledged is there, at its seq.
    let mut history: BTreeMap<u64, String> = BTreeMap::new();
    let mut before = 0;
    loop {
        let page = a.history(conversation, before, 200).await.unwrap();
        for m in &page.messages {
            history.insert(m.seq, m.client_msg_id.clone());
        }
        if !page.has_more {
            break;
        }
        before = page.messages.last().unwrap().seq;
    }
    for (client_id, seq) in &acked {
        assert_eq!(history.get(seq), Some(client_id), "acknowledged {client_id} at seq {seq} is missing after kill -9");
    }
    let max = history.keys().last().copied().unwrap_or(0);
    assert_eq!(history.len() as u64, max, "seq has a gap: {} messages up to seq {max}", history.len());
    assert_eq!(history.keys().next().copied(), Some(1));

    // Retrying every send that had not been acknowledged stores each exactly once.
    let unacked: Vec<u64> = (0..sent).filter(|i| !acked.contains_key(&format!("k-{i}"))).collect();
    for i in &unacked {
        let ack = a.send_and_ack(conversation, &format!("k-{i}"), format!("payload {i}").into_bytes()).await.unwrap();
        if let Some(seq) = history.get(&ack.seq) {
            assert_eq!(seq, &format!("k-{i}"));
            assert!(ack.duplicate);
        }
    }
    let page = api.history(&alice.token, conversation, 0, 1).await.unwrap();
    let newest = page["messages"][0]["seq"].as_u64().unwrap();
    assert_eq!(newest, sent, "after retries every one of the {sent} sends is stored exactly once");
}

/// A panicking conversation actor is restarted by its supervisor, the restart shows in the
/// admin tree, and the conversation continues at the next seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_conversation_is_restarted_and_loses_nothing() {
    let server = TestServer::start();
    let Pair { bob, mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    let mut b = online(&server, Kind::Ws, &bob).await;
    send_all(&mut a, conversation, 1..=5, "before").await;
    let http = reqwest::Client::new();
    let crash = http.post(format!("http://{}/admin/conversations/{conversation}/crash", server.admin)).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(crash.status().as_u16(), 202);
    let unauthorized = http.get(format!("http://{}/admin/tree", server.admin)).send().await.unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);

    // The supervisor restarted it: the restart counter moved and a live activation exists.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let tree = server.admin_tree().await;
        let sup = tree["children"].as_array().unwrap().iter().find(|c| c["name"] == "conversation-supervisor").unwrap().clone();
        // The restarted activation shows as Starting until its pre_start has loaded the store.
        if sup["restarts"] == 1 && sup["children_count"] == 1 && sup["children"][0]["status"] == "Running" {
            assert!(sup["children"][0]["name"].as_str().unwrap().contains(&conversation.to_string()));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no restart seen: {tree}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ack = a.send_and_ack(conversation, "after", &b"y"[..]).await.unwrap();
    assert_eq!(ack.seq, 6);
    for expected in 1..=6 {
        assert_eq!(b.next_message(WAIT).await.unwrap().seq, expected);
    }
    assert!(server.log().contains("crash requested"), "the panic should be logged");
}

/// SIGTERM: connected devices are told to reconnect later, the process exits cleanly, and
/// everything is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_tells_clients_and_flushes() {
    let mut server = TestServer::start();
    let Pair { bob, mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    let mut b = online(&server, Kind::Ws, &bob).await;
    send_all(&mut a, conversation, 1..=20, "g").await;
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    for conn in [&mut a, &mut b] {
        let closing = next_closing(conn).await;
        assert_eq!(closing.code(), ErrorCode::ServerShuttingDown);
        assert!(closing.reconnect_after_ms > 0);
    }
    let (mut server, status) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}; log:\n{}", server.log());
    assert!(server.log().contains("shutdown complete"));
    server.restart();
    let mut b = Connection::open(&server.transport(Kind::Tcp), &bob.token).await.unwrap().0;
    // Bob had received the 20 live but never acknowledged them: they come again.
    assert_eq!(common::caught_up(&mut b).await, 20);
}

/// A device that stops reading is disconnected with SLOW_CONSUMER; the server's memory
/// does not grow with what it was sent, and others carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_with_a_reason() {
    let server = TestServer::start_with(&["--outbound-queue", "16", "--slow-consumer-secs", "1"]);
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let mut a = online(&server, Kind::Tcp, &alice).await;
    // Bob is on a slow link (small receive window) and never reads.
    let mut b = Connection::connect_tcp_with_recv_buffer(server.tcp, 16 * 1024).await.unwrap();
    b.hello(&bob.token).await.unwrap();
    common::caught_up(&mut b).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    // Bob never reads. 600 × 60 KB = 36 MB: far more than socket buffers plus 16 frames.
    let payload = vec![1u8; 60 * 1024];
    for i in 0..600 {
        a.send_message(conversation, &format!("s-{i}"), payload.clone()).await.unwrap();
        if i % 50 == 49 {
            a.wait_for(WAIT, true, |k| matches!(k, server_frame::Kind::SendAck(s) if s.seq == i + 1).then_some(())).await.unwrap();
        }
    }
    // Bob's session waits for him to make room, then gives up after the grace period.
    let deadline = std::time::Instant::now() + WAIT;
    while !server.log().contains("slow consumer disconnected") {
        assert!(std::time::Instant::now() < deadline, "slow consumer was not disconnected:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Now Bob reads: what had fitted in the socket, then the end of the connection (with a
    // Closing frame if the server could still write one within its close grace).
    let mut got = 0;
    loop {
        match b.recv_timeout(WAIT).await {
            Ok(server_frame::Kind::Closing(c)) => {
                assert_eq!(c.code(), ErrorCode::SlowConsumer);
                break;
            }
            Ok(_) => got += 1,
            Err(ClientError::Closed) => break,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
    let metrics = server.api().get("/metrics", None).await.unwrap().text().await.unwrap();
    let slow = metrics.lines().find(|l| l.starts_with("switchboard_slow_consumers_total")).expect("slow consumer metric");
    assert!(!slow.ends_with(" 0"), "{slow}");
    assert!(got < 600, "all {got} frames reached a device that was not reading");
    // Alice is still served; Bob can reconnect and catch up from his cursor.
    a.send_and_ack(conversation, "after", &b"ok"[..]).await.unwrap();
    let mut b = Connection::open(&server.transport(Kind::Tcp), &bob.token).await.unwrap().0;
    let first = b.next_message(WAIT).await.unwrap();
    assert_eq!(first.seq, 1);
}

/// The same device connecting again replaces the old connection (REPLACED) and gets
/// everything it had not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_device_replaces_its_old_connection() {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    let mut old = online(&server, Kind::Tcp, &bob).await;
    a.send_and_ack(conversation, "r-1", &b"1"[..]).await.unwrap();
    assert_eq!(old.next_message(WAIT).await.unwrap().seq, 1);
    old.ack(conversation, 1).await.unwrap();
    a.send_and_ack(conversation, "r-2", &b"2"[..]).await.unwrap();
    assert_eq!(old.next_message(WAIT).await.unwrap().seq, 2);

    let mut new = Connection::open(&server.transport(Kind::Ws), &bob.token).await.unwrap().0;
    assert_eq!(next_closing(&mut old).await.code(), ErrorCode::Replaced);
    // Seq 1 was acknowledged on the old connection, seq 2 was not.
    assert_eq!(common::caught_up(&mut new).await, 1);
    assert_eq!(new.next_message(WAIT).await.unwrap().seq, 2);
}

/// A receiver that drops and reconnects again and again while a sender streams: within
/// each connection its seqs arrive in order without gaps, and across connections (acking
/// what it saw) it misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_reconnecting_during_a_stream_sees_every_seq() {
    let server = TestServer::start_with(&["--rate-per-sec", "100000", "--rate-burst", "100000"]);
    let Pair { bob, mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    let total = 1500u64;
    let sender = tokio::spawn(async move {
        for i in 1..=total {
            a.send_message(conversation, &format!("s-{i}"), &b"x"[..]).await.unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        a.wait_for(Duration::from_secs(30), true, |k| matches!(k, server_frame::Kind::SendAck(s) if s.seq == total).then_some(())).await.unwrap();
        a
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut round = 0;
    while seen.len() < total as usize {
        round += 1;
        assert!(round < 200, "never caught up: {} of {total}", seen.len());
        // Once every send is acknowledged, this connection's catch-up must bring all that
        // is missing: read it to its end (CatchUpComplete) rather than for a fixed time, so
        // a slow login on a loaded machine is not mistaken for a lost message.
        let stream_over = sender.is_finished();
        let (mut b, _) = Connection::open(&server.transport(Kind::Tcp), &bob.token).await.unwrap();
        let mut last = None;
        // Read for a while, then drop the connection abruptly (no Bye).
        let until = tokio::time::Instant::now() + if stream_over { WAIT } else { Duration::from_millis(40) };
        while let Ok(Ok(frame)) = tokio::time::timeout_at(until, b.recv_timeout(WAIT)).await {
            match frame {
                server_frame::Kind::Message(m) => {
                    if let Some(prev) = last {
                        assert_eq!(m.seq, prev + 1, "gap within one connection (round {round})");
                    }
                    last = Some(m.seq);
                    seen.insert(m.seq);
                    b.ack(conversation, m.seq).await.unwrap();
                }
                server_frame::Kind::CatchUpComplete(_) if stream_over => break,
                _ => {}
            }
        }
        if stream_over && seen.len() < total as usize {
            let missing: Vec<u64> = (1..=total).filter(|s| !seen.contains(s)).take(10).collect();
            panic!("stream over, nothing more delivered, missing {missing:?}");
        }
    }
    sender.await.unwrap();
}

/// SIGTERM in the middle of a burst of sends: every message that is stored was
/// acknowledged to the sender before the Closing frame (the server stops taking requests,
/// commits what it sequenced, delivers those acks, and only then closes sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_acknowledges_everything_it_stored() {
    let mut server = TestServer::start_with(&["--rate-per-sec", "100000", "--rate-burst", "100000"]);
    let Pair { alice, mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    let burst: Vec<_> = (0..400)
        .map(|i| {
            switchboard::protocol::client_frame::Kind::Send(switchboard::protocol::pb::Send {
                client_msg_id: format!("t-{i}"),
                conversation_id: switchboard::protocol::id_bytes(conversation),
                payload: bytes::Bytes::from_static(b"x"),
                kind: 0,
                reference_seq: 0,
                attachments: Vec::new(),
            })
        })
        .collect();
    a.send_many(burst).await.unwrap();
    let terminated = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    let mut acked = std::collections::HashSet::new();
    loop {
        match a.recv_timeout(WAIT).await {
            Ok(server_frame::Kind::SendAck(ack)) => {
                acked.insert(ack.client_msg_id);
            }
            Ok(server_frame::Kind::Closing(c)) => {
                assert_eq!(c.code(), ErrorCode::ServerShuttingDown);
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no Closing frame: {e}"),
        }
    }
    let (mut server, status) = terminated.await.unwrap();
    assert!(status.success());
    server.restart();
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut stored = Vec::new();
    let mut before = 0;
    loop {
        let page = a.history(conversation, before, 200).await.unwrap();
        stored.extend(page.messages.iter().map(|m| m.client_msg_id.clone()));
        if !page.has_more {
            break;
        }
        before = page.messages.last().unwrap().seq;
    }
    for id in &stored {
        assert!(acked.contains(id), "{id} was stored but its ack never reached the sender ({} stored, {} acked)", stored.len(), acked.len());
    }
}

/// A device that leaves without Bye (the socket just closes) frees its connection: the
/// server closes its end and forgets it, for TCP and WebSocket alike, and so does a peer
/// that leaves before its Hello. (The connection's writer once waited for frames that
/// would never come: the socket stayed open on the server, in CLOSE_WAIT, with its tasks
/// and buffers, until something was written to it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_leaves_without_bye_frees_its_connection() {
    let server = TestServer::start();
    let api = server.api();
    // (A gauge never set reads 0: the first assertion below requires it to count.)
    let connections = || async {
        let text = switchboard::loadgen::server_metrics::fetch(server.http).await.expect("metrics");
        switchboard::loadgen::server_metrics::gauge(&text, "switchboard_connections").unwrap_or(0.0)
    };
    for kind in [Kind::Tcp, Kind::Ws] {
        let alice = user(&api).await;
        let conn = online(&server, kind, &alice).await;
        assert_eq!(connections().await, 1.0, "{kind:?}: the connection is counted");
        drop(conn);
        let deadline = std::time::Instant::now() + WAIT;
        while connections().await != 0.0 {
            assert!(std::time::Instant::now() < deadline, "{kind:?}: the server kept the connection of a device that left");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Connected, then gone before its Hello.
        let silent = Connection::connect(&server.transport(kind)).await.expect("connect");
        let deadline = std::time::Instant::now() + WAIT;
        while connections().await != 1.0 {
            assert!(std::time::Instant::now() < deadline, "{kind:?}: the connection before Hello is counted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(silent);
        while connections().await != 0.0 {
            assert!(std::time::Instant::now() < deadline, "{kind:?}: the server kept a connection that left before its Hello");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
