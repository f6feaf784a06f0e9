//! `hemvist bench failover`: how long a dead node's orgs are out of service until the region's
//! other node serves them again (restored from the region's store), for 1, 100 and 1,000 orgs
//! on the dead node; how long draining 1,000 orgs off a live node takes; and whether any
//! acknowledged row is lost. Beside it, the naive baseline: an operator's script restoring
//! each org's newest backup, one after another, with `hemvist restore`.
//!
//! Per case a fresh system runs on loopback: a control plane in this process (one region,
//! eu-north, a short lease and failover grace), two `hemvist node` processes of this binary
//! and one SeaweedFS (shared by the cases, each case under its own prefix). The orgs are
//! created while only node A runs, so all land on it; each gets a few rows through the real
//! sign-in and contact forms and is shipped (the control plane knows a backup position after
//! the writes); then node B starts, and A is SIGKILLed (failover) or drained (drain).
//!
//! Files: [`plane`] (the system), [`load`] (orgs, rows, backups, counting), [`naive`],
//! [`report`].

mod load;
mod naive;
mod plane;
mod report;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use object_store::ObjectStore;
use serde_json::{json, Value};

use super::moves::system::{backup_config, log_to, Work, ACCESS_KEY, BUCKET, SECRET_KEY};
use super::replication::procs::{log_tail, Weed};
use load::{load, rows_lost, wait_shipped, Loaded};
use plane::{Plane, Timing};

#[derive(Args)]
pub struct FailoverArgs {
    /// Orgs on the node that dies, one failover case per number.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    pub orgs: Vec<usize>,
    /// Orgs on the node that is drained (0: no drain case).
    #[arg(long, default_value_t = 1000)]
    pub drain: usize,
    /// Rows (contacts) written to each org before the kill or drain.
    #[arg(long, default_value_t = 3)]
    pub rows: u32,
    /// The control plane's `lease_ttl_ms`.
    #[arg(long, default_value_t = 1000)]
    pub lease_ttl_ms: u64,
    /// The control plane's `heartbeat_interval_ms` (at most half the lease).
    #[arg(long, default_value_t = 250)]
    pub heartbeat_ms: u64,
    /// The control plane's `failover_grace_ms` (at least twice the lease).
    #[arg(long, default_value_t = 2000)]
    pub grace_ms: u64,
    /// The nodes' `[backup] interval_ms`.
    #[arg(long, default_value_t = 500)]
    pub backup_interval_ms: u64,
    /// Leave out the naive baseline (sequential `hemvist restore` per org).
    #[arg(long)]
    pub no_naive: bool,
    /// The `weed` executable (SeaweedFS); scripts/bench-failover installs one.
    #[arg(long)]
    pub weed: PathBuf,
    /// Where the working folder goes (the system's temporary folder by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the working folder (databases, the store's files, the logs).
    #[arg(long)]
    pub keep: bool,
}

/// One failover case's outcome.
pub struct FailoverResult {
    pub orgs: usize,
    pub setup: Duration,
    /// Per org, kill → the new node reported hosting it (the op's `serving_ms`), sorted.
    pub serving: Vec<Duration>,
    /// Kill → the last failover op finished (`finished_ms`).
    pub all_done: Duration,
    /// Kill → the first failover op started (the control plane decided the node is dead).
    pub started: Duration,
    /// Orgs whose pages were fetched at the new node, and how many answered as served.
    pub http_checked: usize,
    pub http_ok: usize,
    pub http_note: Option<String>,
    pub acked: u64,
    pub lost: u64,
    pub naive: Option<anyhow::Result<naive::Naive>>,
}

pub struct DrainResult {
    pub orgs: usize,
    pub setup: Duration,
    /// Request → the node holds no tenant and every move is done.
    pub total: Duration,
    /// Each move, started → finished, sorted.
    pub moves: Vec<Duration>,
    pub not_done: usize,
    pub acked: u64,
    pub lost: u64,
}

pub fn run(args: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.orgs.is_empty() || args.drain > 0,
        "nothing to measure: --orgs names no number and --drain is 0"
    );
    anyhow::ensure!(
        args.orgs.iter().all(|&n| (1..=9999).contains(&n)) && args.drain <= 9999,
        "--orgs and --drain take 1 to 9999 orgs"
    );
    anyhow::ensure!(args.rows > 0, "--rows must be at least 1");
    let timing = Timing {
        lease_ttl_ms: args.lease_ttl_ms,
        heartbeat_interval_ms: args.heartbeat_ms,
        failover_grace_ms: args.grace_ms,
        backup_interval_ms: args.backup_interval_ms,
    };
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = parent.join(format!("hemvist-bench-failover-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    // Dropped last: everything below stops before its files go.
    let work = Work {
        path,
        keep: args.keep,
    };
    eprintln!("bench: working in {}", work.path.display());
    log_to(&work.path.join("control.log"))?;
    let started = Instant::now();
    let weed = Weed::start(
        &args.weed,
        &work.path.join("weed"),
        BUCKET,
        ACCESS_KEY,
        SECRET_KEY,
    )?;
    wait_bucket(&weed)?;

    let mut failovers = Vec::new();
    for &n in &args.orgs {
        eprintln!("bench: failover of {n} orgs");
        let r = failover_case(&args, timing, &weed.s3, &work.path, n);
        if let Err(e) = &r {
            eprintln!("bench: failover of {n} orgs: FAILED: {e:#}");
        }
        failovers.push((n, r));
    }
    let mut drain = None;
    if args.drain > 0 {
        eprintln!("bench: drain of {} orgs", args.drain);
        let r = drain_case(&args, timing, &weed.s3, &work.path, args.drain);
        if let Err(e) = &r {
            eprintln!("bench: drain: FAILED: {e:#}");
        }
        drain = Some((args.drain, r));
    }
    drop(weed);
    report::print(&args, timing, &failovers, drain.as_ref(), started.elapsed());
    Ok(())
}

/// The bucket answers before anything is measured (weed creates it shortly after its S3 port
/// opens).
fn wait_bucket(weed: &Weed) -> anyhow::Result<()> {
    let rt = tokio::runtime::Handle::current();
    let store = backup_config(&weed.s3, "probe", 1000).open()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = rt.block_on(store.list_with_delimiter(None)) {
        if Instant::now() > deadline {
            bail!("the bucket did not appear: {e}: {}", log_tail(&weed.log));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// A fresh system with `n` orgs, written to and shipped, on node A, and B started.
fn prepared(
    args: &FailoverArgs,
    timing: Timing,
    s3: &str,
    work: &std::path::Path,
    case: &str,
    n: usize,
) -> anyhow::Result<(Plane, Vec<Loaded>, Duration)> {
    let mut plane = Plane::start(&work.join(case), s3, case, timing)?;
    plane.add_node("eu-north-a", 1)?;
    let orgs: Vec<String> = (0..n).map(|i| format!("{case}-{i:04}")).collect();
    let t = Instant::now();
    let loaded = load(&plane, &orgs, args.rows)?;
    wait_shipped(&plane, &loaded, Duration::from_secs(600))?;
    let setup = t.elapsed();
    eprintln!(
        "bench: {case}: {n} orgs created, written and shipped in {:.1} s",
        setup.as_secs_f64()
    );
    plane.add_node("eu-north-b", 2)?;
    Ok((plane, loaded, setup))
}

/// The newest operation of `kind` per org of `orgs`, from `GET /operations`.
fn ops_of(
    plane: &Plane,
    kind: &str,
    orgs: &HashSet<&str>,
) -> anyhow::Result<HashMap<String, Value>> {
    let ops: Vec<Value> = plane.get("/operations")?;
    let mut out = HashMap::new();
    // Newest first: the first seen per org is its newest.
    for op in ops {
        let Some(org) = op["org"].as_str() else {
            continue;
        };
        if op["kind"] == kind && orgs.contains(org) && !out.contains_key(org) {
            out.insert(org.to_string(), op);
        }
    }
    Ok(out)
}

fn ms_after(at: Option<i64>, from_ms: i64) -> Duration {
    Duration::from_millis(at.map_or(0, |t| (t - from_ms).max(0)) as u64)
}

fn failover_case(
    args: &FailoverArgs,
    timing: Timing,
    s3: &str,
    work: &std::path::Path,
    n: usize,
) -> anyhow::Result<FailoverResult> {
    let case = format!("fo{n}");
    let (mut plane, loaded, setup) = prepared(args, timing, s3, work, &case, n)?;
    let names: HashSet<&str> = loaded.iter().map(|l| l.org.as_str()).collect();

    let kill_ms = hemvist_node::now_ms();
    plane.node("eu-north-a")?.kill()?;
    let killed = Instant::now();
    let limit = Duration::from_secs(900);
    let ops = loop {
        let ops = ops_of(&plane, "failover", &names)?;
        if let Some(failed) = ops.values().find(|o| o["phase"] == "failed") {
            bail!("a failover failed: {failed}");
        }
        if ops.len() == n && ops.values().all(|o| o["phase"] == "done") {
            break ops;
        }
        if killed.elapsed() > limit {
            bail!(
                "{} of {n} failovers done after {} s; node B's log ends: {}",
                ops.values().filter(|o| o["phase"] == "done").count(),
                limit.as_secs(),
                log_tail(&plane.node("eu-north-b")?.log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut serving: Vec<Duration> = ops
        .values()
        .map(|o| ms_after(o["detail"]["serving_ms"].as_i64(), kill_ms))
        .collect();
    serving.sort();
    let all_done = ops
        .values()
        .map(|o| ms_after(o["finished_ms"].as_i64(), kill_ms))
        .max()
        .unwrap_or_default();
    let first_start = ops
        .values()
        .map(|o| ms_after(o["started_ms"].as_i64(), kill_ms))
        .min()
        .unwrap_or_default();
    eprintln!(
        "bench: {case}: all {n} failovers done {:.2} s after the kill",
        all_done.as_secs_f64()
    );

    // Served at B: a page of the org answers as served (200, or 303 to its sign-in), not
    // 307 (lives elsewhere) or 503 (not open yet).
    let b_url = plane.node("eu-north-b")?.url.clone();
    let mut picks: Vec<&Loaded> = vec![&loaded[0], &loaded[n / 2], &loaded[n - 1]];
    picks.dedup_by(|a, b| a.org == b.org);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;
    let (mut http_ok, mut http_note) = (0, None);
    for l in &picks {
        let shown: Value = plane.get(&format!("/orgs/{}", l.org))?;
        let resp = plane
            .rt
            .block_on(http.get(format!("{b_url}/o/{}/", l.org)).send());
        let status = resp.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        let location = resp
            .as_ref()
            .ok()
            .and_then(|r| r.headers().get("location"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let served = status == 200 || (status == 303 && location.contains("signin"));
        if served && shown["node"] == "eu-north-b" {
            http_ok += 1;
        } else {
            http_note = Some(format!(
                "{}: GET at B answered {status} {location}, its node is {}",
                l.org, shown["node"]
            ));
        }
    }

    let naive = (!args.no_naive).then(|| {
        eprintln!("bench: {case}: naive baseline ({n} sequential restores)");
        naive::run(&plane, &loaded, &work.join(&case).join("naive"))
    });
    let b = plane.node("eu-north-b")?;
    b.stop();
    let (acked, lost) = rows_lost(&loaded, |org| b.tenant_file(org))?;
    plane.stop();
    Ok(FailoverResult {
        orgs: n,
        setup,
        serving,
        all_done,
        started: first_start,
        http_checked: picks.len(),
        http_ok,
        http_note,
        acked,
        lost,
        naive,
    })
}

fn drain_case(
    args: &FailoverArgs,
    timing: Timing,
    s3: &str,
    work: &std::path::Path,
    n: usize,
) -> anyhow::Result<DrainResult> {
    let case = format!("dr{n}");
    let (mut plane, loaded, setup) = prepared(args, timing, s3, work, &case, n)?;
    let names: HashSet<&str> = loaded.iter().map(|l| l.org.as_str()).collect();
    let t = Instant::now();
    let _: Value = plane.post("/nodes/eu-north-a/drain", &json!({}))?;
    let limit = Duration::from_secs(900);
    let ops = loop {
        let nodes: Vec<Value> = plane.get("/nodes")?;
        let left = nodes
            .iter()
            .find(|v| v["id"] == "eu-north-a")
            .and_then(|v| v["tenants"].as_u64())
            .context("GET /nodes shows no tenants for eu-north-a")?;
        let ops = ops_of(&plane, "move", &names)?;
        if left == 0 && ops.len() == n && ops.values().all(|o| !o["finished_ms"].is_null()) {
            break ops;
        }
        if t.elapsed() > limit {
            bail!(
                "after {} s, eu-north-a still holds {left} tenants ({} moves started); its log \
                 ends: {}",
                limit.as_secs(),
                ops.len(),
                log_tail(&plane.node("eu-north-a")?.log)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let total = t.elapsed();
    let mut moves: Vec<Duration> = ops
        .values()
        .map(|o| {
            ms_after(
                o["finished_ms"].as_i64(),
                o["started_ms"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    moves.sort();
    let not_done = ops.values().filter(|o| o["phase"] != "done").count();
    eprintln!(
        "bench: {case}: drained in {:.1} s ({not_done} moves not done)",
        total.as_secs_f64()
    );
    let b = plane.node("eu-north-b")?;
    b.stop();
    let (acked, lost) = rows_lost(&loaded, |org| b.tenant_file(org))?;
    plane.stop();
    Ok(DrainResult {
        orgs: n,
        setup,
        total,
        moves,
        not_done,
        acked,
        lost,
    })
}
