//! `hemvist bench dashboard`: what operators wait for at a large fleet (default 100,000 orgs in
//! three regions), over HTTP against a control plane in this process: `orgs list`'s first and
//! a middle page and one org over the admin API; the dashboard's org search as one types (an
//! id prefix, a common name part, a rare one, no match), signed in as an operator would be;
//! and walking every page (`orgs list --all`). Beside them, the floor: the search's own SQL on
//! the same store file, nothing rendered. Each case is timed per request: p50, p99, max.
//!
//! Everything binds 127.0.0.1; the admin token is made up per run and never printed.

use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct DashboardArgs {
    /// Orgs in the fleet.
    #[arg(long, default_value_t = 100_000)]
    orgs: usize,
    /// Requests per case.
    #[arg(long, default_value_t = 200)]
    requests: usize,
}

const FIRST: &[&str] = &[
    "Nord", "Fjäll", "Rhein", "Blue", "Acme", "Sol", "Hav", "Berg", "Skog", "Lake",
];
const SECOND: &[&str] = &[
    "verk", "bok", "data", "byrå", "works", "labs", "hus", "kraft", "ljus", "tech",
];
const FORM: &[&str] = &["AB", "GmbH", "Inc.", "Oy", "AS"];

/// Names like "Fjällkraft 4217 AB": a first part shared by a tenth of the fleet, a whole word
/// by a hundredth, the number by one org.
fn name_of(i: usize) -> String {
    format!(
        "{}{} {i} {}",
        FIRST[i % FIRST.len()],
        SECOND[(i / FIRST.len()) % SECOND.len()],
        FORM[(i / 100) % FORM.len()]
    )
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]);
    (at(0.50), at(0.99), ms(*v.last().unwrap_or(&Duration::ZERO)))
}

pub fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("hemvist-bench-dashboard-{}", std::process::id()));
    let result = measure(&args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn measure(args: &DashboardArgs, root: &std::path::Path) -> anyhow::Result<()> {
    anyhow::ensure!(args.orgs >= 1_000, "--orgs: at least 1000");
    let data = root.join("control");
    std::fs::create_dir_all(&data)?;
    let regions = super::fleet::regions(root)?;
    let fill = Instant::now();
    super::fleet::fill(&data.join("control.db"), &regions, args.orgs, name_of)?;
    let fill = fill.elapsed();

    let token = hemvist_proto::random::hex(24)?;
    let config = super::fleet::control_config(root, &data, regions, &token)?;
    let rt = tokio::runtime::Runtime::new()?;
    let shutdown = CancellationToken::new();
    let (bound, task) = rt.block_on(hemvist_control::start(config, shutdown.clone()))?;
    hemvist_net::tls::install_crypto();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let base = format!("http://{}", bound.api);

    // Signed in to the dashboard as an operator is.
    let cookie = rt.block_on(async {
        let resp = http
            .post(format!("{base}/signin"))
            .header("content-type", "application/x-www-form-urlencoded")
            // A hex token needs no escaping.
            .body(format!("token={token}"))
            .send()
            .await?;
        let set = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow::anyhow!("signing in to the dashboard set no cookie"))?;
        Ok::<_, anyhow::Error>(set.split(';').next().unwrap_or_default().to_string())
    })?;
    // One request: its time, and how many orgs (API) or result rows (dashboard) it had.
    let get = |path: &str, dashboard: bool| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        let (token, cookie) = (token.clone(), cookie.clone());
        rt.block_on(async move {
            let t = Instant::now();
            let req = if dashboard {
                http.get(url)
                    .header("cookie", cookie)
                    .header("hx-request", "true")
            } else {
                http.get(url).bearer_auth(token)
            };
            let resp = req.send().await?;
            let status = resp.status();
            let body = resp.text().await?;
            let elapsed = t.elapsed();
            anyhow::ensure!(status.is_success(), "{path}: {status}: {body}");
            let n = if dashboard {
                body.matches("<tr>").count().saturating_sub(1)
            } else {
                serde_json::from_str::<serde_json::Value>(&body)?
                    .as_array()
                    .map_or(1, Vec::len)
            };
            Ok::<_, anyhow::Error>((elapsed, n))
        })
    };

    let middle = format!("org-{:05}", args.orgs / 2);
    let rare = name_of(args.orgs / 3);
    let rare = rare.split(' ').take(2).collect::<Vec<_>>().join(" ");
    let cases: Vec<(String, String, bool)> = vec![
        (
            "API orgs list, first page (100)".into(),
            "/api/v1/orgs?limit=100".into(),
            false,
        ),
        (
            "API orgs list, a middle page (100)".into(),
            format!("/api/v1/orgs?limit=100&after={middle}"),
            false,
        ),
        (
            "API one org (orgs show)".into(),
            format!("/api/v1/orgs/{middle}"),
            false,
        ),
        (
            "dashboard search: an id prefix".into(),
            format!("/orgs/search?q=org-{}", &middle[4..8]),
            true,
        ),
        (
            "dashboard search: a common name part".into(),
            "/orgs/search?q=kraft".into(),
            true,
        ),
        (
            format!("dashboard search: a rare name ({rare:?})"),
            format!("/orgs/search?q={}", rare.replace(' ', "%20")),
            true,
        ),
        (
            "dashboard search: no match".into(),
            "/orgs/search?q=zzzz".into(),
            true,
        ),
    ];
    let mut rows = Vec::new();
    for (what, path, dashboard) in &cases {
        get(path, *dashboard)?;
        let mut times = Vec::with_capacity(args.requests);
        let mut found = 0;
        for _ in 0..args.requests.max(1) {
            let (t, n) = get(path, *dashboard)?;
            times.push(t);
            found = n;
        }
        let (p50, p99, max) = percentiles(times);
        rows.push(vec![
            what.clone(),
            format!("{p50:.2} ms"),
            format!("{p99:.2} ms"),
            format!("{max:.2} ms"),
            found.to_string(),
        ]);
    }

    // Every page, as `orgs list --all` walks them (10,000 a page, the most one holds).
    let t = Instant::now();
    let mut after = String::new();
    let mut seen = 0;
    loop {
        let cursor = if after.is_empty() {
            String::new()
        } else {
            format!("&after={after}")
        };
        let path = format!("/api/v1/orgs?limit=10000{cursor}");
        let (http, url, token) = (http.clone(), format!("{base}{path}"), token.clone());
        let page: Vec<serde_json::Value> = rt.block_on(async move {
            Ok::<_, anyhow::Error>(
                http.get(url)
                    .bearer_auth(token)
                    .send()
                    .await?
                    .json()
                    .await?,
            )
        })?;
        seen += page.len();
        match page.last().and_then(|o| o["id"].as_str()) {
            Some(last) if page.len() == 10_000 => after = last.to_string(),
            _ => break,
        }
    }
    anyhow::ensure!(seen == args.orgs, "walking every page found {seen} orgs");
    let walk = t.elapsed();
    rows.push(vec![
        "API every page (orgs list --all, 10,000 a page)".into(),
        format!("{:.0} ms", walk.as_secs_f64() * 1000.0),
        "-".into(),
        "-".into(),
        seen.to_string(),
    ]);
    shutdown.cancel();
    let _ = rt.block_on(task);

    // The floor: the search's own query on the same file, nothing rendered or sent.
    let conn = rusqlite::Connection::open(data.join("control.db"))?;
    for (what, text) in [("a common name part", "kraft"), ("no match", "zzzz")] {
        let mut stmt = conn.prepare(
            "SELECT o.id, o.name FROM orgs o JOIN placements p ON p.org = o.id
             WHERE o.id LIKE ?1 OR o.name LIKE ?2 ORDER BY o.id LIKE ?1 DESC, o.id LIMIT 25",
        )?;
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..args.requests.max(1) {
            let t = Instant::now();
            let n = stmt
                .query_map([format!("{text}%"), format!("%{text}%")], |r| {
                    r.get::<_, String>(0)
                })?
                .count();
            times.push(t.elapsed());
            found = n;
        }
        let (p50, p99, max) = percentiles(times);
        rows.push(vec![
            format!("floor: the search's SQL alone, {what}"),
            format!("{p50:.2} ms"),
            format!("{p99:.2} ms"),
            format!("{max:.2} ms"),
            found.to_string(),
        ]);
    }
    println!(
        "\noperators at a large fleet: {} orgs in 3 regions (filled in {:.1} s), {} requests a case, over HTTP on 127.0.0.1\n",
        args.orgs,
        fill.as_secs_f64(),
        args.requests.max(1)
    );
    crate::table::print(&["WHAT", "P50", "P99", "MAX", "ORGS/ROWS"], &rows);
    Ok(())
}
