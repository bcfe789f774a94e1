//! A local N-node cluster for trying Switchboard out: a private PostgreSQL, a private
//! Redis and N `switchboard serve` processes on 127.0.0.1, all in one directory and all
//! stopped together (`switchboard cluster local`). Each piece can also be killed, frozen,
//! thawed and restarted on its own addresses, which the nemesis (`testkit::nemesis`) does.

use std::ffi::OsString;
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
    /// Per node: its process while it runs.
    children: Vec<Option<Child>>,
    /// Per node: the arguments it was started with (a restart reuses them).
    commands: Vec<Vec<OsString>>,
    binary: PathBuf,
    /// The nodes, in order.
    pub nodes: Vec<LocalNode>,
    /// The admin token of every node.
    pub admin_token: String,
    /// The shared store.
    pub store_url: String,
    /// Redis.
    pub redis_url: String,
    redis: PrivateRedis,
    postgres: PrivatePostgres,
}

impl LocalCluster {
    /// Starts `n` nodes; node `i` listens on `base_port + 10 i` (TCP), `+1` (HTTP), `+2`
    /// (admin) and `+3` (cluster).
    pub async fn start(binary: &Path, dir: &Path, n: usize, base_port: u16) -> Result<Self, LocalClusterError> {
        Self::start_with(binary, dir, n, base_port, &[]).await
    }

    /// As [`Self::start`], with `extra` arguments for every node (e.g. faster heartbeats).
    pub async fn start_with(binary: &Path, dir: &Path, n: usize, base_port: u16, extra: &[&str]) -> Result<Self, LocalClusterError> {
        std::fs::create_dir_all(dir)?;
        let postgres = PrivatePostgres::start()?;
        let store_url = postgres.create_database("switchboard").await.map_err(|e| LocalClusterError::Io(std::io::Error::other(e.to_string())))?;
        let redis = PrivateRedis::start()?;
        let admin_token = hex::encode(rand::random::<[u8; 16]>());
        let port = |i: usize, k: u16| base_port + (i as u16) * 10 + k;
        let seeds: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", port(i, 3))).collect();
        let mut cluster = Self {
            children: Vec::new(),
            commands: Vec::new(),
            binary: binary.to_owned(),
            nodes: Vec::new(),
            admin_token,
            store_url,
            redis_url: redis.url(),
            redis,
            postgres,
        };
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
            let others: Vec<&str> = seeds.iter().filter(|s| **s != node.cluster).map(String::as_str).collect();
            let flags = [
                ("--store", cluster.store_url.clone()),
                ("--redis", cluster.redis_url.clone()),
                ("--node-name", name.clone()),
                ("--cluster-listen", node.cluster.clone()),
                ("--seeds", others.join(",")),
                ("--cookie", cluster.admin_token.clone()),
                ("--admin-token", cluster.admin_token.clone()),
                ("--dev-expose-codes", "true".to_owned()),
                ("--tcp-listen", node.tcp.clone()),
                ("--http-listen", node.http.clone()),
                ("--admin-listen", node.admin.clone()),
            ];
            let mut args: Vec<OsString> = vec!["serve".into()];
            for (flag, value) in flags {
                args.push(flag.into());
                args.push(value.into());
            }
            args.extend(extra.iter().map(OsString::from));
            args.push("--ready-file".into());
            args.push(node_dir.join("ready.json").into());
            cluster.commands.push(args);
            cluster.nodes.push(node);
            cluster.children.push(None);
            cluster.restart(i).await?;
        }
        Ok(cluster)
    }

    /// Starts node `i` (again), on its own addresses, and waits for its ready file.
    pub async fn restart(&mut self, i: usize) -> Result<(), LocalClusterError> {
        self.kill(i);
        let node = &self.nodes[i];
        let node_dir = node.log.parent().map(Path::to_owned).unwrap_or_default();
        let ready = node_dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        let child = Command::new(&self.binary).current_dir(&node_dir).args(&self.commands[i]).stdout(Stdio::null()).stderr(log).spawn()?;
        self.children[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if Instant::now() > deadline {
                return Err(LocalClusterError::Node { node: node.name.clone(), log: node.log.clone() });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Whether node `i` has a process (it may be frozen).
    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// SIGKILL to node `i` (no shutdown code runs), reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP to node `i`: its sockets stay open and nothing answers.
    pub fn pause(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONT to node `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        if let Some(child) = &self.children[i] {
            // SAFETY: kill with a pid we own and a valid signal number.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// The shared PostgreSQL (to crash and restart it).
    pub fn postgres_mut(&mut self) -> &mut PrivatePostgres {
        &mut self.postgres
    }

    /// The Redis (to restart it).
    pub fn redis_mut(&mut self) -> &mut PrivateRedis {
        &mut self.redis
    }

    /// SIGTERM to every node (graceful), then waits for them.
    pub fn stop(&mut self) {
        for i in 0..self.children.len() {
            self.resume(i);
            self.signal(i, libc::SIGTERM);
        }
        for child in self.children.iter_mut().filter_map(Option::as_mut) {
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
