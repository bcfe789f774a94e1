//! Open-loop traffic for `bench direct` and `bench group`: every device sends on a fixed
//! schedule (missed ticks are sent late, never skipped), recipients measure send→deliver
//! latency and acknowledge what they get as apps do (one `Ack` per conversation at most
//! every 100 ms), or not at all with `--no-acks`.
//!
//! The generator must not hide the server: one task per device that reads and writes
//! (no channel between a reader and a writer), frames written with one flush per tick,
//! latencies kept per task as plain samples and merged at the end (no lock per message),
//! and its own CPU time reported next to the server's.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{LoadError, Measured, own_cpu_time};
use crate::accounts::DeviceCredentials;
use crate::client::{Connection, Transport};
use crate::ids::{ConversationId, UserId};
use crate::protocol::{self, client_frame, id_bytes, pb, server_frame};
use crate::store::direct_conversation_id;

/// The shape of a run.
#[derive(Debug, Clone, Copy)]
pub struct TrafficSpec {
    /// Messages sent per second, all devices together.
    pub rate: u64,
    /// Sending time.
    pub duration: Duration,
    /// Bytes of each payload (at least 12: a timestamp and the run's id).
    pub payload_bytes: usize,
    /// Recipients acknowledge what they get (✓✓ receipts and cursor writes on the server).
    pub acks: bool,
    /// After sending stops, how long to wait for deliveries still in flight.
    pub drain: Duration,
}

/// Result of the `direct` and `group` scenarios.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    /// Scenario name.
    pub scenario: String,
    /// What was measured: "switchboard" or "relay".
    pub target: String,
    /// Online users (one device each).
    pub users: usize,
    /// Conversations each device sends to (1:1 contacts, or 1 group).
    pub conversations_per_user: usize,
    /// Members per conversation (2 for 1:1).
    pub members: usize,
    /// Recipients acknowledged.
    pub acks: bool,
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
    /// Server CPU time per 1,000 deliveries, milliseconds (= µs per delivery).
    pub server_cpu_ms_per_1000: f64,
    /// The generator's own CPU time per 1,000 deliveries, milliseconds.
    pub loadgen_cpu_ms_per_1000: f64,
    /// Share of one core the server used while sending, averaged.
    pub server_cores: f64,
    /// Share of one core the generator used.
    pub loadgen_cores: f64,
    /// Server resident memory at the end, bytes.
    pub server_rss_bytes: u64,
    /// Server threads at the end.
    pub server_threads: u64,
    /// True if every message was delivered and p99 ≤ 100 ms.
    pub passed: bool,
}

/// Who sends where: for each device, the conversations it sends to in turn, and the
/// number of members each conversation has.
pub struct Plan {
    /// Per device, in the order of `credentials`.
    pub sends: Vec<Vec<ConversationId>>,
    /// Members per conversation.
    pub members: usize,
    /// 1:1 only: per device, the peers whose conversation it opens (each pair once).
    pub opens: Vec<Vec<UserId>>,
}

impl Plan {
    /// 1:1 traffic over a contact graph: the users are placed on a ring in random order;
    /// with `contacts` = 1 each sends to the next one; with an even `contacts` = 2k, each
    /// has the k before and the k after it as contacts (every pair counted once: N × k
    /// conversations) and sends to them in turn.
    pub fn direct(credentials: &[DeviceCredentials], contacts: usize) -> Self {
        let n = credentials.len();
        let mut order: Vec<usize> = (0..n).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
        let mut position = vec![0usize; n];
        for (p, &i) in order.iter().enumerate() {
            position[i] = p;
        }
        let user = |i: usize| credentials[i].user_id;
        let mut sends = Vec::with_capacity(n);
        let mut opens = Vec::with_capacity(n);
        for (i, &p) in position.iter().enumerate() {
            let mut peers: Vec<usize> = if contacts <= 1 {
                vec![order[(p + 1) % n]]
            } else {
                let k = (contacts / 2).min((n - 1) / 2).max(1);
                (1..=k).flat_map(|d| [order[(p + d) % n], order[(p + n - d) % n]]).collect()
            };
            peers.dedup();
            // Each pair is opened once, by its member that comes first.
            opens.push(peers.iter().filter(|&&j| contacts <= 1 || i < j).map(|&j| user(j)).collect());
            sends.push(peers.into_iter().map(|j| direct_conversation_id(user(i), user(j))).collect());
        }
        Self { sends, members: 2, opens }
    }

    /// Device `i` sends to device `i + 1` (a ring in `credentials` order).
    pub fn ring_in_order(credentials: &[DeviceCredentials]) -> Self {
        let n = credentials.len();
        let peer = |i: usize| credentials[(i + 1) % n].user_id;
        let sends = (0..n).map(|i| vec![direct_conversation_id(credentials[i].user_id, peer(i))]).collect();
        let opens = (0..n).map(|i| vec![peer(i)]).collect();
        Self { sends, members: 2, opens }
    }

    /// Every device sends to its group.
    pub fn group(groups: &[ConversationId], per_group: usize) -> Self {
        Self { sends: groups.iter().flat_map(|g| std::iter::repeat_n(vec![*g], per_group)).collect(), members: per_group, opens: Vec::new() }
    }
}

/// Connects device `i` to `transports[i % len]` and waits for its catch-up.
pub async fn connect_all(transports: &[Transport], credentials: &[DeviceCredentials], parallel: usize) -> Result<Vec<Connection>, LoadError> {
    let opened: Vec<Result<(usize, Connection), LoadError>> = futures_util::stream::iter(credentials.iter().enumerate())
        .map(|(i, c)| {
            let transport = transports[i % transports.len()].clone();
            let token = c.token.clone();
            async move {
                let (mut conn, _) = Connection::open(&transport, &token).await?;
                conn.wait_for(Duration::from_secs(60), true, |k| matches!(k, server_frame::Kind::CatchUpComplete(_)).then_some(())).await?;
                Ok((i, conn))
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let mut conns: Vec<(usize, Connection)> = opened.into_iter().collect::<Result<_, _>>()?;
    conns.sort_by_key(|(i, _)| *i);
    Ok(conns.into_iter().map(|(_, c)| c).collect())
}

/// Opens every 1:1 conversation of the plan (each by one of its members, pipelined).
pub async fn open_directs(conns: &mut [Connection], pairs: &[Vec<UserId>]) -> Result<(), LoadError> {
    let opens = conns.iter_mut().zip(pairs).map(|(conn, peers)| async move {
        let frames: Vec<client_frame::Kind> = peers
            .iter()
            .enumerate()
            .map(|(k, p)| client_frame::Kind::OpenDirect(pb::OpenDirect { request_id: k as u64 + 1, peer_user_id: id_bytes(*p) }))
            .collect();
        let n = frames.len();
        if n == 0 {
            return Ok::<(), LoadError>(());
        }
        conn.send_many(frames).await?;
        for _ in 0..n {
            conn.wait_for(Duration::from_secs(120), true, |k| matches!(k, server_frame::Kind::DirectOpened(_)).then_some(())).await?;
        }
        Ok(())
    });
    futures_util::stream::iter(opens).buffer_unordered(256).collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

/// Counters shared by the device tasks (read by the progress reporter).
#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    delivered: AtomicU64,
    acked: AtomicU64,
}

/// What one device measured.
#[derive(Default)]
struct DeviceStats {
    latencies_us: Vec<u32>,
    gaps: u64,
}

/// Drives the plan over `conns` and measures. `targets` are the processes whose CPU and
/// memory are reported (the server's nodes, or the relay).
pub async fn run(
    targets: &[&dyn Measured],
    scenario: &str,
    target: &str,
    conns: Vec<Connection>,
    plan: &Plan,
    spec: TrafficSpec,
    progress: impl Fn(u64, u64) + Send + 'static,
) -> Result<TrafficReport, LoadError> {
    let n = conns.len();
    let shared = Arc::new(Shared::default());
    let run_id: u32 = rand::random();
    let start = Instant::now() + Duration::from_millis(50);
    let stop_sending = start + spec.duration;
    let interval = Duration::from_secs_f64(n as f64 / spec.rate.max(1) as f64);
    let done = CancellationToken::new();
    let cpu = || -> Result<Duration, LoadError> { targets.iter().map(|t| t.cpu_time()).sum() };
    let (cpu_before, own_before) = (cpu()?, own_cpu_time()?);
    let mut tasks = Vec::with_capacity(n);
    for (i, conn) in conns.into_iter().enumerate() {
        let targets: Vec<Bytes> = plan.sends[i].iter().map(|c| id_bytes(*c)).collect();
        let offset = interval.mul_f64((i as f64 / n as f64).fract());
        let device = Device {
            index: i,
            run_id,
            start,
            first_send: start + offset,
            interval,
            stop_sending,
            acks: spec.acks,
            payload_bytes: spec.payload_bytes.max(12),
        };
        tasks.push(tokio::spawn(device.run(conn, targets, shared.clone(), done.clone())));
    }
    let reporter = {
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress(shared.sent.load(Ordering::Relaxed), shared.delivered.load(Ordering::Relaxed));
            }
        })
    };
    // Until every message sent has arrived everywhere, or the drain time is over.
    let fanout = plan.members.saturating_sub(1).max(1) as u64;
    let drain_until = stop_sending + spec.drain;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Instant::now();
        let expected = shared.sent.load(Ordering::Relaxed) * fanout;
        if now >= drain_until || (now >= stop_sending && shared.delivered.load(Ordering::Relaxed) >= expected) {
            break;
        }
    }
    let sending_time = spec.duration.as_secs_f64();
    let (cpu_used, own_used) = (cpu()?.saturating_sub(cpu_before), own_cpu_time()?.saturating_sub(own_before));
    let elapsed = start.elapsed().as_secs_f64().max(sending_time);
    done.cancel();
    reporter.abort();
    let mut latencies: Vec<u32> = Vec::new();
    let mut gaps = 0;
    for t in tasks {
        if let Ok(stats) = t.await {
            latencies.extend(stats.latencies_us);
            gaps += stats.gaps;
        }
    }
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    let (sent, delivered, acked) =
        (shared.sent.load(Ordering::Relaxed), shared.delivered.load(Ordering::Relaxed), shared.acked.load(Ordering::Relaxed));
    let per_1000 = |d: Duration| d.as_secs_f64() * 1e6 / delivered.max(1) as f64;
    let p99 = pct(0.99);
    let server_rss_bytes = targets.iter().map(|t| t.rss_bytes().unwrap_or(0)).sum();
    let server_threads = targets.iter().map(|t| t.threads().unwrap_or(0)).sum();
    Ok(TrafficReport {
        scenario: scenario.to_owned(),
        target: target.to_owned(),
        users: n,
        conversations_per_user: plan.sends.first().map(Vec::len).unwrap_or(0),
        members: plan.members,
        acks: spec.acks,
        target_rate: spec.rate,
        duration_s: sending_time,
        sent,
        acked,
        expected_deliveries: sent * fanout,
        delivered,
        gaps,
        deliveries_per_sec: delivered as f64 / sending_time,
        latency_ms_p50: pct(0.50),
        latency_ms_p90: pct(0.90),
        latency_ms_p99: p99,
        latency_ms_max: latencies.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        server_cpu_ms_per_1000: per_1000(cpu_used),
        loadgen_cpu_ms_per_1000: per_1000(own_used),
        server_cores: cpu_used.as_secs_f64() / elapsed,
        loadgen_cores: own_used.as_secs_f64() / elapsed,
        server_rss_bytes,
        server_threads,
        passed: delivered >= sent * fanout && sent > 0 && p99 <= 100.0,
    })
}

/// One device's schedule.
struct Device {
    index: usize,
    run_id: u32,
    start: Instant,
    first_send: Instant,
    interval: Duration,
    stop_sending: Instant,
    acks: bool,
    payload_bytes: usize,
}

/// How often a device acknowledges, at most (apps batch their ✓✓).
const ACK_EVERY: Duration = Duration::from_millis(100);

impl Device {
    async fn run(self, conn: Connection, targets: Vec<Bytes>, shared: Arc<Shared>, done: CancellationToken) -> DeviceStats {
        let (mut stream, mut sink, _) = conn.into_split();
        let mut stats = DeviceStats::default();
        let mut next_send = self.first_send;
        let mut sending = !targets.is_empty();
        let mut k = 0u64;
        let mut id = String::with_capacity(32);
        let mut payload = BytesMut::new();
        let mut last_seq: HashMap<Bytes, u64> = HashMap::new();
        let mut pending_acks: HashMap<Bytes, u64> = HashMap::new();
        let mut next_ack = Instant::now() + ACK_EVERY;
        loop {
            let wake = match (sending, self.acks && !pending_acks.is_empty()) {
                (true, true) => next_send.min(next_ack),
                (true, false) => next_send,
                (false, true) => next_ack,
                (false, false) => Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                _ = done.cancelled() => break,
                frame = stream.next() => {
                    let Some(Ok(bytes)) = frame else { break };
                    self.received(&bytes, &shared, &mut stats, &mut last_seq, &mut pending_acks);
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                    let now = Instant::now();
                    let mut wrote = false;
                    while sending && next_send <= now {
                        k += 1;
                        id.clear();
                        // Unique across runs: a repeated id would be answered as a duplicate.
                        let _ = write!(id, "{:08x}-{}-{k}", self.run_id, self.index);
                        payload.clear();
                        payload.put_u64(self.start.elapsed().as_nanos() as u64);
                        payload.put_u32(self.run_id);
                        payload.resize(self.payload_bytes, 0);
                        let conversation = targets[(k as usize) % targets.len()].clone();
                        let frame = protocol::client(client_frame::Kind::Send(pb::Send {
                            client_msg_id: id.clone(),
                            conversation_id: conversation,
                            payload: payload.split().freeze(),
                            kind: pb::MessageKind::Normal as i32,
                            reference_seq: 0,
                            attachments: Vec::new(),
                        }));
                        if sink.feed(protocol::encode_client(&frame)).await.is_err() {
                            return stats;
                        }
                        shared.sent.fetch_add(1, Ordering::Relaxed);
                        wrote = true;
                        next_send += self.interval;
                        sending = next_send < self.stop_sending;
                    }
                    if self.acks && now >= next_ack {
                        for (conversation, seq) in pending_acks.drain() {
                            let frame = protocol::client(client_frame::Kind::Ack(pb::Ack { conversation_id: conversation, seq }));
                            if sink.feed(protocol::encode_client(&frame)).await.is_err() {
                                return stats;
                            }
                            wrote = true;
                        }
                        next_ack = now + ACK_EVERY;
                    }
                    if wrote && sink.flush().await.is_err() {
                        return stats;
                    }
                }
            }
        }
        stats
    }

    fn received(
        &self,
        bytes: &[u8],
        shared: &Shared,
        stats: &mut DeviceStats,
        last_seq: &mut HashMap<Bytes, u64>,
        pending_acks: &mut HashMap<Bytes, u64>,
    ) {
        match protocol::decode_server(bytes) {
            Ok(server_frame::Kind::Message(m)) => {
                // Within one connection a conversation's seqs must be contiguous.
                if let Some(prev) = last_seq.insert(m.conversation_id.clone(), m.seq)
                    && m.seq != prev + 1
                {
                    stats.gaps += 1;
                }
                if self.acks {
                    pending_acks.insert(m.conversation_id, m.seq);
                }
                if m.payload.len() >= 12 {
                    let sent_at = u64::from_be_bytes(m.payload[..8].try_into().unwrap_or([0; 8]));
                    let run = u32::from_be_bytes(m.payload[8..12].try_into().unwrap_or([0; 4]));
                    // Redeliveries of an earlier run's unacknowledged messages are not this run's.
                    if run == self.run_id {
                        let now = self.start.elapsed().as_nanos() as u64;
                        stats.latencies_us.push((now.saturating_sub(sent_at) / 1000).min(u32::MAX as u64) as u32);
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(server_frame::Kind::SendAck(a)) => {
                shared.acked.fetch_add(1, Ordering::Relaxed);
                // The device's own messages are not sent back to it: their acks, which
                // come in seq order with the others' messages, fill those seqs.
                // (A duplicate's ack carries the original, earlier seq: not a position.)
                if !a.duplicate
                    && let Some(prev) = last_seq.insert(a.conversation_id, a.seq)
                    && a.seq != prev + 1
                {
                    stats.gaps += 1;
                }
            }
            _ => {}
        }
    }
}
