//! The operators' dashboard at the control plane's `/` (axum + maud + htmx, served from here,
//! nothing from a CDN): the fleet (regions' nodes, their health and lease, operations in
//! flight, live), orgs (search as you type), one org (placement, generation, schema, backup
//! lag, past locations, and a move that must be confirmed by typing the org's id), an
//! operation's progress (live until it ends), and the audit log by org. An adapter like the
//! admin API: every action is the same domain call the API makes, as the signed-in actor.
//!
//! Keeps true: every page needs a session (`session.rs`), every change a form carrying the
//! session's CSRF token from this origin; the pages load nothing from anywhere else (CSP).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use hemvist_proto::{HemvistError, OrgId};
use serde::Deserialize;
use serde_json::Value;

mod pages;
mod session;

use crate::plane::Plane;
use pages::{Chrome, Said};
use session::{Session, Sessions};

pub const HTMX_PATH: &str = "/static/htmx-2.0.11.min.js";
/// The nodes' copy of htmx (BSD-2-Clause, `node/static/htmx-LICENSE.txt`): one file in the tree.
static HTMX: &[u8] = include_bytes!("../../../node/static/htmx-2.0.11.min.js");
const COOKIE: &str = "hv_ops";
/// Org search answers at most this many rows.
const SEARCH_ROWS: usize = 25;

#[derive(Clone)]
struct Dash {
    plane: Arc<Plane>,
    sessions: Arc<Sessions>,
}

pub fn router(plane: Arc<Plane>) -> Router {
    let dash = Dash {
        plane,
        sessions: Arc::new(Sessions::default()),
    };
    Router::new()
        .route("/", get(fleet))
        .route("/signin", get(signin_page).post(signin))
        .route("/signout", post(signout))
        .route("/orgs", get(orgs))
        .route("/orgs/search", get(org_search))
        .route("/orgs/{id}", get(org))
        .route("/orgs/{id}/move", post(move_org))
        .route("/orgs/{id}/branches", post(create_branch))
        .route("/branches/{id}/keepalive", post(keepalive))
        .route("/operations/{id}/{action}", post(operation_action))
        .route("/operations", get(operations))
        .route("/operations/live", get(operations_live))
        .route("/operations/{id}", get(operation))
        .route("/operations/{id}/live", get(operation_live))
        .route("/audit", get(audit))
        .route(HTMX_PATH, get(htmx))
        .layer(middleware::from_fn(headers))
        .with_state(dash)
}

/// Every answer: nothing loaded from elsewhere, never framed, never cached.
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' \
             data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
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
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
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

/// Runs a domain call off the async threads (the store is SQLite).
async fn blocking<T: Send + 'static>(
    plane: &Arc<Plane>,
    f: impl FnOnce(&Plane) -> Result<T, HemvistError> + Send + 'static,
) -> Result<T, HemvistError> {
    let p = plane.clone();
    tokio::task::spawn_blocking(move || f(&p))
        .await
        .map_err(|e| HemvistError::internal(format!("dashboard task: {e}")))?
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The signed-in operator, or the answer that sends them to sign in. A session whose token
/// was revoked meanwhile ends here.
async fn signed_in(dash: &Dash, headers: &HeaderMap) -> Result<(String, Session), Box<Response>> {
    let found = cookie_of(headers).and_then(|c| dash.sessions.get(&c).map(|s| (c, s)));
    if let Some((cookie, session)) = found {
        let actor = session.actor.clone();
        match blocking(&dash.plane, move |p| p.actor_still_valid(&actor)).await {
            Ok(true) => return Ok((cookie, session)),
            Ok(false) => dash.sessions.remove(&cookie),
            Err(e) => {
                return Err(Box::new(
                    (StatusCode::SERVICE_UNAVAILABLE, e.message).into_response(),
                ))
            }
        }
    }
    if headers.contains_key("hx-request") {
        let mut resp = StatusCode::UNAUTHORIZED.into_response();
        resp.headers_mut()
            .insert("hx-redirect", HeaderValue::from_static("/signin"));
        return Err(Box::new(resp));
    }
    Err(Box::new(Redirect::to("/signin").into_response()))
}

/// Whether the request comes from a page of another site (a browser says so).
fn cross_site(headers: &HeaderMap) -> bool {
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s != "same-origin" && s != "none");
    let origin_ok = match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest == host),
        _ => true,
    };
    site || !origin_ok
}

/// A change must come from this origin's page, with the session's CSRF token.
fn check_form(headers: &HeaderMap, session: &Session, csrf: &str) -> Result<(), Box<Response>> {
    if cross_site(headers) || !crate::auth::tokens_equal(csrf, &session.csrf) {
        return Err(Box::new(page(
            StatusCode::FORBIDDEN,
            "Refused",
            None,
            pages::not_found(
                "This form did not come from this dashboard's page (or its session changed): \
                 nothing was done. Reload the page and try again.",
            ),
        )));
    }
    Ok(())
}

fn page(
    status: StatusCode,
    title: &str,
    chrome: Option<&Chrome<'_>>,
    body: maud::Markup,
) -> Response {
    (status, Html(pages::layout(title, chrome, body))).into_response()
}

/// The HTTP status of a domain error, as the API answers it.
fn status_of(e: &HemvistError) -> StatusCode {
    StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn error_page(e: &HemvistError, chrome: &Chrome<'_>) -> Response {
    let status = status_of(e);
    page(status, "Error", Some(chrome), pages::not_found(&e.message))
}

async fn signin_page(State(dash): State<Dash>, headers: HeaderMap) -> Response {
    if signed_in(&dash, &headers).await.is_ok() {
        return Redirect::to("/").into_response();
    }
    page(StatusCode::OK, "Sign in", None, pages::signin(None))
}

#[derive(Deserialize)]
struct SigninForm {
    #[serde(default)]
    token: String,
}

async fn signin(
    State(dash): State<Dash>,
    headers: HeaderMap,
    form: Result<Form<SigninForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    // Another site's page may not sign a browser in (to a session of its choosing).
    if cross_site(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            "Sign in",
            None,
            pages::signin(Some("Sign in from this dashboard's own page.")),
        );
    }
    let token = form.map(|Form(f)| f.token).unwrap_or_default();
    let plane = dash.plane.clone();
    let actor = blocking(&plane, move |p| p.authenticate(token.trim())).await;
    let actor = match actor {
        Ok(Some(actor)) => actor,
        Ok(None) => {
            dash.plane.metrics.api_unauthorized.inc();
            return page(
                StatusCode::UNAUTHORIZED,
                "Sign in",
                None,
                pages::signin(Some("That is not a token this control plane knows.")),
            );
        }
        Err(e) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign in",
                None,
                pages::signin(Some(&e.message)),
            )
        }
    };
    let (cookie, _) = match dash.sessions.create(&actor) {
        Ok(s) => s,
        Err(e) => {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign in",
                None,
                pages::signin(Some(&e.message)),
            )
        }
    };
    let who = actor.clone();
    if let Err(e) = blocking(&plane, move |p| {
        Ok(p.store
            .audit(&who, "dashboard.signed_in", None, &serde_json::json!({}))?)
    })
    .await
    {
        tracing::warn!(error = %e, "could not audit a dashboard sign-in");
    }
    tracing::info!(%actor, "signed in to the dashboard");
    // Served over TLS here, or behind a proxy that terminates it and says so.
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let secure = if dash.plane.config.tls.is_some() || forwarded_https {
        "; Secure"
    } else {
        ""
    };
    let set = format!(
        "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        session::SESSION_MS / 1000
    );
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn signout(
    State(dash): State<Dash>,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let (cookie, session) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Err(r) = check_form(&headers, &session, &csrf) {
        return *r;
    }
    dash.sessions.remove(&cookie);
    let mut resp = Redirect::to("/signin").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("hv_ops=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

/// The open operations, then the newest finished ones, as the API shows them.
fn operations_list(p: &Plane, finished: usize) -> Result<Vec<Value>, HemvistError> {
    let all = p.operations()?;
    let mut open: Vec<Value> = Vec::new();
    let mut ended: Vec<Value> = Vec::new();
    for op in all.iter().rev() {
        let v = serde_json::to_value(op).map_err(|e| HemvistError::internal(e.to_string()))?;
        if op.finished_ms.is_none() {
            open.push(v);
        } else if ended.len() < finished {
            ended.push(v);
        }
    }
    open.extend(ended);
    Ok(open)
}

async fn fleet(State(dash): State<Dash>, headers: HeaderMap) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    let data = blocking(&dash.plane, |p| {
        let counts: std::collections::HashMap<_, _> =
            p.store.tenants_per_node()?.into_iter().collect();
        let draining = p.store.draining_nodes()?;
        let lags = p.replication.lag_by_node();
        let nodes: Vec<pages::NodeRow> = p
            .store
            .nodes()?
            .into_iter()
            .map(|n| {
                let session = p.nodes.session(&n.id);
                pages::NodeRow {
                    healthy: session.healthy,
                    lease_remaining_ms: session.lease_remaining_ms,
                    tenants: counts.get(&n.id).copied().unwrap_or(0),
                    draining: draining.contains_key(&n.id),
                    id: n.id.to_string(),
                    region: n.region.to_string(),
                    capacity: n.capacity,
                    last_seen_ms: n.last_seen_ms,
                    disk: p.node_disk(&n.id).map(|d| (d.free_bytes, d.low)),
                    backup_lag_ms: lags.get(&n.id).copied(),
                    version: n.version,
                }
            })
            .collect();
        let open: Vec<Value> = operations_list(p, 0)?;
        Ok((nodes, open))
    })
    .await;
    match data {
        Ok((nodes, open)) => page(
            StatusCode::OK,
            "Fleet",
            Some(&chrome),
            pages::fleet(&nodes, &open),
        ),
        Err(e) => error_page(&e, &chrome),
    }
}

async fn operations(State(dash): State<Dash>, headers: HeaderMap) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    match blocking(&dash.plane, |p| operations_list(p, 50)).await {
        Ok(ops) => page(
            StatusCode::OK,
            "Operations",
            Some(&chrome),
            maud::html! {
                h1 { "Operations" }
                div hx-get="/operations/live?finished=50" hx-trigger="every 2s" hx-swap="innerHTML" {
                    (pages::operations_table(&ops))
                }
            },
        ),
        Err(e) => error_page(&e, &chrome),
    }
}

#[derive(Deserialize)]
struct LiveQuery {
    #[serde(default)]
    finished: Option<usize>,
}

async fn operations_live(
    State(dash): State<Dash>,
    headers: HeaderMap,
    q: Result<Query<LiveQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = signed_in(&dash, &headers).await {
        return *r;
    }
    let finished = q.ok().and_then(|Query(q)| q.finished).unwrap_or(0).min(200);
    match blocking(&dash.plane, move |p| operations_list(p, finished)).await {
        Ok(ops) => Html(pages::operations_table(&ops).into_string()).into_response(),
        Err(e) => (status_of(&e), e.message).into_response(),
    }
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
    /// With no search text: the page of the list after this org id.
    #[serde(default)]
    after: Option<String>,
}

/// The orgs a search finds or, with no text, a page of the list by id; and the cursor of the
/// list's next page, if there may be one.
async fn search(dash: &Dash, q: SearchQuery) -> Result<(Vec<Value>, Option<String>), HemvistError> {
    blocking(&dash.plane, move |p| {
        let listing = q.q.trim().is_empty();
        let found = if listing {
            let after = q.after.as_deref().map(OrgId::parse).transpose()?;
            p.list_orgs(after.as_ref(), SEARCH_ROWS)?
        } else {
            p.search_orgs(&q.q, SEARCH_ROWS)?
        };
        let next = found
            .last()
            .filter(|_| listing && found.len() == SEARCH_ROWS)
            .map(|o| o.id.to_string());
        let rows = serde_json::to_value(found)
            .map_err(|e| HemvistError::internal(e.to_string()))?
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok((rows, next))
    })
    .await
}

async fn orgs(
    State(dash): State<Dash>,
    headers: HeaderMap,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    let q = q.map(|Query(q)| q).unwrap_or(SearchQuery {
        q: String::new(),
        after: None,
    });
    let text = q.q.clone();
    match search(&dash, q).await {
        Ok((found, next)) => page(
            StatusCode::OK,
            "Orgs",
            Some(&chrome),
            pages::orgs(&text, pages::org_rows(&found, next.as_deref())),
        ),
        Err(e) => error_page(&e, &chrome),
    }
}

async fn org_search(
    State(dash): State<Dash>,
    headers: HeaderMap,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = signed_in(&dash, &headers).await {
        return *r;
    }
    let q = q.map(|Query(q)| q).unwrap_or(SearchQuery {
        q: String::new(),
        after: None,
    });
    match search(&dash, q).await {
        Ok((found, next)) => {
            Html(pages::org_rows(&found, next.as_deref()).into_string()).into_response()
        }
        Err(e) => (status_of(&e), e.message).into_response(),
    }
}

/// The org's page: its detail, the regions a move may go to (its policy's, home last) and its
/// branches, with what the last action said.
async fn org_page(
    dash: &Dash,
    id: String,
    chrome: &Chrome<'_>,
    status: StatusCode,
    said: Said<'_>,
) -> Response {
    let shown = blocking(&dash.plane, move |p| {
        let detail = p.show_org(&id)?;
        let home = detail.org.home_region.clone();
        let mut regions: Vec<String> = detail
            .org
            .allowed_regions
            .iter()
            .filter(|r| **r != home)
            .map(|r| r.to_string())
            .collect();
        regions.push(home.to_string());
        let branches = if detail.org.id.is_branch() {
            Vec::new()
        } else {
            p.list_branches(Some(detail.org.id.as_str()))?
        };
        let v = serde_json::to_value(detail).map_err(|e| HemvistError::internal(e.to_string()))?;
        let b =
            serde_json::to_value(branches).map_err(|e| HemvistError::internal(e.to_string()))?;
        Ok((v, regions, b.as_array().cloned().unwrap_or_default()))
    })
    .await;
    match shown {
        Ok((detail, regions, branches)) => page(
            status,
            detail["name"].as_str().unwrap_or("Org"),
            Some(chrome),
            pages::org(&detail, &regions, &branches, chrome, said),
        ),
        Err(e) => error_page(&e, chrome),
    }
}

async fn org(State(dash): State<Dash>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    org_page(&dash, id, &chrome, StatusCode::OK, Said::Nothing).await
}

#[derive(Deserialize)]
struct MoveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    confirm: String,
}

async fn move_org(
    State(dash): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<MoveForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    let Ok(Form(form)) = form else {
        return org_page(
            &dash,
            id,
            &chrome,
            StatusCode::BAD_REQUEST,
            Said::Error("The move form was incomplete; nothing was done."),
        )
        .await;
    };
    if let Err(r) = check_form(&headers, &s, &form.csrf) {
        return *r;
    }
    if OrgId::parse(&id).is_err() || form.confirm.trim() != id {
        return org_page(
            &dash,
            id,
            &chrome,
            StatusCode::BAD_REQUEST,
            Said::Error("To confirm, type the org's id exactly; nothing was done."),
        )
        .await;
    }
    let actor = s.actor.clone();
    let req = crate::operations::move_org::MoveRequest {
        to: form.to,
        node: None,
        reason: Some("from the dashboard".to_string()),
    };
    let org = id.clone();
    match blocking(&dash.plane, move |p| p.request_move(&org, req, &actor)).await {
        Ok(op) => Redirect::to(&format!("/operations/{}", op.id)).into_response(),
        Err(e) => {
            let status = status_of(&e);
            let message = format!("The move was refused: {}", e.message);
            org_page(&dash, id, &chrome, status, Said::Error(&message)).await
        }
    }
}

#[derive(Deserialize)]
struct BranchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    confirm: String,
}

/// A branch of the org, confirmed by typing the org's id: on to the operation making it.
async fn create_branch(
    State(dash): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<BranchForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    let Ok(Form(form)) = form else {
        return org_page(
            &dash,
            id,
            &chrome,
            StatusCode::BAD_REQUEST,
            Said::Error("The branch form was incomplete; nothing was done."),
        )
        .await;
    };
    if let Err(r) = check_form(&headers, &s, &form.csrf) {
        return *r;
    }
    if form.confirm.trim() != id {
        return org_page(
            &dash,
            id,
            &chrome,
            StatusCode::BAD_REQUEST,
            Said::Error("To confirm, type the org's id exactly; nothing was done."),
        )
        .await;
    }
    let req = crate::operations::branch::BranchRequest {
        name: form.name.trim().to_string(),
        ttl_ms: None,
        at_ms: None,
        mask: None,
        region: None,
        users: None,
        keepalive_on_use: false,
    };
    let (actor, org) = (s.actor.clone(), id.clone());
    match blocking(&dash.plane, move |p| p.request_branch(&org, req, &actor)).await {
        Ok(op) => Redirect::to(&format!("/operations/{}", op.id)).into_response(),
        Err(e) => {
            let status = status_of(&e);
            let message = format!("The branch was refused: {}", e.message);
            org_page(&dash, id, &chrome, status, Said::Error(&message)).await
        }
    }
}

/// A branch kept alive for its TTL from now, confirmed by typing the branch's id.
async fn keepalive(
    State(dash): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ConfirmForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    let form = form.map(|Form(f)| f).unwrap_or_default();
    if let Err(r) = check_form(&headers, &s, &form.csrf) {
        return *r;
    }
    let Ok(branch) = OrgId::parse(&id) else {
        return error_page(
            &HemvistError::invalid(format!("{id:?} is not a branch id")),
            &chrome,
        );
    };
    let parent = branch
        .parent()
        .map(|p| p.to_string())
        .unwrap_or_else(|| id.clone());
    if form.confirm.trim() != id {
        return org_page(
            &dash,
            parent,
            &chrome,
            StatusCode::BAD_REQUEST,
            Said::Error("To confirm, type the branch's id exactly; nothing was done."),
        )
        .await;
    }
    let actor = s.actor.clone();
    match blocking(&dash.plane, move |p| {
        p.keep_branch_alive(&id, None, &actor, "asked from the dashboard")
    })
    .await
    {
        Ok(kept) => {
            let notice = format!(
                "Kept alive: {} now expires at {}.",
                kept.branch.id,
                pages::time(Some(kept.branch.expires_ms))
            );
            org_page(
                &dash,
                parent,
                &chrome,
                StatusCode::OK,
                Said::Notice(&notice),
            )
            .await
        }
        Err(e) => {
            let status = status_of(&e);
            org_page(
                &dash,
                parent,
                &chrome,
                status,
                Said::Error(&format!("Not kept alive: {}", e.message)),
            )
            .await
        }
    }
}

#[derive(Default, Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
}

/// Cancel any open operation, pause or resume a rollout: confirmed by typing its org's id (a
/// fleet operation's own id).
async fn operation_action(
    State(dash): State<Dash>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    form: Result<Form<ConfirmForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    let form = form.map(|Form(f)| f).unwrap_or_default();
    if let Err(r) = check_form(&headers, &s, &form.csrf) {
        return *r;
    }
    if !matches!(action.as_str(), "cancel" | "pause" | "resume") {
        return error_page(
            &HemvistError::not_found(format!("no action {action:?}")),
            &chrome,
        );
    }
    let view = match operation_view(&dash, id.clone()).await {
        Ok(v) => v,
        Err(e) => return error_page(&e, &chrome),
    };
    let expected = view["org"].as_str().unwrap_or(&id).to_string();
    if form.confirm.trim() != expected {
        let why = HemvistError::invalid(format!(
            "To confirm, type {expected} exactly; nothing was done."
        ));
        return error_page(&why, &chrome);
    }
    let actor = s.actor.clone();
    let op = id.clone();
    let done = blocking(&dash.plane, move |p| match action.as_str() {
        "pause" => p.pause_rollout(&op, &actor),
        "resume" => p.resume_rollout(&op, None, &actor),
        _ => p.cancel_operation(&op, &actor),
    })
    .await;
    match done {
        Ok(_) => Redirect::to(&format!("/operations/{id}")).into_response(),
        Err(e) => error_page(&e, &chrome),
    }
}

fn operation_id(id: &str) -> Result<(), HemvistError> {
    if id.is_empty()
        || id.len() > 128
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(HemvistError::invalid(
            "an operation id is letters, digits and '-'",
        ));
    }
    Ok(())
}

async fn operation_view(dash: &Dash, id: String) -> Result<Value, HemvistError> {
    operation_id(&id)?;
    blocking(&dash.plane, move |p| p.operation_view(&id)).await
}

async fn operation(
    State(dash): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    match operation_view(&dash, id).await {
        Ok(view) => page(
            StatusCode::OK,
            "Operation",
            Some(&chrome),
            maud::html! {
                h1 { "Operation " code { (view["id"].as_str().unwrap_or_default()) } }
                (pages::operation(&view))
                (pages::operation_actions(&view, &chrome))
            },
        ),
        Err(e) => error_page(&e, &chrome),
    }
}

async fn operation_live(
    State(dash): State<Dash>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = signed_in(&dash, &headers).await {
        return *r;
    }
    match operation_view(&dash, id).await {
        Ok(view) => Html(pages::operation(&view).into_string()).into_response(),
        Err(e) => (status_of(&e), e.message).into_response(),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    org: String,
    /// What was done, or how it starts (`move.` for every phase of every move).
    #[serde(default)]
    action: String,
}

async fn audit(
    State(dash): State<Dash>,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let (_, s) = match signed_in(&dash, &headers).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let chrome = Chrome::of(&s);
    let (org, action) = q
        .map(|Query(q)| (q.org.trim().to_string(), q.action.trim().to_string()))
        .unwrap_or_default();
    let (filter, wanted) = (org.clone(), action.clone());
    let entries = blocking(&dash.plane, move |p| {
        let mut entries = if filter.is_empty() {
            // The newest entries of the fleet, enough to find 200 of one action among them.
            p.store
                .audit_recent(if wanted.is_empty() { 200 } else { 10_000 })?
        } else {
            let id = OrgId::parse(&filter)?;
            p.store
                .audit_recent_of(&id, if wanted.is_empty() { 200 } else { 10_000 })?
        };
        entries.retain(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with(wanted.as_str()))
        });
        entries.reverse();
        entries.truncate(200);
        Ok(entries)
    })
    .await;
    match entries {
        Ok(entries) => page(
            StatusCode::OK,
            "Audit",
            Some(&chrome),
            pages::audit(&org, &action, &entries),
        ),
        Err(e) => error_page(&e, &chrome),
    }
}
