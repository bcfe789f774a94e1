//! Multi-process cluster tests: three (or more) `switchboard serve` processes on
//! 127.0.0.1 sharing one private PostgreSQL and one private Redis, all started here.
//!
//! What they check is what an operator of a messaging cluster cares about: delivery and
//! receipts across nodes, no acknowledged message lost and no seq gap when a node is
//! SIGKILLed, a node added or drained, every node restarted in turn, Redis restarted, and
//! two sequencers forced to coexist (fenced by the store).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, TestServer, WAIT, caught_up, phone};
use switchboard::accounts::DeviceCredentials;
use switchboard::client::{ClientError, Connection, HttpApi, Transport};
use switchboard::protocol::{ErrorCode, pb, server_frame};
use switchboard::testkit::{PrivatePostgres, PrivateRedis};
use uuid::Uuid;

const COOKIE: &str = "cluster-test-cookie";

/// A private cluster: its store, its Redis and its nodes.
struct TestCluster {
    nodes: Vec<Option<TestServer>>,
    ports: Vec<u16>,
    store: String,
    redis: PrivateRedis,
    _pg: PrivatePostgres,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("probe port").local_addr().expect("addr").port()
}

impl TestCluster {
    /// `n` nodes named n0, n1, …; each lists every other as a seed.
    async fn start(n: usize) -> Self {
        let pg = PrivatePostgres::start().expect("private postgres");
        let store = pg.create_database("cluster").await.expect("database");
        let redis = PrivateRedis::start().expect("private redis");
        let mut cluster = Self { nodes: Vec::new(), ports: (0..n).map(|_| free_port()).collect(), store, redis, _pg: pg };
        // The first node migrates the schema; the others start alongside it.
        for i in 0..n {
            let node = cluster.launch(i);
            cluster.nodes.push(Some(node));
        }
        cluster.wait_members(n).await;
        cluster
    }

    fn args(&self, i: usize) -> Vec<String> {
        let seeds: Vec<String> = self.ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| format!("127.0.0.1:{p}")).collect();
        vec![
            "--node-name".into(),
            format!("n{i}"),
            "--cluster-listen".into(),
            format!("127.0.0.1:{}", self.ports[i]),
            "--seeds".into(),
            seeds.join(","),
            "--cookie".into(),
            COOKIE.into(),
            "--redis".into(),
            self.redis.url(),
            "--cluster-heartbeat-ms".into(),
            "200".into(),
            "--cluster-dead-after-ms".into(),
            "1500".into(),
            "--drain-spread-secs".into(),
            "1".into(),
        ]
    }

    fn launch(&self, i: usize) -> TestServer {
        let args = self.args(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        TestServer::start_on(&self.store, &args)
    }

    /// Adds one more node (it seeds from all the others).
    async fn add_node(&mut self) -> usize {
        self.ports.push(free_port());
        let i = self.ports.len() - 1;
        let node = self.launch(i);
        self.nodes.push(Some(node));
        i
    }

    fn node(&self, i: usize) -> &TestServer {
        self.nodes[i].as_ref().expect("node running")
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].is_some()).collect()
    }

    /// Every node's TCP address, in node order (stopped nodes keep their last address, so
    /// a reconnecting client tries it and moves on).
    fn transports(&self) -> Vec<Transport> {
        self.nodes.iter().flatten().map(|n| Transport::Tcp(n.tcp)).collect()
    }

    fn api(&self) -> HttpApi {
        self.node(self.live()[0]).api()
    }

    async fn report(&self, i: usize) -> Option<switchboard::cluster::ClusterReport> {
        let response = reqwest::Client::new()
            .get(format!("http://{}/admin/cluster", self.node(i).admin))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Waits until every live node sees exactly the live nodes as members.
    async fn wait_members(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let expected: Vec<String> = self.live().iter().map(|i| format!("n{i}")).collect();
        assert_eq!(expected.len(), n);
        loop {
            let mut agreed = true;
            for i in self.live() {
                let members = self.report(i).await.map(|r| r.members).unwrap_or_default();
                agreed &= members == expected;
            }
            if agreed {
                return;
            }
            assert!(Instant::now() < deadline, "nodes did not agree on members {expected:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn sign_up(api: &HttpApi) -> DeviceCredentials {
    api.sign_up(&phone(), "phone").await.expect("sign up")
}

async fn online_at(transport: &Transport, creds: &DeviceCredentials) -> Connection {
    let (mut conn, _) = Connection::open(transport, &creds.token).await.expect("connect");
    caught_up(&mut conn).await;
    conn
}

/// Asks the server whether `user` is online.
async fn presence(conn: &mut Connection, user: Uuid) -> bool {
    let request_id = rand::random::<u64>();
    let frame = pb::PresenceQuery { request_id, user_ids: vec![switchboard::protocol::id_bytes(user)] };
    conn.send(switchboard::protocol::client_frame::Kind::PresenceQuery(frame)).await.expect("query");
    conn.wait_for(WAIT, true, |k| match k {
        server_frame::Kind::Presence(p) if p.request_id == request_id => Some(p.online),
        _ => None,
    })
    .await
    .expect("presence answer")
}

fn is_conversation(id: &[u8], conversation: Uuid) -> bool {
    id == conversation.as_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_receipts_and_presence_cross_nodes() {
    let cluster = TestCluster::start(3).await;
    let t = cluster.transports();
    let api = cluster.api();
    let (alice, bob, carol) = (sign_up(&api).await, sign_up(&api).await, sign_up(&api).await);
    let mut a = online_at(&t[0], &alice).await;
    let mut b = online_at(&t[1], &bob).await;
    let mut c = online_at(&t[2], &carol).await;

    // 1:1 across nodes, both directions, with delivered and read receipts.
    let direct = a.open_direct(bob.user_id).await.expect("open direct");
    for i in 1..=20u64 {
        let ack = a.send_and_ack(direct, &format!("a-{i}"), format!("hello {i}").into_bytes()).await.expect("ack");
        assert_eq!(ack.seq, i);
    }
    for i in 1..=20u64 {
        let m = b.next_message(WAIT).await.expect("delivered on bob's node");
        assert_eq!((m.seq, m.payload.as_ref()), (i, format!("hello {i}").as_bytes()));
    }
    b.read(direct, 20).await.expect("read");
    let receipt = a
        .wait_for(WAIT, true, |k| match k {
            server_frame::Kind::Receipt(r) if r.kind == pb::ReceiptKind::Read as i32 => Some(r.clone()),
            _ => None,
        })
        .await
        .expect("read receipt back on alice's node");
    assert_eq!((receipt.up_to_seq, receipt.user_id.as_ref()), (20, bob.user_id.as_bytes().as_slice()));
    let ack = b.send_and_ack(direct, "b-1", b"hi back".to_vec()).await.expect("bob's ack");
    assert_eq!(ack.seq, 21);
    assert_eq!(a.next_message(WAIT).await.expect("alice gets bob's reply").seq, 21);

    // A group spread over the three nodes: one delivery per member, receipts coalesced.
    let group = a.create_group("trio", &[bob.user_id, carol.user_id]).await.expect("group");
    for conn in [&mut b, &mut c] {
        let created = conn.next_message(WAIT).await.expect("creation event");
        assert!(is_conversation(&created.conversation_id, group));
    }
    let ack = a.send_and_ack(group, "g-1", b"to all".to_vec()).await.expect("group ack");
    for conn in [&mut b, &mut c] {
        let m = conn.next_message(WAIT).await.expect("group message on every node");
        assert_eq!((m.seq, m.payload.as_ref()), (ack.seq, b"to all".as_slice()));
    }
    c.read(group, ack.seq).await.expect("carol reads");
    let summary = a
        .wait_for(WAIT, true, |k| match k {
            server_frame::Kind::ReceiptSummary(s) if s.read >= 1 => Some(s.clone()),
            _ => None,
        })
        .await
        .expect("coalesced receipt from another node");
    assert_eq!(summary.seq, ack.seq);

    // Presence is cluster-wide: bob (node 1) sees carol (node 2) online, then offline.
    assert!(presence(&mut b, carol.user_id).await, "carol, on another node, is online");
    c.bye().await.expect("bye");
    let deadline = Instant::now() + WAIT;
    while presence(&mut b, carol.user_id).await {
        assert!(Instant::now() < deadline, "carol still online after leaving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Operators: any node shows the cluster, and the tree of any node.
    let report = cluster.report(0).await.expect("cluster report");
    assert_eq!(report.members, ["n0", "n1", "n2"]);
    assert_eq!(report.nodes.len(), 3);
    assert!(report.redis.as_ref().is_some_and(|r| r.ok), "redis healthy: {:?}", report.redis);
    let tree: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/admin/tree?node=n2", cluster.node(0).admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("tree through n0")
        .json()
        .await
        .expect("json");
    assert!(tree.to_string().contains("cluster-router"), "n2's tree: {tree}");
}
