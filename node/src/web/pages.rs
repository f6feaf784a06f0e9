//! HTML for the org users' pages. Everything that came from a user or a database is escaped.

use axum::http::StatusCode;
use axum::response::Response;
use hemvist_proto::{HemvistError, OrgId};

use super::html;
use crate::Node;

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

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:56rem;padding:1rem;color:#222}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #ddd}\
.muted{color:#666}header{display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap}";

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

pub fn error(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p class=\"muted\">{} {}</p>",
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
            "<p>This organization lives in another region: <a href=\"{0}\">{0}</a></p>",
            escape(target)
        ),
    )
}

pub struct Contact {
    pub name: String,
    pub email: String,
    pub company: String,
    pub city: String,
}

pub struct Home {
    pub org: OrgId,
    pub name: String,
    pub region: String,
    pub node: String,
    pub total: i64,
    pub recent: Vec<Contact>,
}

pub fn load_home(node: &Node, org: &OrgId) -> Result<Home, HemvistError> {
    let name = node
        .state
        .hosted(org)
        .map(|h| h.name)
        .unwrap_or_else(|| org.to_string());
    let (total, recent) = node.tenants.read(org, |conn| {
        let total: i64 = conn.query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))?;
        let mut stmt = conn.prepare_cached(
            "SELECT name, email, company, city FROM contacts ORDER BY updated_ms DESC, id DESC LIMIT 25",
        )?;
        let recent = stmt
            .query_map([], |r| {
                Ok(Contact {
                    name: r.get(0)?,
                    email: r.get(1)?,
                    company: r.get(2)?,
                    city: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((total, recent))
    })?;
    Ok(Home {
        org: org.clone(),
        name,
        region: node.config.region.to_string(),
        node: node.config.id.to_string(),
        total,
        recent,
    })
}

pub fn home(h: &Home) -> Response {
    let mut rows = String::new();
    for c in &h.recent {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&c.name),
            escape(&c.email),
            escape(&c.company),
            escape(&c.city)
        ));
    }
    let body = format!(
        "<header><h1>{name}</h1><p class=\"muted\">served from <b data-region=\"{region}\">{region}</b> \
         by node {node}</p></header>\
         <p><span id=\"total\">{total}</span> contacts; the most recently changed:</p>\
         <table><thead><tr><th>Name</th><th>Email</th><th>Company</th><th>City</th></tr></thead>\
         <tbody id=\"contacts\">{rows}</tbody></table>",
        name = escape(&h.name),
        region = escape(&h.region),
        node = escape(&h.node),
        total = h.total,
    );
    let _ = &h.org;
    html(StatusCode::OK, layout(&h.name, &body))
}
