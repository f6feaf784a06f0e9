//! A real S3-compatible server for tests: `s3s-fs` serving a temporary folder over HTTP on a
//! loopback port, behind a fault layer the test controls (errors before or after a request is
//! applied, dropped connections, latency) that also counts requests by method. It stops when
//! dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const ACCESS_KEY: &str = "hemvist-test-access";
pub const SECRET_KEY: &str = "hemvist-test-secret-0123456789";
pub const BUCKET: &str = "backups";

/// What the next object writes (PUTs) suffer. Each counter is used up one request at a time.
#[derive(Default)]
pub struct Faults {
    /// Answer 503 without applying the request.
    pub fail_before: AtomicU32,
    /// Apply the request, then answer 500 (the client cannot know it worked).
    pub fail_after: AtomicU32,
    /// Close the connection without an answer, before applying.
    pub drop: AtomicU32,
    /// Added to every request while non-zero.
    pub delay_ms: AtomicU64,
    /// Every request, read or write, is answered 503 while set (the store is unreachable).
    pub down: std::sync::atomic::AtomicBool,
    /// Every request is held without an answer while set (the store hangs), then answered 503.
    pub hang: std::sync::atomic::AtomicBool,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

pub struct S3 {
    pub endpoint: String,
    /// The CA its certificate chains to, when it serves HTTPS.
    pub ca_file: Option<PathBuf>,
    /// The bucket's folder: objects are files under it, named by their keys.
    pub bucket_dir: PathBuf,
    pub faults: Arc<Faults>,
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
    _root: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3 {
    pub fn start() -> S3 {
        Self::start_with(None)
    }

    /// The same server over HTTPS, with a certificate from `ca`.
    pub fn start_tls(ca: &super::tls::TestCa) -> S3 {
        Self::start_with(Some(ca))
    }

    fn start_with(ca: Option<&super::tls::TestCa>) -> S3 {
        let tls = ca.map(|c| tokio_rustls::TlsAcceptor::from(c.server_config()));
        let root = tempfile::Builder::new()
            .prefix("hemvist-s3-")
            .tempdir()
            .expect("tempdir");
        let bucket_dir = root.path().join(BUCKET);
        std::fs::create_dir_all(&bucket_dir).expect("bucket dir");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{}", listener.local_addr().expect("addr"));
        let faults = Arc::new(Faults::default());
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (f, c) = (faults.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let (socket, _) = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let (service, faults, counts) = (service.clone(), f.clone(), c.clone());
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let handler = hyper::service::service_fn(
                            move |req: http::Request<hyper::body::Incoming>| {
                                let (service, faults, counts) =
                                    (service.clone(), faults.clone(), counts.clone());
                                async move {
                                    let method = req.method().to_string();
                                    *counts.lock().unwrap().entry(method.clone()).or_insert(0) += 1;
                                    let delay = faults.delay_ms.load(Ordering::SeqCst);
                                    if delay > 0 {
                                        tokio::time::sleep(Duration::from_millis(delay)).await;
                                    }
                                    if faults.hang.load(Ordering::SeqCst) {
                                        while faults.hang.load(Ordering::SeqCst) {
                                            tokio::time::sleep(Duration::from_millis(20)).await;
                                        }
                                        return Ok(http::Response::builder()
                                            .status(503)
                                            .body(s3s::Body::from("ServiceUnavailable".to_string()))
                                            .expect("response"));
                                    }
                                    if faults.down.load(Ordering::SeqCst) {
                                        return Ok(http::Response::builder()
                                            .status(503)
                                            .body(s3s::Body::from("ServiceUnavailable".to_string()))
                                            .expect("response"));
                                    }
                                    let write = method == "PUT";
                                    if write && take(&faults.drop) {
                                        return Err(s3s::HttpError::new(
                                            "dropped by the fault layer".into(),
                                        ));
                                    }
                                    if write && take(&faults.fail_before) {
                                        return Ok(http::Response::builder()
                                            .status(503)
                                            .body(s3s::Body::from("SlowDown".to_string()))
                                            .expect("response"));
                                    }
                                    let fail_after = write && take(&faults.fail_after);
                                    let resp = hyper::service::Service::call(&service, req).await?;
                                    if fail_after {
                                        return Ok(http::Response::builder()
                                            .status(500)
                                            .body(s3s::Body::from("InternalError".to_string()))
                                            .expect("response"));
                                    }
                                    Ok(resp)
                                }
                            },
                        );
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            None => {
                                let _ = http
                                    .serve_connection(hyper_util::rt::TokioIo::new(socket), handler)
                                    .await;
                            }
                            Some(acceptor) => {
                                if let Ok(s) = acceptor.accept(socket).await {
                                    let _ = http
                                        .serve_connection(hyper_util::rt::TokioIo::new(s), handler)
                                        .await;
                                }
                            }
                        }
                    });
                }
            });
        });
        S3 {
            endpoint,
            ca_file: ca.map(|c| c.ca.clone()),
            bucket_dir,
            faults,
            counts,
            _root: root,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Requests seen so far, by method.
    pub fn count(&self, method: &str) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        self.counts.lock().unwrap().values().sum()
    }

    /// The `[backup]` section of a node config that backs up here.
    pub fn node_backup_toml(&self, interval_ms: u64) -> String {
        format!(
            "\n[backup]\nurl = \"s3://{BUCKET}/hemvist\"\nendpoint = \"{}\"\n\
             access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n\
             interval_ms = {interval_ms}\nindex_every_ms = 1000\n{}",
            self.endpoint,
            self.ca_file
                .as_ref()
                .map(|c| format!("ca_file = {:?}\n", c.display().to_string()))
                .unwrap_or_default()
        )
    }

    /// Every object under a key prefix (relative to the bucket), as files.
    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, out);
                    } else {
                        out.push(p);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.bucket_dir.join(prefix), &mut out);
        out.retain(|p| {
            p.extension()
                .is_some_and(|e| e == "hvb" || e == "hvp" || e == "hvi")
        });
        out.sort();
        out
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
