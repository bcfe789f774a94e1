//! PEM files for TLS, read one way everywhere: the client listeners' certificate and key
//! (`transport::tls`), node-to-node TLS (`cluster::tls`) and PostgreSQL's `sslrootcert`
//! (`store::pg_tls`). Each boundary wraps [`PemError`] in its own error type.

use std::path::Path;

use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A PEM file that is missing, unreadable, malformed or holds nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PemError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn error(path: &Path, e: impl std::fmt::Display) -> PemError {
    PemError { path: path.display().to_string(), message: e.to_string() }
}

/// Every certificate of the file (a chain, leaf first); at least one.
pub fn chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(path).map_err(|e| error(path, e))?.collect::<Result<_, _>>().map_err(|e| error(path, e))?;
    if certs.is_empty() {
        return Err(error(path, "no certificate"));
    }
    Ok(certs)
}

/// The file's private key (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| error(path, e))
}

/// The file's certificates as trust roots; at least one.
pub fn roots(path: &Path) -> Result<RootCertStore, PemError> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| error(path, e))? {
        store.add(cert.map_err(|e| error(path, e))?).map_err(|e| error(path, e))?;
    }
    if store.is_empty() {
        return Err(error(path, "no certificate"));
    }
    Ok(store)
}
