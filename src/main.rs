//! The `switchboard` binary: `serve` runs a node; `admin` inspects one; `client` lets a
//! person register, send and watch messages from a terminal.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use switchboard::accounts::DeviceCredentials;
use switchboard::client::{Connection, HttpApi, Transport};
use switchboard::config::{ServeArgs, ServerConfig};
use switchboard::http::admin::TreeNode;
use switchboard::ids::{ConversationId, DeviceId, UserId};
use switchboard::protocol::{parse_id, pb, server_frame};
use uuid::Uuid;

#[derive(Parser)]
#[command(name = "switchboard", version, about = "A WhatsApp-class messaging server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node. Boxed: its many settings dwarf every other command's arguments.
    Serve(Box<ServeArgs>),
    /// Inspect a running node.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Benchmarks against a private server process started for the run; prints progress on
    /// stderr and one JSON result line on stdout.
    Bench {
        /// Drive the load over WebSocket instead of raw TCP.
        #[arg(long, global = true)]
        websocket: bool,
        /// The store of the benchmarked server.
        #[arg(long, global = true, value_enum, default_value_t = switchboard::loadgen::BenchStore::Embedded)]
        store: switchboard::loadgen::BenchStore,
        #[command(subcommand)]
        scenario: BenchScenario,
    },
    /// Manage a store: apply its schema, or copy a single node's data to a shared store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// A terminal client.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Fault injection on a local three-node cluster under 1:1 and group traffic (nodes
    /// SIGKILLed and frozen, Redis and PostgreSQL restarted), then a check of what every
    /// device saw. Prints one JSON report; exits 1 if the checker found a violation.
    Nemesis {
        /// Traffic and faults, in minutes.
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
        /// Seed of the fault schedule (random if absent; printed in the report).
        #[arg(long)]
        seed: Option<u64>,
        /// Mean seconds between faults.
        #[arg(long, default_value_t = 6.0)]
        fault_every: f64,
        /// Where node directories and logs go.
        #[arg(long, default_value = "./switchboard-nemesis")]
        dir: std::path::PathBuf,
    },
    /// Try a cluster on this machine.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start N nodes on 127.0.0.1 with a private PostgreSQL and a private Redis; Ctrl-C
    /// stops everything.
    Local {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Node i listens on base+10i (TCP), +1 (HTTP/WebSocket), +2 (admin), +3 (cluster).
        #[arg(long, default_value_t = 9000)]
        base_port: u16,
        /// Where node directories and logs go.
        #[arg(long, default_value = "./switchboard-local-cluster")]
        dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Create or upgrade the schema of a store (`serve` also does this at start).
    Migrate {
        /// `embedded:<dir>`, `postgres://user:pass@host:port/db` or `scylla://host1,host2/keyspace`.
        #[arg(long, env = "SWITCHBOARD_STORE")]
        store: String,
        /// ScyllaDB only: the keyspace's replication, as a CQL map.
        #[arg(long, default_value = "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}")]
        replication: String,
    },
    /// Copy everything in a single node's embedded store to another store, with progress;
    /// resumable (run it again after an interruption) and verified by counts at the end.
    /// Stop the node first: its store can only be opened by one process.
    Copy {
        /// The embedded store to read: `embedded:<dir>`.
        #[arg(long)]
        from: String,
        /// The store to write: `postgres://…` (must be empty, unless resuming).
        #[arg(long)]
        to: String,
        /// Records per transaction on the target.
        #[arg(long, default_value_t = 1000)]
        chunk: usize,
        /// Progress file (default `<from dir>/copy-checkpoint.json`).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Print the live supervision tree.
    Tree {
        /// Admin listener URL.
        #[arg(long, env = "SWITCHBOARD_ADMIN_URL", default_value = "http://127.0.0.1:8082")]
        admin: String,
        /// Admin token (see `<data>/admin-token`).
        #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN")]
        token: String,
        /// Another node of the cluster (by name), reached through this one.
        #[arg(long)]
        node: Option<String>,
        /// Print the raw JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Show the cluster: members, health, sessions and conversations per node.
    Cluster {
        /// Admin listener URL of any node.
        #[arg(long, env = "SWITCHBOARD_ADMIN_URL", default_value = "http://127.0.0.1:8082")]
        admin: String,
        /// Admin token (the same on every node of a cluster).
        #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN")]
        token: String,
        /// Print the raw JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Drain a node: its conversations move to the others, its devices are asked to
    /// reconnect elsewhere (spread over the drain period), then it exits cleanly.
    Drain {
        /// The node to drain, by name.
        node: String,
        /// Admin listener URL of any node.
        #[arg(long, env = "SWITCHBOARD_ADMIN_URL", default_value = "http://127.0.0.1:8082")]
        admin: String,
        /// Admin token (the same on every node of a cluster).
        #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN")]
        token: String,
        /// Wait until the node has left the cluster.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum BenchScenario {
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
        /// Payload size in bytes (the first 8 carry the send time).
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
    /// N online users send 1:1 messages at an open-loop aggregate rate.
    Direct {
        /// Online users.
        #[arg(long, default_value_t = 2_000)]
        users: usize,
        /// Aggregate messages per second.
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Payload size in bytes (the first 8 carry the send time).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Step the rate up from `--rate` (×1.25 per step) and report the highest rate with
        /// every message delivered and p99 ≤ 100 ms.
        #[arg(long)]
        max: bool,
    },
    /// N devices drop and reconnect at once, each having missed K messages.
    Reconnect {
        /// Devices.
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
        /// Payload size in bytes (the first 8 carry the send time).
        #[arg(long, default_value_t = 100)]
        payload: usize,
    },
}

#[derive(clap::Args, Clone)]
struct ProfileArg {
    /// File holding this device's credentials (written by `verify` and `link`).
    #[arg(long, env = "SWITCHBOARD_PROFILE", default_value = "switchboard-profile.json")]
    profile: PathBuf,
}

#[derive(Subcommand)]
enum ClientCommand {
    /// Ask for a one-time code for a phone number.
    Register {
        /// Server HTTP URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Phone number in E.164 form.
        #[arg(long)]
        phone: String,
    },
    /// Verify the code; saves the new device's credentials to the profile.
    Verify {
        /// Server HTTP URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Phone number in E.164 form.
        #[arg(long)]
        phone: String,
        /// The one-time code.
        #[arg(long)]
        code: String,
        /// Name of this device.
        #[arg(long, default_value = "terminal")]
        name: String,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Show the profile's user and device ids.
    Whoami {
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Send a text message to another user (1:1).
    Send {
        #[command(flatten)]
        profile: ProfileArg,
        /// Recipient user id.
        #[arg(long)]
        to: UserId,
        /// The text (sent as opaque bytes; encryption belongs to real apps).
        text: String,
        /// Use raw TCP at this address instead of WebSocket.
        #[arg(long)]
        tcp: Option<std::net::SocketAddr>,
    },
    /// Print messages, receipts, typing and presence as they arrive; acknowledges and marks
    /// messages read.
    Watch {
        #[command(flatten)]
        profile: ProfileArg,
        /// Acknowledge delivery but do not mark messages read.
        #[arg(long)]
        no_read: bool,
        /// Use raw TCP at this address instead of WebSocket.
        #[arg(long)]
        tcp: Option<std::net::SocketAddr>,
    },
    /// Print the last messages with another user.
    History {
        #[command(flatten)]
        profile: ProfileArg,
        /// The other user.
        #[arg(long)]
        with: UserId,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List this account's devices.
    Devices {
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Link a new device (primary only); writes its profile to `--out`.
    Link {
        #[command(flatten)]
        profile: ProfileArg,
        /// Name of the new device.
        #[arg(long)]
        name: String,
        /// Where to write the new device's profile.
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a device (its live connection is closed).
    Revoke {
        #[command(flatten)]
        profile: ProfileArg,
        /// Device id.
        device: DeviceId,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Profile {
    server: String,
    #[serde(flatten)]
    credentials: DeviceCredentials,
}

impl Profile {
    fn load(arg: &ProfileArg) -> Result<Self> {
        let text = std::fs::read_to_string(&arg.profile).with_context(|| format!("reading profile {}", arg.profile.display()))?;
        serde_json::from_str(&text).context("profile is not valid JSON")
    }

    fn save(&self, path: &PathBuf) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?).with_context(|| format!("writing profile {}", path.display()))
    }

    fn transport(&self, tcp: Option<std::net::SocketAddr>) -> Transport {
        match tcp {
            Some(addr) => Transport::Tcp(addr),
            None => Transport::Ws(format!("{}/v1/ws", self.server.replacen("http", "ws", 1))),
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHBOARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            serve(*args).await
        }
        Command::Admin { command } => admin(command).await,
        Command::Cluster { command: ClusterCommand::Local { nodes, base_port, dir } } => local_cluster(nodes, base_port, &dir).await,
        Command::Client { command } => client(command).await,
        Command::Nemesis { minutes, seed, fault_every, dir } => {
            init_tracing();
            nemesis(minutes, seed, fault_every, dir).await
        }
        Command::Store { command } => store_command(command).await,
        Command::Bench { scenario, websocket, store } => bench(scenario, websocket, store).await,
    }
}

async fn store_command(command: StoreCommand) -> Result<()> {
    use switchboard::store::{EmbeddedStore, PostgresOptions, PostgresStore, StoreSpec, transfer};
    let parse = |s: &str| StoreSpec::parse(s).map_err(anyhow::Error::msg);
    match command {
        StoreCommand::Migrate { store, replication } => {
            let spec = parse(&store)?;
            let shown = spec.to_string();
            match spec {
                spec @ StoreSpec::Embedded(_) => {
                    spec.open().await.with_context(|| format!("opening {shown}"))?;
                    println!("{shown}: every table exists");
                }
                StoreSpec::Postgres { url, .. } => {
                    let store = PostgresStore::connect(&url, PostgresOptions { pool_size: 1, ..Default::default() })
                        .await
                        .with_context(|| format!("connecting to {shown}"))?;
                    let applied = store.migrate().await?;
                    if applied.is_empty() {
                        println!("schema already up to date");
                    } else {
                        println!("applied migrations {applied:?}");
                    }
                }
                StoreSpec::Scylla { options } => {
                    let applied =
                        switchboard::store::ScyllaStore::migrate(&options, &replication).await.with_context(|| format!("migrating {shown}"))?;
                    if applied.is_empty() {
                        println!("{shown}: schema already up to date");
                    } else {
                        println!("{shown}: applied migrations {applied:?} (replication {replication})");
                    }
                }
            }
        }
        StoreCommand::Copy { from, to, chunk, checkpoint } => {
            let StoreSpec::Embedded(dir) = parse(&from)? else { bail!("--from must be embedded:<dir> (the copy moves a single node's data)") };
            let target_spec = parse(&to)?;
            let source = EmbeddedStore::open(&dir).with_context(|| format!("opening {from} (is a node still running on it?)"))?;
            let target = target_spec.open().await.with_context(|| format!("opening {target_spec}"))?;
            let checkpoint = checkpoint.unwrap_or_else(|| dir.join("copy-checkpoint.json"));
            let progress = CopyBar::default();
            let report = transfer::copy(&source, target.as_ref(), &target_spec.to_string(), &checkpoint, chunk, &progress).await;
            progress.finish();
            let report = report?;
            if report.resumed {
                println!("resumed from {}", checkpoint.display());
            }
            for (section, n) in &report.counts {
                println!("{:>15}: {n} (source = target)", section.name());
            }
            println!("copy verified: {from} -> {target_spec}");
        }
    }
    Ok(())
}

/// One progress bar per section of a copy, on stderr.
#[derive(Default)]
struct CopyBar {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
}

impl CopyBar {
    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish();
        }
    }
}

impl switchboard::store::transfer::CopyProgress for CopyBar {
    fn section(&self, section: switchboard::store::Section, total: u64, done: u64) {
        self.finish();
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:>15} [{bar:30}] {pos}/{len} {per_sec} eta {eta}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(section.name());
        bar.set_position(done);
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            bar.inc(n);
        }
    }
}

fn spinner(message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

async fn bench(scenario: BenchScenario, websocket: bool, store: switchboard::loadgen::BenchStore) -> Result<()> {
    use switchboard::loadgen::{self, ServerProcess};
    if let BenchScenario::Sessions { count } = scenario {
        let bar = spinner("spawning sessions");
        let report = loadgen::sessions(count, |n| bar.set_message(format!("{n}/{count} sessions"))).await?;
        bar.finish_and_clear();
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let binary = std::env::current_exe()?;
    // Raise per-device limits so the generator, not the rate limiter, sets the pace.
    let extra: Vec<String> = ["--rate-per-sec", "100000", "--rate-burst", "100000"].iter().map(|s| s.to_string()).collect();
    if let BenchScenario::CrossNode { users, rate, duration, payload } = scenario {
        let bar = spinner("cross-node comparison");
        let progress = {
            let bar = bar.clone();
            move |phase: &str| bar.set_message(phase.to_owned())
        };
        let report = loadgen::cross_node(&binary, &extra, users, rate, Duration::from_secs(duration), payload, progress).await?;
        bar.finish_and_clear();
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    let mut server = ServerProcess::start_on(&binary, &extra, store)?;
    server.use_websocket = websocket;
    let users = match &scenario {
        BenchScenario::Idle { devices, .. } => *devices,
        BenchScenario::Direct { users, .. } => *users,
        BenchScenario::Group { groups, members, .. } => groups * members,
        BenchScenario::Sessions { .. } | BenchScenario::CrossNode { .. } => 0,
        BenchScenario::Reconnect { devices, .. } => devices + 1,
    };
    let bar = spinner("provisioning users");
    let credentials = loadgen::provision_bulk(&server, users, |n| bar.set_message(format!("provisioned {n}/{users} users"))).await?;
    bar.finish_and_clear();
    let line = match scenario {
        BenchScenario::Idle { parallel, .. } => {
            let bar = spinner("connecting devices");
            let (report, conns) = loadgen::idle(&server, &credentials, parallel).await?;
            bar.finish_and_clear();
            drop(conns);
            serde_json::to_string(&report)?
        }
        BenchScenario::Direct { rate, duration, payload, max: true, .. } => {
            let bar = spinner("stepping the rate");
            let mut steps = Vec::new();
            let mut best = None;
            let mut step_rate = rate;
            loop {
                bar.set_message(format!("rate {step_rate} msg/s"));
                // Each step on a fresh server, so no step inherits another's backlog.
                let mut step_server = ServerProcess::start_on(&binary, &extra, store)?;
                step_server.use_websocket = websocket;
                let step_users = loadgen::provision_bulk(&step_server, credentials.len(), |_| {}).await?;
                let report = loadgen::direct(&step_server, &step_users, step_rate, Duration::from_secs(duration), payload, |_, _| {}).await?;
                let passed = report.delivered >= report.expected_deliveries && report.latency_ms_p99 <= 100.0;
                if passed {
                    best = Some(step_rate);
                }
                steps.push(report);
                if !passed || steps.len() >= 12 {
                    break;
                }
                step_rate = step_rate * 5 / 4;
            }
            bar.finish_and_clear();
            serde_json::to_string(&serde_json::json!({ "scenario": "direct-max", "max_rate_passing": best, "steps": steps }))?
        }
        BenchScenario::Direct { rate, duration, payload, .. } => {
            let bar = spinner("sending");
            let progress_bar = bar.clone();
            let report = loadgen::direct(&server, &credentials, rate, Duration::from_secs(duration), payload, move |sent, delivered| {
                progress_bar.set_message(format!("sent {sent}, delivered {delivered}"));
            })
            .await?;
            bar.finish_and_clear();
            serde_json::to_string(&report)?
        }
        BenchScenario::Group { groups, rate, duration, payload, .. } => {
            let bar = spinner("sending");
            let progress_bar = bar.clone();
            let report = loadgen::group(&server, &credentials, groups, rate, Duration::from_secs(duration), payload, move |sent, delivered| {
                progress_bar.set_message(format!("sent {sent}, delivered {delivered}"));
            })
            .await?;
            bar.finish_and_clear();
            serde_json::to_string(&report)?
        }
        BenchScenario::Sessions { .. } | BenchScenario::CrossNode { .. } => String::new(),
        BenchScenario::Reconnect { missed, parallel, .. } => {
            let bar = spinner("reconnect storm");
            let report = loadgen::reconnect(&server, &credentials, missed, parallel).await?;
            bar.finish_and_clear();
            serde_json::to_string(&report)?
        }
    };
    println!("{line}");
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let config = ServerConfig::resolve(args)?;
    let server = switchboard::server::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let failed = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = term.recv() => false,
        _ = server.failed() => true,
        _ = server.exit_requested() => false,
    };
    server.shutdown().await;
    if failed {
        bail!("an infrastructure actor failed; exiting so the service manager restarts the node");
    }
    Ok(())
}

async fn admin(command: AdminCommand) -> Result<()> {
    match command {
        AdminCommand::Tree { admin, token, node, json } => {
            // Node names are [A-Za-z0-9-_.]: nothing to escape.
            let query = node.map(|n| format!("?node={n}")).unwrap_or_default();
            let response = reqwest::Client::new().get(format!("{}/admin/tree{query}", admin.trim_end_matches('/'))).bearer_auth(token).send().await?;
            if !response.status().is_success() {
                bail!("admin API answered {}", response.status());
            }
            let tree: TreeNode = response.json().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tree)?);
            } else {
                print_tree(&tree, 0);
            }
            Ok(())
        }
        AdminCommand::Cluster { admin, token, json } => {
            let report = cluster_report(&admin, &token).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            println!("seen from {}; members owning conversations: {}", report.node, report.members.join(", "));
            if let Some(redis) = &report.redis {
                println!(
                    "redis: {}",
                    if redis.ok { format!("ok ({:.1} ms)", redis.latency_ms) } else { format!("DOWN ({})", redis.error.clone().unwrap_or_default()) }
                );
            }
            println!(
                "{:<16} {:<8} {:<7} {:<9} {:>9} {:>13} {:>10}  admin",
                "node", "status", "member", "draining", "sessions", "conversations", "heard_ms"
            );
            for n in &report.nodes {
                println!(
                    "{:<16} {:<8} {:<7} {:<9} {:>9} {:>13} {:>10}  {}",
                    n.name, n.status, n.member, n.draining, n.sessions, n.conversations, n.last_heard_ms, n.admin_addr
                );
            }
            Ok(())
        }
        AdminCommand::Drain { node, admin, token, wait } => {
            let report = cluster_report(&admin, &token).await?;
            let target = report.nodes.iter().find(|n| n.name == node).ok_or_else(|| anyhow::anyhow!("no node named {node} in the cluster"))?;
            let response = reqwest::Client::new().post(format!("http://{}/admin/drain", target.admin_addr)).bearer_auth(&token).send().await?;
            if !response.status().is_success() {
                bail!("{} answered {}: {}", node, response.status(), response.text().await.unwrap_or_default());
            }
            println!("{node} is draining");
            if wait {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.enable_steady_tick(Duration::from_millis(200));
                let mut seen_draining = false;
                loop {
                    let report = cluster_report(&admin, &token).await?;
                    // Done once it is gone, or (restarted at once by its service manager
                    // under the same name) once its last word was "draining, nothing left".
                    match report.nodes.iter().find(|n| n.name == node) {
                        Some(n) if n.status == "dead" => break,
                        Some(n) if n.draining && n.sessions == 0 && n.conversations == 0 => break,
                        // A new incarnation that is not draining: the old one is gone.
                        Some(n) if seen_draining && !n.draining => break,
                        Some(n) => {
                            seen_draining |= n.draining;
                            bar.set_message(format!("{node}: {} sessions, {} conversations left", n.sessions, n.conversations));
                        }
                        None => break,
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                bar.finish_and_clear();
                println!("{node} has left the cluster");
            }
            Ok(())
        }
    }
}

async fn nemesis(minutes: f64, seed: Option<u64>, fault_every: f64, dir: std::path::PathBuf) -> Result<()> {
    if !(minutes > 0.0 && fault_every > 0.0) {
        bail!("--minutes and --fault-every must be positive");
    }
    let config = switchboard::testkit::nemesis::NemesisConfig {
        binary: std::env::current_exe()?,
        dir,
        duration: std::time::Duration::from_secs_f64(minutes * 60.0),
        seed: seed.unwrap_or_else(rand::random),
        fault_every: std::time::Duration::from_secs_f64(fault_every),
    };
    eprintln!("nemesis: seed {}, {minutes} min, a fault every ~{fault_every} s; nodes in {}", config.seed, config.dir.display());
    let report = switchboard::testkit::nemesis::run(config).await?;
    println!("{}", serde_json::to_string(&report)?);
    if !report.violations.is_empty() {
        bail!("the checker found {} violation(s)", report.violations.len());
    }
    Ok(())
}

async fn local_cluster(nodes: usize, base_port: u16, dir: &std::path::Path) -> Result<()> {
    if !(1..=9).contains(&nodes) {
        bail!("--nodes must be 1 to 9");
    }
    let binary = std::env::current_exe()?;
    eprintln!("starting PostgreSQL, Redis and {nodes} nodes…");
    let mut cluster = switchboard::testkit::cluster::LocalCluster::start(&binary, dir, nodes, base_port).await?;
    println!("store  {}\nredis  {}\nadmin token  {}\n", cluster.store_url, cluster.redis_url, cluster.admin_token);
    println!("{:<8} {:<18} {:<18} {:<18} {:<18} log", "node", "tcp", "http/ws", "admin", "cluster");
    for n in &cluster.nodes {
        println!("{:<8} {:<18} {:<18} {:<18} {:<18} {}", n.name, n.tcp, n.http, n.admin, n.cluster, n.log.display());
    }
    if let Some(first) = cluster.nodes.first() {
        println!("\ntry:\n  switchboard admin cluster --admin http://{} --token {}", first.admin, cluster.admin_token);
        println!("  switchboard client register --server http://{} --phone +14155550001", first.http);
        if let Some(last) = cluster.nodes.last() {
            println!("  switchboard admin drain {} --admin http://{} --token {} --wait", last.name, first.admin, cluster.admin_token);
        }
        println!("\nCtrl-C stops the cluster.");
    }
    tokio::signal::ctrl_c().await?;
    eprintln!("stopping…");
    cluster.stop();
    Ok(())
}

async fn cluster_report(admin: &str, token: &str) -> Result<switchboard::cluster::ClusterReport> {
    let response = reqwest::Client::new().get(format!("{}/admin/cluster", admin.trim_end_matches('/'))).bearer_auth(token).send().await?;
    if !response.status().is_success() {
        bail!("admin API answered {}", response.status());
    }
    Ok(response.json().await?)
}

fn print_tree(node: &TreeNode, depth: usize) {
    let mut line = format!("{}{} [{}] {}", "  ".repeat(depth), node.name, node.id, node.status);
    if let Some(m) = node.mailbox {
        line.push_str(&format!(" mailbox={m}"));
    }
    if let Some(r) = node.restarts {
        line.push_str(&format!(" restarts={r}"));
    }
    if node.children_count > 0 {
        line.push_str(&format!(" children={}", node.children_count));
    }
    println!("{line}");
    for child in &node.children {
        print_tree(child, depth + 1);
    }
    if node.children_count > node.children.len() {
        println!("{}… {} more", "  ".repeat(depth + 1), node.children_count - node.children.len());
    }
}

async fn client(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Register { server, phone } => match HttpApi::new(&server).register(&phone).await? {
            Some(code) => println!("code sent (development server): {code}"),
            None => println!("code sent"),
        },
        ClientCommand::Verify { server, phone, code, name, profile } => {
            let credentials = HttpApi::new(&server).verify(&phone, &code, &name).await?;
            println!("user {} device {}", credentials.user_id, credentials.device_id);
            Profile { server, credentials }.save(&profile.profile)?;
            println!("saved {}", profile.profile.display());
        }
        ClientCommand::Whoami { profile } => {
            let p = Profile::load(&profile)?;
            println!("user {} device {} on {}", p.credentials.user_id, p.credentials.device_id, p.server);
        }
        ClientCommand::Send { profile, to, text, tcp } => {
            let p = Profile::load(&profile)?;
            let (mut conn, _) = Connection::open(&p.transport(tcp), &p.credentials.token).await?;
            let conversation = conn.open_direct(to).await?;
            let ack = conn.send_and_ack(conversation, &Uuid::new_v4().to_string(), text.into_bytes()).await?;
            println!("✓ sent: conversation {conversation} seq {} at {}", ack.seq, ack.server_time_ms);
            conn.bye().await?;
        }
        ClientCommand::Watch { profile, no_read, tcp } => {
            let p = Profile::load(&profile)?;
            let (mut conn, welcome) = Connection::open(&p.transport(tcp), &p.credentials.token).await?;
            println!("connected as user {}", parse_id::<UserId>("user_id", &welcome.user_id)?);
            let mut ping = tokio::time::interval(Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(1000))));
            loop {
                tokio::select! {
                    _ = ping.tick() => conn.send(switchboard::protocol::client_frame::Kind::Ping(pb::Ping { nonce: 0 })).await?,
                    frame = conn.recv() => match frame? {
                        None => { println!("connection closed"); return Ok(()); }
                        Some(kind) => watch_frame(&mut conn, kind, no_read).await?,
                    },
                }
            }
        }
        ClientCommand::History { profile, with, limit } => {
            let p = Profile::load(&profile)?;
            let (mut conn, _) = Connection::open(&p.transport(None), &p.credentials.token).await?;
            let conversation = conn.open_direct(with).await?;
            let page = conn.history(conversation, 0, limit).await?;
            for m in page.messages.iter().rev() {
                let sender: UserId = parse_id("sender", &m.sender_user_id)?;
                println!("#{} {} {}: {}", m.seq, m.server_time_ms, sender, String::from_utf8_lossy(&m.payload));
            }
            conn.bye().await?;
        }
        ClientCommand::Devices { profile } => {
            let p = Profile::load(&profile)?;
            for d in HttpApi::new(&p.server).devices(&p.credentials.token).await? {
                let state = if d.revoked_ms.is_some() { "revoked" } else { "active" };
                println!("{} {:<20} primary={} {}", d.device_id, d.name, d.primary, state);
            }
        }
        ClientCommand::Link { profile, name, out } => {
            let p = Profile::load(&profile)?;
            let credentials = HttpApi::new(&p.server).link_device(&p.credentials.token, &name).await?;
            println!("linked device {}", credentials.device_id);
            Profile { server: p.server, credentials }.save(&out)?;
        }
        ClientCommand::Revoke { profile, device } => {
            let p = Profile::load(&profile)?;
            HttpApi::new(&p.server).revoke(&p.credentials.token, device).await?;
            println!("revoked {device}");
        }
    }
    Ok(())
}

async fn watch_frame(conn: &mut Connection, kind: server_frame::Kind, no_read: bool) -> Result<()> {
    match kind {
        server_frame::Kind::Message(m) => {
            let conversation: ConversationId = parse_id("conversation", &m.conversation_id)?;
            let sender: UserId = parse_id("sender", &m.sender_user_id)?;
            println!("message #{} from {}: {}", m.seq, sender, String::from_utf8_lossy(&m.payload));
            conn.ack(conversation, m.seq).await?;
            if !no_read {
                conn.read(conversation, m.seq).await?;
            }
        }
        server_frame::Kind::Receipt(r) => {
            let what = if r.kind() == pb::ReceiptKind::Read { "read (blue ✓✓)" } else { "delivered (✓✓)" };
            println!("{what} up to #{} by user {}", r.up_to_seq, parse_id::<UserId>("user", &r.user_id)?);
        }
        server_frame::Kind::Typing(t) => {
            println!("user {} {}", parse_id::<UserId>("user", &t.user_id)?, if t.active { "is typing…" } else { "stopped typing" });
        }
        server_frame::Kind::Presence(p) => {
            let state = if p.online { "online".to_string() } else { format!("last seen {}", p.last_seen_ms) };
            println!("user {} {state}", parse_id::<UserId>("user", &p.user_id)?);
        }
        server_frame::Kind::CatchUpComplete(c) => println!("caught up: {} messages", c.messages),
        server_frame::Kind::Error(e) => println!("error {:?}: {}", e.code(), e.message),
        server_frame::Kind::Closing(c) => println!("server closing: {}", c.reason),
        _ => {}
    }
    Ok(())
}
