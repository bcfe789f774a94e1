//! Contact discovery through real HTTP (issue 15 item 3): a device submits address-book
//! numbers in any spelling and learns which belong to users; numbers new to the account
//! spend a daily budget (all or nothing), numbers already in its contacts are re-checked
//! for free, removed numbers cost again, and every refusal is a clear error.

mod common;

use common::{TestServer, phone, user};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn post(server: &TestServer, token: &str, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("http://{}{path}", server.http)).bearer_auth(token).json(&body).send().await.expect("http")
}

async fn discover(server: &TestServer, token: &str, phones: &[String]) -> Value {
    let response = post(server, token, "/v1/contacts/discover", json!({ "phones": phones, "region": "US" })).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("json")
}

/// `+1415xxxxxxx` written the way a US address book shows it: `(415) xxx-xxxx`.
fn national(e164: &str) -> String {
    format!("({}) {}-{}", &e164[2..5], &e164[5..8], &e164[8..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_learns_which_numbers_are_users_within_its_budget() {
    let server = TestServer::start_with(&["--discovery-new-numbers-per-day", "6"]);
    let api = server.api();
    let me = user(&api).await;
    let (bob_number, carol_number, stranger) = (phone(), phone(), phone());
    let bob = api.sign_up(&bob_number, "phone").await.expect("bob");
    let carol = api.sign_up(&carol_number, "phone").await.expect("carol");

    // One batch: bob written nationally, carol in E.164, a number nobody has, garbage.
    let submitted = vec![national(&bob_number), carol_number.clone(), stranger.clone(), "call me".to_owned()];
    let found = discover(&server, &me.token, &submitted).await;
    let users = found["users"].as_array().expect("users");
    assert_eq!(users.len(), 2, "{found}");
    assert_eq!(users[0], json!({ "phone": national(&bob_number), "e164": bob_number, "user_id": bob.user_id.to_string() }));
    assert_eq!(users[1], json!({ "phone": carol_number, "e164": carol_number, "user_id": carol.user_id.to_string() }));
    assert_eq!(found["invalid"], json!(["call me"]));
    assert_eq!(found["new_numbers"], 3, "three valid numbers, all new");

    // Re-checks of known numbers are free, however they are written, from any device of
    // the account; repeats within a batch count once.
    let tablet = api.link_device(&me.token, "tablet").await.expect("link");
    let again = discover(&server, &tablet.token, &[bob_number.clone(), carol_number.clone(), stranger.clone(), stranger.clone()]).await;
    assert_eq!(again["new_numbers"], 0);
    assert_eq!(again["users"].as_array().expect("users").len(), 2);

    // 3 of 6 spent: a batch of 4 new numbers is refused whole (429, Retry-After), and
    // nothing of it is remembered: a batch of 3 still fits afterwards.
    let four: Vec<String> = (0..4).map(|_| phone()).collect();
    let refused = post(&server, &me.token, "/v1/contacts/discover", json!({ "phones": four })).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!(retry >= 1);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert_eq!(discover(&server, &me.token, &four[..3]).await["new_numbers"], 3);
    // The budget is spent: new numbers are refused, known ones still answer.
    let refused = post(&server, &me.token, "/v1/contacts/discover", json!({ "phones": [four[3].clone()] })).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "the budget is the account's, not the device's");
    assert_eq!(discover(&server, &tablet.token, std::slice::from_ref(&bob_number)).await["users"][0]["user_id"], bob.user_id.to_string());

    // Another account has its own budget and its own contacts.
    let other = user(&api).await;
    assert_eq!(discover(&server, &other.token, std::slice::from_ref(&bob_number)).await["new_numbers"], 1);

    // A removed number leaves the contacts: checking it again costs again (refused here,
    // the budget being spent); removing unknown or invalid numbers is harmless.
    let removed = post(&server, &me.token, "/v1/contacts/remove", json!({ "phones": [bob_number.clone(), "nonsense", phone()] })).await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let refused = post(&server, &me.token, "/v1/contacts/discover", json!({ "phones": [bob_number.clone()] })).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(discover(&server, &me.token, std::slice::from_ref(&carol_number)).await["new_numbers"], 0, "the rest stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_get_clear_errors() {
    let server = TestServer::start();
    let me = user(&server.api()).await;
    let too_many: Vec<String> = (0..1_001).map(|n| format!("+1415{}", 4_000_000 + n)).collect();
    for path in ["/v1/contacts/discover", "/v1/contacts/remove"] {
        let response = post(&server, &me.token, path, json!({ "phones": too_many })).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "too_many_numbers", "{path}: {body}");
        let response = post(&server, &me.token, path, json!({ "numbers": [] })).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}: no phones field");
    }
    // 1000 numbers are one request's worth (the default budget is 2000 a day).
    let found = discover(&server, &me.token, &too_many[..1_000]).await;
    assert_eq!(found["new_numbers"], 1_000);
    assert_eq!(found["users"], json!([]));
}
