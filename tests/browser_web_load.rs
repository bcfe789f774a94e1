//! The web client's load time with a long conversation list (BENCHMARKS.md): an account
//! with 200 one-to-one conversations, each holding one message encrypted by another
//! user's SDK device, opens the app in headless Chromium (`tests/browser/web-load.mjs`).
//! The script reports, from the start of navigation to every conversation listed with its
//! decrypted last message, the time after being away (catch-up: 200 room keys over Olm and
//! 200 Megolm messages) and after a reload (from IndexedDB). Prints both; asserts only
//! that they finish within the script's bounds.

mod common;

use std::io::BufRead;
use std::time::{Duration, Instant};

use common::browser::{require_tools, script, wait_bounded};
use common::{Kind, TestServer};
use switchboard::client::Connection;
use switchboard::protocol::server_frame;
use switchboard::sdk::{Body, E2ee, E2eeConfig, StoreKey};

const CONVERSATIONS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_lists_200_encrypted_conversations() {
    let (chromium, node) = require_tools();
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("work dir");
    let mut accounts = server.provision(CONVERSATIONS + 1).await;
    let me = accounts.remove(0);
    let profile =
        serde_json::json!({"phone": "+1 provisioned", "userId": me.user_id.to_string(), "deviceId": me.device_id.to_string(), "token": me.token});
    let go = work.path().join("go");

    let mut child = script(&node, &chromium, "web-load.mjs")
        .env("SWITCHBOARD_APP_URL", format!("http://{}/app/", server.http))
        .env("SWITCHBOARD_PROFILE_JSON", profile.to_string())
        .env("SWITCHBOARD_GO_FILE", &go)
        .env("SWITCHBOARD_CONVERSATIONS", CONVERSATIONS.to_string())
        .spawn()
        .expect("run node");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut report = String::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.recv()).await.expect("the page never got ready").expect("node ended early");
        report.push_str(&line);
        report.push('\n');
        if line == "ready" {
            break;
        }
    }

    // Each other user sends one encrypted message from its own SDK device.
    let started = Instant::now();
    let config = E2eeConfig { one_time_keys: 2, ..E2eeConfig::default() };
    for (i, sender) in accounts.iter().enumerate() {
        let sdk_dir = work.path().join(format!("sender-{i}.redb"));
        let mut sdk = E2ee::open(&sdk_dir, &StoreKey::random(), sender.user_id, sender.device_id, config).expect("sdk");
        let (mut conn, _) = Connection::open(&server.transport(Kind::Tcp), &sender.token).await.expect("connect");
        sdk.publish_keys(&mut conn).await.expect("publish");
        loop {
            let kind = conn.recv_timeout(Duration::from_secs(10)).await.expect("catch-up");
            let done = matches!(kind, server_frame::Kind::CatchUpComplete(_));
            sdk.handle(&mut conn, kind).await.expect("handle");
            if done {
                break;
            }
        }
        sdk.send_direct(&mut conn, me.user_id, &Body::Text(format!("hello from sender {i}"))).await.expect("send");
    }
    println!("{CONVERSATIONS} encrypted messages sent in {:?}", started.elapsed());
    std::fs::write(&go, b"go").expect("go file");

    let (status, child) = wait_bounded(child, Duration::from_secs(300)).await;
    while let Ok(line) = lines.try_recv() {
        report.push_str(&line);
        report.push('\n');
    }
    let output = child.wait_with_output().expect("node output");
    let report = format!("--- stdout\n{report}--- stderr\n{}", String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(status.success(), "the load test failed ({status}):\n{report}");
    assert!(report.contains("web load test passed"), "the script did not finish:\n{report}");
}
