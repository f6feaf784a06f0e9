//! The node's HTTP surface for org users: thin handlers over routing, users, search and
//! contacts. Every org id is parsed before it touches anything ([`context`]); no input can cause
//! a 500 or a panic; a form field that is not UTF-8 is refused ([`form`]); everything a user
//! typed is escaped when shown ([`pages`]); every form post comes from this node's pages
//! ([`origin`]) with a token ([`auth`]); signing in costs bounded memory and is throttled
//! ([`signin`]). No answer about an org is cached or sniffed by a browser. A user of an org that
//! moved is sent to its new home still signed in ([`moved`], [`handoff`]).

// Helpers here return `Err(Response)` to end a handler early; that path is cold, so boxing
// the response would buy nothing.
#![allow(clippy::result_large_err)]

mod app;
mod auth;
mod branch;
mod context;
mod export;
mod form;
mod handoff;
mod moved;
mod moves;
mod origin;
mod pages;
mod signin;
mod throttle;
mod tokens;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use hemvist_proto::{ErrorKind, HemvistError};

use crate::Node;

pub use signin::SigninLimits;

/// Bodies above this are refused with 413 before they are read further.
pub const MAX_BODY: usize = 64 * 1024;

const HTMX_PATH: &str = "/static/htmx-2.0.11.min.js";
static HTMX: &[u8] = include_bytes!("../../static/htmx-2.0.11.min.js");
static HTMX_LICENSE: &str = include_str!("../../static/htmx-LICENSE.txt");

/// What the handlers share: the node, the sign-in guard (absent only if the operating
/// system gave no randomness for its keys; signing in then answers 503), and what the node
/// remembers of session hand-offs.
#[derive(Clone)]
struct WebState {
    node: Arc<Node>,
    signin: Option<Arc<signin::Signin>>,
    handoffs: Arc<handoff::Handoffs>,
}

impl FromRef<WebState> for Arc<Node> {
    fn from_ref(s: &WebState) -> Self {
        s.node.clone()
    }
}

impl FromRef<WebState> for Option<Arc<signin::Signin>> {
    fn from_ref(s: &WebState) -> Self {
        s.signin.clone()
    }
}

pub fn router(node: Arc<Node>) -> Router {
    router_with(node, &SigninLimits::default())
}

pub fn router_with(node: Arc<Node>, limits: &SigninLimits) -> Router {
    let signin = match signin::Signin::new(limits) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::error!(error = %e, "signing in is disabled: no keys for its tokens");
            None
        }
    };
    let state = WebState {
        node: node.clone(),
        signin: signin.clone(),
        handoffs: Arc::new(handoff::Handoffs::default()),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(HTMX_PATH, get(htmx))
        .route("/static/htmx-LICENSE.txt", get(|| async { HTMX_LICENSE }))
        .route(pages::CONTINUE_JS_PATH, get(continue_js))
        .route("/internal/v1/moves/{org}/catalog", get(moves::catalog))
        .route("/internal/v1/exports/{org}", get(export::get))
        .route(
            "/internal/v1/moves/{org}/objects/{*key}",
            get(moves::object),
        )
        .route("/o/{org}", get(app::org_root))
        .route("/o/{org}/", get(app::search))
        .route("/o/{org}/signin", get(auth::form).post(auth::sign_in))
        .route("/o/{org}/signout", post(auth::sign_out))
        .route("/o/{org}/keepalive", post(branch::keepalive))
        .route("/o/{org}/contacts", post(app::create_contact))
        .route("/o/{org}/contacts/new", get(app::new_contact))
        .route(
            "/o/{org}/contacts/{id}",
            get(app::show_contact).post(app::update_contact),
        )
        .route("/o/{org}/{*rest}", any(app::no_such_page))
        .fallback(|| async {
            pages::error(StatusCode::NOT_FOUND, "Not found", "There is no page here.")
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            moved::send_home,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            moved::accept_handoff,
        ))
        .layer(middleware::from_fn_with_state(node.clone(), count_served))
        .layer(middleware::from_fn_with_state(node, time_request))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(not_cached_nor_sniffed))
        .with_state(state)
}

/// Every answer is `nosniff`; every answer but the static files is `no-store`: an org's pages
/// and JSON are one user's, and must not outlive their session in any cache.
async fn not_cached_nor_sniffed(req: Request, next: Next) -> Response {
    let cacheable = req.uri().path().starts_with("/static/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !cacheable {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// 200 `ok` while the node can take writes; 503 with `{"status": "degraded", ...}` while it is
/// below its free-space headroom, so a load balancer sends new traffic elsewhere (reads still
/// work here for those who come).
async fn healthz(State(node): State<Arc<Node>>) -> Response {
    // One statvfs at most every 250 ms: as cheap as a stat, so no blocking thread is taken.
    if !node.disk.is_low() {
        return "ok\n".into_response();
    }
    let body = serde_json::json!({
        "status": "degraded",
        "reason": "storage full",
        "free_bytes": node.disk.free_bytes(),
        "headroom_bytes": node.disk.headroom(),
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

async fn metrics(State(web): State<WebState>, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    let text = tokio::task::spawn_blocking(move || {
        web.node
            .metrics
            .render(&gauges(&web.node, web.signin.as_deref()), format)
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

/// Times every request into the latency histogram, by method and route pattern (a method
/// outside the usual few counts as `other`, so a client cannot mint series).
async fn time_request(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let labels = crate::metrics::RouteLabels::of(&req);
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    node.metrics
        .http_latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Counts a request in its org's health (see [`crate::health`]) once the org's context found
/// the org served here ([`context::Served`]), with the status it was finally answered with: a
/// request sent elsewhere, refused before its org was known, or for an org not served here is
/// not counted (so only orgs hosted here are).
async fn count_served(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    if !req.uri().path().starts_with("/o/") {
        return next.run(req).await;
    }
    let served = context::Served::default();
    req.extensions_mut().insert(served.clone());
    let resp = next.run(req).await;
    if let Some(org) = served.org() {
        node.health
            .request_by(org, resp.status().is_server_error(), served.signed_in());
    }
    resp
}

/// The node's gauges, read from its parts at scrape time.
fn gauges(node: &Node, signin: Option<&signin::Signin>) -> crate::metrics::Gauges {
    use std::sync::atomic::Ordering::Relaxed;
    crate::metrics::Gauges {
        hosted: node.state.hosted_count() as u64,
        open_tenants: node.tenants.open_count() as u64,
        placements: node.state.placement_count() as u64,
        lease_live: node.gate.lease.is_live(),
        tenant_opens: node.tenants.opens.load(Relaxed),
        tenant_evictions: node.tenants.evictions.load(Relaxed),
        search_index_builds: node.data_versions.index_builds.load(Relaxed),
        search_index_catch_ups: node.data_versions.index_catch_ups.load(Relaxed),
        backup: node.backup.clone(),
        http: node.http_stats.clone(),
        signin_checks: signin.map_or(0, |s| s.checker.admitted() as u64),
        storage_full: node.disk.is_low(),
        disk_free_bytes: node.disk.free_bytes(),
        disk_headroom_bytes: node.disk.headroom(),
        writes_refused_storage_full: node.disk.refused.load(Relaxed),
    }
}

async fn continue_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        pages::CONTINUE_JS,
    )
        .into_response()
}

async fn htmx() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        HTMX,
    )
        .into_response()
}

/// An error as JSON or as a page; internal details are logged, never shown.
pub(crate) fn error_response(json: bool, e: &HemvistError) -> Response {
    let status =
        StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if e.kind == ErrorKind::Internal {
        tracing::error!(error = %e, "org request failed");
        return context::refuse(
            json,
            status,
            "Something went wrong",
            "The request could not be completed.",
        );
    }
    let title = match e.kind {
        ErrorKind::Unavailable => "Unavailable",
        ErrorKind::NotFound => "Not found",
        ErrorKind::InvalidArgument => "Bad request",
        ErrorKind::StorageFull => "Storage full",
        _ => "Refused",
    };
    let mut resp = context::refuse(json, status, title, &e.message);
    if e.kind == ErrorKind::Unavailable {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if e.kind == ErrorKind::StorageFull {
        // Space comes back when someone frees it: not within a second.
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    if e.kind == ErrorKind::Fenced {
        resp.extensions_mut().insert(Fenced);
    }
    resp
}

/// Marks an answer refused because the org now belongs to another node: [`moved::send_home`]
/// sends the request there instead (a write held at a move's fence, say).
#[derive(Clone, Copy)]
struct Fenced;

pub(crate) fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, Body::from(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hemvist_proto::{Generation, NodeId, OrgId, RegionId};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::health::Counts;
    use crate::tenants::schema::Schema;
    use crate::{HostRequest, Node, NodeConfig};

    fn node(dir: &std::path::Path) -> Node {
        let config = NodeConfig {
            id: NodeId::parse("eu-north-1").unwrap(),
            region: RegionId::parse("eu-north").unwrap(),
            control_url: "http://127.0.0.1:1".into(),
            control_urls: Vec::new(),
            join_token: "x".repeat(20),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: None,
            control_tls: Default::default(),
            insecure: false,
            tls: None,
            limits: Default::default(),
            signin: Default::default(),
            data_dir: dir.to_path_buf(),
            capacity: 10,
            max_open_tenants: 2,
            idle_close_ms: 60_000,
            trash_grace_secs: 7 * 24 * 3600,
            idempotency_ttl_secs: 24 * 3600,
            disk_headroom_mib: 0,
            backup: None,
        };
        Node::open(config, "http://127.0.0.1:9".into()).unwrap()
    }

    /// The status line's code of `GET path` with `cookie`.
    async fn get(addr: std::net::SocketAddr, path: &str, cookie: &str) -> u16 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: n\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        answer.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_request_answered_500_for_a_failing_read_is_counted_for_its_org() {
        let dir = tempfile::tempdir().unwrap();
        let node = Arc::new(node(dir.path()));
        let org = OrgId::parse("acme").unwrap();
        node.hosting
            .host(&HostRequest {
                org: org.clone(),
                generation: Generation::new(1).unwrap(),
                name: "Acme".into(),
                allowed_regions: vec!["eu-north".into()],
                sync: false,
                data_key: None,
                expect_backup: false,
                moved_here: false,
                schema: Schema::builtin(),
            })
            .unwrap();
        // Every session lookup now fails in SQLite.
        node.tenants
            .write(&org, |tx| tx.execute_batch("DROP TABLE sessions"))
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = super::router(node.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });

        assert_eq!(get(addr, "/o/acme/", "hv_session=acme.x").await, 500);
        assert_eq!(get(addr, "/o/acme/", "a=b").await, 303, "to sign in");
        // Not served here, or no org at all: not counted.
        assert_eq!(get(addr, "/o/nobody/", "a=b").await, 404);
        assert_eq!(get(addr, "/healthz", "a=b").await, 200);
        assert_eq!(
            node.health.take(),
            vec![(
                org,
                Counts {
                    requests: 2,
                    server_errors: 1,
                    sqlite_errors: 1,
                    signed_in: 0,
                }
            )]
        );
        assert!(node.health.take().is_empty());
    }
}
