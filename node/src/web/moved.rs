//! Sending a user on to their org's new home, and taking them in there, signed in.
//!
//! On the old home, [`send_home`] turns every "this org lives elsewhere" answer (a request
//! routed elsewhere by [`super::context::OrgCtx`], or a write held at a move's fence and then
//! refused) into the answer that client can follow:
//! - a page's request from htmx: `HX-Redirect` (htmx would follow a 307 itself, across origins,
//!   where CORS and the page's CSP stop it);
//! - a form posted by a browser: a page that posts the same fields to the new home
//!   (Chromium enforces the page's CSP `form-action 'self'` on a redirect too, so a 307 would
//!   stop there); this answer's own CSP allows the new home's origin, and nothing more;
//! - anything else: a 307 to the same path there (a POST keeps its method and body).
//!
//! A signed-in user's address there carries their session, sealed ([`super::handoff`]). One
//! whose session cannot be handed off, because this node holds no key for the org any more (no
//! signed-in user was served the org here for an hour, or this node restarted since), carries
//! `hv_moved=1`, so the new home's sign-in page says why they must sign in again. A session
//! this node knows has ended is not handed off; one it cannot check any more (its copy of the
//! org is gone) is, and the new home checks it.
//!
//! On the new home, [`accept_handoff`] takes the token before any handler runs: a GET is sent
//! (303) to the same address without it, with the session's cookie set for this host; any other
//! request goes on carrying the session (as its cookie), and its answer, unless a refusal, sets
//! the cookie. A browser signed in here already keeps its own session. A refused token is
//! dropped from the address and the request goes on as if it never had one (with `hv_moved=1`,
//! unless the browser is signed in here): a 400 would strand a user whose token merely expired
//! or was replayed by a reload, and a refused token grants nothing.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hemvist_proto::OrgId;

use super::context::{cookie, refuse, SESSION_COOKIE};
use super::form::{self, Fields};
use super::handoff::{
    self, param, with, without, HandedOff, HandoffKey, MovedAway, Opened, MOVED_PARAM, PARAM,
};
use super::{auth, origin, pages, Fenced, WebState, MAX_BODY};
use crate::clock::now_ms;
use crate::routing::{route, Route};
use crate::users;

/// The org an `/o/{org}/...` path names, if it is a valid id.
fn org_in_path(path: &str) -> Option<OrgId> {
    let raw = path.strip_prefix("/o/")?.split('/').next()?;
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    OrgId::parse(&decoded).ok()
}

fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A browser's form post (a navigation, not a script's request): its fields are read here, so
/// they can be sent on if the org turns out to live elsewhere.
async fn read_form_navigation(req: Request) -> Result<(Request, Option<Fields>), Response> {
    let h = req.headers();
    let navigation = req.method() == Method::POST
        && h.get("sec-fetch-mode").is_some_and(|v| v == "navigate")
        && h.get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
    if !navigation {
        return Ok((req, None));
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Err(refuse(
            false,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            "the form is larger than this server takes",
        ));
    };
    let fields = form::decode(&bytes).ok();
    Ok((Request::from_parts(parts, Body::from(bytes)), fields))
}

/// What the old home can give a signed-in user for the new one.
enum Mint {
    Sealed(String),
    /// The session has ended: the user signs in again like anyone.
    Ended,
    /// No key for the org here any more.
    NoKey,
}

async fn mint(web: &WebState, org: &OrgId, token: &str) -> Mint {
    let node = &web.node;
    let now = now_ms();
    let hosted = node.state.hosted(org);
    let key = hosted
        .as_ref()
        .and_then(|h| h.data_key.as_ref())
        .map(HandoffKey::derive)
        .or_else(|| web.handoffs.retained(org, now));
    let Some(key) = key else {
        return Mint::NoKey;
    };
    // Checked while the copy is here; once it is gone, the new home checks alone.
    if hosted.is_some() && users::cached_session(&node.sessions, org, token).is_none() {
        let (n, o, t) = (node.clone(), org.clone(), token.to_string());
        let found =
            tokio::task::spawn_blocking(move || users::session(&n.writer, &n.sessions, &o, &t))
                .await;
        if let Ok(Ok(None)) = found {
            return Mint::Ended;
        }
    }
    match handoff::seal(&key, org, token, &node.public_url, now) {
        Ok(sealed) => Mint::Sealed(sealed),
        Err(e) => {
            tracing::warn!(org = %org, error = %e, "cannot hand a session off");
            Mint::NoKey
        }
    }
}

/// Sends a request for an org that lives elsewhere to its home, in the form its client follows.
pub(super) async fn send_home(State(web): State<WebState>, req: Request, next: Next) -> Response {
    let Some(org) = org_in_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let asked = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let session = cookie(req.headers(), SESSION_COOKIE)
        .filter(|t| users::token_org(t) == Some(org.as_str()))
        .map(str::to_string);
    let htmx = req.headers().contains_key("hx-request");
    let (req, form) = match read_form_navigation(req).await {
        Ok(read) => read,
        Err(resp) => return resp,
    };
    let resp = next.run(req).await;
    let node = &web.node;
    let node_url = if let Some(m) = resp.extensions().get::<MovedAway>() {
        m.node_url.clone()
    } else if resp.extensions().get::<Fenced>().is_some() {
        match node
            .state
            .placement(&org)
            .filter(|p| p.node_id != node.config.id)
        {
            Some(p) => {
                node.metrics.redirected.inc();
                p.node_url
            }
            None => return resp,
        }
    } else {
        if session.is_some() {
            if let Some(h) = node.state.hosted(&org) {
                web.handoffs.served(&org, h.data_key.as_ref(), now_ms());
            }
        }
        return resp;
    };

    let mut path = asked.clone();
    if let Some(token) = &session {
        match mint(&web, &org, token).await {
            Mint::Sealed(sealed) => {
                path = with(&without(&asked, &[PARAM, MOVED_PARAM]), PARAM, &sealed)
            }
            Mint::Ended => {}
            // A token that came with the request (from an earlier home) goes on as it is.
            Mint::NoKey if asked.contains(&format!("{PARAM}=")) => {}
            Mint::NoKey => path = with(&without(&asked, &[MOVED_PARAM]), MOVED_PARAM, "1"),
        }
    }
    let home = node_url.trim_end_matches('/');
    let location = format!("{home}{path}");
    let Ok(value) = HeaderValue::from_str(&location) else {
        return resp;
    };
    if htmx {
        let mut answer = StatusCode::OK.into_response();
        answer.headers_mut().insert("hx-redirect", value);
        return answer;
    }
    if let Some(fields) = form {
        if asked.split('?').next() == Some(&format!("/o/{org}/signin")) {
            // Its form token is this server's: the new home asks again, saying why.
            return see_other(&format!("{home}/o/{org}/signin?{MOVED_PARAM}=1"));
        }
        if let Some(page) =
            origin::origin_of(home).and_then(|o| pages::continue_at(&location, &o, &fields))
        {
            return page;
        }
    }
    let mut moved = super::html(StatusCode::TEMPORARY_REDIRECT, pages::moved(&location));
    moved.headers_mut().insert(header::LOCATION, value);
    moved
}

/// Whether a request's own session cookie is a live session of `org` here.
async fn signed_in_here(web: &WebState, org: &OrgId, token: Option<String>) -> bool {
    let Some(token) = token else {
        return false;
    };
    let (n, o) = (web.node.clone(), org.clone());
    matches!(
        tokio::task::spawn_blocking(move || users::session(&n.writer, &n.sessions, &o, &token))
            .await,
        Ok(Ok(Some(_)))
    )
}

/// Opens, checks and takes a token for an org hosted here; why not, in words for the log.
async fn take(web: &WebState, org: &OrgId, token: &str) -> Result<Opened, &'static str> {
    let now = now_ms();
    let key = web
        .node
        .state
        .hosted(org)
        .and_then(|h| h.data_key)
        .map(|k| HandoffKey::derive(&k))
        .ok_or("no key for the org here yet")?;
    let opened = handoff::open(&key, org, token, now).map_err(|r| r.as_str())?;
    let (n, o, t) = (web.node.clone(), org.clone(), opened.session.clone());
    match tokio::task::spawn_blocking(move || users::session(&n.writer, &n.sessions, &o, &t)).await
    {
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => return Err("its session has ended"),
        _ => return Err("its session cannot be checked now"),
    }
    web.handoffs.take(&opened, now).map_err(|r| r.as_str())?;
    Ok(opened)
}

/// The request with `hv_session` in its `Cookie` header standing for `token` (its other
/// cookies kept).
fn with_session_cookie(req: &mut Request, token: &str) {
    let mut pairs: Vec<String> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(SESSION_COOKIE))
        .map(str::to_string)
        .collect();
    pairs.push(format!("{SESSION_COOKIE}={token}"));
    let h = req.headers_mut();
    h.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&pairs.join("; ")) {
        h.insert(header::COOKIE, v);
    }
}

fn set_uri(req: &mut Request, path_and_query: &str) {
    if let Ok(uri) = path_and_query.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
}

/// Takes a hand-off on the org's (new) home before any handler runs; see the module doc.
pub(super) async fn accept_handoff(
    State(web): State<WebState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(token) = req
        .uri()
        .query()
        .and_then(|q| param(q, PARAM))
        .map(str::to_string)
    else {
        return next.run(req).await;
    };
    let Some(org) = org_in_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let node = &web.node;
    if route(&node.state, &node.config.id, &org) != Route::Local {
        // Not served here: sent on with the rest of the address; any home of the org opens it.
        return next.run(req).await;
    }
    let asked = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let clean = without(&asked, &[PARAM]);
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let own = cookie(req.headers(), SESSION_COOKIE).map(str::to_string);
    let signed_in = signed_in_here(&web, &org, own.clone()).await;
    match take(&web, &org, &token).await {
        Ok(opened) if signed_in && own.as_deref() != Some(opened.session.as_str()) => {
            // Signed in here already: that session stays, so a link carrying someone else's
            // hand-off cannot swap the session of a user who is signed in.
            tracing::info!(org = %org, "session hand-off ignored: signed in here already");
            if get {
                return see_other(&clean);
            }
            set_uri(&mut req, &clean);
            next.run(req).await
        }
        Ok(opened) => {
            tracing::info!(org = %org, "session handed off from the org's previous home");
            let cookie = auth::session_cookie(&node.public_url, &org, &opened.session);
            let mut resp = if get {
                see_other(&clean)
            } else {
                with_session_cookie(&mut req, &opened.session);
                set_uri(&mut req, &clean);
                req.extensions_mut().insert(HandedOff { from: opened.from });
                next.run(req).await
            };
            // A refused request (a form from another site, say) signs no browser in.
            if resp.status().as_u16() < 400 {
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            resp
        }
        Err(reason) => {
            tracing::info!(org = %org, reason, "session hand-off refused");
            let clean = if signed_in {
                clean
            } else {
                with(&without(&clean, &[MOVED_PARAM]), MOVED_PARAM, "1")
            };
            if get {
                return see_other(&clean);
            }
            set_uri(&mut req, &clean);
            next.run(req).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_org_is_read_from_the_path() {
        assert_eq!(org_in_path("/o/acme/contacts/1").unwrap().as_str(), "acme");
        for bad in ["/o/", "/o/BAD/", "/x/acme/", "/o/%ff/"] {
            assert!(org_in_path(bad).is_none(), "{bad}");
        }
    }
}
