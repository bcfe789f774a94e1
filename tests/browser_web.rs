//! The web client end to end in headless Chromium: a private server (which serves the app
//! at `/app/` from the binary), then `node tests/browser/web.mjs` (playwright-core driving
//! the distribution's Chromium) signs up two browser users, chats 1:1 and in a group with
//! a Rust CLI client (`switchboard client`), encrypted both ways (the CLI also sends in
//! the group), and checks the three ticks (in the group too), typing, thumbnails, a file
//! downloaded by the CLI byte for byte, online / last seen, the reconnection backoff, and a
//! reconnection without gaps or duplicates; then profile names, and a
//! new browser device whose conversation list comes from the server and whose chat loads
//! older messages when scrolled up; chat actions, notifications while the tab is hidden,
//! mute durations, and group management (invite links, admins, subject, leaving, the
//! server's refusals shown). Afterwards every byte the
//! server stored is searched for a canary the browser sent: it must not be there.
//! Screenshots of the main screens land in `target/browser-artifacts/web-*.png` (this run's:
//! the earlier ones are removed first).
//!
//! Chromium (Debian's `chromium`) and the script's npm dependencies come from
//! `scripts/install-deps.sh`; without them this test fails and says so (it never skips).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestServer;
use common::browser::{fresh_artifacts, require_tools, run_to_end, script};

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
                found.push(path);
            }
        }
    }
    found
}

/// The screenshots the script must save (`web-<screen>.png`).
const SCREENS: [&str; 15] = [
    "1-signup",
    "2-sent-tick",
    "3-conversation-list-unread",
    "4-typing",
    "5-chat-with-cli",
    "5b-image-from-cli",
    "6-group-chat",
    "7-caught-up",
    "8-conversation-list",
    "9-names",
    "10-new-device-list",
    "11-history-on-scroll",
    "12b-muted",
    "15-group-admin",
    "16-left-group",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_and_the_cli_chat_encrypted_with_ticks_typing_groups_and_catch_up() {
    let (chromium, node) = require_tools();
    let server = TestServer::start();
    let work = tempfile::tempdir().expect("work dir");
    let canary = format!("canary-{}", uuid::Uuid::new_v4().simple());

    // The app is served from the binary, with its content types and CSP.
    let page = reqwest::get(format!("http://{}/app/", server.http)).await.expect("GET /app/");
    assert_eq!(page.status(), 200);
    let csp = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(csp.contains("script-src 'self' 'wasm-unsafe-eval'") && csp.contains("frame-ancestors 'none'"), "CSP: {csp}");
    let html = page.text().await.expect("page");
    let page_script = html.split("src=\"/app/").nth(1).and_then(|s| s.split('"').next()).expect("a script in the page");
    let js = reqwest::get(format!("http://{}/app/{page_script}", server.http)).await.expect("GET script");
    assert_eq!(js.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/javascript; charset=utf-8"));

    // This run's screenshots only: earlier runs' are removed first.
    let artifacts = fresh_artifacts("web", &SCREENS);
    let child = script(&node, &chromium, "web.mjs")
        .env("SWITCHBOARD_APP_URL", format!("http://{}/app/", server.http))
        .env("SWITCHBOARD_SERVER", format!("http://{}", server.http))
        .env("SWITCHBOARD_BIN", env!("CARGO_BIN_EXE_switchboard"))
        .env("SWITCHBOARD_WORK_DIR", work.path())
        .env("SWITCHBOARD_CANARY", &canary)
        .spawn()
        .expect("run node");
    let (status, report) = run_to_end(child, Duration::from_secs(360)).await;
    assert!(
        status.success(),
        "the web client test failed ({status}); screenshots in {}:\n{report}\n--- server log\n{}",
        artifacts.display(),
        server.log()
    );
    assert!(report.contains("web client test passed"), "the script did not finish:\n{report}");
    for screen in SCREENS {
        let shot = artifacts.join(format!("web-{screen}.png"));
        assert!(shot.metadata().is_ok_and(|m| m.len() > 1000), "no screenshot {}", shot.display());
    }

    // The browser sent the canary three times (1:1 to a browser, to the CLI, to a group):
    // the server stored ciphertext only.
    assert!(report.contains(&canary), "the CLI printed the decrypted canary");
    let leaked = files_containing(&server.data_dir(), canary.as_bytes());
    assert!(leaked.is_empty(), "plaintext from the browser in the server's files: {leaked:?}");
    let leaked_log = server.log().contains(&canary);
    assert!(!leaked_log, "plaintext from the browser in the server's log");
}
