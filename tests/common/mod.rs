//! Test harness: starts a private `switchboard serve` process (temp data dir, ports
//! chosen by the kernel, development codes on) and helpers to sign up users.
//!
//! The server stores on the embedded store unless `SWITCHBOARD_TEST_STORE=postgres`: then
//! each test server gets its own private PostgreSQL (see `switchboard::testkit`), which
//! outlives restarts and `kill -9` of the switchboard process, as a shared store does.
#![allow(dead_code)]

pub mod browser;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use switchboard::accounts::DeviceCredentials;
use switchboard::client::{Connection, HttpApi, Transport};
use switchboard::ids::ConversationId;
use switchboard::protocol::{pb, server_frame};

/// How long a test waits for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs each listed `async fn name(kind: Kind)` as two tests, `tcp::name` and `ws::name`.
#[macro_export]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod tcp {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Tcp).await })*
        }
        mod ws {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Ws).await })*
        }
    };
}

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// A server process owned by one test.
pub struct TestServer {
    child: Option<Child>,
    /// The private PostgreSQL of this server, when the suite runs against PostgreSQL.
    /// Declared before `dir` so it stops before the directory is deleted.
    postgres: Option<switchboard::testkit::PrivatePostgres>,
    store: String,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub admin: SocketAddr,
    extra: Vec<String>,
}

#[derive(serde::Deserialize)]
struct Ready {
    http: SocketAddr,
    tcp: SocketAddr,
    admin: SocketAddr,
    /// The backend the server reports, checked against the one this run asked for.
    store: String,
}

/// The store every test server of this run uses: "embedded" (default) or "postgres".
pub fn store_kind() -> String {
    std::env::var("SWITCHBOARD_TEST_STORE").unwrap_or_else(|_| "embedded".into())
}

/// The store for a new test server: a directory of its own, or a private PostgreSQL.
fn new_store(dir: &Path) -> (Option<switchboard::testkit::PrivatePostgres>, String) {
    match store_kind().as_str() {
        "embedded" => (None, format!("embedded:{}", dir.join("data").display())),
        "postgres" => {
            let pg = switchboard::testkit::PrivatePostgres::start().expect("private postgres");
            let url = pg.url("postgres");
            (Some(pg), url)
        }
        other => panic!("SWITCHBOARD_TEST_STORE={other}: expected embedded or postgres"),
    }
}

fn spawn(dir: &Path, store: &str, extra: &[String]) -> (Child, Ready) {
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).expect("log file");
    // Listeners on kernel-chosen ports, unless the test fixed them (nodes of a cluster
    // that restart on the same addresses).
    let mut listeners = Vec::new();
    for flag in ["--http-listen", "--tcp-listen", "--admin-listen"] {
        if !extra.iter().any(|a| a == flag) {
            listeners.extend([flag, "127.0.0.1:0"]);
        }
    }
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .arg("--store")
        .arg(store)
        .current_dir(dir)
        .args(listeners)
        .args(["--dev-expose-codes", "true", "--admin-token", ADMIN_TOKEN])
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .env("SWITCHBOARD_LOG", std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn switchboard");
    // Killed and reaped if this function panics (the server is not left behind a failed test).
    let mut child = Reaped(Some(child));
    // Generous: a cluster test starts several servers and databases at once on 2 cores.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(r) = serde_json::from_str::<Ready>(&text)
        {
            let expected = if store.starts_with("postgres") { "postgres" } else { "embedded" };
            assert_eq!(r.store, expected, "the server runs on another store than the test asked for");
            return (child.0.take().expect("spawned"), r);
        }
        assert!(
            Instant::now() < deadline,
            "server did not become ready; log:\n{}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed and reaped when dropped (unless taken out).
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (postgres, store) = new_store(dir.path());
        Self::launch(dir, postgres, store, extra)
    }

    /// A server on a store the test chose (`embedded:<dir>`, `postgres://…`), whatever
    /// store the run uses for the others.
    pub fn start_on(store: &str, extra: &[&str]) -> Self {
        Self::launch(tempfile::tempdir().expect("tempdir"), None, store.to_owned(), extra)
    }

    fn launch(dir: tempfile::TempDir, postgres: Option<switchboard::testkit::PrivatePostgres>, store: String, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, r) = spawn(dir.path(), &store, &extra);
        Self { child: Some(child), postgres, store, dir, http: r.http, tcp: r.tcp, admin: r.admin, extra }
    }

    pub fn api(&self) -> HttpApi {
        HttpApi::new(format!("http://{}", self.http))
    }

    pub fn transport(&self, kind: Kind) -> Transport {
        match kind {
            Kind::Tcp => Transport::Tcp(self.tcp),
            Kind::Ws => Transport::ws(self.http),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`, `libc::SIGSTOP`) to the server process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with the pid of a child we own and a valid signal number.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
    }

    /// Accounts with a primary device each, provisioned through the admin API (which
    /// stays plain HTTP when the public listener serves TLS).
    pub async fn provision(&self, count: usize) -> Vec<DeviceCredentials> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let first = u64::from(std::process::id() % 10_000) * 100_000 + u64::from(NEXT.fetch_add(1, Ordering::Relaxed)) * 1000;
        let response = reqwest::Client::new()
            .post(format!("http://{}/admin/provision", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "count": count, "phone_prefix": "+1777", "first": first }))
            .send()
            .await
            .expect("provision");
        assert!(response.status().is_success(), "provision: {}", response.status());
        response.json().await.expect("credentials")
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own (a drained node).
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same data directory with `extra` flags instead of the ones it
    /// was started with (new ports, unless the test fixed them).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    /// Starts again on the same data directory (new ports, unless the test fixed them).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let (child, r) = spawn(self.dir.path(), &self.store, &self.extra);
        self.child = Some(child);
        self.http = r.http;
        self.tcp = r.tcp;
        self.admin = r.admin;
    }

    /// The private PostgreSQL of this server, when the run is on PostgreSQL.
    pub fn postgres_mut(&mut self) -> Option<&mut switchboard::testkit::PrivatePostgres> {
        self.postgres.as_mut()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub async fn admin_tree(&self) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("http://{}/admin/tree", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin tree")
            .json()
            .await
            .expect("tree json")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Ws,
}

/// A phone number no other test uses: a valid number (registration refuses invalid
/// ones) in San Francisco's area code, +1 415 2xx-xxxx to 9xx-xxxx, offset by the process
/// id so that two test processes sharing a store draw different numbers.
pub fn phone() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("+1415{}", 2_000_000 + (std::process::id() % 700 * 10_000 + n) % 8_000_000)
}

/// A user with a primary device.
pub async fn user(api: &HttpApi) -> DeviceCredentials {
    api.sign_up(&phone(), "phone").await.expect("sign up")
}

/// Connects and authenticates, then waits for catch-up to finish.
pub async fn online(server: &TestServer, kind: Kind, creds: &DeviceCredentials) -> Connection {
    let (mut conn, _) = Connection::open(&server.transport(kind), &creds.token).await.expect("connect");
    caught_up(&mut conn).await;
    conn
}

/// Waits for CatchUpComplete.
pub async fn caught_up(conn: &mut Connection) -> u64 {
    conn.wait_for(Duration::from_secs(10), true, |k| match k {
        switchboard::protocol::server_frame::Kind::CatchUpComplete(c) => Some(c.messages),
        _ => None,
    })
    .await
    .expect("catch-up complete")
}

/// Alice (connected) and Bob (registered) with their 1:1 conversation open.
pub struct Pair {
    pub alice: DeviceCredentials,
    pub bob: DeviceCredentials,
    pub a: Connection,
    pub conversation: ConversationId,
}

/// Signs up Alice and Bob, connects Alice and opens their conversation.
pub async fn pair(server: &TestServer, kind: Kind) -> Pair {
    let api = server.api();
    let alice = user(&api).await;
    let bob = user(&api).await;
    let mut a = online(server, kind, &alice).await;
    let conversation = a.open_direct(bob.user_id).await.expect("open direct");
    Pair { alice, bob, a, conversation }
}

/// Sends `prefix-i` for every i in `seqs` without waiting, then waits for the ack of the
/// last one (whose seq must be the range's end).
pub async fn send_all(conn: &mut Connection, conversation: ConversationId, seqs: std::ops::RangeInclusive<u64>, prefix: &str) {
    let last = *seqs.end();
    for i in seqs {
        conn.send_message(conversation, &format!("{prefix}-{i}"), format!("payload {i}").into_bytes()).await.expect("send");
    }
    // Matched by conversation too: acks of another conversation on this connection wait
    // in the buffer, and one of them may carry the same seq.
    conn.wait_for(WAIT, true, |k| {
        matches!(k, server_frame::Kind::SendAck(s) if s.seq == last && s.conversation_id[..] == conversation.as_bytes()[..]).then_some(())
    })
    .await
    .expect("ack of the last send");
}

/// The next Error frame.
pub async fn next_error(conn: &mut Connection) -> pb::Error {
    conn.wait_for(WAIT, false, |k| match k {
        server_frame::Kind::Error(e) => Some(e.clone()),
        _ => None,
    })
    .await
    .expect("an error frame")
}

/// The next Closing frame.
pub async fn next_closing(conn: &mut Connection) -> pb::Closing {
    conn.wait_for(WAIT, false, |k| match k {
        server_frame::Kind::Closing(c) => Some(c.clone()),
        _ => None,
    })
    .await
    .expect("a closing frame")
}

/// A tiny HTTP receiver: every POST body (JSON) goes to the channel; the first
/// `fail_first` requests are answered 500 to exercise retries.
pub async fn push_receiver(fail_first: u32) -> (String, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    let (url, rx, _) = counting_push_receiver(fail_first).await;
    (url, rx)
}

/// [`push_receiver`], also counting every request it got (failed ones included).
pub async fn counting_push_receiver(fail_first: u32) -> (String, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>, std::sync::Arc<AtomicU32>) {
    let attempts = std::sync::Arc::new(AtomicU32::new(0));
    let counted = attempts.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let failures = std::sync::Arc::new(AtomicU32::new(fail_first));
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let tx = tx.clone();
            let failures = failures.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tokio::io::AsyncReadExt::read(&mut socket, &mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let Some(head_end) = text.find("\r\n\r\n") else { continue };
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                        .unwrap_or(0);
                    if buf.len() < head_end + 4 + length {
                        continue;
                    }
                    let body = &buf[head_end + 4..head_end + 4 + length];
                    counted.fetch_add(1, Ordering::SeqCst);
                    let failing = failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1)).is_ok();
                    let status = if failing { "500 Internal Server Error" } else { "200 OK" };
                    if !failing && let Ok(json) = serde_json::from_slice(body) {
                        let _ = tx.send(json);
                    }
                    let _ = tokio::io::AsyncWriteExt::write_all(
                        &mut socket,
                        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
                    return;
                }
            });
        }
    });
    (url, rx, attempts)
}

/// A device's keys as its app makes them: identity keys, `n` one-time keys and a fallback
/// key, each signed by the account's Ed25519 key.
pub fn signed_upload(
    account: &mut vodozemac::olm::Account,
    user: switchboard::ids::UserId,
    device: switchboard::ids::DeviceId,
    n: usize,
    fallback: bool,
) -> pb::UploadKeys {
    let ids = account.identity_keys();
    let (curve, ed) = (ids.curve25519.to_bytes(), *ids.ed25519.as_bytes());
    let identity = pb::DeviceIdentity {
        curve25519: curve.to_vec().into(),
        ed25519: ed.to_vec().into(),
        signature: account.sign(switchboard::cores::keys::identity_signed_bytes(user, device, &curve, &ed)).to_bytes().to_vec().into(),
    };
    account.generate_one_time_keys(n);
    let sign = |account: &vodozemac::olm::Account, id: String, key: [u8; 32], fallback: bool| pb::SignedKey {
        signature: account.sign(switchboard::cores::keys::one_time_key_signed_bytes(device, &id, &key, fallback)).to_bytes().to_vec().into(),
        key_id: id,
        key: key.to_vec().into(),
    };
    let one_time_keys = account.one_time_keys().into_iter().map(|(id, k)| sign(account, id.to_base64(), k.to_bytes(), false)).collect();
    let fallback_key = if fallback {
        account.generate_fallback_key();
        account.fallback_key().into_iter().next().map(|(id, k)| sign(account, id.to_base64(), k.to_bytes(), true))
    } else {
        None
    };
    account.mark_keys_as_published();
    pb::UploadKeys { request_id: 0, identity: Some(identity), one_time_keys, fallback_key }
}

/// The code of a refused request (panics if it was not refused).
pub fn rejected<T: std::fmt::Debug>(result: Result<T, switchboard::client::ClientError>) -> switchboard::protocol::ErrorCode {
    match result {
        Err(switchboard::client::ClientError::Rejected { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}
