//! An account's lifecycle through real HTTP and sockets (issue 15 item 9): changing the
//! number (same account, history and groups kept, peers told, the old number free again),
//! deleting the account (groups left with an admin handed over, every device revoked and
//! disconnected, tokens refused, keys and profile gone, the number free), and exporting
//! its data (the user's own messages as the ciphertext stored, nobody else's).

mod common;

use common::{Kind, TestServer, WAIT, next_closing, online, phone, send_all};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::accounts::DeviceCredentials;
use switchboard::protocol::{ErrorCode, id_bytes, server_frame};

async fn http(server: &TestServer, method: reqwest::Method, token: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("http://{}{path}", server.http)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("http")
}

/// A profile photo for `who` (two renditions of a generated image); returns its ids.
async fn set_photo(server: &TestServer, who: &DeviceCredentials) -> (String, String) {
    let img = image::RgbImage::from_fn(200, 200, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("png");
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/media/public", server.http))
        .bearer_auth(&who.token)
        .body(png)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.expect("json");
    let ids: Vec<String> =
        body["renditions"].as_array().expect("renditions").iter().map(|r| r["media_id"].as_str().expect("id").to_owned()).collect();
    let (small, large) = (ids[0].clone(), ids[ids.len() - 1].clone());
    let r = http(server, reqwest::Method::PATCH, &who.token, "/v1/profile", Some(json!({ "photo": { "small": small, "large": large } }))).await;
    assert_eq!(r.status(), StatusCode::OK);
    (small, large)
}

async fn user_with_number(server: &TestServer) -> (DeviceCredentials, String) {
    let number = phone();
    (server.api().sign_up(&number, "phone").await.expect("sign up"), number)
}

/// Asks for the codes (to `number` and to the current number) and moves `who`'s account.
async fn change_number(server: &TestServer, who: &DeviceCredentials, number: &str) -> reqwest::Response {
    let r = http(server, reqwest::Method::POST, &who.token, "/v1/account/number", Some(json!({ "phone": number }))).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let issued: Value = r.json().await.expect("json");
    let (code, old_code) = (issued["dev_code"].as_str().expect("dev code"), issued["dev_old_code"].as_str().expect("old dev code"));
    http(server, reqwest::Method::POST, &who.token, "/v1/account/number/verify", Some(json!({ "phone": number, "code": code, "old_code": old_code })))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_number_keeps_the_account_and_tells_the_peers() {
    // No resend cooldown: the old number signs up again within the test.
    let server = TestServer::start_with(&["--code-cooldown-secs", "0"]);
    let (alice, old_number) = user_with_number(&server).await;
    let (bob, _) = user_with_number(&server).await;
    let (carol, _) = user_with_number(&server).await;
    // Bob has Alice's number in his contacts and a 1:1 with her.
    http(&server, reqwest::Method::POST, &bob.token, "/v1/contacts/discover", Some(json!({ "phones": [old_number] }))).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let direct = b.open_direct(alice.user_id).await.expect("open");
    send_all(&mut b, direct, 1..=2, "before").await;
    let group = b.create_group("team", &[alice.user_id]).await.expect("group");
    // Carol has a 1:1 with Alice but never had her number: she is not told the new one.
    let mut c = online(&server, Kind::Tcp, &carol).await;
    c.open_direct(alice.user_id).await.expect("open");

    let new_number = phone();
    let r = change_number(&server, &alice, &new_number).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["phone"], json!(new_number));
    let told = b
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::NumberChanged(n) if n.user_id == id_bytes(alice.user_id) => Some(n.phone.clone()),
            _ => None,
        })
        .await
        .expect("NumberChanged");
    assert_eq!(told, new_number);
    let carol_told =
        c.wait_for(std::time::Duration::from_millis(500), false, |k| matches!(k, server_frame::Kind::NumberChanged(_)).then_some(())).await;
    assert!(carol_told.is_err(), "a peer who never had the number learns nothing");
    // Same account: the token works, the history and the group are there.
    let history = server.api().history(&alice.token, direct, 0, 10).await.expect("history");
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(2));
    let mut a = online(&server, Kind::Ws, &alice).await;
    assert!(a.group_info(group).await.expect("group info").member_user_ids.contains(&id_bytes(alice.user_id)));
    // Bob's contacts now hold the new number (re-checking it is free), not the old one.
    let found: Value = http(&server, reqwest::Method::POST, &bob.token, "/v1/contacts/discover", Some(json!({ "phones": [new_number] })))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!((found["users"][0]["user_id"].clone(), found["new_numbers"].clone()), (json!(alice.user_id.to_string()), json!(0)));
    // The old number is free: it signs up as a new account.
    let newcomer = server.api().sign_up(&old_number, "phone").await.expect("sign up");
    assert_ne!(newcomer.user_id, alice.user_id);
    // A number in use is refused; only the primary may change it.
    let r = change_number(&server, &carol, &new_number).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.expect("json")["error"], json!("number_taken"));
    let laptop = server.api().link_device(&alice.token, "laptop").await.expect("link");
    let r = http(&server, reqwest::Method::POST, &laptop.token, "/v1/account/number", Some(json!({ "phone": phone() }))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Without the old number's code (a stolen token alone), nothing changes.
    let other = phone();
    let r = http(&server, reqwest::Method::POST, &alice.token, "/v1/account/number", Some(json!({ "phone": other }))).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let code = r.json::<Value>().await.expect("json")["dev_code"].as_str().expect("dev code").to_owned();
    let body = json!({ "phone": other, "code": code, "old_code": "000000x" });
    let r = http(&server, reqwest::Method::POST, &alice.token, "/v1/account/number/verify", Some(body)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let me: Value = http(&server, reqwest::Method::GET, &alice.token, "/v1/account/export", None).await.json().await.expect("json");
    assert_eq!(me["account"]["phone"], json!(new_number), "still the number she proved");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_leaves_its_groups_and_is_gone() {
    // No resend cooldown: the number signs up again within the test.
    let server = TestServer::start_with(&["--code-cooldown-secs", "0"]);
    let (alice, number) = user_with_number(&server).await;
    let (bob, bob_number) = user_with_number(&server).await;
    // Mutual contacts: Bob sees Alice's Status.
    http(&server, reqwest::Method::POST, &alice.token, "/v1/contacts/discover", Some(json!({ "phones": [bob_number] }))).await;
    http(&server, reqwest::Method::POST, &bob.token, "/v1/contacts/discover", Some(json!({ "phones": [number] }))).await;
    let r = http(&server, reqwest::Method::POST, &alice.token, "/v1/status", Some(json!({ "payload_hex": "c0ffee" }))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let feed = |server: &TestServer| {
        let (base, token) = (server.http, bob.token.clone());
        async move {
            let page: Value = reqwest::Client::new()
                .get(format!("http://{base}/v1/status"))
                .bearer_auth(token)
                .send()
                .await
                .expect("http")
                .json()
                .await
                .expect("json");
            page["statuses"].as_array().map(Vec::len).unwrap_or(0)
        }
    };
    assert_eq!(feed(&server).await, 1);
    let laptop = server.api().link_device(&alice.token, "laptop").await.expect("link");
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut l = online(&server, Kind::Ws, &laptop).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    // Alice is the only admin of a group with Bob, and has a 1:1 with him.
    let group = a.create_group("book club", &[bob.user_id]).await.expect("group");
    let direct = a.open_direct(bob.user_id).await.expect("open");
    send_all(&mut a, direct, 1..=3, "hi").await;
    let r = http(&server, reqwest::Method::PATCH, &alice.token, "/v1/profile", Some(json!({ "name": "Alice", "about": "reading" }))).await;
    assert_eq!(r.status(), StatusCode::OK);
    // A photo replaced is no longer served; the one in use until the deletion.
    let (old_small, _) = set_photo(&server, &alice).await;
    let (small, large) = set_photo(&server, &alice).await;
    assert_eq!(http(&server, reqwest::Method::GET, &bob.token, &format!("/v1/media/{old_small}"), None).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(http(&server, reqwest::Method::GET, &bob.token, &format!("/v1/media/{small}"), None).await.status(), StatusCode::OK);
    let r = http(&server, reqwest::Method::PUT, &alice.token, &format!("/v1/blocks/{}", common::user(&server.api()).await.user_id), None).await;
    assert!(r.status().is_success());

    // The number must be the account's; only the primary may delete.
    let r = http(&server, reqwest::Method::POST, &alice.token, "/v1/account/delete", Some(json!({ "phone": phone() }))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.expect("json")["error"], json!("wrong_number"));
    let r = http(&server, reqwest::Method::POST, &laptop.token, "/v1/account/delete", Some(json!({ "phone": number }))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let r = http(&server, reqwest::Method::POST, &alice.token, "/v1/account/delete", Some(json!({ "phone": number }))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let done: Value = r.json().await.expect("json");
    assert_eq!((done["groups_left"].clone(), done["devices_revoked"].clone()), (json!(1), json!(2)));
    // Every device is disconnected, and its token refused.
    for conn in [&mut a, &mut l] {
        assert_eq!(next_closing(conn).await.code(), ErrorCode::DeviceRevoked);
    }
    for token in [&alice.token, &laptop.token] {
        let r = http(&server, reqwest::Method::GET, token, "/v1/devices", None).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Bob: the group goes on without her, with him as its admin; her profile is gone; her
    // keys too; the messages she sent stay in his history.
    let info = b.group_info(group).await.expect("group info");
    assert_eq!(info.member_user_ids, vec![id_bytes(bob.user_id)]);
    assert_eq!(info.admin_user_ids, vec![id_bytes(bob.user_id)]);
    let profile: Value =
        http(&server, reqwest::Method::GET, &bob.token, &format!("/v1/profiles/{}", alice.user_id), None).await.json().await.expect("json");
    assert_eq!(profile["name"], json!(""));
    let keys = b.query_devices(&[alice.user_id]).await;
    assert!(keys.map(|k| k.users.iter().all(|u| u.devices.is_empty())).unwrap_or(true), "no device keys left");
    assert_eq!(b.history(direct, 0, 10).await.expect("history").messages.len(), 3);
    assert_eq!(feed(&server).await, 0, "her Status went with the account");
    for id in [&small, &large] {
        let r = http(&server, reqwest::Method::GET, &bob.token, &format!("/v1/media/{id}"), None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "her photo went with the account");
    }
    // Nobody can open a 1:1 with the deleted account or add it to a group.
    let dave = common::user(&server.api()).await;
    let mut d = online(&server, Kind::Tcp, &dave).await;
    assert_eq!(common::rejected(d.open_direct(alice.user_id).await), ErrorCode::UnknownUser);
    assert_eq!(common::rejected(d.create_group("late", &[alice.user_id]).await), ErrorCode::UnknownUser);
    // The number is free for a new account.
    let again = server.api().sign_up(&number, "phone").await.expect("sign up");
    assert_ne!(again.user_id, alice.user_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_the_account_and_its_own_messages_only() {
    let server = TestServer::start();
    let (alice, number) = user_with_number(&server).await;
    let (bob, _) = user_with_number(&server).await;
    let mut a = online(&server, Kind::Tcp, &alice).await;
    let mut b = online(&server, Kind::Tcp, &bob).await;
    let direct = a.open_direct(bob.user_id).await.expect("open");
    send_all(&mut a, direct, 1..=2, "mine").await;
    send_all(&mut b, direct, 3..=3, "his").await;
    let group = b.create_group("g", &[alice.user_id]).await.expect("group");
    send_all(&mut a, group, 2..=2, "in group").await;

    let r = http(&server, reqwest::Method::GET, &alice.token, "/v1/account/export", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let archive: Value = r.json().await.expect("json");
    assert_eq!(archive["format"], json!("switchboard-export-1"));
    assert_eq!(archive["account"]["phone"], json!(number));
    assert_eq!(archive["devices"].as_array().map(Vec::len), Some(1));
    assert_eq!(archive["conversations"].as_array().map(Vec::len), Some(2));
    let messages = archive["messages"].as_array().expect("messages");
    let mut seqs: Vec<(String, u64)> =
        messages.iter().map(|m| (m["conversation_id"].as_str().unwrap_or("").to_owned(), m["seq"].as_u64().unwrap_or(0))).collect();
    seqs.sort();
    let mut expected = vec![(direct.to_string(), 1), (direct.to_string(), 2), (group.to_string(), 2)];
    expected.sort();
    assert_eq!(seqs, expected, "her own messages, not Bob's, not the group's events");
    let first = messages.iter().find(|m| m["seq"] == json!(1) && m["conversation_id"] == json!(direct.to_string())).expect("seq 1");
    assert_eq!(first["payload_hex"], json!(hex::encode("payload 1")));
    assert_eq!(archive["messages_truncated"], json!(false));
    // Five a day.
    for _ in 0..4 {
        assert_eq!(http(&server, reqwest::Method::GET, &alice.token, "/v1/account/export", None).await.status(), StatusCode::OK);
    }
    let r = http(&server, reqwest::Method::GET, &alice.token, "/v1/account/export", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
}
