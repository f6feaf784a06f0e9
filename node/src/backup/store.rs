//! The object store of a node's region, from its URL: `s3://bucket[/prefix]` (any S3-compatible
//! endpoint, path-style, static credentials) or `file:///folder` (what `hemvist dev` uses). Both
//! go through `object_store`, so dev and production share every line above this module.
//!
//! S3 requests are signed and sent with our own two small plug-ins (HMAC-SHA256 from `hmac` +
//! `sha2`, HTTP through the `reqwest` client already in the tree, over rustls with ring) instead
//! of `object_store`'s own stack, which would add a C build (aws-lc) to every fresh CI machine.
//! Endpoints may be `https://` (the system's roots, or `ca_file`) or `http://`.

use std::sync::Arc;

use anyhow::{bail, Context};
use http_body_util::BodyExt;
use object_store::aws::AmazonS3Builder;
use object_store::client::{
    ClientOptions, CryptoProvider, DigestAlgorithm, DigestContext, HmacContext, HttpClient,
    HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpResponseBody,
    HttpService, Signer, SigningAlgorithm,
};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Where and how a node backs up; the `[backup]` section of its config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// `s3://bucket[/prefix]` or `file:///folder`.
    pub url: String,
    /// The S3 endpoint, `https://host[:port]` or `http://host:port` (path-style requests).
    /// Required for `s3://`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// PEM: CA(s) the endpoint's certificate may chain to, besides the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default = "default_region")]
    pub s3_region: String,
    /// Prefer the environment: `HEMVIST_S3_ACCESS_KEY_ID`, `HEMVIST_S3_SECRET_ACCESS_KEY`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Active tenants are shipped at least this often.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// A new snapshot is taken once the WAL shipped since the last one is this large.
    #[serde(default = "default_snapshot_after_bytes")]
    pub snapshot_after_bytes: u64,
    /// Restore points are kept this long (default 7 days); older objects are removed when the
    /// tenant next takes a snapshot. A tenant is snapshotted again at least every half of it
    /// while it is written to; an idle tenant keeps what it has and costs nothing.
    #[serde(default = "default_retention_secs")]
    pub retention_secs: u64,
    /// Tenants shipped at the same time.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A tenant's packed segments are listed under its own prefix this long after shipping, at
    /// most (restores scan the packs of the last 90 s for what no index lists yet, so at most
    /// 30 s).
    #[serde(default = "default_index_every_ms")]
    pub index_every_ms: u64,
    /// One upload attempt that has no answer after this long (plus a second per MiB it
    /// carries) counts as failed, and is retried: a store that hangs shows in
    /// `hemvist_backup_put_failures_total` as one that refuses does.
    #[serde(default = "default_put_timeout_ms")]
    pub put_timeout_ms: u64,
}

fn default_put_timeout_ms() -> u64 {
    10_000
}

fn default_index_every_ms() -> u64 {
    30_000
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_interval_ms() -> u64 {
    1_000
}
fn default_snapshot_after_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_retention_secs() -> u64 {
    7 * 24 * 3600
}
fn default_concurrency() -> usize {
    16
}

impl BackupConfig {
    pub fn local(folder: &std::path::Path) -> Self {
        Self {
            url: format!("file://{}", folder.display()),
            endpoint: None,
            ca_file: None,
            s3_region: default_region(),
            access_key_id: None,
            secret_access_key: None,
            interval_ms: default_interval_ms(),
            snapshot_after_bytes: default_snapshot_after_bytes(),
            retention_secs: default_retention_secs(),
            concurrency: default_concurrency(),
            index_every_ms: default_index_every_ms(),
            put_timeout_ms: default_put_timeout_ms(),
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.interval_ms == 0 || self.concurrency == 0 {
            bail!("backup.interval_ms and backup.concurrency must be at least 1");
        }
        if !(100..=30_000).contains(&self.index_every_ms) {
            bail!("backup.index_every_ms must be between 100 and 30000");
        }
        if self.put_timeout_ms < 100 {
            bail!("backup.put_timeout_ms must be at least 100");
        }
        if self.url.starts_with("s3://") {
            match &self.endpoint {
                Some(e) if e.starts_with("https://") || e.starts_with("http://") => {}
                Some(e) => bail!("backup.endpoint {e}: must be https:// or http://"),
                None => bail!("backup.endpoint is required for an s3:// url"),
            }
        } else if !self.url.starts_with("file://") {
            bail!("backup.url must be s3://bucket[/prefix] or file:///folder");
        }
        Ok(())
    }

    /// Opens the store; everything the replicator writes goes under the URL's prefix.
    pub fn open(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        self.validate()?;
        if let Some(folder) = self.url.strip_prefix("file://") {
            std::fs::create_dir_all(folder).with_context(|| format!("create {folder}"))?;
            return Ok(Arc::new(LocalFileSystem::new_with_prefix(folder)?));
        }
        let rest = self.url.trim_start_matches("s3://");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("backup.url {}: no bucket", self.url);
        }
        let key = self
            .access_key_id
            .clone()
            .or_else(|| std::env::var("HEMVIST_S3_ACCESS_KEY_ID").ok())
            .context("no S3 access key: set HEMVIST_S3_ACCESS_KEY_ID")?;
        let secret = self
            .secret_access_key
            .clone()
            .or_else(|| std::env::var("HEMVIST_S3_SECRET_ACCESS_KEY").ok())
            .context("no S3 secret key: set HEMVIST_S3_SECRET_ACCESS_KEY")?;
        let s3 = AmazonS3Builder::new()
            .with_endpoint(self.endpoint.clone().unwrap_or_default())
            .with_bucket_name(bucket)
            .with_region(&self.s3_region)
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .with_allow_http(
                self.endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            )
            .with_virtual_hosted_style_request(false)
            .with_http_connector(Http::new(self.ca_file.as_deref())?)
            .with_crypto_provider(Arc::new(Crypto))
            // A few quick retries only: the replicator tries again every interval by itself,
            // and an upload left in a long client backoff after an outage (up to 15 s by
            // default) would hold up whatever waits for it (a sync write, a move's fence).
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(100),
                    max_backoff: std::time::Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: 4,
                retry_timeout: std::time::Duration::from_secs(15),
            })
            .build()?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            Ok(Arc::new(s3))
        } else {
            Ok(Arc::new(PrefixStore::new(s3, ObjectPath::from(prefix))))
        }
    }
}

/// Sends `object_store`'s requests through a `reqwest` client (rustls for https).
#[derive(Debug, Clone)]
struct Http(reqwest::Client);

impl Http {
    fn new(ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        hemvist_net::tls::install_crypto();
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(60));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .with_context(|| format!("read backup.ca_file {}", ca.display()))?;
            builder = builder.tls_certs_merge(
                reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("parse backup.ca_file {}", ca.display()))?,
            );
        }
        Ok(Self(builder.build()?))
    }
}

#[async_trait::async_trait]
impl HttpService for Http {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let (parts, body) = req.into_parts();
        let url = reqwest::Url::parse(&parts.uri.to_string())
            .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        let mut request = reqwest::Request::new(parts.method, url);
        *request.headers_mut() = parts.headers;
        *request.body_mut() = Some(reqwest::Body::wrap(body));
        let resp = self.0.execute(request).await.map_err(|e| {
            let kind = if e.is_connect() {
                HttpErrorKind::Connect
            } else if e.is_timeout() {
                HttpErrorKind::Timeout
            } else {
                HttpErrorKind::Request
            };
            HttpError::new(kind, e)
        })?;
        let (parts, body) = http::Response::<reqwest::Body>::from(resp).into_parts();
        Ok(HttpResponse::from_parts(
            parts,
            HttpResponseBody::new(body.map_err(|e| HttpError::new(HttpErrorKind::Decode, e))),
        ))
    }
}

impl HttpConnector for Http {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.clone()))
    }
}

/// SHA-256 and HMAC-SHA256 for request signing (SigV4).
#[derive(Debug)]
struct Crypto;

struct Sha(sha2::Sha256, [u8; 32]);

impl DigestContext for Sha {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(&mut self) -> object_store::Result<&[u8]> {
        self.1 = std::mem::take(&mut self.0).finalize().into();
        Ok(&self.1)
    }
}

struct Mac(hmac::Hmac<sha2::Sha256>, [u8; 32]);

impl HmacContext for Mac {
    fn update(&mut self, data: &[u8]) {
        hmac::Mac::update(&mut self.0, data);
    }
    fn finish(&mut self) -> object_store::Result<&[u8]> {
        let mac = self.0.clone();
        self.1 = hmac::Mac::finalize(mac).into_bytes().into();
        Ok(&self.1)
    }
}

fn unsupported(what: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: what.to_string().into(),
    }
}

impl CryptoProvider for Crypto {
    fn digest(&self, algorithm: DigestAlgorithm) -> object_store::Result<Box<dyn DigestContext>> {
        match algorithm {
            DigestAlgorithm::Sha256 => Ok(Box::new(Sha(sha2::Sha256::new(), [0; 32]))),
            _ => Err(unsupported("digest algorithm")),
        }
    }

    fn hmac(
        &self,
        algorithm: DigestAlgorithm,
        secret: &[u8],
    ) -> object_store::Result<Box<dyn HmacContext>> {
        match algorithm {
            DigestAlgorithm::Sha256 => {
                let mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(secret)
                    .map_err(|_| unsupported("HMAC key"))?;
                Ok(Box::new(Mac(mac, [0; 32])))
            }
            _ => Err(unsupported("HMAC algorithm")),
        }
    }

    fn sign(&self, _: SigningAlgorithm, _: &[u8]) -> object_store::Result<Box<dyn Signer>> {
        Err(unsupported(
            "RSA signing (only Google Cloud Storage needs it)",
        ))
    }
}
