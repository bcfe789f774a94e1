//! The nemesis: 1:1 and group traffic on a local three-node cluster while nodes are
//! SIGKILLed and restarted, frozen (SIGSTOP) and thawed, and Redis and PostgreSQL are
//! restarted; then a checker over what every device saw (Jepsen's shape: a history of
//! operations, faults on a schedule, and a checker that knows nothing of the server).
//!
//! The traffic: six users with one device each — three 1:1 conversations and one group of
//! all six — and an outsider device that belongs to nothing. Each device is a
//! [`Roaming`](crate::client::Roaming) client (it reconnects to another node with backoff,
//! resends each message with its `client_msg_id` until acknowledged) that sends in turn
//! to its conversations and acknowledges what it receives.
//!
//! The checker ([`check`], a pure function) asserts, for the messages sent during the run:
//! every acknowledged message is in its conversation's log exactly once, at the seq its
//! ack named; each sender's messages are in the log in the order it sent them; the log has
//! no gap; every member device received every message of the log sent during the run (but
//! its own), each connection in seq order without a gap, and no device received anything
//! of a conversation it is not a member of.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};

use super::cluster::{LocalCluster, LocalClusterConfig, LocalClusterError};
use crate::accounts::DeviceCredentials;
use crate::client::{ClientError, Connection, Roaming, Transport};
use crate::ids::{ConversationId, DeviceId};
use crate::protocol::{parse_id, server_frame};

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct NemesisConfig {
    /// The `switchboard` binary the nodes run.
    pub binary: PathBuf,
    /// Where node directories and logs go.
    pub dir: PathBuf,
    /// How long traffic and faults last (then faults stop and devices catch up).
    pub duration: Duration,
    /// Seed of the fault schedule and the pacing.
    pub seed: u64,
    /// Mean time between faults.
    pub fault_every: Duration,
}

/// Why a run could not be made (not a finding of the checker).
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    /// The cluster did not start or a node did not come back.
    #[error(transparent)]
    Cluster(#[from] LocalClusterError),
    /// A client call failed where the nemesis needs it (setup, final reads).
    #[error("client: {0}")]
    Client(#[from] ClientError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Fault {
    /// SIGKILL a node, start it again a few seconds later.
    KillNode,
    /// SIGSTOP a node for a few seconds, then SIGCONT.
    PauseNode,
    /// Kill Redis and start it again, empty.
    RestartRedis,
    /// Crash PostgreSQL (immediate shutdown) and start it again.
    RestartPostgres,
}

/// One message a device received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Which connection of the device (0 = the first; +1 per reconnection).
    pub connection: u64,
    /// Conversation.
    pub conversation: ConversationId,
    /// Its seq.
    pub seq: u64,
    /// Its client_msg_id.
    pub client_msg_id: String,
}

/// One entry of a conversation's final log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The sender's client_msg_id (`event-<seq>` for events).
    pub client_msg_id: String,
    /// Sending device.
    pub sender_device: DeviceId,
}

/// Everything the checker looks at.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Per conversation: its members' devices.
    pub members: HashMap<ConversationId, BTreeSet<DeviceId>>,
    /// Per conversation: its log's last seq before the run (the check covers what follows).
    pub start: HashMap<ConversationId, u64>,
    /// Per conversation: the final log (seq → entry), read after the run.
    pub logs: HashMap<ConversationId, BTreeMap<u64, LogEntry>>,
    /// Per device: (conversation, client_msg_id, seq) of each acknowledged send, in the
    /// order it sent them.
    pub acked: HashMap<DeviceId, Vec<(ConversationId, String, u64)>>,
    /// Per device: every message it received, in arrival order.
    pub received: HashMap<DeviceId, Vec<Received>>,
}

/// What the checker found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged message is not in the log at its seq.
    LostAck {
        /// Sender.
        device: DeviceId,
        /// Conversation.
        conversation: ConversationId,
        /// Its id.
        client_msg_id: String,
        /// The seq its ack named.
        seq: u64,
    },
    /// A (sender, client_msg_id) is stored at two seqs.
    StoredTwice {
        /// Conversation.
        conversation: ConversationId,
        /// Its id.
        client_msg_id: String,
    },
    /// The log skips a seq.
    LogGap {
        /// Conversation.
        conversation: ConversationId,
        /// The missing seq.
        seq: u64,
    },
    /// A sender's messages got seqs out of the order it sent them in.
    OutOfOrderAcks {
        /// Sender.
        device: DeviceId,
        /// Conversation.
        conversation: ConversationId,
    },
    /// A member device never received a message it should have.
    Missed {
        /// Device.
        device: DeviceId,
        /// Conversation.
        conversation: ConversationId,
        /// The seqs it missed (the first few).
        seqs: Vec<u64>,
    },
    /// A connection delivered a conversation's messages out of seq order, twice, or with a
    /// deliverable seq skipped.
    ConnectionOrder {
        /// Device.
        device: DeviceId,
        /// Conversation.
        conversation: ConversationId,
        /// Which connection.
        connection: u64,
        /// What came after what.
        detail: String,
    },
    /// A device received a message of a conversation it is not a member of.
    Leaked {
        /// Device.
        device: DeviceId,
        /// Conversation.
        conversation: ConversationId,
        /// Seq.
        seq: u64,
    },
    /// A device received a message whose id differs from the log's at that seq.
    Mismatch {
        /// Device.
        device: DeviceId,
        /// Conversation.
        conversation: ConversationId,
        /// Seq.
        seq: u64,
    },
}

/// Checks a history. Returns every violation found (none: the run passed).
pub fn check(h: &History) -> Vec<Violation> {
    let mut found = Vec::new();
    // The logs: no gap, each (sender, id) once.
    for (conversation, log) in &h.logs {
        let last = log.keys().next_back().copied().unwrap_or(0);
        for seq in 1..=last {
            if !log.contains_key(&seq) {
                found.push(Violation::LogGap { conversation: *conversation, seq });
            }
        }
        let mut ids = BTreeSet::new();
        for entry in log.values() {
            if !ids.insert((entry.sender_device, entry.client_msg_id.clone())) {
                found.push(Violation::StoredTwice { conversation: *conversation, client_msg_id: entry.client_msg_id.clone() });
            }
        }
    }
    // Acknowledged sends: in the log at their seq, in sending order per conversation.
    for (device, sends) in &h.acked {
        let mut last: HashMap<ConversationId, u64> = HashMap::new();
        for (conversation, id, seq) in sends {
            let stored = h.logs.get(conversation).and_then(|log| log.get(seq));
            if stored.is_none_or(|e| e.client_msg_id != *id || e.sender_device != *device) {
                found.push(Violation::LostAck { device: *device, conversation: *conversation, client_msg_id: id.clone(), seq: *seq });
            }
            let previous = last.insert(*conversation, *seq).unwrap_or(0);
            if *seq <= previous {
                found.push(Violation::OutOfOrderAcks { device: *device, conversation: *conversation });
            }
        }
    }
    // Deliveries.
    for (device, received) in &h.received {
        let mut by_conversation: HashMap<ConversationId, Vec<&Received>> = HashMap::new();
        for r in received {
            let member = h.members.get(&r.conversation).is_some_and(|m| m.contains(device));
            if !member {
                found.push(Violation::Leaked { device: *device, conversation: r.conversation, seq: r.seq });
                continue;
            }
            if let Some(entry) = h.logs.get(&r.conversation).and_then(|log| log.get(&r.seq))
                && entry.client_msg_id != r.client_msg_id
            {
                found.push(Violation::Mismatch { device: *device, conversation: r.conversation, seq: r.seq });
            }
            by_conversation.entry(r.conversation).or_default().push(r);
        }
        for (conversation, members) in &h.members {
            if !members.contains(device) {
                continue;
            }
            let log = h.logs.get(conversation).cloned().unwrap_or_default();
            let start = h.start.get(conversation).copied().unwrap_or(0);
            // What this device must get: everything after the start but its own messages.
            let deliverable: BTreeSet<u64> = log.iter().filter(|(seq, e)| **seq > start && e.sender_device != *device).map(|(s, _)| *s).collect();
            let got: BTreeSet<u64> = by_conversation.get(conversation).map(|v| v.iter().map(|r| r.seq).collect()).unwrap_or_default();
            let missed: Vec<u64> = deliverable.difference(&got).copied().take(10).collect();
            if !missed.is_empty() {
                found.push(Violation::Missed { device: *device, conversation: *conversation, seqs: missed });
            }
            // Per connection: increasing, and nothing deliverable skipped between two
            // consecutive deliveries.
            let all_deliverable: BTreeSet<u64> = log.iter().filter(|(_, e)| e.sender_device != *device).map(|(s, _)| *s).collect();
            let mut previous: HashMap<u64, u64> = HashMap::new();
            for r in by_conversation.get(conversation).into_iter().flatten() {
                if let Some(prev) = previous.insert(r.connection, r.seq) {
                    let detail = if r.seq <= prev {
                        Some(format!("{} after {prev}", r.seq))
                    } else {
                        all_deliverable.range(prev + 1..r.seq).next().map(|skipped| format!("{} after {prev}, skipping {skipped}", r.seq))
                    };
                    if let Some(detail) = detail {
                        found.push(Violation::ConnectionOrder { device: *device, conversation: *conversation, connection: r.connection, detail });
                    }
                }
            }
        }
    }
    found
}

/// What a run did and found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NemesisReport {
    /// Seed of the run.
    pub seed: u64,
    /// Traffic time, in seconds.
    pub seconds: u64,
    /// Faults applied, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Sends acknowledged.
    pub acked: u64,
    /// Messages received (all devices, duplicates included).
    pub received: u64,
    /// Of those, received more than once by the same device (allowed: at-least-once across
    /// reconnections).
    pub duplicates: u64,
    /// Reconnections of all devices.
    pub reconnects: u64,
    /// Seconds the devices took to catch up after the faults stopped.
    pub settle_seconds: f64,
    /// What the checker found (empty: passed).
    pub violations: Vec<String>,
}

/// Runs the nemesis and checks what happened.
pub async fn run(config: NemesisConfig) -> Result<NemesisReport, NemesisError> {
    let base_port = free_base_port();
    let extra = ["--cluster-heartbeat-ms", "200", "--cluster-dead-after-ms", "1500", "--drain-spread-secs", "1", "--heartbeat-secs", "5"];
    let mut cluster = LocalCluster::start(LocalClusterConfig {
        binary: config.binary.clone(),
        dir: config.dir.clone(),
        nodes: 3,
        base_port,
        push_sink: "log".into(),
        fresh: true,
        extra: extra.iter().map(|s| s.to_string()).collect(),
    })
    .await?;
    let transports: Vec<Transport> = cluster.nodes.iter().map(|n| Transport::Tcp(n.tcp.parse().expect("node address"))).collect();
    let users = provision(&cluster, 7).await?;
    let (people, outsider) = users.split_at(6);

    // Conversations: a group of the six, and three 1:1 pairs.
    let mut members: HashMap<ConversationId, BTreeSet<DeviceId>> = HashMap::new();
    let mut readers: HashMap<ConversationId, String> = HashMap::new();
    let mut conversations_of: HashMap<DeviceId, Vec<ConversationId>> = people.iter().map(|u| (u.device_id, vec![])).collect();
    let group = {
        let mut setup = Connection::open(&transports[0], &people[0].token).await?.0;
        setup.create_group("nemesis", &people[1..].iter().map(|u| u.user_id).collect::<Vec<_>>()).await?
    };
    members.insert(group, people.iter().map(|u| u.device_id).collect());
    for pair in people.chunks(2) {
        let mut c = Connection::open(&transports[0], &pair[0].token).await?.0;
        let direct = c.open_direct(pair[1].user_id).await?;
        members.insert(direct, pair.iter().map(|u| u.device_id).collect());
    }
    for (conversation, devices) in &members {
        for device in devices {
            conversations_of.entry(*device).or_default().push(*conversation);
        }
        // The logs are read by a linked device of a member (an auditor), so that the
        // devices under test are never replaced by a second connection of their own.
        let member = people.iter().find(|u| devices.contains(&u.device_id)).expect("a member");
        readers.insert(*conversation, link_auditor(&cluster, &member.token).await?);
    }
    let mut start = HashMap::new();
    for (conversation, token) in &readers {
        start.insert(*conversation, read_log(&transports, token, *conversation).await?.keys().next_back().copied().unwrap_or(0));
    }

    // Traffic.
    let shared = Arc::new(Shared::default());
    let mut devices = Vec::new();
    for (i, user) in people.iter().chain(outsider).enumerate() {
        let roaming = Roaming::connect(transports.clone(), &user.token, i % transports.len()).await?;
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = DeviceTask {
            device: user.device_id,
            token: user.token.clone(),
            transports: transports.clone(),
            conversations: conversations_of.get(&user.device_id).cloned().unwrap_or_default(),
            shared: shared.clone(),
            received: received.clone(),
            seed: config.seed.wrapping_add(i as u64),
        };
        devices.push((user.device_id, received, tokio::spawn(task.run(roaming))));
    }

    // Faults.
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < config.duration {
        let wait = config.fault_every.mul_f64(rng.random_range(0.5..1.5));
        tokio::time::sleep(wait.min(config.duration.saturating_sub(started.elapsed()))).await;
        if started.elapsed() >= config.duration {
            break;
        }
        let fault = match rng.random_range(0..10) {
            0..=3 => Fault::KillNode,
            4..=6 => Fault::PauseNode,
            7..=8 => Fault::RestartRedis,
            _ => Fault::RestartPostgres,
        };
        let node = rng.random_range(0..cluster.nodes.len());
        tracing::info!(?fault, node, elapsed_s = started.elapsed().as_secs(), "nemesis fault");
        match fault {
            Fault::KillNode => {
                cluster.kill(node);
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..4000))).await;
                cluster.restart(node).await?;
            }
            Fault::PauseNode => {
                cluster.pause(node);
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3500))).await;
                cluster.resume(node);
            }
            Fault::RestartRedis => cluster.redis.restart().map_err(|e| NemesisError::Other(e.to_string()))?,
            Fault::RestartPostgres => cluster.postgres.restart().map_err(|e| NemesisError::Other(e.to_string()))?,
        }
        *faults.entry(format!("{fault:?}")).or_default() += 1;
    }

    // Calm: every node up; senders finish the send they are in and stop; then the logs
    // are final and receivers go on until each has everything or a deadline passes.
    for i in 0..cluster.nodes.len() {
        cluster.resume(i);
        if !cluster.is_running(i) {
            cluster.restart(i).await?;
        }
    }
    shared.stop_sending.store(true, Ordering::SeqCst);
    let settle_started = Instant::now();
    let deadline = settle_started + Duration::from_secs(120);
    while shared.sending.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut logs = HashMap::new();
    for (conversation, token) in &readers {
        logs.insert(*conversation, read_log(&transports, token, *conversation).await?);
    }
    let mut history = History { members, start, logs, ..Default::default() };
    loop {
        history.received = devices.iter().map(|(d, r, _)| (*d, r.lock().unwrap_or_else(|p| p.into_inner()).clone())).collect();
        let missing = check(&history).iter().any(|v| matches!(v, Violation::Missed { .. }));
        if !missing || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settle_seconds = settle_started.elapsed().as_secs_f64();
    shared.stop_receiving.store(true, Ordering::SeqCst);
    let mut reconnects = 0;
    for (device, received, handle) in devices {
        let outcome = handle.await.map_err(|e| NemesisError::Other(format!("device task: {e}")))?;
        reconnects += outcome.reconnects;
        history.acked.insert(device, outcome.acked);
        history.received.insert(device, received.lock().unwrap_or_else(|p| p.into_inner()).clone());
    }
    let received: u64 = history.received.values().map(|r| r.len() as u64).sum();
    let distinct: u64 = history.received.values().map(|r| r.iter().map(|x| (x.conversation, x.seq)).collect::<BTreeSet<_>>().len() as u64).sum();
    let mut violations: Vec<String> = check(&history).into_iter().map(|v| format!("{v:?}")).collect();
    violations.extend(shared.refusals.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned());
    cluster.stop();
    Ok(NemesisReport {
        seed: config.seed,
        seconds: config.duration.as_secs(),
        faults,
        acked: shared.acked.load(Ordering::SeqCst),
        received,
        duplicates: received - distinct,
        reconnects,
        settle_seconds,
        violations,
    })
}

/// A base port below the ephemeral range with its 3 × 10 ports free.
fn free_base_port() -> u16 {
    loop {
        let base = rand::rng().random_range(100..190u16) * 100;
        let free = (0..3u16).flat_map(|i| (0..4u16).map(move |k| base + i * 10 + k)).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
}

async fn provision(cluster: &LocalCluster, count: usize) -> Result<Vec<DeviceCredentials>, NemesisError> {
    let first = u64::from(rand::rng().random_range(0..1_000_000u32)) * 100;
    let response = reqwest::Client::new()
        .post(format!("http://{}/admin/provision", cluster.nodes[0].admin))
        .bearer_auth(cluster.admin_token().map_err(|e| NemesisError::Other(e.to_string()))?)
        .json(&serde_json::json!({ "count": count, "phone_prefix": "+1555", "first": first }))
        .send()
        .await
        .map_err(|e| NemesisError::Other(e.to_string()))?;
    let users: Vec<DeviceCredentials> = response.json().await.map_err(|e| NemesisError::Other(e.to_string()))?;
    if users.len() != count {
        return Err(NemesisError::Other(format!("provisioned {} of {count} users", users.len())));
    }
    Ok(users)
}

/// Links a device to the account of `primary_token`; returns its token.
async fn link_auditor(cluster: &LocalCluster, primary_token: &str) -> Result<String, NemesisError> {
    let api = crate::client::HttpApi::new(format!("http://{}", cluster.nodes[0].http));
    Ok(api.link_device(primary_token, "auditor").await?.token)
}

/// A conversation's whole log through history requests of a member's auditor device, at
/// whichever node answers.
async fn read_log(transports: &[Transport], token: &str, conversation: ConversationId) -> Result<BTreeMap<u64, LogEntry>, NemesisError> {
    let mut last_error = NemesisError::Other("log unreadable".into());
    for attempt in 0..40 {
        match read_log_once(&transports[attempt % transports.len()], token, conversation).await {
            Ok(log) => return Ok(log),
            Err(e) => last_error = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last_error)
}

async fn read_log_once(transport: &Transport, token: &str, conversation: ConversationId) -> Result<BTreeMap<u64, LogEntry>, NemesisError> {
    let wait = Duration::from_secs(5);
    let (mut conn, _) = tokio::time::timeout(wait, Connection::open(transport, token)).await.map_err(|_| ClientError::Timeout)??;
    let mut log = BTreeMap::new();
    let mut before = 0;
    loop {
        let page = tokio::time::timeout(wait, conn.history(conversation, before, 200)).await.map_err(|_| ClientError::Timeout)??;
        for m in &page.messages {
            let sender_device = parse_id::<DeviceId>("sender_device_id", &m.sender_device_id).map_err(|e| NemesisError::Other(e.to_string()))?;
            log.insert(m.seq, LogEntry { client_msg_id: m.client_msg_id.clone(), sender_device });
        }
        match page.messages.last() {
            Some(oldest) if page.has_more => before = oldest.seq,
            _ => return Ok(log),
        }
    }
}

/// State the devices share with the run.
#[derive(Default)]
struct Shared {
    stop_sending: AtomicBool,
    stop_receiving: AtomicBool,
    /// Devices in the middle of a send (until its ack).
    sending: AtomicU64,
    acked: AtomicU64,
    /// Sends refused or connections closed for good: never expected.
    refusals: std::sync::Mutex<Vec<String>>,
}

/// One device's part of the run.
struct DeviceTask {
    device: DeviceId,
    token: String,
    transports: Vec<Transport>,
    conversations: Vec<ConversationId>,
    shared: Arc<Shared>,
    received: Arc<std::sync::Mutex<Vec<Received>>>,
    seed: u64,
}

/// What a device did.
struct DeviceOutcome {
    acked: Vec<(ConversationId, String, u64)>,
    reconnects: u64,
}

/// The device's connection and which one it is (counted across new `Roaming`s).
struct Link {
    roaming: Roaming,
    /// Connection number of the current connection.
    epoch: u64,
    /// `roaming.reconnects` when `epoch` was last synchronised.
    seen: u64,
}

impl Link {
    fn sync(&mut self) {
        if self.roaming.reconnects != self.seen {
            self.epoch += self.roaming.reconnects - self.seen;
            self.seen = self.roaming.reconnects;
        }
    }
}

impl DeviceTask {
    async fn run(self, roaming: Roaming) -> DeviceOutcome {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
        let mut link = Link { roaming, epoch: 0, seen: 0 };
        let mut acked = Vec::new();
        let mut k = 0usize;
        while !self.shared.stop_receiving.load(Ordering::SeqCst) {
            if !self.conversations.is_empty() && !self.shared.stop_sending.load(Ordering::SeqCst) {
                let conversation = self.conversations[k % self.conversations.len()];
                let id = format!("{}-{k}", &self.device.to_string()[..8]);
                self.shared.sending.fetch_add(1, Ordering::SeqCst);
                // Until acknowledged, whatever fails: the device keeps its outbox.
                loop {
                    match link.roaming.send_until_acked(conversation, &id, Bytes::from(id.clone().into_bytes())).await {
                        Ok(ack) => {
                            acked.push((conversation, id.clone(), ack.seq));
                            self.shared.acked.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err(ClientError::Rejected { code, message }) => {
                            self.refused(format!("send {id}: {code:?} {message}"));
                            if !self.redial(&mut link).await {
                                break;
                            }
                        }
                        // Gave up reconnecting for a while (a long outage): again.
                        Err(_) => {
                            if link.roaming.reconnect().await.is_err() && !self.redial(&mut link).await {
                                break;
                            }
                        }
                    }
                }
                link.sync();
                self.shared.sending.fetch_sub(1, Ordering::SeqCst);
                k += 1;
            }
            // Receive for a moment (frames buffered while waiting for the ack first).
            let until = Instant::now() + Duration::from_millis(rng.random_range(20..80));
            while Instant::now() < until {
                match link.roaming.next_frame(Duration::from_millis(20)).await {
                    Ok(Some(frame)) => {
                        link.sync();
                        self.on_frame(&mut link, frame).await;
                    }
                    Ok(None) => link.sync(),
                    Err(e) => {
                        if matches!(e, ClientError::Rejected { .. }) {
                            self.refused(format!("connection closed for good: {e}"));
                        }
                        if !self.redial(&mut link).await {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }
        DeviceOutcome { acked, reconnects: link.epoch }
    }

    fn refused(&self, what: String) {
        tracing::error!(device = %self.device, what, "nemesis: unexpected refusal");
        self.shared.refusals.lock().unwrap_or_else(|p| p.into_inner()).push(format!("device {}: {what}", self.device));
    }

    /// A new connection from scratch (after a close that says not to reconnect).
    async fn redial(&self, link: &mut Link) -> bool {
        match Roaming::connect(self.transports.clone(), &self.token, (link.epoch as usize + 1) % self.transports.len()).await {
            Ok(roaming) => {
                link.sync();
                *link = Link { roaming, epoch: link.epoch + 1, seen: 0 };
                true
            }
            Err(_) => false,
        }
    }

    async fn on_frame(&self, link: &mut Link, frame: server_frame::Kind) {
        if let server_frame::Kind::Message(m) = frame {
            let Ok(conversation) = parse_id::<ConversationId>("conversation_id", &m.conversation_id) else { return };
            let r = Received { connection: link.epoch, conversation, seq: m.seq, client_msg_id: m.client_msg_id.clone() };
            self.received.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            // Acknowledged once recorded: what is acknowledged is never sent again.
            let _ = link.roaming.conn().ack(conversation, m.seq).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (ConversationId, DeviceId, DeviceId, DeviceId) {
        (ConversationId::random(), DeviceId::random(), DeviceId::random(), DeviceId::random())
    }

    fn history(c: ConversationId, a: DeviceId, b: DeviceId) -> History {
        let mut h = History::default();
        h.members.insert(c, [a, b].into_iter().collect());
        h.start.insert(c, 1);
        let log: BTreeMap<u64, LogEntry> = [(1, "event-1", a), (2, "a-0", a), (3, "b-0", b), (4, "a-1", a)]
            .into_iter()
            .map(|(s, id, d)| (s, LogEntry { client_msg_id: id.into(), sender_device: d }))
            .collect();
        h.logs.insert(c, log);
        h.acked.insert(a, vec![(c, "a-0".into(), 2), (c, "a-1".into(), 4)]);
        h.acked.insert(b, vec![(c, "b-0".into(), 3)]);
        let r = |connection, seq, id: &str| Received { connection, conversation: c, seq, client_msg_id: id.into() };
        h.received.insert(a, vec![r(0, 3, "b-0")]);
        // B: 2 on its first connection, then a reconnect that repeats 2 (at-least-once).
        h.received.insert(b, vec![r(0, 2, "a-0"), r(1, 2, "a-0"), r(1, 4, "a-1")]);
        h
    }

    #[test]
    fn a_sound_history_passes_duplicates_across_connections_included() {
        let (c, a, b, _) = ids();
        assert_eq!(check(&history(c, a, b)), vec![]);
    }

    #[test]
    fn each_kind_of_fault_is_caught() {
        let (c, a, b, x) = ids();
        // A lost acknowledged message.
        let mut h = history(c, a, b);
        h.logs.get_mut(&c).expect("log").remove(&4);
        let v = check(&h);
        assert!(v.iter().any(|v| matches!(v, Violation::LostAck { seq: 4, .. })), "{v:?}");
        // A gap in the log.
        let mut h = history(c, a, b);
        h.logs.get_mut(&c).expect("log").insert(6, LogEntry { client_msg_id: "a-2".into(), sender_device: a });
        assert!(check(&h).iter().any(|v| matches!(v, Violation::LogGap { seq: 5, .. })));
        // Stored twice.
        let mut h = history(c, a, b);
        h.logs.get_mut(&c).expect("log").insert(5, LogEntry { client_msg_id: "a-1".into(), sender_device: a });
        assert!(check(&h).iter().any(|v| matches!(v, Violation::StoredTwice { .. })));
        // A member that misses a message.
        let mut h = history(c, a, b);
        h.received.get_mut(&b).expect("b").pop();
        assert!(check(&h).iter().any(|v| matches!(v, Violation::Missed { seqs, .. } if seqs == &vec![4])));
        // Out of order on one connection, and a skip on one connection.
        let mut h = history(c, a, b);
        let r = |connection, seq, id: &str| Received { connection, conversation: c, seq, client_msg_id: id.into() };
        h.received.insert(b, vec![r(0, 4, "a-1"), r(0, 2, "a-0")]);
        assert!(check(&h).iter().any(|v| matches!(v, Violation::ConnectionOrder { .. })));
        let mut h = history(c, a, b);
        h.logs.get_mut(&c).expect("log").insert(5, LogEntry { client_msg_id: "a-2".into(), sender_device: a });
        h.logs.get_mut(&c).expect("log").insert(6, LogEntry { client_msg_id: "a-3".into(), sender_device: a });
        h.received.insert(b, vec![r(0, 2, "a-0"), r(0, 4, "a-1"), r(0, 6, "a-3"), r(1, 5, "a-2")]);
        assert!(check(&h).iter().any(|v| matches!(v, Violation::ConnectionOrder { detail, .. } if detail.contains("skipping 5"))));
        // Acks out of the order sent.
        let mut h = history(c, a, b);
        h.acked.insert(a, vec![(c, "a-1".into(), 4), (c, "a-0".into(), 2)]);
        assert!(check(&h).iter().any(|v| matches!(v, Violation::OutOfOrderAcks { .. })));
        // A leak to an outsider, and a wrong message at a seq.
        let mut h = history(c, a, b);
        h.received.insert(x, vec![r(0, 2, "a-0")]);
        h.received.get_mut(&a).expect("a").push(r(0, 4, "forged"));
        let v = check(&h);
        assert!(v.iter().any(|v| matches!(v, Violation::Leaked { .. })), "{v:?}");
        assert!(v.iter().any(|v| matches!(v, Violation::Mismatch { seq: 4, .. })), "{v:?}");
    }
}
