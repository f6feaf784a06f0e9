//! moto's S3 server (`scripts/setup` installs it into `.deps/moto`): unlike `s3s-fs`, it
//! enforces S3 Object Lock, so a test can see a locked object's deletion refused. It listens on
//! a loopback port, is killed when dropped, and stops by itself after 15 minutes regardless.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// moto does not check signatures, only that a request names a principal.
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=owner/20260101/us-east-1/s3/aws4_request, \
                    SignedHeaders=host, Signature=00";

pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let deps = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".deps/moto");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("timeout")
            .args(["900", "python3", "-m", "moto.server", "-H", "127.0.0.1"])
            .args(["-p", &port.to_string()])
            .env("PYTHONPATH", &deps)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = super::http().build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while http.get(&endpoint).send().is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on {endpoint} (is it installed? scripts/setup puts it in {})",
                deps.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { endpoint, child }
    }

    /// A bucket with versioning and Object Lock enabled (moto does not check signatures).
    pub fn create_locked_bucket(&self, bucket: &str) {
        let r = super::http()
            .build()
            .unwrap()
            .put(format!("{}/{bucket}", self.endpoint))
            .header("x-amz-bucket-object-lock-enabled", "true")
            .send()
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// Every (key, version id) under `prefix`, as ListObjectVersions reports them (delete
    /// markers left out).
    pub fn versions(&self, bucket: &str, prefix: &str) -> Vec<(String, String)> {
        let xml = super::http()
            .build()
            .unwrap()
            .get(format!(
                "{}/{bucket}?versions&prefix={prefix}",
                self.endpoint
            ))
            .send()
            .and_then(|r| r.text())
            .expect("list versions");
        let mut out = Vec::new();
        for block in xml.split("<Version>").skip(1) {
            let field = |name: &str| {
                let open = format!("<{name}>");
                block
                    .split_once(&open)
                    .and_then(|(_, rest)| rest.split_once(&format!("</{name}>")))
                    .map(|(v, _)| v.to_string())
                    .unwrap_or_default()
            };
            out.push((field("Key"), field("VersionId")));
        }
        out
    }

    /// An object with no lock of its own; its version id.
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) -> String {
        let r = super::http()
            .build()
            .unwrap()
            .put(format!("{}/{bucket}/{key}", self.endpoint))
            .header("authorization", AUTH)
            .body(body.to_vec())
            .send()
            .expect("put");
        assert!(r.status().is_success(), "put: {}", r.status());
        r.headers()["x-amz-version-id"]
            .to_str()
            .unwrap()
            .to_string()
    }

    /// DELETE of one version (or, with `None`, of the key: a delete marker), by an
    /// authenticated principal (moto refuses anonymous deletes whatever the lock); the status.
    pub fn delete(&self, bucket: &str, key: &str, version: Option<&str>) -> u16 {
        let mut url = format!("{}/{bucket}/{key}", self.endpoint);
        if let Some(v) = version {
            url.push_str(&format!("?versionId={v}"));
        }
        super::http()
            .build()
            .unwrap()
            .delete(url)
            .header("authorization", AUTH)
            .send()
            .expect("delete")
            .status()
            .as_u16()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // SIGTERM to `timeout`, which passes it on to moto (a SIGKILL would orphan moto).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
