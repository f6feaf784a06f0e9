//! The counting proxy: every request a replicator sends to the S3 server passes through it
//! unchanged (method, path and query, headers with the client's own `Host`, which SigV4 signs;
//! bodies streamed both ways), and each one is logged with its method, key and when it started
//! and completed. hemvist's packs name their tenants only inside the object (an index at its
//! end), so of a pack PUT the proxy keeps the tail and reads which tenants it carried.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::workload::now_us;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: http::Method,
    /// Path-style: `/bucket/key`.
    pub path: String,
    pub query: String,
    /// 502 when the S3 server could not be reached.
    pub status: u16,
    pub start_us: i64,
    /// When the response was delivered to the client (its last byte, or when it went away).
    pub end_us: i64,
    /// For a hemvist pack: the tenants whose segments it holds.
    pub pack_orgs: Vec<String>,
}

impl Logged {
    /// What the request does: GET, LIST (a GET of the bucket), PUT, HEAD, DELETE, POST, ...
    pub fn kind(&self) -> &str {
        let key = self.path.trim_start_matches('/').trim_end_matches('/');
        if self.method == http::Method::GET
            && (!key.contains('/') || self.query.contains("list-type"))
        {
            return "LIST";
        }
        self.method.as_str()
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The running proxy; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Logged>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    upstream: String,
    client: reqwest::Client,
    log: Arc<Mutex<Vec<Logged>>>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .connect_timeout(std::time::Duration::from_secs(5))
                .build()?,
            log: log.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let sock = match listener.accept().await {
                    Ok((sock, _)) => sock,
                    // Out of file descriptors, say: wait for some to be released.
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(forward(&shared, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), service)
                        .await;
                });
            }
        });
        Ok(Proxy { addr, log, task })
    }

    /// Runs `f` on every request logged so far, in the order they completed. Requests that
    /// complete meanwhile wait to be logged (their times are taken before).
    pub fn with_log<T>(&self, f: impl FnOnce(&[Logged]) -> T) -> T {
        f(&self.log.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Headers that describe one connection, not the request; the upstream connection has its own.
/// `Expect: 100-continue` is answered by this proxy's server side, so it is not passed on.
fn hop_by_hop(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
    )
}

async fn forward(shared: &Shared, req: Request<Incoming>) -> Response<BoxBody<Bytes, BoxError>> {
    let start_us = now_us();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    // A pack's index is its last `index_len` bytes, as its key says.
    let tail = (parts.method == http::Method::PUT)
        .then(|| pack_key(&path))
        .flatten()
        .and_then(hemvist_node::backup::format::parse_pack_key)
        .map(|(_, _, index_len)| Tail {
            keep: index_len as usize,
            bytes: Arc::new(Mutex::new(Vec::new())),
        });
    let mut pending = Pending {
        entry: Logged {
            method: parts.method.clone(),
            path,
            query,
            status: 502,
            start_us,
            end_us: 0,
            pack_orgs: Vec::new(),
        },
        tail: tail.as_ref().map(|t| t.bytes.clone()),
        log: shared.log.clone(),
    };
    let url = match reqwest::Url::parse(&format!("{}{path_and_query}", shared.upstream)) {
        Ok(u) => u,
        Err(e) => return failed(pending, format!("bad URL: {e}")),
    };
    let mut out = reqwest::Request::new(parts.method, url);
    for (name, value) in &parts.headers {
        // `Host` included: the upstream client keeps a Host header it is given.
        if !hop_by_hop(name) {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    *out.body_mut() = Some(reqwest::Body::wrap(Watched {
        inner: body,
        tail,
        done: None,
    }));
    let resp = match shared.client.execute(out).await {
        Ok(r) => r,
        Err(e) => return failed(pending, format!("upstream: {e}")),
    };
    pending.entry.status = resp.status().as_u16();
    let resp = http::Response::<reqwest::Body>::from(resp);
    let (parts, body) = resp.into_parts();
    let mut builder = Response::builder().status(parts.status);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            builder = builder.header(name, value);
        }
    }
    let body = Watched {
        inner: body,
        tail: None,
        done: Some(pending),
    };
    builder
        .body(body.map_err(BoxError::from).boxed())
        .unwrap_or_else(|e| {
            Response::new(
                Full::new(Bytes::from(format!("proxy: {e}")))
                    .map_err(BoxError::from)
                    .boxed(),
            )
        })
}

/// The pack key within a path (`/bucket/prefix/packs/...`), if the path is one.
fn pack_key(path: &str) -> Option<&str> {
    let at = path.find("/packs/")?;
    Some(&path[at + 1..])
}

fn failed(pending: Pending, why: String) -> Response<BoxBody<Bytes, BoxError>> {
    pending.finish();
    let mut resp = Response::new(Full::new(Bytes::from(why)).map_err(BoxError::from).boxed());
    *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
    resp
}

/// The last `keep` bytes of a body.
struct Tail {
    keep: usize,
    bytes: Arc<Mutex<Vec<u8>>>,
}

/// A request's log entry, written once its response has been delivered.
struct Pending {
    entry: Logged,
    tail: Option<Arc<Mutex<Vec<u8>>>>,
    log: Arc<Mutex<Vec<Logged>>>,
}

impl Pending {
    fn finish(mut self) {
        self.entry.end_us = now_us();
        if let (Some(tail), Some(key)) = (&self.tail, pack_key(&self.entry.path)) {
            let tail = tail.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(entries) = hemvist_node::backup::format::decode_pack_index(key, &tail) {
                self.entry.pack_orgs = entries.into_iter().map(|e| e.0.org.to_string()).collect();
            }
        }
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.entry);
    }
}

/// A body passed through as it is, keeping its tail (`tail`) and logging the request when it
/// ends or is dropped (`done`).
struct Watched<B> {
    inner: B,
    tail: Option<Tail>,
    done: Option<Pending>,
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(tail), Some(data)) = (&this.tail, frame.data_ref()) {
                    let mut bytes = tail.bytes.lock().unwrap_or_else(|p| p.into_inner());
                    bytes.extend_from_slice(data);
                    let extra = bytes.len().saturating_sub(tail.keep);
                    bytes.drain(..extra);
                }
            }
            Poll::Ready(_) => {
                if let Some(done) = this.done.take() {
                    done.finish();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done.finish();
        }
    }
}
