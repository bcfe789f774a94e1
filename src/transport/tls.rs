//! TLS for the client listeners (raw TCP and HTTP/WebSocket), with the certificate
//! reloaded while the server runs.
//!
//! One [`ClientTls`] holds the certificate chain and key read from two PEM files. Both
//! listeners' rustls configurations share its resolver, so a reload (SIGHUP, or a change
//! of either file's modification time seen by the poller) is picked up by the next
//! handshake on either listener; connections already open keep the certificate they
//! were established with. A reload that fails (a half-written file, a key that does not
//! match the certificate) keeps the previous certificate and is logged: a bad deploy
//! must not take the listeners down.
//!
//! The crypto provider is fixed (aws-lc-rs, as for node-to-node TLS), never rustls's
//! process-wide default, which another crate could make ambiguous.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

/// The certificate and key files of the client listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files' modification times are checked (SIGHUP reloads at once).
    pub poll: Duration,
}

/// Why the certificate could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum ListenerTlsError {
    /// A PEM file is missing, unreadable or malformed.
    #[error("{path}: {message}")]
    Pem {
        /// Which file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the key or the configuration (e.g. the key does not match the
    /// certificate).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

impl From<crate::pem::PemError> for ListenerTlsError {
    fn from(e: crate::pem::PemError) -> Self {
        ListenerTlsError::Pem { path: e.path, message: e.message }
    }
}

/// The one crypto provider of the client listeners.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads the chain and key and checks that they belong together.
fn load_certified_key(files: &ClientTlsFiles, provider: &rustls::crypto::CryptoProvider) -> Result<CertifiedKey, ListenerTlsError> {
    let certs = crate::pem::chain(&files.cert)?;
    let key = crate::pem::key(&files.key)?;
    Ok(CertifiedKey::from_der(certs, key, provider)?)
}

/// Modification times of the two files (None when one cannot be read).
fn stamps(files: &ClientTlsFiles) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(&files.cert)?, modified(&files.key)?))
}

/// The resolver every handshake asks: always the current certificate.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Sessions kept for resumption, forgotten at every certificate change: a client that
/// resumes skips the certificate, so after a rotation (perhaps of a compromised key)
/// every client must do a full handshake and see the new one.
#[derive(Debug)]
struct Sessions(RwLock<Arc<rustls::server::ServerSessionMemoryCache>>);

/// Sessions remembered per listener configuration.
const SESSIONS: usize = 4096;

impl Sessions {
    fn new() -> Self {
        Self(RwLock::new(rustls::server::ServerSessionMemoryCache::new(SESSIONS)))
    }

    fn cache(&self) -> Arc<rustls::server::ServerSessionMemoryCache> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn forget_all(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = rustls::server::ServerSessionMemoryCache::new(SESSIONS);
    }
}

impl rustls::server::StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.cache().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The client listeners' TLS: a certificate that can be swapped while serving.
pub struct ClientTls {
    files: ClientTlsFiles,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Arc<Current>,
    sessions: Arc<Sessions>,
    loaded: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("files", &self.files).finish()
    }
}

impl ClientTls {
    /// Loads the certificate and key; fails if either is unusable.
    pub fn load(files: ClientTlsFiles) -> Result<Self, ListenerTlsError> {
        let provider = provider();
        let stamp = stamps(&files);
        let key = load_certified_key(&files, &provider)?;
        Ok(Self {
            files,
            provider,
            current: Arc::new(Current(RwLock::new(Arc::new(key)))),
            sessions: Arc::new(Sessions::new()),
            loaded: std::sync::Mutex::new(stamp),
        })
    }

    /// Reads the files again and, if they are valid, serves them from the next handshake
    /// on. On error the previous certificate stays in force.
    pub fn reload(&self) -> Result<(), ListenerTlsError> {
        let stamp = stamps(&self.files);
        let key = load_certified_key(&self.files, &self.provider)?;
        *self.current.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        self.sessions.forget_all();
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        Ok(())
    }

    /// Reloads if either file's modification time differs from the last load. Returns
    /// whether a reload was attempted.
    pub fn reload_if_changed(&self) -> Result<bool, ListenerTlsError> {
        let now = stamps(&self.files);
        if now.is_none() || now == *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// The leaf certificate currently served (DER).
    pub fn current_leaf(&self) -> CertificateDer<'static> {
        self.current.0.read().unwrap_or_else(|p| p.into_inner()).cert[0].clone()
    }

    /// A rustls server configuration resolving to the current certificate, announcing
    /// `alpn` (e.g. `http/1.1` for the HTTP listener, nothing for raw TCP).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, ListenerTlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.current.clone());
        config.session_storage = self.sessions.clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// An acceptor for the raw TCP listener.
    pub fn acceptor(&self) -> Result<TlsAcceptor, ListenerTlsError> {
        Ok(TlsAcceptor::from(Arc::new(self.server_config(&[])?)))
    }

    /// Reloads on SIGHUP and whenever the files change (checked every `files.poll`), until
    /// `stop`. Failures are logged and counted (`switchboard_tls_reloads_total{result}`).
    pub fn watch(self: Arc<Self>, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGHUP handler; certificate reloads only on file changes");
                    None
                }
            };
            let mut tick = tokio::time::interval(self.files.poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let forced = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = async { match hangup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
                    _ = tick.tick() => false,
                };
                let outcome = if forced { self.reload().map(|()| true) } else { self.reload_if_changed() };
                match outcome {
                    Ok(false) => {}
                    Ok(true) => {
                        metrics::counter!("switchboard_tls_reloads_total", "result" => "ok").increment(1);
                        tracing::info!(cert = %self.files.cert.display(), forced, "client tls certificate reloaded");
                    }
                    Err(e) => {
                        metrics::counter!("switchboard_tls_reloads_total", "result" => "error").increment(1);
                        tracing::error!(error = %e, "client tls certificate not reloaded; the previous one stays in force");
                        // Not retried until the files change again (or the next SIGHUP).
                        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = stamps(&self.files);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params").self_signed(&key).expect("cert");
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).expect("cert file");
        std::fs::write(&k, key.serialize_pem()).expect("key file");
        (c, k, cert.der().to_vec())
    }

    #[test]
    fn a_bad_reload_keeps_the_previous_certificate_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key, first) = write_pair(dir.path(), "a");
        let files = ClientTlsFiles { cert: cert.clone(), key: key.clone(), poll: Duration::from_secs(1) };
        let tls = ClientTls::load(files).expect("load");
        assert_eq!(tls.current_leaf().as_ref(), first.as_slice());

        // Half a deploy: the certificate is garbage.
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("garbage");
        assert!(tls.reload().is_err());
        assert_eq!(tls.current_leaf().as_ref(), first.as_slice(), "the old certificate stays");

        // A key that does not belong to the certificate is refused too.
        let (_, other_key, _) = write_pair(dir.path(), "b");
        let (c2, _, _) = write_pair(dir.path(), "c");
        std::fs::copy(&c2, &cert).expect("copy cert");
        std::fs::copy(&other_key, &key).expect("copy key");
        assert!(matches!(tls.reload(), Err(ListenerTlsError::Rustls(_))), "mismatched key refused");
        assert_eq!(tls.current_leaf().as_ref(), first.as_slice());

        // A proper pair replaces it.
        let (c3, k3, third) = write_pair(dir.path(), "d");
        std::fs::copy(&c3, &cert).expect("copy cert");
        std::fs::copy(&k3, &key).expect("copy key");
        tls.reload().expect("reload");
        assert_eq!(tls.current_leaf().as_ref(), third.as_slice());
    }

    #[test]
    fn a_missing_file_is_an_error_at_start() {
        let files = ClientTlsFiles { cert: "/nonexistent.crt".into(), key: "/nonexistent.key".into(), poll: Duration::from_secs(1) };
        let e = ClientTls::load(files).expect_err("missing files");
        assert!(e.to_string().contains("/nonexistent.crt"), "{e}");
    }
}
