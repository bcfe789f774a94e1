//! `bench cross-node`: the same 1:1 traffic on one node and on a two-node cluster.

use std::time::{Duration, Instant};

use super::server::{BENCH_ADMIN_TOKEN, ServerProcess, provision_bulk};
use super::traffic::{self, Plan, TrafficReport, TrafficSpec};
use super::{LoadError, Measured};
use crate::accounts::DeviceCredentials;
use crate::client::Transport;

/// `bench cross-node`: the same 1:1 traffic on one node and on a two-node cluster, in one
/// run, each on a fresh database of one private PostgreSQL (the cluster also gets a
/// private Redis).
#[derive(Debug, serde::Serialize)]
pub struct CrossNodeReport {
    /// One node; device i sends to device i+1.
    pub single_node: TrafficReport,
    /// Two nodes; device i on node i % 2 sends to device i+1, on the other node.
    pub two_nodes: TrafficReport,
}

/// Runs [`CrossNodeReport`].
pub async fn cross_node(
    binary: &std::path::Path,
    extra: &[String],
    users: usize,
    rate: u64,
    duration: Duration,
    payload_bytes: usize,
    progress: impl Fn(&str) + Send + Sync + 'static,
) -> Result<CrossNodeReport, LoadError> {
    let users = users.max(2) & !1;
    let pg = crate::testkit::PrivatePostgres::start().map_err(|e| LoadError::Server(e.to_string()))?;
    let redis = crate::testkit::PrivateRedis::start().map_err(|e| LoadError::Server(e.to_string()))?;
    let database = |name: &'static str| {
        let pg = &pg;
        async move { pg.create_database(name).await.map(|url| format!("{url}?pool_size=8")).map_err(|e| LoadError::Server(e.to_string())) }
    };

    progress("single node");
    let single_store = database("single").await?;
    let single = ServerProcess::start_with_store(binary, extra, &single_store, tempfile::tempdir()?)?;
    let credentials = provision_bulk(&single, users, |_| {}).await?;
    let single_node = across(&[&single], &credentials, rate, duration, payload_bytes).await?;
    drop(single);

    progress("two nodes");
    let cluster_store = database("cluster").await?;
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port())).collect::<Result<_, _>>()?;
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut args = extra.to_vec();
        args.extend([
            "--node-name".to_owned(),
            format!("bench{i}"),
            "--cluster-listen".to_owned(),
            format!("127.0.0.1:{}", ports[i]),
            "--seeds".to_owned(),
            format!("127.0.0.1:{}", ports[1 - i]),
            "--cookie".to_owned(),
            "bench".to_owned(),
            "--redis".to_owned(),
            redis.url(),
        ]);
        nodes.push(ServerProcess::start_with_store(binary, &args, &cluster_store, tempfile::tempdir()?)?);
    }
    wait_for_members(&nodes, 2).await?;
    let credentials = provision_bulk(&nodes[0], users, |_| {}).await?;
    let refs: Vec<&ServerProcess> = nodes.iter().collect();
    let two_nodes = across(&refs, &credentials, rate, duration, payload_bytes).await?;
    Ok(CrossNodeReport { single_node, two_nodes })
}

/// Waits until every node sees `n` members.
async fn wait_for_members(nodes: &[ServerProcess], n: usize) -> Result<(), LoadError> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut agreed = true;
        for node in nodes {
            let report: Option<crate::cluster::ClusterReport> = async {
                client.get(format!("http://{}/admin/cluster", node.admin)).bearer_auth(BENCH_ADMIN_TOKEN).send().await.ok()?.json().await.ok()
            }
            .await;
            agreed &= report.is_some_and(|r| r.members.len() == n);
        }
        if agreed {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LoadError::Server("cluster did not form within 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Device `i` connected to node `i % nodes` sends to device `i + 1` (with two nodes and an
/// even count, every pair's ends are on different nodes). Each conversation's sequencer
/// is wherever placement puts it, so with two nodes every message crosses exactly one node
/// boundary on its way (sender → owner, or owner → recipient) and its ack or receipts cross
/// back, as in production.
async fn across(
    servers: &[&ServerProcess],
    credentials: &[DeviceCredentials],
    rate: u64,
    duration: Duration,
    payload_bytes: usize,
) -> Result<TrafficReport, LoadError> {
    let transports: Vec<Transport> = servers.iter().map(|s| s.transport()).collect();
    let mut conns = traffic::connect_all(&transports, credentials, 64).await?;
    let plan = Plan::ring_in_order(credentials);
    traffic::open_directs(&mut conns, &plan.opens).await?;
    let targets: Vec<&dyn Measured> = servers.iter().map(|s| *s as &dyn Measured).collect();
    let scenario = if servers.len() > 1 { "direct_across_nodes" } else { "direct_one_node" };
    let spec = TrafficSpec { rate, duration, payload_bytes, acks: true, drain: Duration::from_secs(5) };
    traffic::run(&targets, scenario, "switchboard", conns, &plan, spec, |_, _| {}).await
}
