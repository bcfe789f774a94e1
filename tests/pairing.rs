//! Device pairing through real HTTP and sockets (issue 15 item 8): a new device starts a
//! pairing, the primary approves its code over its own connection, and the new device
//! receives its own token directly; codes are single-use, only a primary approves, a wrong
//! claim secret gets nothing; the terminal client's `link` (QR code) and `approve`; and
//! the primary logging out every other device (item 9).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Kind, TestServer, online, rejected, user};
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::protocol::ErrorCode;

async fn post(server: &TestServer, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("http://{}{path}", server.http)).json(&body).send().await.expect("http")
}

async fn start(server: &TestServer, name: &str) -> Value {
    let response = post(server, "/v1/pairing", json!({ "device_name": name })).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("json")
}

async fn claim(server: &TestServer, started: &Value, secret: &str, wait_s: u64) -> reqwest::Response {
    post(server, "/v1/pairing/claim", json!({ "code": started["code"], "claim_secret": secret, "wait_s": wait_s })).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_approves_and_the_new_device_gets_its_own_token_once() {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let mut phone = online(&server, Kind::Tcp, &alice).await;

    let started = start(&server, "Laptop").await;
    let (code, secret) = (started["code"].as_str().expect("code").to_owned(), started["claim_secret"].as_str().expect("secret").to_owned());
    assert_eq!(started["qr"], format!("switchboard-pair:{code}"));
    assert_eq!(started["expires_in_s"], 120);
    assert_eq!(claim(&server, &started, &secret, 0).await.status(), StatusCode::ACCEPTED, "not approved yet");

    // The new device waits (long poll) while the primary approves over its connection,
    // scanning the QR text (prefix and all).
    let waiting = {
        let (server_http, started, secret) = (server.http, started.clone(), secret.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("http://{server_http}/v1/pairing/claim"))
                .json(&json!({ "code": started["code"], "claim_secret": secret, "wait_s": 10 }))
                .send()
                .await
                .expect("http")
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(phone.approve_pairing(&format!("switchboard-pair:{code}")).await.expect("approve"), "Laptop");
    let answer = waiting.await.expect("task");
    assert_eq!(answer.status(), StatusCode::OK);
    let credentials: Value = answer.json().await.expect("json");
    assert_eq!(credentials["user_id"], alice.user_id.to_string(), "linked to the approving account");
    let token = credentials["token"].as_str().expect("token");
    assert_ne!(token, alice.token);

    // It is a real device of the account, not a primary; its token opens a connection.
    let devices = api.devices(token).await.expect("devices");
    let laptop = devices.iter().find(|d| d.device_id.to_string() == credentials["device_id"]).expect("listed");
    assert!(!laptop.primary && laptop.name == "Laptop");
    let (_conn, welcome) = switchboard::client::Connection::open(&server.transport(Kind::Ws), token).await.expect("hello");
    assert_eq!(welcome.user_id, switchboard::protocol::id_bytes(alice.user_id));

    // Single use: claimed once; the code is gone for approvals too.
    assert_eq!(claim(&server, &started, &secret, 0).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(rejected(phone.approve_pairing(&code).await), ErrorCode::UnknownPairing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_primary_approves_once_and_only_the_secret_claims() {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let tablet = api.link_device(&alice.token, "tablet").await.expect("link");
    let mut t = online(&server, Kind::Tcp, &tablet).await;
    let mut phone = online(&server, Kind::Ws, &alice).await;
    let started = start(&server, "Desktop").await;
    let code = started["code"].as_str().expect("code").to_owned();
    assert_eq!(rejected(t.approve_pairing(&code).await), ErrorCode::NotPrimary);
    assert_eq!(rejected(phone.approve_pairing("0123456789abcdef0123456789abcdef").await), ErrorCode::UnknownPairing);
    phone.approve_pairing(&code).await.expect("approve");
    // Another account cannot take it over.
    let mallory = user(&api).await;
    let mut m = online(&server, Kind::Tcp, &mallory).await;
    assert_eq!(rejected(m.approve_pairing(&code).await), ErrorCode::PairingAlreadyApproved);
    // A wrong claim secret gets nothing (and does not use the pairing up).
    let wrong = claim(&server, &started, "not-the-secret", 0).await;
    assert_eq!(wrong.status(), StatusCode::NOT_FOUND);
    let body: Value = wrong.json().await.expect("json");
    assert_eq!(body["error"], "unknown_pairing");
    let secret = started["claim_secret"].as_str().expect("secret").to_owned();
    let right: Value = claim(&server, &started, &secret, 0).await.json().await.expect("json");
    assert_eq!(right["user_id"], alice.user_id.to_string());
    // Bad requests are clear.
    assert_eq!(post(&server, "/v1/pairing", json!({ "device_name": "  " })).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(post(&server, "/v1/pairing/claim", json!({ "code": 1 })).await.status(), StatusCode::BAD_REQUEST);
}

/// `switchboard client link` shows a QR code and waits; `client approve` on the primary
/// links it; the new device's profile is saved with its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_client_links_with_a_qr_code() {
    let server = TestServer::start();
    let http = format!("http://{}", server.http);
    let dir = tempfile::tempdir().expect("dir");
    let (primary, laptop) = (dir.path().join("primary.json"), dir.path().join("laptop.json"));
    let number = common::phone();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard")).args(args).output().expect("run");
        assert!(out.status.success(), "switchboard {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let code = run(&["client", "register", "--server", &http, "--phone", &number]).split_whitespace().last().expect("code").to_owned();
    run(&["client", "verify", "--server", &http, "--phone", &number, "--code", &code, "--profile", primary.to_str().expect("path")]);

    let mut link = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["client", "link", "--server", &http, "--name", "laptop", "--profile", laptop.to_str().expect("path")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn link");
    let mut lines = BufReader::new(link.stdout.take().expect("stdout")).lines();
    let mut qr_rows = 0;
    let pairing_code = loop {
        let line = lines.next().expect("link printed the approve command").expect("line");
        if line.contains('▀') || line.contains('▄') || line.contains('█') {
            qr_rows += 1;
        }
        if let Some(rest) = line.trim().strip_prefix("switchboard client approve --code ") {
            break rest.trim().to_owned();
        }
    };
    assert!(qr_rows > 10, "a QR code was drawn ({qr_rows} rows)");
    let approved = run(&["client", "approve", "--profile", primary.to_str().expect("path"), "--code", &pairing_code]);
    assert!(approved.contains("laptop"), "{approved}");
    let status = link.wait().expect("link ends");
    assert!(status.success());
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&laptop).expect("profile saved")).expect("json");
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&primary).expect("primary")).expect("json");
    assert_eq!(saved["user_id"], first["user_id"]);
    assert_ne!(saved["token"], first["token"]);
    let devices = run(&["client", "devices", "--profile", laptop.to_str().expect("path")]);
    assert!(devices.contains("laptop") && devices.contains("primary=false"), "{devices}");
}

/// From review: an approval is only as good as the primary that gave it — once the owner
/// takes the account back on a new phone (revoking that primary), the pending claim gets
/// nothing; a revoked primary cannot approve either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_dies_with_the_primary_that_gave_it() {
    let server = TestServer::start_with(&["--code-cooldown-secs", "0"]);
    let api = server.api();
    let number = common::phone();
    let alice = api.sign_up(&number, "old phone").await.expect("sign up");
    let mut old = online(&server, Kind::Tcp, &alice).await;
    let started = start(&server, "Intruder laptop").await;
    old.approve_pairing(started["code"].as_str().expect("code")).await.expect("approve");
    // The owner registers the number on a new phone: the old primary is revoked.
    api.sign_up(&number, "new phone").await.expect("take the account back");
    let secret = started["claim_secret"].as_str().expect("secret").to_owned();
    assert_eq!(claim(&server, &started, &secret, 0).await.status(), StatusCode::NOT_FOUND, "the approval died with its primary");
    let devices = api.devices(&api.sign_up(&number, "newest phone").await.expect("again").token).await.expect("devices");
    assert!(devices.iter().all(|d| d.name != "Intruder laptop"), "{devices:?}");
}

/// Issue 15 item 9, "log out all other devices": the primary revokes every other device at
/// once; their connections close with DEVICE_REVOKED and their tokens are refused; a
/// linked device may not do it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_logs_out_every_other_device() {
    let server = TestServer::start();
    let api = server.api();
    let alice = user(&api).await;
    let (tablet, laptop) =
        (api.link_device(&alice.token, "tablet").await.expect("link"), api.link_device(&alice.token, "laptop").await.expect("link"));
    let mut t = online(&server, Kind::Tcp, &tablet).await;
    let mut l = online(&server, Kind::Ws, &laptop).await;
    let http =
        |token: &str| reqwest::Client::new().post(format!("http://{}/v1/devices/logout-others", server.http)).bearer_auth(token.to_owned()).send();
    let refused = http(&tablet.token).await.expect("http");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN, "a linked device may not");
    let answer: Value = http(&alice.token).await.expect("http").json().await.expect("json");
    let mut revoked: Vec<String> = answer["revoked"].as_array().expect("list").iter().map(|v| v.as_str().expect("id").to_owned()).collect();
    revoked.sort();
    let mut expected = vec![tablet.device_id.to_string(), laptop.device_id.to_string()];
    expected.sort();
    assert_eq!(revoked, expected);
    for conn in [&mut t, &mut l] {
        let closing = conn
            .wait_for(common::WAIT, false, |k| match k {
                switchboard::protocol::server_frame::Kind::Closing(c) => Some(c.code()),
                _ => None,
            })
            .await
            .expect("closed");
        assert_eq!(closing, ErrorCode::DeviceRevoked);
    }
    assert!(api.devices(&tablet.token).await.is_err(), "its token is refused");
    assert_eq!(api.devices(&alice.token).await.expect("the primary stays").iter().filter(|d| d.revoked_ms.is_none()).count(), 1);
    // Again: nothing left to log out.
    let again: Value = http(&alice.token).await.expect("http").json().await.expect("json");
    assert_eq!(again["revoked"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pairing_code_expires() {
    // A one-second code, so that the test waits a little instead of two minutes.
    let server = TestServer::start_with(&["--pairing-ttl-secs", "1"]);
    let primary = user(&server.api()).await;
    let mut phone = online(&server, Kind::Tcp, &primary).await;
    // Approved in time but claimed too late: nothing.
    let approved = start(&server, "Tablet").await;
    assert_eq!(approved["expires_in_s"], 1);
    phone.approve_pairing(approved["code"].as_str().expect("code")).await.expect("approve in time");
    // Not approved in time: the approval is refused.
    let late = start(&server, "Laptop").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let secret = approved["claim_secret"].as_str().expect("secret");
    assert_eq!(claim(&server, &approved, secret, 0).await.status(), StatusCode::NOT_FOUND, "an expired code gives no token");
    assert_eq!(rejected(phone.approve_pairing(late["code"].as_str().expect("code")).await), ErrorCode::UnknownPairing);
    let devices = server.api().devices(&primary.token).await.expect("devices");
    assert_eq!(devices.len(), 1, "no device was linked");
}
