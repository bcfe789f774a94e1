//! TLS everywhere a client or the server opens a connection: the client listeners (raw
//! TCP and HTTP/WebSocket) with a certificate swapped while serving, PostgreSQL with each
//! `sslmode`, and Redis over `rediss://`. Every certificate is made here (rcgen), every
//! server is private (127.0.0.1, temporary directory).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, TestServer, WAIT, caught_up};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use switchboard::client::{Connection, TlsClient, Transport};
use switchboard::protocol::server_frame;
use switchboard::store::{PostgresOptions, PostgresStore};
use switchboard::testkit::{PrivatePostgres, PrivateRedis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA that signs server certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem_path: PathBuf,
}

/// A certificate and its key, as PEM text and files.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
        let pem_path = dir.join(format!("{name}.pem"));
        std::fs::write(&pem_path, issuer.pem()).expect("write ca");
        Self { issuer, pem_path }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names).expect("params").signed_by(&key, &self.issuer).expect("sign");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}

impl Leaf {
    /// Writes the pair to `cert`/`key` (each through a rename, as a deploy tool would, so a
    /// reader never sees half a file).
    fn install(&self, cert: &Path, key: &Path) {
        for (path, text) in [(key, &self.key_pem), (cert, &self.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, path).expect("rename");
        }
    }
}

/// The certificate a fresh TLS connection to `addr` is shown.
async fn served_certificate(addr: std::net::SocketAddr, tls: &TlsClient) -> Option<Vec<u8>> {
    let conn = tokio::time::timeout(WAIT, Connection::connect(&Transport::TcpTls { addr, tls: tls.clone() })).await.ok()?.ok()?;
    conn.peer_certificate().map(<[u8]>::to_vec)
}

/// GET `path` over HTTPS by hand (HTTP/1.1, `Connection: close`); returns the status line
/// and the body.
async fn https_get(addr: std::net::SocketAddr, ca: &Path, path: &str) -> (String, String) {
    let pem = std::fs::read(ca).expect("ca");
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in rustls_pki_types_pem(&pem) {
        roots.add(cert).expect("root");
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.expect("https handshake");
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("request");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

fn rustls_pki_types_pem(pem: &[u8]) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().expect("pem")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_listeners_serve_tls_and_new_connections_see_a_swapped_certificate() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "ca");
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let first = ca.leaf(&["127.0.0.1"]);
    first.install(&cert, &key);
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    let server = TestServer::start_with(&["--tls-cert", &cert_arg, "--tls-key", &key_arg, "--tls-reload-secs", "1"]);
    let tls = TlsClient::with_ca_file(&ca.pem_path, "127.0.0.1").expect("tls client");
    let users = server.provision(2).await;
    let (alice, bob) = (&users[0], &users[1]);

    // The protocol over TLS, on both transports.
    let (mut a, _) = Connection::open(&Transport::TcpTls { addr: server.tcp, tls: tls.clone() }, &alice.token).await.expect("alice over tls");
    caught_up(&mut a).await;
    assert_eq!(a.peer_certificate(), Some(first.der.as_slice()));
    let (mut b, _) = Connection::open(&Transport::wss(server.http, tls.clone()), &bob.token).await.expect("bob over wss");
    caught_up(&mut b).await;
    assert_eq!(b.peer_certificate(), Some(first.der.as_slice()));
    let direct = a.open_direct(bob.user_id).await.expect("open direct");
    assert_eq!(a.send_and_ack(direct, "tls-1", b"over tls".to_vec()).await.expect("ack").seq, 1);
    assert_eq!(b.next_message(WAIT).await.expect("bob receives").payload.as_ref(), b"over tls");
    // The HTTP API is served over TLS on the same listener as the WebSocket.
    let (status, body) = https_get(server.http, &ca.pem_path, "/healthz").await;
    assert!(status.contains(" 200 "), "{status}: {body}");
    // A client that does not speak TLS gets nowhere (no Welcome).
    let plain = tokio::time::timeout(Duration::from_secs(5), Connection::open(&Transport::Tcp(server.tcp), &alice.token)).await;
    assert!(!matches!(plain, Ok(Ok(_))), "a plaintext client was served by a TLS listener");
    // Nor does one that trusts another CA.
    let stranger = TlsClient::with_ca_file(&Ca::new(dir.path(), "other").pem_path, "127.0.0.1").expect("tls client");
    assert!(served_certificate(server.tcp, &stranger).await.is_none(), "a certificate from an unknown CA was accepted");

    // A new certificate, announced by SIGHUP: the next handshake presents it.
    let second = ca.leaf(&["127.0.0.1"]);
    second.install(&cert, &key);
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while served_certificate(server.tcp, &tls).await.as_deref() != Some(second.der.as_slice()) {
        assert!(Instant::now() < deadline, "the swapped certificate was not served after SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut b2, _) = Connection::open(&Transport::wss(server.http, tls.clone()), &bob.token).await.expect("bob again over wss");
    assert_eq!(b2.peer_certificate(), Some(second.der.as_slice()), "the HTTP listener serves the new certificate too");
    caught_up(&mut b2).await;
    // The connection opened before the swap carries on.
    assert_eq!(a.send_and_ack(direct, "tls-2", b"still here".to_vec()).await.expect("ack").seq, 2);
    // (Seq 1 came again in the new connection's catch-up: bob never acknowledged it.)
    let received = b2.wait_for(WAIT, false, |k| matches!(k, server_frame::Kind::Message(m) if m.seq == 2).then_some(())).await;
    assert!(received.is_ok(), "bob's new connection receives the message sent after the swap");

    // A certificate whose key does not match is refused; the current one stays.
    let broken = ca.leaf(&["127.0.0.1"]);
    std::fs::write(&cert, &broken.cert_pem).expect("cert only");
    server.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(served_certificate(server.tcp, &tls).await.as_deref(), Some(second.der.as_slice()), "a broken pair replaced the certificate");

    // Without a signal: the poller sees the files change.
    let third = ca.leaf(&["127.0.0.1"]);
    third.install(&cert, &key);
    let deadline = Instant::now() + WAIT;
    while served_certificate(server.tcp, &tls).await.as_deref() != Some(third.der.as_slice()) {
        assert!(Instant::now() < deadline, "the changed files were not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.log().contains("not reloaded"), "the refused reload was logged");
}

/// Whether the store's own connection is encrypted, or why it could not connect.
async fn encrypted(url: &str) -> Result<bool, String> {
    let options = PostgresOptions { pool_size: 1, connect_timeout: Duration::from_secs(5), ..Default::default() };
    let store = PostgresStore::connect(url, options).await.map_err(|e| e.to_string())?;
    store.connection_encrypted().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_honour_sslmode() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other");
    // Valid for "localhost" only: connecting to 127.0.0.1 passes verify-ca, not verify-full.
    let leaf = ca.leaf(&["localhost"]);
    let pg = PrivatePostgres::start_with_tls(Some((&leaf.cert_pem, &leaf.key_pem))).expect("postgres with ssl");
    let port = pg.port();
    let root = ca.pem_path.display().to_string();
    let url = |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");

    assert_eq!(encrypted(&url("127.0.0.1", "sslmode=disable")).await, Ok(false));
    assert_eq!(encrypted(&url("127.0.0.1", "")).await, Ok(true), "the default (prefer) encrypts when the server offers TLS");
    assert_eq!(encrypted(&url("127.0.0.1", "sslmode=require")).await, Ok(true));
    assert_eq!(encrypted(&url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={root}"))).await, Ok(true));
    assert_eq!(encrypted(&url("localhost", &format!("sslmode=verify-full&sslrootcert={root}"))).await, Ok(true));
    let wrong_name = encrypted(&url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={root}"))).await;
    assert!(wrong_name.is_err(), "verify-full accepted a certificate for another name: {wrong_name:?}");
    let wrong_ca = encrypted(&url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={}", other.pem_path.display()))).await;
    assert!(wrong_ca.is_err(), "verify-ca accepted a certificate from another CA: {wrong_ca:?}");
    // require + a root: libpq checks the chain then too.
    let require_wrong_ca = encrypted(&url("127.0.0.1", &format!("sslmode=require&sslrootcert={}", other.pem_path.display()))).await;
    assert!(require_wrong_ca.is_err(), "{require_wrong_ca:?}");

    // A server without TLS: prefer falls back, require refuses.
    let plain = PrivatePostgres::start().expect("plain postgres");
    let plain_url = |query: &str| format!("postgres://postgres@127.0.0.1:{}/postgres?{query}", plain.port());
    assert_eq!(encrypted(&plain_url("sslmode=prefer")).await, Ok(false));
    assert!(encrypted(&plain_url("sslmode=require")).await.is_err(), "require connected without TLS");
    drop(plain);

    // A whole node on verify-full: accounts and messages work through the encrypted store.
    let database = pg.create_database("sb").await.expect("database");
    let store_url = format!("{}?sslmode=verify-full&sslrootcert={root}", database.replace("127.0.0.1", "localhost"));
    let server = TestServer::start_on(&store_url, &[]);
    let api = server.api();
    let (alice, bob) = (common::user(&api).await, common::user(&api).await);
    let mut a = common::online(&server, common::Kind::Tcp, &alice).await;
    let mut b = common::online(&server, common::Kind::Tcp, &bob).await;
    let direct = a.open_direct(bob.user_id).await.expect("direct");
    assert_eq!(a.send_and_ack(direct, "pg-tls", b"stored over tls".to_vec()).await.expect("ack").seq, 1);
    assert_eq!(b.next_message(WAIT).await.expect("delivered").payload.as_ref(), b"stored over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let (cert, key) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
    leaf.install(&cert, &key);
    let redis = PrivateRedis::start_with_tls(Some((cert, key))).expect("redis with tls");
    assert!(redis.url().starts_with("rediss://"));

    let client = switchboard::cluster::presence::client(&redis.url(), Some(&ca.pem_path)).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("tls connection to redis");
    let _: () = redis::AsyncCommands::set(&mut conn, "k", "over tls").await.expect("set");
    let got: String = redis::AsyncCommands::get(&mut conn, "k").await.expect("get");
    assert_eq!(got, "over tls");
    let stranger = switchboard::cluster::presence::client(&redis.url(), Some(&other.pem_path)).expect("client");
    assert!(stranger.get_multiplexed_async_connection().await.is_err(), "a certificate from an unknown CA was accepted");
    assert!(switchboard::cluster::presence::client(&redis.url().replace("rediss", "redis"), Some(&ca.pem_path)).is_err(), "a CA with redis://");

    // A node (a one-node cluster) uses it for its directory and presence.
    let pg = PrivatePostgres::start().expect("postgres");
    let store = pg.create_database("sb").await.expect("database");
    let listen = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port());
    let ca_arg = ca.pem_path.display().to_string();
    let redis_url = redis.url();
    let node = TestServer::start_on(
        &store,
        &["--node-name", "solo", "--cluster-listen", &listen, "--cookie", "c", "--redis", &redis_url, "--redis-tls-ca", &ca_arg],
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let report: serde_json::Value = reqwest::Client::new()
            .get(format!("http://{}/admin/cluster", node.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin")
            .json()
            .await
            .expect("json");
        if report["redis"]["ok"] == serde_json::Value::Bool(true) {
            break;
        }
        assert!(Instant::now() < deadline, "the node never reached redis over tls: {report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
