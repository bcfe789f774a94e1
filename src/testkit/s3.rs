//! A private S3-compatible server for one test, benchmark or local trial: moto's server
//! mode (`moto_server`, a separate process speaking the S3 REST API over HTTP) on a
//! kernel-chosen port of 127.0.0.1, with one bucket, stopped on drop (and by the kernel if
//! the test process dies first). Its objects live in the server's memory: they outlive
//! restarts and `kill -9` of the switchboard processes that use it, as a bucket does.
//!
//! The binary comes from the project's Python environment (`scripts/install-deps.sh`
//! installs moto there): found through `SWITCHBOARD_MOTO_SERVER`, then
//! `$HOME/.cache/switchboard/python/bin/moto_server`, then `PATH`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a private server could not start.
#[derive(Debug, thiserror::Error)]
pub enum PrivateS3Error {
    /// No moto_server on this machine.
    #[error("moto_server not found; run scripts/install-deps.sh or set SWITCHBOARD_MOTO_SERVER")]
    NotInstalled,
    /// The server did not answer in time.
    #[error("moto_server did not start within {secs} s; its log:\n{log}")]
    NotReady {
        /// How long we waited.
        secs: u64,
        /// The server's log.
        log: String,
    },
    /// Creating the bucket failed.
    #[error("creating the bucket: {0}")]
    Bucket(String),
    /// Files, processes.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The project's Python environment (`scripts/install-deps.sh`): moto and tuspy live there.
pub fn python_env() -> PathBuf {
    if let Some(dir) = std::env::var_os("SWITCHBOARD_PYTHON_ENV") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/switchboard/python")
}

/// Where `moto_server` is, if anywhere.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SWITCHBOARD_MOTO_SERVER").map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    let in_env = python_env().join("bin/moto_server");
    if in_env.is_file() {
        return Some(in_env);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.is_file())
}

/// A running private server with one bucket; killed on drop.
pub struct PrivateS3 {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    bucket: String,
}

impl PrivateS3 {
    /// Starts a server and creates the bucket `media`.
    pub fn start() -> Result<Self, PrivateS3Error> {
        let bin = server_binary().ok_or(PrivateS3Error::NotInstalled)?;
        let mut last_error = None;
        // A port can be taken between this probe and the bind; retry a few times.
        for _ in 0..5 {
            let dir = tempfile::Builder::new().prefix("switchboard-s3-").tempdir()?;
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut server = Self { child: None, dir, port, bucket: "media".into() };
            match server.launch(&bin) {
                Ok(()) => {
                    server.request("PUT", &format!("/{}", server.bucket)).map_err(PrivateS3Error::Bucket)?;
                    return Ok(server);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(PrivateS3Error::NotReady { secs: 0, log: String::new() }))
    }

    fn launch(&mut self, bin: &PathBuf) -> Result<(), PrivateS3Error> {
        let log_path = self.dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .env("MOTO_ALLOW_NONEXISTENT_REGION", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.request("GET", "/").is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PrivateS3Error::NotReady { secs: 30, log: std::fs::read_to_string(&log_path).unwrap_or_default() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One unsigned HTTP/1.1 request (moto does not check signatures); Ok if it answered 2xx.
    fn request(&self, method: &str, path: &str) -> Result<(), String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        write!(stream, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port)
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        let status = answer.split_whitespace().nth(1).unwrap_or("");
        if status.starts_with('2') { Ok(()) } else { Err(format!("{method} {path}: {}", answer.lines().next().unwrap_or(""))) }
    }

    /// The server's URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `--media-store` value for the bucket (with the dummy credentials moto accepts).
    pub fn spec(&self) -> String {
        format!("s3://{}?endpoint={}&region=us-east-1&access_key_id=test&secret_access_key=test", self.bucket, self.endpoint())
    }

    /// The same bucket under a key prefix (a second, independent store in one server).
    pub fn spec_with_prefix(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}?endpoint={}&region=us-east-1&access_key_id=test&secret_access_key=test", self.bucket, self.endpoint())
    }

    /// Kills the server (its objects are gone).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}
