//! A private Redis server for one test or local trial: `redis-server` on a kernel-chosen
//! port of 127.0.0.1, no persistence, its files in a temporary directory, stopped on drop
//! (and by the kernel if the test process dies first).
//!
//! The binary comes from the machine (`scripts/install-deps.sh` installs it): found
//! through `SWITCHBOARD_REDIS_SERVER`, then `PATH`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a private server could not start.
#[derive(Debug, thiserror::Error)]
pub enum PrivateRedisError {
    /// No redis-server on this machine.
    #[error("redis-server not found; run scripts/install-deps.sh or set SWITCHBOARD_REDIS_SERVER")]
    NotInstalled,
    /// The server did not accept connections in time.
    #[error("redis-server did not start within {secs} s; its log:\n{log}")]
    NotReady {
        /// How long we waited.
        secs: u64,
        /// The server's log.
        log: String,
    },
    /// Files, processes.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running private server; killed on drop, and its directory deleted unless it is a
/// kept one ([`PrivateRedis::start_in`]).
pub struct PrivateRedis {
    child: Option<Child>,
    dir: PathBuf,
    /// Deletes `dir` on drop (a temporary directory).
    _temp: Option<tempfile::TempDir>,
    port: u16,
    bin: PathBuf,
    /// Certificate, key (PEM files) when the server speaks only TLS.
    tls: Option<(PathBuf, PathBuf)>,
}

/// Where `redis-server` is, if anywhere.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SWITCHBOARD_REDIS_SERVER").map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

impl PrivateRedis {
    /// Starts a server in a new temporary directory.
    pub fn start() -> Result<Self, PrivateRedisError> {
        Self::start_with_tls(None)
    }

    /// As [`Self::start`]; with `tls` (certificate and key PEM files) the server listens
    /// only on a TLS port (no plaintext port) and does not ask clients for certificates:
    /// its URL is then `rediss://127.0.0.1:<port>`.
    pub fn start_with_tls(tls: Option<(PathBuf, PathBuf)>) -> Result<Self, PrivateRedisError> {
        let bin = server_binary().ok_or(PrivateRedisError::NotInstalled)?;
        let mut last_error = None;
        // A port can be taken between this probe and the bind; retry a few times.
        for _ in 0..5 {
            let temp = tempfile::Builder::new().prefix("switchboard-redis-").tempdir()?;
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut server = Self { child: None, dir: temp.path().to_owned(), _temp: Some(temp), port, bin: bin.clone(), tls: tls.clone() };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(PrivateRedisError::NotReady { secs: 0, log: String::new() }))
    }

    /// Starts a server whose files (its log) live in `dir`, kept when it stops. It still
    /// keeps no data across restarts: the cluster rewrites its directory into an empty
    /// Redis within a second.
    pub fn start_in(dir: &std::path::Path) -> Result<Self, PrivateRedisError> {
        let bin = server_binary().ok_or(PrivateRedisError::NotInstalled)?;
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut server = Self { child: None, dir: dir.clone(), _temp: None, port, bin: bin.clone(), tls: None };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(PrivateRedisError::NotReady { secs: 0, log: String::new() }))
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// If the server has exited since the last call, reaps it and returns how it ended.
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    fn launch(&mut self) -> Result<(), PrivateRedisError> {
        let log_path = self.dir.join("redis.log");
        let mut cmd = Command::new(&self.bin);
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some((cert, key)) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no", "--tls-cert-file"])
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key);
            }
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Its own process group, so that Ctrl-C at a terminal reaches only its
                // owner, which stops it in order (a local cluster stops its nodes first).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PrivateRedisError::NotReady { secs: 10, log: std::fs::read_to_string(&log_path).unwrap_or_default() });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data is gone: no persistence, as a cache node that died).
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and every command hangs, as
    /// with a Redis that is overloaded or partitioned away. Its data is kept.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill with a pid we own and a valid signal number.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) -> Result<(), PrivateRedisError> {
        self.stop();
        self.launch()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
