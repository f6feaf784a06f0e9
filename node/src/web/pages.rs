//! HTML for the org users' pages, as maud templates: everything that came from a user or a
//! database is escaped by the template itself; matched words are highlighted as `<mark>`
//! elements around escaped text. Nothing here writes raw HTML but the style sheet.

use axum::http::StatusCode;
use axum::response::Response;
use hemvist_proto::OrgId;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::{html, HTMX_PATH};
use crate::contacts::{ContactInput, Problems};
use crate::search::{Hit, Results, MAX_QUERY_CHARS};
use crate::text;
use crate::users::Session;

/// What stays as it is in a query value or a path: RFC 3986's unreserved characters and `/`.
const KEPT_IN_URLS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

pub fn url_encode(s: &str) -> String {
    utf8_percent_encode(s, KEPT_IN_URLS).to_string()
}

/// `s` with each word that starts with one of the folded `terms` in `<mark>`.
pub fn highlight(s: &str, terms: &[String]) -> Markup {
    let mut runs: Vec<(bool, String)> = Vec::new();
    let mut plain = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, plain: &mut String, runs: &mut Vec<(bool, String)>| {
        if word.is_empty() {
            return;
        }
        let hit = text::words(word)
            .first()
            .is_some_and(|w| terms.iter().any(|t| w.starts_with(t.as_str())));
        if hit {
            if !plain.is_empty() {
                runs.push((false, std::mem::take(plain)));
            }
            runs.push((true, std::mem::take(word)));
        } else {
            plain.push_str(word);
            word.clear();
        }
    };
    for c in s.chars() {
        if c.is_alphanumeric() || matches!(c, '\u{0300}'..='\u{036F}') {
            word.push(c);
        } else {
            flush(&mut word, &mut plain, &mut runs);
            plain.push(c);
        }
    }
    flush(&mut word, &mut plain, &mut runs);
    if !plain.is_empty() {
        runs.push((false, plain));
    }
    html! {
        @for (hit, run) in &runs {
            @if *hit { mark { (run) } } @else { (run) }
        }
    }
}

const STYLE: &str = r#"
:root{--fg:#1d2330;--muted:#5b6475;--line:#e3e6ec;--accent:#2454d6;--bg:#fff;--mark:#ffe58a}
*{box-sizing:border-box}
body{font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:var(--fg);background:var(--bg)}
header.top{display:flex;gap:1rem;align-items:center;justify-content:space-between;flex-wrap:wrap;padding:.75rem 1rem;border-bottom:1px solid var(--line)}
header.top h1{font-size:1.15rem;margin:0}
div.branch{background:#fff7d6;border-bottom:1px solid #e0c870;padding:.5rem 1rem;font-size:.9rem}
div.branch p{margin:.15rem 0}div.branch form{display:inline}
div.branch.expiring{background:#ffe1dc;border-color:#d9826f}
header.top .who{color:var(--muted);font-size:.9rem;display:flex;gap:.75rem;align-items:center}
main{max-width:52rem;margin:0 auto;padding:1rem}
a{color:var(--accent)}
button,.button{font:inherit;padding:.45rem .9rem;border:1px solid var(--accent);background:var(--accent);color:#fff;border-radius:.4rem;cursor:pointer;text-decoration:none;display:inline-block}
button.link{background:none;border:none;color:var(--accent);padding:0;text-decoration:underline}
.search{display:flex;gap:.5rem;align-items:center;margin:.5rem 0 1rem;position:relative}
.search input{flex:1;font:inherit;font-size:1.1rem;padding:.6rem .75rem;border:1px solid #b9c0cc;border-radius:.45rem;min-width:0}
input:focus,textarea:focus,button:focus,a:focus{outline:3px solid #9db7ff;outline-offset:1px}
.htmx-indicator{opacity:0;transition:opacity .15s}
.htmx-request .htmx-indicator,.htmx-request.htmx-indicator{opacity:1}
#searching{color:var(--muted);font-size:.85rem;white-space:nowrap;position:absolute;right:.75rem;top:50%;transform:translateY(-50%);pointer-events:none;background:#fff;padding-left:.25rem}
#count{color:var(--muted);margin:.25rem 0 .5rem}
ol.hits{list-style:none;margin:0;padding:0}
ol.hits li{padding:.6rem .25rem;border-bottom:1px solid var(--line);display:grid;grid-template-columns:1fr 1fr;gap:.1rem 1rem}
ol.hits .name{font-weight:600}
ol.hits .meta{color:var(--muted);font-size:.92rem;overflow-wrap:anywhere}
mark{background:var(--mark);color:inherit;border-radius:.15rem;padding:0 .05rem}
.more{margin:1rem 0;text-align:center}
.problem{color:#a12020}
form.card{display:grid;gap:.8rem;max-width:32rem}
form.card label{display:grid;gap:.25rem;font-weight:600}
form.card input,form.card textarea{font:inherit;font-weight:400;padding:.5rem;border:1px solid #b9c0cc;border-radius:.4rem}
.notice{background:#e8f5e9;border:1px solid #b7dfb9;padding:.5rem .75rem;border-radius:.4rem}
@media (max-width:40rem){ol.hits li{grid-template-columns:1fr}header.top{padding:.5rem .75rem}main{padding:.75rem}}
"#;

const HTMX_CONFIG: &str =
    r#"{"allowEval":false,"includeIndicatorStyles":false,"historyCacheSize":0}"#;

fn layout(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { (title) }
                style { (PreEscaped(STYLE)) }
                script src=(HTMX_PATH) defer {}
            }
            body { (body) }
        }
    }
    .into_string()
}

/// The org as every page's heading shows it: its name and, for a branch, its label.
pub struct Heading {
    pub name: String,
    pub branch: Option<crate::branches::Label>,
}

impl std::fmt::Display for Heading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// A branch's banner: of what, as of when, until when, and (signed in) the keepalive button.
fn branch_banner(org: &OrgId, b: &crate::branches::Label, session: Option<&Session>) -> Markup {
    let expiring = crate::clock::now_ms() >= b.warn_from_ms;
    let left_min = ((b.expires_ms - crate::clock::now_ms()).max(0) + 59_999) / 60_000;
    html! {
        div.branch.expiring[expiring] #branch role="note" {
            p {
                strong { "Test branch" } " of " strong { (b.parent) } ", as of "
                time datetime=(crate::backup::format_time(b.at_ms)) { (crate::backup::format_time(b.at_ms)) }
                ". Writes here never reach " (b.parent) "."
            }
            p #expiry {
                @if expiring { strong { "Expires soon: " } }
                "Destroyed at "
                time datetime=(crate::backup::format_time(b.expires_ms)) { (crate::backup::format_time(b.expires_ms)) }
                " (in " (left_min) " min) unless kept alive"
                @if b.keepalive_on_use { "; use by a signed-in user keeps it alive" }
                "."
            }
            @if let Some(s) = session {
                form method="post" action={ "/o/" (org) "/keepalive" } {
                    input type="hidden" name="_csrf" value=(s.csrf);
                    button #keepalive type="submit" { "Keep alive" }
                }
            }
        }
    }
}

fn top(org: &OrgId, head: &Heading, session: Option<&Session>) -> Markup {
    html! {
        @if let Some(b) = &head.branch { (branch_banner(org, b, session)) }
        header.top {
            h1 { a href={ "/o/" (org) "/" } { (head.name) } }
            div.who {
                @if let Some(s) = session {
                    span { (s.name) }
                    a href={ "/o/" (org) "/contacts/new" } { "New contact" }
                    form method="post" action={ "/o/" (org) "/signout" } {
                        input type="hidden" name="_csrf" value=(s.csrf);
                        button.link type="submit" { "Sign out" }
                    }
                }
            }
        }
    }
}

pub fn error(status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        main {
            h1 { (title) }
            p { (message) }
            p.muted { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
        }
    };
    html(status, layout(title, body))
}

pub fn moved(target: &str) -> String {
    layout(
        "Moved",
        html! {
            main { p { "This organization lives in another region: " a href=(target) { (target) } } }
        },
    )
}

/// Shown on the sign-in form to a user sent from an org's old home without their session.
pub const MOVED_NOTICE: &str = "This organization has moved to a new home; please sign in again.";

pub fn sign_in(
    org: &OrgId,
    org_name: &Heading,
    csrf: &str,
    next: &str,
    notice: Option<&str>,
    problem: Option<&str>,
) -> Response {
    let body = html! {
        (top(org, org_name, None))
        main {
            h2 { "Sign in" }
            @if let Some(n) = notice { p.notice #moved role="status" { (n) } }
            @if let Some(p) = problem { p.problem role="alert" { (p) } }
            form.card method="post" action={ "/o/" (org) "/signin" } {
                input type="hidden" name="_csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label { "Email" input type="email" name="email" autocomplete="username" required autofocus; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                div { button type="submit" { "Sign in" } }
            }
        }
    };
    html(
        StatusCode::OK,
        layout(&format!("Sign in · {org_name}"), body),
    )
}

/// The count above the results, as text (the template escapes it).
fn count_line(r: &Results) -> String {
    let n = if r.total_exact {
        r.total.to_string()
    } else {
        format!("{}+", r.total)
    };
    let what = if r.total == 1 && r.total_exact {
        "contact"
    } else {
        "contacts"
    };
    if r.terms.is_empty() {
        format!("{n} {what}; the most recently changed first")
    } else {
        format!("{n} {what} match \u{201c}{}\u{201d}", r.query)
    }
}

fn joined(fields: [&String; 2], terms: &[String]) -> Markup {
    html! {
        @for (i, f) in fields.iter().filter(|f| !f.is_empty()).enumerate() {
            @if i > 0 { " · " }
            (highlight(f, terms))
        }
    }
}

fn hits_list(org: &OrgId, hits: &[Hit], terms: &[String]) -> Markup {
    html! {
        ol.hits {
            @for h in hits {
                li {
                    a.name href={ "/o/" (org) "/contacts/" (h.id) } { (highlight(&h.name, terms)) }
                    span.meta { (joined([&h.company, &h.city], terms)) }
                    span.meta { (joined([&h.email, &h.phone], terms)) }
                    span {}
                }
            }
        }
    }
}

fn more_button(org: &OrgId, r: &Results) -> Markup {
    let href = format!("/o/{org}/?q={}&page={}", url_encode(&r.query), r.page + 1);
    html! {
        @if r.has_more {
            div #more .more {
                a.button href=(href) hx-get=(href) hx-target="#more" hx-swap="outerHTML"
                    hx-push-url="false" { "More" }
            }
        } @else {
            div #more {}
        }
    }
}

/// What htmx swaps in: the first page replaces the results, later pages append.
pub fn results_fragment(org: &OrgId, r: &Results) -> Response {
    let body = html! {
        @if r.page == 0 { p #count role="status" { (count_line(r)) } }
        (hits_list(org, &r.hits, &r.terms))
        (more_button(org, r))
    };
    html(StatusCode::OK, body.into_string())
}

/// The script of [`continue_at`]'s page (a file: the pages' CSP allows no inline script).
pub const CONTINUE_JS_PATH: &str = "/static/hv-continue-1.js";
pub static CONTINUE_JS: &str = "'use strict';\ndocument.getElementById('hv-continue').submit();\n";

/// The answer to a form posted to an org's old home: the same fields, posted to `target` (the
/// new home) by a small script of ours, or by the button without scripts. This answer's CSP
/// lets a form go to the new home's `origin` too (every other page allows only `'self'`), and
/// its referrer policy names this node as the form's origin.
/// `None` if `origin` cannot go in a header.
pub fn continue_at(
    target: &str,
    origin: &str,
    fields: &std::collections::HashMap<String, String>,
) -> Option<Response> {
    let mut fields: Vec<_> = fields.iter().collect();
    fields.sort();
    let body = html! {
        main {
            h1 { "This organization has moved" }
            p { "It now lives on another server; your form is being sent there." }
            form #hv-continue method="post" action=(target) {
                @for (name, value) in &fields {
                    input type="hidden" name=(name) value=(value);
                }
                button type="submit" { "Continue" }
            }
            script src=(CONTINUE_JS_PATH) defer {}
        }
    };
    let mut resp = html(StatusCode::OK, layout("Moved", body));
    let csp = format!(
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
         frame-ancestors 'none'; form-action 'self' {origin}"
    );
    let csp = axum::http::HeaderValue::from_str(&csp).ok()?;
    let h = resp.headers_mut();
    h.insert(axum::http::header::CONTENT_SECURITY_POLICY, csp);
    // `same-origin` (every other page's) would make the browser send `Origin: null` with a
    // post to another origin, and the new home could not tell where the form came from.
    h.insert(
        axum::http::header::REFERRER_POLICY,
        axum::http::HeaderValue::from_static("origin"),
    );
    Some(resp)
}

/// The hidden field that carries a write form's idempotency key.
pub const IDEMPOTENCY_FIELD: &str = "idempotency_key";

/// A key for a form being rendered: fresh each time, so each form filled in is its own write and
/// its retries are the same one. Without randomness the form goes without (still accepted).
fn form_key() -> Option<String> {
    match crate::idempotency::Key::fresh() {
        Ok(k) => Some(k.as_str().to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "a form is served without an idempotency key");
            None
        }
    }
}

/// A form post that could not be confirmed (503): the same fields, its idempotency key among
/// them, ready to post again to `action`, so trying again is safe.
pub fn try_again(
    action: &str,
    fields: &std::collections::HashMap<String, String>,
    message: &str,
) -> Response {
    let mut fields: Vec<_> = fields.iter().collect();
    fields.sort();
    let body = html! {
        main {
            h1 { "Not confirmed yet" }
            p role="alert" { (message) }
            p { "Trying again is safe: what you sent is saved at most once." }
            form #hv-try-again method="post" action=(action) {
                @for (name, value) in &fields {
                    input type="hidden" name=(name) value=(value);
                }
                button type="submit" { "Try again" }
            }
        }
    };
    let mut resp = html(
        StatusCode::SERVICE_UNAVAILABLE,
        layout("Not confirmed yet", body),
    );
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    resp
}

pub fn search_problem(message: &str) -> Response {
    html(
        StatusCode::OK,
        html! { p #count .problem role="status" { (message) } }.into_string(),
    )
}

pub fn search_page(org: &OrgId, org_name: &Heading, session: &Session, r: &Results) -> Response {
    let search = format!("/o/{org}/");
    let body = html! {
        (top(org, org_name, Some(session)))
        main {
            form.search role="search" action=(search) method="get" {
                input #q type="search" name="q" value=(r.query)
                    placeholder="Search contacts: name, company, city, email…"
                    aria-label="Search contacts" autocomplete="off" autofocus
                    maxlength=(MAX_QUERY_CHARS) hx-get=(search)
                    hx-trigger="input changed delay:120ms, search" hx-target="#results"
                    hx-push-url="true" hx-indicator="#searching" hx-sync="this:replace";
                span #searching .htmx-indicator aria-hidden="true" { "Searching…" }
                noscript { button type="submit" { "Search" } }
            }
            div #results aria-live="polite" {
                p #count role="status" { (count_line(r)) }
                (hits_list(org, &r.hits, &r.terms))
                (more_button(org, r))
            }
        }
    };
    html(
        StatusCode::OK,
        layout(&format!("Contacts · {org_name}"), body),
    )
}

#[allow(clippy::too_many_arguments)]
pub fn contact_form(
    org: &OrgId,
    org_name: &Heading,
    session: &Session,
    id: Option<i64>,
    c: &ContactInput,
    problems: &Problems,
    notice: Option<&str>,
    status: StatusCode,
) -> Response {
    let field = |name: &'static str, label: &str, value: &str, kind: &str| {
        let problem = problems.get(name);
        let described = problem.map(|_| format!("{name}-problem"));
        let invalid = problem.map(|_| "true");
        html! {
            label {
                (label)
                @if kind == "textarea" {
                    textarea name=(name) rows="4" aria-invalid=[invalid]
                        aria-describedby=[&described] { (value) }
                } @else {
                    input type=(kind) name=(name) value=(value) aria-invalid=[invalid]
                        aria-describedby=[&described];
                }
                @if let (Some(p), Some(d)) = (problem, &described) {
                    span.problem id=(d) { (p) }
                }
            }
        }
    };
    let (title, action) = match id {
        Some(id) => ("Edit contact", format!("/o/{org}/contacts/{id}")),
        None => ("New contact", format!("/o/{org}/contacts")),
    };
    let body = html! {
        (top(org, org_name, Some(session)))
        main {
            p { a href={ "/o/" (org) "/" } { "← Back to search" } }
            h2 { (title) }
            @if !problems.is_empty() {
                p.problem role="alert" { "Please correct the fields marked below." }
            } @else if let Some(n) = notice {
                p.notice role="status" { (n) }
            }
            form.card method="post" action=(action) {
                input type="hidden" name="_csrf" value=(session.csrf);
                @if let Some(k) = form_key() {
                    input type="hidden" name=(IDEMPOTENCY_FIELD) value=(k);
                }
                (field("name", "Name", &c.name, "text"))
                (field("email", "Email", &c.email, "email"))
                (field("company", "Company", &c.company, "text"))
                (field("city", "City", &c.city, "text"))
                (field("phone", "Phone", &c.phone, "tel"))
                (field("notes", "Notes", &c.notes, "textarea"))
                div { button type="submit" { "Save" } }
            }
        }
    };
    html(status, layout(&format!("{title} · {org_name}"), body))
}
