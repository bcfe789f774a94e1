//! The SRE console end to end in headless Chromium: a private server with some traffic,
//! then `node tests/browser/console.mjs` (playwright-core driving the distribution's
//! Chromium) logs in, reads the tree, crashes the conversation through the console and
//! waits for its supervisor's restart count to go up, and looks at the hot-actor and
//! cluster panels. Screenshots of each screen land in `target/browser-artifacts/`.
//!
//! Chromium (Debian's `chromium`) and the script's npm dependencies come from
//! `scripts/install-deps.sh`; without them this test fails and says so (it never skips).

mod common;

use std::time::Duration;

use common::browser::{artifacts_dir, require_tools, run_to_end, script};
use common::{ADMIN_TOKEN, Kind, Pair, TestServer, pair, send_all};

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

    let artifacts = artifacts_dir();
    let child = script(&node, &chromium, "console.mjs")
        .env("SWITCHBOARD_CONSOLE_URL", format!("http://{}/admin/ui/", server.admin))
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHBOARD_CONVERSATION_ID", conversation.to_string())
        .spawn()
        .expect("run node");
    let (status, report) = run_to_end(child, Duration::from_secs(120)).await;
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
