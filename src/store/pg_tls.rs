//! TLS to PostgreSQL, with libpq's `sslmode` and `sslrootcert` URL parameters honoured.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, and leaves certificate
//! checks to the connector. This module takes the two parameters out of the URL, gives
//! the driver the mode it understands, and builds a rustls connector that checks what
//! libpq checks (PostgreSQL documentation, "SSL Support", table "SSL Mode Descriptions"):
//!
//! | `sslmode` | encrypted | certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default) | if the server offers TLS | only if `sslrootcert` is given: chain, not host name |
//! | `require` | always (refuses a server without TLS) | only if `sslrootcert` is given: chain, not host name |
//! | `verify-ca` | always | chain against `sslrootcert` |
//! | `verify-full` | always | chain against `sslrootcert` and the host name (or IP) of the URL |
//!
//! `allow` ("try without TLS first") is treated as `prefer`, which is the stricter of the
//! two. `sslrootcert` names a PEM file; libpq's fallback to `~/.postgresql/root.crt` is
//! not implemented, so `verify-ca` and `verify-full` require it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it (libpq's default; `allow` maps here).
    #[default]
    Prefer,
    /// TLS or nothing.
    Require,
    /// TLS, server certificate chained to `sslrootcert`.
    VerifyCa,
    /// TLS, chained to `sslrootcert` and valid for the host.
    VerifyFull,
}

/// The TLS settings of one PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgTls {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`: PEM file of the CA(s) that sign the server's certificate.
    pub root_cert: Option<PathBuf>,
}

/// Why TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    /// An `sslmode` libpq does not know.
    #[error("sslmode {0:?}: expected disable, allow, prefer, require, verify-ca or verify-full")]
    Mode(String),
    /// `verify-ca` or `verify-full` without a root certificate.
    #[error("sslmode {0} needs sslrootcert=<PEM file of the server's CA>")]
    NoRoot(&'static str),
    /// The root certificate file is unusable.
    #[error("sslrootcert {path}: {message}")]
    Root {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Splits a `postgres://` URL into the URL for tokio-postgres (our two parameters
/// replaced by the driver's `sslmode`) and the TLS settings. Other parameters are kept.
pub fn split_url(url: &str) -> Result<(String, PgTls), PgTlsError> {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let mut tls = PgTls::default();
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", mode)) => {
                tls.mode = match mode {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => return Err(PgTlsError::Mode(other.to_owned())),
                }
            }
            Some(("sslrootcert", path)) => tls.root_cert = Some(PathBuf::from(percent_decode(path))),
            _ => kept.push(pair),
        }
    }
    match tls.mode {
        SslMode::VerifyCa if tls.root_cert.is_none() => return Err(PgTlsError::NoRoot("verify-ca")),
        SslMode::VerifyFull if tls.root_cert.is_none() => return Err(PgTlsError::NoRoot("verify-full")),
        _ => {}
    }
    kept.push(match driver_mode(&tls) {
        DriverMode::Disable => "sslmode=disable",
        DriverMode::Prefer => "sslmode=prefer",
        _ => "sslmode=require",
    });
    Ok((format!("{base}?{}", kept.join("&")), tls))
}

/// `%2F` and friends in a path given as a URL parameter.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The driver's own mode for these settings.
pub fn driver_mode(tls: &PgTls) -> DriverMode {
    match tls.mode {
        SslMode::Disable => DriverMode::Disable,
        SslMode::Prefer => DriverMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverMode::Require,
    }
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, PgTlsError> {
    let store = crate::pem::roots(path).map_err(|e| PgTlsError::Root { path: e.path, message: e.message })?;
    Ok(Arc::new(store))
}

/// The rustls connector that checks what `tls.mode` asks for.
pub fn connector(tls: &PgTls) -> Result<MakeRustlsConnect, PgTlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.mode, &tls.root_cert) {
        (SslMode::VerifyFull, Some(path)) => WebPkiServerVerifier::builder_with_provider(roots(path)?, provider.clone())
            .build()
            .map_err(|e| PgTlsError::Root { path: path.display().to_string(), message: e.to_string() })?,
        (SslMode::VerifyCa | SslMode::Require | SslMode::Prefer, Some(path)) => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots(path)?, provider.clone())
                .build()
                .map_err(|e| PgTlsError::Root { path: path.display().to_string(), message: e.to_string() })?;
            Arc::new(ChainOnly(inner))
        }
        (SslMode::VerifyCa, None) => return Err(PgTlsError::NoRoot("verify-ca")),
        (SslMode::VerifyFull, None) => return Err(PgTlsError::NoRoot("verify-full")),
        // Encrypted, not authenticated: what libpq does for prefer/require without a root.
        (SslMode::Prefer | SslMode::Require | SslMode::Disable, _) => Arc::new(EncryptOnly(provider)),
    };
    let config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `verify-ca`: the chain must lead to a root; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root: any certificate; the handshake's signatures are
/// still checked (so the session key belongs to whoever holds that certificate's key).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parameters_leave_the_url_and_the_driver_gets_a_mode_it_knows() {
        let (url, tls) = split_url("postgres://u@h:5432/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(url, "postgres://u@h:5432/db?application_name=x&sslmode=require");
        assert_eq!(tls, PgTls { mode: SslMode::VerifyFull, root_cert: Some("/etc/ca.pem".into()) });
        url.parse::<tokio_postgres::Config>().expect("the driver accepts it");

        let (url, tls) = split_url("postgres://u@h/db").unwrap();
        assert_eq!((url.as_str(), tls.mode), ("postgres://u@h/db?sslmode=prefer", SslMode::Prefer));
        assert_eq!(split_url("postgres://u@h/db?sslmode=allow").unwrap().1.mode, SslMode::Prefer);
        assert_eq!(split_url("postgres://u@h/db?sslmode=disable").unwrap().0, "postgres://u@h/db?sslmode=disable");
        assert!(matches!(split_url("postgres://u@h/db?sslmode=verify-ca"), Err(PgTlsError::NoRoot("verify-ca"))));
        assert!(matches!(split_url("postgres://u@h/db?sslmode=sometimes"), Err(PgTlsError::Mode(_))));
    }

    #[test]
    fn a_missing_root_file_is_reported() {
        let tls = PgTls { mode: SslMode::VerifyCa, root_cert: Some("/nonexistent/ca.pem".into()) };
        let e = connector(&tls).err().expect("refused");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
