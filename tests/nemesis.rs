//! A short nemesis run in the suite: about 75 s of 1:1 and group traffic on a local
//! three-node cluster with nodes SIGKILLed and frozen and Redis and PostgreSQL restarted,
//! then the checker (`switchboard::testkit::nemesis`). Longer runs: scripts/nemesis.sh.
//! `SWITCHBOARD_NEMESIS_SECS` and `SWITCHBOARD_NEMESIS_SEED` override the length and the
//! seed (the seed of a failed run is in its report, to replay the fault schedule).

use std::time::Duration;

use switchboard::testkit::nemesis::{NemesisConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_killed_and_frozen_nodes_and_restarted_stores() {
    let secs = std::env::var("SWITCHBOARD_NEMESIS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(75);
    let seed = std::env::var("SWITCHBOARD_NEMESIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let dir = tempfile::tempdir().expect("dir");
    let config = NemesisConfig {
        binary: env!("CARGO_BIN_EXE_switchboard").into(),
        dir: dir.path().to_owned(),
        duration: Duration::from_secs(secs),
        seed,
        fault_every: Duration::from_secs(6),
    };
    let report = run(config).await.expect("the nemesis ran");
    eprintln!("{}", serde_json::to_string_pretty(&report).expect("json"));
    assert!(report.acked > 100, "too little traffic to mean anything: {report:?}");
    assert!(report.faults.values().sum::<u64>() >= secs / 12, "too few faults: {report:?}");
    if !report.violations.is_empty() {
        // The nodes' logs, for the report.
        for node in ["node1", "node2", "node3"] {
            let log = std::fs::read_to_string(dir.path().join(node).join("node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("== {node} (last lines)\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        panic!("seed {}: {} violation(s):\n{}", report.seed, report.violations.len(), report.violations.join("\n"));
    }
}
