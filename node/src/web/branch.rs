//! A branch's own page action: the "keep alive" button on its banner. The request goes to the
//! control plane (which owns the expiry and audits it, naming the user); the page comes back
//! once the new expiry has arrived, or says that it was asked for.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::check_csrf;
use super::context::{refuse, Authed};
use super::form::Form;

/// How long the button waits for the control plane's answer before it answers itself.
const WAIT: Duration = Duration::from_secs(3);

/// `POST /o/{org}/keepalive` (signed in, CSRF): 303 back to the branch's search page.
pub async fn keepalive(a: Authed, headers: HeaderMap, form: Result<Form, Response>) -> Response {
    let Form(fields) = match form {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if let Err(resp) = check_csrf(&a, &headers, &fields) {
        return resp;
    }
    let node = &a.ctx.node;
    let Some(before) = node.branches.label(&a.ctx.org) else {
        return refuse(
            a.ctx.wants_json,
            StatusCode::CONFLICT,
            "Not a branch",
            "This organization is no branch; it has no expiry to push out.",
        );
    };
    if !node.branches.ask_keepalive(&a.ctx.org, &a.session.email) {
        return refuse(
            a.ctx.wants_json,
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many keepalives are waiting; try again in a moment.",
        );
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let changed = node.branches.changed.notified();
        if node
            .branches
            .label(&a.ctx.org)
            .is_some_and(|l| l.expires_ms > before.expires_ms)
        {
            break;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            break;
        }
    }
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/o/{}/", a.ctx.org)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
