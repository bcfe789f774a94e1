//! The SRE console end to end in headless Chromium: a private server with some traffic,
//! then `node tests/browser/console.mjs` (playwright-core driving the distribution's
//! Chromium) logs in, reads the tree (a supervisor of more than 20 sessions lists 20 and
//! counts the rest), sees a conversation and a session opened meanwhile counted without a
//! click (auto refresh), crashes the conversation through the console and waits for its
//! supervisor's restart count to go up, and looks at the hot-actor panel (under a load of
//! pipelined sends, an actor with messages waiting is among the deepest mailboxes) and
//! the cluster panel. Screenshots of each screen land in `target/browser-artifacts/`
//! (this run's: the earlier ones are removed first).
//!
//! Chromium (Debian's `chromium`) and the script's npm dependencies come from
//! `scripts/install-deps.sh`; without them this test fails and says so (it never skips).

mod common;

use std::time::Duration;

use common::browser::{fresh_artifacts, require_tools, run_to_end, script};
use common::{ADMIN_TOKEN, Kind, Pair, TestServer, online, pair, send_all, user};
use switchboard::client::Connection;

/// How many more devices the test keeps connected: with Alice's and the loader's, more
/// sessions than the 20 children the admin tree lists per actor.
const MORE_SESSIONS: usize = 21;

/// Devices sending load (bursts of `BURST` messages, pipelined) while the console runs.
const LOADERS: usize = 2;
const BURST: u64 = 500;

/// `GET /admin/hot`.
async fn hot(server: &TestServer) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("http://{}/admin/hot", server.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin hot")
        .json()
        .await
        .expect("hot json")
}

/// The supervisor's restart count in the admin tree.
fn restarts(tree: &serde_json::Value) -> u64 {
    tree["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "conversation-supervisor"))
        .and_then(|s| s["restarts"].as_u64())
        .expect("conversation-supervisor with restarts in the tree")
}

/// The screenshots the script must save (`console-<screen>.png`).
const SCREENS: [&str; 7] = ["1-login", "2-tree", "3-crash-confirmation", "4-tree-after-crash", "5-hot-actors", "6-cluster", "7-drain-confirmation"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_tree_and_a_conversation_crashed_through_it_comes_back() {
    let (chromium, node) = require_tools();
    // Silent connections are kept for 3 minutes, and the load below is not rate limited.
    let server =
        TestServer::start_with(&["--heartbeat-secs", "60", "--rate-per-sec", "1000000", "--rate-burst", "1000000", "--user-rate-per-sec", "1000000"]);
    let Pair { mut a, conversation, .. } = pair(&server, Kind::Tcp).await;
    send_all(&mut a, conversation, 1..=5, "before").await;
    let api = server.api();
    let mut connected = Vec::new();
    for _ in 0..MORE_SESSIONS {
        connected.push(online(&server, Kind::Tcp, &user(&api).await).await);
    }
    // Load that queues messages in mailboxes: devices that send bursts of messages without
    // waiting for their acks, until the test ends. Seen in `GET /admin/hot` here first.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loaders = Vec::new();
    for _ in 0..LOADERS {
        let (stop, loader, peer) = (stop.clone(), user(&api).await, user(&api).await);
        let mut l = online(&server, Kind::Tcp, &loader).await;
        loaders.push(tokio::spawn(async move {
            let c = l.open_direct(peer.user_id).await.expect("open direct");
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let first = seq + 1;
                seq += BURST;
                send_all(&mut l, c, first..=seq, "load").await;
            }
            l
        }));
    }
    let (mut samples, mut hits, mut names) = (0, 0, std::collections::BTreeSet::new());
    while samples < 40 || hits == 0 {
        assert!(samples < 300, "no mailbox had messages waiting under load in {samples} samples");
        let report = hot(&server).await;
        samples += 1;
        let waiting: Vec<_> = report["deepest"].as_array().into_iter().flatten().filter(|a| a["mailbox"].as_u64() > Some(0)).collect();
        if !waiting.is_empty() {
            hits += 1;
            names.extend(waiting.iter().filter_map(|a| a["name"].as_str().map(|n| n.split(' ').next().unwrap_or(n).to_owned())));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("under load, {hits} of {samples} samples of GET /admin/hot had a mailbox with messages waiting ({names:?})");
    let before = restarts(&server.admin_tree().await);

    // A conversation opened while the console is showing (after the script says it read
    // the counts: it creates the file), by a device of its own.
    let work = tempfile::tempdir().expect("work dir");
    let signal = work.path().join("counted");
    let later = {
        let (signal, server_transport) = (signal.clone(), server.transport(Kind::Tcp));
        let (newcomer, peer) = (user(&api).await, user(&api).await);
        tokio::spawn(async move {
            while !signal.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (mut n, _) = Connection::open(&server_transport, &newcomer.token).await.expect("connect");
            common::caught_up(&mut n).await;
            let c = n.open_direct(peer.user_id).await.expect("open direct");
            send_all(&mut n, c, 1..=1, "new").await;
            n
        })
    };

    let artifacts = fresh_artifacts("console", &SCREENS);
    let child = script(&node, &chromium, "console.mjs")
        .env("SWITCHBOARD_CONSOLE_URL", format!("http://{}/admin/ui/", server.admin))
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHBOARD_CONVERSATION_ID", conversation.to_string())
        .env("SWITCHBOARD_SIGNAL_FILE", &signal)
        .spawn()
        .expect("run node");
    let (status, report) = run_to_end(child, Duration::from_secs(120)).await;
    assert!(status.success(), "the console test failed ({status}); screenshots in {}:\n{report}", artifacts.display());
    assert!(report.contains("console test passed"), "the script did not finish:\n{report}");
    let _newcomer = later.await.expect("the conversation opened during the run");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for loader in loaders {
        let _ = loader.await.expect("the load");
    }
    drop(connected);
    for screen in SCREENS {
        let shot = artifacts.join(format!("console-{screen}.png"));
        assert!(shot.metadata().is_ok_and(|m| m.len() > 1000), "no screenshot {}", shot.display());
    }

    // What the page showed is what happened: one more restart, and nothing lost.
    assert!(restarts(&server.admin_tree().await) > before, "the server saw no restart");
    assert!(server.log().contains("crash requested"), "the crash did not reach the conversation");
    let ack = a.send_and_ack(conversation, "after", &b"y"[..]).await.expect("send after the crash");
    assert_eq!(ack.seq, 6, "the restarted conversation continues at the next seq");
}
