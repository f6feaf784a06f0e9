//! What every org route needs before its handler runs, as axum extractors:
//! [`OrgCtx`] parses the org id (400), refuses a session of another org (403) and routes the
//! request (307 to the home node, 404, 503) from the node's cached placement; [`Authed`] adds
//! the signed-in user (or sends them to sign in). The 307 is marked ([`MovedAway`]) so
//! `super::moved` can give it the form the client follows, with the user's session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hemvist_proto::OrgId;

use super::handoff::{self, HandedOff, MovedAway, MOVED_PARAM, PARAM};
use super::pages;
use crate::routing::{route, Route};
use crate::users::{self, Session};
use crate::Node;

pub const SESSION_COOKIE: &str = "hv_session";

/// Set by [`OrgCtx`] when it finds the request's org served here: how the middleware that
/// counts each org's requests (`super::count_served`) learns whose request it was.
#[derive(Clone, Default)]
pub struct Served(
    Arc<std::sync::OnceLock<OrgId>>,
    Arc<std::sync::atomic::AtomicBool>,
);

impl Served {
    pub fn org(&self) -> Option<&OrgId> {
        self.0.get()
    }

    /// A signed-in user's request (its session was found).
    pub fn signed_in(&self) -> bool {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub struct OrgCtx {
    pub node: Arc<Node>,
    pub org: OrgId,
    pub wants_json: bool,
    pub htmx: bool,
    /// The client's address, as the listener saw it (absent only when no listener served it).
    pub client: Option<IpAddr>,
    /// The public URL of the node that handed this request's session over, if one did.
    pub handed_off_from: Option<String>,
}

pub struct Authed {
    pub ctx: OrgCtx,
    pub session: Session,
    pub token: String,
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"))
}

fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request") && !headers.contains_key("hx-history-restore-request")
}

/// An error answer in the form the client asked for: JSON or an HTML page.
pub fn refuse(json: bool, status: StatusCode, title: &str, message: &str) -> Response {
    if json {
        let kind = match status.as_u16() {
            400 => "invalid_argument",
            401 => "unauthenticated",
            403 => "forbidden",
            404 => "not_found",
            413 => "too_large",
            429 | 503 => "unavailable",
            507 => "storage_full",
            _ => "error",
        };
        let body = serde_json::json!({"error": {"kind": kind, "message": message}});
        return (status, axum::Json(body)).into_response();
    }
    pages::error(status, title, message)
}

impl<S> FromRequestParts<S> for OrgCtx
where
    S: Send + Sync,
    Arc<Node>: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let node = &Arc::<Node>::from_ref(state);
        let json = wants_json(&parts.headers);
        let path = parts.uri.path();
        let raw = path
            .strip_prefix("/o/")
            .map(|rest| rest.split('/').next().unwrap_or(""))
            .unwrap_or("");
        let decoded = percent_encoding::percent_decode_str(raw).decode_utf8();
        let org = match decoded.map(|s| OrgId::parse(&s)) {
            Ok(Ok(org)) => org,
            Ok(Err(e)) => {
                node.metrics.bad_requests.inc();
                return Err(refuse(
                    json,
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    &e.to_string(),
                ));
            }
            Err(_) => {
                node.metrics.bad_requests.inc();
                return Err(refuse(
                    json,
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "the organization in the address is not valid UTF-8",
                ));
            }
        };
        if let Some(token) = cookie(&parts.headers, SESSION_COOKIE) {
            if users::token_org(token).is_some_and(|o| o != org.as_str()) {
                node.metrics.forbidden.inc();
                return Err(refuse(
                    json,
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "you are signed in to another organization",
                ));
            }
        }
        node.metrics.requests.inc();
        match route(&node.state, &node.config.id, &org) {
            Route::Local => {
                if let Some(served) = parts.extensions.get::<Served>() {
                    let _ = served.0.set(org.clone());
                }
                Ok(OrgCtx {
                    node: node.clone(),
                    org,
                    wants_json: json,
                    htmx: is_htmx(&parts.headers),
                    client: parts
                        .extensions
                        .get::<ConnectInfo<SocketAddr>>()
                        .map(|c| c.0.ip()),
                    handed_off_from: parts.extensions.get::<HandedOff>().map(|h| h.from.clone()),
                })
            }
            Route::Elsewhere { node_url } => {
                node.metrics.redirected.inc();
                let target = format!(
                    "{}{}",
                    node_url.trim_end_matches('/'),
                    parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                );
                let Ok(location) = HeaderValue::from_str(&target) else {
                    return Err(refuse(
                        json,
                        StatusCode::BAD_REQUEST,
                        "Bad request",
                        "this address cannot be redirected",
                    ));
                };
                let mut resp = super::html(StatusCode::TEMPORARY_REDIRECT, pages::moved(&target));
                resp.headers_mut().insert(header::LOCATION, location);
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp.extensions_mut().insert(MovedAway { node_url });
                Err(resp)
            }
            Route::Unknown => {
                node.metrics.not_found.inc();
                Err(refuse(
                    json,
                    StatusCode::NOT_FOUND,
                    "Unknown organization",
                    &format!("No organization called \u{201c}{org}\u{201d} exists."),
                ))
            }
            Route::Preparing => {
                let mut resp = refuse(
                    json,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Almost ready",
                    "This organization is being set up on this server. Try again in a moment.",
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                Err(resp)
            }
        }
    }
}

impl<S> FromRequestParts<S> for Authed
where
    S: Send + Sync,
    Arc<Node>: FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let ctx = OrgCtx::from_request_parts(parts, state).await?;
        let token = cookie(&parts.headers, SESSION_COOKIE).map(str::to_string);
        let session = match &token {
            Some(t) if users::cached_session(&ctx.node.sessions, &ctx.org, t).is_some() => {
                users::cached_session(&ctx.node.sessions, &ctx.org, t)
            }
            Some(t) => {
                let (n, o, t) = (ctx.node.clone(), ctx.org.clone(), t.clone());
                match tokio::task::spawn_blocking(move || {
                    users::session(&n.writer, &n.sessions, &o, &t)
                })
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return Err(super::error_response(ctx.wants_json, &e)),
                    Err(_) => None,
                }
            }
            None => None,
        };
        match (session, token) {
            (Some(session), Some(token)) => {
                if let Some(served) = parts.extensions.get::<Served>() {
                    served.1.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(Authed {
                    ctx,
                    session,
                    token,
                })
            }
            _ => Err(sign_in_first(&ctx, parts)),
        }
    }
}

/// Sends a user who is not signed in to the sign-in form; one sent from the org's old home
/// without their session (`hv_moved=1`) is told why.
fn sign_in_first(ctx: &OrgCtx, parts: &Parts) -> Response {
    let moved = handoff::came_moved(&parts.uri);
    let signin = if moved {
        format!("/o/{}/signin?{MOVED_PARAM}=1", ctx.org)
    } else {
        format!("/o/{}/signin", ctx.org)
    };
    if ctx.wants_json {
        return refuse(true, StatusCode::UNAUTHORIZED, "Sign in", "sign in first");
    }
    if ctx.htmx {
        let mut resp = StatusCode::UNAUTHORIZED.into_response();
        if let Ok(v) = HeaderValue::from_str(&signin) {
            resp.headers_mut().insert("hx-redirect", v);
        }
        return resp;
    }
    if parts.method != axum::http::Method::GET {
        let why = if moved {
            pages::MOVED_NOTICE
        } else {
            "Your session has ended; sign in again."
        };
        return refuse(false, StatusCode::UNAUTHORIZED, "Sign in", why);
    }
    let next = parts
        .uri
        .path_and_query()
        .map(|p| handoff::without(p.as_str(), &[MOVED_PARAM, PARAM]))
        .unwrap_or_else(|| "/".into());
    let sep = if moved { '&' } else { '?' };
    let location = format!("{signin}{sep}next={}", pages::url_encode(&next));
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
