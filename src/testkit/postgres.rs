//! A private PostgreSQL server for one test, benchmark or local trial: `initdb` into a
//! temporary directory, `postgres` on a kernel-chosen port of 127.0.0.1 (its socket file in
//! the same directory), stopped and deleted on drop. A local trial keeps its data instead
//! ([`PrivatePostgres::start_in`]: a directory of the caller's, reused by the next start,
//! never deleted).
//!
//! The binaries come from the machine (`scripts/install-deps.sh` installs them): found
//! through `SWITCHBOARD_PG_BIN`, then `pg_config --bindir`, then the newest
//! `/usr/lib/postgresql/*/bin`, then `PATH`. PostgreSQL refuses to run as root, so when
//! the caller is root the server runs as the `postgres` system user, which the Debian
//! package creates.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a private server could not start.
#[derive(Debug, thiserror::Error)]
pub enum PrivatePostgresError {
    /// No PostgreSQL server binaries on this machine.
    #[error("PostgreSQL server binaries (initdb, postgres) not found; run scripts/install-deps.sh or set SWITCHBOARD_PG_BIN")]
    NotInstalled,
    /// Running as root but there is no `postgres` user to run the server as.
    #[error("running as root and there is no 'postgres' user to run the server as")]
    NoServerUser,
    /// initdb failed.
    #[error("initdb failed: {0}")]
    Initdb(String),
    /// The server did not accept connections in time.
    #[error("postgres did not start within {secs} s; its log:\n{log}")]
    NotReady {
        /// How long we waited.
        secs: u64,
        /// The server's log.
        log: String,
    },
    /// A server already runs on the data directory (its `postmaster.pid` names a live
    /// process): two servers on one directory would corrupt it.
    #[error("a PostgreSQL server (pid {pid}) is already running on {dir}; stop it first")]
    InUse {
        /// Its data directory.
        dir: PathBuf,
        /// Its process.
        pid: u32,
    },
    /// Files, processes.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where the server's files are.
enum Dir {
    /// Deleted with the server (tests, benchmarks).
    Temp(tempfile::TempDir),
    /// The caller's, kept (local trials).
    Kept(PathBuf),
}

impl Dir {
    fn path(&self) -> &Path {
        match self {
            Dir::Temp(t) => t.path(),
            Dir::Kept(p) => p,
        }
    }
}

/// A running private server; stopped on drop (and its directory deleted, unless it is a
/// kept one).
pub struct PrivatePostgres {
    child: Option<Child>,
    dir: Dir,
    port: u16,
    bin: PathBuf,
    as_user: Option<(u32, u32)>,
    /// Serves TLS (`ssl = on`) with `server.crt` and `server.key` of its directory.
    tls: bool,
}

impl std::fmt::Debug for PrivatePostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivatePostgres").field("port", &self.port).field("dir", &self.dir.path()).finish()
    }
}

/// The live process named by a data directory's `postmaster.pid`, if any.
pub fn running_on(data: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok().filter(|p| *p > 0)?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid as libc::pid_t, 0) } == 0).then_some(pid)
}

/// Where the server binaries are, if anywhere.
pub fn bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| ["initdb", "postgres", "pg_isready"].iter().all(|b| dir.join(b).is_file());
    if let Some(dir) = std::env::var_os("SWITCHBOARD_PG_BIN").map(PathBuf::from) {
        return has_server(&dir).then_some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_server(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|dir| has_server(dir)))
}

/// The uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3).then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PrivatePostgres {
    /// Creates a cluster in a new temporary directory and starts the server on it.
    pub fn start() -> Result<Self, PrivatePostgresError> {
        Self::start_with_tls(None)
    }

    /// As [`Self::start`], with `ssl = on` serving the given certificate chain and key
    /// (PEM text). Clients may still connect without TLS (`pg_hba` is not changed), so
    /// a test can tell what its `sslmode` did from `pg_stat_ssl`.
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> Result<Self, PrivatePostgresError> {
        let dir = tempfile::Builder::new().prefix("switchboard-pg-").tempdir()?;
        Self::start_on(Dir::Temp(dir), tls)
    }

    /// Starts a server whose files live in `dir` (data in `dir/data`, created by `initdb`
    /// the first time, reused afterwards) and are kept when it stops: a local trial keeps
    /// its accounts and messages between runs. Refused while another server runs on it.
    pub fn start_in(dir: &Path) -> Result<Self, PrivatePostgresError> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        if let Some(pid) = running_on(&dir.join("data")) {
            return Err(PrivatePostgresError::InUse { dir: dir.join("data"), pid });
        }
        Self::start_on(Dir::Kept(dir), None)
    }

    fn start_on(dir: Dir, tls: Option<(&str, &str)>) -> Result<Self, PrivatePostgresError> {
        let bin = bin_dir().ok_or(PrivatePostgresError::NotInstalled)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_user = if unsafe { libc::geteuid() } == 0 { Some(postgres_user().ok_or(PrivatePostgresError::NoServerUser)?) } else { None };
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let data = dir.path().join("data");
        if !data.join("PG_VERSION").exists() {
            let mut initdb = Command::new(bin.join("initdb"));
            initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--locale=C"]);
            let out = run_as(&mut initdb, as_user).stdout(Stdio::piped()).stderr(Stdio::piped()).output()?;
            if !out.status.success() {
                return Err(PrivatePostgresError::Initdb(String::from_utf8_lossy(&out.stderr).into_owned()));
            }
        }
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = dir.path().join(name);
                std::fs::write(&path, pem)?;
                // PostgreSQL refuses a key that others can read.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                if let Some((uid, gid)) = as_user {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                }
            }
        }
        // A port can be taken between this probe and the bind; retry a few times.
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            match Self::launch(&bin, dir.path(), port, as_user, tls.is_some()) {
                Ok(child) => return Ok(Self { child: Some(child), dir, port, bin, as_user, tls: tls.is_some() }),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(PrivatePostgresError::NotReady { secs: 0, log: String::new() }))
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// If the server has exited since the last call, reaps it and returns how it ended.
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    fn launch(bin: &Path, dir: &Path, port: u16, as_user: Option<(u32, u32)>, tls: bool) -> Result<Child, PrivatePostgresError> {
        let log_path = dir.join("postgres.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid))?;
        }
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D").arg(dir.join("data")).args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"]).arg(dir).args([
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=64MB",
            "-c",
            "log_min_messages=warning",
        ]);
        if tls {
            cmd.args(["-c", "ssl=on", "-c"]).arg(format!("ssl_cert_file={}", dir.join("server.crt").display()));
            cmd.arg("-c").arg(format!("ssl_key_file={}", dir.join("server.key").display()));
        }
        // The server must not outlive the test process even when it is killed (a timed-out
        // test): the kernel sends SIGQUIT (immediate shutdown) when the parent dies.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Its own process group, so that Ctrl-C at a terminal reaches only its
                // owner, which stops it in order (a local cluster stops its nodes first).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 || libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = run_as(&mut cmd, as_user).stdout(Stdio::null()).stderr(log).spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The port opens before crash recovery has finished; pg_isready says when the
            // server accepts sessions.
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(child);
            }
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PrivatePostgresError::NotReady { secs: 30, log: std::fs::read_to_string(&log_path).unwrap_or_default() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL of a database of this server (created by [`Self::create_database`], or
    /// `postgres`, which always exists).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates an empty database and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, tokio_postgres::Error> {
        self.database(name, false).await
    }

    /// The URL of database `name`, created if it does not exist yet (a kept directory
    /// already has it from an earlier run).
    pub async fn ensure_database(&self, name: &str) -> Result<String, tokio_postgres::Error> {
        self.database(name, true).await
    }

    async fn database(&self, name: &str, reuse: bool) -> Result<String, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
        let driver = tokio::spawn(connection);
        if reuse && !client.query("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?.is_empty() {
            drop(client);
            let _ = driver.await;
            return Ok(self.url(name));
        }
        // Names are chosen by our own callers; quoting keeps any of them valid SQL.
        client.batch_execute(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""))).await?;
        drop(client);
        let _ = driver.await;
        Ok(self.url(name))
    }

    /// Crashes the server (immediate shutdown; a fast one for a kept directory) if it runs,
    /// and starts it again on the same data and port: what a client sees when the database
    /// restarts; committed data must be back.
    pub fn restart(&mut self) -> Result<(), PrivatePostgresError> {
        self.stop();
        self.child = Some(Self::launch(&self.bin, self.dir.path(), self.port, self.as_user, self.tls)?);
        Ok(())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server at once (SIGQUIT: no checkpoint, as after a crash; committed data
    /// is in the WAL). A kept directory gets a fast shutdown instead (SIGINT: sessions are
    /// cut, a checkpoint is written), so its next start needs no recovery.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let signal = match self.dir {
                Dir::Temp(_) => libc::SIGQUIT,
                Dir::Kept(_) => libc::SIGINT,
            };
            // SAFETY: kill with a pid we own and a valid signal number.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run_as(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp");
    }
    cmd
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
