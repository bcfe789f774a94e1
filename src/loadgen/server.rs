//! The benchmarked server: a private `switchboard serve` process on a temporary data
//! directory (or a private PostgreSQL), and bulk provisioning of its users.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{LoadError, Measured};
use crate::accounts::DeviceCredentials;
use crate::client::{ClientError, HttpApi, Transport};

/// The store a benchmark server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BenchStore {
    /// The embedded store in the server's temporary directory.
    #[default]
    Embedded,
    /// A private PostgreSQL server started for the run (default settings, fsync on).
    Postgres,
}

/// The store of a benchmark server with its settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreChoice {
    /// Which store.
    pub kind: BenchStore,
    /// The embedded store's page cache, MiB (`None`: the server's default).
    pub embedded_cache_mb: Option<usize>,
    /// The embedded store's checkpoint interval, seconds (`None`: the server's default).
    pub embedded_checkpoint_secs: Option<u64>,
    /// The embedded store's group commit linger, microseconds (`None`: the server's default).
    pub embedded_commit_linger_us: Option<u64>,
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
        Self::start_on(binary, extra, StoreChoice::default())
    }

    /// Starts `binary serve` on the given store.
    pub fn start_on(binary: &std::path::Path, extra: &[String], store: StoreChoice) -> Result<Self, LoadError> {
        let dir = tempfile::tempdir()?;
        let (postgres, store) = match store.kind {
            BenchStore::Embedded => {
                // Rendered by the store spec itself, so the bench and `serve` agree.
                let mut options = crate::store::EmbeddedOptions::default();
                if let Some(mb) = store.embedded_cache_mb {
                    options.cache_bytes = mb << 20;
                }
                if let Some(secs) = store.embedded_checkpoint_secs {
                    options.checkpoint_interval = Duration::from_secs(secs);
                }
                if let Some(us) = store.embedded_commit_linger_us {
                    options.commit_linger = Duration::from_micros(us);
                }
                (None, crate::store::StoreSpec::Embedded { dir: dir.path().join("data"), options }.to_string())
            }
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
            // Every simulated device connects (and signs up) from 127.0.0.1, thousands at once.
            .args(["--address-limits-exempt", "127.0.0.1,::1"])
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
}

impl Measured for ServerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(LoadError::Server(format!("provisioning answered {status}: {body}")));
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
                // Valid numbers (registration refuses invalid ones): +1 415 2xx-xxxx onwards.
                let phone = format!("+1415{}", 2_000_000 + i % 8_000_000);
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
