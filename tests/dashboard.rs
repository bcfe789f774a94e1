//! The Grafana dashboard (`cluster/grafana-dashboard.json`) cannot rot: it is an
//! importable dashboard (its datasource an input, every panel on it), and every metric
//! its queries name is one a live server exports at `/metrics` after some traffic (a
//! renamed or removed metric fails this test, not an operator's dashboard).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Kind, Pair, TestServer, online, pair, send_all};

fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).expect("read the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every query of the dashboard: panel targets (rows' panels too) and template variables.
fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn panels(list: &serde_json::Value, out: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.extend(target["expr"].as_str().map(str::to_owned));
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        out.extend(variable["query"].as_str().or_else(|| variable["query"]["query"].as_str()).map(str::to_owned));
    }
    out
}

/// The `switchboard_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("switchboard_"))
        .map(str::to_owned)
        .collect()
}

/// Series names of a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_is_importable_with_its_datasource_as_an_input() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"), "no DS_PROMETHEUS input");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()) && d["title"].as_str().is_some(), "uid and title");
    let mut ids = BTreeSet::new();
    let mut targets = 0;
    for panel in d["panels"].as_array().expect("panels") {
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "duplicate panel id {}", panel["id"]);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {} is not on the input datasource", panel["title"]);
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "a target of {}", panel["title"]);
            assert!(target["refId"].as_str().is_some(), "a target of {} has no refId", panel["title"]);
            targets += 1;
        }
    }
    assert!(targets >= 10, "only {targets} queries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported_by_the_server() {
    let wanted: BTreeSet<String> = queries(&dashboard()).iter().flat_map(|q| metric_names(q)).collect();
    assert!(wanted.len() >= 10, "the dashboard names only {wanted:?}");

    // Traffic that touches every part the dashboard shows: logins and catch-up, sends
    // stored and delivered, a session that ends, a crashed and restarted conversation.
    let server = TestServer::start();
    let Pair { mut a, conversation, bob, .. } = pair(&server, Kind::Tcp).await;
    let b = online(&server, Kind::Ws, &bob).await;
    send_all(&mut a, conversation, 1..=3, "dash").await;
    drop(b);
    let http = reqwest::Client::new();
    let crash =
        http.post(format!("http://{}/admin/conversations/{conversation}/crash", server.admin)).bearer_auth(ADMIN_TOKEN).send().await.expect("crash");
    assert_eq!(crash.status().as_u16(), 202);

    // Some series appear a moment later (a session's end, the restart): scrape until all
    // are there or the deadline says which are not.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = http.get(format!("http://{}/metrics", server.http)).send().await.expect("scrape").text().await.expect("metrics text");
        let have = exported(&text);
        let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains(*m)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the dashboard queries metrics the server does not export: {missing:?}\n/metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = metric_names(r#"sum by (instance) (rate(switchboard_a_total{instance=~"$instance"}[1m])) / up + switchboard_b:x"#);
    assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["switchboard_a_total".to_string(), "switchboard_b:x".to_string()]);
    let have = exported("# TYPE switchboard_x counter\nswitchboard_x 3\nswitchboard_y{a=\"b\"} 1\n\n");
    assert_eq!(have.into_iter().collect::<Vec<_>>(), vec!["switchboard_x".to_string(), "switchboard_y".to_string()]);
}
