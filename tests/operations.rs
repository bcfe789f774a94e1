//! Operations: configuration from a file, idle conversations passivated and reactivated,
//! and the `switchboard` CLI (admin tree, terminal client) against a live server.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Kind, Pair, TestServer, WAIT, online, pair, send_all, user};

fn conversation_children(tree: &serde_json::Value) -> u64 {
    tree["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "conversation-supervisor"))
        .and_then(|s| s["children_count"].as_u64())
        .unwrap_or(u64::MAX)
}

/// An idle conversation is passivated (its actor stops) and the next message reactivates
/// it from the store at the next seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_conversation_is_passivated_and_reactivated_from_the_store() {
    let server = TestServer::start_with(&["--conversation-idle-secs", "1"]);
    let Pair { bob, mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    let mut b = online(&server, Kind::Ws, &bob).await;
    send_all(&mut a, conversation, 1..=3, "p").await;
    assert_eq!(conversation_children(&server.admin_tree().await), 1);
    let deadline = Instant::now() + WAIT;
    while conversation_children(&server.admin_tree().await) != 0 {
        assert!(Instant::now() < deadline, "conversation was never passivated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ack = a.send_and_ack(conversation, "p-4", &b"x"[..]).await.unwrap();
    assert_eq!(ack.seq, 4);
    for expected in 1..=4 {
        assert_eq!(b.next_message(WAIT).await.unwrap().seq, expected);
    }
    assert_eq!(conversation_children(&server.admin_tree().await), 1);
}

/// Settings come from a TOML file; flags win over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "max_payload_bytes = 2048\nheartbeat_secs = 7\nrate_per_sec = 1000\n").unwrap();
    let server = TestServer::start_with(&["--config", file.to_str().unwrap(), "--heartbeat-secs", "9"]);
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let (mut a, welcome) = switchboard::client::Connection::open(&server.transport(Kind::Tcp), &alice.token).await.unwrap();
    assert_eq!(welcome.heartbeat_interval_ms, 9_000, "the flag wins over the file");
    common::caught_up(&mut a).await;
    let conversation = a.open_direct(bob.user_id).await.unwrap();
    let err = a.send_and_ack(conversation, "big", vec![0u8; 3000]).await.unwrap_err();
    assert!(err.to_string().contains("PayloadTooLarge"), "the file's payload limit applies: {err}");

    // A file with an unknown key is refused with a clear message.
    std::fs::write(&file, "no_such_setting = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--config", file.to_str().unwrap(), "--http-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid config file") && stderr.contains("no_such_setting"), "{stderr}");
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard")).args(args).output().unwrap();
    assert!(out.status.success(), "switchboard {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The terminal client and `admin tree`, as a person would use them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_client_and_admin_tree_work_end_to_end() {
    let server = TestServer::start();
    let http = format!("http://{}", server.http);
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice.json");
    let bob = dir.path().join("bob.json");
    for (phone, profile) in [("+14155550101", &alice), ("+14155550102", &bob)] {
        let out = cli(&["client", "register", "--server", &http, "--phone", phone]);
        let code = out.split_whitespace().last().unwrap().to_owned();
        cli(&["client", "verify", "--server", &http, "--phone", phone, "--code", &code, "--profile", profile.to_str().unwrap()]);
    }
    let bob_profile: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&bob).unwrap()).unwrap();
    let bob_id = bob_profile["user_id"].as_str().unwrap().to_owned();
    let sent = cli(&["client", "send", "--profile", alice.to_str().unwrap(), "--to", &bob_id, "hello from the terminal"]);
    assert!(sent.contains("✓ sent") && sent.contains("seq 1"), "{sent}");
    let history = cli(&["client", "history", "--profile", bob.to_str().unwrap(), "--with", &alice_id(&alice)]);
    assert!(history.contains("#1") && history.contains("hello from the terminal"), "{history}");
    // Encrypted by default: the server's files never hold the text.
    for entry in walk(server.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!bytes.windows(23).any(|w| w == b"hello from the terminal"), "plaintext found in {}", entry.display());
    }
    // Both sides print the same safety number (the digits after the first line).
    let numbers: Vec<String> = [(&alice, &bob_id), (&bob, &alice_id(&alice))]
        .into_iter()
        .map(|(profile, with)| {
            let out = cli(&["client", "safety-number", "--profile", profile.to_str().unwrap(), "--with", with]);
            out.lines().skip(1).collect::<Vec<_>>().join(" ").split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect();
    assert_eq!(numbers[0].split(' ').count(), 12, "{numbers:?}");
    assert_eq!(numbers[0], numbers[1]);
    let devices = cli(&["client", "devices", "--profile", alice.to_str().unwrap()]);
    assert!(devices.contains("primary=true"), "{devices}");

    let tree = cli(&["admin", "tree", "--admin", &format!("http://{}", server.admin), "--token", ADMIN_TOKEN]);
    assert!(tree.contains("session-supervisor") && tree.contains("conversation-supervisor") && tree.contains("store-writer"), "{tree}");
    assert!(tree.contains("restarts=0"), "{tree}");
    let refused = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["admin", "tree", "--admin", &format!("http://{}", server.admin), "--token", "wrong"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

fn alice_id(profile: &std::path::Path) -> String {
    let p: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(profile).unwrap()).unwrap();
    p["user_id"].as_str().unwrap().to_owned()
}

/// Bulk provisioning (operators, load tests) is admin-only and yields working devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bulk_provisioning_creates_working_accounts() {
    let server = TestServer::start();
    let http = reqwest::Client::new();
    let url = format!("http://{}/admin/provision", server.admin);
    let refused = http.post(&url).json(&serde_json::json!({ "count": 3 })).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let too_many = http.post(&url).bearer_auth(ADMIN_TOKEN).json(&serde_json::json!({ "count": 100_000 })).send().await.unwrap();
    assert_eq!(too_many.status().as_u16(), 400);
    let created: Vec<switchboard::accounts::DeviceCredentials> = http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "count": 3, "phone_prefix": "+1777" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created.len(), 3);
    let mut a = online(&server, Kind::Tcp, &created[0]).await;
    let conversation = a.open_direct(created[1].user_id).await.unwrap();
    a.send_and_ack(conversation, "bulk", &b"hi"[..]).await.unwrap();
    // The same phones again: nothing new is created.
    let again: Vec<switchboard::accounts::DeviceCredentials> = http
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "count": 3, "phone_prefix": "+1777" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(again.is_empty());
}

/// /healthz names the store in use and its latency; /metrics carries the store probe's
/// reachability gauge. A store that stops answering turns both to "down" (PostgreSQL
/// runs only: the embedded store cannot be taken away from a running process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_report_the_store() {
    let mut server = TestServer::start();
    let http = reqwest::Client::new();
    let health: serde_json::Value = http.get(format!("http://{}/healthz", server.http)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["store"]["backend"], common::store_kind(), "{health}");
    assert_eq!(health["store"]["ok"], true);
    assert!(health["store"]["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{health}");
    let up_line = format!("switchboard_store_up{{backend=\"{}\"}} 1", common::store_kind());
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = http.get(format!("http://{}/metrics", server.http)).send().await.unwrap().text().await.unwrap();
        if metrics.contains(&up_line) {
            break;
        }
        assert!(Instant::now() < deadline, "no {up_line:?} in metrics:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(pg) = server.postgres_mut() {
        pg.stop();
        let response = http.get(format!("http://{}/healthz", server.http)).send().await.unwrap();
        assert_eq!(response.status(), 503);
        let health: serde_json::Value = response.json().await.unwrap();
        assert_eq!(health["status"], "degraded", "{health}");
        assert_eq!(health["store"]["ok"], false);
        assert!(health["store"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{health}");
    }
}

/// `client send-file` in one terminal and `client download` in another, as the README
/// shows: the file arrives byte for byte, and the server stored only ciphertext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_send_file_and_download_from_two_terminals() {
    let server = TestServer::start();
    let http = format!("http://{}", server.http);
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice.json");
    let bob = dir.path().join("bob.json");
    for (phone, profile) in [("+14155550201", &alice), ("+14155550202", &bob)] {
        let out = cli(&["client", "register", "--server", &http, "--phone", phone]);
        let code = out.split_whitespace().last().unwrap().to_owned();
        cli(&["client", "verify", "--server", &http, "--phone", phone, "--code", &code, "--profile", profile.to_str().unwrap()]);
    }
    // A recognisable plaintext: it must never reach the server's disk.
    let mut plaintext = b"CANARY-plaintext-of-a-file ".repeat(8_000);
    plaintext.extend((0..50_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let file = dir.path().join("report.bin");
    std::fs::write(&file, &plaintext).unwrap();
    let sent = cli(&["client", "send-file", "--profile", alice.to_str().unwrap(), "--to", &alice_id(&bob), file.to_str().unwrap()]);
    assert!(sent.contains("uploaded"), "{sent}");
    let out_dir = dir.path().join("downloads");
    std::fs::create_dir_all(&out_dir).unwrap();
    let got = cli(&["client", "download", "--profile", bob.to_str().unwrap(), "--with", &alice_id(&alice), "--out", out_dir.to_str().unwrap()]);
    let written = std::fs::read(out_dir.join("report.bin")).unwrap_or_else(|e| panic!("no file written ({e}); the command said: {got}"));
    assert_eq!(written, plaintext, "the downloaded file differs");
    // Nothing under the server's directory (store, log, blobs) holds the plaintext.
    let canary = b"CANARY-plaintext-of-a-file";
    for entry in walk(server.dir.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(!bytes.windows(canary.len()).any(|w| w == canary), "plaintext found in {}", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
