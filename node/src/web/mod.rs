//! The node's HTTP surface for org users: thin handlers over routing, users, search and
//! contacts. Every org id is parsed before it touches anything ([`context`]); no input can cause
//! a 500 or a panic; everything a user typed is escaped when shown ([`pages`]).

// Helpers here return `Err(Response)` to end a handler early; that path is cold, so boxing
// the response would buy nothing.
#![allow(clippy::result_large_err)]

mod app;
mod auth;
mod context;
mod pages;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use hemvist_proto::{ErrorKind, HemvistError};

use crate::Node;

pub use pages::escape;

/// Bodies above this are refused with 413 before they are read further.
pub const MAX_BODY: usize = 64 * 1024;

const HTMX_PATH: &str = "/static/htmx-2.0.11.min.js";
static HTMX: &[u8] = include_bytes!("../../static/htmx-2.0.11.min.js");
static HTMX_LICENSE: &str = include_str!("../../static/htmx-LICENSE.txt");

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route(HTMX_PATH, get(htmx))
        .route("/static/htmx-LICENSE.txt", get(|| async { HTMX_LICENSE }))
        .route("/o/{org}", get(app::org_root))
        .route("/o/{org}/", get(app::search))
        .route("/o/{org}/signin", get(auth::form).post(auth::sign_in))
        .route("/o/{org}/signout", post(auth::sign_out))
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
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let n = node.clone();
    let text = tokio::task::spawn_blocking(move || n.metrics.render(&gauges(&n)))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The node's gauges, read from its parts at scrape time.
fn gauges(node: &Node) -> crate::metrics::Gauges {
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
    }
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
        _ => "Refused",
    };
    context::refuse(json, status, title, &e.message)
}

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
