//! Room-key forwarding between one user's own devices with the web client on either side
//! (`tests/browser/web-keys.mjs` in headless Chromium). A: the browser is a user's
//! primary device and holds a peer's Megolm session and its own; the test links a Rust SDK
//! device to that user, the browser sees the device-list change and forwards every session
//! it holds, and the SDK device decrypts both messages sent before it was linked. B: a
//! user's SDK device holds a peer's session; a browser linked afterwards gets it forwarded
//! by the SDK and shows the message sent before it existed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::browser::{require_tools, script, stdout_lines, wait_bounded};
use common::{Kind, TestServer};
use switchboard::accounts::DeviceCredentials;
use switchboard::client::Connection;
use switchboard::protocol::parse_id;
use switchboard::sdk::{Body, E2ee, E2eeConfig, Event, StoreKey};
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(30);

/// An SDK device, connected.
struct Dev {
    sdk: E2ee,
    conn: Connection,
    texts: Vec<(String, bool)>,
}

impl Dev {
    async fn open(server: &TestServer, dir: &Path, creds: &DeviceCredentials) -> Dev {
        let path = dir.join(format!("{}.redb", creds.device_id));
        let mut sdk = E2ee::open(&path, &StoreKey::random(), creds.user_id, creds.device_id, E2eeConfig::default()).expect("sdk");
        let (mut conn, _) = Connection::open(&server.transport(Kind::Tcp), &creds.token).await.expect("connect");
        sdk.publish_keys(&mut conn).await.expect("publish");
        Dev { sdk, conn, texts: Vec::new() }
    }

    /// Handles frames for `wait`, keeping the texts it decrypted (and whether on a retry).
    async fn pump(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            for event in self.sdk.next_events(&mut self.conn, Duration::from_millis(50)).await.expect("handle") {
                if let Event::Message(m) = event
                    && let Body::Text(t) = m.body
                {
                    self.texts.push((t, m.retried));
                }
            }
        }
    }

    /// Handles frames until a text came (`retried`: after its key arrived late).
    async fn until(&mut self, text: &str, retried: bool) {
        let deadline = Instant::now() + WAIT;
        while !self.texts.iter().any(|(t, r)| t == text && (*r || !retried)) {
            assert!(Instant::now() < deadline, "never decrypted {text:?}; got {:?}", self.texts);
            self.pump(Duration::from_millis(100)).await;
        }
    }
}

/// The script's process, killed if the test fails before it ends (no orphaned browser).
struct Script(Option<std::process::Child>);

impl Drop for Script {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a line of the script (the lines before it go to the report).
async fn line(lines: &mut UnboundedReceiver<String>, report: &mut String, want: &str) {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(60), lines.recv())
            .await
            .unwrap_or_else(|_| panic!("the script never printed {want}:\n{report}"))
            .unwrap_or_else(|| panic!("the script ended before {want}:\n{report}"));
        report.push_str(&got);
        report.push('\n');
        if got == want {
            return;
        }
    }
}

fn profile(creds: &DeviceCredentials) -> serde_json::Value {
    serde_json::json!({"phone": "+1 provisioned", "userId": creds.user_id.to_string(), "deviceId": creds.device_id.to_string(), "token": creds.token})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_keys_are_forwarded_from_and_to_the_browser() {
    let (chromium, node) = require_tools();
    let server = TestServer::start();
    let api = server.api();
    let work = tempfile::tempdir().expect("work dir");
    let dir = work.path();
    let mut accounts = server.provision(3).await;
    let (a, p, q) = (accounts.remove(0), accounts.remove(0), accounts.remove(0));

    let mut child = script(&node, &chromium, "web-keys.mjs")
        .env("SWITCHBOARD_APP_URL", format!("http://{}/app/", server.http))
        .env("SWITCHBOARD_WORK_DIR", dir)
        .env("SWITCHBOARD_PROFILE_A", profile(&a).to_string())
        .spawn()
        .expect("run node");
    let mut lines = stdout_lines(&mut child);
    let mut child = Script(Some(child));
    let mut report = String::new();

    // A: the peer writes to the browser, which answers.
    line(&mut lines, &mut report, "a-online").await;
    let mut peer = Dev::open(&server, dir, &p).await;
    peer.pump(Duration::from_millis(300)).await;
    let text = "from the peer, before the link";
    let ack = peer.sdk.send_direct(&mut peer.conn, a.user_id, &Body::Text(text.into())).await.expect("send");
    let conversation = parse_id::<switchboard::ids::ConversationId>("c", &ack.conversation_id).expect("id");
    std::fs::write(dir.join("a-peer-sent"), serde_json::json!({"conversation": conversation.to_string(), "text": text}).to_string()).expect("write");
    line(&mut lines, &mut report, "a-sent").await;

    // A new SDK device of the browser's user: the browser forwards what it holds.
    let laptop = api.link_device(&a.token, "laptop").await.expect("link");
    let mut laptop = Dev::open(&server, dir, &laptop).await;
    laptop.until(text, true).await;
    laptop.until("from the browser, before the link", true).await;
    std::fs::write(dir.join("a-done"), "{}").expect("write");

    // B: the peer writes to Q's SDK device; a browser linked to Q afterwards gets the key from it.
    let mut phone = Dev::open(&server, dir, &q).await;
    phone.pump(Duration::from_millis(300)).await;
    let text = "from the peer to the phone, before the browser was linked";
    let ack = peer.sdk.send_direct(&mut peer.conn, q.user_id, &Body::Text(text.into())).await.expect("send");
    let conversation = parse_id::<switchboard::ids::ConversationId>("c", &ack.conversation_id).expect("id");
    phone.until(text, false).await;
    let browser = api.link_device(&q.token, "browser").await.expect("link");
    std::fs::write(
        dir.join("b-linked"),
        serde_json::json!({"profile": profile(&browser), "conversation": conversation.to_string(), "text": text}).to_string(),
    )
    .expect("write");
    // The phone handles frames (the browser's keys appear: it forwards) until the browser shows the text.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        phone.pump(Duration::from_millis(100)).await;
        match lines.try_recv() {
            Ok(l) => {
                report.push_str(&l);
                report.push('\n');
                if l == "b-done" {
                    break;
                }
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
            Err(_) => break,
        }
        assert!(Instant::now() < deadline, "the linked browser never showed the forwarded message:\n{report}");
    }

    let (status, child) = wait_bounded(child.0.take().expect("the script"), Duration::from_secs(60)).await;
    while let Ok(l) = lines.try_recv() {
        report.push_str(&l);
        report.push('\n');
    }
    let output = child.wait_with_output().expect("node output");
    let report = format!("--- stdout\n{report}--- stderr\n{}", String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(status.success(), "the keys test failed ({status}):\n{report}\n--- server log\n{}", server.log());
    assert!(report.contains("web keys test passed"), "the script did not finish:\n{report}");
}
