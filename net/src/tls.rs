//! TLS configuration from PEM files: a server's certificate chain and key (and, for mutual TLS,
//! the CA its clients' certificates must chain to), and the roots a client trusts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

/// Makes ring the process's TLS provider; every binary and test calls it before any TLS.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `[tls]` of a listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// PEM: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: the private key.
    pub key: PathBuf,
    /// PEM: if set, clients must present a certificate that chains to one of these.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// What the listener speaks over TLS (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    Grpc,
}

impl ServerTls {
    pub fn load(&self, alpn: Alpn) -> anyhow::Result<Arc<ServerConfig>> {
        install_crypto();
        let certs = certs(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("read the private key in {}", self.key.display()))?;
        let builder = ServerConfig::builder();
        let builder = match &self.client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder(Arc::new(roots(ca)?))
                    .build()
                    .context("client CA")?,
            ),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .with_context(|| format!("certificate {} with its key", self.cert.display()))?;
        config.alpn_protocols = match alpn {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Grpc => vec![b"h2".to_vec()],
        };
        Ok(Arc::new(config))
    }
}

/// Every certificate in a PEM file; at least one.
pub fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parse certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// A root store of the CA certificates in a PEM file.
pub fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store
            .add(cert)
            .with_context(|| format!("a CA certificate in {}", path.display()))?;
    }
    Ok(store)
}
