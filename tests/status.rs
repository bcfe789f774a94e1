//! Status (issue 15 item 10) through real HTTP against a real server: posts reach the
//! poster's mutual contacts within each post's audience (every contact, an allow list, a
//! deny list) and nobody else (a one-way contact, a stranger, either side of a block: a
//! post not meant for them is indistinguishable from none); viewers are recorded once and
//! listed to the poster only (within read receipts); a deleted post is gone; every limit
//! is refused with its own code; and a post is gone 24 hours after it was posted, tested
//! by restarting the server with its status clock a day ahead (no sleeping). On the
//! embedded store, and on PostgreSQL with `SWITCHBOARD_TEST_STORE=postgres`.

mod common;

use common::{TestServer, phone};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use switchboard::accounts::DeviceCredentials;

/// A user and the number they registered with.
struct Person {
    creds: DeviceCredentials,
    number: String,
}

async fn person(server: &TestServer) -> Person {
    let number = phone();
    Person { creds: server.api().sign_up(&number, "phone").await.expect("sign up"), number }
}

async fn http(server: &TestServer, method: Method, who: &Person, path: &str, body: Option<Value>) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("http://{}{path}", server.http)).bearer_auth(&who.creds.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.expect("http")
}

/// `who` submits `numbers` to contact discovery (their address book).
async fn add_contacts(server: &TestServer, who: &Person, others: &[&Person]) {
    let phones: Vec<&str> = others.iter().map(|o| o.number.as_str()).collect();
    let r = http(server, Method::POST, who, "/v1/contacts/discover", Some(json!({ "phones": phones }))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// `a` and `b` have each other's numbers.
async fn mutual(server: &TestServer, a: &Person, b: &Person) {
    add_contacts(server, a, &[b]).await;
    add_contacts(server, b, &[a]).await;
}

/// Posts and expects it stored now: the answer.
async fn post(server: &TestServer, who: &Person, body: Value) -> Value {
    let r = http(server, Method::POST, who, "/v1/status", Some(body)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers().get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    r.json().await.expect("json")
}

/// The post ids of `who`'s feed (one page, the default size).
async fn feed(server: &TestServer, who: &Person) -> Vec<String> {
    let r = http(server, Method::GET, who, "/v1/status", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.expect("json");
    page["statuses"].as_array().expect("statuses").iter().map(|s| s["post_id"].as_str().expect("id").to_owned()).collect()
}

async fn mine(server: &TestServer, who: &Person) -> Value {
    let r = http(server, Method::GET, who, "/v1/status/mine", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.expect("json")
}

/// Marks `poster`'s post seen by `who`: the answer's status and error code, if any.
async fn seen(server: &TestServer, who: &Person, poster: &Person, post_id: &str) -> (StatusCode, Option<String>) {
    let r = http(server, Method::POST, who, &format!("/v1/status/{}/{post_id}/seen", poster.creds.user_id), None).await;
    let status = r.status();
    let code =
        if status == StatusCode::NO_CONTENT { None } else { r.json::<Value>().await.ok().and_then(|b| b["error"].as_str().map(str::to_owned)) };
    (status, code)
}

fn id(answer: &Value) -> String {
    answer["post_id"].as_str().expect("post_id").to_owned()
}

/// The answer to marking seen a post that is not there for the caller.
fn unknown() -> (StatusCode, Option<String>) {
    (StatusCode::NOT_FOUND, Some("unknown_status".to_owned()))
}

/// The ids of `posts` (answers to posting) in feed order: newest first, ties by poster
/// (one here) then post id (a UUID's text sorts as its number).
fn newest_first(posts: &[&Value]) -> Vec<String> {
    let mut posts: Vec<&Value> = posts.to_vec();
    posts.sort_by_key(|p| (std::cmp::Reverse(p["posted_ms"].as_u64()), id(p)));
    posts.iter().map(|p| id(p)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audiences_decide_who_sees_a_post_and_nobody_else_learns_of_it() {
    let server = TestServer::start();
    let (alice, bob, carol, dave) = (person(&server).await, person(&server).await, person(&server).await, person(&server).await);
    let (one_way, stranger) = (person(&server).await, person(&server).await);
    for other in [&bob, &carol, &dave] {
        mutual(&server, &alice, other).await;
    }
    // Alice has one_way's number, not the other way round; the stranger has Alice's.
    add_contacts(&server, &alice, &[&one_way]).await;
    add_contacts(&server, &stranger, &[&alice]).await;

    let v1 = post(&server, &alice, json!({ "payload_hex": "c1" })).await;
    let p1 = &v1;
    assert_eq!(p1["audience"], json!({ "kind": "contacts" }), "every contact by default");
    assert_eq!(p1["expires_ms"].as_u64(), p1["posted_ms"].as_u64().map(|t| t + 86_400_000), "24 hours");
    let allow = json!({ "kind": "allow", "users": [bob.creds.user_id, one_way.creds.user_id, alice.creds.user_id] });
    let v2 = post(&server, &alice, json!({ "payload_hex": "c2", "audience": allow })).await;
    let p2 = &v2;
    let mut listed = vec![bob.creds.user_id.to_string(), one_way.creds.user_id.to_string()];
    listed.sort();
    assert_eq!(p2["audience"], json!({ "kind": "allow", "users": listed }), "sorted, the poster dropped");
    let v3 = post(&server, &alice, json!({ "payload_hex": "c3", "audience": { "kind": "deny", "users": [carol.creds.user_id] } })).await;
    let (p1, p2, p3) = (id(&v1), id(&v2), id(&v3));

    let all = newest_first(&[&v1, &v2, &v3]);
    assert_eq!(feed(&server, &bob).await, all, "allowed, not denied: all three, newest first");
    assert_eq!(feed(&server, &carol).await, vec![p1.clone()], "not allowed on p2, denied p3");
    assert_eq!(feed(&server, &dave).await, newest_first(&[&v1, &v3]));
    assert!(feed(&server, &one_way).await.is_empty(), "allowed, but without Alice's number: contacts are mutual");
    assert!(feed(&server, &stranger).await.is_empty(), "not in Alice's contacts");
    assert!(feed(&server, &alice).await.is_empty(), "one's own are under /mine");
    // What the feed carries.
    let page: Value = http(&server, Method::GET, &bob, "/v1/status?limit=2", None).await.json().await.expect("json");
    let first = &page["statuses"][0];
    let newest = [&v1, &v2, &v3].into_iter().find(|v| id(v) == all[0]).expect("the newest");
    assert_eq!(first["user_id"], json!(alice.creds.user_id));
    assert_eq!(
        (&first["payload_hex"], &first["posted_ms"], &first["expires_ms"]),
        (&newest["payload_hex"], &newest["posted_ms"], &newest["expires_ms"])
    );
    let next = page["next"].as_str().expect("a second page").to_owned();
    let rest: Value = http(&server, Method::GET, &bob, &format!("/v1/status?limit=2&after={next}"), None).await.json().await.expect("json");
    assert_eq!(rest["statuses"].as_array().map(|s| s.iter().map(|s| s["post_id"].clone()).collect::<Vec<_>>()), Some(vec![json!(all[2])]));
    assert!(rest.get("next").is_none(), "the last page");
    let bad = http(&server, Method::GET, &bob, "/v1/status?after=yesterday", None).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // Marking seen what one may not see is answered as if it did not exist.
    for (who, post_id) in [(&carol, &p2), (&carol, &p3), (&one_way, &p2), (&stranger, &p1)] {
        assert_eq!(seen(&server, who, &alice, post_id).await, unknown());
    }
    assert_eq!(seen(&server, &bob, &alice, &uuid::Uuid::new_v4().to_string()).await, unknown(), "the same answer as no post at all");
    assert_eq!(seen(&server, &bob, &carol, &p1).await, unknown(), "keyed by its poster");
    assert_eq!(seen(&server, &bob, &alice, &p2).await, (StatusCode::NO_CONTENT, None));

    // A block, either way, hides everything; lifted, the posts are back.
    assert_eq!(http(&server, Method::PUT, &dave, &format!("/v1/blocks/{}", alice.creds.user_id), None).await.status(), StatusCode::NO_CONTENT);
    assert!(feed(&server, &dave).await.is_empty(), "dave blocked Alice");
    assert_eq!(seen(&server, &dave, &alice, &p1).await, unknown());
    assert_eq!(http(&server, Method::PUT, &alice, &format!("/v1/blocks/{}", bob.creds.user_id), None).await.status(), StatusCode::NO_CONTENT);
    assert!(feed(&server, &bob).await.is_empty(), "Alice blocked bob");
    assert_eq!(seen(&server, &bob, &alice, &p1).await, unknown());
    http(&server, Method::DELETE, &dave, &format!("/v1/blocks/{}", alice.creds.user_id), None).await;
    http(&server, Method::DELETE, &alice, &format!("/v1/blocks/{}", bob.creds.user_id), None).await;
    assert_eq!(feed(&server, &dave).await, newest_first(&[&v1, &v3]));
    assert_eq!(feed(&server, &bob).await, all);

    // Who sees is decided when read: a contact removed sees nothing from then on.
    let r = http(&server, Method::POST, &alice, "/v1/contacts/remove", Some(json!({ "phones": [carol.number] }))).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(feed(&server, &carol).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_are_recorded_once_listed_to_the_poster_only_and_go_with_a_deleted_post() {
    let server = TestServer::start();
    let (alice, bob, carol, dave) = (person(&server).await, person(&server).await, person(&server).await, person(&server).await);
    for other in [&bob, &carol, &dave] {
        mutual(&server, &alice, other).await;
    }
    let vp = post(&server, &alice, json!({ "payload_hex": "aa" })).await;
    let vo = post(&server, &alice, json!({ "payload_hex": "bb" })).await;
    let (p, other) = (id(&vp), id(&vo));
    let order = newest_first(&[&vp, &vo]);
    // Alice's list, and the entry of one post in it.
    let entry = |mine: &Value, post_id: &str| {
        mine["statuses"].as_array().expect("statuses").iter().find(|s| s["post_id"] == json!(post_id)).cloned().expect("listed")
    };
    assert_eq!(seen(&server, &bob, &alice, &p).await, (StatusCode::NO_CONTENT, None));
    let first_seen = |mine: &Value, who: &Person| {
        entry(mine, &p)["viewers"]
            .as_array()
            .expect("viewers")
            .iter()
            .find(|v| v["user_id"] == json!(who.creds.user_id))
            .map(|v| v["seen_ms"].clone())
    };
    let bob_seen = first_seen(&mine(&server, &alice).await, &bob).expect("bob is listed");
    assert_eq!(seen(&server, &carol, &alice, &p).await, (StatusCode::NO_CONTENT, None));
    assert_eq!(seen(&server, &bob, &alice, &p).await, (StatusCode::NO_CONTENT, None), "seen again");
    assert_eq!(seen(&server, &alice, &alice, &p).await, (StatusCode::NO_CONTENT, None), "the poster's own view");
    // Dave does not send read receipts: his view is not recorded (WhatsApp's rule).
    let r = http(&server, Method::PATCH, &dave, "/v1/privacy", Some(json!({ "read_receipts": false }))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(seen(&server, &dave, &alice, &p).await, (StatusCode::NO_CONTENT, None));

    let listed = mine(&server, &alice).await;
    assert_eq!(listed["viewers_hidden"], json!(false));
    let statuses = listed["statuses"].as_array().expect("statuses");
    assert_eq!(statuses.iter().map(|s| s["post_id"].as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>(), order, "newest first");
    let unseen = entry(&listed, &other);
    assert_eq!((unseen["view_count"].as_u64(), unseen["viewers"].as_array().map(Vec::len)), (Some(0), Some(0)));
    let seen_one = entry(&listed, &p);
    let viewers = seen_one["viewers"].as_array().expect("viewers");
    assert_eq!(seen_one["view_count"], json!(2), "bob and carol, once each; not Alice, not dave");
    let who: Vec<String> = viewers.iter().map(|v| v["user_id"].as_str().unwrap_or_default().to_owned()).collect();
    let (b, c) = (bob.creds.user_id.to_string(), carol.creds.user_id.to_string());
    // Carol saw it after bob; within the same millisecond, ties go by user id.
    let expected = if viewers[0]["seen_ms"] == viewers[1]["seen_ms"] && b < c { vec![b, c] } else { vec![c, b] };
    assert_eq!(who, expected, "the most recent first");
    assert!(viewers[0]["seen_ms"].as_u64() >= viewers[1]["seen_ms"].as_u64());
    assert_eq!(first_seen(&listed, &bob), Some(bob_seen), "the first time is kept");
    // Only the poster sees viewers: bob's own list has nothing of Alice's.
    assert_eq!(mine(&server, &bob).await, json!({ "statuses": [], "viewers_hidden": false }));
    // A poster without read receipts does not see who viewed (and sees it again once on).
    http(&server, Method::PATCH, &alice, "/v1/privacy", Some(json!({ "read_receipts": false }))).await;
    let hidden = mine(&server, &alice).await;
    assert_eq!((hidden["viewers_hidden"].clone(), entry(&hidden, &p)["view_count"].clone()), (json!(true), json!(0)));
    assert_eq!(entry(&hidden, &p)["viewers"], json!([]));
    http(&server, Method::PATCH, &alice, "/v1/privacy", Some(json!({ "read_receipts": true }))).await;
    assert_eq!(entry(&mine(&server, &alice).await, &p)["view_count"], json!(2));

    // Deleting: only one's own, and then it is gone for everyone.
    let r = http(&server, Method::DELETE, &bob, &format!("/v1/status/mine/{p}"), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "bob has no such post: Alice's stays");
    assert_eq!(feed(&server, &carol).await, order);
    assert_eq!(http(&server, Method::DELETE, &alice, &format!("/v1/status/mine/{p}"), None).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(feed(&server, &carol).await, vec![other.clone()]);
    assert_eq!(seen(&server, &bob, &alice, &p).await, unknown());
    let left = mine(&server, &alice).await;
    assert_eq!(left["statuses"].as_array().map(Vec::len), Some(1));
    let again = http(&server, Method::DELETE, &alice, &format!("/v1/status/mine/{p}"), None).await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert_eq!(again.json::<Value>().await.expect("json")["error"], "unknown_status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_refused_each_with_its_own_code() {
    let server = TestServer::start();
    let alice = person(&server).await;
    let refusal = |body: Value| {
        let server = &server;
        let alice = &alice;
        async move {
            let r = http(server, Method::POST, alice, "/v1/status", Some(body)).await;
            let status = r.status();
            (status, r.json::<Value>().await.expect("json")["error"].as_str().unwrap_or_default().to_owned())
        }
    };
    let over = "ab".repeat(16 * 1024 + 1);
    assert_eq!(refusal(json!({ "payload_hex": over })).await, (StatusCode::PAYLOAD_TOO_LARGE, "status_too_large".into()));
    for bad in [json!({ "payload_hex": "" }), json!({ "payload_hex": "0g" }), json!({ "payload_hex": "abc" }), json!({})] {
        assert_eq!(refusal(bad.clone()).await, (StatusCode::BAD_REQUEST, "bad_request".into()), "{bad}");
    }
    let many: Vec<String> = (0..513).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    assert_eq!(
        refusal(json!({ "payload_hex": "00", "audience": { "kind": "deny", "users": many } })).await,
        (StatusCode::BAD_REQUEST, "too_many_users".into())
    );
    for audience in [
        json!({ "kind": "allow", "users": [alice.creds.user_id] }),
        json!({ "kind": "allow", "users": [] }),
        json!({ "kind": "friends" }),
        json!({ "kind": "contacts", "users": [] }),
        json!("contacts"),
    ] {
        assert_eq!(
            refusal(json!({ "payload_hex": "00", "audience": audience })).await,
            (StatusCode::BAD_REQUEST, "bad_request".into()),
            "{audience}"
        );
    }
    assert_eq!(refusal(json!({ "payload_hex": "00", "colour": "red" })).await, (StatusCode::BAD_REQUEST, "bad_request".into()), "an unknown field");

    // 30 posts a day (none of the refusals above counted); the 31st waits.
    let post_id = uuid::Uuid::new_v4();
    let largest = post(&server, &alice, json!({ "payload_hex": "ab".repeat(16 * 1024), "post_id": post_id })).await;
    assert_eq!(largest["post_id"], json!(post_id), "the device's id");
    for i in 1..30 {
        post(&server, &alice, json!({ "payload_hex": format!("{i:02x}") })).await;
    }
    let r = http(&server, Method::POST, &alice, "/v1/status", Some(json!({ "payload_hex": "ff" }))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((1..=2_880).contains(&wait), "one more post fits within 48 minutes: {wait} s");
    assert_eq!(r.json::<Value>().await.expect("json")["error"], "rate_limited");
    // A retry of a stored post is answered with it, budget or not.
    let retry = http(&server, Method::POST, &alice, "/v1/status", Some(json!({ "payload_hex": "ab".repeat(16 * 1024), "post_id": post_id }))).await;
    assert_eq!(retry.status(), StatusCode::OK);
    let retried: Value = retry.json().await.expect("json");
    assert_eq!((retried["post_id"].clone(), retried["posted_ms"].clone()), (largest["post_id"].clone(), largest["posted_ms"].clone()), "stored once");
    // The same id for other content: refused, the post unchanged.
    let clash = http(&server, Method::POST, &alice, "/v1/status", Some(json!({ "payload_hex": "00", "post_id": post_id }))).await;
    assert_eq!(clash.status(), StatusCode::CONFLICT);
    assert_eq!(clash.json::<Value>().await.expect("json")["error"], "status_exists");
    assert_eq!(mine(&server, &alice).await["statuses"].as_array().map(Vec::len), Some(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_is_gone_24_hours_after_it_was_posted() {
    let mut server = TestServer::start();
    let (alice, bob) = (person(&server).await, person(&server).await);
    mutual(&server, &alice, &bob).await;
    let p = id(&post(&server, &alice, json!({ "payload_hex": "5e" })).await);
    assert_eq!(feed(&server, &bob).await, vec![p.clone()]);

    // Five minutes before the day is over (the status clock a day ahead, less five
    // minutes, which a restart takes far less than): still there.
    assert!(server.terminate().success());
    server.restart_with(&["--dev-status-clock-offset-ms", "86100000"]);
    assert_eq!(feed(&server, &bob).await, vec![p.clone()], "still live");
    assert_eq!(seen(&server, &bob, &alice, &p).await, (StatusCode::NO_CONTENT, None));
    assert_eq!(mine(&server, &alice).await["statuses"][0]["view_count"], json!(1));

    // A day later: gone from every read, and no longer to be seen or deleted.
    assert!(server.terminate().success());
    server.restart_with(&["--dev-status-clock-offset-ms", "86400000"]);
    assert!(feed(&server, &bob).await.is_empty(), "gone after 24 hours");
    assert_eq!(mine(&server, &alice).await, json!({ "statuses": [], "viewers_hidden": false }));
    assert_eq!(seen(&server, &bob, &alice, &p).await, unknown());
    assert_eq!(http(&server, Method::DELETE, &alice, &format!("/v1/status/mine/{p}"), None).await.status(), StatusCode::NOT_FOUND);
    // The clock is one for everything: a post made now lives a day from now.
    let fresh = id(&post(&server, &alice, json!({ "payload_hex": "5f" })).await);
    assert_eq!(feed(&server, &bob).await, [fresh]);
}
