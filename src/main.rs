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
use switchboard::sdk::safety::KeyChange;
use switchboard::sdk::{Body, E2ee, E2eeConfig, Event, Received, StoreKey};
use switchboard::testkit::cluster::LocalClusterConfig;
use uuid::Uuid;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "mimalloc", feature = "jemalloc"))]
compile_error!("the features mimalloc and jemalloc each set the global allocator: pick one");

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    Bench(switchboard::loadgen::cli::BenchArgs),
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
    /// Start N nodes on 127.0.0.1 with a private PostgreSQL and a private Redis, all under
    /// one directory (kept between runs). Reports node deaths and takes commands on stdin
    /// (status, kill/stop/restart <node>); Ctrl-C stops everything and deletes nothing.
    Local {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Node i listens on base+10i (TCP), +1 (HTTP/WebSocket), +2 (admin), +3 (cluster).
        #[arg(long, default_value_t = 9000)]
        base_port: u16,
        /// Where everything goes: PostgreSQL's data, node directories, logs, secrets.
        #[arg(long, default_value = "./switchboard-local-cluster")]
        dir: std::path::PathBuf,
        /// Where the nodes send push notifications: `print` (received here and printed),
        /// `log` (each node's log) or `webhook:<url>`.
        #[arg(long, default_value = "print")]
        push_sink: String,
        /// Start from an empty directory (refused while a process still uses it).
        #[arg(long)]
        fresh: bool,
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
        /// The node's media blob store (default `fs:<from dir>/media`).
        #[arg(long)]
        media_from: Option<String>,
        /// Where the new nodes keep media (`--media-store` of `serve`, e.g. `s3://bucket?endpoint=…`):
        /// every blob is copied there and verified. Without it, blobs stay where they are.
        #[arg(long)]
        media_to: Option<String>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Print the live supervision tree.
    Tree {
        #[command(flatten)]
        access: AdminAccess,
        /// Another node of the cluster (by name), reached through this one.
        #[arg(long)]
        node: Option<String>,
        /// Print the raw JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Show the cluster: members, health, sessions and conversations per node.
    Cluster {
        #[command(flatten)]
        access: AdminAccess,
        /// Print the raw JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Drain a node: its conversations move to the others, its devices are asked to
    /// reconnect elsewhere (spread over the drain period), then it exits cleanly.
    Drain {
        /// The node to drain, by name.
        node: String,
        #[command(flatten)]
        access: AdminAccess,
        /// Wait until the node has left the cluster.
        #[arg(long)]
        wait: bool,
    },
}

/// Where the admin API is and the token it wants (the same on every node of a cluster).
#[derive(clap::Args)]
struct AdminAccess {
    /// Admin listener URL of any node.
    #[arg(long, env = "SWITCHBOARD_ADMIN_URL", default_value = "http://127.0.0.1:8082")]
    admin: String,
    /// Admin token. Prefer `--token-file` or SWITCHBOARD_ADMIN_TOKEN: a flag's value
    /// shows in `ps`.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the admin token (a node's `<data>/admin-token`, or the local
    /// cluster's `<dir>/admin-token`).
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

impl AdminAccess {
    fn url(&self) -> &str {
        self.admin.trim_end_matches('/')
    }

    fn token(&self) -> Result<String> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading the admin token from {}", path.display()))?;
                let token = text.lines().next().unwrap_or_default().trim().to_owned();
                if token.is_empty() {
                    bail!("{} is empty", path.display());
                }
                Ok(token)
            }
            (None, None) => bail!("no admin token: pass --token-file <file> or set SWITCHBOARD_ADMIN_TOKEN"),
        }
    }

    /// GET `path`; an error answer becomes the message the node gave.
    async fn get(&self, path: &str) -> Result<reqwest::Response> {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.url()))
            .bearer_auth(self.token()?)
            .send()
            .await
            .with_context(|| format!("no answer from the admin API at {}", self.url()))?;
        admin_answer(response).await
    }
}

/// The response if it is a success; otherwise an error with the node's own words (the
/// `message` of its JSON error), or its status.
async fn admin_answer(response: reqwest::Response) -> Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    match body.get("message").or_else(|| body.get("error")).and_then(|m| m.as_str()) {
        Some(message) => bail!("{message} ({status})"),
        None => bail!("the admin API answered {status}"),
    }
}

#[derive(clap::Args, Clone)]
struct ProfileArg {
    /// File holding this device's credentials (written by `verify` and `link`). The
    /// device's end-to-end encryption state is kept next to it, in `<profile>.e2ee`
    /// (encrypted with the store key).
    #[arg(long, env = "SWITCHBOARD_PROFILE", default_value = "switchboard-profile.json")]
    profile: PathBuf,
    /// File holding the 32-byte key (64 hex digits) that encrypts the end-to-end state;
    /// created with a random key, readable by its owner only, when missing. Default:
    /// `<profile>.key`. Keep it elsewhere (a keychain, a USB stick) to hold the key apart
    /// from the state.
    #[arg(long, env = "SWITCHBOARD_STORE_KEY_FILE")]
    store_key_file: Option<PathBuf>,
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
    /// Send a text message to another user (1:1), or to a group (`--group`).
    Send {
        #[command(flatten)]
        profile: ProfileArg,
        /// Recipient user id.
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        to: Option<UserId>,
        /// A group conversation id (this user a member) instead of `--to`: encrypted with
        /// the group's Megolm session for every member's devices.
        #[arg(long)]
        group: Option<ConversationId>,
        /// The text (encrypted end to end for every device of both users).
        text: String,
        /// Use raw TCP at this address instead of WebSocket.
        #[arg(long)]
        tcp: Option<std::net::SocketAddr>,
        /// Send the text unencrypted (readable by the server; for tests of old clients).
        #[arg(long)]
        plaintext: bool,
    },
    /// Send a file to another user (1:1): encrypted here with a fresh key (AES-256-GCM),
    /// uploaded (tus, resumable), then announced in an end-to-end encrypted message that
    /// carries its id, key and digest (and a thumbnail for images).
    SendFile {
        #[command(flatten)]
        profile: ProfileArg,
        /// Recipient user id.
        #[arg(long)]
        to: UserId,
        /// The file.
        path: PathBuf,
    },
    /// Download the file of a message with another user (the latest file message, or the
    /// one at `--seq`), check its digest, decrypt it and write it into `--out`.
    Download {
        #[command(flatten)]
        profile: ProfileArg,
        /// The other user of the conversation.
        #[arg(long)]
        with: UserId,
        /// The file message's seq (default: the latest file message).
        #[arg(long)]
        seq: Option<u64>,
        /// Directory to write the file into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
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
    /// Link this (new) device to an account: prints a pairing QR code (and its text) for
    /// the account's primary device to approve (`client approve`), waits for the approval,
    /// and saves this device's own credentials to the profile.
    Link {
        /// Server HTTP URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Name of this device.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        profile: ProfileArg,
    },
    /// Approve a new device's pairing code (the text of its QR code), from the primary
    /// device's profile, over its connection.
    Approve {
        #[command(flatten)]
        profile: ProfileArg,
        /// The pairing code (with or without its `switchboard-pair:` prefix).
        #[arg(long)]
        code: String,
    },
    /// Print the safety number of this user and another: compare it with theirs (in
    /// person, or over another channel) to know that no one swapped your keys.
    SafetyNumber {
        #[command(flatten)]
        profile: ProfileArg,
        /// The other user.
        #[arg(long)]
        with: UserId,
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

    /// This device's end-to-end encryption state (`<profile>.e2ee`), opened with the key of
    /// `--store-key-file` (created when missing).
    fn e2ee(&self, arg: &ProfileArg) -> Result<E2ee> {
        let key_file = arg.store_key_file.clone().unwrap_or_else(|| with_suffix(&arg.profile, ".key"));
        let key = match std::fs::read_to_string(&key_file) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).with_context(|| format!("{}: not hex", key_file.display()))?;
                StoreKey(bytes.try_into().map_err(|_| anyhow::anyhow!("{}: the key must be 32 bytes (64 hex digits)", key_file.display()))?)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = StoreKey::random();
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key_file)
                    .with_context(|| format!("creating {}", key_file.display()))?;
                writeln!(file, "{}", hex::encode(key.0))?;
                key
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", key_file.display())),
        };
        let path = with_suffix(&arg.profile, ".e2ee");
        E2ee::open(&path, &key, self.credentials.user_id, self.credentials.device_id, E2eeConfig::default())
            .with_context(|| format!("opening the end-to-end state {}", path.display()))
    }

    fn transport(&self, tcp: Option<std::net::SocketAddr>) -> Transport {
        match tcp {
            Some(addr) => Transport::Tcp(addr),
            None => Transport::Ws(format!("{}/v1/ws", self.server.replacen("http", "ws", 1))),
        }
    }
}

fn with_suffix(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Connects, publishes this device's keys (first time only) and handles everything up to
/// CatchUpComplete (room keys, device lists); returns the connection and the events.
async fn connect_e2ee(p: &Profile, sdk: &mut E2ee, tcp: Option<std::net::SocketAddr>) -> Result<(Connection, Vec<Event>, pb::Welcome)> {
    let (mut conn, welcome) = Connection::open(&p.transport(tcp), &p.credentials.token).await?;
    sdk.publish_keys(&mut conn).await?;
    let mut events = Vec::new();
    loop {
        let kind = conn.recv_timeout(switchboard::client::DEFAULT_WAIT).await?;
        let done = matches!(kind, server_frame::Kind::CatchUpComplete(_));
        events.extend(sdk.handle(&mut conn, kind).await?);
        if done {
            return Ok((conn, events, welcome));
        }
    }
}

fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SWITCHBOARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only for a person at a terminal: a log file or a journal gets plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        init_tracing();
        for flag in ["--cookie", "--admin-token"] {
            if std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}="))) {
                tracing::warn!(flag, "a secret given as a flag is visible to every user of this machine (ps); use {flag}-file or the environment");
            }
        }
        let config = ServerConfig::resolve(*args)?;
        // The server's runtime is sized by its configuration (threads near the cores, a
        // bounded blocking pool), so it is built here rather than by #[tokio::main].
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.runtime.worker_threads)
            .max_blocking_threads(config.runtime.blocking_threads)
            .enable_all()
            .build()?;
        return runtime.block_on(serve(config));
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        // Handled in main, on a runtime sized by the server's configuration.
        Command::Serve(_) => bail!("serve runs on its own runtime"),
        Command::Admin { command } => admin(command).await,
        Command::Cluster { command: ClusterCommand::Local { nodes, base_port, dir, push_sink, fresh } } => {
            local_cluster(nodes, base_port, dir, push_sink, fresh).await
        }
        Command::Client { command } => client(command).await,
        Command::Nemesis { minutes, seed, fault_every, dir } => {
            init_tracing();
            nemesis(minutes, seed, fault_every, dir).await
        }
        Command::Store { command } => store_command(command).await,
        Command::Bench(args) => {
            let line = switchboard::loadgen::cli::run(args).await?;
            if !line.is_empty() {
                println!("{line}");
            }
            Ok(())
        }
    }
}

async fn store_command(command: StoreCommand) -> Result<()> {
    use switchboard::media::{BlobSpec, BlobStore};
    use switchboard::store::{EmbeddedStore, PostgresOptions, PostgresStore, StoreSpec, transfer};
    let parse = |s: &str| StoreSpec::parse(s).map_err(anyhow::Error::msg);
    match command {
        StoreCommand::Migrate { store, replication } => {
            let spec = parse(&store)?;
            let shown = spec.to_string();
            match spec {
                spec @ StoreSpec::Embedded { .. } => {
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
        StoreCommand::Copy { from, to, chunk, checkpoint, media_from, media_to } => {
            let StoreSpec::Embedded { dir, options } = parse(&from)? else {
                bail!("--from must be embedded:<dir> (the copy moves a single node's data)")
            };
            let target_spec = parse(&to)?;
            let source = EmbeddedStore::open_with(&dir, &options).with_context(|| format!("opening {from} (is a node still running on it?)"))?;
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
            let media_from = match media_from {
                Some(s) => BlobSpec::parse(&s).map_err(anyhow::Error::msg)?,
                None => BlobSpec::Fs(dir.join("media")),
            };
            match media_to {
                Some(s) => {
                    let media_to = BlobSpec::parse(&s).map_err(anyhow::Error::msg)?;
                    let source = BlobStore::open(&media_from).with_context(|| format!("opening {media_from}"))?;
                    let target = BlobStore::open(&media_to).with_context(|| format!("opening {media_to}"))?;
                    let bar = indicatif::ProgressBar::new(0);
                    let report = switchboard::media::copy::copy_blobs(&source, &target, |done, total| {
                        bar.set_length(total);
                        bar.set_position(done);
                    })
                    .await;
                    bar.finish();
                    let report = report?;
                    println!(
                        "{:>15}: {} ({} copied, {} bytes; {} already there) — verified: {media_from} -> {media_to}",
                        "blobs", report.total, report.copied, report.bytes, report.skipped
                    );
                }
                None => println!("media blobs stay in {media_from} (pass --media-to to copy them)"),
            }
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

async fn serve(config: ServerConfig) -> Result<()> {
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
        AdminCommand::Tree { access, node, json } => {
            // Node names are [A-Za-z0-9-_.]: nothing to escape.
            let query = node.as_ref().map(|n| format!("?node={n}")).unwrap_or_default();
            let tree: TreeNode = access.get(&format!("/admin/tree{query}")).await?.json().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tree)?);
                return Ok(());
            }
            match (&tree.node, &node) {
                (Some(name), Some(_)) => println!("supervision tree of node {name} (asked through {})", access.url()),
                (Some(name), None) => println!("supervision tree of node {name} ({})", access.url()),
                (None, _) => println!("supervision tree of the node at {} (not clustered)", access.url()),
            }
            print_tree(&tree, 0);
            Ok(())
        }
        AdminCommand::Cluster { access, json } => {
            let report = cluster_report(&access).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            print!("{}", cluster_table(&report));
            Ok(())
        }
        AdminCommand::Drain { node, access, wait } => {
            let token = access.token()?;
            let report = cluster_report(&access).await?;
            let target = report.nodes.iter().find(|n| n.name == node).ok_or_else(|| anyhow::anyhow!("no such node {node} in the cluster"))?;
            if target.status == "dead" {
                bail!("node {node} is dead (last heard {} ago): nothing to drain", switchboard::http::ago(target.last_heard_ms));
            }
            let response = reqwest::Client::new().post(format!("http://{}/admin/drain", target.admin_addr)).bearer_auth(&token).send().await?;
            admin_answer(response).await.with_context(|| format!("draining {node}"))?;
            println!("{node} is draining");
            if wait {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.enable_steady_tick(Duration::from_millis(200));
                let mut seen_draining = false;
                loop {
                    let report = cluster_report(&access).await?;
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

/// `switchboard admin cluster` as text: a dead node's counts are what it last reported,
/// in parentheses, and said to be stale.
fn cluster_table(report: &switchboard::cluster::ClusterReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "seen from {}; members owning conversations: {}", report.node, report.members.join(", "));
    if let Some(redis) = &report.redis {
        let state = if redis.ok { format!("ok ({:.1} ms)", redis.latency_ms) } else { format!("DOWN ({})", redis.error.clone().unwrap_or_default()) };
        let _ = writeln!(out, "redis: {state}");
    }
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<7} {:<9} {:>10} {:>13} {:>12}  admin",
        "node", "status", "member", "draining", "sessions", "conversations", "last heard"
    );
    let mut stale = false;
    for n in &report.nodes {
        let count = |v: u64| if n.counts_stale { format!("({v})") } else { v.to_string() };
        stale |= n.counts_stale;
        let heard = if n.status == "self" { "-".to_owned() } else { format!("{} ago", switchboard::http::ago(n.last_heard_ms)) };
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<7} {:<9} {:>10} {:>13} {:>12}  {}",
            n.name,
            n.status,
            n.member,
            n.draining,
            count(n.sessions),
            count(n.conversations),
            heard,
            n.admin_addr
        );
    }
    if stale {
        let _ = writeln!(out, "(n): stale, what a dead node last reported; its devices have reconnected elsewhere or are offline");
    }
    out
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

async fn local_cluster(nodes: usize, base_port: u16, dir: PathBuf, push_sink: String, fresh: bool) -> Result<()> {
    if !(1..=9).contains(&nodes) {
        bail!("--nodes must be 1 to 9");
    }
    let binary = std::env::current_exe()?;
    switchboard::testkit::console::run(LocalClusterConfig { binary, dir, nodes, base_port, push_sink, fresh, extra: Vec::new() }).await?;
    // Reading stdin occupies a thread that nothing can interrupt: exit without waiting for it.
    std::process::exit(0)
}

async fn cluster_report(access: &AdminAccess) -> Result<switchboard::cluster::ClusterReport> {
    Ok(access.get("/admin/cluster").await?.json().await?)
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

/// A new device (verified or linked): saves its profile and publishes its keys at once,
/// so that others can encrypt for it.
async fn save_new_device(p: Profile, profile: &ProfileArg) -> Result<()> {
    p.save(&profile.profile)?;
    println!("saved {}", profile.profile.display());
    let mut sdk = p.e2ee(profile)?;
    let (conn, _, _) = connect_e2ee(&p, &mut sdk, None).await?;
    conn.bye().await?;
    println!("published this device's end-to-end encryption keys");
    Ok(())
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
            save_new_device(Profile { server, credentials }, &profile).await?;
        }
        ClientCommand::Whoami { profile } => {
            let p = Profile::load(&profile)?;
            println!("user {} device {} on {}", p.credentials.user_id, p.credentials.device_id, p.server);
        }
        ClientCommand::Send { profile, to, group, text, tcp, plaintext: true } => {
            let p = Profile::load(&profile)?;
            let (mut conn, _) = Connection::open(&p.transport(tcp), &p.credentials.token).await?;
            let conversation = match (group, to) {
                (Some(group), _) => group,
                (None, Some(to)) => conn.open_direct(to).await?,
                (None, None) => bail!("--to or --group"),
            };
            let ack = conn.send_and_ack(conversation, &Uuid::new_v4().to_string(), text.into_bytes()).await?;
            println!("✓ sent unencrypted: conversation {conversation} seq {} at {}", ack.seq, ack.server_time_ms);
            conn.bye().await?;
        }
        ClientCommand::Send { profile, to, group, text, tcp, plaintext: false } => {
            let p = Profile::load(&profile)?;
            let mut sdk = p.e2ee(&profile)?;
            let (mut conn, events, _) = connect_e2ee(&p, &mut sdk, tcp).await?;
            print_warnings(&events);
            let ack = match (group, to) {
                (Some(group), _) => sdk.send_group(&mut conn, group, &Body::Text(text)).await?,
                (None, Some(to)) => sdk.send_direct(&mut conn, to, &Body::Text(text)).await?,
                (None, None) => bail!("--to or --group"),
            };
            println!("✓ sent encrypted: seq {} at {}", ack.seq, ack.server_time_ms);
            conn.bye().await?;
        }
        ClientCommand::SendFile { profile, to, path } => {
            let p = Profile::load(&profile)?;
            let plaintext = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
            let sealed = switchboard::attachment::seal(&plaintext);
            let thumbnail = switchboard::attachment::thumbnail(&plaintext);
            let media = switchboard::media_client::MediaClient::new(&p.server, &p.credentials.token);
            let started = std::time::Instant::now();
            let id = media.upload(sealed.bytes.clone().into(), switchboard::media_client::DEFAULT_CHUNK).await?;
            println!("uploaded {} encrypted bytes as media {id} in {:.1} s", sealed.bytes.len(), started.elapsed().as_secs_f64());
            let key =
                switchboard::attachment::media_key(id, &sealed, plaintext.len() as u64, &name, switchboard::attachment::mime_of(&name), thumbnail);
            let mut sdk = p.e2ee(&profile)?;
            let (mut conn, events, _) = connect_e2ee(&p, &mut sdk, None).await?;
            print_warnings(&events);
            let ack = sdk.send_direct_with_attachments(&mut conn, to, &Body::Media(key), &[id]).await?;
            println!("✓ sent {name} (encrypted): seq {}", ack.seq);
            conn.bye().await?;
        }
        ClientCommand::Download { profile, with, seq, out } => {
            let p = Profile::load(&profile)?;
            let mut sdk = p.e2ee(&profile)?;
            let (mut conn, _, _) = connect_e2ee(&p, &mut sdk, None).await?;
            let conversation = conn.open_direct(with).await?;
            let page = conn.history(conversation, seq.map(|s| s + 1).unwrap_or(0), 100).await?;
            conn.bye().await?;
            let found = page.messages.iter().filter(|m| seq.is_none_or(|s| m.seq == s)).find_map(|m| match sdk.decrypt(m) {
                Ok(Received { body: Body::Media(key), seq, .. }) => Some((seq, key)),
                _ => None,
            });
            let Some((at, key)) = found else { bail!("no file message found with {with}") };
            let (media_id, file_key, sha256) = switchboard::attachment::media_secrets(&key)?;
            let media = switchboard::media_client::MediaClient::new(&p.server, &p.credentials.token);
            let bytes = media.download(media_id).await?;
            let plaintext = switchboard::attachment::open(&file_key, &sha256, &bytes)?;
            // Only the name's last component: a sender cannot write outside `out`.
            let name = std::path::Path::new(&key.name).file_name().map(|n| n.to_owned()).unwrap_or_else(|| "file".into());
            let target = out.join(name);
            std::fs::write(&target, &plaintext).with_context(|| format!("writing {}", target.display()))?;
            println!("message #{at}: {} ({} bytes, {}) saved to {}", key.name, plaintext.len(), key.mime, target.display());
        }
        ClientCommand::Watch { profile, no_read, tcp } => {
            let p = Profile::load(&profile)?;
            let mut sdk = p.e2ee(&profile)?;
            let (mut conn, events, welcome) = connect_e2ee(&p, &mut sdk, tcp).await?;
            println!("connected as user {}", parse_id::<UserId>("user_id", &welcome.user_id)?);
            for event in events {
                watch_event(&mut conn, event, no_read).await?;
            }
            let mut ping = tokio::time::interval(Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(1000))));
            loop {
                tokio::select! {
                    _ = ping.tick() => conn.send(switchboard::protocol::client_frame::Kind::Ping(pb::Ping { nonce: 0 })).await?,
                    frame = conn.recv() => match frame? {
                        None => { println!("connection closed"); return Ok(()); }
                        Some(kind) => for event in sdk.handle(&mut conn, kind).await? {
                            watch_event(&mut conn, event, no_read).await?;
                        },
                    },
                }
            }
        }
        ClientCommand::History { profile, with, limit } => {
            let p = Profile::load(&profile)?;
            let mut sdk = p.e2ee(&profile)?;
            let (mut conn, _, _) = connect_e2ee(&p, &mut sdk, None).await?;
            let conversation = conn.open_direct(with).await?;
            let page = conn.history(conversation, 0, limit).await?;
            for m in page.messages.iter().rev() {
                let sender: UserId = parse_id("sender", &m.sender_user_id)?;
                let text = match sdk.decrypt(m) {
                    Ok(r) => describe(&r.body),
                    Err(e) if m.event.is_none() => format!("[cannot decrypt: {e}]"),
                    Err(_) => "[event]".into(),
                };
                println!("#{} {} {}: {text}", m.seq, m.server_time_ms, sender);
            }
            conn.bye().await?;
        }
        ClientCommand::SafetyNumber { profile, with } => {
            let p = Profile::load(&profile)?;
            let mut sdk = p.e2ee(&profile)?;
            let (mut conn, events, _) = connect_e2ee(&p, &mut sdk, None).await?;
            print_warnings(&events);
            // The server lets us see the other user's devices only if we share a conversation.
            conn.open_direct(with).await?;
            let number = sdk.safety_number(&mut conn, with).await?;
            println!("safety number with {with}:");
            for line in number.split(' ').collect::<Vec<_>>().chunks(4) {
                println!("  {}", line.join(" "));
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
        ClientCommand::Link { server, name, profile } => {
            let api = HttpApi::new(&server);
            let started = api.start_pairing(&name).await?;
            println!("{}", switchboard::pairing::qr_text(&started.qr)?);
            println!("On your primary device, scan this code, or run:");
            println!("  switchboard client approve --code {}", started.code);
            println!("(valid {} s)", started.expires_in_s);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(started.expires_in_s);
            let credentials = loop {
                if let Some(credentials) = api.claim_pairing(&started.code, &started.claim_secret).await? {
                    break credentials;
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("the pairing code expired before it was approved");
                }
            };
            println!("linked: user {} device {}", credentials.user_id, credentials.device_id);
            save_new_device(Profile { server, credentials }, &profile).await?;
        }
        ClientCommand::Approve { profile, code } => {
            let p = Profile::load(&profile)?;
            let (mut conn, _) = Connection::open(&p.transport(None), &p.credentials.token).await?;
            let name = conn.approve_pairing(&code).await?;
            println!("approved: {name:?} is being linked to this account");
            conn.bye().await?;
        }
        ClientCommand::Revoke { profile, device } => {
            let p = Profile::load(&profile)?;
            HttpApi::new(&p.server).revoke(&p.credentials.token, device).await?;
            println!("revoked {device}");
        }
    }
    Ok(())
}

fn describe(body: &Body) -> String {
    match body {
        Body::Text(t) => t.clone(),
        Body::Media(m) => format!("file {} ({} bytes, {}{})", m.name, m.size, m.mime, if m.thumbnail.is_empty() { "" } else { ", thumbnail" }),
        Body::Custom(c) => format!("[{} bytes of app data]", c.len()),
    }
}

fn print_warnings(events: &[Event]) {
    for event in events {
        if let Event::KeyChanged(change) = event {
            print_key_change(change);
        }
    }
}

fn print_key_change(change: &KeyChange) {
    match change {
        KeyChange::IdentityChanged { user, device, .. } => {
            println!(
                "⚠ the identity keys of device {device} of user {user} changed: compare safety numbers again (`client safety-number --with {user}`)"
            )
        }
        KeyChange::NewDevice { user, device } => println!("user {user} has a new device {device} (the safety number changed)"),
        KeyChange::Removed { user, device } => println!("device {device} of user {user} is gone"),
    }
}

async fn watch_event(conn: &mut Connection, event: Event, no_read: bool) -> Result<()> {
    match event {
        Event::Message(r) => {
            let note = if r.retried { " (key arrived late)" } else { "" };
            let what = match &r.body {
                Body::Media(_) => format!("{} — `client download --with {} --seq {}`", describe(&r.body), r.sender_user, r.seq),
                body => describe(body),
            };
            println!("message #{} from {}{note}: {what}", r.seq, r.sender_user);
            conn.ack(r.conversation, r.seq).await?;
            if !no_read {
                conn.read(r.conversation, r.seq).await?;
            }
        }
        Event::Undecryptable(u) => {
            println!("message #{} from {}: cannot decrypt ({})", u.seq, u.sender_user, u.error);
            conn.ack(u.conversation, u.seq).await?;
        }
        Event::KeyChanged(change) => print_key_change(&change),
        Event::ToDeviceFailed { sender_user, reason, .. } => println!("a key message from {sender_user} was unusable: {reason}"),
        Event::Frame(kind) => watch_frame(conn, *kind).await?,
    }
    Ok(())
}

async fn watch_frame(conn: &mut Connection, kind: server_frame::Kind) -> Result<()> {
    match kind {
        server_frame::Kind::Message(m) => {
            // Events and deletions (the SDK passes on what has no ciphertext).
            let conversation: ConversationId = parse_id("conversation", &m.conversation_id)?;
            let what = if m.deleted { "deleted" } else { "a conversation event" };
            println!("#{}: {what}", m.seq);
            conn.ack(conversation, m.seq).await?;
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
