//! Sign-in and sign-out, and the checks every form post passes: it comes from this node's own
//! pages (`Origin`, see [`super::origin`]) and carries a token. The sign-in form's token is
//! signed by this process and used once ([`super::tokens`]); signed-in forms carry the session's
//! own CSRF token. A sign-in attempt is throttled, then admitted to the password pool, or told
//! to come back (429 with `Retry-After`) before anything costly happens ([`super::signin`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hemvist_proto::{HemvistError, OrgId};
use subtle::ConstantTimeEq;

use super::context::{cookie, refuse, Authed, OrgCtx, SESSION_COOKIE};
use super::form::{Fields, Form};
use super::handoff::MOVED_PARAM;
use super::signin::{self, Signin};
use super::tokens::Refused;
use super::{error_response, origin, pages};
use crate::clock::now_ms;
use crate::users;

const SIGNIN_CSRF: &str = "hv_signin";

fn secure(ctx: &OrgCtx) -> &'static str {
    secure_for(&ctx.node.public_url)
}

fn secure_for(public_url: &str) -> &'static str {
    if public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// The `Set-Cookie` value that signs a browser in to `org` on the node at `public_url`: the same
/// at sign-in and when a session is handed over from the org's old home.
pub(super) fn session_cookie(public_url: &str, org: &OrgId, token: &str) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/o/{org}/; HttpOnly; SameSite=Lax; Max-Age={}{}",
        users::SESSION_TTL_MS / 1000,
        secure_for(public_url)
    )
}

/// Where to go after signing in: `next` if it is a plain path under the org, else the org's
/// root. Control characters, backslashes, `//`, dot segments (also `%2e%2e`) and escaped
/// slashes are refused outright rather than cleaned, so the answer always has a `Location`.
pub(super) fn safe_next(ctx: &OrgCtx, next: Option<&String>) -> String {
    let home = format!("/o/{}/", ctx.org);
    match next {
        Some(n) if is_safe_next(&home, n) => n.clone(),
        _ => home,
    }
}

fn is_safe_next(home: &str, next: &str) -> bool {
    if !next.starts_with(home) || next.contains("//") || next.contains('\\') {
        return false;
    }
    // Printable ASCII only: no control character, space or raw non-ASCII byte; a valid header.
    if !next.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let path = next.split(['?', '#']).next().unwrap_or_default();
    path.split('/').all(|segment| {
        let decoded = percent_encoding::percent_decode_str(segment).collect::<Vec<u8>>();
        !matches!(&decoded[..], b"." | b"..")
            && !decoded
                .iter()
                .any(|b| matches!(b, b'/' | b'\\') || !b.is_ascii_graphic() && b.is_ascii())
    })
}

fn signin_state(ctx: &OrgCtx, signin: Option<Arc<Signin>>) -> Result<Arc<Signin>, Response> {
    signin.ok_or_else(|| {
        error_response(
            ctx.wants_json,
            &HemvistError::new(
                hemvist_proto::ErrorKind::Unavailable,
                "signing in is unavailable on this server",
            ),
        )
    })
}

fn org_name(ctx: &OrgCtx) -> pages::Heading {
    pages::Heading {
        name: ctx
            .node
            .state
            .hosted(&ctx.org)
            .map(|h| h.name)
            .unwrap_or_default(),
        branch: ctx.node.branches.label(&ctx.org),
    }
}

/// The sign-in form with a fresh token in its field and its cookie.
fn form_page(
    ctx: &OrgCtx,
    signin: &Signin,
    next: &str,
    notice: Option<&str>,
    problem: Option<&str>,
    status: StatusCode,
) -> Response {
    let token = match signin.tokens.issue(&ctx.org, now_ms()) {
        Ok(t) => t,
        Err(e) => return error_response(ctx.wants_json, &e),
    };
    let mut resp = pages::sign_in(&ctx.org, &org_name(ctx), &token, next, notice, problem);
    *resp.status_mut() = status;
    set_cookie(
        &mut resp,
        &format!(
            "{SIGNIN_CSRF}={token}; Path=/o/{}/signin; HttpOnly; SameSite=Strict; Max-Age={}{}",
            ctx.org,
            signin.form_ttl_secs,
            secure(ctx)
        ),
    );
    resp
}

pub async fn form(
    ctx: OrgCtx,
    State(signin): State<Option<Arc<Signin>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let signin = match signin_state(&ctx, signin) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let next = safe_next(&ctx, q.get("next"));
    // Sent here from the org's old home without the session: say why signing in again.
    let notice =
        (q.get(MOVED_PARAM).map(String::as_str) == Some("1")).then_some(pages::MOVED_NOTICE);
    form_page(&ctx, &signin, &next, notice, None, StatusCode::OK)
}

fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn see_other(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn forbidden_form(ctx: &OrgCtx) -> Response {
    ctx.node.metrics.csrf_refused.inc();
    refuse(
        ctx.wants_json,
        StatusCode::FORBIDDEN,
        "Forbidden",
        "the sign-in form has expired or did not come from this site; reload it and try again",
    )
}

fn too_many(ctx: &OrgCtx, retry_after: Duration, message: &str) -> Response {
    let mut resp = refuse(
        ctx.wants_json,
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        message,
    );
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// The failure budgets an attempt was charged to; given back unless the attempt failed.
struct Charged<'a> {
    signin: &'a Signin,
    account: [u8; 16],
    address: [u8; 16],
    failed: bool,
}

impl Drop for Charged<'_> {
    fn drop(&mut self) {
        if !self.failed {
            self.signin.accounts.refund(&self.account);
            self.signin.addresses.refund(&self.address);
        }
    }
}

pub async fn sign_in(
    ctx: OrgCtx,
    State(signin): State<Option<Arc<Signin>>>,
    headers: HeaderMap,
    form: Result<Form, Response>,
) -> Response {
    let Form(fields) = match form {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let signin = match signin_state(&ctx, signin) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if let Err(resp) = check_origin(&ctx, &headers) {
        return resp;
    }
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let presented = field("_csrf");
    if cookie(&headers, SIGNIN_CSRF) != Some(presented.as_str()) {
        return forbidden_form(&ctx);
    }
    let Ok(token) = signin.tokens.check(&ctx.org, &presented, now_ms()) else {
        return forbidden_form(&ctx);
    };
    let (email, password) = (field("email"), field("password"));
    if email.len() > 254 || password.len() > 1024 {
        return refuse(
            ctx.wants_json,
            StatusCode::BAD_REQUEST,
            "Bad request",
            "email or password too long",
        );
    }
    let next = safe_next(&ctx, fields.get("next"));
    let client = ctx.client.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let account = signin.account(&ctx.org, &email);
    let tag = signin::tag(&account);
    let now = Instant::now();
    let address = signin::address(client);
    // The address first: an attempt it refuses must not make an entry for its (perhaps made-up)
    // account, or a flood of them could push a real account's failures out of memory.
    if let Err(t) = signin.addresses.charge(&address, now) {
        ctx.node.metrics.signin_throttled.inc();
        if t.first {
            tracing::warn!(org = %ctx.org, client = %client,
                "sign-in throttled: too many failures from this address");
        }
        return too_many(
            &ctx,
            t.retry_after,
            "too many failed sign-ins from your address; wait a moment and try again",
        );
    }
    if let Err(t) = signin.accounts.charge(&account, now) {
        signin.addresses.refund(&address);
        ctx.node.metrics.signin_throttled.inc();
        if t.first {
            tracing::warn!(org = %ctx.org, client = %client, account = %tag,
                "sign-in throttled: too many failures for this account");
        }
        return too_many(
            &ctx,
            t.retry_after,
            "too many failed sign-ins for this account; wait a moment and try again",
        );
    }
    let mut charged = Charged {
        signin: &signin,
        account,
        address,
        failed: false,
    };
    let Ok(admitted) = signin.checker.admit() else {
        ctx.node.metrics.signin_rejected_busy.inc();
        if signin.log_busy_now(now_ms()) {
            tracing::warn!(org = %ctx.org, client = %client,
                "sign-in refused: every password check is taken");
        }
        return too_many(
            &ctx,
            Duration::from_secs(1),
            "the server is busy signing people in; try again in a moment",
        );
    };
    match signin.tokens.consume(token, now_ms()) {
        Ok(()) => {}
        Err(Refused::Full) => {
            ctx.node.metrics.signin_rejected_busy.inc();
            return too_many(
                &ctx,
                Duration::from_secs(1),
                "the server is busy signing people in; try again in a moment",
            );
        }
        Err(_) => return forbidden_form(&ctx),
    }
    let (n, o, e) = (ctx.node.clone(), ctx.org.clone(), email.clone());
    let found = match tokio::task::spawn_blocking(move || users::find_user(&n.writer, &o, &e)).await
    {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return error_response(ctx.wants_json, &e),
        Err(_) => {
            return error_response(
                ctx.wants_json,
                &HemvistError::internal("sign-in task failed"),
            )
        }
    };
    let user_id = match users::check_password(admitted, found, password).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            charged.failed = true;
            ctx.node.metrics.signin_failures.inc();
            tracing::warn!(org = %ctx.org, client = %client, account = %tag,
                "sign-in failed: wrong email or password");
            return form_page(
                &ctx,
                &signin,
                &next,
                None,
                Some("wrong email or password"),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return error_response(ctx.wants_json, &e),
    };
    drop(charged);
    let (n, o) = (ctx.node.clone(), ctx.org.clone());
    match tokio::task::spawn_blocking(move || {
        users::open_session(&n.writer, &n.sessions, &o, user_id)
    })
    .await
    {
        Ok(Ok((token, _csrf))) => {
            let mut resp = see_other(&next);
            set_cookie(
                &mut resp,
                &session_cookie(&ctx.node.public_url, &ctx.org, &token),
            );
            set_cookie(
                &mut resp,
                &format!(
                    "{SIGNIN_CSRF}=; Path=/o/{}/signin; HttpOnly; SameSite=Strict; Max-Age=0",
                    ctx.org
                ),
            );
            resp
        }
        Ok(Err(e)) => error_response(ctx.wants_json, &e),
        Err(_) => error_response(
            ctx.wants_json,
            &HemvistError::internal("sign-in task failed"),
        ),
    }
}

pub async fn sign_out(a: Authed, headers: HeaderMap, form: Result<Form, Response>) -> Response {
    let Form(fields) = match form {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    if let Err(resp) = check_csrf(&a, &headers, &fields) {
        return resp;
    }
    let (n, o, t) = (a.ctx.node.clone(), a.ctx.org.clone(), a.token.clone());
    let _ =
        tokio::task::spawn_blocking(move || users::sign_out(&n.writer, &n.sessions, &o, &t)).await;
    let mut resp = see_other(&format!("/o/{}/signin", a.ctx.org));
    set_cookie(
        &mut resp,
        &format!(
            "{SESSION_COOKIE}=; Path=/o/{}/; HttpOnly; SameSite=Lax; Max-Age=0",
            a.ctx.org
        ),
    );
    resp
}

/// A form post must come from this node's own pages (403 otherwise), or, when its session was
/// handed over from the org's old home, from the pages of the node that made that hand-off
/// (sealed in it with the org's key, so no one else can name a node there).
fn check_origin(ctx: &OrgCtx, headers: &HeaderMap) -> Result<(), Response> {
    let handed_off = ctx
        .handed_off_from
        .as_deref()
        .is_some_and(|from| origin::from_our_pages(headers, from));
    if handed_off || origin::from_our_pages(headers, &ctx.node.public_url) {
        return Ok(());
    }
    ctx.node.metrics.csrf_refused.inc();
    ctx.node.metrics.origin_refused.inc();
    tracing::debug!(org = %ctx.org, origin = ?headers.get(header::ORIGIN),
        referer = ?headers.get(header::REFERER), "form post from another origin refused");
    Err(refuse(
        ctx.wants_json,
        StatusCode::FORBIDDEN,
        "Forbidden",
        "this form was not sent from this site's own pages (Origin check failed)",
    ))
}

/// A state-changing request must come from this node's pages and carry the session's CSRF
/// token (form field or header).
pub(super) fn check_csrf(a: &Authed, headers: &HeaderMap, fields: &Fields) -> Result<(), Response> {
    check_origin(&a.ctx, headers)?;
    let presented = fields
        .get("_csrf")
        .map(String::as_str)
        .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    let matches: bool = presented.as_bytes().ct_eq(a.session.csrf.as_bytes()).into();
    if !presented.is_empty() && matches {
        return Ok(());
    }
    a.ctx.node.metrics.csrf_refused.inc();
    Err(refuse(
        a.ctx.wants_json,
        StatusCode::FORBIDDEN,
        "Forbidden",
        "this form did not come from this site (CSRF check failed); reload the page and try again",
    ))
}

#[cfg(test)]
mod tests {
    use super::is_safe_next;

    #[test]
    fn next_is_a_plain_path_under_the_org_or_nothing() {
        let home = "/o/acme/";
        for ok in [
            "/o/acme/",
            "/o/acme/?q=%C3%85sa&page=2",
            "/o/acme/contacts/7",
            "/o/acme/contacts/7?saved=1#top",
        ] {
            assert!(is_safe_next(home, ok), "{ok}");
        }
        for bad in [
            "/o/other/",
            "https://evil.example/o/acme/",
            "/o/acme//evil.example",
            "/o/acme/\\evil.example",
            "/o/acme/\r\nSet-Cookie: x=1",
            "/o/acme/\n",
            "/o/acme/\0",
            "/o/acme/\t",
            "/o/acme/ x",
            "/o/acme/\u{7f}",
            "/o/acme/å",
            "/o/acme/../other/",
            "/o/acme/./x",
            "/o/acme/%2e%2e/other/",
            "/o/acme/%2E./other/",
            "/o/acme/.%2e/other/",
            "/o/acme/%2f%2fevil.example",
            "/o/acme/%5cevil",
            "/o/acme/%0d%0a",
            "/o/acme/%00",
            "/o/acme",
            "",
        ] {
            assert!(!is_safe_next(home, bad), "{bad:?}");
        }
    }
}
