//! The conversation list (issue 15 items 4, 5 and 11) through real sockets and HTTP: every
//! conversation with its last message and unread count, the same on each device; mute,
//! archive, pin and clear made on one device reaching the others live; incremental sync
//! by version; a new device caught up with the newest messages only, with the tick state
//! of the user's own messages; history without what was cleared; muted pushes.

mod common;

use std::time::Duration;

use common::{Kind, TestServer, WAIT, online, rejected, send_all};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::client::Connection;
use switchboard::ids::ConversationId;
use switchboard::protocol::{ErrorCode, id_bytes, pb, server_frame};

async fn http(server: &TestServer, method: reqwest::Method, token: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("http://{}{path}", server.http)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("http")
}

fn entry_of(page: &pb::InboxPage, id: ConversationId) -> &pb::InboxEntry {
    page.entries.iter().find(|e| e.conversation_id == id_bytes(id)).unwrap_or_else(|| panic!("{id} not in the page"))
}

/// Every page of the list from `since`, following the continuation tokens.
async fn whole_list(conn: &mut Connection, since: u64, limit: u32) -> (Vec<pb::InboxEntry>, u64) {
    let (mut entries, mut after) = (Vec::new(), String::new());
    loop {
        let page = conn.inbox(since, &after, limit).await.expect("inbox");
        entries.extend(page.entries);
        if page.next.is_empty() {
            return (entries, page.version);
        }
        after = page.next;
    }
}

async fn inbox_changed(conn: &mut Connection, id: ConversationId) -> pb::InboxEntry {
    conn.wait_for(WAIT, false, |k| match k {
        server_frame::Kind::InboxChanged(c) if c.request_id == 0 => c.entry.clone().filter(|e| e.conversation_id == id_bytes(id)),
        _ => None,
    })
    .await
    .expect("InboxChanged")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_has_every_conversation_with_its_last_message_and_unread_count() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob, carol) = (common::user(&api).await, common::user(&api).await, common::user(&api).await);
    // Carol opens a 1:1 with Alice and sends nothing: it is in Alice's list all the same.
    let mut c = online(&server, Kind::Tcp, &carol).await;
    let quiet = c.open_direct(alice.user_id).await.expect("open");
    let mut b = online(&server, Kind::Ws, &bob).await;
    let direct = b.open_direct(alice.user_id).await.expect("open");
    send_all(&mut b, direct, 1..=3, "hi").await;
    let group = c.create_group("climbing", &[alice.user_id, bob.user_id]).await.expect("group");
    send_all(&mut c, group, 2..=2, "rope").await;

    let mut a = online(&server, Kind::Tcp, &alice).await;
    let page = a.inbox(0, "", 0).await.expect("inbox");
    assert_eq!(page.entries.len(), 3);
    assert!(page.next.is_empty());
    // The most recent activity first; the quiet one last.
    assert_eq!(page.entries[0].conversation_id, id_bytes(group));
    assert_eq!(page.entries[2].conversation_id, id_bytes(quiet));
    let g = entry_of(&page, group);
    assert!(g.group && g.member);
    assert_eq!((g.subject.as_str(), g.last_seq, g.unread_count), ("climbing", 2, 1), "the creation event does not count as unread");
    let d = entry_of(&page, direct);
    assert_eq!((d.last_seq, d.unread_count, d.unread_more, d.read_seq), (3, 3, false, 0));
    let last = d.last_message.as_ref().expect("last message");
    assert_eq!((last.seq, last.sender_user_id.clone(), last.event), (3, id_bytes(bob.user_id), false));
    let q = entry_of(&page, quiet);
    assert_eq!((q.last_seq, q.unread_count, q.last_message.is_none()), (0, 0, true));
    assert_eq!(q.peer_user_id, id_bytes(carol.user_id), "who a 1:1 nobody wrote in is with");
    assert!(g.peer_user_id.is_empty());

    // Reading moves the count; Alice's own message does not count.
    a.read(direct, 2).await.expect("read");
    send_all(&mut a, direct, 4..=4, "back").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let page = a.inbox(0, "", 0).await.expect("inbox");
    let d = entry_of(&page, direct);
    assert_eq!((d.last_seq, d.unread_count, d.read_seq), (4, 1, 2));

    // HTTP answers alike.
    let r = http(&server, reqwest::Method::GET, &alice.token, "/v1/inbox", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let entries = body["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["conversation_id"], json!(direct.to_string()), "Alice's own message is now the newest activity");
    assert_eq!(entries[0]["unread_count"], json!(1));
    assert_eq!(entries[0]["last_message"]["sender_user_id"], json!(alice.user_id.to_string()));
    assert!(body["version"].as_u64().expect("version") > 0);
    // Bob sees the same 1:1 from his side: Alice's newest message unread.
    let page = b.inbox(0, "", 0).await.expect("inbox");
    assert_eq!(entry_of(&page, direct).unread_count, 1);

    // Pages follow each other without repeats.
    let (all, _) = whole_list(&mut a, 0, 1).await;
    let ids: Vec<_> = all.iter().map(|e| e.conversation_id.clone()).collect();
    assert_eq!(ids, vec![id_bytes(direct), id_bytes(group), id_bytes(quiet)]);
    let bad = http(&server, reqwest::Method::GET, &alice.token, "/v1/inbox?after=garbage", None).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_archive_pin_and_clear_reach_the_other_devices_live() {
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (common::user(&api).await, common::user(&api).await);
    let laptop = api.link_device(&alice.token, "laptop").await.expect("link");
    let mut phone_conn = online(&server, Kind::Tcp, &alice).await;
    let mut laptop_conn = online(&server, Kind::Ws, &laptop).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let direct = b.open_direct(alice.user_id).await.expect("open");
    send_all(&mut b, direct, 1..=5, "m").await;

    // Pinned on the phone: the answer, and the laptop told live.
    let pinned =
        phone_conn.update_chat(pb::UpdateChat { conversation_id: id_bytes(direct), pinned: Some(true), ..Default::default() }).await.expect("pin");
    assert!(pinned.pinned_ms > 0);
    assert_eq!(inbox_changed(&mut laptop_conn, direct).await.pinned_ms, pinned.pinned_ms);
    // Muted and archived over HTTP: both devices told.
    let r = http(
        &server,
        reqwest::Method::PATCH,
        &laptop.token,
        &format!("/v1/inbox/{direct}"),
        Some(json!({ "muted_until_ms": u64::MAX, "muted_push": "off", "archived": true })),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["state"]["archived"], json!(true));
    assert_eq!(body["state"]["muted_push"], json!("off"));
    for conn in [&mut phone_conn, &mut laptop_conn] {
        let e = inbox_changed(conn, direct).await;
        assert!(e.archived && e.muted_until_ms == u64::MAX && e.muted_push == pb::MutedPush::Off as i32);
    }
    // Bob's list is his own.
    let theirs = b.inbox(0, "", 0).await.expect("inbox");
    assert!(!entry_of(&theirs, direct).archived && entry_of(&theirs, direct).pinned_ms == 0);

    // Cleared up to 3 on the laptop: the phone is told; history and the count skip it.
    let cleared = laptop_conn
        .update_chat(pb::UpdateChat { conversation_id: id_bytes(direct), cleared_up_to: Some(3), ..Default::default() })
        .await
        .expect("clear");
    assert_eq!((cleared.cleared_up_to, cleared.unread_count), (3, 2));
    assert_eq!(inbox_changed(&mut phone_conn, direct).await.cleared_up_to, 3);
    let history = phone_conn.history(direct, 0, 50).await.expect("history");
    assert_eq!(history.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![5, 4]);
    assert!(!history.has_more);
    let over_http = api.history(&alice.token, direct, 0, 50).await.expect("history");
    assert_eq!(over_http["messages"].as_array().map(Vec::len), Some(2));
    // A new device of Alice's does not get what was cleared.
    let tablet = api.link_device(&alice.token, "tablet").await.expect("link");
    let (mut t, _) = Connection::open(&server.transport(Kind::Tcp), &tablet.token).await.expect("connect");
    let mut seqs = Vec::new();
    t.wait_for(WAIT, true, |k| match k {
        server_frame::Kind::Message(m) => {
            seqs.push(m.seq);
            None
        }
        server_frame::Kind::CatchUpComplete(_) => Some(()),
        _ => None,
    })
    .await
    .expect("catch-up");
    assert_eq!(seqs, vec![4, 5]);

    // Refusals: clearing past the end, a bad field, a fourth pin, a stranger.
    let code =
        rejected(phone_conn.update_chat(pb::UpdateChat { conversation_id: id_bytes(direct), cleared_up_to: Some(99), ..Default::default() }).await);
    assert_eq!(code, ErrorCode::InvalidArgument);
    let r = http(&server, reqwest::Method::PATCH, &alice.token, &format!("/v1/inbox/{direct}"), Some(json!({}))).await;
    assert_eq!(r.status(), StatusCode::OK, "an empty change changes nothing");
    assert_eq!(r.json::<Value>().await.expect("json")["state"]["cleared_up_to"], json!(3));
    let r = http(&server, reqwest::Method::PATCH, &alice.token, &format!("/v1/inbox/{direct}"), Some(json!({ "pinned": "yes" }))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    for i in 0..2 {
        let other = common::user(&api).await;
        let id = phone_conn.open_direct(other.user_id).await.expect("open");
        phone_conn
            .update_chat(pb::UpdateChat { conversation_id: id_bytes(id), pinned: Some(true), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("pin {i}: {e}"));
    }
    let fourth = phone_conn.open_direct(common::user(&api).await.user_id).await.expect("open");
    let code = rejected(phone_conn.update_chat(pb::UpdateChat { conversation_id: id_bytes(fourth), pinned: Some(true), ..Default::default() }).await);
    assert_eq!(code, ErrorCode::TooManyPins);
    let r = http(&server, reqwest::Method::PATCH, &alice.token, &format!("/v1/inbox/{fourth}"), Some(json!({ "pinned": true }))).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.expect("json")["error"], json!("too_many_pins"));
    // Unpinning one makes room.
    phone_conn.update_chat(pb::UpdateChat { conversation_id: id_bytes(direct), pinned: Some(false), ..Default::default() }).await.expect("unpin");
    phone_conn.update_chat(pb::UpdateChat { conversation_id: id_bytes(fourth), pinned: Some(true), ..Default::default() }).await.expect("pin");
    let stranger = common::user(&api).await;
    let r = http(&server, reqwest::Method::PATCH, &stranger.token, &format!("/v1/inbox/{direct}"), Some(json!({ "archived": true }))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r =
        http(&server, reqwest::Method::PATCH, &stranger.token, &format!("/v1/inbox/{}", ConversationId::random()), Some(json!({ "archived": true })))
            .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_sync_brings_only_what_changed() {
    // A short version margin, so that the test need not wait ten seconds for "later".
    let server = TestServer::start_with(&["--inbox-version-margin-ms", "300"]);
    let api = server.api();
    let alice = common::user(&api).await;
    let laptop = api.link_device(&alice.token, "laptop").await.expect("link");
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut peers = Vec::new();
    for _ in 0..6 {
        let peer = common::user(&api).await;
        let id = a.open_direct(peer.user_id).await.expect("open");
        peers.push((peer, id));
    }
    // Older than the margin: the creations are before the next version.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (all, version) = whole_list(&mut a, 0, 4).await;
    assert_eq!(all.len(), 6);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(a.inbox(version, "", 0).await.expect("inbox").entries.is_empty(), "nothing changed");

    // One peer writes, Alice archives another on her laptop, and reads a third there.
    let mut p0 = online(&server, Kind::Tcp, &peers[0].0).await;
    send_all(&mut p0, peers[0].1, 1..=1, "new").await;
    let mut p2 = online(&server, Kind::Tcp, &peers[2].0).await;
    send_all(&mut p2, peers[2].1, 1..=1, "old").await;
    let (_, version) = whole_list(&mut a, 0, 0).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut l = online(&server, Kind::Ws, &laptop).await;
    l.read(peers[2].1, 1).await.expect("read");
    send_all(&mut p0, peers[0].1, 2..=2, "newer").await;
    l.update_chat(pb::UpdateChat { conversation_id: id_bytes(peers[1].1), archived: Some(true), ..Default::default() }).await.expect("archive");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let changed = a.inbox(version, "", 0).await.expect("inbox");
    let mut ids: Vec<_> = changed.entries.iter().map(|e| e.conversation_id.clone()).collect();
    ids.sort();
    let mut expected = vec![id_bytes(peers[0].1), id_bytes(peers[1].1), id_bytes(peers[2].1)];
    expected.sort();
    assert_eq!(ids, expected, "the new message, the archive and the read elsewhere; nothing else");
    assert_eq!(entry_of(&changed, peers[2].1).unread_count, 0);
    assert_eq!(entry_of(&changed, peers[0].1).unread_count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_gets_the_newest_messages_with_their_ticks() {
    let server = TestServer::start_with(&["--catch-up-recent", "5"]);
    let api = server.api();
    let (alice, bob) = (common::user(&api).await, common::user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let direct = a.open_direct(bob.user_id).await.expect("open");
    send_all(&mut a, direct, 1..=30, "long").await;
    // Bob's phone receives up to 28 and reads up to 26.
    let mut b = online(&server, Kind::Tcp, &bob).await;
    b.ack(direct, 28).await.expect("ack");
    b.read(direct, 26).await.expect("read");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Alice's new laptop: only the newest 5 of 30, her own, with ✓✓ and blue ✓✓.
    let laptop = api.link_device(&alice.token, "laptop").await.expect("link");
    let (mut l, _) = Connection::open(&server.transport(Kind::Tcp), &laptop.token).await.expect("connect");
    let mut got = Vec::new();
    let done = l
        .wait_for(WAIT, true, |k| match k {
            server_frame::Kind::Message(m) => {
                got.push((m.seq, m.delivered_to, m.read_by));
                None
            }
            server_frame::Kind::CatchUpComplete(c) => Some(*c),
            _ => None,
        })
        .await
        .expect("catch-up");
    assert_eq!(got, vec![(26, 1, 1), (27, 1, 0), (28, 1, 0), (29, 0, 0), (30, 0, 0)]);
    assert_eq!(done.messages, 5);
    // The rest is history, with the same ticks.
    let older = l.history(direct, 26, 3).await.expect("history");
    assert_eq!(older.messages.iter().map(|m| (m.seq, m.delivered_to, m.read_by)).collect::<Vec<_>>(), vec![(25, 1, 1), (24, 1, 1), (23, 1, 1)]);
    let over_http = api.history(&alice.token, direct, 0, 4).await.expect("history");
    let ticks: Vec<(u64, u64)> = over_http["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["delivered_to"].as_u64().unwrap_or(9), m["read_by"].as_u64().unwrap_or(9)))
        .collect();
    assert_eq!(ticks, vec![(0, 0), (0, 0), (1, 0), (1, 0)]);
    // Bob sees no ticks on Alice's messages (they are not his).
    let bobs = b.history(direct, 0, 2).await.expect("history");
    assert!(bobs.messages.iter().all(|m| m.delivered_to == 0 && m.read_by == 0));
    // Bob turns read receipts off: Alice's blue ticks are gone from history too.
    let r = http(&server, reqwest::Method::PATCH, &bob.token, "/v1/privacy", Some(json!({ "read_receipts": false }))).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Alice's sessions hear of it (PrivacyChanged) a moment later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let page = l.history(direct, 27, 1).await.expect("history");
    assert_eq!(page.messages.iter().map(|m| (m.seq, m.delivered_to, m.read_by)).collect::<Vec<_>>(), vec![(26, 1, 0)]);
    // A device that did acknowledge comes back to everything it missed, not just 5.
    drop(b);
    send_all(&mut a, direct, 31..=40, "more").await;
    let mut b = Connection::open(&server.transport(Kind::Tcp), &bob.token).await.expect("connect").0;
    let missed = b
        .wait_for(WAIT, true, |k| match k {
            server_frame::Kind::CatchUpComplete(c) => Some(c.messages),
            _ => None,
        })
        .await
        .expect("catch-up");
    assert_eq!(missed, 12, "29 and 30 (never acknowledged) and the 10 new ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_conversation_pushes_silently_or_not_at_all() {
    let (url, mut pushes) = common::push_receiver(0).await;
    let server = TestServer::start_with(&["--push-sink", &format!("webhook:{url}"), "--push-coalesce-ms", "50"]);
    let api = server.api();
    let (alice, bob, carol) = (common::user(&api).await, common::user(&api).await, common::user(&api).await);
    api.set_push_token(&alice.token, "fcm", "alice-phone").await.expect("token");
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let with_bob = b.open_direct(alice.user_id).await.expect("open");
    let mut c = online(&server, Kind::Tcp, &carol).await;
    let with_carol = c.open_direct(alice.user_id).await.expect("open");
    for (id, body) in [(with_bob, json!({ "muted_until_ms": u64::MAX })), (with_carol, json!({ "muted_until_ms": u64::MAX, "muted_push": "off" }))] {
        let r = http(&server, reqwest::Method::PATCH, &alice.token, &format!("/v1/inbox/{id}"), Some(body)).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    send_all(&mut c, with_carol, 1..=1, "quiet").await;
    send_all(&mut b, with_bob, 1..=1, "silent").await;
    let push = tokio::time::timeout(WAIT, pushes.recv()).await.expect("a push").expect("push");
    assert_eq!(push["conversation_id"], json!(with_bob.to_string()), "none for the conversation muted with pushes off");
    assert_eq!(push["silent"], json!(true));
    // Unmuted: an ordinary push again.
    http(&server, reqwest::Method::PATCH, &alice.token, &format!("/v1/inbox/{with_bob}"), Some(json!({ "muted_until_ms": 0 }))).await;
    send_all(&mut b, with_bob, 2..=2, "loud").await;
    let push = tokio::time::timeout(WAIT, pushes.recv()).await.expect("a push").expect("push");
    assert_eq!((push["conversation_id"].clone(), push["silent"].clone()), (json!(with_bob.to_string()), json!(false)));
    assert!(tokio::time::timeout(Duration::from_millis(500), pushes.recv()).await.is_err(), "still nothing for the one with pushes off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstalled_device_of_200_conversations_and_100000_messages_syncs_in_bounded_time_and_bytes() {
    const CONVERSATIONS: usize = 200;
    const MESSAGES: u64 = 500;
    let server = TestServer::start_with(&["--rate-per-sec", "100000", "--rate-burst", "100000"]);
    let mut users = server.provision(CONVERSATIONS + 1).await;
    let owner = users.remove(0);
    let transport = server.transport(Kind::Tcp);
    let filled = switchboard::loadgen::reinstall::fill(&transport, &owner, &users, MESSAGES, 100, 16).await.expect("fill");
    assert_eq!(filled.len(), CONVERSATIONS);
    let list: Value = http(&server, reqwest::Method::GET, &owner.token, "/v1/inbox?limit=500", None).await.json().await.expect("json");
    let stored: u64 = list["entries"].as_array().expect("entries").iter().map(|e| e["last_seq"].as_u64().unwrap_or(0)).sum();
    assert_eq!(stored, CONVERSATIONS as u64 * MESSAGES, "the history is there");
    let report = switchboard::loadgen::reinstall::measure(&transport, &server.api(), &owner).await.expect("sync");
    // The list: every conversation; the catch-up: the newest 20 of each, not 100,000.
    assert_eq!(report.inbox_entries, CONVERSATIONS);
    assert_eq!(report.catch_up_messages, CONVERSATIONS as u64 * 20);
    // Bytes: about 200 per message frame (100 of payload), a few hundred per list entry;
    // the whole history would be 100,000 frames, over 20 MB.
    assert!(report.catch_up_bytes < 1_500_000, "{report:?}");
    assert!(report.inbox_bytes < 100_000, "{report:?}");
    // Time: generous bounds for a debug build on a shared 2-core machine (the release
    // figures are in BENCHMARKS.md).
    assert!(report.catch_up_ms < 30_000.0 && report.inbox_ms < 30_000.0, "{report:?}");
    eprintln!("{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_member_sees_the_group_as_it_was_when_they_left() {
    use switchboard::protocol::pb::group_change::Change;
    let server = TestServer::start();
    let api = server.api();
    let (alice, bob) = (common::user(&api).await, common::user(&api).await);
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let group = a.create_group("before", &[bob.user_id]).await.expect("group");
    send_all(&mut b, group, 2..=2, "mine").await;
    a.read(group, 2).await.expect("read");
    a.group_change(group, Change::RemoveMember(id_bytes(bob.user_id))).await.expect("remove");
    a.group_change(group, Change::SetSubject("after".into())).await.expect("rename");
    send_all(&mut a, group, 5..=5, "later").await;

    let page = b.inbox(0, "", 0).await.expect("inbox");
    let entry = entry_of(&page, group);
    assert!(!entry.member);
    assert_eq!((entry.subject.as_str(), entry.last_seq), ("before", 3), "the subject and the log as they were when he left");
    // His own message's ticks would tell him about the group after he left: none.
    let history = b.history(group, 0, 10).await.expect("history");
    let his = history.messages.iter().find(|m| m.seq == 2).expect("his message");
    assert_eq!((his.delivered_to, his.read_by), (0, 0));
    // Alice, still a member, sees the new subject.
    assert_eq!(entry_of(&a.inbox(0, "", 0).await.expect("inbox"), group).subject, "after");
}
