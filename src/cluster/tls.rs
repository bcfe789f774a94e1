//! Node-to-node TLS (rustls): mutual authentication with one CA.
//!
//! Every node presents its own certificate, signed by the cluster's CA and valid for the
//! address peers reach it at (`cluster_advertise`: a DNS name or an IP SAN); every node
//! requires the same of its peers. With TLS on, a stranger needs a certificate from the
//! CA, not only the cookie, and the traffic (message payloads, directory) is encrypted.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::ClusterTlsFiles;

/// The TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or malformed.
    #[error("{path}: {message}")]
    Pem {
        /// Which file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA cannot verify clients.
    #[error("tls client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A peer address has no usable host name.
    #[error("invalid peer name {0:?} for tls")]
    ServerName(String),
}

/// Acceptor (incoming) and connector (outgoing) of one node.
pub struct ClusterTls {
    /// For connections peers open to us.
    pub acceptor: TlsAcceptor,
    /// For connections we open to peers.
    pub connector: TlsConnector,
}

impl From<crate::pem::PemError> for TlsError {
    fn from(e: crate::pem::PemError) -> Self {
        TlsError::Pem { path: e.path, message: e.message }
    }
}

impl ClusterTls {
    /// Loads the certificate, key and CA.
    pub fn load(files: &ClusterTlsFiles) -> Result<Self, TlsError> {
        let certs = crate::pem::chain(&files.cert)?;
        let key = crate::pem::key(&files.key)?;
        let roots = Arc::new(crate::pem::roots(&files.ca)?);
        // One explicit provider, so that another crate enabling a second one cannot make
        // rustls's process-wide default ambiguous.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)?;
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(server)), connector: TlsConnector::from(Arc::new(client)) })
    }
}

/// The name a peer's certificate must be valid for: the host part of its address.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(addr.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_come_from_the_host_part() {
        assert!(matches!(server_name("127.0.0.1:4369"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[::1]:4369"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("node-0.peers.svc:4369"), Ok(ServerName::DnsName(_))));
        assert!(server_name("bad name:1").is_err());
    }
}
