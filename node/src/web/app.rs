//! The org users' app: active search over the contact book, and adding and editing contacts.
//! Handlers only translate HTTP to the domain ([`crate::search`], [`crate::contacts`]) and back;
//! anything that blocks runs off the async runtime. Every write may carry an idempotency key
//! (the `Idempotency-Key` header, or the hidden field of the node's forms): a retry under the
//! same key is told the first answer, marked `Idempotent-Replayed: true`, and writes nothing.

use std::collections::HashMap;

use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hemvist_proto::HemvistError;

use super::auth::check_csrf;
use super::context::{refuse, Authed, OrgCtx};
use super::form::{Fields, Form};
use super::{error_response, pages};
use crate::contacts::{self, ContactInput};
use crate::idempotency::{Answer, Key, Once};
use crate::search;

type QueryResult = Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>;
type FormResult = Result<Form, Response>;

pub async fn org_root(ctx: OrgCtx) -> Response {
    let mut resp = StatusCode::PERMANENT_REDIRECT.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/o/{}/", ctx.org)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub async fn no_such_page(ctx: OrgCtx) -> Response {
    refuse(
        ctx.wants_json,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no page here.",
    )
}

fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HemvistError> + Send + 'static,
) -> Result<T, HemvistError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| HemvistError::internal("task failed"))?
}

/// `GET /o/{org}/?q=...&page=N`: the page, the results fragment (htmx), or JSON.
pub async fn search(a: Authed, query: QueryResult) -> Response {
    let json = a.ctx.wants_json;
    let Ok(Query(params)) = query else {
        return refuse(
            json,
            StatusCode::BAD_REQUEST,
            "Bad request",
            "the search parameters are malformed",
        );
    };
    let q = params.get("q").cloned().unwrap_or_default();
    let page = match params.get("page").map(|p| p.parse::<usize>()) {
        None => 0,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            return refuse(
                json,
                StatusCode::BAD_REQUEST,
                "Bad request",
                "page must be a number",
            )
        }
    };
    let started = std::time::Instant::now();
    let result = match search::search_ready(
        &a.ctx.node.tenants,
        &a.ctx.node.data_versions,
        &a.ctx.org,
        &q,
        page,
    ) {
        Some(answered) => answered,
        None => {
            let (n, o, q2) = (a.ctx.node.clone(), a.ctx.org.clone(), q.clone());
            blocking(move || search::search(&n.tenants, &n.data_versions, &o, &q2, page)).await
        }
    };
    a.ctx.node.metrics.searches.inc();
    a.ctx
        .node
        .metrics
        .search_seconds
        .inc_by(started.elapsed().as_secs_f64());
    let results = match result {
        Ok(r) => r,
        Err(e) if a.ctx.htmx && e.kind != hemvist_proto::ErrorKind::Internal => {
            let mut resp = pages::search_problem(&e.message);
            *resp.status_mut() = StatusCode::OK;
            return resp;
        }
        Err(e) => return error_response(json, &e),
    };
    if json {
        return Json(results).into_response();
    }
    if a.ctx.htmx {
        return pages::results_fragment(&a.ctx.org, &results);
    }
    let name = org_name(&a);
    pages::search_page(&a.ctx.org, &name, &a.session, &results)
}

fn org_name(a: &Authed) -> pages::Heading {
    pages::Heading {
        name: a
            .ctx
            .node
            .state
            .hosted(&a.ctx.org)
            .map(|h| h.name)
            .unwrap_or_else(|| a.ctx.org.to_string()),
        branch: a.ctx.node.branches.label(&a.ctx.org),
    }
}

fn input_from(fields: &Fields) -> ContactInput {
    let f = |k: &str| fields.get(k).cloned().unwrap_or_default();
    ContactInput {
        name: f("name"),
        email: f("email"),
        company: f("company"),
        city: f("city"),
        phone: f("phone"),
        notes: f("notes"),
    }
}

fn contact_id(a: &Authed, raw: &str) -> Result<i64, Response> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(refuse(
            a.ctx.wants_json,
            StatusCode::BAD_REQUEST,
            "Bad request",
            "not a contact id",
        )),
    }
}

/// The form again with every problem named (422), or the problems as JSON.
fn invalid_contact(
    a: &Authed,
    id: Option<i64>,
    input: &ContactInput,
    problems: &contacts::Problems,
) -> Response {
    if a.ctx.wants_json {
        let body = serde_json::json!({"error": {"kind": "invalid_argument", "fields": problems}});
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    let name = org_name(a);
    pages::contact_form(
        &a.ctx.org,
        &name,
        &a.session,
        id,
        input,
        problems,
        None,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
}

/// The header a client names its write's idempotency key in.
const KEY_HEADER: &str = "idempotency-key";

/// The write's idempotency key, from the header or the form's hidden field (the same key in
/// both is fine); none if neither is there: such a write goes ahead, not deduplicated.
fn idempotency_key(
    a: &Authed,
    headers: &HeaderMap,
    fields: &Fields,
) -> Result<Option<Key>, Response> {
    let bad = |message: &str| {
        refuse(
            a.ctx.wants_json,
            StatusCode::BAD_REQUEST,
            "Bad request",
            message,
        )
    };
    let mut given = Vec::new();
    for v in headers.get_all(KEY_HEADER) {
        given.push(
            v.to_str()
                .map_err(|_| bad("the Idempotency-Key header is not text"))?,
        );
    }
    if let Some(v) = fields.get(pages::IDEMPOTENCY_FIELD) {
        given.push(v.as_str());
    }
    let mut key: Option<Key> = None;
    for raw in given {
        let k = Key::parse(raw).map_err(|e| bad(&e.message))?;
        if key.as_ref().is_some_and(|seen| *seen != k) {
            return Err(bad("the request carries two different idempotency keys"));
        }
        key = Some(k);
    }
    Ok(key)
}

fn key_ttl_ms(a: &Authed) -> i64 {
    let secs = a.ctx.node.config.idempotency_ttl_secs;
    i64::try_from(secs.saturating_mul(1_000)).unwrap_or(i64::MAX)
}

/// A write's answer, the first time and on every retry under its key alike: JSON the status and
/// body, a form a 303 to the location.
fn answered(a: &Authed, once: Once<Answer>) -> Response {
    let (answer, replayed) = match once {
        Once::Written(answer) => (answer, false),
        Once::Replayed(answer) => (answer, true),
        Once::Reused => {
            let message = crate::idempotency::reused(&a.ctx.org);
            if a.ctx.wants_json {
                let body = serde_json::json!({
                    "error": {"kind": "idempotency_key_reused", "message": message}
                });
                return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
            }
            return pages::error(StatusCode::UNPROCESSABLE_ENTITY, "Already used", &message);
        }
    };
    let mut resp = if a.ctx.wants_json {
        let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            answer.body,
        )
            .into_response()
    } else {
        see_other(&format!("/o/{}/{}", a.ctx.org, answer.location))
    };
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// A write that failed. A browser's form that could not be confirmed (503: a `sync` write that
/// is committed but not yet in object storage, say) gets a page that posts the same fields
/// again, its idempotency key too, so trying again cannot add a second contact.
fn write_failed(
    a: &Authed,
    e: &HemvistError,
    keyed: bool,
    action: &str,
    fields: &Fields,
) -> Response {
    if keyed && !a.ctx.wants_json && e.kind == hemvist_proto::ErrorKind::Unavailable {
        return pages::try_again(action, fields, &e.message);
    }
    error_response(a.ctx.wants_json, e)
}

pub async fn new_contact(a: Authed) -> Response {
    let name = org_name(&a);
    pages::contact_form(
        &a.ctx.org,
        &name,
        &a.session,
        None,
        &ContactInput::default(),
        &Default::default(),
        None,
        StatusCode::OK,
    )
}

pub async fn create_contact(a: Authed, headers: HeaderMap, form: FormResult) -> Response {
    let Form(fields) = match form {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if let Err(resp) = check_csrf(&a, &headers, &fields) {
        return resp;
    }
    let key = match idempotency_key(&a, &headers, &fields) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let input = input_from(&fields);
    let clean = match contacts::validate(&input) {
        Ok(c) => c,
        Err(problems) => return invalid_contact(&a, None, &input, &problems),
    };
    let claim = key.as_ref().map(|k| {
        contacts::claim(
            k,
            key_ttl_ms(&a),
            a.session.user_id,
            "contacts.create",
            &clean,
        )
    });
    let (n, o) = (a.ctx.node.clone(), a.ctx.org.clone());
    match blocking(move || contacts::create(&n.writer, &o, &clean, claim.as_ref())).await {
        Ok(once) => answered(&a, once),
        Err(e) => {
            let action = format!("/o/{}/contacts", a.ctx.org);
            write_failed(&a, &e, key.is_some(), &action, &fields)
        }
    }
}

pub async fn show_contact(
    a: Authed,
    Path((_, raw)): Path<(String, String)>,
    query: QueryResult,
) -> Response {
    let id = match contact_id(&a, &raw) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let (n, o) = (a.ctx.node.clone(), a.ctx.org.clone());
    match blocking(move || contacts::get(&n.writer, &o, id)).await {
        Ok(c) if a.ctx.wants_json => Json(c).into_response(),
        Ok(c) => {
            let saved = query.ok().is_some_and(|Query(q)| q.contains_key("saved"));
            let name = org_name(&a);
            let notice = saved.then_some("Saved.");
            pages::contact_form(
                &a.ctx.org,
                &name,
                &a.session,
                Some(id),
                &c.fields,
                &Default::default(),
                notice,
                StatusCode::OK,
            )
        }
        Err(e) => error_response(a.ctx.wants_json, &e),
    }
}

pub async fn update_contact(
    a: Authed,
    Path((_, raw)): Path<(String, String)>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let id = match contact_id(&a, &raw) {
        Ok(id) => id,
        Err(resp) => return resp,
    };
    let Form(fields) = match form {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if let Err(resp) = check_csrf(&a, &headers, &fields) {
        return resp;
    }
    let key = match idempotency_key(&a, &headers, &fields) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let input = input_from(&fields);
    let clean = match contacts::validate(&input) {
        Ok(c) => c,
        Err(problems) => return invalid_contact(&a, Some(id), &input, &problems),
    };
    let route = format!("contacts.update/{id}");
    let claim = key
        .as_ref()
        .map(|k| contacts::claim(k, key_ttl_ms(&a), a.session.user_id, &route, &clean));
    let (n, o) = (a.ctx.node.clone(), a.ctx.org.clone());
    match blocking(move || contacts::update(&n.writer, &o, id, &clean, claim.as_ref())).await {
        Ok(once) => answered(&a, once),
        Err(e) => {
            let action = format!("/o/{}/contacts/{id}", a.ctx.org);
            write_failed(&a, &e, key.is_some(), &action, &fields)
        }
    }
}
