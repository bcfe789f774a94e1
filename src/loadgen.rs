//! Load generation for `switchboard bench`: starts a private server process, provisions
//! users through the HTTP API, drives real TCP connections through the client module, and
//! measures what the benchmarks report (server RSS and CPU from /proc, send→deliver
//! latency on the receiving device).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ids::{ConversationId, DeviceId, UserId};
use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::accounts::DeviceCredentials;
use crate::client::{ClientError, Connection, HttpApi, Transport};
use crate::protocol::{self, client_frame, id_bytes, pb, server_frame};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The server process could not be started or did not become ready.
    #[error("server: {0}")]
    Server(String),
    /// A client operation failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Reading /proc or a file failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The store a benchmark server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BenchStore {
    /// The embedded store in the server's temporary directory.
    #[default]
    Embedded,
    /// A private PostgreSQL server started for the run (default settings, fsync on).
    Postgres,
}

/// A `switchboard serve` child process on a temporary data directory.
pub struct ServerProcess {
    child: Child,
    /// The private PostgreSQL of a `--store postgres` run (stopped after the server).
    _postgres: Option<crate::testkit::PrivatePostgres>,
    _dir: tempfile::TempDir,
    /// HTTP address.
    pub http: std::net::SocketAddr,
    /// TCP address.
    pub tcp: std::net::SocketAddr,
    /// Admin address (bulk provisioning).
    pub admin: std::net::SocketAddr,
    /// Which transport the load uses.
    pub use_websocket: bool,
}

/// The admin token of benchmark servers.
pub const BENCH_ADMIN_TOKEN: &str = "bench";

#[derive(serde::Deserialize)]
struct Ready {
    http: std::net::SocketAddr,
    tcp: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl ServerProcess {
    /// Starts `binary serve` on loopback with development codes and generous rate limits,
    /// on the embedded store.
    pub fn start(binary: &std::path::Path, extra: &[String]) -> Result<Self, LoadError> {
        Self::start_on(binary, extra, BenchStore::Embedded)
    }

    /// Starts `binary serve` on the given store.
    pub fn start_on(binary: &std::path::Path, extra: &[String], store: BenchStore) -> Result<Self, LoadError> {
        let dir = tempfile::tempdir()?;
        let (postgres, store) = match store {
            BenchStore::Embedded => (None, format!("embedded:{}", dir.path().join("data").display())),
            BenchStore::Postgres => {
                let pg = crate::testkit::PrivatePostgres::start().map_err(|e| LoadError::Server(e.to_string()))?;
                let url = format!("{}?pool_size=8", pg.url("postgres"));
                (Some(pg), url)
            }
        };
        let mut server = Self::start_with_store(binary, extra, &store, dir)?;
        server._postgres = postgres;
        Ok(server)
    }

    /// Starts `binary serve` on a store somebody else runs (the nodes of a benchmark
    /// cluster share one).
    pub fn start_with_store(binary: &std::path::Path, extra: &[String], store: &str, dir: tempfile::TempDir) -> Result<Self, LoadError> {
        let ready: PathBuf = dir.path().join("ready.json");
        let child = Command::new(binary)
            .arg("serve")
            .arg("--store")
            .arg(store)
            .current_dir(dir.path())
            .args(["--http-listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--dev-expose-codes", "true", "--admin-token", BENCH_ADMIN_TOKEN])
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(r) = serde_json::from_str::<Ready>(&text)
            {
                return Ok(Self { child, _postgres: None, _dir: dir, http: r.http, tcp: r.tcp, admin: r.admin, use_websocket: false });
            }
            if Instant::now() > deadline {
                return Err(LoadError::Server("not ready after 30 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where load connections go.
    pub fn transport(&self) -> Transport {
        if self.use_websocket { Transport::ws(self.http) } else { Transport::Tcp(self.tcp) }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(&self) -> Result<u64, LoadError> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| LoadError::Server("no VmRSS".into()))?;
        Ok(kb * 1024)
    }

    /// User + system CPU time consumed so far.
    pub fn cpu_time(&self) -> Result<Duration, LoadError> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let total = ticks(11) + ticks(12);
        Ok(Duration::from_millis(total * 1000 / clock_ticks_per_second()))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> u64 {
    // USER_HZ is 100 on every Linux architecture we run on; `getconf CLK_TCK` confirms it.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Creates `n` users with a primary device each through the admin API's bulk path (one
/// store transaction per 10,000, no one-time codes): seconds for 10,000 users instead of
/// 20,000 HTTP round trips.
pub async fn provision_bulk(server: &ServerProcess, n: usize, progress: impl Fn(usize)) -> Result<Vec<DeviceCredentials>, LoadError> {
    let http = reqwest::Client::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let count = (n - out.len()).min(10_000);
        let response = http
            .post(format!("http://{}/admin/provision", server.admin))
            .bearer_auth(BENCH_ADMIN_TOKEN)
            .json(&serde_json::json!({ "count": count, "first": out.len() }))
            .send()
            .await
            .map_err(ClientError::from)?;
        if !response.status().is_success() {
            return Err(LoadError::Server(format!("provisioning answered {}", response.status())));
        }
        let batch: Vec<DeviceCredentials> = response.json().await.map_err(ClientError::from)?;
        if batch.len() != count {
            return Err(LoadError::Server(format!("provisioned {} of {count}", batch.len())));
        }
        out.extend(batch);
        progress(out.len());
    }
    Ok(out)
}

/// Signs up `n` users (primary devices) through the public HTTP flow, `parallel` at a time.
pub async fn provision(api: &HttpApi, n: usize, parallel: usize, progress: impl Fn(usize)) -> Result<Vec<DeviceCredentials>, LoadError> {
    let done = Arc::new(AtomicU64::new(0));
    let results = futures_util::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let done = done.clone();
            async move {
                let phone = format!("+1999{:08}", i);
                let creds = api.sign_up(&phone, "bench").await;
                done.fetch_add(1, Ordering::Relaxed);
                creds
            }
        })
        .buffer_unordered(parallel);
    let mut out = Vec::with_capacity(n);
    futures_util::pin_mut!(results);
    while let Some(r) = results.next().await {
        out.push(r?);
        if out.len() % 100 == 0 {
            progress(out.len());
        }
    }
    Ok(out)
}

/// Result of the `idle` scenario.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Connected, authenticated devices.
    pub devices: usize,
    /// Server RSS before connecting, bytes.
    pub rss_before: u64,
    /// Server RSS with every device connected, bytes.
    pub rss_after: u64,
    /// (after − before) / devices.
    pub bytes_per_device: u64,
    /// Connections + Hello + catch-up per second.
    pub logins_per_sec: f64,
}

/// Connects `credentials` (TCP) and measures server memory per connected idle device.
pub async fn idle(server: &ServerProcess, credentials: &[DeviceCredentials], parallel: usize) -> Result<(IdleReport, Vec<Connection>), LoadError> {
    let rss_before = server.rss_bytes()?;
    let transport = server.transport();
    let started = Instant::now();
    let conns: Vec<Result<Connection, ClientError>> = futures_util::stream::iter(credentials.iter().cloned())
        .map(|c| {
            let transport = transport.clone();
            async move {
                let (mut conn, _) = Connection::open(&transport, &c.token).await?;
                conn.wait_for(Duration::from_secs(30), true, |k| matches!(k, server_frame::Kind::CatchUpComplete(_)).then_some(())).await?;
                Ok(conn)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let conns = conns.into_iter().collect::<Result<Vec<_>, _>>()?;
    // Let allocator caches settle before reading RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = server.rss_bytes()?;
    let devices = conns.len();
    Ok((
        IdleReport {
            scenario: "idle",
            devices,
            rss_before,
            rss_after,
            bytes_per_device: rss_after.saturating_sub(rss_before) / devices.max(1) as u64,
            logins_per_sec: devices as f64 / elapsed.as_secs_f64(),
        },
        conns,
    ))
}

/// Result of the `direct` and `group` scenarios.
#[derive(Debug, Serialize)]
pub struct TrafficReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Online users.
    pub users: usize,
    /// Members per conversation (2 for 1:1).
    pub members: usize,
    /// Open-loop target, messages sent per second.
    pub target_rate: u64,
    /// Sending time, seconds.
    pub duration_s: f64,
    /// Messages sent.
    pub sent: u64,
    /// Messages acknowledged (durable) to their sender.
    pub acked: u64,
    /// Deliveries expected: sent × (members − 1).
    pub expected_deliveries: u64,
    /// Messages of this run received by recipient devices.
    pub delivered: u64,
    /// Times a device saw a conversation's seq jump on one connection (must be 0).
    pub gaps: u64,
    /// delivered / sending time.
    pub deliveries_per_sec: f64,
    /// Send→deliver latency percentiles, milliseconds.
    pub latency_ms_p50: f64,
    /// 90th percentile.
    pub latency_ms_p90: f64,
    /// 99th percentile.
    pub latency_ms_p99: f64,
    /// Maximum.
    pub latency_ms_max: f64,
    /// Server CPU time per 1,000 deliveries, milliseconds.
    pub server_cpu_ms_per_1000: f64,
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

async fn connect_all(server: &ServerProcess, credentials: &[DeviceCredentials]) -> Result<Vec<Connection>, LoadError> {
    connect_spread(&[server], credentials).await
}

/// Connects device `i` to `servers[i % servers.len()]`.
async fn connect_spread(servers: &[&ServerProcess], credentials: &[DeviceCredentials]) -> Result<Vec<Connection>, LoadError> {
    let transports: Vec<Transport> = servers.iter().map(|s| s.transport()).collect();
    let mut conns = Vec::with_capacity(credentials.len());
    for (i, c) in credentials.iter().enumerate() {
        let (mut conn, _) = Connection::open(&transports[i % transports.len()], &c.token).await?;
        conn.wait_for(Duration::from_secs(30), true, |k| matches!(k, server_frame::Kind::CatchUpComplete(_)).then_some(())).await?;
        conns.push(conn);
    }
    Ok(conns)
}

/// N online users send 1:1 messages to peers at an open-loop aggregate rate; recipients
/// acknowledge what they receive (in batches, as apps do) and measure latency.
pub async fn direct(
    server: &ServerProcess,
    credentials: &[DeviceCredentials],
    rate: u64,
    duration: Duration,
    payload_bytes: usize,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<TrafficReport, LoadError> {
    let n = credentials.len();
    // Each user sends to a random peer: a ring over a random permutation, so every user
    // sends and receives at the same rate and no two runs pair the same users.
    let mut order: Vec<usize> = (0..n).collect();
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
    let mut peer = vec![0usize; n];
    for (k, &i) in order.iter().enumerate() {
        peer[i] = order[(k + 1) % n];
    }
    pairs(&[server], "direct", credentials, &peer, rate, duration, payload_bytes, progress).await
}

/// [`direct`] across the nodes of a cluster: device `i` is connected to node
/// `i % nodes`, and sends to device `i + 1` (with two nodes and an even count, every
/// pair's ends are on different nodes). Each conversation's sequencer is wherever
/// placement puts it, so with two nodes every message crosses exactly one node boundary
/// on its way (sender → owner, or owner → recipient) and its ack or receipts cross back,
/// as in production.
pub async fn direct_across(
    servers: &[&ServerProcess],
    credentials: &[DeviceCredentials],
    rate: u64,
    duration: Duration,
    payload_bytes: usize,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<TrafficReport, LoadError> {
    let n = credentials.len();
    let peer: Vec<usize> = (0..n).map(|i| (i + 1) % n).collect();
    let scenario = if servers.len() > 1 { "direct_across_nodes" } else { "direct_one_node" };
    pairs(servers, scenario, credentials, &peer, rate, duration, payload_bytes, progress).await
}

/// Connects device `i` to `servers[i % servers.len()]`, opens its 1:1 conversation with
/// device `peer[i]`, and drives the traffic.
#[allow(clippy::too_many_arguments)]
async fn pairs(
    servers: &[&ServerProcess],
    scenario: &'static str,
    credentials: &[DeviceCredentials],
    peer: &[usize],
    rate: u64,
    duration: Duration,
    payload_bytes: usize,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<TrafficReport, LoadError> {
    let mut conns = connect_spread(servers, credentials).await?;
    let mut conversations = Vec::with_capacity(conns.len());
    for (i, conn) in conns.iter_mut().enumerate() {
        conversations.push(conn.open_direct(credentials[peer[i]].user_id).await?);
    }
    traffic(servers, scenario, conns, conversations, 2, rate, duration, payload_bytes, progress).await
}

/// `groups` groups of `credentials.len() / groups` members, all online; every member sends
/// to its group at an open-loop aggregate rate; every other member's device receives.
pub async fn group(
    server: &ServerProcess,
    credentials: &[DeviceCredentials],
    groups: usize,
    rate: u64,
    duration: Duration,
    payload_bytes: usize,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<TrafficReport, LoadError> {
    let per_group = credentials.len() / groups.max(1);
    let used = groups.max(1) * per_group;
    let mut conns = connect_all(server, &credentials[..used]).await?;
    let mut conversations = vec![ConversationId::nil(); used];
    for g in 0..groups.max(1) {
        let range = g * per_group..(g + 1) * per_group;
        let others: Vec<UserId> = credentials[range.clone()].iter().skip(1).map(|c| c.user_id).collect();
        let id = conns[range.start].create_group(&format!("bench {g}"), &others).await?;
        for slot in &mut conversations[range] {
            *slot = id;
        }
    }
    // Every member takes the creation event off its socket before timing starts.
    for conn in conns.iter_mut() {
        conn.next_message(Duration::from_secs(30)).await?;
    }
    traffic(&[server], "group", conns, conversations, per_group, rate, duration, payload_bytes, progress).await
}

/// Drives `conns[i]` sending into `conversations[i]` at an aggregate open-loop `rate`
/// (messages per second), every recipient measuring latency and acking in batches.
#[allow(clippy::too_many_arguments)]
async fn traffic(
    servers: &[&ServerProcess],
    scenario: &'static str,
    conns: Vec<Connection>,
    conversations: Vec<ConversationId>,
    members: usize,
    rate: u64,
    duration: Duration,
    payload_bytes: usize,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<TrafficReport, LoadError> {
    let n = conns.len();
    let histogram =
        Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| LoadError::Server(e.to_string()))?));
    let sent = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
    let run_started_ns = now_nanos();
    let run: u32 = rand::random();
    let cpu_time = || -> Result<Duration, LoadError> { servers.iter().map(|s| s.cpu_time()).sum() };
    let cpu_before = cpu_time()?;
    let started = Instant::now();
    let stop_at = started + duration;
    let interval = Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
    let mut tasks = Vec::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let (mut reader, mut writer, _) = conn.into_split();
        let conversation = conversations[i];
        let (histogram, sent, delivered, acked, gaps) = (histogram.clone(), sent.clone(), delivered.clone(), acked.clone(), gaps.clone());
        // Writer: open loop, one message per tick (missed ticks are sent late, not skipped),
        // plus the batched acks the reader asks for.
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<(ConversationId, u64)>();
        tasks.push(tokio::spawn(async move {
            let offset = interval.mul_f64((i as f64 / n as f64).fract());
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::from_std(started + offset), interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if Instant::now() >= stop_at { break; }
                        seq += 1;
                        let mut payload = BytesMut::with_capacity(payload_bytes.max(8));
                        payload.put_u64(now_nanos());
                        payload.resize(payload_bytes.max(8), 0);
                        let frame = protocol::client(client_frame::Kind::Send(pb::Send {
                            // Unique across runs: a repeated id would be answered as a
                            // duplicate (idempotency) and, rightly, not delivered again.
                            client_msg_id: format!("{run:08x}-{i}-{seq}"),
                            conversation_id: id_bytes(conversation),
                            payload: payload.freeze(),
                            kind: pb::MessageKind::Normal as i32,
                            reference_seq: 0,
                            attachments: Vec::new(),
                        }));
                        if writer.send(protocol::encode_client(&frame)).await.is_err() { break; }
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((conv, up_to)) = ack_rx.recv() => {
                        let frame = protocol::client(client_frame::Kind::Ack(pb::Ack { conversation_id: id_bytes(conv), seq: up_to }));
                        if writer.send(protocol::encode_client(&frame)).await.is_err() { break; }
                    }
                }
            }
            // Keep the connection open (and acking) until the reader is done.
            while let Some((conv, up_to)) = ack_rx.recv().await {
                let frame = protocol::client(client_frame::Kind::Ack(pb::Ack { conversation_id: id_bytes(conv), seq: up_to }));
                if writer.send(protocol::encode_client(&frame)).await.is_err() {
                    break;
                }
            }
        }));
        let drain_until = stop_at + Duration::from_secs(5);
        tasks.push(tokio::spawn(async move {
            let mut pending_ack: Option<(ConversationId, u64)> = None;
            let mut last_seq: HashMap<ConversationId, u64> = HashMap::new();
            let mut last_ack = Instant::now();
            loop {
                let next = tokio::time::timeout_at(tokio::time::Instant::from_std(drain_until), reader.next()).await;
                let Ok(Some(Ok(bytes))) = next else { break };
                match protocol::decode_server(&bytes) {
                    Ok(server_frame::Kind::Message(m)) => {
                        let conv: ConversationId = protocol::parse_id("conversation_id", &m.conversation_id).unwrap_or_default();
                        // Within one connection a conversation's seqs must be contiguous.
                        if let Some(prev) = last_seq.insert(conv, m.seq)
                            && m.seq != prev + 1
                        {
                            gaps.fetch_add(1, Ordering::Relaxed);
                        }
                        pending_ack = Some((conv, m.seq));
                        let sent_at = if m.payload.len() >= 8 { u64::from_be_bytes(m.payload[..8].try_into().unwrap_or([0; 8])) } else { 0 };
                        // Redeliveries of an earlier run's unacknowledged messages are not this run's.
                        if sent_at >= run_started_ns {
                            let latency = now_nanos().saturating_sub(sent_at).max(1);
                            if let Ok(mut h) = histogram.lock() {
                                let _ = h.record(latency);
                            }
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(server_frame::Kind::SendAck(_)) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                if last_ack.elapsed() > Duration::from_millis(100)
                    && let Some(ack) = pending_ack.take()
                {
                    let _ = ack_tx.send(ack);
                    last_ack = Instant::now();
                }
            }
        }));
    }
    let reporter = {
        let (sent, delivered) = (sent.clone(), delivered.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress(sent.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed));
            }
        })
    };
    // Wait until everything sent has arrived (or the drain deadline passes).
    let drain_until = stop_at + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let expected = sent.load(Ordering::Relaxed) * members.saturating_sub(1).max(1) as u64;
        if now >= drain_until || (now >= stop_at && delivered.load(Ordering::Relaxed) >= expected) {
            break;
        }
    }
    let cpu = cpu_time()?.saturating_sub(cpu_before);
    let fanout = members.saturating_sub(1).max(1) as u64;
    reporter.abort();
    for t in tasks {
        t.abort();
    }
    let (sent, delivered, acked) = (sent.load(Ordering::Relaxed), delivered.load(Ordering::Relaxed), acked.load(Ordering::Relaxed));
    let gaps = gaps.load(Ordering::Relaxed);
    let h = histogram.lock().map_err(|_| LoadError::Server("histogram poisoned".into()))?;
    let ms = |v: u64| v as f64 / 1e6;
    Ok(TrafficReport {
        scenario,
        users: n,
        members,
        target_rate: rate,
        duration_s: duration.as_secs_f64(),
        sent,
        acked,
        expected_deliveries: sent * fanout,
        delivered,
        gaps,
        deliveries_per_sec: delivered as f64 / duration.as_secs_f64(),
        latency_ms_p50: ms(h.value_at_quantile(0.50)),
        latency_ms_p90: ms(h.value_at_quantile(0.90)),
        latency_ms_p99: ms(h.value_at_quantile(0.99)),
        latency_ms_max: ms(h.max()),
        server_cpu_ms_per_1000: cpu.as_secs_f64() * 1000.0 * 1000.0 / delivered.max(1) as f64,
    })
}

/// An actor tree in this process with no sockets: sessions get an in-memory outbox whose
/// receiving end the caller holds. Used to measure what sockets would hide (memory per
/// session actor, spawn rate, routing) and by the sequencing micro-benchmark.
pub struct InProcessNode {
    /// The tree.
    pub node: crate::actors::node::Node,
    _dir: tempfile::TempDir,
}

impl InProcessNode {
    /// Starts a node on an embedded store in a temporary directory.
    pub async fn start() -> Result<Self, LoadError> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::EmbeddedStore::open(dir.path()).map_err(|e| LoadError::Server(e.to_string()))?);
        let node = crate::actors::node::start(
            store,
            crate::actors::ActorLimits::default(),
            Arc::new(crate::actors::push::LogSink),
            crate::actors::push::PushConfig::default(),
        )
        .await
        .map_err(|e| LoadError::Server(e.to_string()))?;
        Ok(Self { node, _dir: dir })
    }

    /// Spawns a device session with an in-memory outbox of `queue` frames; returns its
    /// mailbox and the receiving end of the outbox.
    pub async fn session(
        &self,
        user: UserId,
        device: DeviceId,
        queue: usize,
    ) -> Result<(crate::actors::Mailbox<crate::actors::session::SessionMsg>, tokio::sync::mpsc::Receiver<bytes::Bytes>), LoadError> {
        let (outbox, rx, _close) = crate::actors::session::Outbox::new(queue);
        let args = crate::actors::session::SessionArgs { user, device, outbox, ctx: self.node.ctx.clone() };
        let mailbox = crate::actors::session_supervisor::start_session(&self.node.sessions.get_cell(), args)
            .await
            .map_err(|e| LoadError::Server(e.to_string()))?;
        Ok((mailbox, rx))
    }
}

/// Result of the in-process `sessions` scenario.
#[derive(Debug, Serialize)]
pub struct SessionsReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Session actors alive at the end.
    pub sessions: usize,
    /// Process RSS before spawning, bytes.
    pub rss_before: u64,
    /// Process RSS with every session alive, bytes.
    pub rss_after: u64,
    /// (after − before) / sessions.
    pub bytes_per_session: u64,
    /// Sessions spawned (and caught up) per second.
    pub spawns_per_sec: f64,
    /// Frames routed user → session → outbox per second, over `routed` frames.
    pub routed_per_sec: f64,
    /// Frames routed.
    pub routed: u64,
}

fn own_rss() -> Result<u64, LoadError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| LoadError::Server("no VmRSS".into()))
}

/// Holds `count` idle device session actors in this process (no sockets) and routes one
/// frame to each of them through the router.
pub async fn sessions(count: usize, progress: impl Fn(usize)) -> Result<SessionsReport, LoadError> {
    let node = InProcessNode::start().await?;
    let rss_before = own_rss()?;
    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        let user = UserId::random();
        // A small outbox: an idle device has nothing queued.
        held.push(node.session(user, DeviceId::random(), 4).await?);
        users.push(user);
        if i % 10_000 == 9_999 {
            progress(i + 1);
        }
    }
    let spawn_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = own_rss()?;
    // Routing: one frame to every user through the router's directory.
    let frame = protocol::encode_server(&protocol::server(server_frame::Kind::Pong(pb::Pong { nonce: 1 })));
    let routed_started = Instant::now();
    for user in &users {
        node.node.ctx.router.deliver_to_user(*user, None, || crate::actors::session::SessionMsg::Push(frame.clone()));
    }
    for (_, rx) in held.iter_mut() {
        rx.recv().await.ok_or_else(|| LoadError::Server("session closed".into()))?;
    }
    let routed_time = routed_started.elapsed();
    Ok(SessionsReport {
        scenario: "sessions",
        sessions: held.len(),
        rss_before,
        rss_after,
        bytes_per_session: rss_after.saturating_sub(rss_before) / count.max(1) as u64,
        spawns_per_sec: count as f64 / spawn_time.as_secs_f64(),
        routed_per_sec: count as f64 / routed_time.as_secs_f64(),
        routed: count as u64,
    })
}

/// Result of the `reconnect` scenario.
#[derive(Debug, Serialize)]
pub struct ReconnectReport {
    /// Scenario name.
    pub scenario: &'static str,
    /// Devices that dropped and reconnected at once.
    pub devices: usize,
    /// Messages each of them missed.
    pub missed_per_device: u64,
    /// Devices whose catch-up delivered exactly what they missed.
    pub caught_up: usize,
    /// From the first reconnect to the last device caught up, seconds.
    pub seconds_until_all_caught_up: f64,
    /// Per-device time from the start of the storm to its CatchUpComplete, percentiles (ms).
    pub catch_up_ms_p50: f64,
    /// 99th percentile.
    pub catch_up_ms_p99: f64,
}

/// Every device (all but the first user, who sends) drops, misses `missed` messages in
/// its group, and reconnects at the same moment; measures until all have caught up.
pub async fn reconnect(
    server: &ServerProcess,
    credentials: &[DeviceCredentials],
    missed: u64,
    parallel: usize,
) -> Result<ReconnectReport, LoadError> {
    const GROUP: usize = 1000;
    let transport = server.transport();
    let (sender, members) = credentials.split_first().ok_or_else(|| LoadError::Server("no users".into()))?;
    let (mut s, _) = Connection::open(&transport, &sender.token).await?;
    let mut groups = Vec::new();
    for chunk in members.chunks(GROUP) {
        let ids: Vec<UserId> = chunk.iter().map(|c| c.user_id).collect();
        groups.push(s.create_group("storm", &ids).await?);
    }
    // Every member connects once and acknowledges the creation event, so what it misses
    // later is exactly the `missed` messages.
    let settle: Vec<Result<(), ClientError>> = futures_util::stream::iter(members.iter().cloned())
        .map(|c| {
            let transport = transport.clone();
            async move {
                let (mut conn, _) = Connection::open(&transport, &c.token).await?;
                let m = conn.next_message(Duration::from_secs(30)).await?;
                conn.ack(protocol::parse_id("conversation_id", &m.conversation_id).unwrap_or_default(), m.seq).await?;
                conn.bye().await
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    settle.into_iter().collect::<Result<Vec<_>, _>>()?;
    for group in &groups {
        for k in 0..missed {
            s.send_and_ack(*group, &format!("missed-{k}"), &b"you were away"[..]).await?;
        }
    }
    let started = Instant::now();
    let results: Vec<Result<(bool, Duration), ClientError>> = futures_util::stream::iter(members.iter().cloned())
        .map(|c| {
            let transport = transport.clone();
            async move {
                let (mut conn, _) = Connection::open(&transport, &c.token).await?;
                let got = conn
                    .wait_for(Duration::from_secs(60), true, |k| match k {
                        server_frame::Kind::CatchUpComplete(done) => Some(done.messages),
                        _ => None,
                    })
                    .await?;
                let at = started.elapsed();
                Ok((got == missed, at))
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let total = started.elapsed();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| LoadError::Server(e.to_string()))?;
    let mut caught_up = 0;
    for r in results {
        let (exact, at) = r?;
        caught_up += usize::from(exact);
        let _ = histogram.record((at.as_micros() as u64).max(1));
    }
    Ok(ReconnectReport {
        scenario: "reconnect",
        devices: members.len(),
        missed_per_device: missed,
        caught_up,
        seconds_until_all_caught_up: total.as_secs_f64(),
        catch_up_ms_p50: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        catch_up_ms_p99: histogram.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

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
    let single_node = direct_across(&[&single], &credentials, rate, duration, payload_bytes, |_, _| {}).await?;
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
    let two_nodes = direct_across(&refs, &credentials, rate, duration, payload_bytes, |_, _| {}).await?;
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
