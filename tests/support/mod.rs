#![allow(dead_code)]
pub mod cluster;
pub mod mmdb;
pub mod s3;
pub mod session;
pub mod story;

/// A blocking HTTP client builder, after installing the process's TLS provider (ring), which
/// every reqwest client of this workspace needs.
pub fn http() -> reqwest::blocking::ClientBuilder {
    hemvist_net::tls::install_crypto();
    reqwest::blocking::Client::builder()
}
