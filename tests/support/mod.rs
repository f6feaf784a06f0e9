#![allow(dead_code)]
pub mod browser;
pub mod cluster;
pub mod dev;
pub mod disk;
pub mod idempotent;
pub mod mmdb;
pub mod moto;
pub mod restores;
pub mod s3;
pub mod session;
pub mod story;
pub mod tls;

/// A blocking HTTP client builder, after installing the process's TLS provider (ring), which
/// every reqwest client of this workspace needs.
pub fn http() -> reqwest::blocking::ClientBuilder {
    hemvist_net::tls::install_crypto();
    let cas: Vec<reqwest::Certificate> = TRUSTED
        .lock()
        .unwrap()
        .iter()
        .flat_map(|pem| reqwest::Certificate::from_pem_bundle(pem).unwrap())
        .collect();
    reqwest::blocking::Client::builder().tls_certs_merge(cas)
}

/// The test CAs made in this process (PEM): every client the tests build trusts them.
static TRUSTED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

pub fn trust(ca: &std::path::Path) {
    TRUSTED.lock().unwrap().push(std::fs::read(ca).unwrap());
}
