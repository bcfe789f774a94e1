//! A local N-node cluster for trying Switchboard out (`switchboard cluster local`): a
//! private PostgreSQL, a private Redis and N `switchboard serve` processes on 127.0.0.1,
//! everything under one directory.
//!
//! Made to be watched by a person: every process id is known, a node that dies is reaped
//! and reported ([`LocalCluster::reap`]) and can be restarted with the exact settings it
//! had (each node runs from a config file in its own directory, so the restart command
//! is short and complete). Secrets stay out of command lines: the cluster cookie and the
//! admin token are two different random values in files (`<dir>/cookie`,
//! `<dir>/admin-token`, mode 0600) that nodes read themselves. Data is kept between runs
//! and never deleted by a stop; `fresh` starts from an empty directory, and only when no
//! process uses it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{PrivatePostgres, PrivateRedis};

/// Why the local cluster could not start, or a node could not (re)start.
#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    /// PostgreSQL did not start.
    #[error(transparent)]
    Postgres(#[from] super::postgres::PrivatePostgresError),
    /// Redis did not start.
    #[error(transparent)]
    Redis(#[from] super::redis::PrivateRedisError),
    /// The database could not be created.
    #[error("creating the database: {0}")]
    Database(String),
    /// A node did not start.
    #[error("{node} did not start ({why}); the end of its log ({log}):\n{tail}")]
    Node {
        /// Which node.
        node: String,
        /// What happened.
        why: String,
        /// Where its log is.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// Another `cluster local` runs on the directory.
    #[error("another local cluster (pid {pid}) is running in {dir}; stop it first, or use another --dir")]
    Busy {
        /// The directory.
        dir: PathBuf,
        /// Its process, as it wrote it in the lock file.
        pid: String,
    },
    /// `fresh` was asked while processes still use the directory.
    #[error("not starting afresh: {what} (pid {pid}) still uses {dir}; stop it first")]
    InUse {
        /// Which process.
        what: String,
        /// Its id.
        pid: u32,
        /// The directory.
        dir: PathBuf,
    },
    /// Files, processes.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct LocalClusterConfig {
    /// The `switchboard` binary the nodes run.
    pub binary: PathBuf,
    /// Where everything goes: `postgres/`, `redis/`, `node1/` …, the secrets.
    pub dir: PathBuf,
    /// Number of nodes.
    pub nodes: usize,
    /// Node i (from 0) listens on base + 10 i (TCP), +1 (HTTP), +2 (admin), +3 (cluster).
    pub base_port: u16,
    /// Every node's `push_sink` (`log`, `webhook:<url>`).
    pub push_sink: String,
    /// Delete the directory's contents first (refused while a process uses them).
    pub fresh: bool,
    /// More `serve` flags for every node, after `--config` (e.g. the nemesis's faster
    /// heartbeats).
    pub extra: Vec<String>,
}

/// One node of the local cluster.
#[derive(Debug)]
pub struct LocalNode {
    /// Node name (`node1` …).
    pub name: String,
    /// Client TCP address.
    pub tcp: String,
    /// HTTP and WebSocket address.
    pub http: String,
    /// Admin address.
    pub admin: String,
    /// Node-to-node address.
    pub cluster: String,
    /// Its directory (working directory of the process).
    pub dir: PathBuf,
    /// Its log file (appended to by every start).
    pub log: PathBuf,
    /// Its configuration file (every setting; secrets by file).
    pub config: PathBuf,
    /// How many times it was started.
    pub starts: u32,
    child: Option<Child>,
}

impl LocalNode {
    /// Its process id, while this cluster runs it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn ready_file(&self) -> PathBuf {
        self.dir.join("ready.json")
    }
}

/// Something that happened to a process of the cluster (see [`LocalCluster::reap`]).
#[derive(Debug)]
pub enum Event {
    /// A node exited (it was reaped).
    NodeExited {
        /// Which.
        node: String,
        /// Its process id.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// PostgreSQL exited: the nodes cannot store anything until it is back.
    PostgresExited(ExitStatus),
    /// Redis exited: presence degrades until it is back.
    RedisExited(ExitStatus),
}

/// A running local cluster; every process it started stops when it is dropped.
pub struct LocalCluster {
    /// Its directory.
    pub dir: PathBuf,
    /// The nodes, in order.
    pub nodes: Vec<LocalNode>,
    /// The file holding the admin token (the same for every node).
    pub admin_token_file: PathBuf,
    /// The file holding the cluster cookie (another secret than the admin token).
    pub cookie_file: PathBuf,
    /// The shared store.
    pub store_url: String,
    /// Redis.
    pub redis_url: String,
    /// PostgreSQL.
    pub postgres: PrivatePostgres,
    /// Redis.
    pub redis: PrivateRedis,
    binary: PathBuf,
    extra: Vec<String>,
    /// Held while this cluster runs: one local cluster per directory.
    _lock: std::fs::File,
}

/// How long a node may take to become ready (several start at once on a busy machine).
const READY_WITHIN: Duration = Duration::from_secs(45);
/// How long a stopping node may take before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(30);

impl LocalCluster {
    /// Starts PostgreSQL, Redis and the nodes, each node once the previous one is ready.
    pub async fn start(config: LocalClusterConfig) -> Result<Self, LocalClusterError> {
        std::fs::create_dir_all(&config.dir)?;
        let dir = config.dir.canonicalize()?;
        let lock = lock_dir(&dir)?;
        if config.fresh {
            clear(&dir, config.nodes)?;
        }
        let postgres = PrivatePostgres::start_in(&dir.join("postgres"))?;
        let store_url = postgres.ensure_database("switchboard").await.map_err(|e| LocalClusterError::Database(e.to_string()))?;
        let redis = PrivateRedis::start_in(&dir.join("redis"))?;
        let admin_token_file = secret_file(&dir.join("admin-token"))?;
        let cookie_file = secret_file(&dir.join("cookie"))?;
        let port = |i: usize, k: u16| config.base_port + (i as u16) * 10 + k;
        let cluster_addrs: Vec<String> = (0..config.nodes).map(|i| format!("127.0.0.1:{}", port(i, 3))).collect();
        let mut nodes = Vec::new();
        for i in 0..config.nodes {
            let name = format!("node{}", i + 1);
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(&node_dir)?;
            let node = LocalNode {
                tcp: format!("127.0.0.1:{}", port(i, 0)),
                http: format!("127.0.0.1:{}", port(i, 1)),
                admin: format!("127.0.0.1:{}", port(i, 2)),
                cluster: cluster_addrs[i].clone(),
                log: node_dir.join("node.log"),
                config: node_dir.join("node.toml"),
                dir: node_dir,
                name,
                starts: 0,
                child: None,
            };
            let seeds: Vec<&str> = cluster_addrs.iter().filter(|a| **a != node.cluster).map(String::as_str).collect();
            let mut table = toml::Table::new();
            let mut set = |key: &str, value: toml::Value| {
                table.insert(key.to_owned(), value);
            };
            set("node_name", node.name.clone().into());
            set("store", store_url.clone().into());
            set("redis", redis.url().into());
            set("cluster_listen", node.cluster.clone().into());
            set("seeds", seeds.into_iter().map(toml::Value::from).collect::<Vec<_>>().into());
            set("cookie_file", cookie_file.display().to_string().into());
            set("admin_token_file", admin_token_file.display().to_string().into());
            set("tcp_listen", node.tcp.clone().into());
            set("http_listen", node.http.clone().into());
            set("admin_listen", node.admin.clone().into());
            set("dev_expose_codes", true.into());
            set("push_sink", config.push_sink.clone().into());
            set("ready_file", node.ready_file().display().to_string().into());
            let text = toml::to_string(&table).map_err(std::io::Error::other)?;
            let header = format!(
                "# Node {} of the local cluster in {}, written by `switchboard cluster local` at each start.\n# Restart it: {}\n",
                node.name,
                dir.display(),
                restart_command(&config.binary, &node)
            );
            std::fs::write(&node.config, header + &text)?;
            nodes.push(node);
        }
        let mut cluster = Self {
            dir,
            nodes,
            admin_token_file,
            cookie_file,
            store_url,
            redis_url: redis.url(),
            postgres,
            redis,
            binary: config.binary,
            extra: config.extra,
            _lock: lock,
        };
        // All at once: each waits (up to the dead rule) for its seeds, the others.
        for i in 0..cluster.nodes.len() {
            cluster.spawn_node(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// The index of the node named `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The shell command that starts node `i` again, with every setting it had.
    pub fn restart_command(&self, i: usize) -> String {
        restart_command(&self.binary, &self.nodes[i])
    }

    /// Starts node `i` (unless it runs) and waits until it is ready. Returns its process id.
    pub async fn start_node(&mut self, i: usize) -> Result<u32, LocalClusterError> {
        self.spawn_node(i)?;
        self.wait_ready(i).await
    }

    fn spawn_node(&mut self, i: usize) -> Result<(), LocalClusterError> {
        let binary = self.binary.clone();
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return Ok(());
        }
        let _ = std::fs::remove_file(node.ready_file());
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
        node.starts += 1;
        use std::io::Write as _;
        writeln!(log, "--- switchboard cluster local: start {} of {} at {} ms ---", node.starts, node.name, crate::store::now_ms())?;
        let mut command = Command::new(&binary);
        command.current_dir(&node.dir).arg("serve").arg("--config").arg(&node.config).args(&self.extra).stdout(Stdio::null()).stderr(log);
        if std::env::var_os("SWITCHBOARD_LOG").is_none() {
            command.env("SWITCHBOARD_LOG", "info");
        }
        // A node must not outlive the cluster that started it (killed, or its terminal
        // closed): the kernel asks it to stop (SIGTERM, graceful) when this process exits.
        // (PDEATHSIG follows the thread that forked: nodes are started from the runtime's
        // long-lived worker threads.)
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        // Its own process group: Ctrl-C at the terminal reaches this process only, which
        // then stops everything in order (nodes before the store they flush to).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        node.child = Some(command.spawn()?);
        Ok(())
    }

    /// Waits until node `i` wrote its ready file; a node that exits or takes too long is
    /// reported with the end of its log.
    async fn wait_ready(&mut self, i: usize) -> Result<u32, LocalClusterError> {
        let node = &mut self.nodes[i];
        let Some(pid) = node.pid() else {
            return Err(LocalClusterError::Node { node: node.name.clone(), why: "not started".into(), log: node.log.clone(), tail: String::new() });
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if node.ready_file().exists() {
                return Ok(pid);
            }
            let exited = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            let why = match exited {
                Some(status) => format!("it exited: {}", describe(status)),
                None if Instant::now() > deadline => format!("not ready within {} s", READY_WITHIN.as_secs()),
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if exited.is_none() {
                signal(node.child.as_ref(), libc::SIGKILL);
                if let Some(mut c) = node.child.take() {
                    let _ = c.wait();
                }
            }
            node.child = None;
            return Err(LocalClusterError::Node { node: node.name.clone(), why, log: node.log.clone(), tail: tail(&node.log, 15) });
        }
    }

    /// Sends `signal` to node `i` (SIGKILL to try a crash, SIGTERM for a graceful stop).
    /// Returns its process id, or None if it is not running. [`Self::reap`] reports the exit.
    pub fn signal_node(&self, i: usize, sig: libc::c_int) -> Option<u32> {
        let child = self.nodes[i].child.as_ref()?;
        signal(Some(child), sig);
        Some(child.id())
    }

    /// SIGKILL to node `i` (no shutdown code runs), reaped at once (no exit event).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills node `i` if it runs, starts it again with the same settings and waits until
    /// it is ready.
    pub async fn restart(&mut self, i: usize) -> Result<u32, LocalClusterError> {
        self.kill(i);
        self.start_node(i).await
    }

    /// Whether this cluster runs node `i` (it may be frozen).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGSTOP to node `i`: its sockets stay open and nothing answers.
    pub fn pause(&self, i: usize) {
        self.signal_node(i, libc::SIGSTOP);
    }

    /// SIGCONT to node `i`.
    pub fn resume(&self, i: usize) {
        self.signal_node(i, libc::SIGCONT);
    }

    /// The admin token every node reads from [`Self::admin_token_file`].
    pub fn admin_token(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(&self.admin_token_file)?.trim().to_owned())
    }

    /// Reaps every process of the cluster that exited since the last call (no zombie is
    /// left behind) and says which.
    pub fn reap(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                events.push(Event::NodeExited { node: node.name.clone(), pid: child.id(), status });
                node.child = None;
            }
        }
        if let Some(status) = self.postgres.try_exited() {
            events.push(Event::PostgresExited(status));
        }
        if let Some(status) = self.redis.try_exited() {
            events.push(Event::RedisExited(status));
        }
        events
    }

    /// Nodes running from this directory that this cluster did not start (restarted by
    /// hand with [`Self::restart_command`]): their names and process ids.
    pub fn foreign_nodes(&self) -> Vec<(String, u32)> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_none())
            .filter_map(|n| {
                let text = std::fs::read_to_string(n.ready_file()).ok()?;
                let pid = serde_json::from_str::<serde_json::Value>(&text).ok()?.get("pid")?.as_u64()? as u32;
                alive(pid).then(|| (n.name.clone(), pid))
            })
            .collect()
    }

    /// Stops every process this cluster started: nodes gracefully (SIGTERM; killed after
    /// 30 s), then Redis, then PostgreSQL (fast shutdown). Deletes nothing.
    pub fn stop(&mut self) {
        for node in &self.nodes {
            // A frozen node would not act on SIGTERM.
            signal(node.child.as_ref(), libc::SIGCONT);
            signal(node.child.as_ref(), libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_WITHIN;
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else { continue };
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.redis.stop();
        self.postgres.stop();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The shell command that runs `node` again, in the background.
fn restart_command(binary: &Path, node: &LocalNode) -> String {
    format!("cd {} && {} serve --config node.toml 2>>node.log &", quote(&node.dir), quote(binary))
}

/// A path as one shell word.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)) { text } else { format!("'{}'", text.replace('\'', "'\\''")) }
}

fn signal(child: Option<&Child>, sig: libc::c_int) {
    if let Some(child) = child {
        // SAFETY: kill with a pid we own (not reaped yet) and a valid signal number.
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
    }
}

fn alive(pid: u32) -> bool {
    // (0 would name our own process group.)
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// How a process ended, as an operator reads it.
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => "exited cleanly (status 0)".into(),
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT)",
                _ => "",
            };
            format!("killed by signal {sig}{name}")
        }
        (None, None) => "ended".into(),
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Takes the directory's lock file (one local cluster per directory) and writes our pid.
fn lock_dir(dir: &Path) -> Result<std::fs::File, LocalClusterError> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::fd::AsRawFd;
    let path = dir.join("local-cluster.lock");
    let mut file = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
    // SAFETY: flock on a file descriptor we own; LOCK_NB never blocks.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(LocalClusterError::Busy { dir: dir.to_owned(), pid: pid.trim().to_owned() });
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Empties `dir` for a fresh start, unless a process still uses it: a PostgreSQL on its
/// data, or a node started by hand from it.
fn clear(dir: &Path, nodes: usize) -> Result<(), LocalClusterError> {
    let data = dir.join("postgres").join("data");
    if let Some(pid) = super::postgres::running_on(&data) {
        return Err(LocalClusterError::InUse { what: "PostgreSQL".into(), pid, dir: data });
    }
    for i in 1..=nodes.max(9) {
        let ready = dir.join(format!("node{i}")).join("ready.json");
        let pid = std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("pid").and_then(|p| p.as_u64()));
        if let Some(pid) = pid.map(|p| p as u32).filter(|p| alive(*p)) {
            return Err(LocalClusterError::InUse { what: format!("node{i}"), pid, dir: ready.parent().map(Path::to_owned).unwrap_or_default() });
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == "local-cluster.lock" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A file holding a fresh random secret (mode 0600), or the one already there.
fn secret_file(path: &Path) -> Result<PathBuf, LocalClusterError> {
    if !path.exists() {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(path)?;
        writeln!(file, "{}", hex::encode(rand::random::<[u8; 24]>()))?;
    }
    Ok(path.to_owned())
}

/// A command typed into `switchboard cluster local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleCommand {
    /// Nothing (an empty line).
    Nothing,
    /// Show every process and its state.
    Status,
    /// SIGKILL a node (try a crash).
    Kill(String),
    /// SIGTERM a node (graceful stop).
    Stop(String),
    /// Start a node (or `postgres`, `redis`) that is down; stop it first if it runs.
    Restart(String),
    /// List the commands.
    Help,
    /// Stop everything and exit (as Ctrl-C).
    Quit,
    /// Not understood (the line).
    Unknown(String),
}

/// Reads one line typed by the operator.
pub fn parse_command(line: &str) -> ConsoleCommand {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => ConsoleCommand::Nothing,
        ["status"] | ["s"] => ConsoleCommand::Status,
        ["kill", node] => ConsoleCommand::Kill((*node).to_owned()),
        ["stop", node] => ConsoleCommand::Stop((*node).to_owned()),
        ["restart", node] | ["start", node] => ConsoleCommand::Restart((*node).to_owned()),
        ["help"] | ["h"] | ["?"] => ConsoleCommand::Help,
        ["quit"] | ["exit"] | ["q"] => ConsoleCommand::Quit,
        _ => ConsoleCommand::Unknown(line.trim().to_owned()),
    }
}

/// A tiny webhook that takes the nodes' push notifications (`--push-sink print`): returns
/// its URL and the notifications as they arrive (JSON, see `actors::push`).
pub fn push_receiver() -> std::io::Result<(String, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>)> {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let server = HttpServer::new(move || {
        let tx = tx.clone();
        App::new().route(
            "/push",
            web::post().to(move |body: web::Json<serde_json::Value>| {
                let _ = tx.send(body.into_inner());
                async { HttpResponse::Ok().finish() }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))?;
    let addr = server.addrs().first().copied().ok_or_else(|| std::io::Error::other("push receiver bound no address"))?;
    tokio::spawn(server.run());
    Ok((format!("http://{addr}/push"), rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_commands() {
        assert_eq!(parse_command("  kill node3 "), ConsoleCommand::Kill("node3".into()));
        assert_eq!(parse_command("restart postgres"), ConsoleCommand::Restart("postgres".into()));
        assert_eq!(parse_command("start node1"), ConsoleCommand::Restart("node1".into()));
        assert_eq!(parse_command(""), ConsoleCommand::Nothing);
        assert_eq!(parse_command("status"), ConsoleCommand::Status);
        assert_eq!(parse_command("kill"), ConsoleCommand::Unknown("kill".into()));
    }

    #[test]
    fn exits_read_as_an_operator_expects() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9 (SIGKILL)");
        assert_eq!(describe(ExitStatus::from_raw(0)), "exited cleanly (status 0)");
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exited with status 1");
    }

    #[test]
    fn a_fresh_start_refuses_a_directory_a_live_node_uses_and_otherwise_empties_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = dir.path().join("node2");
        std::fs::create_dir_all(&node).expect("node dir");
        // This test process plays the node started by hand.
        std::fs::write(node.join("ready.json"), format!("{{\"pid\": {}}}", std::process::id())).expect("ready file");
        let refused = clear(dir.path(), 3).expect_err("in use");
        assert!(refused.to_string().contains("node2"), "{refused}");
        std::fs::write(node.join("ready.json"), "{\"pid\": 0}").expect("ready file");
        std::fs::write(dir.path().join("local-cluster.lock"), "1").expect("lock");
        clear(dir.path(), 3).expect("nothing uses it");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("local-cluster.lock")]);
    }
}
