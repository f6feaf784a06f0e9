//! The node's HTTP surface for org users: a thin adapter over routing and the tenant store.
//! Every org id is parsed before it touches anything; no input can cause a 500 or a panic.

mod pages;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, OriginalUri, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hemvist_proto::{ErrorKind, HemvistError, OrgId};
use tracing::Instrument;

use crate::routing::{route, Route};
use crate::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/o/{org}", get(org_root))
        .route("/o/{org}/", get(org_page))
        .route("/o/{org}/{*rest}", get(org_page_rest))
        .fallback(|| async {
            pages::error(StatusCode::NOT_FOUND, "Not found", "There is no page here.")
        })
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(node)
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let n = node.clone();
    let text = tokio::task::spawn_blocking(move || n.metrics.render(&n.gauges()))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

type OrgPath = Result<Path<String>, axum::extract::rejection::PathRejection>;
type OrgRestPath = Result<Path<(String, String)>, axum::extract::rejection::PathRejection>;

fn bad_request(node: &Node, message: &str) -> Response {
    node.metrics.bad_requests.inc();
    pages::error(StatusCode::BAD_REQUEST, "Bad request", message)
}

/// The org id from the path, or why it is not one (for a 400 page).
fn parse_org(raw: Result<String, String>) -> Result<OrgId, String> {
    OrgId::parse(&raw?).map_err(|e| e.to_string())
}

async fn org_root(State(node): State<Arc<Node>>, path: OrgPath) -> Response {
    let org = match parse_org(path.map(|Path(p)| p).map_err(|e| e.body_text())) {
        Ok(org) => org,
        Err(why) => return bad_request(&node, &why),
    };
    let mut resp = StatusCode::PERMANENT_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/o/{org}/")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

async fn org_page(State(node): State<Arc<Node>>, uri: OriginalUri, path: OrgPath) -> Response {
    let org = match parse_org(path.map(|Path(p)| p).map_err(|e| e.body_text())) {
        Ok(org) => org,
        Err(why) => return bad_request(&node, &why),
    };
    let span = tracing::info_span!("org_request", org = %org, node = %node.config.id);
    serve_org(node, uri, org, None).instrument(span).await
}

async fn org_page_rest(
    State(node): State<Arc<Node>>,
    uri: OriginalUri,
    path: OrgRestPath,
) -> Response {
    let (org, rest) = match path {
        Ok(Path((org, rest))) => (Ok(org), rest),
        Err(e) => (Err(e.body_text()), String::new()),
    };
    let org = match parse_org(org) {
        Ok(org) => org,
        Err(why) => return bad_request(&node, &why),
    };
    let span = tracing::info_span!("org_request", org = %org, node = %node.config.id);
    serve_org(node, uri, org, Some(rest)).instrument(span).await
}

async fn serve_org(
    node: Arc<Node>,
    uri: OriginalUri,
    org: OrgId,
    rest: Option<String>,
) -> Response {
    node.metrics.requests.inc();
    match route(&node, &org) {
        Route::Elsewhere { node_url } => {
            node.metrics.redirected.inc();
            let target = format!(
                "{}{}",
                node_url.trim_end_matches('/'),
                uri.0.path_and_query().map(|p| p.as_str()).unwrap_or("/")
            );
            match HeaderValue::from_str(&target) {
                Ok(location) => {
                    let mut resp = html(StatusCode::TEMPORARY_REDIRECT, pages::moved(&target));
                    resp.headers_mut().insert(header::LOCATION, location);
                    resp.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    resp
                }
                Err(_) => bad_request(&node, "this address cannot be redirected"),
            }
        }
        Route::Unknown => {
            node.metrics.not_found.inc();
            pages::error(
                StatusCode::NOT_FOUND,
                "Unknown organization",
                &format!("No organization called \u{201c}{org}\u{201d} exists."),
            )
        }
        Route::Preparing => {
            let mut resp = pages::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Almost ready",
                "This organization is being set up on this server. Try again in a moment.",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
        Route::Local => {
            if rest.as_deref().is_some_and(|r| !r.is_empty()) {
                return pages::error(StatusCode::NOT_FOUND, "Not found", "There is no page here.");
            }
            node.metrics.served.inc();
            let n = node.clone();
            let o = org.clone();
            let loaded = tokio::task::spawn_blocking(move || pages::load_home(&n, &o)).await;
            match loaded {
                Ok(Ok(home)) => pages::home(&home),
                Ok(Err(e)) => error_page(&e),
                Err(_) => error_page(&HemvistError::internal("page task failed")),
            }
        }
    }
}

fn error_page(e: &HemvistError) -> Response {
    let status =
        StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if e.kind == ErrorKind::Internal {
        tracing::error!(error = %e, "org page failed");
        return pages::error(
            status,
            "Something went wrong",
            "The page could not be loaded.",
        );
    }
    pages::error(status, "Unavailable", &e.message)
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
        HeaderValue::from_static("default-src 'self'; style-src 'self' 'unsafe-inline'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}
