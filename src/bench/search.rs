//! `hemvist bench search`: the org users' search as users get it, over HTTP from a real
//! `hemvist dev`, on a large contact book, with a query mix that imitates typing (every prefix of
//! many first names, last names, whole names, companies and cities, one-letter, multi-word and
//! non-ASCII ones included). Beside it, in the
//! same run and on the same data: the plain ranked FTS5 query in-process, and Datasette serving
//! a copy of the same database through a canned query that ranks the same way. With `--tls`, the
//! same queries also go over HTTPS to a second `hemvist dev --tls` seeded the same way, started
//! after the plain one stops, so each node is measured alone on the machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dev::demo::Rng;
use anyhow::{bail, Context};
use clap::Args;
use hemvist_proto::OrgId;
use serde_json::Value;

use super::{ms, stats};

#[derive(Args)]
pub struct SearchArgs {
    /// Contacts in the searched org.
    #[arg(long, default_value_t = 100_000)]
    contacts: u64,
    /// Queries in the typing mix.
    #[arg(long, default_value_t = 3_000)]
    queries: usize,
    /// The `datasette` executable to compare with (scripts/bench-search installs one).
    #[arg(long)]
    datasette: Option<PathBuf>,
    /// Also measure the node over HTTPS: a second `hemvist dev --tls` with the same contacts,
    /// its client trusting the dev's CA.
    #[arg(long)]
    tls: bool,
    /// Keep the working folder (the databases) instead of removing it.
    #[arg(long)]
    keep: bool,
}

struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Datasette(Child);

impl Drop for Datasette {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How the bench's clients reach a node: plain HTTP, or HTTPS trusting the dev's CA.
#[derive(Clone, Default)]
struct Http {
    ca: Vec<reqwest::Certificate>,
}

impl Http {
    fn trusting(ca: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(ca).with_context(|| format!("read CA file {}", ca.display()))?;
        let ca = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("parse CA file {}", ca.display()))?;
        Ok(Self { ca })
    }

    fn builder(&self) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if self.ca.is_empty() {
            builder
        } else {
            builder.tls_certs_merge(self.ca.clone())
        }
    }

    /// A new client, so a run starts with no open connections; `keep_alive` as a browser
    /// does, or a new connection (and TLS handshake) for every request.
    fn client(&self, keep_alive: bool) -> anyhow::Result<reqwest::Client> {
        let idle = if keep_alive { 64 } else { 0 };
        self.builder()
            .pool_max_idle_per_host(idle)
            .build()
            .context("build HTTP client")
    }
}

/// A running `hemvist dev`, signed in as the demo user of its big org.
struct Node {
    /// The org's pages (ends in `/`); searches are GETs of it with `?q=`.
    url: String,
    /// The node's origin, `http://` or `https://`.
    base: String,
    org_id: String,
    data: PathBuf,
    session: String,
    http: Http,
    _dev: Dev,
}

/// Starts `hemvist dev` in `work/name` and signs in to its big org.
fn start_node(
    rt: &tokio::runtime::Handle,
    work: &Path,
    name: &str,
    contacts: u64,
    tls: bool,
) -> anyhow::Result<Node> {
    let data = work.join(name);
    let log = work.join(format!("{name}.log"));
    eprintln!(
        "bench: starting hemvist dev{} with {contacts} contacts in {}",
        if tls { " --tls" } else { "" },
        data.display()
    );
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "dev",
        "--data",
        data.to_str().unwrap_or_default(),
        "--port-base",
        "0",
    ])
    .args(["--contacts", &contacts.to_string()]);
    if tls {
        cmd.arg("--tls");
    }
    let dev = Dev(cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("start hemvist dev")?);
    let devjson = wait_for_file(&data.join("dev.json"), Duration::from_secs(600), &log)?;
    let http = match devjson["ca_file"].as_str() {
        Some(ca) => Http::trusting(Path::new(ca))?,
        None => Http::default(),
    };
    let org = &devjson["orgs"][0];
    let org_id = org["id"].as_str().context("org id")?.to_string();
    let url = org["url"].as_str().context("org url")?.to_string();
    let scheme = if tls { "https://" } else { "http://" };
    anyhow::ensure!(url.starts_with(scheme), "hemvist dev serves {url}");
    let base = url.split("/o/").next().unwrap_or_default().to_string();
    let session = sign_in(
        rt,
        &http,
        &base,
        &org_id,
        org["login"]["email"].as_str().unwrap_or_default(),
        org["login"]["password"].as_str().unwrap_or_default(),
    )?;
    Ok(Node {
        url,
        base,
        org_id,
        data,
        session,
        http,
        _dev: dev,
    })
}

/// The node's runs on the typing mix: the floor, then the mix at concurrency 1 and 16 over
/// kept-alive connections, and with `per_request`, at concurrency 1 over a new connection for
/// every request. Each measured run starts right after a write.
struct Runs {
    floor: Load,
    one: Load,
    sixteen: Load,
    per_request: Option<Load>,
}

fn measure(
    rt: &tokio::runtime::Handle,
    node: &Node,
    mix: &[String],
    per_request: bool,
) -> anyhow::Result<Runs> {
    let urls: Arc<Vec<(String, bool)>> = Arc::new(
        mix.iter()
            .map(|q| {
                (
                    format!("{}?q={}", node.url, url_encode(q)),
                    q.chars().count() == 1,
                )
            })
            .collect(),
    );
    let headers = vec![
        ("accept", "application/json".to_string()),
        ("cookie", node.session.clone()),
    ];
    // Warm up: the first requests open the tenant and fill SQLite's page cache.
    load(
        rt,
        node.http.client(true)?,
        Arc::new(urls.iter().take(200).cloned().collect()),
        4,
        headers.clone(),
    )?;
    // The floor: the same client and server with no work to do (GET /healthz).
    let floor_urls: Arc<Vec<(String, bool)>> = Arc::new(
        (0..mix.len())
            .map(|_| (format!("{}/healthz", node.base), false))
            .collect(),
    );
    let floor = load(rt, node.http.client(true)?, floor_urls, 16, vec![])?;
    let measured = |concurrency: usize, keep_alive: bool, n: usize| -> anyhow::Result<Load> {
        write_contact(rt, &node.http, &node.url, &node.session, n)?;
        load(
            rt,
            node.http.client(keep_alive)?,
            urls.clone(),
            concurrency,
            headers.clone(),
        )
    };
    Ok(Runs {
        floor,
        one: measured(1, true, 1)?,
        sixteen: measured(16, true, 2)?,
        per_request: if per_request {
            Some(measured(1, false, 3)?)
        } else {
            None
        },
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn fts_string(raw: &str) -> Option<String> {
    let q = hemvist_node::search::parse(raw).ok()?;
    if q.terms.is_empty() {
        return None;
    }
    Some(
        q.terms
            .iter()
            .map(|t| format!("\"{t}\"*"))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Everything but letters, digits and `-_.` escaped, as a query value or a form field.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.');

fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// Every prefix of the words people type: first and last names, company names, cities.
fn typing_mix(db: &Path, contacts: u64, size: usize) -> anyhow::Result<Vec<String>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut rng = Rng::new(7);
    let mut words = Vec::new();
    let mut stmt = conn.prepare("SELECT name, company, city FROM contacts WHERE id = ?1")?;
    for _ in 0..400 {
        let id = (rng.next_u64() % contacts) as i64 + 1;
        let (name, company, city): (String, String, String) =
            stmt.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        // What people type: a first name, a last name, a whole name, a company, a city.
        words.extend(name.split(' ').map(str::to_string));
        words.push(name);
        words.push(company);
        words.push(city);
    }
    let mut mix = Vec::new();
    for w in words {
        let chars: Vec<char> = w.chars().collect();
        for n in 1..=chars.len() {
            mix.push(chars[..n].iter().collect::<String>());
        }
    }
    for i in (1..mix.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        mix.swap(i, j);
    }
    mix.truncate(size);
    Ok(mix)
}

struct Load {
    rps: f64,
    all: super::Stats,
    one_letter: super::Stats,
    errors: usize,
}

/// Sends every query once, `concurrency` at a time; latencies per request.
fn load(
    rt: &tokio::runtime::Handle,
    client: reqwest::Client,
    urls: Arc<Vec<(String, bool)>>,
    concurrency: usize,
    headers: Vec<(&'static str, String)>,
) -> anyhow::Result<Load> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, urls, next, headers) =
                (client.clone(), urls.clone(), next.clone(), headers.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((url, one)) = urls.get(i) else { break };
                    let mut req = client.get(url);
                    for (k, v) in &headers {
                        req = req.header(*k, v);
                    }
                    let t = Instant::now();
                    let ok = match req.send().await {
                        Ok(resp) => {
                            let status = resp.status();
                            resp.bytes().await.is_ok() && status.is_success()
                        }
                        Err(_) => false,
                    };
                    out.push((t.elapsed(), *one, ok));
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    let wall = started.elapsed();
    let errors = results.iter().filter(|r| !r.2).count();
    Ok(Load {
        rps: results.len() as f64 / wall.as_secs_f64(),
        one_letter: stats(results.iter().filter(|r| r.1).map(|r| r.0).collect()),
        all: stats(results.iter().map(|r| r.0).collect()),
        errors,
    })
}

/// Adds a contact through the form, as a user would, so each measured run starts with the
/// org's index catching up after a write.
fn write_contact(
    rt: &tokio::runtime::Handle,
    http: &Http,
    url: &str,
    cookie: &str,
    n: usize,
) -> anyhow::Result<()> {
    rt.block_on(async {
        let http = http
            .builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let page = http
            .get(url)
            .header("cookie", cookie)
            .send()
            .await?
            .text()
            .await?;
        let csrf = page
            .split("name=\"_csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .context("page token")?
            .to_string();
        let resp = http
            .post(format!("{url}contacts"))
            .header("cookie", cookie)
            // The node refuses form posts that do not come from its own pages.
            .header("origin", url.split("/o/").next().unwrap_or(url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("_csrf={csrf}&name=Bench+Marker+{n}&city=Uppsala"))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().as_u16() == 303,
            "adding a contact answered {}",
            resp.status()
        );
        Ok(())
    })
}

fn wait_for_file(path: &Path, limit: Duration, log: &Path) -> anyhow::Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(v) = serde_json::from_str(&text) {
                return Ok(v);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "hemvist dev did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sign_in(
    rt: &tokio::runtime::Handle,
    http: &Http,
    base: &str,
    org: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    rt.block_on(async {
        let http = http
            .builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let form = http.get(format!("{base}/o/{org}/signin")).send().await?;
        let cookie = form
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("hv_signin="))
            .and_then(|v| v.split(';').next())
            .context("sign-in cookie")?
            .to_string();
        let page = form.text().await?;
        let token = page
            .split("name=\"_csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .context("sign-in token")?
            .to_string();
        let body = format!(
            "_csrf={token}&email={}&password={}",
            url_encode(email),
            url_encode(password)
        );
        let resp = http
            .post(format!("{base}/o/{org}/signin"))
            .header("cookie", cookie)
            .header("origin", base)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await?;
        let session = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("hv_session="))
            .and_then(|v| v.split(';').next())
            .context("signing in failed")?
            .to_string();
        Ok(session)
    })
}

pub fn run(args: SearchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Handle::current();
    let work = std::env::temp_dir().join(format!("hemvist-bench-search-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let node = start_node(&rt, &work, "http", args.contacts, false)?;

    let tenant =
        hemvist_node::tenants::TenantStore::new(&node.data.join("nodes").join("eu-north-1"), 1)?
            .path(&OrgId::parse(&node.org_id)?);
    let copy = work.join("contacts.db");
    rusqlite::Connection::open_with_flags(&tenant, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap_or_default()])
        .context("copy the tenant database")?;
    let mix = typing_mix(&copy, args.contacts, args.queries)?;
    let one_letter = mix.iter().filter(|q| q.chars().count() == 1).count();
    let non_ascii = mix.iter().filter(|q| !q.is_ascii()).count();
    let multi_word = mix.iter().filter(|q| q.trim().contains(' ')).count();
    eprintln!("bench: {} queries ({one_letter} one-letter, {multi_word} multi-word, {non_ascii} non-ASCII)", mix.len());

    // The plain ranked FTS5 query, in-process, no network: what a naive search does.
    let conn =
        rusqlite::Connection::open_with_flags(&copy, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.pragma_update(None, "mmap_size", 256 * 1024 * 1024)?;
    let mut stmt = conn.prepare(
        "SELECT c.id, c.name, c.email, c.company, c.city, c.phone FROM contacts_fts
         JOIN contacts c ON c.id = contacts_fts.rowid WHERE contacts_fts MATCH ?1 ORDER BY rank LIMIT 30",
    )?;
    let mut plain = Vec::new();
    let mut plain_one = Vec::new();
    for q in &mix {
        let Some(fts) = fts_string(q) else { continue };
        let t = Instant::now();
        let n = stmt.query_map([&fts], |r| r.get::<_, i64>(0))?.count();
        let d = t.elapsed();
        std::hint::black_box(n);
        plain.push(d);
        if q.chars().count() == 1 {
            plain_one.push(d);
        }
    }
    let plain_total: Duration = plain.iter().sum();

    // hemvist's own search, in-process on the same copy: the query work without HTTP, after
    // building the index the node builds on the first search.
    let t = Instant::now();
    let index = hemvist_node::search::index::Index::build(&conn, 0)?;
    let build = t.elapsed();
    let index_mib = index.bytes() as f64 / (1024.0 * 1024.0);
    let mut ours = Vec::new();
    let mut ours_one = Vec::new();
    let mut ours_word = Vec::new();
    let mut ours_words = Vec::new();
    for q in &mix {
        let Ok(parsed) = hemvist_node::search::parse(q) else {
            continue;
        };
        let t = Instant::now();
        let found = hemvist_node::search::run(&index, &parsed, 0);
        let d = t.elapsed();
        std::hint::black_box(found);
        ours.push(d);
        if q.chars().count() == 1 {
            ours_one.push(d);
        }
        if parsed.terms.len() > 1 {
            ours_words.push(d);
        } else {
            ours_word.push(d);
        }
    }
    let (word_stats, words_stats) = (stats(ours_word), stats(ours_words));
    let ours_total: Duration = ours.iter().sum();
    let ours_stats = stats(ours);
    let ours_one_stats = stats(ours_one);
    let plain_stats = stats(plain);
    let plain_one_stats = stats(plain_one);

    let http = measure(&rt, &node, &mix, args.tls)?;
    drop(node);
    let https = if args.tls {
        let node = start_node(&rt, &work, "https", args.contacts, true)?;
        Some(measure(&rt, &node, &mix, true)?)
    } else {
        None
    };

    let node_row = |what: &str, l: &Load| row(what, l.rps, &l.all, Some(&l.one_letter), l.errors);
    let mut rows = vec![
        row(
            "plain FTS5 bm25 LIMIT 30, in-process, 1 thread",
            mix.len() as f64 / plain_total.as_secs_f64(),
            &plain_stats,
            Some(&plain_one_stats),
            0,
        ),
        row(
            "hemvist search, in-process, 1 thread",
            mix.len() as f64 / ours_total.as_secs_f64(),
            &ours_stats,
            Some(&ours_one_stats),
            0,
        ),
        row("  of which one word", 0.0, &word_stats, None, 0),
        row("  of which several words", 0.0, &words_stats, None, 0),
        node_row("hemvist node, HTTP + JSON, concurrency 1", &http.one),
    ];
    if let Some(s) = &https {
        rows.push(node_row(
            "hemvist node, HTTPS + JSON, concurrency 1",
            &s.one,
        ));
    }
    rows.push(node_row(
        "hemvist node, HTTP + JSON, concurrency 16",
        &http.sixteen,
    ));
    if let Some(s) = &https {
        rows.push(node_row(
            "hemvist node, HTTPS + JSON, concurrency 16",
            &s.sixteen,
        ));
    }
    if let Some(l) = &http.per_request {
        rows.push(node_row(
            "hemvist node, HTTP + JSON, new connection per request, concurrency 1",
            l,
        ));
    }
    if let Some(l) = https.as_ref().and_then(|s| s.per_request.as_ref()) {
        rows.push(node_row(
            "hemvist node, HTTPS + JSON, new connection per request, concurrency 1",
            l,
        ));
    }
    rows.push(row(
        "floor: same client, GET /healthz, concurrency 16",
        http.floor.rps,
        &http.floor.all,
        None,
        http.floor.errors,
    ));
    if let Some(s) = &https {
        rows.push(row(
            "floor: same client, GET /healthz over HTTPS, concurrency 16",
            s.floor.rps,
            &s.floor.all,
            None,
            s.floor.errors,
        ));
    }

    let mut ratio = None;
    match &args.datasette {
        None => {
            eprintln!("bench: no --datasette given; scripts/bench-search installs and passes one")
        }
        Some(exe) => {
            let port = free_port()?;
            let meta = work.join("datasette.json");
            let canned =
                "SELECT c.id, c.name, c.email, c.company, c.city, c.phone FROM contacts_fts \
                          JOIN contacts c ON c.id = contacts_fts.rowid WHERE contacts_fts MATCH :q \
                          ORDER BY rank LIMIT 30";
            std::fs::File::create(&meta)?.write_all(
                serde_json::json!({"databases": {"contacts": {"queries": {"search": {"sql": canned}}}}})
                    .to_string()
                    .as_bytes(),
            )?;
            let _ds = Datasette(
                Command::new(exe)
                    .args(["serve", "-i"])
                    .arg(&copy)
                    .args([
                        "--host",
                        "127.0.0.1",
                        "--port",
                        &port.to_string(),
                        "--metadata",
                    ])
                    .arg(&meta)
                    .args(["--setting", "sql_time_limit_ms", "20000"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(work.join("datasette.log"))?)
                    .spawn()
                    .context("start datasette")?,
            );
            let ds_base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let up = rt.block_on(async {
                    reqwest::get(format!("{ds_base}/-/versions.json"))
                        .await
                        .map(|r| r.status().is_success())
                });
                if matches!(up, Ok(true)) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "datasette did not start: {}",
                        std::fs::read_to_string(work.join("datasette.log")).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let ds_urls: Arc<Vec<(String, bool)>> = Arc::new(
                mix.iter()
                    .filter_map(|q| {
                        fts_string(q).map(|f| {
                            (
                                format!(
                                    "{ds_base}/contacts/search.json?_shape=array&q={}",
                                    url_encode(&f)
                                ),
                                q.chars().count() == 1,
                            )
                        })
                    })
                    .collect(),
            );
            let client = || Http::default().client(true);
            load(
                &rt,
                client()?,
                Arc::new(ds_urls.iter().take(50).cloned().collect()),
                4,
                vec![],
            )?;
            let ds1 = load(&rt, client()?, ds_urls.clone(), 1, vec![])?;
            let ds16 = load(&rt, client()?, ds_urls.clone(), 16, vec![])?;
            ratio = Some(http.sixteen.rps / ds16.rps);
            rows.push(row(
                "Datasette canned query, HTTP + JSON, concurrency 1",
                ds1.rps,
                &ds1.all,
                Some(&ds1.one_letter),
                ds1.errors,
            ));
            rows.push(row(
                "Datasette canned query, HTTP + JSON, concurrency 16",
                ds16.rps,
                &ds16.all,
                Some(&ds16.one_letter),
                ds16.errors,
            ));
        }
    }

    println!(
        "hemvist bench search: {} contacts, {} typing queries ({one_letter} one-letter, {multi_word} multi-word, {non_ascii} non-ASCII)",
        args.contacts,
        mix.len()
    );
    println!();
    crate::table::print(
        &[
            "what",
            "req/s",
            "p50",
            "p99",
            "max",
            "1-letter mean",
            "1-letter p99",
            "errors",
        ],
        &rows,
    );
    println!(
        "\nhemvist's in-memory index of this org: built in {} from the database (the first search \
         after the tenant opens pays it), about {index_mib:.0} MiB. No result cache: every request \
         above is answered from the index, and each run starts right after a write.",
        ms(build)
    );
    if let Some(s) = &https {
        println!(
            "\nHTTPS rows: a second `hemvist dev --tls` seeded the same way, measured after the plain \
             one stopped, with the same queries and the same steps; TLS 1.3 by rustls with ring at \
             both ends, an ECDSA P-256 certificate, HTTP/1.1. The client keeps its connections \
             alive, as a browser does, so those rows show the steady-state cost of TLS (a run opens \
             at most as many connections as its concurrency). The \"new connection per request\" \
             rows connect anew for every request, over HTTPS with a TLS handshake each time \
             (rustls's defaults at both ends, which allow session resumption)."
        );
        println!(
            "HTTPS / HTTP requests per second at concurrency 16: {:.2}x; p50 at concurrency 1: {} \
             over HTTPS, {} over HTTP",
            s.sixteen.rps / http.sixteen.rps,
            ms(s.one.all.p50),
            ms(http.one.all.p50)
        );
    }
    if let Some(r) = ratio {
        println!("\nhemvist / Datasette requests per second at concurrency 16: {r:.1}x");
    }
    if args.keep {
        println!("\nkept: {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

fn row(
    what: &str,
    rps: f64,
    s: &super::Stats,
    one: Option<&super::Stats>,
    errors: usize,
) -> Vec<String> {
    vec![
        what.to_string(),
        format!("{rps:.0}"),
        ms(s.p50),
        ms(s.p99),
        ms(s.max),
        one.map(|o| ms(o.mean)).unwrap_or_default(),
        one.map(|o| ms(o.p99)).unwrap_or_default(),
        errors.to_string(),
    ]
}
