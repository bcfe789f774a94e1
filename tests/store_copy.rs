//! Outgrowing one node: `switchboard store copy` moves a populated embedded store to
//! PostgreSQL, resumes after an interruption, verifies by counts, and a server started on
//! the copy serves the same accounts and history.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use switchboard::store::transfer::{self, CopyError, CopyProgress};
use switchboard::store::{EmbeddedStore, Record, Section, Store, StoreError, StoreSpec};
use switchboard::testkit::PrivatePostgres;

/// Signs up users, sends 1:1 and group messages with receipts, then stops the node
/// gracefully. Returns the data directory's store spec, the users, and each
/// conversation's history as the server served it.
async fn populated_node(
    server: &mut TestServer,
) -> (Vec<switchboard::accounts::DeviceCredentials>, Vec<(switchboard::ids::ConversationId, serde_json::Value)>, KeptState) {
    let api = server.api();
    let (mut users, mut numbers) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        let number = phone();
        users.push(api.sign_up(&number, "phone").await.expect("sign up"));
        numbers.push(number);
    }
    let mut a = online(server, Kind::Tcp, &users[0]).await;
    let direct = a.open_direct(users[1].user_id).await.expect("open direct");
    send_all(&mut a, direct, 1..=120, "direct").await;
    let group = a.create_group("copy", &[users[1].user_id, users[2].user_id, users[3].user_id]).await.expect("group");
    let first_group_seq = a.history(group, 0, 1).await.expect("history").messages.first().map(|m| m.seq).unwrap_or(0);
    send_all(&mut a, group, first_group_seq + 1..=first_group_seq + 30, "group").await;
    let mut b = online(server, Kind::Tcp, &users[1]).await;
    b.read(direct, 120).await.expect("read receipt");
    api.set_push_token(&users[2].token, "fcm", "push-token-2").await.expect("push token");
    // End-to-end state: users[1] publishes identity keys, three one-time keys and a
    // fallback key; users[0] claims one of them, queues three to-device messages for
    // users[1] (offline from here), of which users[1] has read the first; users[1] holds a
    // device-list notice about users[0], who linked a device.
    let mut account = vodozemac::olm::Account::new();
    b.upload_keys(signed_upload(&mut account, users[1].user_id, users[1].device_id, 3, true)).await.expect("keys");
    let claimed = a.claim_keys(&[(users[1].user_id, users[1].device_id)]).await.expect("claim");
    let spent = claimed.keys[0].key.as_ref().expect("a key").key_id.clone();
    for i in 1..=3 {
        let payload = bytes::Bytes::from(format!("olm-{i}"));
        a.send_to_device(&format!("td-{i}"), vec![(users[1].user_id, users[1].device_id, payload)]).await.expect("to-device");
    }
    b.ack_to_device(1).await.expect("ack to-device");
    b.query_devices(&[users[1].user_id]).await.expect("in order: the ack is handled");
    drop(b);
    api.link_device(&users[0].token, "tablet").await.expect("link");
    // Status: users[0] and users[1] have each other's numbers; users[0] posts, users[1]
    // sees it.
    let status = status_posted_and_seen(server, &users, &numbers).await;
    let mut history = Vec::new();
    for (conversation, at_least) in [(direct, 120), (group, 30)] {
        let page = api.history(&users[1].token, conversation, 0, 200).await.expect("history");
        let n = page["messages"].as_array().map_or(0, Vec::len);
        assert!(n >= at_least, "{conversation}: {n} messages in history");
        history.push((conversation, page));
    }
    drop(a);
    assert!(server.terminate().success());
    (users, history, KeptState { spent, curve25519: account.curve25519_key().to_bytes(), status })
}

/// users[0]'s status post, seen by users[1] (who has users[0]'s number, and the other way
/// round): users[0]'s list of their statuses, with its viewer.
async fn status_posted_and_seen(server: &TestServer, users: &[switchboard::accounts::DeviceCredentials], numbers: &[String]) -> serde_json::Value {
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.http);
    for (who, other) in [(0, 1), (1, 0)] {
        let r = http
            .post(format!("{base}/v1/contacts/discover"))
            .bearer_auth(&users[who].token)
            .json(&serde_json::json!({ "phones": [numbers[other]] }))
            .send()
            .await
            .expect("discover");
        assert!(r.status().is_success());
    }
    let posted: serde_json::Value = http
        .post(format!("{base}/v1/status"))
        .bearer_auth(&users[0].token)
        .json(&serde_json::json!({ "payload_hex": "5ea1ed" }))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let post_id = posted["post_id"].as_str().expect("post_id");
    let r = http.post(format!("{base}/v1/status/{}/{post_id}/seen", users[0].user_id)).bearer_auth(&users[1].token).send().await.expect("seen");
    assert_eq!(r.status().as_u16(), 204);
    let mine: serde_json::Value =
        http.get(format!("{base}/v1/status/mine")).bearer_auth(&users[0].token).send().await.expect("mine").json().await.expect("json");
    assert_eq!(mine["statuses"][0]["view_count"], 1, "{mine}");
    mine
}

/// What the copy must keep besides history: end-to-end state and a status post.
struct KeptState {
    /// The one-time key claimed before the copy.
    spent: String,
    /// users[1]'s identity key.
    curve25519: [u8; 32],
    /// users[0]'s list of their statuses (one, seen by users[1]).
    status: serde_json::Value,
}

/// The next frame `pick` accepts (buffered ones first).
async fn next_of<T>(conn: &mut switchboard::client::Connection, pick: impl FnMut(&switchboard::protocol::server_frame::Kind) -> Option<T>) -> T {
    conn.wait_for(WAIT, true, pick).await.expect("the frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_to_postgres_then_serve_the_same_history_from_it() {
    let data = tempfile::tempdir().unwrap();
    let embedded = format!("embedded:{}", data.path().display());
    let mut node = TestServer::start_on(&embedded, &[]);
    let (users, history, e2ee) = populated_node(&mut node).await;

    let pg = tokio::task::spawn_blocking(PrivatePostgres::start).await.unwrap().expect("private postgres");
    let url = pg.create_database("copied").await.expect("database");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["store", "copy", "--from", &embedded, "--to", &url, "--chunk", "25"])
        .output()
        .expect("run store copy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "store copy failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("copy verified"), "{stdout}");
    assert!(stdout.contains("messages: "), "{stdout}");

    // Copying again into the now non-empty target is refused rather than merged.
    let again = Command::new(env!("CARGO_BIN_EXE_switchboard")).args(["store", "copy", "--from", &embedded, "--to", &url]).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"), "{}", String::from_utf8_lossy(&again.stderr));

    // A node on the copy: same tokens log in, same history, and the log goes on from the
    // copied fence.
    let server = TestServer::start_on(&url, &[]);
    let api = server.api();
    for (conversation, before) in &history {
        let after = api.history(&users[1].token, *conversation, 0, 200).await.expect("history from postgres");
        assert_eq!(&after, before, "history of {conversation} changed in the copy");
    }
    let (direct, _) = history[0];
    let mut b = online(&server, Kind::Ws, &users[1]).await;
    let ack = b.send_and_ack(direct, "after-copy", b"still here".to_vec()).await.expect("send after copy");
    assert_eq!(ack.seq, 121, "the fence was copied: the next seq follows the copied log");

    // The status came along, with its viewer, and still reaches users[1].
    let http = reqwest::Client::new();
    let mine: serde_json::Value = http
        .get(format!("http://{}/v1/status/mine", server.http))
        .bearer_auth(&users[0].token)
        .send()
        .await
        .expect("mine")
        .json()
        .await
        .expect("json");
    assert_eq!(mine, e2ee.status, "status posts and their viewers were copied");
    let feed: serde_json::Value =
        http.get(format!("http://{}/v1/status", server.http)).bearer_auth(&users[1].token).send().await.expect("feed").json().await.expect("json");
    assert_eq!(feed["statuses"][0]["post_id"], e2ee.status["statuses"][0]["post_id"]);

    // End-to-end state came along: the to-device entries not yet read, at their
    // positions, and the device-list notice, reach users[1] at catch-up.
    use switchboard::protocol::server_frame::Kind as Frame;
    let to_device = |k: &Frame| match k {
        Frame::ToDevice(m) => Some((m.position, m.payload.to_vec())),
        _ => None,
    };
    assert_eq!(next_of(&mut b, to_device).await, (2, b"olm-2".to_vec()), "unread to-device entries after the copy");
    assert_eq!(next_of(&mut b, to_device).await, (3, b"olm-3".to_vec()));
    let notice = next_of(&mut b, |k| match k {
        Frame::DeviceListsChanged(n) => Some(n.user_ids.clone()),
        _ => None,
    })
    .await;
    assert_eq!(notice, vec![switchboard::protocol::id_bytes(users[0].user_id)]);
    // Identity keys as published; the claimed key is never handed out again, the two
    // others are, then the fallback key.
    let mut a = online(&server, Kind::Tcp, &users[0]).await;
    let listed = a.query_devices(&[users[1].user_id]).await.expect("query");
    let device = &listed.users[0].devices[0];
    assert_eq!(&device.identity.as_ref().expect("identity keys").curve25519[..], &e2ee.curve25519[..]);
    let mut handed = Vec::new();
    for _ in 0..3 {
        let claim = a.claim_keys(&[(users[1].user_id, users[1].device_id)]).await.expect("claim");
        handed.push((claim.keys[0].key.as_ref().expect("a key").key_id.clone(), claim.keys[0].fallback));
    }
    // (Fallback key ids are counted apart from one-time key ids: the first ones match.)
    assert!(!handed.iter().any(|(id, fallback)| !fallback && *id == e2ee.spent), "a key claimed before the copy was handed out again: {handed:?}");
    assert_eq!(handed.iter().map(|(_, f)| *f).collect::<Vec<_>>(), [false, false, true], "{handed:?}");
    // The queue goes on from its copied head.
    a.send_to_device("td-after", vec![(users[1].user_id, users[1].device_id, bytes::Bytes::from_static(b"olm-4"))]).await.expect("send");
    assert_eq!(next_of(&mut b, to_device).await, (4, b"olm-4".to_vec()), "the queue goes on from its copied head");
}

/// A target that fails after a number of successful imports, as a network or database
/// failure in the middle of a copy would.
struct FailingAfter {
    inner: Arc<dyn Store>,
    imports_left: AtomicUsize,
}

#[async_trait::async_trait]
impl Store for FailingAfter {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn import(&self, records: Vec<Record>) -> Result<(), StoreError> {
        if self.imports_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
            return Err(StoreError::Backend("connection reset (injected)".into()));
        }
        self.inner.import(records).await
    }
    async fn count(&self, section: Section) -> Result<u64, StoreError> {
        self.inner.count(section).await
    }
    // The copy uses nothing else.
    async fn put_pending_code(&self, _: &str, _: switchboard::store::PendingCode) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn pending_code(&self, _: &str) -> Result<Option<switchboard::store::PendingCode>, StoreError> {
        unimplemented!()
    }
    async fn delete_pending_code(&self, _: &str) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn use_pending_code(&self, _: &str, _: [u8; 32], _: u64, _: u32) -> Result<switchboard::store::CodeCheck, StoreError> {
        unimplemented!()
    }
    async fn get_or_create_user(&self, _: &str, _: switchboard::store::UserRecord) -> Result<(switchboard::store::UserRecord, bool), StoreError> {
        unimplemented!()
    }
    async fn create_accounts(&self, _: Vec<(switchboard::store::UserRecord, switchboard::store::DeviceRecord)>) -> Result<usize, StoreError> {
        unimplemented!()
    }
    async fn user(&self, _: switchboard::ids::UserId) -> Result<Option<switchboard::store::UserRecord>, StoreError> {
        unimplemented!()
    }
    async fn users_by_phone(&self, _: Vec<String>) -> Result<Vec<(String, switchboard::ids::UserId)>, StoreError> {
        unimplemented!()
    }
    async fn known_contacts(&self, _: switchboard::ids::UserId, _: Vec<String>) -> Result<Vec<String>, StoreError> {
        unimplemented!()
    }
    async fn contacts_of(&self, _: switchboard::ids::UserId) -> Result<Vec<String>, StoreError> {
        unimplemented!()
    }
    async fn put_status(&self, _: switchboard::store::StatusPost, _: u64) -> Result<switchboard::store::StatusPut, StoreError> {
        unimplemented!()
    }
    async fn status_post(
        &self,
        _: switchboard::ids::UserId,
        _: switchboard::ids::StatusId,
        _: u64,
    ) -> Result<Option<switchboard::store::StatusPost>, StoreError> {
        unimplemented!()
    }
    async fn status_posts(&self, _: Vec<switchboard::ids::UserId>, _: u64) -> Result<Vec<switchboard::store::StatusPost>, StoreError> {
        unimplemented!()
    }
    async fn delete_status(&self, _: switchboard::ids::UserId, _: switchboard::ids::StatusId, _: u64) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn mark_status_seen(
        &self,
        _: switchboard::ids::UserId,
        _: switchboard::ids::StatusId,
        _: switchboard::ids::UserId,
        _: u64,
    ) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn status_views(
        &self,
        _: switchboard::ids::UserId,
        _: switchboard::ids::StatusId,
    ) -> Result<Vec<switchboard::store::StatusView>, StoreError> {
        unimplemented!()
    }
    async fn add_contacts(&self, _: switchboard::ids::UserId, _: Vec<String>) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn remove_contacts(&self, _: switchboard::ids::UserId, _: Vec<String>) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn profile(&self, _: switchboard::ids::UserId) -> Result<Option<switchboard::store::Profile>, StoreError> {
        unimplemented!()
    }
    async fn chat_states(
        &self,
        _: switchboard::ids::UserId,
    ) -> Result<Vec<(switchboard::ids::ConversationId, switchboard::store::ChatState)>, StoreError> {
        unimplemented!()
    }
    async fn chat_state(
        &self,
        _: switchboard::ids::UserId,
        _: switchboard::ids::ConversationId,
    ) -> Result<switchboard::store::ChatState, StoreError> {
        unimplemented!()
    }
    async fn update_chat_state(
        &self,
        _: switchboard::ids::UserId,
        _: switchboard::ids::ConversationId,
        _: switchboard::store::ChatUpdate,
        _: u64,
        _: u64,
    ) -> Result<Result<Option<switchboard::store::ChatState>, switchboard::store::InboxError>, StoreError> {
        unimplemented!()
    }
    async fn member_cursor(
        &self,
        _: switchboard::ids::ConversationId,
        _: switchboard::ids::UserId,
    ) -> Result<switchboard::store::MemberCursor, StoreError> {
        unimplemented!()
    }
    async fn change_phone(&self, _: switchboard::ids::UserId, _: &str) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn delete_account_data(&self, _: switchboard::ids::UserId) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn set_profile(&self, _: switchboard::ids::UserId, _: switchboard::store::Profile) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn put_pairing(&self, _: switchboard::store::PairingRecord) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn approve_pairing(
        &self,
        _: [u8; 32],
        _: switchboard::ids::UserId,
        _: switchboard::ids::DeviceId,
        _: u64,
    ) -> Result<switchboard::store::PairingApproval, StoreError> {
        unimplemented!()
    }
    async fn claim_pairing(&self, _: [u8; 32], _: [u8; 32], _: u64) -> Result<switchboard::store::PairingClaim, StoreError> {
        unimplemented!()
    }
    async fn privacy(&self, _: switchboard::ids::UserId) -> Result<switchboard::store::PrivacySettings, StoreError> {
        unimplemented!()
    }
    async fn set_privacy(&self, _: switchboard::ids::UserId, _: switchboard::store::PrivacySettings) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn is_blocked(&self, _: switchboard::ids::UserId, _: switchboard::ids::UserId) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn blocks_of(&self, _: switchboard::ids::UserId) -> Result<Vec<switchboard::ids::UserId>, StoreError> {
        unimplemented!()
    }
    async fn blockers_of(&self, _: switchboard::ids::UserId) -> Result<Vec<switchboard::ids::UserId>, StoreError> {
        unimplemented!()
    }
    async fn set_blocked(&self, _: switchboard::ids::UserId, _: switchboard::ids::UserId, _: bool, _: u64) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn add_device(&self, _: switchboard::store::DeviceRecord, _: usize) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn device_by_token(&self, _: [u8; 32]) -> Result<Option<switchboard::store::DeviceRecord>, StoreError> {
        unimplemented!()
    }
    async fn device(&self, _: switchboard::ids::DeviceId) -> Result<Option<switchboard::store::DeviceRecord>, StoreError> {
        unimplemented!()
    }
    async fn devices_of(&self, _: switchboard::ids::UserId) -> Result<Vec<switchboard::store::DeviceRecord>, StoreError> {
        unimplemented!()
    }
    async fn revoke_device(&self, _: switchboard::ids::UserId, _: switchboard::ids::DeviceId, _: u64) -> Result<bool, StoreError> {
        unimplemented!()
    }
    async fn create_conversation(&self, _: switchboard::store::ConversationRecord) -> Result<switchboard::store::ConversationRecord, StoreError> {
        unimplemented!()
    }
    async fn conversation(&self, _: switchboard::ids::ConversationId) -> Result<Option<switchboard::store::ConversationRecord>, StoreError> {
        unimplemented!()
    }
    async fn conversation_by_invite(&self, _: [u8; 32]) -> Result<Option<switchboard::ids::ConversationId>, StoreError> {
        unimplemented!()
    }
    async fn conversations_of(&self, _: switchboard::ids::UserId) -> Result<Vec<switchboard::ids::ConversationId>, StoreError> {
        unimplemented!()
    }
    async fn apply(&self, _: Vec<switchboard::store::WriteOp>) -> Result<Vec<switchboard::store::WriteOutcome>, StoreError> {
        unimplemented!()
    }
    async fn last_seq(&self, _: switchboard::ids::ConversationId) -> Result<u64, StoreError> {
        unimplemented!()
    }
    async fn find_by_client_id(
        &self,
        _: switchboard::ids::ConversationId,
        _: switchboard::ids::UserId,
        _: &str,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        unimplemented!()
    }
    async fn messages_after(
        &self,
        _: switchboard::ids::ConversationId,
        _: u64,
        _: usize,
    ) -> Result<Vec<switchboard::store::StoredMessage>, StoreError> {
        unimplemented!()
    }
    async fn messages_before(
        &self,
        _: switchboard::ids::ConversationId,
        _: u64,
        _: usize,
    ) -> Result<Vec<switchboard::store::StoredMessage>, StoreError> {
        unimplemented!()
    }
    async fn member_cursors(
        &self,
        _: switchboard::ids::ConversationId,
    ) -> Result<Vec<(switchboard::ids::UserId, switchboard::store::MemberCursor)>, StoreError> {
        unimplemented!()
    }
    async fn receipt_times(
        &self,
        _: switchboard::ids::ConversationId,
        _: switchboard::ids::UserId,
        _: u64,
    ) -> Result<(Option<u64>, Option<u64>), StoreError> {
        unimplemented!()
    }
    async fn set_push_token(
        &self,
        _: switchboard::ids::UserId,
        _: switchboard::ids::DeviceId,
        _: Option<switchboard::store::PushToken>,
    ) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn put_device_keys(&self, _: switchboard::store::DeviceKeys) -> Result<switchboard::store::KeysStored, StoreError> {
        unimplemented!()
    }
    async fn device_keys_of(&self, _: switchboard::ids::UserId) -> Result<Vec<switchboard::store::DeviceKeys>, StoreError> {
        unimplemented!()
    }
    async fn add_one_time_keys(
        &self,
        _: switchboard::ids::DeviceId,
        _: Vec<switchboard::store::OneTimeKey>,
        _: Option<switchboard::store::OneTimeKey>,
    ) -> Result<u64, StoreError> {
        unimplemented!()
    }
    async fn one_time_key_count(&self, _: switchboard::ids::DeviceId) -> Result<u64, StoreError> {
        unimplemented!()
    }
    async fn claim_one_time_key(&self, _: switchboard::ids::DeviceId, _: u64) -> Result<Option<switchboard::store::ClaimedKey>, StoreError> {
        unimplemented!()
    }
    async fn enqueue_to_device(
        &self,
        _: switchboard::store::ToDeviceSend,
        _: switchboard::store::QueueBounds,
    ) -> Result<switchboard::store::ToDeviceStored, StoreError> {
        unimplemented!()
    }
    async fn to_device_after(&self, _: switchboard::ids::DeviceId, _: u64, _: usize) -> Result<switchboard::store::ToDeviceQueue, StoreError> {
        unimplemented!()
    }
    async fn ack_to_device(&self, _: switchboard::ids::DeviceId, _: u64) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn note_device_list_change(&self, _: switchboard::ids::UserId, _: Vec<switchboard::ids::DeviceId>, _: u64) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn device_list_changes(&self, _: switchboard::ids::DeviceId) -> Result<Vec<switchboard::ids::UserId>, StoreError> {
        unimplemented!()
    }
    async fn ack_device_list_changes(&self, _: switchboard::ids::DeviceId, _: Vec<switchboard::ids::UserId>) -> Result<(), StoreError> {
        unimplemented!()
    }
    async fn push_tokens_of(
        &self,
        _: switchboard::ids::UserId,
    ) -> Result<Vec<(switchboard::ids::DeviceId, switchboard::store::PushToken)>, StoreError> {
        unimplemented!()
    }
    async fn purge_expired(&self, _: u64, _: usize) -> Result<u64, StoreError> {
        unimplemented!()
    }
    async fn cursors_of(
        &self,
        _: switchboard::ids::DeviceId,
    ) -> Result<Vec<(switchboard::ids::ConversationId, switchboard::store::Cursor)>, StoreError> {
        unimplemented!()
    }
    async fn last_seen(&self, _: switchboard::ids::UserId) -> Result<Option<u64>, StoreError> {
        unimplemented!()
    }
    async fn create_media(&self, record: switchboard::store::MediaRecord) -> Result<(), StoreError> {
        self.inner.create_media(record).await
    }
    async fn media(&self, id: switchboard::ids::MediaId) -> Result<Option<switchboard::store::MediaRecord>, StoreError> {
        self.inner.media(id).await
    }
    async fn update_media(&self, record: switchboard::store::MediaRecord) -> Result<bool, StoreError> {
        self.inner.update_media(record).await
    }
    async fn delete_media(&self, id: switchboard::ids::MediaId, version: u64) -> Result<bool, StoreError> {
        self.inner.delete_media(id, version).await
    }
    async fn media_refs(&self, id: switchboard::ids::MediaId, limit: usize) -> Result<Vec<(switchboard::ids::ConversationId, u64)>, StoreError> {
        self.inner.media_refs(id, limit).await
    }
    async fn media_usage(&self, owner: switchboard::ids::UserId) -> Result<u64, StoreError> {
        self.inner.media_usage(owner).await
    }
    async fn take_token(&self, key: &str, rule: switchboard::store::BucketRule, now_ms: u64) -> Result<switchboard::store::Taken, StoreError> {
        self.inner.take_token(key, rule, now_ms).await
    }
    async fn media_page(&self, after: Option<switchboard::ids::MediaId>, limit: usize) -> Result<Vec<switchboard::store::MediaRecord>, StoreError> {
        self.inner.media_page(after, limit).await
    }
    async fn media_with_digest(&self, digest: [u8; 32], limit: usize) -> Result<Vec<switchboard::ids::MediaId>, StoreError> {
        self.inner.media_with_digest(digest, limit).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
}

struct Quiet;

impl CopyProgress for Quiet {
    fn section(&self, _: Section, _: u64, _: u64) {}
    fn advance(&self, _: u64) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_resumes_from_its_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    let embedded = format!("embedded:{}", data.path().display());
    let mut node = TestServer::start_on(&embedded, &[]);
    populated_node(&mut node).await;

    let pg = tokio::task::spawn_blocking(PrivatePostgres::start).await.unwrap().expect("private postgres");
    let url = pg.create_database("resumed").await.expect("database");
    let target = StoreSpec::parse(&url).unwrap().open().await.expect("open postgres");
    let source = EmbeddedStore::open(data.path()).expect("open embedded");
    let checkpoint = data.path().join("copy-checkpoint.json");

    // The target fails in the middle of the message log.
    let failing = FailingAfter { inner: target.clone(), imports_left: AtomicUsize::new(8) };
    let err = transfer::copy(&source, &failing, "pg", &checkpoint, 10, &Quiet).await.unwrap_err();
    assert!(matches!(err, CopyError::Store(_)), "{err}");
    assert!(checkpoint.exists(), "progress was saved");
    let partial = target.count(Section::Messages).await.unwrap();
    assert!(partial > 0 && partial < source.count(Section::Messages).await.unwrap(), "stopped half-way: {partial}");

    // Run again: it resumes (the records written before the failure are not written
    // again, and would be harmless if they were) and verifies every count.
    let report = transfer::copy(&source, target.as_ref(), "pg", &checkpoint, 10, &Quiet).await.expect("resumed copy");
    assert!(report.resumed);
    for (section, n) in &report.counts {
        assert_eq!(target.count(*section).await.unwrap(), *n, "{}", section.name());
    }
    assert!(!checkpoint.exists(), "a finished copy removes its checkpoint");
    assert!(report.counts.iter().any(|(s, n)| *s == Section::Messages && *n >= 150));
}
