//! `hemvist dev --tls`: a throwaway CA and one certificate for this machine (`127.0.0.1`,
//! `localhost`), made once and kept in the data folder, so every link of the demo runs over
//! real TLS. Keys are written readable by their owner only.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Where the demo's CA and its certificate live.
pub struct DevTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The demo's CA and certificate under `dir/tls/`, made if missing.
pub fn ensure(dir: &Path) -> anyhow::Result<DevTls> {
    let tls = dir.join("tls");
    let files = DevTls {
        ca: tls.join("ca.pem"),
        cert: tls.join("cert.pem"),
        key: tls.join("key.pem"),
    };
    if files.ca.is_file() && files.cert.is_file() && files.key.is_file() {
        return Ok(files);
    }
    std::fs::create_dir_all(&tls).with_context(|| format!("create {}", tls.display()))?;
    let (ca_pem, cert_pem, key_pem) = generate(&["127.0.0.1", "localhost"])?;
    std::fs::write(&files.ca, ca_pem)?;
    std::fs::write(&files.cert, cert_pem)?;
    write_private(&files.key, &key_pem)?;
    Ok(files)
}

/// A new CA, and a certificate for `names` signed by it (good for servers and, for mutual
/// TLS, clients): the CA's PEM, the certificate's PEM and its key's PEM. The CA's key is not
/// kept: nothing more can be signed with it.
pub fn generate(names: &[&str]) -> anyhow::Result<(String, String, String)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "hemvist dev CA (throwaway)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    leaf.distinguished_name.push(DnType::CommonName, names[0]);
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
