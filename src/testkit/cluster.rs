//! A local N-node cluster for trying Switchboard out: a private PostgreSQL, a private
//! Redis and N `switchboard serve` processes on 127.0.0.1, all in one directory and all
//! stopped together (`switchboard cluster local`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{PrivatePostgres, PrivateRedis};

/// Why the local cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// PostgreSQL did not start.
    #[error(transparent)]
    Postgres(#[from] super::postgres::PrivatePostgresError),
    /// Redis did not start.
    #[error(transparent)]
    Redis(#[from] super::redis::PrivateRedisError),
    /// A node did not start.
    #[error("node {node} did not start; its log is {log}")]
    Node {
        /// Which node.
        node: String,
        /// Where its log is.
        log: PathBuf,
    },
    /// Files, processes.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One node of the local cluster.
#[derive(Debug, Clone)]
pub struct LocalNode {
    /// Node name.
    pub name: String,
    /// Client TCP address.
    pub tcp: String,
    /// HTTP and WebSocket address.
    pub http: String,
    /// Admin address.
    pub admin: String,
    /// Node-to-node address.
    pub cluster: String,
    /// Its log file.
    pub log: PathBuf,
}

/// A running local cluster; every process stops when it is dropped.
pub struct LocalCluster {
    children: Vec<Child>,
    /// The nodes, in order.
    pub nodes: Vec<LocalNode>,
    /// The admin token of every node.
    pub admin_token: String,
    /// The shared store.
    pub store_url: String,
    /// Redis.
    pub redis_url: String,
    _redis: PrivateRedis,
    _postgres: PrivatePostgres,
}

impl LocalCluster {
    /// Starts `n` nodes; node `i` listens on `base_port + 10 i` (TCP), `+1` (HTTP), `+2`
    /// (admin) and `+3` (cluster).
    pub async fn start(binary: &Path, dir: &Path, n: usize, base_port: u16) -> Result<Self, LocalClusterError> {
        std::fs::create_dir_all(dir)?;
        let postgres = PrivatePostgres::start()?;
        let store_url = postgres.create_database("switchboard").await.map_err(|e| LocalClusterError::Io(std::io::Error::other(e.to_string())))?;
        let redis = PrivateRedis::start()?;
        let admin_token = hex::encode(rand::random::<[u8; 16]>());
        let port = |i: usize, k: u16| base_port + (i as u16) * 10 + k;
        let seeds: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", port(i, 3))).collect();
        let mut cluster =
            Self { children: Vec::new(), nodes: Vec::new(), admin_token, store_url, redis_url: redis.url(), _redis: redis, _postgres: postgres };
        for i in 0..n {
            let name = format!("node{}", i + 1);
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(&node_dir)?;
            let node = LocalNode {
                name: name.clone(),
                tcp: format!("127.0.0.1:{}", port(i, 0)),
                http: format!("127.0.0.1:{}", port(i, 1)),
                admin: format!("127.0.0.1:{}", port(i, 2)),
                cluster: format!("127.0.0.1:{}", port(i, 3)),
                log: node_dir.join("node.log"),
            };
            let ready = node_dir.join("ready.json");
            let _ = std::fs::remove_file(&ready);
            let log = std::fs::File::create(&node.log)?;
            let others: Vec<&str> = seeds.iter().filter(|s| **s != node.cluster).map(String::as_str).collect();
            let child = Command::new(binary)
                .current_dir(&node_dir)
                .args(["serve", "--store", &cluster.store_url, "--redis", &cluster.redis_url])
                .args(["--node-name", &name, "--cluster-listen", &node.cluster, "--seeds", &others.join(",")])
                .args(["--cookie", &cluster.admin_token, "--admin-token", &cluster.admin_token, "--dev-expose-codes", "true"])
                .args(["--tcp-listen", &node.tcp, "--http-listen", &node.http, "--admin-listen", &node.admin])
                .arg("--ready-file")
                .arg(&ready)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            cluster.children.push(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !ready.exists() {
                if Instant::now() > deadline {
                    return Err(LocalClusterError::Node { node: name, log: node.log.clone() });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// SIGTERM to every node (graceful), then waits for them.
    pub fn stop(&mut self) {
        for child in &self.children {
            // SAFETY: kill with a pid we own and a valid signal number.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
