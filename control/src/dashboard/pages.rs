//! The dashboard's HTML (maud): one layout, then each page and the fragments htmx swaps in.
//! Every value shown is escaped by maud; nothing is loaded from anywhere but this control plane.

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use super::HTMX_PATH;

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;background:#f6f7f9}
header.top{display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:center;padding:.6rem 1.25rem;background:#1d2330;color:#fff}
header.top a{color:#fff;text-decoration:none;padding:.35rem .5rem;border-radius:.3rem}
header.top a:focus,header.top a:hover{background:#3a4458;outline:2px solid #9db4ff}
header.top strong{margin-right:auto}
header.top form{margin:0}
main{padding:1.25rem;max-width:75rem;margin:0 auto}
h1{font-size:1.4rem;margin:.25rem 0 1rem}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.92rem}
th,td{text-align:left;padding:.4rem .55rem;border-bottom:1px solid #e3e6eb;vertical-align:top}
th{background:#eef0f4;font-weight:600}
.scroll{overflow-x:auto}
.ok{color:#1b7b34;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#5b6475}
input,select,button{font:inherit;padding:.45rem .6rem;border:1px solid #b9c0cc;border-radius:.4rem}
button{background:#2f55d4;color:#fff;border-color:#2f55d4;cursor:pointer}
button.quiet{background:transparent;color:#fff;border-color:#6b778f}
input:focus,select:focus,button:focus{outline:3px solid #9db4ff;outline-offset:1px}
input[type=search]{width:100%;max-width:32rem}
form.card{background:#fff;border:1px solid #e3e6eb;border-radius:.5rem;padding:1rem;display:grid;gap:.6rem;max-width:32rem}
form.card label{display:grid;gap:.2rem;font-weight:600}
.error{background:#fdecea;border:1px solid #f5c2bd;padding:.5rem .75rem;border-radius:.4rem}
.notice{background:#e8f5e9;border:1px solid #b7dfb9;padding:.5rem .75rem;border-radius:.4rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;background:#fff;padding:1rem;border:1px solid #e3e6eb;border-radius:.5rem}
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}
code{font-size:.88em}
@media (max-width:40rem){main{padding:.75rem}header.top{padding:.5rem .75rem}dl{grid-template-columns:1fr}th,td{padding:.35rem}}
"#;

const HTMX_CONFIG: &str =
    r#"{"allowEval":false,"includeIndicatorStyles":false,"historyCacheSize":0}"#;

/// Who is signed in, for every page's header (absent on the sign-in page).
pub struct Chrome<'a> {
    pub actor: &'a str,
    pub csrf: &'a str,
}

impl<'a> Chrome<'a> {
    pub fn of(session: &'a super::session::Session) -> Self {
        Chrome {
            actor: &session.actor,
            csrf: &session.csrf,
        }
    }
}

pub fn layout(title: &str, chrome: Option<&Chrome<'_>>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                link rel="icon" href="data:,";
                meta name="htmx-config" content=(HTMX_CONFIG);
                title { (title) " · hemvist" }
                style { (PreEscaped(STYLE)) }
                script src=(HTMX_PATH) defer {}
            }
            body {
                header.top {
                    strong { "hemvist" }
                    @if let Some(c) = chrome {
                        nav aria-label="Sections" {
                            a href="/" { "Fleet" }
                            a href="/orgs" { "Orgs" }
                            a href="/operations" { "Operations" }
                            a href="/audit" { "Audit" }
                            a href="/api/v1/openapi.json" { "API" }
                        }
                        form method="post" action="/signout" {
                            input type="hidden" name="csrf" value=(c.csrf);
                            button.quiet type="submit" title=(format!("signed in as {}", c.actor)) { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string()
}

pub fn signin(error: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form.card method="post" action="/signin" {
            label {
                "Admin token or named token"
                input type="password" name="token" autocomplete="current-password" required autofocus;
            }
            button type="submit" { "Sign in" }
        }
    }
}

pub fn time(ms: Option<i64>) -> String {
    match ms {
        Some(ms) if ms > 0 => crate::clock::format_ms(ms),
        _ => "—".to_string(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One node as the fleet page shows it.
pub struct NodeRow {
    pub id: String,
    pub region: String,
    pub healthy: bool,
    pub lease_remaining_ms: u64,
    pub tenants: u64,
    pub capacity: u64,
    pub draining: bool,
    pub last_seen_ms: i64,
    pub version: String,
    /// Free bytes and below headroom, as the node last said.
    pub disk: Option<(u64, bool)>,
    /// The largest backup lag among its orgs (ms).
    pub backup_lag_ms: Option<i64>,
}

fn bytes(n: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    if n as f64 >= GIB {
        format!("{:.1} GiB", n as f64 / GIB)
    } else {
        format!("{:.0} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

pub fn fleet(nodes: &[NodeRow], operations: &[Value]) -> Markup {
    html! {
        h1 { "Fleet" }
        h2 { "Nodes" }
        div.scroll {
            table #nodes {
                thead { tr { th { "Node" } th { "Region" } th { "Health" } th { "Lease" } th { "Tenants" } th { "Disk free" } th { "Backup lag" } th { "Last seen" } th { "Version" } } }
                tbody {
                    @for n in nodes {
                        tr {
                            td { (n.id) }
                            td { (n.region) }
                            td {
                                @if n.healthy { span.ok { "healthy" } } @else { span.bad { "down" } }
                                @if n.draining { " · draining" }
                            }
                            td { (n.lease_remaining_ms) " ms" }
                            td { (n.tenants) " / " (n.capacity) }
                            td {
                                @match n.disk {
                                    Some((free, low)) => { (bytes(free)) @if low { " " span.bad { "below headroom" } } },
                                    None => "—",
                                }
                            }
                            td { @if let Some(l) = n.backup_lag_ms { (l) " ms" } @else { "—" } }
                            td { (time(Some(n.last_seen_ms))) }
                            td { (n.version) }
                        }
                    }
                }
            }
        }
        h2 { "Operations in flight" }
        div hx-get="/operations/live" hx-trigger="every 2s" hx-swap="innerHTML" {
            (operations_table(operations))
        }
    }
}

pub fn operations_table(operations: &[Value]) -> Markup {
    html! {
        @if operations.is_empty() {
            p.muted #no-operations { "None." }
        } @else {
            div.scroll {
                table.operations {
                    thead { tr { th { "Operation" } th { "Kind" } th { "Org" } th { "Phase" } th { "Started" } th { "By" } } }
                    tbody {
                        @for op in operations {
                            tr {
                                td { a href=(format!("/operations/{}", text(&op["id"]))) { code { (text(&op["id"])) } } }
                                td { (text(&op["kind"])) }
                                td { @if let Some(org) = op["org"].as_str() { a href=(format!("/orgs/{org}")) { (org) } } @else { "fleet" } }
                                td.phase { (text(&op["phase"])) @if let Some(e) = op["error"].as_str() { br; span.bad { (e) } } }
                                td { (time(op["started_ms"].as_i64())) }
                                td { (text(&op["requested_by"])) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn orgs(query: &str, results: Markup) -> Markup {
    html! {
        h1 { "Orgs" }
        form role="search" action="/orgs" method="get" {
            label for="q" { "Find an org by id or name" }
            br;
            input #q type="search" name="q" value=(query) autocomplete="off" autofocus
                hx-get="/orgs/search" hx-trigger="input changed delay:150ms, search"
                hx-target="#results" hx-swap="innerHTML" placeholder="acme, Acme AB…";
        }
        div #results aria-live="polite" { (results) }
    }
}

pub fn org_rows(orgs: &[Value], next: Option<&str>) -> Markup {
    html! {
        @if orgs.is_empty() {
            p.muted { "No org matches." }
        } @else {
            div.scroll {
                table {
                    thead { tr { th { "Org" } th { "Name" } th { "Region" } th { "Node" } th { "Gen" } th { "Schema" } th { "Backed up" } } }
                    tbody {
                        @for o in orgs {
                            tr {
                                td { a href=(format!("/orgs/{}", text(&o["id"]))) { (text(&o["id"])) } }
                                td { (text(&o["name"])) }
                                td { (text(&o["home_region"])) }
                                td { (text(&o["node"])) }
                                td { (text(&o["generation"])) }
                                td { (text(&o["schema_version"])) }
                                td { (time(o["backed_up_ms"].as_i64())) }
                            }
                        }
                    }
                }
            }
            @if let Some(after) = next {
                p { a #next-page href=(format!("/orgs?after={after}")) { "Next page" } }
            }
        }
    }
}

/// What a page says above its content after an action.
pub enum Said<'a> {
    Nothing,
    Notice(&'a str),
    Error(&'a str),
}

fn said(s: &Said<'_>) -> Markup {
    html! {
        @match s {
            Said::Nothing => {},
            Said::Notice(n) => p.notice role="status" { (n) },
            Said::Error(e) => p.error role="alert" { (e) },
        }
    }
}

/// A form posting to `action` that asks to type `word` (an org's id) first.
fn confirmed(
    action: &str,
    word: &str,
    button: &str,
    chrome: &Chrome<'_>,
    fields: Markup,
) -> Markup {
    html! {
        form.card method="post" action=(action) {
            input type="hidden" name="csrf" value=(chrome.csrf);
            (fields)
            label {
                span { "Type " code { (word) } " to confirm" }
                input name="confirm" required autocomplete="off" pattern=(regex_escape(word));
            }
            button type="submit" { (button) }
        }
    }
}

pub fn org(
    detail: &Value,
    regions: &[String],
    branches: &[Value],
    chrome: &Chrome<'_>,
    said_now: Said<'_>,
) -> Markup {
    let id = text(&detail["id"]);
    let busy = detail["operation"].is_object();
    html! {
        h1 { (text(&detail["name"])) " " span.muted { "(" (id) ")" } }
        (said(&said_now))
        dl {
            dt { "Home" } dd { (text(&detail["home_region"])) " on " (text(&detail["node"])) }
            dt { "Generation" } dd { (text(&detail["generation"])) }
            dt { "Residency" } dd { (text(&detail["residency"])) }
            dt { "Schema" } dd { (text(&detail["schema_version"])) " (held at " (text(&detail["schema_held"])) ")" }
            dt { "Durability" } dd { (text(&detail["durability"])) }
            dt { "Backup lag" } dd { @if let Some(l) = detail["replication_lag_ms"].as_i64() { (l) " ms" } @else { "—" } }
            dt { "Placed because" } dd { (text(&detail["placement_reason"])) }
            @if busy {
                dt { "Operation" }
                dd { a href=(format!("/operations/{}", text(&detail["operation"]["id"]))) { (text(&detail["operation"]["kind"])) ", " (text(&detail["operation"]["phase"])) } }
            }
        }
        h2 { "Move" }
        @if busy {
            p.muted { "An operation owns this org; a move can start when it has ended." }
        } @else {
            (confirmed(&format!("/orgs/{id}/move"), &id, &format!("Move {id}"), chrome, html! {
                label {
                    "To region"
                    select name="to" required {
                        @for r in regions { option value=(r) { (r) } }
                    }
                }
            }))
        }
        @if !detail["id"].as_str().unwrap_or_default().contains("--") {
            h2 { "Branches" }
            @if branches.is_empty() {
                p.muted { "None." }
            } @else {
                div.scroll {
                    table #branches {
                        thead { tr { th { "Branch" } th { "State" } th { "Region" } th { "Expires" } th { "Owner" } } }
                        tbody {
                            @for b in branches {
                                tr {
                                    td { a href=(format!("/orgs/{}", text(&b["id"]))) { (text(&b["id"])) } }
                                    td.state { (text(&b["state"])) }
                                    td { (text(&b["region"])) }
                                    td { (time(b["expires_ms"].as_i64())) }
                                    td { (text(&b["owner"])) }
                                }
                            }
                        }
                    }
                }
                @for b in branches.iter().filter(|b| b["state"] == "live" || b["state"] == "expiring") {
                    (confirmed(&format!("/branches/{}/keepalive", text(&b["id"])), &text(&b["id"]),
                        &format!("Keep {} alive", text(&b["id"])), chrome, html! {}))
                }
            }
            (confirmed(&format!("/orgs/{id}/branches"), &id, &format!("Branch {id}"), chrome, html! {
                label {
                    "New branch's name"
                    input name="name" required autocomplete="off";
                }
            }))
        }
        h2 { "Past locations" }
        div.scroll {
            table {
                thead { tr { th { "Region" } th { "Node" } th { "Generation" } th { "From" } th { "To" } th { "Operation" } } }
                tbody {
                    @for l in detail["locations"].as_array().into_iter().flatten() {
                        tr {
                            td { (text(&l["region"])) } td { (text(&l["node_id"])) } td { (text(&l["generation"])) }
                            td { (time(l["from_ms"].as_i64())) } td { (time(l["to_ms"].as_i64())) } td { (text(&l["operation"])) }
                        }
                    }
                }
            }
        }
        p { a href=(format!("/audit?org={id}")) { "Audit log of " (id) } }
    }
}

/// `id` as a pattern that matches exactly it (ids are letters, digits and '-', which needs no
/// escape outside a class, and may not have one in a `v`-mode pattern, which browsers use).
fn regex_escape(id: &str) -> String {
    id.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

pub fn operation(view: &Value) -> Markup {
    let finished = !view["finished_ms"].is_null();
    let id = text(&view["id"]);
    html! {
        div #operation
            hx-get=[(!finished).then(|| format!("/operations/{id}/live"))]
            hx-trigger=[(!finished).then_some("every 1s")]
            hx-swap="outerHTML" {
            dl {
                dt { "Kind" } dd { (text(&view["kind"])) }
                dt { "Org" } dd { @if let Some(org) = view["org"].as_str() { a href=(format!("/orgs/{org}")) { (org) } } @else { "fleet" } }
                dt { "Phase" } dd #phase data-finished=(finished) { (text(&view["phase"])) }
                dt { "Requested by" } dd { (text(&view["requested_by"])) }
                dt { "Started" } dd { (time(view["started_ms"].as_i64())) }
                dt { "Finished" } dd { (time(view["finished_ms"].as_i64())) }
                @if let Some(e) = view["error"].as_str() { dt { "Error" } dd.bad { (e) } }
                @if let Some(s) = view["stalled"]["waiting_for"].as_str() { dt { "Stalled" } dd.bad { "waiting for " (s) } }
                @if let Some(b) = view["progress"]["bytes"].as_u64() { dt { "Copied" } dd { (b) " bytes" } }
                @if let Some(p) = view["detail"]["pause_ms"].as_i64() { dt { "Write pause" } dd { (p) " ms" } }
            }
            h2 { "Steps" }
            div.scroll {
                table {
                    thead { tr { th { "Step" } th { "Node" } th { "State" } th { "Updated" } } }
                    tbody {
                        @for s in view["steps"].as_array().into_iter().flatten() {
                            tr { td { code { (text(&s["id"])) } } td { (text(&s["node_id"])) } td { (text(&s["state"])) } td { (time(s["updated_ms"].as_i64())) } }
                        }
                    }
                }
            }
        }
    }
}

/// What an operator may do to an unfinished operation: cancel it; pause or resume a rollout.
pub fn operation_actions(view: &Value, chrome: &Chrome<'_>) -> Markup {
    let id = text(&view["id"]);
    let word = view["org"].as_str().map_or(id.clone(), str::to_string);
    let rollout = view["kind"] == "rollout";
    html! {
        @if view["finished_ms"].is_null() {
            h2 { "Actions" }
            @if rollout {
                (confirmed(&format!("/operations/{id}/pause"), &word, "Pause the rollout", chrome, html! {}))
                (confirmed(&format!("/operations/{id}/resume"), &word, "Resume the rollout", chrome, html! {}))
            }
            (confirmed(&format!("/operations/{id}/cancel"), &word,
                if rollout { "Abort the rollout" } else { "Cancel" }, chrome, html! {}))
        }
    }
}

pub fn audit(org: &str, action: &str, entries: &[Value]) -> Markup {
    html! {
        h1 { "Audit log" }
        form method="get" action="/audit" {
            label for="org" { "Org " }
            input #org name="org" value=(org) placeholder="every org";
            " "
            label for="action" { "Action " }
            input #action name="action" value=(action) placeholder="move. or org.placed";
            " "
            button type="submit" { "Filter" }
        }
        p.muted { "Newest first; " (entries.len()) " entries." }
        div.scroll {
            table #audit {
                thead { tr { th { "#" } th { "When" } th { "Who" } th { "What" } th { "Org" } th { "Detail" } } }
                tbody {
                    @for e in entries {
                        tr {
                            td { (text(&e["seq"])) }
                            td { (time(e["at_ms"].as_i64())) }
                            td { (text(&e["actor"])) }
                            td.action { (text(&e["action"])) }
                            td { (text(&e["org"])) }
                            td { code { (text(&e["detail"])) } }
                        }
                    }
                }
            }
        }
    }
}

pub fn not_found(what: &str) -> Markup {
    html! {
        h1 { "Not found" }
        p { (what) }
    }
}
