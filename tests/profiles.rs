//! Profiles through real HTTP and sockets (issue 15 item 6): name, about and a photo made
//! of the server's metadata-free renditions; what others see under the owner's privacy
//! settings (photo and about: everyone, contacts, nobody; nothing but the name across a
//! block); and `ProfileChanged` reaching contacts and conversation members live.

mod common;

use std::time::Duration;

use common::{Kind, TestServer, WAIT, online, phone};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::accounts::DeviceCredentials;
use switchboard::client::Connection;
use switchboard::protocol::{id_bytes, server_frame};

async fn http(server: &TestServer, method: reqwest::Method, token: &str, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("http://{}{path}", server.http)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("http")
}

async fn patch_profile(server: &TestServer, who: &DeviceCredentials, body: Value) -> reqwest::Response {
    http(server, reqwest::Method::PATCH, &who.token, "/v1/profile", Some(body)).await
}

async fn profile_of(server: &TestServer, viewer: &DeviceCredentials, owner: &DeviceCredentials) -> Value {
    let response = http(server, reqwest::Method::GET, &viewer.token, &format!("/v1/profiles/{}", owner.user_id), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

/// A photo uploaded as a public image: its two renditions.
async fn upload_photo(server: &TestServer, who: &DeviceCredentials) -> Value {
    let img = image::RgbImage::from_fn(300, 200, |x, y| image::Rgb([x as u8, y as u8, 90]));
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
    let renditions: Value = r.json().await.expect("json");
    let ids: Vec<Value> = renditions["renditions"].as_array().expect("renditions").iter().map(|r| r["media_id"].clone()).collect();
    json!({ "small": ids[0], "large": ids[ids.len() - 1] })
}

async fn user_with_number(server: &TestServer) -> (DeviceCredentials, String) {
    let number = phone();
    (server.api().sign_up(&number, "phone").await.expect("sign up"), number)
}

fn changed(user: switchboard::ids::UserId) -> impl FnMut(&server_frame::Kind) -> Option<()> {
    move |k| match k {
        server_frame::Kind::ProfileChanged(p) if p.user_id == id_bytes(user) => Some(()),
        _ => None,
    }
}

async fn told(conn: &mut Connection, user: switchboard::ids::UserId, wait: Duration) -> bool {
    conn.wait_for(wait, false, changed(user)).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_is_seen_as_the_owner_allows_and_changes_are_told_live() {
    let server = TestServer::start();
    let (alice, _) = user_with_number(&server).await;
    let (bob, bob_number) = user_with_number(&server).await;
    let (carol, _) = user_with_number(&server).await;
    let (stranger, _) = user_with_number(&server).await;
    // Bob is Alice's contact and has a 1:1 with her; Carol shares a group; the stranger nothing.
    http(&server, reqwest::Method::POST, &alice.token, "/v1/contacts/discover", Some(json!({ "phones": [bob_number] }))).await;
    let mut a = online(&server, Kind::Tcp, &alice).await;
    a.open_direct(bob.user_id).await.expect("open");
    a.create_group("club", &[carol.user_id]).await.expect("group");
    let mut b = online(&server, Kind::Ws, &bob).await;
    let mut c = online(&server, Kind::Tcp, &carol).await;
    let mut s = online(&server, Kind::Tcp, &stranger).await;

    // Never set: an empty name; unknown users are 404.
    assert_eq!(profile_of(&server, &bob, &alice).await["name"], "");
    let nobody = http(&server, reqwest::Method::GET, &bob.token, &format!("/v1/profiles/{}", switchboard::ids::UserId::random()), None).await;
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);

    let photo = upload_photo(&server, &alice).await;
    let set = patch_profile(&server, &alice, json!({ "name": "  Alice  ", "about": "At the gym", "photo": photo })).await;
    assert_eq!(set.status(), StatusCode::OK);
    let mine: Value = set.json().await.expect("json");
    assert_eq!((mine["name"].clone(), mine["about"].clone(), mine["photo"].clone()), (json!("Alice"), json!("At the gym"), photo.clone()));
    // Told live: her 1:1 peer and her group's member; not the stranger.
    assert!(told(&mut b, alice.user_id, WAIT).await);
    assert!(told(&mut c, alice.user_id, WAIT).await);
    assert!(!told(&mut s, alice.user_id, Duration::from_millis(500)).await);
    // Her own device is told too (another device may have changed it).
    assert!(told(&mut a, alice.user_id, WAIT).await);

    // Everyone sees it all by default; the photo's renditions download (metadata-free JPEGs).
    let seen = profile_of(&server, &stranger, &alice).await;
    assert_eq!((seen["name"].clone(), seen["about"].clone(), seen["photo"].clone()), (json!("Alice"), json!("At the gym"), photo.clone()));
    let small = http(&server, reqwest::Method::GET, &stranger.token, &format!("/v1/media/{}", photo["small"].as_str().expect("id")), None).await;
    assert_eq!(small.status(), StatusCode::OK);

    // Photo for contacts, about for nobody.
    let settings =
        http(&server, reqwest::Method::PATCH, &alice.token, "/v1/privacy", Some(json!({ "profile_photo": "contacts", "about": "nobody" }))).await;
    assert_eq!(settings.status(), StatusCode::OK);
    let to_bob = profile_of(&server, &bob, &alice).await;
    assert_eq!(to_bob["photo"], photo, "a contact sees the photo");
    assert!(to_bob.get("about").is_none(), "nobody sees the about line: {to_bob}");
    let to_stranger = profile_of(&server, &stranger, &alice).await;
    assert!(to_stranger.get("photo").is_none() && to_stranger.get("about").is_none(), "{to_stranger}");
    assert_eq!(to_stranger["name"], "Alice", "the name is shown (groups show it)");

    // Across a block: the name only, and no notice of changes.
    let blocked = http(&server, reqwest::Method::PUT, &alice.token, &format!("/v1/blocks/{}", bob.user_id), None).await;
    assert_eq!(blocked.status(), StatusCode::NO_CONTENT);
    let to_blocked = profile_of(&server, &bob, &alice).await;
    assert!(to_blocked.get("photo").is_none() && to_blocked.get("about").is_none(), "{to_blocked}");
    // (A new name reaches every member: Carol hears of it, the blocked Bob does not. An
    // about line hidden from them would reach neither: the next test.)
    assert_eq!(patch_profile(&server, &alice, json!({ "name": "Alice B", "about": "New" })).await.status(), StatusCode::OK);
    assert!(told(&mut c, alice.user_id, WAIT).await);
    assert!(!told(&mut b, alice.user_id, Duration::from_millis(500)).await, "a blocked user hears of no change");

    // Removing the photo.
    let removed: Value = patch_profile(&server, &alice, json!({ "photo": null })).await.json().await.expect("json");
    assert!(removed.get("photo").is_none(), "{removed}");
    assert_eq!(removed["about"], "New", "other fields stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_profiles_are_refused_clearly_and_change_nothing() {
    let server = TestServer::start();
    let (alice, _) = user_with_number(&server).await;
    let (bob, _) = user_with_number(&server).await;
    patch_profile(&server, &alice, json!({ "name": "Alice" })).await;
    let bobs_photo = upload_photo(&server, &bob).await;
    for bad in [
        json!({ "name": "" }),
        json!({ "name": "   " }),
        json!({ "name": "x".repeat(26) }),
        json!({ "about": "y".repeat(140) }),
        json!({ "photo": bobs_photo }),
        json!({ "photo": { "small": switchboard::ids::UserId::random().to_string(), "large": switchboard::ids::UserId::random().to_string() } }),
        json!({ "nickname": "A" }),
    ] {
        let response = patch_profile(&server, &alice, bad.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let mine: Value = http(&server, reqwest::Method::GET, &alice.token, "/v1/profile", None).await.json().await.expect("json");
    assert_eq!(mine["name"], "Alice");
    assert!(mine.get("photo").is_none());
}

/// From review: a change of a field hidden from someone is not announced to them (the
/// notice alone would tell them it changed); a new name reaches everyone; an unchanged
/// profile announces nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_announced_only_to_who_may_see_it() {
    let server = TestServer::start();
    let (alice, _) = user_with_number(&server).await;
    let (bob, bob_number) = user_with_number(&server).await;
    let (carol, _) = user_with_number(&server).await;
    http(&server, reqwest::Method::POST, &alice.token, "/v1/contacts/discover", Some(json!({ "phones": [bob_number] }))).await;
    http(&server, reqwest::Method::PATCH, &alice.token, "/v1/privacy", Some(json!({ "about": "contacts", "profile_photo": "nobody" }))).await;
    let mut a = online(&server, Kind::Tcp, &alice).await;
    a.open_direct(bob.user_id).await.expect("open");
    a.create_group("club", &[bob.user_id, carol.user_id]).await.expect("group");
    let mut b = online(&server, Kind::Ws, &bob).await;
    let mut c = online(&server, Kind::Tcp, &carol).await;

    assert_eq!(patch_profile(&server, &alice, json!({ "about": "Busy" })).await.status(), StatusCode::OK);
    assert!(told(&mut b, alice.user_id, WAIT).await, "her contact may see the about line");
    assert!(!told(&mut c, alice.user_id, Duration::from_millis(500)).await, "a group member outside the audience hears nothing");
    // A photo shown to nobody: only her own devices hear of it.
    let photo = upload_photo(&server, &alice).await;
    assert_eq!(patch_profile(&server, &alice, json!({ "photo": photo })).await.status(), StatusCode::OK);
    assert!(told(&mut a, alice.user_id, WAIT).await);
    assert!(!told(&mut b, alice.user_id, Duration::from_millis(500)).await);
    // A new name: everyone.
    assert_eq!(patch_profile(&server, &alice, json!({ "name": "Alice" })).await.status(), StatusCode::OK);
    assert!(told(&mut c, alice.user_id, WAIT).await);
    assert!(told(&mut b, alice.user_id, WAIT).await);
    // The same again: nothing changed, nobody is told.
    assert_eq!(patch_profile(&server, &alice, json!({ "name": "Alice" })).await.status(), StatusCode::OK);
    assert!(!told(&mut b, alice.user_id, Duration::from_millis(500)).await);
}
