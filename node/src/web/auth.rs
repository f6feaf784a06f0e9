//! Sign-in and sign-out. The sign-in form is protected by a double-submit token (cookie and
//! field must match); signed-in forms carry the session's own CSRF token.

use std::collections::HashMap;

use axum::extract::{Form, Query};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::context::{cookie, Authed, OrgCtx, SESSION_COOKIE};
use super::{error_response, pages};
use crate::users;

const SIGNIN_CSRF: &str = "hv_signin";

type FormResult = Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>;

/// The form fields, or the right 4xx for a body that is too large or not a form.
pub(super) fn form_fields(
    json: bool,
    form: FormResult,
) -> Result<HashMap<String, String>, Response> {
    form.map(|Form(f)| f).map_err(|e| {
        let status = e.status();
        super::context::refuse(json, status, "Bad request", &e.body_text())
    })
}

fn secure(ctx: &OrgCtx) -> &'static str {
    if ctx.node.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

fn safe_next(ctx: &OrgCtx, next: Option<&String>) -> String {
    let home = format!("/o/{}/", ctx.org);
    match next {
        Some(n) if n.starts_with(&home) && !n.contains("//") && !n.contains('\\') => n.clone(),
        _ => home,
    }
}

pub async fn form(ctx: OrgCtx, Query(q): Query<HashMap<String, String>>) -> Response {
    let csrf = match hemvist_proto::random::hex(16) {
        Ok(t) => t,
        Err(e) => return error_response(false, &e),
    };
    let next = safe_next(&ctx, q.get("next"));
    let mut resp = pages::sign_in(
        &ctx.org,
        &ctx.node
            .state
            .hosted(&ctx.org)
            .map(|h| h.name)
            .unwrap_or_default(),
        &csrf,
        &next,
        None,
    );
    set_cookie(
        &mut resp,
        &format!(
            "{SIGNIN_CSRF}={csrf}; Path=/o/{}/signin; HttpOnly; SameSite=Strict; Max-Age=3600{}",
            ctx.org,
            secure(&ctx)
        ),
    );
    resp
}

fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

pub async fn sign_in(ctx: OrgCtx, headers: HeaderMap, form: FormResult) -> Response {
    let fields = match form_fields(ctx.wants_json, form) {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let expected = cookie(&headers, SIGNIN_CSRF).unwrap_or("");
    if expected.is_empty() || expected != field("_csrf") {
        ctx.node.metrics.csrf_refused.inc();
        return super::context::refuse(
            ctx.wants_json,
            StatusCode::FORBIDDEN,
            "Forbidden",
            "the sign-in form has expired or did not come from this site; reload it and try again",
        );
    }
    let (email, password) = (field("email"), field("password"));
    if email.len() > 254 || password.len() > 1024 {
        return super::context::refuse(
            ctx.wants_json,
            StatusCode::BAD_REQUEST,
            "Bad request",
            "email or password too long",
        );
    }
    let (n, o) = (ctx.node.clone(), ctx.org.clone());
    let result =
        tokio::task::spawn_blocking(move || users::sign_in(&n.writer, &o, &email, &password)).await;
    let next = safe_next(&ctx, fields.get("next"));
    match result {
        Ok(Ok((token, _csrf))) => {
            let mut resp = StatusCode::SEE_OTHER.into_response();
            if let Ok(v) = HeaderValue::from_str(&next) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            set_cookie(
                &mut resp,
                &format!(
                    "{SESSION_COOKIE}={token}; Path=/o/{}/; HttpOnly; SameSite=Lax; Max-Age={}{}",
                    ctx.org,
                    users::SESSION_TTL_MS / 1000,
                    secure(&ctx)
                ),
            );
            resp
        }
        Ok(Err(e)) if e.kind == hemvist_proto::ErrorKind::Unauthenticated => {
            let name = ctx
                .node
                .state
                .hosted(&ctx.org)
                .map(|h| h.name)
                .unwrap_or_default();
            let mut resp = pages::sign_in(&ctx.org, &name, expected, &next, Some(&e.message));
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            resp
        }
        Ok(Err(e)) => error_response(ctx.wants_json, &e),
        Err(_) => error_response(
            ctx.wants_json,
            &hemvist_proto::HemvistError::internal("sign-in task failed"),
        ),
    }
}

pub async fn sign_out(a: Authed, headers: HeaderMap, form: FormResult) -> Response {
    let fields = match form_fields(a.ctx.wants_json, form) {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if let Err(resp) = check_csrf(&a, &headers, &fields) {
        return resp;
    }
    let (n, o, t) = (a.ctx.node.clone(), a.ctx.org.clone(), a.token.clone());
    let _ =
        tokio::task::spawn_blocking(move || users::sign_out(&n.writer, &n.sessions, &o, &t)).await;
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/o/{}/signin", a.ctx.org)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    set_cookie(
        &mut resp,
        &format!(
            "{SESSION_COOKIE}=; Path=/o/{}/; HttpOnly; SameSite=Lax; Max-Age=0",
            a.ctx.org
        ),
    );
    resp
}

/// A state-changing request must carry the session's CSRF token (form field or header).
pub(super) fn check_csrf(
    a: &Authed,
    headers: &HeaderMap,
    fields: &HashMap<String, String>,
) -> Result<(), Response> {
    let presented = fields
        .get("_csrf")
        .map(String::as_str)
        .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    if !presented.is_empty() && presented == a.session.csrf {
        return Ok(());
    }
    a.ctx.node.metrics.csrf_refused.inc();
    Err(super::context::refuse(
        a.ctx.wants_json,
        StatusCode::FORBIDDEN,
        "Forbidden",
        "this form did not come from this site (CSRF check failed); reload the page and try again",
    ))
}
