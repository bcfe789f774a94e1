//! Sign-up abuse limits, through real HTTP: a number's resend cooldown and daily cap, its
//! verification attempts counted across every code issued to it (a new code buys no new
//! guesses), and per-address caps on registrations and verifications. Each refusal is a
//! 429 with `Retry-After` that says nothing about whether the number is registered.

mod common;

use common::{TestServer, phone};
use reqwest::StatusCode;

async fn post(server: &TestServer, path: &str, body: serde_json::Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("http://{}{path}", server.http)).json(&body).send().await.expect("http")
}

async fn register(server: &TestServer, phone: &str) -> reqwest::Response {
    post(server, "/v1/accounts/register", serde_json::json!({ "phone": phone })).await
}

async fn verify(server: &TestServer, phone: &str, code: &str) -> reqwest::Response {
    post(server, "/v1/accounts/verify", serde_json::json!({ "phone": phone, "code": code })).await
}

/// A 429 `rate_limited` with a `Retry-After` of at least one second; its body.
async fn refused(response: reqwest::Response, what: &str) -> serde_json::Value {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
    let retry: u64 = response.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!(retry >= 1, "{what}: Retry-After {retry}");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"], "rate_limited", "{what}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_gets_a_code_per_cooldown_and_a_few_a_day() {
    let server = TestServer::start_with(&["--code-cooldown-secs", "2", "--codes-per-number-per-day", "3"]);
    let number = phone();
    assert_eq!(register(&server, &number).await.status(), StatusCode::ACCEPTED);
    refused(register(&server, &number).await, "a resend within the cooldown").await;
    assert_eq!(register(&server, &phone()).await.status(), StatusCode::ACCEPTED, "another number is not affected");
    for n in 2..=3 {
        tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
        assert_eq!(register(&server, &number).await.status(), StatusCode::ACCEPTED, "code {n} after the cooldown");
    }
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    refused(register(&server, &number).await, "a fourth code in a day").await;
}

/// A refusal says nothing about whether the number has an account: a registered number
/// and a new one in their cooldown get the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_does_not_tell_whether_a_number_is_registered() {
    let server = TestServer::start_with(&["--code-cooldown-secs", "60"]);
    let (known, unknown) = (phone(), phone());
    let issued: serde_json::Value = register(&server, &known).await.json().await.expect("json");
    assert_eq!(verify(&server, &known, issued["dev_code"].as_str().expect("code")).await.status(), StatusCode::OK);
    assert_eq!(register(&server, &unknown).await.status(), StatusCode::ACCEPTED);
    let (a, b) = (register(&server, &known).await, register(&server, &unknown).await);
    let (retry_a, retry_b) = (a.headers()["retry-after"].to_str().expect("a").to_owned(), b.headers()["retry-after"].to_str().expect("b").to_owned());
    let (a, b) = (refused(a, "the registered number").await, refused(b, "the new number").await);
    assert_eq!(a, b, "the same body");
    assert_eq!(retry_a, retry_b, "the same wait");
}

/// An attacker guessing from another address cannot lock the owner out: attempts are
/// counted per number and address, with a ceiling per number from all addresses together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_from_elsewhere_do_not_lock_the_owner_out() {
    let server = TestServer::start_with(&["--code-cooldown-secs", "0", "--guesses-per-number-per-hour", "3"]);
    let number = phone();
    let code = register(&server, &number).await.json::<serde_json::Value>().await.expect("json")["dev_code"].as_str().expect("code").to_owned();
    let wrong = if code == "000000" { "000001" } else { "000000" };
    // The attacker (127.0.0.2) spends its three attempts, then is refused.
    let attacker = reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip")).build().expect("client");
    let attempt = |client: reqwest::Client, code: String| {
        let url = format!("http://{}/v1/accounts/verify", server.http);
        let number = number.clone();
        async move { client.post(url).json(&serde_json::json!({ "phone": number, "code": code })).send().await.expect("http") }
    };
    for _ in 0..3 {
        assert_eq!(attempt(attacker.clone(), wrong.into()).await.status(), StatusCode::UNAUTHORIZED);
    }
    refused(attempt(attacker.clone(), wrong.into()).await, "a fourth attempt from the attacker's address").await;
    // The owner, from their own address, still verifies (a code itself dies after five
    // wrong guesses; this one has had three).
    assert_eq!(attempt(reqwest::Client::new(), code).await.status(), StatusCode::OK, "the owner is not locked out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_codes_buy_no_new_guesses() {
    let server = TestServer::start_with(&["--code-cooldown-secs", "0", "--guesses-per-number-per-hour", "5"]);
    let number = phone();
    // Five wrong guesses spread over three codes (each code allows five by itself).
    let mut last_code = String::new();
    for round in 0..3 {
        let issued: serde_json::Value = register(&server, &number).await.json().await.expect("json");
        last_code = issued["dev_code"].as_str().expect("dev code").to_owned();
        for _ in 0..(if round < 2 { 2 } else { 1 }) {
            let wrong = if last_code == "000000" { "000001" } else { "000000" };
            assert_eq!(verify(&server, &number, wrong).await.status(), StatusCode::UNAUTHORIZED);
        }
    }
    // The sixth attempt is refused before the code is looked at, even the right one.
    refused(verify(&server, &number, &last_code).await, "a sixth attempt in the hour").await;
    // Another number is not affected.
    let other = phone();
    let issued: serde_json::Value = register(&server, &other).await.json().await.expect("json");
    assert_eq!(verify(&server, &other, issued["dev_code"].as_str().expect("code")).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_may_register_and_verify_only_so_often() {
    let server = TestServer::start_with(&["--registrations-per-address-per-hour", "3", "--verifications-per-address-per-hour", "4"]);
    // A registered number and a new one get the same answer at the limit.
    let known = phone();
    let issued: serde_json::Value = register(&server, &known).await.json().await.expect("json");
    assert_eq!(verify(&server, &known, issued["dev_code"].as_str().expect("code")).await.status(), StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(register(&server, &phone()).await.status(), StatusCode::ACCEPTED);
    }
    let for_known = refused(register(&server, &known).await, "a fourth registration from one address").await;
    let for_new = refused(register(&server, &phone()).await, "a fifth registration from one address").await;
    assert_eq!(for_known["error"], for_new["error"]);
    assert_eq!(for_known["message"].as_str().map(|m| m.split(';').next()), for_new["message"].as_str().map(|m| m.split(';').next()));
    for _ in 0..3 {
        assert_eq!(verify(&server, &phone(), "123456").await.status(), StatusCode::UNAUTHORIZED);
    }
    refused(verify(&server, &phone(), "123456").await, "a fifth verification from one address").await;
}

/// Issue 15 item 1: however a number is written, it is one account (its E.164 form), and
/// the limits count the number, not the spelling; invalid numbers get a clear 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_number_written_three_ways_is_one_account() {
    let server = TestServer::start_with(&["--code-cooldown-secs", "0"]);
    // A number of this process's own range, written three ways.
    let e164 = phone();
    let national = &e164[2..]; // 10 digits: 415xxxxxxx
    let spellings = [
        serde_json::json!({ "phone": format!("+1 ({}) {}-{}", &national[..3], &national[3..6], &national[6..]) }),
        serde_json::json!({ "phone": e164.clone() }),
        serde_json::json!({ "phone": format!("{}.{}.{}", &national[..3], &national[3..6], &national[6..]), "region": "US" }),
    ];
    let mut users = Vec::new();
    for (n, spelling) in spellings.iter().enumerate() {
        let issued = post(&server, "/v1/accounts/register", spelling.clone()).await;
        assert_eq!(issued.status(), StatusCode::ACCEPTED, "spelling {n}: {spelling}");
        let code = issued.json::<serde_json::Value>().await.expect("json")["dev_code"].as_str().expect("code").to_owned();
        let mut body = spelling.clone();
        body["code"] = code.into();
        let verified = post(&server, "/v1/accounts/verify", body).await;
        assert_eq!(verified.status(), StatusCode::OK, "spelling {n}");
        users.push(verified.json::<serde_json::Value>().await.expect("json")["user_id"].clone());
    }
    assert!(users.windows(2).all(|w| w[0] == w[1]), "one account: {users:?}");

    // The cooldown and code are the number's, whatever the spelling: with a cooldown, a
    // resend written differently is refused, and a code issued to one spelling is
    // accepted through another.
    let server = TestServer::start_with(&["--code-cooldown-secs", "60"]);
    let e164 = phone();
    let issued: serde_json::Value = register(&server, &e164).await.json().await.expect("json");
    let spaced = format!("+1 {} {} {}", &e164[2..5], &e164[5..8], &e164[8..]);
    refused(register(&server, &spaced).await, "a resend of the same number written with spaces").await;
    assert_eq!(verify(&server, &spaced, issued["dev_code"].as_str().expect("code")).await.status(), StatusCode::OK);

    // Invalid numbers: a clear 400 `invalid_phone` with the reason, and nothing issued.
    for (input, region, why) in [
        ("4155550123", None, "country code"),
        ("+1 015 555 0123", None, "not a valid phone number"),
        ("+1 415 555 01234", None, "not a valid phone number"),
        ("call me maybe", None, "country code"),
        ("415 555 0123", Some("ZZ"), "unknown region"),
    ] {
        let response = post(&server, "/v1/accounts/register", serde_json::json!({ "phone": input, "region": region })).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{input}");
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["error"], "invalid_phone", "{input}: {body}");
        assert!(body["message"].as_str().expect("message").contains(why), "{input}: {body}");
    }
}
