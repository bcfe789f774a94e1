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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, TestServer, WAIT, caught_up, phone};
use switchboard::accounts::DeviceCredentials;
use switchboard::client::{Connection, HttpApi, Roaming, Transport};
use switchboard::ids::{ConversationId, UserId};
use switchboard::protocol::{pb, server_frame};
use switchboard::testkit::{PrivatePostgres, PrivateRedis};

const COOKIE: &str = "cluster-test-cookie";

/// A private cluster: its store, its Redis and its nodes.
struct TestCluster {
    nodes: Vec<Option<TestServer>>,
    /// Per node: cluster, TCP, HTTP and admin ports, fixed so that a restarted node comes
    /// back on the same addresses (as behind a load balancer).
    ports: Vec<[u16; 4]>,
    store: String,
    redis: PrivateRedis,
    /// Flags every node gets on top of the cluster's own.
    extra: Vec<String>,
    _pg: PrivatePostgres,
}

fn node_ports() -> [u16; 4] {
    [free_port(), free_port(), free_port(), free_port()]
}

/// A port for a node to listen on, fixed before the node starts (seeds name it, and a
/// restarted node comes back on it). Chosen below Linux's ephemeral range (32768 and up):
/// a port the kernel picked for us could be handed out again at once as the source port
/// of some outgoing connection before the node binds it. Never the same twice in a run.
/// Tests run in parallel processes, so a port is also reserved across processes: by an
/// exclusive lock on a file named after it, held until this process exits.
fn free_port() -> u16 {
    use std::os::fd::AsRawFd;
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("switchboard-test-ports");
    std::fs::create_dir_all(&dir).expect("port lock directory");
    loop {
        let port: u16 = rand::random_range(20_000..32_000);
        let Ok(file) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string())) else { continue };
        // SAFETY: flock on a file descriptor we own; LOCK_NB never blocks.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(|p| p.into_inner()).push(file);
            return port;
        }
    }
}

/// `n` consecutive ports, all reserved as [`free_port`] does; returns the first.
fn free_ports(n: u16) -> u16 {
    loop {
        let base = free_port();
        if base > 32_000 - n {
            continue;
        }
        // Each further port is locked too; a taken one means another base (the locks
        // already taken stay held: they are only skipped).
        if (1..n).all(|k| reserve_port(base + k)) {
            return base;
        }
    }
}

/// Reserves one given port (see [`free_port`]); false if it is taken.
fn reserve_port(port: u16) -> bool {
    use std::os::fd::AsRawFd;
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("switchboard-test-ports");
    let Ok(file) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string())) else { return false };
    // SAFETY: flock on a file descriptor we own; LOCK_NB never blocks.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        return false;
    }
    HELD.lock().unwrap_or_else(|p| p.into_inner()).push(file);
    true
}

impl TestCluster {
    /// `n` nodes named n0, n1, …; each lists every other as a seed.
    async fn start(n: usize) -> Self {
        Self::start_with(n, &[]).await
    }

    /// The same, every node also given `extra` flags.
    async fn start_with(n: usize, extra: &[&str]) -> Self {
        let pg = PrivatePostgres::start().expect("private postgres");
        let store = pg.create_database("cluster").await.expect("database");
        let redis = PrivateRedis::start().expect("private redis");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let mut cluster = Self { nodes: Vec::new(), ports: (0..n).map(|_| node_ports()).collect(), store, redis, extra, _pg: pg };
        // The first node migrates the schema; the others start alongside it.
        for i in 0..n {
            let node = cluster.launch(i);
            cluster.nodes.push(Some(node));
        }
        cluster.wait_members(n).await;
        cluster
    }

    fn args(&self, i: usize) -> Vec<String> {
        let seeds: Vec<String> = self.ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| format!("127.0.0.1:{}", p[0])).collect();
        let [cluster, tcp, http, admin] = self.ports[i];
        let defaults = [
            ("--node-name", format!("n{i}")),
            ("--cluster-listen", format!("127.0.0.1:{cluster}")),
            ("--tcp-listen", format!("127.0.0.1:{tcp}")),
            ("--http-listen", format!("127.0.0.1:{http}")),
            ("--admin-listen", format!("127.0.0.1:{admin}")),
            ("--seeds", seeds.join(",")),
            ("--cookie", COOKIE.into()),
            ("--redis", self.redis.url()),
            ("--cluster-heartbeat-ms", "200".into()),
            ("--cluster-dead-after-ms", "1500".into()),
            ("--drain-spread-secs", "1".into()),
        ];
        // A flag given in `extra` replaces its default (the server refuses a flag twice).
        defaults
            .into_iter()
            .filter(|(flag, _)| !self.extra.iter().any(|e| e == flag))
            .flat_map(|(flag, value)| [flag.to_owned(), value])
            .chain(self.extra.iter().cloned())
            .collect()
    }

    fn launch(&self, i: usize) -> TestServer {
        let args = self.args(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        TestServer::start_on(&self.store, &args)
    }

    /// Adds one more node (it seeds from all the others).
    async fn add_node(&mut self) -> usize {
        self.ports.push(node_ports());
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

    /// Every node's TCP address, in node order (a stopped node's too: a reconnecting
    /// client tries it and moves on, and finds it again once it is back).
    fn transports(&self) -> Vec<Transport> {
        self.ports.iter().map(|p| Transport::Tcp(([127, 0, 0, 1], p[1]).into())).collect()
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
            if Instant::now() > deadline {
                let mut views = Vec::new();
                for i in self.live() {
                    views.push(format!(
                        "n{i}: {:?}",
                        self.report(i).await.map(|r| (r.members, r.nodes.into_iter().map(|n| (n.name, n.status, n.draining)).collect::<Vec<_>>()))
                    ));
                }
                let logs: Vec<String> = self
                    .live()
                    .iter()
                    .map(|i| format!("== n{i}\n{}", self.node(*i).log().lines().filter(|l| l.contains("cluster")).collect::<Vec<_>>().join("\n")))
                    .collect();
                panic!("nodes did not agree on members {expected:?}:\n{}\n{}", views.join("\n"), logs.join("\n"));
            }
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
async fn presence(conn: &mut Connection, user: UserId) -> bool {
    presence_of(conn, user).await.online
}

/// Asks the server for `user`'s presence (online, last seen).
async fn presence_of(conn: &mut Connection, user: UserId) -> pb::Presence {
    let request_id = rand::random::<u64>();
    let frame = pb::PresenceQuery { request_id, user_ids: vec![switchboard::protocol::id_bytes(user)] };
    conn.send(switchboard::protocol::client_frame::Kind::PresenceQuery(frame)).await.expect("query");
    conn.wait_for(WAIT, true, |k| match k {
        server_frame::Kind::Presence(p) if p.request_id == request_id => Some(p.clone()),
        _ => None,
    })
    .await
    .expect("presence answer")
}

/// Waits for the presence change (not a query's answer) of `user` that says `online`.
async fn presence_change(conn: &mut Connection, user: UserId, online: bool, wait: Duration) -> pb::Presence {
    let id = switchboard::protocol::id_bytes(user);
    conn.wait_for(wait, true, |k| match k {
        server_frame::Kind::Presence(p) if p.request_id == 0 && p.user_id == id && p.online == online => Some(p.clone()),
        _ => None,
    })
    .await
    .unwrap_or_else(|e| panic!("no presence change online={online}: {e}"))
}

fn is_conversation(id: &[u8], conversation: ConversationId) -> bool {
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

// ---- traffic with roaming devices ------------------------------------------------------

/// client_msg_id → the seq its ack carried.
type Acked = BTreeMap<String, u64>;

/// Sends `count` messages `prefix-k`, round-robin over `conversations`, each until it is
/// acknowledged (reconnecting to another node whenever its node goes away).
async fn send_traffic(
    mut device: Roaming,
    conversations: Vec<ConversationId>,
    prefix: String,
    count: usize,
    pace: Duration,
    progress: Arc<AtomicUsize>,
) -> (HashMap<ConversationId, Acked>, u64) {
    let mut acked: HashMap<ConversationId, Acked> = HashMap::new();
    for k in 0..count {
        let conversation = conversations[k % conversations.len()];
        let id = format!("{prefix}-{k}");
        let ack = device.send_until_acked(conversation, &id, format!("payload {id}").into_bytes().into()).await.expect("acknowledged eventually");
        assert!(is_conversation(&ack.conversation_id, conversation));
        acked.entry(conversation).or_default().insert(id, ack.seq);
        progress.fetch_add(1, Ordering::SeqCst);
        // Receipts and echoes pile up on a sender that never reads them.
        device.conn().discard_buffered();
        tokio::time::sleep(pace).await;
    }
    (acked, device.reconnects)
}

/// Receives `conversations` (acknowledging each message, so a reconnection resumes from
/// the cursor) until it holds every seq up to the target `done` announces. Returns, per
/// conversation, the distinct seqs received and how many arrived more than once.
async fn receive_traffic(
    mut device: Roaming,
    conversations: Vec<ConversationId>,
    done: tokio::sync::watch::Receiver<Option<HashMap<ConversationId, u64>>>,
) -> HashMap<ConversationId, (std::collections::BTreeSet<u64>, usize)> {
    let mut got: HashMap<ConversationId, (std::collections::BTreeSet<u64>, usize)> = conversations.iter().map(|c| (*c, Default::default())).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(targets) = done.borrow().clone()
            && conversations.iter().all(|c| got[c].0.len() as u64 >= targets[c])
        {
            return got;
        }
        assert!(Instant::now() < deadline, "receiver did not get everything: {:?}", got.iter().map(|(c, (s, _))| (c, s.len())).collect::<Vec<_>>());
        if let Some(server_frame::Kind::Message(m)) = device.next_frame(Duration::from_millis(300)).await.expect("reconnects") {
            let Ok(conversation) = switchboard::protocol::parse_id::<ConversationId>("conversation_id", &m.conversation_id) else { continue };
            if let Some((seqs, duplicates)) = got.get_mut(&conversation) {
                if !seqs.insert(m.seq) {
                    *duplicates += 1;
                }
                let _ = device.conn().ack(conversation, m.seq).await;
            }
        }
    }
}

/// Reads a conversation's whole log (newest first, in pages) through `conn`.
async fn read_log(conn: &mut Connection, conversation: ConversationId) -> BTreeMap<u64, pb::Message> {
    let mut log = BTreeMap::new();
    let mut before = 0;
    loop {
        let page = conn.history(conversation, before, 200).await.expect("history page");
        for m in &page.messages {
            assert!(log.insert(m.seq, m.clone()).is_none(), "seq {} listed twice", m.seq);
        }
        match page.messages.last() {
            Some(oldest) if page.has_more => before = oldest.seq,
            _ => return log,
        }
    }
}

/// The log holds every acknowledged message at the seq its ack named, seqs run from 1
/// without a gap, and no client_msg_id is stored twice. Returns the last seq.
fn check_log(log: &BTreeMap<u64, pb::Message>, acked: &[&Acked]) -> u64 {
    let last = log.keys().next_back().copied().unwrap_or(0);
    assert_eq!(log.keys().copied().collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>(), "the log has a gap");
    let mut ids = std::collections::HashSet::new();
    for m in log.values().filter(|m| !m.client_msg_id.is_empty()) {
        assert!(ids.insert((m.sender_device_id.clone(), m.client_msg_id.clone())), "{} stored twice", m.client_msg_id);
    }
    for (id, seq) in acked.iter().flat_map(|a| a.iter()) {
        let stored = log.get(seq).unwrap_or_else(|| panic!("acknowledged {id} at seq {seq} is not in the log"));
        assert_eq!(&stored.client_msg_id, id, "seq {seq} holds another message than the one acknowledged");
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_traffic_loses_no_acknowledged_message() {
    let mut cluster = TestCluster::start(3).await;
    let t = cluster.transports();
    let api = cluster.api();
    // Three senders and three receivers, one of each on every node; each pair has a 1:1
    // conversation whose two ends are on different nodes, and all six share a group.
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..3 {
        senders.push(sign_up(&api).await);
        receivers.push(sign_up(&api).await);
    }
    let mut setup = online_at(&t[0], &senders[0]).await;
    let members: Vec<UserId> = senders.iter().chain(&receivers).map(|c| c.user_id).filter(|u| *u != senders[0].user_id).collect();
    let group = setup.create_group("all", &members).await.expect("group");
    let mut directs = Vec::new();
    for i in 0..3 {
        let mut conn = online_at(&t[i], &senders[i]).await;
        directs.push(conn.open_direct(receivers[i].user_id).await.expect("direct"));
    }
    drop(setup);

    let progress = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(None);
    let mut receiving = Vec::new();
    for i in 0..3 {
        let device = Roaming::connect(t.clone(), &receivers[i].token, (i + 1) % 3).await.expect("receiver online");
        receiving.push(tokio::spawn(receive_traffic(device, vec![directs[i], group], done_rx.clone())));
    }
    let mut sending = Vec::new();
    for i in 0..3 {
        let device = Roaming::connect(t.clone(), &senders[i].token, i).await.expect("sender online");
        let conversations = vec![directs[i], directs[i], group];
        sending.push(tokio::spawn(send_traffic(device, conversations, format!("s{i}"), 240, Duration::from_millis(5), progress.clone())));
    }

    // SIGKILL node 2 in the middle of the traffic.
    while progress.load(Ordering::SeqCst) < 240 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.nodes[2].as_mut().expect("n2").kill9();
    cluster.nodes[2] = None;

    let mut acked: Vec<HashMap<ConversationId, Acked>> = Vec::new();
    let mut reconnects = Vec::new();
    for s in sending {
        let (a, r) = s.await.expect("sender");
        acked.push(a);
        reconnects.push(r);
    }
    assert!(reconnects[2] >= 1, "the sender on the killed node never moved: {reconnects:?}");
    cluster.wait_members(2).await;

    // Every acknowledged message is in the log at its seq, without gaps or doubles.
    let mut targets = HashMap::new();
    for (i, direct) in directs.iter().enumerate() {
        let mut conn = online_at(&Transport::Tcp(cluster.node(0).tcp), &senders[i]).await;
        let log = read_log(&mut conn, *direct).await;
        targets.insert(*direct, check_log(&log, &[&acked[i][direct]]));
    }
    let mut reader = online_at(&Transport::Tcp(cluster.node(0).tcp), &senders[0]).await;
    let group_log = read_log(&mut reader, group).await;
    let group_acked: Vec<&Acked> = acked.iter().map(|a| &a[&group]).collect();
    targets.insert(group, check_log(&group_log, &group_acked));
    assert_eq!(targets[&group], 1 + 3 * 80, "creation event and every group message");

    // Every receiver ends up with every seq (after dedup by seq), whichever node it was on.
    done_tx.send(Some(targets.clone())).expect("receivers listening");
    for r in receiving {
        for (conversation, (seqs, _duplicates)) in r.await.expect("receiver") {
            assert_eq!(seqs, (1..=targets[&conversation]).collect(), "a receiver misses messages");
        }
    }
}

/// Dead rule of the test clusters (`--cluster-dead-after-ms`).
const DEAD_AFTER: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_devices_go_offline_for_their_peers_and_are_pushed_for_what_they_did_not_acknowledge() {
    let (url, mut pushes) = common::push_receiver(0).await;
    let sink = format!("webhook:{url}");
    let mut cluster = TestCluster::start_with(3, &["--push-sink", &sink, "--push-coalesce-ms", "200"]).await;
    let t = cluster.transports();
    let api = cluster.api();
    let (alice, bob, carol) = (sign_up(&api).await, sign_up(&api).await, sign_up(&api).await);
    api.set_push_token(&bob.token, "fcm", "bob-phone").await.expect("push token");
    // Bob (on n2) has a 1:1 with Alice (on n0) and one with Carol (on n1).
    let mut a = online_at(&t[0], &alice).await;
    let mut c = online_at(&t[1], &carol).await;
    let with_alice = a.open_direct(bob.user_id).await.expect("direct");
    c.open_direct(bob.user_id).await.expect("direct");
    let mut b = online_at(&t[2], &bob).await;
    // Both peers hear that Bob came online (so their nodes know where his device is).
    presence_change(&mut a, bob.user_id, true, WAIT).await;
    presence_change(&mut c, bob.user_id, true, WAIT).await;
    // Three messages reach Bob's device; it never acknowledges them.
    for i in 1..=3 {
        a.send_and_ack(with_alice, &format!("unacked-{i}"), b"hi".to_vec()).await.expect("ack");
    }
    for _ in 1..=3 {
        b.next_message(WAIT).await.expect("delivered to bob's device");
    }
    // n2's last word as each survivor heard it before the kill (Bob was connected then),
    // once its heartbeats count Bob's session.
    let mut alive_at = Vec::new();
    for i in [0, 1] {
        let deadline = Instant::now() + WAIT;
        let heard = loop {
            let report = cluster.report(i).await.expect("report");
            let n2 = report.nodes.iter().find(|n| n.name == "n2").expect("n2 in the report").clone();
            if n2.sessions == 1 {
                break n2.last_heard_at_ms;
            }
            assert!(Instant::now() < deadline, "n{i} never heard that n2 holds a session: {n2:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        alive_at.push(heard);
    }

    cluster.nodes[2].as_mut().expect("n2").kill9();
    let killed_at = switchboard::store::now_ms();
    let killed = Instant::now();
    cluster.nodes[2] = None;

    // Every surviving node tells its own peers of Bob, once the dead rule fired; last seen
    // is n2's last word (no later than the kill, no earlier than what that survivor heard
    // from n2 before it).
    for (i, (peer, conn)) in [("alice on n0", &mut a), ("carol on n1", &mut c)].into_iter().enumerate() {
        let p = presence_change(conn, bob.user_id, false, DEAD_AFTER + Duration::from_secs(8)).await;
        assert!(
            (alive_at[i]..=killed_at).contains(&p.last_seen_ms),
            "{peer}: bob last seen at {} but alive at {} and killed at {killed_at}",
            p.last_seen_ms,
            alive_at[i]
        );
    }
    eprintln!("peers told {:?} after the kill (dead rule {DEAD_AFTER:?})", killed.elapsed());
    // Asked, the cluster says the same (the store has it).
    let asked = presence_of(&mut a, bob.user_id).await;
    assert!(!asked.online && (alive_at[0]..=killed_at).contains(&asked.last_seen_ms), "{asked:?}");

    // Bob's device is pushed for the three messages it never acknowledged, by one node.
    let push = tokio::time::timeout(WAIT, pushes.recv()).await.expect("a push for bob's device").expect("receiver running");
    assert_eq!(push["token"], "bob-phone");
    assert_eq!(push["conversation_id"], with_alice.to_string());
    assert_eq!(push["sender_user_id"], alice.user_id.to_string());
    assert_eq!(push["count"], 3);
    // Pushes leave the two survivors within a coalescing window of each other: a second
    // one would be here by now.
    assert!(tokio::time::timeout(Duration::from_secs(1), pushes.recv()).await.is_err(), "bob's device was pushed twice");
    cluster.wait_members(2).await;

    // What an operator sees: n2 dead, with counts it reported before dying marked stale; its
    // tree refused with the reason; the CLI says which node a tree is and prints refusals.
    let report = cluster.report(1).await.expect("report");
    let n2 = report.nodes.iter().find(|n| n.name == "n2").expect("n2 listed");
    assert_eq!((n2.status.as_str(), n2.counts_stale, n2.sessions), ("dead", true, 1), "{n2:?}");
    let tree =
        |node: &str| reqwest::Client::new().get(format!("http://{}/admin/tree?node={node}", cluster.node(0).admin)).bearer_auth(ADMIN_TOKEN).send();
    let dead = tree("n2").await.expect("answer");
    assert_eq!(dead.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = dead.json().await.expect("json");
    assert!(body["message"].as_str().is_some_and(|m| m.starts_with("node n2 is dead (last heard ")), "{body}");
    let unknown = tree("n9").await.expect("answer");
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(unknown.json::<serde_json::Value>().await.expect("json")["message"], "no such node n9");
    let token_file = cluster.node(0).dir.path().join("operator-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("token file");
    let cli = |node: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["admin", "tree", "--node", node, "--admin", &format!("http://{}", cluster.node(0).admin)])
            .arg("--token-file")
            .arg(&token_file)
            .env_remove("SWITCHBOARD_ADMIN_TOKEN")
            .output()
            .expect("run switchboard admin tree")
    };
    let shown = cli("n1");
    assert!(shown.status.success());
    assert!(String::from_utf8_lossy(&shown.stdout).starts_with("supervision tree of node n1 (asked through http://"), "{shown:?}");
    let refused = cli("n2");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("node n2 is dead (last heard "), "{refused:?}");
}

/// Waits until node `i` has heard from `peer` that it holds `sessions` sessions; returns
/// when it last heard from it (ms since the epoch).
async fn heard_holding(cluster: &TestCluster, i: usize, peer: &str, sessions: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let report = cluster.report(i).await.expect("report");
        let p = report.nodes.iter().find(|n| n.name == peer).expect("peer in the report").clone();
        if p.sessions == sessions {
            return p.last_heard_at_ms;
        }
        assert!(Instant::now() < deadline, "n{i} never heard that {peer} holds {sessions} session(s): {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_before_the_dead_rule_ends_its_sessions_for_the_others_at_once() {
    // The dead rule is far away (20 s): only the restart (a new incarnation heard in a
    // heartbeat) can tell n0 that Bob's session on n1 ended.
    let (url, mut pushes) = common::push_receiver(0).await;
    let sink = format!("webhook:{url}");
    let mut cluster = TestCluster::start_with(2, &["--push-sink", &sink, "--push-coalesce-ms", "200", "--cluster-dead-after-ms", "20000"]).await;
    let t = cluster.transports();
    let api = cluster.api();
    let (alice, bob) = (sign_up(&api).await, sign_up(&api).await);
    api.set_push_token(&bob.token, "fcm", "bob-phone").await.expect("push token");
    let mut a = online_at(&t[0], &alice).await;
    let with_alice = a.open_direct(bob.user_id).await.expect("direct");
    let mut b = online_at(&t[1], &bob).await;
    presence_change(&mut a, bob.user_id, true, WAIT).await;
    for i in 1..=2 {
        a.send_and_ack(with_alice, &format!("unacked-{i}"), b"hi".to_vec()).await.expect("ack");
    }
    for _ in 1..=2 {
        b.next_message(WAIT).await.expect("delivered to bob's device");
    }
    let alive_at = heard_holding(&cluster, 0, "n1", 1).await;

    cluster.nodes[1].as_mut().expect("n1").kill9();
    let killed_at = switchboard::store::now_ms();
    let killed = Instant::now();
    cluster.nodes[1].as_mut().expect("n1").restart();

    // Alice hears Bob go offline long before the dead rule could fire, last seen = n1's
    // last word before the crash.
    let p = presence_change(&mut a, bob.user_id, false, Duration::from_secs(15)).await;
    assert!(killed.elapsed() < Duration::from_secs(15), "told only after {:?}", killed.elapsed());
    eprintln!("alice told {:?} after the kill (dead rule 20 s)", killed.elapsed());
    assert!((alive_at..=killed_at).contains(&p.last_seen_ms), "bob last seen at {}, alive at {alive_at}, killed at {killed_at}", p.last_seen_ms);
    let report = cluster.report(0).await.expect("report");
    let n1 = report.nodes.iter().find(|n| n.name == "n1").expect("n1 listed");
    assert_ne!(n1.status, "dead", "the restart path, not the dead rule: {n1:?}");

    // Bob's device is pushed once for the two messages it never acknowledged: by n0 (the
    // restarted node leaves its previous run's pushes to its peer).
    let push = tokio::time::timeout(WAIT, pushes.recv()).await.expect("a push for bob's device").expect("receiver running");
    assert_eq!((push["token"].as_str(), push["count"].as_u64()), (Some("bob-phone"), Some(2)), "{push}");
    assert_eq!(push["conversation_id"], with_alice.to_string());
    assert!(tokio::time::timeout(Duration::from_secs(1), pushes.recv()).await.is_err(), "bob's device was pushed twice");
    let metrics = cluster.node(0).api().get("/metrics", None).await.expect("metrics").text().await.expect("text");
    assert!(metrics.lines().any(|l| l.starts_with("switchboard_sessions_ended_total{ending=\"node_restarted\"}")), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_a_crash_ends_the_sessions_of_its_previous_run() {
    // One node alone (nobody else can notice its death): what it held when it crashed is
    // found in Redis when it comes back.
    let (url, mut pushes) = common::push_receiver(0).await;
    let sink = format!("webhook:{url}");
    let mut cluster = TestCluster::start_with(1, &["--push-sink", &sink, "--push-coalesce-ms", "200"]).await;
    let t = cluster.transports();
    let api = cluster.api();
    let (alice, bob) = (sign_up(&api).await, sign_up(&api).await);
    api.set_push_token(&bob.token, "fcm", "bob-phone").await.expect("push token");
    let mut b = online_at(&t[0], &bob).await;
    let connected_at = switchboard::store::now_ms();
    // Two messages reach Bob's device, which never acknowledges them.
    let with_bob = {
        let mut a = online_at(&t[0], &alice).await;
        let with_bob = a.open_direct(bob.user_id).await.expect("direct");
        for i in 1..=2 {
            a.send_and_ack(with_bob, &format!("unacked-{i}"), b"hi".to_vec()).await.expect("ack");
        }
        with_bob
    };
    for _ in 1..=2 {
        b.next_message(WAIT).await.expect("delivered to bob's device");
    }
    // The node stamps Redis every second; once it has done so with Bob connected, Bob is
    // known connected at that stamp.
    let client = redis::Client::open(cluster.redis.url()).expect("redis url");
    let mut redis = client.get_multiplexed_async_connection().await.expect("redis");
    let deadline = Instant::now() + WAIT;
    let alive_at = loop {
        let seen: Option<u64> = redis::AsyncCommands::get(&mut redis, "sb:nodeseen:n0").await.expect("get");
        if let Some(seen) = seen.filter(|s| *s > connected_at) {
            break seen;
        }
        assert!(Instant::now() < deadline, "the node never stamped Redis after bob connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    cluster.nodes[0].as_mut().expect("n0").kill9();
    let killed_at = switchboard::store::now_ms();
    cluster.nodes[0].as_mut().expect("n0").restart();
    cluster.wait_members(1).await;

    let mut a = online_at(&t[0], &alice).await;
    let deadline = Instant::now() + WAIT;
    let p = loop {
        let p = presence_of(&mut a, bob.user_id).await;
        if !p.online {
            break p;
        }
        assert!(Instant::now() < deadline, "bob still online after the crash of his node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!((alive_at..=killed_at).contains(&p.last_seen_ms), "bob last seen at {}, alive at {alive_at}, killed at {killed_at}", p.last_seen_ms);
    // With no peer to take it, the node pushes Bob's device itself, once, for the two
    // messages its previous run delivered and never saw acknowledged.
    let push = tokio::time::timeout(WAIT, pushes.recv()).await.expect("a push for bob's device").expect("receiver running");
    assert_eq!((push["token"].as_str(), push["count"].as_u64()), (Some("bob-phone"), Some(2)), "{push}");
    assert_eq!(push["conversation_id"], with_bob.to_string());
    assert!(tokio::time::timeout(Duration::from_secs(1), pushes.recv()).await.is_err(), "bob's device was pushed twice");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_reports_a_dead_node_and_restarts_it_with_its_settings() {
    use switchboard::testkit::cluster::{Event, LocalCluster, LocalClusterConfig, LocalClusterError};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LocalClusterConfig {
        binary: env!("CARGO_BIN_EXE_switchboard").into(),
        dir: dir.path().join("local"),
        nodes: 2,
        base_port: free_ports(14),
        push_sink: "log".into(),
        fresh: false,
        extra: Vec::new(),
    };
    let mut cluster = LocalCluster::start(config.clone()).await.expect("local cluster");
    // Two secrets, in files, on no command line.
    let cookie = std::fs::read_to_string(&cluster.cookie_file).expect("cookie");
    let token = std::fs::read_to_string(&cluster.admin_token_file).expect("admin token");
    assert_ne!(cookie.trim(), token.trim());
    for node in &cluster.nodes {
        let pid = node.pid().expect("running");
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("cmdline").replace('\0', " ");
        assert!(!cmdline.contains(cookie.trim()) && !cmdline.contains(token.trim()), "a secret on the command line: {cmdline}");
    }
    // One local cluster per directory.
    assert!(matches!(LocalCluster::start(config.clone()).await, Err(LocalClusterError::Busy { .. })));

    // A node killed from outside is reaped and reported as such.
    let pid = cluster.nodes[1].pid().expect("node2 running");
    // SAFETY: kill with a pid this test's cluster started and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(Event::NodeExited { node, pid: exited, status }) = cluster.reap().into_iter().next() {
            assert_eq!((node.as_str(), exited), ("node2", pid));
            break status;
        }
        assert!(Instant::now() < deadline, "node2's death was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(switchboard::testkit::cluster::describe(status), "killed by signal 9 (SIGKILL)");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "node2 left as a zombie");
    assert!(cluster.restart_command(1).contains("serve --config node.toml"), "{}", cluster.restart_command(1));

    // Restarted with the settings it had: it rejoins.
    let again = cluster.start_node(1).await.expect("node2 back");
    assert_ne!(again, pid);
    let admin = format!("http://{}/admin/cluster", cluster.nodes[0].admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report: Option<switchboard::cluster::ClusterReport> =
            async { reqwest::Client::new().get(&admin).bearer_auth(token.trim()).send().await.ok()?.json().await.ok() }.await;
        if report.as_ref().is_some_and(|r| r.members == ["node1", "node2"]) {
            break;
        }
        assert!(Instant::now() < deadline, "node2 did not rejoin: {report:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Plain-text logs.
    let log = std::fs::read_to_string(&cluster.nodes[0].log).expect("log");
    assert!(log.contains("joined the cluster") && !log.contains('\x1b'), "{log}");

    // Stopping deletes nothing: PostgreSQL's data is under the directory, and kept.
    let data = cluster.postgres.data_dir();
    assert!(data.starts_with(config.dir.canonicalize().expect("dir")));
    drop(cluster);
    assert!(data.join("PG_VERSION").exists(), "the data directory was removed");
}

/// The console of `switchboard cluster local` as a person sees it: lines printed on stdout,
/// commands typed on stdin.
struct Console {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Console {
    fn start(dir: &std::path::Path, base_port: u16) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["cluster", "local", "--nodes", "2", "--push-sink", "print", "--base-port", &base_port.to_string(), "--dir"])
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start switchboard cluster local");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, stdin, lines, seen: Vec::new() }
    }

    /// Waits for a line `matches` accepts (printed since the last wait), and returns it.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("the console never printed {what}; it printed:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").expect("type into the console");
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cluster_console_prints_pushes_deaths_and_runs_typed_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut console = Console::start(&dir.path().join("local"), free_ports(24));
    // At start: every process with its pid, the secrets' files, where pushes go, the nodes.
    let postgres = console.wait_for("PostgreSQL's pid", |l| l.starts_with("PostgreSQL  pid "));
    assert!(postgres.split_whitespace().nth(2).is_some_and(|p| p.parse::<u32>().is_ok()), "{postgres}");
    console.wait_for("Redis' pid", |l| l.starts_with("Redis       pid "));
    console.wait_for("the secrets' files", |l| l.starts_with("admin token ") && l.contains("cluster cookie "));
    console.wait_for("where pushes go", |l| l.starts_with("pushes      printed here (webhook:http://127.0.0.1:"));
    let node1 = console.wait_for("node1's row", |l| l.starts_with("node1 "));
    let node2 = console.wait_for("node2's row", |l| l.starts_with("node2 "));
    console.wait_for("the prompt", |l| l.starts_with("type here: status | kill <node>"));
    let columns = |row: &str| row.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let (node1, node2) = (columns(&node1), columns(&node2));
    let node2_pid: u32 = node2[1].parse().expect("node2's pid");

    // A push for an offline device is printed, naming the device, the user and the count.
    let api = HttpApi::new(format!("http://{}", node1[3]));
    let (alice, bob) = (sign_up(&api).await, sign_up(&api).await);
    api.set_push_token(&bob.token, "fcm", "bob-phone").await.expect("push token");
    let tcp = Transport::Tcp(node1[2].parse().expect("node1's tcp address"));
    let mut a = online_at(&tcp, &alice).await;
    let with_bob = a.open_direct(bob.user_id).await.expect("direct");
    a.send_and_ack(with_bob, "for-bob", b"hi".to_vec()).await.expect("ack");
    let push = console.wait_for("the push", |l| l.starts_with("push: "));
    assert_eq!(
        push,
        format!("push: device {} of user {}: 1 message(s) in conversation {with_bob} from {}", bob.device_id, bob.user_id, alice.user_id)
    );

    // `kill node2`: the signal, then its death reported with its status, reaped.
    console.type_line("kill node2");
    console.wait_for("the kill", |l| l == format!("sent SIGKILL to node2 (pid {node2_pid})"));
    let death = console.wait_for("node2's death", |l| l.starts_with("node2 (pid "));
    assert_eq!(death, format!("node2 (pid {node2_pid}) killed by signal 9 (SIGKILL); reaped. The end of its log ({}):", node2[6]));
    console.wait_for("how to restart it", |l| l.trim() == "restart it: type `restart node2` here, or run:");
    assert!(!std::path::Path::new(&format!("/proc/{node2_pid}")).exists(), "node2 left as a zombie");
    console.type_line("status");
    console.wait_for("node2 down in the table", |l| l.starts_with("node2 ") && columns(l)[1] == "down");
    console.type_line("kill node9");
    console.wait_for("the refusal", |l| l == "no such node node9 (nodes: node1, node2)");

    // `restart node2`: up again with a new pid.
    console.type_line("restart node2");
    let up = console.wait_for("node2 up", |l| l.starts_with("node2 is up again (pid "));
    assert!(!up.contains(&format!("(pid {node2_pid})")), "{up}");

    // `quit` stops everything and deletes nothing.
    console.type_line("quit");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = console.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "quit did not stop the local cluster");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    assert!(dir.path().join("local").read_dir().expect("kept").next().is_some(), "the directory was emptied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sequencers_forced_to_coexist_never_share_a_seq() {
    // Two nodes on one store that cannot see each other (no seeds, as in a partition):
    // each believes it is alone and owns every conversation, so both run a sequencer for
    // the same group at the same time. The store's fence must keep the log sound.
    let pg = PrivatePostgres::start().expect("private postgres");
    let store = pg.create_database("split").await.expect("database");
    let node = |name: &str| {
        let port = free_port().to_string();
        let listen = format!("127.0.0.1:{port}");
        TestServer::start_on(&store, &["--node-name", name, "--cluster-listen", &listen, "--cookie", COOKIE])
    };
    let (a, b) = (node("left"), node("right"));
    let x = sign_up(&a.api()).await;
    let y = sign_up(&a.api()).await;
    let mut setup = online_at(&Transport::Tcp(a.tcp), &x).await;
    let group = setup.create_group("split brain", &[y.user_id]).await.expect("group");
    drop(setup);

    let progress = Arc::new(AtomicUsize::new(0));
    let left = Roaming::connect(vec![Transport::Tcp(a.tcp)], &x.token, 0).await.expect("x on left");
    let right = Roaming::connect(vec![Transport::Tcp(b.tcp)], &y.token, 0).await.expect("y on right");
    let xs = tokio::spawn(send_traffic(left, vec![group], "x".into(), 150, Duration::ZERO, progress.clone()));
    let ys = tokio::spawn(send_traffic(right, vec![group], "y".into(), 150, Duration::ZERO, progress.clone()));
    let ((xs, _), (ys, _)) = (xs.await.expect("x"), ys.await.expect("y"));

    let mut reader = online_at(&Transport::Tcp(a.tcp), &x).await;
    let log = read_log(&mut reader, group).await;
    let last = check_log(&log, &[&xs[&group], &ys[&group]]);
    assert_eq!(last, 1 + 300, "creation event and every message, each once");
    let seqs: std::collections::HashSet<u64> = xs[&group].values().chain(ys[&group].values()).copied().collect();
    assert_eq!(seqs.len(), 300, "two acknowledged messages share a seq");
    // Both sequencers really ran: the fence turned some appends away (and the devices
    // retried them), on one node or both.
    let fenced = [&a, &b].iter().map(|n| n.log().matches("sequence conflict").count()).sum::<usize>();
    assert!(fenced > 0, "no append was fenced: the test did not run two sequencers");
}

/// Active conversations on each live node, as each reports itself.
async fn conversations_per_node(cluster: &TestCluster) -> BTreeMap<usize, u64> {
    let mut counts = BTreeMap::new();
    for i in cluster.live() {
        let report = cluster.report(i).await.expect("report");
        counts.insert(i, report.nodes[0].conversations);
    }
    counts
}

/// Sends one more message to each conversation and checks its seq.
async fn touch_all(device: &mut Roaming, conversations: &[ConversationId], round: &str, seq: u64) {
    for (k, conversation) in conversations.iter().enumerate() {
        let ack = device.send_until_acked(*conversation, &format!("{round}-{k}"), b"x".to_vec().into()).await.expect("ack");
        assert_eq!(ack.seq, seq, "conversation {conversation} lost or repeated a message");
    }
    device.conn().discard_buffered();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_node_takes_its_share_and_a_drained_node_hands_everything_over() {
    let mut cluster = TestCluster::start(2).await;
    let api = cluster.api();
    let me = sign_up(&api).await;
    let mut conversations = Vec::new();
    let mut setup = online_at(&cluster.transports()[0], &me).await;
    // Placement is rendezvous hashing of random ids: with 24 conversations the third node
    // would own fewer than 3 about once in 200 runs. Conversations are added until it owns
    // at least 3, so the test always has moves to check.
    let three = switchboard::cluster::placement::Members::new(["n0", "n1", "n2"].map(Arc::<str>::from));
    let owned_by_n2 = |conversations: &[ConversationId]| conversations.iter().filter(|c| three.owner(**c).map(|o| &**o) == Some("n2")).count();
    while conversations.len() < 24 || owned_by_n2(&conversations) < 3 {
        let peer = sign_up(&api).await;
        conversations.push(setup.open_direct(peer.user_id).await.expect("direct"));
    }
    let total = conversations.len() as u64;
    drop(setup);
    let mut device = Roaming::connect(cluster.transports(), &me.token, 0).await.expect("online");
    touch_all(&mut device, &conversations, "r1", 1).await;
    let before = conversations_per_node(&cluster).await;
    assert_eq!(before.values().sum::<u64>(), total, "{before:?}");

    // A third node joins: the conversations it now owns move to it (passivated where they
    // were, reactivated from the store on the next message), the others stay put.
    let added = cluster.add_node().await;
    cluster.wait_members(3).await;
    // A conversation moves on its next message. (On a loaded machine a peer can briefly
    // look dead and a message be sequenced where it was; the next round moves it.)
    let mut seq = 1;
    let after = loop {
        seq += 1;
        touch_all(&mut device, &conversations, &format!("r{seq}"), seq).await;
        let after = conversations_per_node(&cluster).await;
        if after[&added] >= 3 || seq == 6 {
            break after;
        }
    };
    assert_eq!(after.values().sum::<u64>(), total, "a conversation is active on two nodes: {after:?}");
    assert!(after[&added] >= 3, "the new node took no share: {after:?}");

    // Drain n1 through the CLI: its devices are told to go elsewhere, its conversations
    // move, and it exits cleanly.
    let watcher = sign_up(&api).await;
    let mut on_n1 = online_at(&cluster.transports()[1], &watcher).await;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["admin", "drain", "n1", "--admin", &format!("http://{}", cluster.node(0).admin), "--token", ADMIN_TOKEN])
        .status()
        .expect("run switchboard admin drain");
    assert!(status.success());
    let closing = on_n1
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::Closing(c) => Some(c.clone()),
            _ => None,
        })
        .await
        .expect("devices of the drained node are told to leave");
    assert_eq!(closing.code, pb::ErrorCode::NodeDraining as i32);
    assert!(closing.reconnect_after_ms > 0, "reconnects are spread");
    let exit = cluster.nodes[1].as_mut().expect("n1").wait_exit(Duration::from_secs(40));
    assert!(exit.success(), "a drained node exits cleanly: {exit:?}");
    cluster.nodes[1] = None;
    cluster.wait_members(2).await;
    touch_all(&mut device, &conversations, "drained", seq + 1).await;
    let drained = conversations_per_node(&cluster).await;
    assert_eq!(drained.values().sum::<u64>(), total, "{drained:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_traffic_loses_nothing() {
    let mut cluster = TestCluster::start(3).await;
    let t = cluster.transports();
    let api = cluster.api();
    let mut pairs = Vec::new();
    for transport in &t {
        let (s, r) = (sign_up(&api).await, sign_up(&api).await);
        let mut conn = online_at(transport, &s).await;
        let direct = conn.open_direct(r.user_id).await.expect("direct");
        pairs.push((s, r, direct));
    }
    let progress = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(None);
    let mut sending = Vec::new();
    let mut receiving = Vec::new();
    for (i, (s, r, direct)) in pairs.iter().enumerate() {
        let receiver = Roaming::connect(t.clone(), &r.token, (i + 1) % 3).await.expect("receiver");
        receiving.push(tokio::spawn(receive_traffic(receiver, vec![*direct], done_rx.clone())));
        let sender = Roaming::connect(t.clone(), &s.token, i).await.expect("sender");
        sending.push(tokio::spawn(send_traffic(sender, vec![*direct], format!("s{i}"), 400, Duration::from_millis(10), progress.clone())));
    }
    // Each node in turn: SIGTERM (graceful: it leaves the placement first), back up on
    // the same addresses, rejoined, then the next.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let node = cluster.nodes[i].as_mut().expect("running");
        assert!(node.terminate().success(), "n{i} shut down cleanly");
        node.restart();
        cluster.wait_members(3).await;
    }
    let mut targets = HashMap::new();
    for (i, s) in sending.into_iter().enumerate() {
        let (acked, _) = s.await.expect("sender");
        let (sender, _, direct) = &pairs[i];
        let mut conn = online_at(&t[0], sender).await;
        let log = read_log(&mut conn, *direct).await;
        targets.insert(*direct, check_log(&log, &[&acked[direct]]));
        assert_eq!(targets[direct], 400);
    }
    done_tx.send(Some(targets.clone())).expect("receivers listening");
    for r in receiving {
        for (conversation, (seqs, _)) in r.await.expect("receiver") {
            assert_eq!(seqs, (1..=targets[&conversation]).collect(), "a receiver misses messages");
        }
    }
}

/// Redis's own view of a user's devices: device id → node name.
async fn redis_devices(url: &str, user: UserId) -> HashMap<String, String> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    redis::AsyncCommands::hgetall(&mut conn, format!("sb:devices:{user}")).await.expect("hgetall")
}

/// Node `i`'s view of Redis: Some(ok) once it answered its admin API.
async fn redis_ok(cluster: &TestCluster, i: usize) -> Option<bool> {
    cluster.report(i).await.and_then(|r| r.redis).map(|r| r.ok)
}

/// The Redis lines of every live node's log, for a failure message.
fn redis_logs(cluster: &TestCluster) -> String {
    cluster
        .live()
        .into_iter()
        .map(|i| {
            let lines: Vec<String> = cluster.node(i).log().lines().filter(|l| l.contains("redis")).map(str::to_owned).collect();
            format!("n{i}:\n{}", lines.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_in_the_middle_of_traffic_degrades_presence_only() {
    let mut cluster = TestCluster::start(3).await;
    let t = cluster.transports();
    let api = cluster.api();
    let (alice, bob) = (sign_up(&api).await, sign_up(&api).await);
    let mut a = Roaming::connect(t.clone(), &alice.token, 0).await.expect("alice");
    let mut b = online_at(&t[1], &bob).await;
    let direct = a.conn().open_direct(bob.user_id).await.expect("direct");
    let deadline = Instant::now() + WAIT;
    while redis_devices(&cluster.redis.url(), alice.user_id).await.get(&alice.device_id.to_string()).map(String::as_str) != Some("n0") {
        assert!(Instant::now() < deadline, "alice's device never reached the redis directory");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis hangs (SIGSTOP: data kept, commands time out) while a device leaves: its
    // removal cannot be written then, and must be once Redis answers again.
    let dave = sign_up(&api).await;
    let d = online_at(&t[1], &dave).await;
    let deadline = Instant::now() + WAIT;
    while redis_devices(&cluster.redis.url(), dave.user_id).await.is_empty() {
        assert!(Instant::now() < deadline, "dave's device never reached the redis directory");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.redis.pause();
    let deadline = Instant::now() + WAIT;
    while redis_ok(&cluster, 1).await != Some(false) {
        assert!(Instant::now() < deadline, "redis hung but health says ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.bye().await.expect("dave leaves");
    cluster.redis.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !redis_devices(&cluster.redis.url(), dave.user_id).await.is_empty() {
        assert!(Instant::now() < deadline, "a device that left during the outage is still in redis\n{}", redis_logs(&cluster));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!presence(&mut b, dave.user_id).await, "dave is offline");

    cluster.redis.stop();
    let deadline = Instant::now() + WAIT;
    while redis_ok(&cluster, 0).await != Some(false) {
        assert!(Instant::now() < deadline, "redis down but health says ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Messages flow and are acknowledged (only once stored) while Redis is down, and a
    // device that connects meanwhile is routed to.
    let carol = sign_up(&api).await;
    let mut c = online_at(&t[2], &carol).await;
    let to_carol = a.conn().open_direct(carol.user_id).await.expect("direct to carol");
    for i in 1..=30u64 {
        assert_eq!(a.send_until_acked(direct, &format!("down-{i}"), b"m".to_vec().into()).await.expect("ack").seq, i);
        assert_eq!(b.next_message(WAIT).await.expect("delivered").seq, i);
    }
    assert_eq!(a.send_until_acked(to_carol, "to-carol", b"m".to_vec().into()).await.expect("ack").seq, 1);
    assert_eq!(c.next_message(WAIT).await.expect("carol").seq, 1);
    assert!(presence(&mut b, alice.user_id).await, "presence still answers from the cluster's own view");

    // Redis comes back empty: every node rewrites its devices, carol's included.
    cluster.redis.restart().expect("redis back");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alice_entry = redis_devices(&cluster.redis.url(), alice.user_id).await;
        let carol_entry = redis_devices(&cluster.redis.url(), carol.user_id).await;
        if alice_entry.get(&alice.device_id.to_string()).map(String::as_str) == Some("n0")
            && carol_entry.get(&carol.device_id.to_string()).map(String::as_str) == Some("n2")
            && redis_ok(&cluster, 0).await == Some(true)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the directory was not rewritten after the restart: {alice_entry:?} {carol_entry:?}\n{}",
            redis_logs(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A CA and, for each name, a certificate it signs for 127.0.0.1, written as PEM files:
/// returns the CA path and (cert, key) paths per name.
fn certificates(dir: &std::path::Path, ca_name: &str, names: &[&str]) -> (std::path::PathBuf, Vec<(std::path::PathBuf, std::path::PathBuf)>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let ca_path = dir.join(format!("{ca_name}.pem"));
    std::fs::write(&ca_path, ca.pem()).expect("write ca");
    let mut out = Vec::new();
    for name in names {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params").signed_by(&key, &ca).expect("sign");
        let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        out.push((cert_path, key_path));
    }
    (ca_path, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_nodes_need_a_certificate_from_the_cluster_ca_not_only_the_cookie() {
    let pg = PrivatePostgres::start().expect("private postgres");
    let store = pg.create_database("tls").await.expect("database");
    let certs = tempfile::tempdir().expect("tempdir");
    let (ca, signed) = certificates(certs.path(), "ca", &["left", "right"]);
    let (rogue_ca, rogue) = certificates(certs.path(), "rogue-ca", &["rogue"]);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let seeds = |me: usize| ports.iter().enumerate().filter(|(i, _)| *i != me).map(|(_, p)| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let node = |i: usize, name: &str, (cert, key): &(std::path::PathBuf, std::path::PathBuf), ca: &std::path::Path| {
        let listen = format!("127.0.0.1:{}", ports[i]);
        let seeds = seeds(i);
        let (cert, key, ca) = (cert.display().to_string(), key.display().to_string(), ca.display().to_string());
        let args = [
            "--node-name",
            name,
            "--cluster-listen",
            &listen,
            "--seeds",
            &seeds,
            "--cookie",
            COOKIE,
            "--cluster-heartbeat-ms",
            "200",
            "--cluster-dead-after-ms",
            "1500",
            "--cluster-tls-cert",
            &cert,
            "--cluster-tls-key",
            &key,
            "--cluster-tls-ca",
            &ca,
        ];
        TestServer::start_on(&store, &args)
    };
    let left = node(0, "left", &signed[0], &ca);
    let right = node(1, "right", &signed[1], &ca);
    // Knows the cookie, but its certificate comes from another CA.
    let stranger = node(2, "rogue", &rogue[0], &rogue_ca);

    let members = |admin: SocketAddr| async move {
        let r: Option<switchboard::cluster::ClusterReport> = async {
            reqwest::Client::new().get(format!("http://{admin}/admin/cluster")).bearer_auth(ADMIN_TOKEN).send().await.ok()?.json().await.ok()
        }
        .await;
        r.map(|r| r.members).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while members(left.admin).await != ["left", "right"] || members(right.admin).await != ["left", "right"] {
        assert!(Instant::now() < deadline, "the two nodes with certificates from the CA did not form a cluster");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Traffic crosses over TLS.
    let (x, y) = (sign_up(&left.api()).await, sign_up(&left.api()).await);
    let mut a = online_at(&Transport::Tcp(left.tcp), &x).await;
    let mut b = online_at(&Transport::Tcp(right.tcp), &y).await;
    let direct = a.open_direct(y.user_id).await.expect("direct");
    for i in 1..=5 {
        assert_eq!(a.send_and_ack(direct, &format!("tls-{i}"), b"secret".to_vec()).await.expect("ack").seq, i);
        assert_eq!(b.next_message(WAIT).await.expect("over tls").seq, i);
    }
    // A few heartbeats later, the stranger is still alone and nobody counts it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(members(left.admin).await, ["left", "right"]);
    assert_eq!(members(stranger.admin).await, ["rogue"]);
}

/// The key directory across nodes: 100 one-time key claims at once, spread over the three
/// nodes (HTTP and frames), never hand a key out twice (every node claims in the shared
/// store), and the device that owns the keys hears that it runs low on its own node; then
/// device-list notices and a to-device message cross nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_time_key_claims_spread_over_three_nodes_hand_each_key_out_once() {
    let cluster = TestCluster::start(3).await;
    let t = cluster.transports();
    let api = cluster.api();
    let (alice, bob) = (sign_up(&api).await, sign_up(&api).await);
    let mut a = online_at(&t[0], &alice).await;
    a.open_direct(bob.user_id).await.expect("open direct");
    let mut account = vodozemac::olm::Account::new();
    let upload = common::signed_upload(&mut account, alice.user_id, alice.device_id, 100, true);
    assert_eq!(a.upload_keys(upload).await.expect("upload").one_time_key_count, 100);

    let target = (alice.user_id, alice.device_id);
    let mut tasks = Vec::new();
    // 70 over HTTP, round-robin over the nodes.
    for i in 0..70usize {
        let url = format!("http://{}/v1/keys/claim", cluster.node(i % 3).http);
        let token = bob.token.clone();
        tasks.push(tokio::spawn(async move {
            let body = serde_json::json!({ "devices": [{ "user_id": target.0.to_string(), "device_id": target.1.to_string() }] });
            let answer: serde_json::Value =
                reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await.expect("claim").json().await.expect("json");
            let key = &answer["keys"][0];
            assert_eq!(key["fallback"], false, "{answer}");
            vec![key["key"]["key_id"].as_str().expect("a key").to_owned()]
        }));
    }
    // 30 as frames, from three devices of Bob's, one per node.
    let mut tokens = vec![bob.token.clone()];
    for i in 0..2 {
        tokens.push(api.link_device(&bob.token, &format!("bob {i}")).await.expect("link").token);
    }
    for (node, token) in tokens.into_iter().enumerate() {
        let transport = t[node].clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = online_at(&transport, &DeviceCredentials { user_id: UserId::nil(), device_id: Default::default(), token }).await;
            let mut got = Vec::new();
            for _ in 0..10 {
                let claimed = conn.claim_keys(&[target]).await.expect("claim");
                assert!(!claimed.keys[0].fallback);
                got.push(claimed.keys[0].key.as_ref().expect("key").key_id.clone());
            }
            got
        }));
    }
    let mut handed = std::collections::BTreeSet::new();
    for task in tasks {
        for key_id in task.await.expect("claimer") {
            assert!(handed.insert(key_id.clone()), "{key_id} handed out twice");
        }
    }
    assert_eq!(handed.len(), 100);
    // Alice's device, on node 0, was told it runs low, whichever node made the claim.
    a.wait_for(WAIT, false, |k| match k {
        server_frame::Kind::KeysLow(l) => Some(*l),
        _ => None,
    })
    .await
    .expect("KeysLow on the owner's node");
    let mut b = online_at(&t[1], &bob).await;
    assert!(b.claim_keys(&[target]).await.expect("claim").keys[0].fallback, "none left: the fallback key");

    // Bob's two links reached Alice, on node 0, as device-list notices.
    let noticed = a
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::DeviceListsChanged(n) => Some(n.user_ids.clone()),
            _ => None,
        })
        .await
        .expect("DeviceListsChanged on Alice's node");
    assert_eq!(noticed, vec![switchboard::protocol::id_bytes(bob.user_id)]);
    // A to-device message from node 1 reaches Alice's device on node 0, live.
    b.send_to_device("cross-node", vec![(alice.user_id, alice.device_id, bytes::Bytes::from_static(b"olm pre-key message"))])
        .await
        .expect("to-device");
    let entry = a
        .wait_for(WAIT, false, |k| match k {
            server_frame::Kind::ToDevice(m) => Some(m.clone()),
            _ => None,
        })
        .await
        .expect("a to-device message across nodes");
    assert_eq!((entry.position, &entry.payload[..]), (1, &b"olm pre-key message"[..]));
}

/// Media limits and clean-up hold for the cluster, not per node: two nodes on one
/// PostgreSQL and one private S3-compatible server. A user's upload rate is one budget
/// whichever node they ask; creations racing for the last bytes of a quota on both nodes
/// never together exceed it; two sweeps at once (one per node) delete exactly the
/// unreferenced media and their blobs, each record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_rate_quota_and_sweeps_hold_across_nodes() {
    use bytes::Bytes;
    use switchboard::media::{BlobSpec, BlobStore};
    use switchboard::media_client::MediaClient;

    let s3 = switchboard::testkit::PrivateS3::start().expect("private S3-compatible server (scripts/install-deps.sh installs moto)");
    let spec = s3.spec();
    let flags = ["--media-store", &spec, "--media-uploads-per-minute", "30", "--media-quota-bytes", "1000000", "--media-grace-secs", "2"];
    let cluster = TestCluster::start_with(2, &flags).await;
    let api = cluster.api();
    let (alice, bob, carol, dave) = (sign_up(&api).await, sign_up(&api).await, sign_up(&api).await, sign_up(&api).await);
    let client = |i: usize, token: &str| MediaClient::new(format!("http://{}", cluster.node(i).http), token);
    let status = |r: Result<switchboard::ids::MediaId, switchboard::client::ClientError>| match r {
        Ok(_) => 201,
        Err(switchboard::client::ClientError::Status { status, .. }) => status,
        Err(e) => panic!("{e}"),
    };

    // The rate: 30 a minute for Alice in all, asked of both nodes in turn.
    for k in 0..30 {
        assert_eq!(status(client(k % 2, &alice.token).create(10, None).await), 201, "creation {k}");
    }
    for i in 0..2 {
        assert_eq!(status(client(i, &alice.token).create(10, None).await), 429, "node {i}: the budget is the cluster's");
    }

    // The quota: twenty creations of 300,000 bytes at once, ten per node, against 1,000,000.
    let racing: Vec<_> = (0..20)
        .map(|k| {
            let c = client(k % 2, &bob.token);
            tokio::spawn(async move { c.create(300_000, None).await })
        })
        .collect();
    let mut accepted = 0u64;
    for r in racing {
        match status(r.await.expect("task")) {
            201 => accepted += 1,
            413 => {}
            other => panic!("a racing creation answered {other}"),
        }
    }
    assert!(accepted <= 3, "{accepted} × 300,000 bytes accepted against a quota of 1,000,000");
    // The refused ones left nothing counted: exactly the rest of the quota is still there.
    let rest = 1_000_000 - accepted * 300_000;
    assert_eq!(status(client(1, &bob.token).create(rest + 1, None).await), 413);
    assert_eq!(status(client(0, &bob.token).create(rest, None).await), 201, "{accepted} accepted; {rest} bytes left");

    // Two sweeps at once. Carol keeps one upload referenced by a message to Dave; three
    // others (distinct bytes) are referenced by nothing.
    let random = |n: usize| Bytes::from((0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
    let kept_bytes = random(30_000);
    let kept = client(0, &carol.token).upload(kept_bytes.clone(), 8192).await.expect("upload");
    for i in 0..3 {
        client(i % 2, &carol.token).upload(random(30_000), 8192).await.expect("upload");
    }
    let t = cluster.transports();
    let mut c = online_at(&t[1], &carol).await;
    let cd = c.open_direct(dave.user_id).await.expect("open");
    c.send_with_attachments_and_ack(cd, "with-file", b"file".to_vec(), &[kept]).await.expect("declared");
    let blobs = BlobStore::open(&BlobSpec::parse(&spec).expect("spec")).expect("blob store");
    assert_eq!(blobs.list("blobs").await.expect("list").len(), 4);

    let sweep = |i: usize| {
        let url = format!("http://{}/admin/media/sweep", cluster.node(i).admin);
        async move {
            let r = reqwest::Client::new().post(url).bearer_auth(ADMIN_TOKEN).send().await.expect("sweep");
            assert_eq!(r.status(), reqwest::StatusCode::OK);
            r.json::<serde_json::Value>().await.expect("report")
        }
    };
    let total = |a: &serde_json::Value, b: &serde_json::Value, field: &str| a[field].as_u64().expect(field) + b[field].as_u64().expect(field);
    let (a, b) = tokio::join!(sweep(0), sweep(1));
    assert_eq!(total(&a, &b, "marked"), 3, "each unreferenced media marked once: {a} {b}");
    assert_eq!(total(&a, &b, "deleted"), 0, "within the grace (2 s)");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (a, b) = tokio::join!(sweep(0), sweep(1));
    assert_eq!(total(&a, &b, "deleted"), 3, "each deleted once: {a} {b}");
    assert_eq!(total(&a, &b, "blobs_deleted"), 3, "{a} {b}");
    let left: Vec<String> = blobs.list("blobs").await.expect("list").into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, vec![BlobStore::blob_key(&switchboard::media::hashing::sha256(&kept_bytes))], "exactly the referenced blob is left");
    assert_eq!(client(1, &dave.token).download(kept).await.expect("the referenced media"), kept_bytes);
}

/// The SRE console's cluster view on a live two-node cluster (not a mock): every node
/// with the sessions connected to it, Redis reachable, and the other node's tree opened
/// from this node's console, in headless Chromium (`tests/browser/console-cluster.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_every_node_of_a_live_cluster() {
    use common::browser::{artifacts_dir, require_tools, run_to_end, script};
    let (chromium, node) = require_tools();
    let cluster = TestCluster::start(2).await;
    let t = cluster.transports();
    let api = cluster.api();
    let (alice, bob, carol) = (sign_up(&api).await, sign_up(&api).await, sign_up(&api).await);
    // Two devices on n0, one on n1.
    let _a = online_at(&t[0], &alice).await;
    let _b = online_at(&t[0], &bob).await;
    let _c = online_at(&t[1], &carol).await;
    let child = script(&node, &chromium, "console-cluster.mjs")
        .env("SWITCHBOARD_CONSOLE_URL", format!("http://{}/admin/ui/", cluster.node(0).admin))
        .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SWITCHBOARD_EXPECT_SESSIONS", r#"{"n0": 2, "n1": 1}"#)
        .spawn()
        .expect("run node");
    let (status, report) = run_to_end(child, Duration::from_secs(120)).await;
    let artifacts = artifacts_dir();
    assert!(status.success(), "the console cluster test failed ({status}); screenshots in {}:\n{report}", artifacts.display());
    assert!(report.contains("console cluster test passed"), "the script did not finish:\n{report}");
    for screen in ["1-nodes", "2-other-tree"] {
        let shot = artifacts.join(format!("console-cluster-{screen}.png"));
        assert!(shot.metadata().is_ok_and(|m| m.len() > 1000), "no screenshot {}", shot.display());
    }
}

/// Privacy holds across nodes: a presence answer that goes through the cluster's
/// directory (and Redis presence) still obeys the subject's settings — her contact on
/// another node sees her online, a stranger there sees neither online nor last seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_across_nodes_obeys_privacy_settings() {
    let cluster = TestCluster::start(2).await;
    let t = cluster.transports();
    let api = cluster.api();
    let (alice_number, bob_number) = (phone(), phone());
    let alice = api.sign_up(&alice_number, "phone").await.expect("sign up");
    let bob = api.sign_up(&bob_number, "phone").await.expect("sign up");
    let stranger = sign_up(&api).await;
    let http = |method: reqwest::Method, path: &str, body: serde_json::Value| {
        reqwest::Client::new().request(method, format!("http://{}{path}", cluster.node(0).http)).bearer_auth(&alice.token).json(&body).send()
    };
    let r = http(reqwest::Method::PATCH, "/v1/privacy", serde_json::json!({ "last_seen": "contacts", "online": "same_as_last_seen" }))
        .await
        .expect("http");
    assert!(r.status().is_success());
    let r = http(reqwest::Method::POST, "/v1/contacts/discover", serde_json::json!({ "phones": [bob_number] })).await.expect("http");
    assert!(r.status().is_success());
    let _a = online_at(&t[0], &alice).await;
    let mut b = online_at(&t[1], &bob).await;
    let mut s = online_at(&t[1], &stranger).await;
    assert!(presence(&mut b, alice.user_id).await, "her contact, on the other node, sees her online");
    let seen = presence_of(&mut s, alice.user_id).await;
    assert!(!seen.online && seen.last_seen_ms == 0, "a stranger on the other node sees nothing: {seen:?}");
}
