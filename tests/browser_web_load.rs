//! The web client's load time with a long conversation list (BENCHMARKS.md): an account
//! with 200 one-to-one conversations, each holding one message encrypted by another
//! user's SDK device, opens the app in headless Chromium (`tests/browser/web-load.mjs`).
//! The script reports, from the start of navigation to every conversation listed with its
//! decrypted last message, the time after being away (catch-up: 200 room keys over Olm and
//! 200 Megolm messages) and after a reload (from IndexedDB), with the frames and IndexedDB
//! transactions it took. Prints both; asserts only that they finish within the script's
//! bounds.
//!
//! To compare builds side by side on one server: `SWITCHBOARD_WEB_LOAD_BASELINE=<dir>` (a
//! built `web/dist`, say of an older commit) runs the same scenario first with the app's
//! files from there, with accounts of its own, then with this checkout's `web/dist`
//! (both served by the script).
//! `SWITCHBOARD_CPU_PROFILE_DIR=<dir>` saves a CPU profile of each catch-up load there
//! (`baseline.cpuprofile`, `current.cpuprofile`) and prints its hottest functions.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::browser::{require_tools, script, stdout_lines, wait_bounded};
use common::{Kind, TestServer};
use switchboard::client::Connection;
use switchboard::protocol::server_frame;
use switchboard::sdk::{Body, E2ee, E2eeConfig, StoreKey};

const CONVERSATIONS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_lists_200_encrypted_conversations() {
    let (chromium, node) = require_tools();
    let server = TestServer::start();
    if let Ok(baseline) = std::env::var("SWITCHBOARD_WEB_LOAD_BASELINE") {
        // Both builds served the same way (by the script, from files), one after the other.
        load(&server, &chromium, &node, "baseline", Some(PathBuf::from(baseline))).await;
        load(&server, &chromium, &node, "current", Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist"))).await;
    } else {
        load(&server, &chromium, &node, "current", None).await;
    }
}

/// One run of the scenario with fresh accounts: the app's files from `dist`, or the server's.
async fn load(server: &TestServer, chromium: &str, node: &str, label: &str, dist: Option<PathBuf>) {
    let work = tempfile::tempdir().expect("work dir");
    let mut accounts = server.provision(CONVERSATIONS + 1).await;
    let me = accounts.remove(0);
    let profile =
        serde_json::json!({"phone": "+1 provisioned", "userId": me.user_id.to_string(), "deviceId": me.device_id.to_string(), "token": me.token});
    let go = work.path().join("go");

    let mut command = script(node, chromium, "web-load.mjs");
    command
        .env("SWITCHBOARD_APP_URL", format!("http://{}/app/", server.http))
        .env("SWITCHBOARD_PROFILE_JSON", profile.to_string())
        .env("SWITCHBOARD_GO_FILE", &go)
        .env("SWITCHBOARD_CONVERSATIONS", CONVERSATIONS.to_string())
        .env("SWITCHBOARD_LOAD_LABEL", label)
        .env_remove("SWITCHBOARD_WEB_DIST")
        .env_remove("SWITCHBOARD_CPU_PROFILE");
    if let Some(dist) = &dist {
        command.env("SWITCHBOARD_WEB_DIST", dist);
    }
    if let Ok(dir) = std::env::var("SWITCHBOARD_CPU_PROFILE_DIR") {
        command.env("SWITCHBOARD_CPU_PROFILE", Path::new(&dir).join(format!("{label}.cpuprofile")));
    }
    let mut child = command.spawn().expect("run node");
    let mut lines = stdout_lines(&mut child);
    let mut report = String::new();
    loop {
        let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(60), lines.recv()).await else {
            let _ = child.kill();
            let output = child.wait_with_output().expect("node output");
            panic!("the page never got ready ({label}):\n{report}--- stderr\n{}", String::from_utf8_lossy(&output.stderr));
        };
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
    println!("{label}: {CONVERSATIONS} encrypted messages sent in {:?}", started.elapsed());
    std::fs::write(&go, b"go").expect("go file");

    let (status, child) = wait_bounded(child, Duration::from_secs(300)).await;
    while let Ok(line) = lines.try_recv() {
        report.push_str(&line);
        report.push('\n');
    }
    let output = child.wait_with_output().expect("node output");
    let report = format!("--- {label} stdout\n{report}--- {label} stderr\n{}", String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(status.success(), "the load test ({label}) failed ({status}):\n{report}");
    assert!(report.contains("web load test passed"), "the script ({label}) did not finish:\n{report}");
}
