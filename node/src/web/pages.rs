//! HTML for the org users' pages. Everything that came from a user or a database is escaped
//! here, and only here; matched words are highlighted after escaping.

use axum::http::StatusCode;
use axum::response::Response;
use hemvist_proto::OrgId;

use super::{html, HTMX_PATH};
use crate::contacts::{ContactInput, Problems};
use crate::search::{Hit, Results, MAX_QUERY_CHARS};
use crate::text;
use crate::users::Session;

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Escapes `s`, wrapping each word that starts with one of the folded `terms` in `<mark>`.
pub fn highlight(s: &str, terms: &[String]) -> String {
    if terms.is_empty() {
        return escape(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        let hit = text::words(word)
            .first()
            .is_some_and(|w| terms.iter().any(|t| w.starts_with(t.as_str())));
        if hit {
            out.push_str("<mark>");
            out.push_str(&escape(word));
            out.push_str("</mark>");
        } else {
            out.push_str(&escape(word));
        }
        word.clear();
    };
    for c in s.chars() {
        if c.is_alphanumeric() || matches!(c, '\u{0300}'..='\u{036F}') {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push_str(&escape(&c.to_string()));
        }
    }
    flush(&mut word, &mut out);
    out
}

const STYLE: &str = r#"
:root{--fg:#1d2330;--muted:#5b6475;--line:#e3e6ec;--accent:#2454d6;--bg:#fff;--mark:#ffe58a}
*{box-sizing:border-box}
body{font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:var(--fg);background:var(--bg)}
header.top{display:flex;gap:1rem;align-items:center;justify-content:space-between;flex-wrap:wrap;padding:.75rem 1rem;border-bottom:1px solid var(--line)}
header.top h1{font-size:1.15rem;margin:0}
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

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <meta name=\"htmx-config\" content='{{\"allowEval\":false,\"includeIndicatorStyles\":false,\"historyCacheSize\":0}}'>\
         <title>{}</title><style>{STYLE}</style>\
         <script src=\"{HTMX_PATH}\" defer></script></head><body>{body}</body></html>",
        escape(title)
    )
}

fn top(org: &OrgId, org_name: &str, session: Option<&Session>) -> String {
    let who = match session {
        Some(s) => format!(
            "<span>{}</span><a href=\"/o/{org}/contacts/new\">New contact</a>\
             <form method=\"post\" action=\"/o/{org}/signout\"><input type=\"hidden\" name=\"_csrf\" value=\"{}\">\
             <button class=\"link\" type=\"submit\">Sign out</button></form>",
            escape(&s.name),
            escape(&s.csrf)
        ),
        None => String::new(),
    };
    format!(
        "<header class=\"top\"><h1><a href=\"/o/{org}/\">{}</a></h1><div class=\"who\">{who}</div></header>",
        escape(org_name)
    )
}

pub fn error(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<main><h1>{}</h1><p>{}</p><p class=\"muted\">{} {}</p></main>",
        escape(title),
        escape(message),
        status.as_u16(),
        escape(status.canonical_reason().unwrap_or(""))
    );
    html(status, layout(title, &body))
}

pub fn moved(target: &str) -> String {
    layout(
        "Moved",
        &format!(
            "<main><p>This organization lives in another region: <a href=\"{0}\">{0}</a></p></main>",
            escape(target)
        ),
    )
}

pub fn sign_in(
    org: &OrgId,
    org_name: &str,
    csrf: &str,
    next: &str,
    problem: Option<&str>,
) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"problem\" role=\"alert\">{}</p>", escape(p)))
        .unwrap_or_default();
    let body = format!(
        "{top}<main><h2>Sign in</h2>{problem}\
         <form class=\"card\" method=\"post\" action=\"/o/{org}/signin\">\
         <input type=\"hidden\" name=\"_csrf\" value=\"{csrf}\">\
         <input type=\"hidden\" name=\"next\" value=\"{next}\">\
         <label>Email<input type=\"email\" name=\"email\" autocomplete=\"username\" required autofocus></label>\
         <label>Password<input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <div><button type=\"submit\">Sign in</button></div></form></main>",
        top = top(org, org_name, None),
        csrf = escape(csrf),
        next = escape(next),
    );
    html(
        StatusCode::OK,
        layout(&format!("Sign in · {org_name}"), &body),
    )
}

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
        format!("{n} {what} match \u{201c}{}\u{201d}", escape(&r.query))
    }
}

fn hits_list(org: &OrgId, hits: &[Hit], terms: &[String]) -> String {
    let mut out = String::from("<ol class=\"hits\">");
    for h in hits {
        let meta1: Vec<String> = [&h.company, &h.city]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| highlight(s, terms))
            .collect();
        let meta2: Vec<String> = [&h.email, &h.phone]
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| highlight(s, terms))
            .collect();
        out.push_str(&format!(
            "<li><a class=\"name\" href=\"/o/{org}/contacts/{}\">{}</a><span class=\"meta\">{}</span>\
             <span class=\"meta\">{}</span><span></span></li>",
            h.id,
            highlight(&h.name, terms),
            meta1.join(" · "),
            meta2.join(" · ")
        ));
    }
    out.push_str("</ol>");
    out
}

fn more_button(org: &OrgId, r: &Results) -> String {
    if !r.has_more {
        return "<div id=\"more\"></div>".into();
    }
    let href = format!("/o/{org}/?q={}&page={}", url_encode(&r.query), r.page + 1);
    format!(
        "<div id=\"more\" class=\"more\"><a class=\"button\" href=\"{0}\" hx-get=\"{0}\" hx-target=\"#more\" \
         hx-swap=\"outerHTML\" hx-push-url=\"false\">More</a></div>",
        escape(&href)
    )
}

/// What htmx swaps in: the first page replaces the results, later pages append.
pub fn results_fragment(org: &OrgId, r: &Results) -> Response {
    let body = if r.page == 0 {
        format!(
            "<p id=\"count\" role=\"status\">{}</p>{}{}",
            count_line(r),
            hits_list(org, &r.hits, &r.terms),
            more_button(org, r)
        )
    } else {
        format!(
            "{}{}",
            hits_list(org, &r.hits, &r.terms),
            more_button(org, r)
        )
    };
    html(StatusCode::OK, body)
}

pub fn search_problem(message: &str) -> Response {
    html(
        StatusCode::OK,
        format!(
            "<p id=\"count\" class=\"problem\" role=\"status\">{}</p>",
            escape(message)
        ),
    )
}

pub fn search_page(org: &OrgId, org_name: &str, session: &Session, r: &Results) -> Response {
    let body = format!(
        "{top}<main>\
         <form class=\"search\" role=\"search\" action=\"/o/{org}/\" method=\"get\">\
         <input id=\"q\" type=\"search\" name=\"q\" value=\"{q}\" placeholder=\"Search contacts: name, company, city, email…\" \
          aria-label=\"Search contacts\" autocomplete=\"off\" autofocus maxlength=\"{max}\" \
          hx-get=\"/o/{org}/\" hx-trigger=\"input changed delay:120ms, search\" hx-target=\"#results\" \
          hx-push-url=\"true\" hx-indicator=\"#searching\" hx-sync=\"this:replace\">\
         <span id=\"searching\" class=\"htmx-indicator\" aria-hidden=\"true\">Searching…</span>\
         <noscript><button type=\"submit\">Search</button></noscript></form>\
         <div id=\"results\" aria-live=\"polite\"><p id=\"count\" role=\"status\">{count}</p>{hits}{more}</div></main>",
        top = top(org, org_name, Some(session)),
        q = escape(&r.query),
        max = MAX_QUERY_CHARS,
        count = count_line(r),
        hits = hits_list(org, &r.hits, &r.terms),
        more = more_button(org, r),
    );
    html(
        StatusCode::OK,
        layout(&format!("Contacts · {org_name}"), &body),
    )
}

#[allow(clippy::too_many_arguments)]
pub fn contact_form(
    org: &OrgId,
    org_name: &str,
    session: &Session,
    id: Option<i64>,
    c: &ContactInput,
    problems: &Problems,
    notice: Option<&str>,
    status: StatusCode,
) -> Response {
    let field = |name: &'static str, label: &str, value: &str, kind: &str| {
        let problem = problems
            .get(name)
            .map(|p| {
                format!(
                    "<span class=\"problem\" id=\"{name}-problem\">{}</span>",
                    escape(p)
                )
            })
            .unwrap_or_default();
        let invalid = if problems.contains_key(name) {
            format!(" aria-invalid=\"true\" aria-describedby=\"{name}-problem\"")
        } else {
            String::new()
        };
        if kind == "textarea" {
            format!(
                "<label>{label}<textarea name=\"{name}\" rows=\"4\"{invalid}>{}</textarea>{problem}</label>",
                escape(value)
            )
        } else {
            format!(
                "<label>{label}<input type=\"{kind}\" name=\"{name}\" value=\"{}\"{invalid}>{problem}</label>",
                escape(value)
            )
        }
    };
    let (title, action) = match id {
        Some(id) => ("Edit contact", format!("/o/{org}/contacts/{id}")),
        None => ("New contact", format!("/o/{org}/contacts")),
    };
    let summary = if problems.is_empty() {
        notice
            .map(|n| format!("<p class=\"notice\" role=\"status\">{}</p>", escape(n)))
            .unwrap_or_default()
    } else {
        "<p class=\"problem\" role=\"alert\">Please correct the fields marked below.</p>".into()
    };
    let body = format!(
        "{top}<main><p><a href=\"/o/{org}/\">← Back to search</a></p><h2>{title}</h2>{summary}\
         <form class=\"card\" method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"_csrf\" value=\"{csrf}\">{f1}{f2}{f3}{f4}{f5}{f6}\
         <div><button type=\"submit\">Save</button></div></form></main>",
        top = top(org, org_name, Some(session)),
        csrf = escape(&session.csrf),
        f1 = field("name", "Name", &c.name, "text"),
        f2 = field("email", "Email", &c.email, "email"),
        f3 = field("company", "Company", &c.company, "text"),
        f4 = field("city", "City", &c.city, "text"),
        f5 = field("phone", "Phone", &c.phone, "tel"),
        f6 = field("notes", "Notes", &c.notes, "textarea"),
    );
    html(status, layout(&format!("{title} · {org_name}"), &body))
}
