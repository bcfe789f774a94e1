//! `switchboard bench`: the command line of the benchmarks. Each scenario starts its own
//! private server (and, with `--baseline relay`, the bare relay), prints progress on
//! stderr and one JSON line on stdout.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::server::{BenchStore, ServerProcess, StoreChoice, provision_bulk};
use super::traffic::{self, Plan, TrafficReport, TrafficSpec};
use super::{LoadError, Measured, RelayProcess, relay};
use crate::client::Transport;

/// `switchboard bench …`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Drive the load over WebSocket instead of raw TCP.
    #[arg(long, global = true)]
    pub websocket: bool,
    /// The store of the benchmarked server.
    #[arg(long, global = true, value_enum, default_value_t = BenchStore::Embedded)]
    pub store: BenchStore,
    /// The embedded store's page cache, MiB (`embedded:<dir>?cache_mb=N`; default: the
    /// server's default).
    #[arg(long, global = true)]
    pub embedded_cache_mb: Option<usize>,
    /// The embedded store's checkpoint interval, seconds (`checkpoint_secs=N`).
    #[arg(long, global = true)]
    pub embedded_checkpoint_secs: Option<u64>,
    /// The embedded store's group commit linger, microseconds (`commit_linger_us=N`).
    #[arg(long, global = true)]
    pub embedded_commit_linger_us: Option<u64>,
    /// One more argument for the benchmarked server's `serve` (repeatable), e.g.
    /// `--server-arg=--conversation-idle-secs=30`.
    #[arg(long = "server-arg", global = true, allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// The `switchboard` binary to benchmark (default: this one). Compare two builds in one
    /// run by naming each in turn.
    #[arg(long, global = true)]
    pub server_binary: Option<PathBuf>,
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// A measurement next to the server's in the same run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// The bare relay: same frames, no store, no actors.
    Relay,
}

/// The scenarios.
#[derive(clap::Subcommand)]
pub enum Scenario {
    /// The same 1:1 traffic on one node and on a two-node cluster (PostgreSQL, Redis), in
    /// one run: every pair's ends on different nodes.
    CrossNode {
        /// Online users (even).
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        /// Aggregate messages per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Payload size in bytes (the first 12 carry the send time and the run).
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
    /// Connect and authenticate N devices; report server memory per idle device and login rate.
    Idle {
        /// Devices to connect (stay below ~19,000: one process may hold 20,000 files).
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Concurrent logins.
        #[arg(long, default_value_t = 256)]
        parallel: usize,
    },
    /// N online users send 1:1 messages to their contacts at an open-loop aggregate rate.
    Direct {
        /// Online users.
        #[arg(long, default_value_t = 2_000)]
        users: usize,
        /// Contacts per user (1: each sends to the next user of a random ring; an even
        /// 2k: each has k users before and k after it, N × k conversations), sent to in turn.
        #[arg(long, default_value_t = 1)]
        contacts: usize,
        /// Aggregate messages per second.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Payload size in bytes (the first 12 carry the send time and the run).
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Recipients do not acknowledge (no ✓✓, no cursor writes).
        #[arg(long)]
        no_acks: bool,
        /// Step the rate up from `--rate` (×1.25 per step) and report the highest rate with
        /// every message delivered and p99 ≤ 100 ms.
        #[arg(long)]
        max: bool,
        /// Also measure this, with the same load, in the same run.
        #[arg(long, value_enum)]
        baseline: Option<Baseline>,
        /// After the run, every client disconnects and the server's RSS is read again this
        /// many seconds later (memory that comes back), next to its RSS before the load.
        #[arg(long, default_value_t = 0)]
        linger: u64,
    },
    /// N devices drop and reconnect at once, each having missed K messages.
    Reconnect {
        /// Devices (stay below ~19,000: all stay connected until every one has caught up,
        /// and one process may hold 20,000 files).
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Messages each device missed.
        #[arg(long, default_value_t = 10)]
        missed: u64,
        /// Concurrent connection attempts.
        #[arg(long, default_value_t = 1_000)]
        parallel: usize,
    },
    /// In-process: hold N idle device session actors (no sockets); report memory per session,
    /// spawn rate and routing throughput.
    Sessions {
        /// Session actors.
        #[arg(long, default_value_t = 1_000_000)]
        count: usize,
    },
    /// G groups of M members, all online, every member sending to its group.
    Group {
        /// Number of groups.
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// Members per group.
        #[arg(long, default_value_t = 1024)]
        members: usize,
        /// Aggregate messages sent per second (each is delivered to members − 1 devices).
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Payload size in bytes (the first 12 carry the send time and the run).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Recipients do not acknowledge.
        #[arg(long)]
        no_acks: bool,
    },
    /// Media upload and download throughput (tus, fsynced directory) for one transfer and
    /// for N parallel ones, next to `dd conv=fsync` on the same filesystem.
    Media {
        /// Size of the single transfer, MiB.
        #[arg(long, default_value_t = 100)]
        single_mb: usize,
        /// Parallel transfers in the second round.
        #[arg(long, default_value_t = 100)]
        parallel: usize,
        /// Size of each parallel transfer, MiB.
        #[arg(long, default_value_t = 10)]
        parallel_mb: usize,
        /// Chunk (PATCH) size, MiB.
        #[arg(long, default_value_t = 8)]
        chunk_mb: usize,
    },
    /// Key sharing when a group rotates its Megolm session: senders each send one
    /// to-device message to every other device of the group, rotation after rotation, and
    /// every device acknowledges what it gets.
    KeyRotation {
        /// Group members.
        #[arg(long, default_value_t = 256)]
        members: usize,
        /// Devices per member (the primary and D−1 linked ones).
        #[arg(long, default_value_t = 4)]
        devices: usize,
        /// Members rotating at once.
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Rotations per sender.
        #[arg(long, default_value_t = 20)]
        rotations: usize,
        /// Bytes per ciphertext.
        #[arg(long, default_value_t = 400)]
        payload: usize,
    },
    /// A reinstalled device's first sync: the conversation list and the first catch-up
    /// (time and bytes) for a user with C conversations of M messages each.
    Reinstall {
        /// Conversations of the user (one peer each, 1:1).
        #[arg(long, default_value_t = 200)]
        conversations: usize,
        /// Messages stored in each.
        #[arg(long, default_value_t = 500)]
        messages: u64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// The server's `--catch-up-recent` (default: the server's own, 20); a large value
        /// replays the whole history, as every first catch-up did before.
        #[arg(long)]
        catch_up_recent: Option<usize>,
    },
    /// (Internal) the bare relay process of `--baseline relay`.
    #[command(hide = true)]
    Relay {
        /// JSON list of the credentials it accepts.
        #[arg(long)]
        tokens: PathBuf,
        /// Where to write its TCP address once listening.
        #[arg(long)]
        ready_file: PathBuf,
    },
}

fn spinner(message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Per-device limits raised so that the generator, not the rate limiter, sets the pace.
fn server_args() -> Vec<String> {
    ["--rate-per-sec", "1000000", "--rate-burst", "1000000"].iter().map(|s| s.to_string()).collect()
}

/// Runs `switchboard bench …` and returns its JSON result line.
pub async fn run(args: BenchArgs) -> Result<String, LoadError> {
    let BenchArgs {
        websocket,
        store,
        embedded_cache_mb,
        embedded_checkpoint_secs,
        embedded_commit_linger_us,
        server_args: more_server_args,
        server_binary,
        scenario,
    } = args;
    let store = StoreChoice { kind: store, embedded_cache_mb, embedded_checkpoint_secs, embedded_commit_linger_us };
    let binary = match server_binary {
        Some(b) => b,
        None => std::env::current_exe()?,
    };
    let mut extra = server_args();
    extra.extend(more_server_args);
    let line = match scenario {
        Scenario::Relay { tokens, ready_file } => {
            relay::serve(&tokens, &ready_file).await?;
            String::new()
        }
        Scenario::Sessions { count } => {
            let bar = spinner("spawning sessions");
            let report = super::sessions(count, |n| bar.set_message(format!("{n}/{count} sessions"))).await?;
            bar.finish_and_clear();
            to_json(&report)
        }
        Scenario::CrossNode { users, rate, duration, payload } => {
            let bar = spinner("cross-node comparison");
            let b = bar.clone();
            let report = super::cross_node(&binary, &extra, users, rate, Duration::from_secs(duration), payload, move |phase: &str| {
                b.set_message(phase.to_owned())
            })
            .await?;
            bar.finish_and_clear();
            to_json(&report)
        }
        Scenario::Media { single_mb, parallel, parallel_mb, chunk_mb } => {
            let blob_dir = tempfile::Builder::new().prefix("switchboard-bench-media-").tempdir()?;
            let mut media_extra = extra.clone();
            media_extra.extend([
                "--media-store".to_owned(),
                format!("fs:{}", blob_dir.path().display()),
                "--media-max-upload-bytes".to_owned(),
                (single_mb.max(parallel_mb) << 20).to_string(),
                "--media-quota-bytes".to_owned(),
                u64::MAX.to_string(),
                "--media-uploads-per-minute".to_owned(),
                "100000".to_owned(),
            ]);
            let server = start(&binary, &media_extra, store, websocket)?;
            let tokens: Vec<String> = provision(&server, parallel.max(1)).await?.into_iter().map(|c| c.token).collect();
            let bar = spinner("media transfers");
            let report = super::media::run(
                &server,
                blob_dir.path(),
                &tokens,
                &[(1, single_mb << 20), (parallel, parallel_mb << 20)],
                chunk_mb << 20,
                |phase| bar.set_message(phase.to_owned()),
            )
            .await?;
            bar.finish_and_clear();
            to_json(&report)
        }
        Scenario::Idle { devices, parallel } => {
            let server = start(&binary, &extra, store, websocket)?;
            let credentials = provision(&server, devices).await?;
            let bar = spinner("connecting devices");
            let (report, conns) = super::idle(&server, &credentials, parallel).await?;
            bar.finish_and_clear();
            drop(conns);
            to_json(&report)
        }
        Scenario::Reconnect { devices, missed, parallel } => {
            let server = start(&binary, &extra, store, websocket)?;
            let credentials = provision(&server, devices + 1).await?;
            let bar = spinner("reconnect storm");
            let report = super::reconnect(&server, &credentials, missed, parallel).await?;
            bar.finish_and_clear();
            to_json(&report)
        }
        Scenario::Reinstall { conversations, messages, payload, catch_up_recent } => {
            let mut reinstall_extra = extra.clone();
            if let Some(n) = catch_up_recent {
                reinstall_extra.extend(["--catch-up-recent".to_owned(), n.to_string()]);
            }
            let server = start(&binary, &reinstall_extra, store, websocket)?;
            let credentials = provision(&server, conversations + 1).await?;
            let (owner, peers) = credentials.split_first().ok_or_else(|| LoadError::Server("no users".into()))?;
            let bar = spinner("storing the history");
            let transport = server.transport();
            super::reinstall::fill(&transport, owner, peers, messages, payload, 16).await?;
            bar.set_message("the new device syncs");
            let api = crate::client::HttpApi::new(format!("http://{}", server.http));
            let mut report = super::reinstall::measure(&transport, &api, owner).await?;
            bar.finish_and_clear();
            report.conversations = conversations;
            report.messages_stored = conversations as u64 * messages;
            report.catch_up_recent = catch_up_recent;
            to_json(&report)
        }
        Scenario::KeyRotation { members, devices, senders, rotations, payload } => {
            let server = start(&binary, &extra, store, websocket)?;
            let bar = spinner("key rotation");
            let b = bar.clone();
            let spec = super::rotation::RotationSpec { members, devices, senders, rotations, payload_bytes: payload };
            let report = super::rotation::key_rotation(&server, spec, move |m| b.set_message(m.to_owned())).await?;
            bar.finish_and_clear();
            to_json(&report)
        }
        Scenario::Group { groups, members, rate, duration, payload, no_acks } => {
            let spec =
                TrafficSpec { rate, duration: Duration::from_secs(duration), payload_bytes: payload, acks: !no_acks, drain: Duration::from_secs(5) };
            let server = start(&binary, &extra, store, websocket)?;
            let report = group(&server, groups, members, spec).await?;
            to_json(&report)
        }
        Scenario::Direct { users, contacts, rate, duration, payload, no_acks, max, baseline, linger } => {
            let spec = |rate| TrafficSpec {
                rate,
                duration: Duration::from_secs(duration),
                payload_bytes: payload,
                acks: !no_acks,
                drain: Duration::from_secs(5),
            };
            let run_once = |rate: u64| {
                let (binary, extra) = (binary.clone(), extra.clone());
                async move {
                    let relay = match baseline {
                        Some(Baseline::Relay) => Some(direct_relay(&binary, users, contacts, spec(rate)).await?),
                        None => None,
                    };
                    // Each measurement on a fresh server: no step inherits another's backlog.
                    let server = start(&binary, &extra, store, websocket)?;
                    let report = direct(&server, users, contacts, spec(rate), Duration::from_secs(linger)).await?;
                    Ok::<_, LoadError>((relay, report))
                }
            };
            if max {
                let mut steps = Vec::new();
                let mut best = None;
                let mut step_rate = rate;
                loop {
                    let (relay, report) = run_once(step_rate).await?;
                    let passed = report.traffic.passed;
                    if passed {
                        best = Some(step_rate);
                    }
                    steps.push(json!({ "rate": step_rate, "baseline": relay, "switchboard": report }));
                    if !passed || steps.len() >= 12 {
                        break;
                    }
                    step_rate = step_rate * 5 / 4;
                }
                json!({ "scenario": "direct-max", "max_rate_passing": best, "steps": steps }).to_string()
            } else {
                let (relay, report) = run_once(rate).await?;
                json!({ "scenario": "direct", "baseline": relay, "switchboard": report }).to_string()
            }
        }
    };
    Ok(line)
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| json!({ "error": e.to_string() }).to_string())
}

fn start(binary: &std::path::Path, extra: &[String], store: StoreChoice, websocket: bool) -> Result<ServerProcess, LoadError> {
    let mut server = ServerProcess::start_on(binary, extra, store)?;
    server.use_websocket = websocket;
    Ok(server)
}

async fn provision(server: &ServerProcess, users: usize) -> Result<Vec<crate::accounts::DeviceCredentials>, LoadError> {
    let bar = spinner("provisioning users");
    let credentials = provision_bulk(server, users, |n| bar.set_message(format!("provisioned {n}/{users} users"))).await?;
    bar.finish_and_clear();
    Ok(credentials)
}

/// A 1:1 run's report with what the server said about itself after it.
#[derive(serde::Serialize)]
struct DirectReport {
    #[serde(flatten)]
    traffic: TrafficReport,
    /// Server RSS with the users provisioned, before any client connected, bytes.
    server_rss_before_load_bytes: u64,
    /// `--linger`: seconds waited after every client left.
    linger_s: u64,
    /// Server RSS `linger_s` after every client left, bytes (with `--linger`).
    server_rss_after_linger_bytes: Option<u64>,
    /// The embedded store's checkpoints during the run (durable redb commits that stall
    /// the writer), seconds; absent on other stores.
    checkpoints: Option<super::server_metrics::SummaryReading>,
    /// The store writer's batches (ops per batch).
    writer_batch_ops: Option<super::server_metrics::SummaryReading>,
}

/// 1:1 traffic against the server.
async fn direct(server: &ServerProcess, users: usize, contacts: usize, spec: TrafficSpec, linger: Duration) -> Result<DirectReport, LoadError> {
    let credentials = provision(server, users).await?;
    let server_rss_before_load_bytes = server.rss_bytes().unwrap_or(0);
    let bar = spinner("connecting and opening conversations");
    let mut conns = traffic::connect_all(&[server.transport()], &credentials, 256).await?;
    let plan = Plan::direct(&credentials, contacts);
    traffic::open_directs(&mut conns, &plan.opens).await?;
    bar.set_message("sending");
    let b = bar.clone();
    let report = traffic::run(&[server as &dyn Measured], "direct", "switchboard", conns, &plan, spec, move |sent, delivered| {
        b.set_message(format!("switchboard: sent {sent}, delivered {delivered}"));
    })
    .await?;
    let metrics = super::server_metrics::fetch(server.http).await.unwrap_or_default();
    // The run's connections are closed when it returns.
    let server_rss_after_linger_bytes = if linger.is_zero() {
        None
    } else {
        bar.set_message(format!("every client left; waiting {} s", linger.as_secs()));
        tokio::time::sleep(linger).await;
        Some(server.rss_bytes().unwrap_or(0))
    };
    bar.finish_and_clear();
    Ok(DirectReport {
        traffic: report,
        server_rss_before_load_bytes,
        linger_s: linger.as_secs(),
        server_rss_after_linger_bytes,
        checkpoints: super::server_metrics::summary(&metrics, "switchboard_store_checkpoint_seconds"),
        writer_batch_ops: super::server_metrics::summary(&metrics, "switchboard_store_batch_ops"),
    })
}

/// The same 1:1 traffic against the bare relay.
async fn direct_relay(binary: &std::path::Path, users: usize, contacts: usize, spec: TrafficSpec) -> Result<TrafficReport, LoadError> {
    let credentials = relay::credentials(users);
    let relay = RelayProcess::start(binary, &credentials)?;
    let bar = spinner("relay: connecting");
    let mut conns = traffic::connect_all(&[Transport::Tcp(relay.tcp)], &credentials, 256).await?;
    let plan = Plan::direct(&credentials, contacts);
    traffic::open_directs(&mut conns, &plan.opens).await?;
    let b = bar.clone();
    let report = traffic::run(&[&relay as &dyn Measured], "direct", "relay", conns, &plan, spec, move |sent, delivered| {
        b.set_message(format!("relay: sent {sent}, delivered {delivered}"));
    })
    .await?;
    bar.finish_and_clear();
    Ok(report)
}

/// Group traffic against the server.
async fn group(server: &ServerProcess, groups: usize, members: usize, spec: TrafficSpec) -> Result<TrafficReport, LoadError> {
    let groups = groups.max(1);
    let credentials = provision(server, groups * members).await?;
    let bar = spinner("connecting and creating groups");
    let mut conns = traffic::connect_all(&[server.transport()], &credentials, 256).await?;
    let mut ids = Vec::with_capacity(groups);
    for g in 0..groups {
        let range = g * members..(g + 1) * members;
        let others: Vec<crate::ids::UserId> = credentials[range.clone()].iter().skip(1).map(|c| c.user_id).collect();
        ids.push(conns[range.start].create_group(&format!("bench {g}"), &others).await?);
    }
    // Every member takes the creation event off its socket before timing starts.
    for conn in conns.iter_mut() {
        conn.next_message(Duration::from_secs(60)).await?;
    }
    let plan = Plan::group(&ids, members);
    bar.set_message("sending");
    let b = bar.clone();
    let report = traffic::run(&[server as &dyn Measured], "group", "switchboard", conns, &plan, spec, move |sent, delivered| {
        b.set_message(format!("sent {sent}, delivered {delivered}"));
    })
    .await?;
    bar.finish_and_clear();
    Ok(report)
}
