//! A throwaway CA for a test, and a certificate for this machine (`127.0.0.1`, `localhost`)
//! signed by it: what the TLS scenarios give the control plane, the nodes and the S3 server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

pub struct TestCa {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("hemvist-ca-")
            .tempdir()
            .expect("tempdir");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let file = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = file("ca.pem", ca_cert.pem());
        let cert = file("cert.pem", cert.pem());
        let key = file("key.pem", key.serialize_pem());
        super::trust(&ca);
        TestCa {
            _dir: dir,
            ca,
            cert,
            key,
        }
    }

    /// The `[tls]` table (or its body) naming this certificate and key.
    pub fn tls_toml(&self) -> String {
        format!(
            "cert = {:?}\nkey = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca
    }

    /// A rustls server configuration for this certificate (HTTP/1.1).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        hemvist_net::tls::ServerTls {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: None,
        }
        .load(hemvist_net::tls::Alpn::Http1)
        .expect("server TLS config")
    }
}
