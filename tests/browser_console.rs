//! The SRE console end to end in headless Chromium: a private server with some traffic,
//! then `node tests/browser/console.mjs` (playwright-core driving the distribution's
//! Chromium) logs in, reads the tree, crashes the conversation through the console and
//! waits for its supervisor's restart count to go up, and looks at the hot-actor and
//! cluster panels. Screenshots of each screen land in `target/browser-artifacts/`.
//!
//! Chromium (Debian's `chromium`) and the script's npm dependencies come from
//! `scripts/install-deps.sh`; without them this test fails and says so (it never skips).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Kind, Pair, TestServer, pair, send_all};

/// The browser test folder (an npm package of its own).
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Chromium, node and playwright-core, or a failure that says how to get them.
fn require_tools() -> (String, String) {
    let chromium = std::env::var("SWITCHBOARD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "{chromium} not found: run scripts/install-deps.sh (installs Debian's chromium), or set SWITCHBOARD_CHROMIUM"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core/package.json").is_file(),
        "tests/browser/node_modules is missing: run scripts/install-deps.sh (runs npm ci in tests/browser)"
    );
    let node = std::env::var("SWITCHBOARD_NODE").unwrap_or_else(|_| "node".into());
    let version = Command::new(&node).arg("--version").output();
    assert!(version.is_ok_and(|o| o.status.success()), "`{node} --version` failed: install Node.js 20 or later (or set SWITCHBOARD_NODE)");
    (chromium, node)
}

/// The supervisor's restart count in the admin tree.
fn restarts(tree: &serde_json::Value) -> u64 {
    tree["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "conversation-supervisor"))
        .and_then(|s| s["restarts"].as_u64())
        .expect("conversation-supervisor with restarts in the tree")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_tree_and_a_conversation_crashed_through_it_comes_back() {
    let (chromium, node) = require_tools();
    let server = TestServer::start();
    let Pair { mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    send_all(&mut a, conversation, 1..=5, "before").await;
    let before = restarts(&server.admin_tree().await);

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let mut child = Command::new(&node)
        .arg("console.mjs")
        .current_dir(browser_dir())
        .env("SWITCHBOARD_CONSOLE_URL", format!("http://{}/admin/ui/", server.admin))
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHBOARD_CONVERSATION_ID", conversation.to_string())
        .env("SWITCHBOARD_CHROMIUM", &chromium)
        .env("SWITCHBOARD_BROWSER_ARTIFACTS", &artifacts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    // The script bounds each wait itself; this only keeps a wedged browser from hanging
    // the suite.
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().expect("wait for node") {
                return (status, child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().expect("reap node");
                return (status, child);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (status, child) = status.await.expect("join");
    let output = child.wait_with_output().expect("node output");
    let report = format!("--- stdout\n{}\n--- stderr\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(status.success(), "the console test failed ({status}); screenshots in {}:\n{report}", artifacts.display());
    assert!(report.contains("console test passed"), "the script did not finish:\n{report}");
    for screen in ["1-login", "2-tree", "3-crash-confirmation", "4-tree-after-crash", "5-hot-actors", "6-cluster", "7-drain-confirmation"] {
        let shot = artifacts.join(format!("console-{screen}.png"));
        assert!(shot.metadata().is_ok_and(|m| m.len() > 1000), "no screenshot {}", shot.display());
    }

    // What the page showed is what happened: one more restart, and nothing lost.
    assert!(restarts(&server.admin_tree().await) > before, "the server saw no restart");
    assert!(server.log().contains("crash requested"), "the crash did not reach the conversation");
    let ack = a.send_and_ack(conversation, "after", &b"y"[..]).await.expect("send after the crash");
    assert_eq!(ack.seq, 6, "the restarted conversation continues at the next seq");
}
