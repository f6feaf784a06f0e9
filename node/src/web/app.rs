//! The org users' app: active search over the contact book, and adding and editing contacts.
//! Handlers only translate HTTP to the domain ([`crate::search`], [`crate::contacts`]) and back;
//! anything that blocks runs off the async runtime.

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

fn org_name(a: &Authed) -> String {
    a.ctx
        .node
        .state
        .hosted(&a.ctx.org)
        .map(|h| h.name)
        .unwrap_or_else(|| a.ctx.org.to_string())
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
    let input = input_from(&fields);
    let clean = match contacts::validate(&input) {
        Ok(c) => c,
        Err(problems) => return invalid_contact(&a, None, &input, &problems),
    };
    let (n, o) = (a.ctx.node.clone(), a.ctx.org.clone());
    match blocking(move || contacts::create(&n.writer, &o, &clean)).await {
        Ok(id) if a.ctx.wants_json => {
            (StatusCode::CREATED, Json(serde_json::json!({"id": id}))).into_response()
        }
        Ok(id) => see_other(&format!("/o/{}/contacts/{id}?saved=1", a.ctx.org)),
        Err(e) => error_response(a.ctx.wants_json, &e),
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
    let input = input_from(&fields);
    let clean = match contacts::validate(&input) {
        Ok(c) => c,
        Err(problems) => return invalid_contact(&a, Some(id), &input, &problems),
    };
    let (n, o) = (a.ctx.node.clone(), a.ctx.org.clone());
    match blocking(move || contacts::update(&n.writer, &o, id, &clean)).await {
        Ok(()) if a.ctx.wants_json => Json(serde_json::json!({"id": id})).into_response(),
        Ok(()) => see_other(&format!("/o/{}/contacts/{id}?saved=1", a.ctx.org)),
        Err(e) => error_response(a.ctx.wants_json, &e),
    }
}
