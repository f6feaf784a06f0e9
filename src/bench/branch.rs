//! `hemvist bench branch`: how long a branch takes from `POST /orgs/{id}/branches` to its first
//! served request, for tenants of several sizes, with and without a mask, beside a plain
//! restore of the same tenant's backups and a file copy of it, in the same run; then what many
//! idle branches on one node cost (requests to the store, open files).
//!
//! The system is the one `bench move` runs (SeaweedFS, a control plane and two nodes in this
//! process on loopback). Per size: an org is filled through its node's write path and backed
//! up; then, `--runs` times each: the file copied (`std::fs::copy` after a checkpoint), its
//! backups restored in this process to a file (the same restore a node does, with its checks),
//! and a branch made (no mask, then a mask of three columns) and timed until its node answers
//! its sign-in page with 200; each branch is destroyed after.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hemvist_proto::OrgId;
use serde_json::{json, Value};

use super::moves::fill;
use super::moves::system::{System, SystemArgs, Work};

const MASK: &str = "[contacts]\nname = \"fake_name\"\nemail = \"fake_email\"\nnotes = \"hash\"\n";

#[derive(Args)]
pub struct BranchArgs {
    /// Tenant sizes to measure, in MB (of database file).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1024")]
    pub sizes_mb: Vec<u64>,
    /// Runs of each way, per size (the table shows the median).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Idle branches made of one small org on one node, whose cost while idle is measured.
    #[arg(long, default_value_t = 500)]
    pub idle_branches: usize,
    /// How long the idle branches are watched.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
    /// The nodes' backup interval (`[backup] interval_ms`).
    #[arg(long, default_value_t = 1000)]
    pub backup_interval_ms: u64,
    /// The `weed` executable (SeaweedFS); scripts/bench-branch installs one.
    #[arg(long)]
    pub weed: PathBuf,
    /// Where the working folder goes (the system's temporary folder by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub keep: bool,
}

/// One size's medians.
struct SizeRow {
    mb: u64,
    file_bytes: u64,
    copy: Duration,
    restore: Duration,
    branch: Duration,
    masked: Duration,
    /// Of a branch's time: waiting for the parent's backups to cover "now".
    waiting: Duration,
}

struct Idle {
    branches: usize,
    made_in: Duration,
    requests: u64,
    open_tenants: usize,
    open_files: usize,
    hosted: usize,
    destroyed_in: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

pub fn run(args: BranchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let largest = args.sizes_mb.iter().copied().max().unwrap_or(1);
    super::moves::system::check_room(&parent, largest)?;
    let path = parent.join(format!("hemvist-bench-branch-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    let work = Work {
        path,
        keep: args.keep,
    };
    eprintln!("bench: working in {}", work.path.display());
    let started = Instant::now();
    let sys = System::start(
        &SystemArgs {
            weed: args.weed.clone(),
            backup_interval_ms: args.backup_interval_ms,
            idle_close_ms: 2_000,
            snapshot_after_bytes: None,
        },
        &work.path,
    )?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut rows = Vec::new();
    for &mb in &args.sizes_mb {
        match size(&args, &sys, &http, mb) {
            Ok(r) => rows.push(r),
            Err(e) => eprintln!("bench: {mb} MB: FAILED: {e:#}"),
        }
    }
    let idle = if args.idle_branches > 0 {
        match idle(&args, &sys) {
            Ok(i) => Some(i),
            Err(e) => {
                eprintln!("bench: idle branches: FAILED: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let weed = sys.weed_version();
    sys.stop();
    print(&args, &weed, &rows, idle.as_ref(), started.elapsed());
    Ok(())
}

fn size(
    args: &BranchArgs,
    sys: &System,
    http: &reqwest::Client,
    mb: u64,
) -> anyhow::Result<SizeRow> {
    let org = OrgId::parse(&format!("branch-bench-{mb}"))?;
    eprintln!("bench: {mb} MB: creating {org} and filling it");
    sys.create_org(&org, "eu-north")?;
    let node = sys.node_hosting(&org)?;
    let file_bytes = fill::fill(node, &org, mb)?;
    fill::settle_backups(sys, &org)?;
    let key: Value = sys.get(&format!("/orgs/{org}/data-key"))?;
    let key = hemvist_proto::DataKey::from_hex(key["data_key"].as_str().unwrap_or_default())?;
    let store = node
        .backup
        .as_ref()
        .context("the node keeps no backups")?
        .store
        .clone();
    let (mut copies, mut restores, mut branches, mut masked, mut waits) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        // A file copy of the tenant, its WAL checkpointed into it first.
        node.tenants.with_writer(&org, |conn| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(|e| hemvist_proto::HemvistError::internal(e.to_string()))
        })?;
        let copy = sys.work.join(format!("copy-{mb}-{run}.db"));
        let t = Instant::now();
        std::fs::copy(node.tenants.path(&org), &copy)?;
        std::fs::File::open(&copy)?.sync_all()?;
        copies.push(t.elapsed());
        std::fs::remove_file(&copy)?;

        // A plain restore of its backups, in this process.
        let out = sys.work.join(format!("restore-{mb}-{run}.db"));
        let t = Instant::now();
        sys.rt.block_on(async {
            let catalog = hemvist_node::backup::restore::catalog(&store, &org).await?;
            let plan = catalog.plan(i64::MAX, &[]).context("no restore point")?;
            hemvist_node::backup::restore::restore(&store, &catalog, &plan, &out, Some(&key)).await
        })?;
        restores.push(t.elapsed());
        std::fs::remove_file(&out)?;

        for (mask, into) in [(None, &mut branches), (Some(MASK), &mut masked)] {
            let name = format!("{}{run}", if mask.is_some() { "m" } else { "p" });
            let (took, waited) = branch_once(sys, http, &org, &name, mask)?;
            eprintln!(
                "bench: {mb} MB: branch {name} served after {} (of it waiting {})",
                ms(took),
                ms(waited)
            );
            into.push(took);
            waits.push(waited);
        }
    }
    Ok(SizeRow {
        mb,
        file_bytes,
        copy: median(copies),
        restore: median(restores),
        branch: median(branches),
        masked: median(masked),
        waiting: median(waits),
    })
}

/// Makes a branch and times it to its first served request (its sign-in page, 200); then
/// destroys it. (time to served, time its operation spent waiting for the parent's backups).
fn branch_once(
    sys: &System,
    http: &reqwest::Client,
    org: &OrgId,
    name: &str,
    mask: Option<&str>,
) -> anyhow::Result<(Duration, Duration)> {
    let id = format!("{org}--{name}");
    let base = sys.home_url(org)?;
    let t = Instant::now();
    let op: Value = sys.post(
        &format!("/orgs/{org}/branches"),
        &json!({"name": name, "ttl_ms": 3_600_000, "mask": mask}),
    )?;
    let op_id = op["id"].as_str().context("no operation id")?.to_string();
    let url = format!("{base}/o/{id}/signin");
    let served = loop {
        let status = sys
            .rt
            .block_on(http.get(&url).send())
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if status == 200 {
            break t.elapsed();
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("branch {id} was not served within 600 s (last status {status})");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let done: Value = sys.wait_for(&format!("{op_id} to end"), Duration::from_secs(600), || {
        let v: Value = sys.get(&format!("/operations/{op_id}")).ok()?;
        (!v["finished_ms"].is_null()).then_some(v)
    })?;
    if done["phase"] != "done" {
        bail!("branch {id}: {}", done["error"]);
    }
    let waited = phase_ms(sys, &op_id, "waiting", "placing")?;
    destroy(sys, &id)?;
    Ok((served, Duration::from_millis(waited.max(0) as u64)))
}

/// How long the operation stayed in `from` (from its audit entries).
fn phase_ms(sys: &System, op: &str, from: &str, to: &str) -> anyhow::Result<i64> {
    let audit: Vec<Value> = sys.get("/audit?limit=2000")?;
    let at = |action: &str| {
        audit
            .iter()
            .find(|a| a["action"] == action && a["detail"]["operation"] == op)
            .and_then(|a| a["at_ms"].as_i64())
    };
    match (
        at(&format!("branch.{from}")).or(at("branch.started")),
        at(&format!("branch.{to}")),
    ) {
        (Some(a), Some(b)) => Ok(b - a),
        _ => Ok(0),
    }
}

fn destroy(sys: &System, id: &str) -> anyhow::Result<()> {
    let op: Value = sys
        .rt
        .block_on(sys.control.delete(&format!("/branches/{id}")))?;
    let op_id = op["id"].as_str().context("no operation id")?.to_string();
    sys.wait_for(&format!("{op_id} to end"), Duration::from_secs(600), || {
        let v: Value = sys.get(&format!("/operations/{op_id}")).ok()?;
        (v["phase"] == "done").then_some(())
    })
}

/// Files this process holds open under `dir`.
fn open_files_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|p| p.starts_with(dir))
                .count()
        })
        .unwrap_or(0)
}

fn idle(args: &BranchArgs, sys: &System) -> anyhow::Result<Idle> {
    let org = OrgId::parse("branch-idle")?;
    eprintln!(
        "bench: idle: making {} branches of {org}",
        args.idle_branches
    );
    sys.create_org(&org, "eu-north")?;
    let node = sys.node_hosting(&org)?.clone();
    fill::fill(&node, &org, 1)?;
    fill::settle_backups(sys, &org)?;
    let t = Instant::now();
    let mut open: Vec<String> = Vec::new();
    let mut made = 0;
    let mut next = 0;
    while made < args.idle_branches {
        while open.len() < 8 && next < args.idle_branches {
            let op: Value = sys.post(
                &format!("/orgs/{org}/branches"),
                &json!({"name": format!("i{next}"), "ttl_ms": 3_600_000}),
            )?;
            open.push(op["id"].as_str().context("no operation id")?.to_string());
            next += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
        let mut still = Vec::new();
        for id in open {
            let v: Value = sys.get(&format!("/operations/{id}"))?;
            match v["finished_ms"].is_null() {
                true => still.push(id),
                false if v["phase"] == "done" => made += 1,
                false => bail!("{id}: {}", v["error"]),
            }
        }
        open = still;
    }
    let made_in = t.elapsed();
    eprintln!(
        "bench: idle: {made} branches made in {:.1} s; letting them go idle",
        made_in.as_secs_f64()
    );
    // Closed once idle, and every first backup shipped.
    std::thread::sleep(Duration::from_millis(4_000));
    let count = || -> u64 {
        sys.nodes
            .iter()
            .filter_map(|n| n.node.backup.as_ref())
            .map(|r| {
                r.metrics.puts.load(Relaxed)
                    + r.metrics.deletes.load(Relaxed)
                    + r.metrics.put_failures.load(Relaxed)
            })
            .sum()
    };
    let before = count();
    std::thread::sleep(Duration::from_secs(args.idle_secs));
    let requests = count() - before;
    let tenants_dir = node.config.data_dir.join("tenants");
    let idle = Idle {
        branches: made,
        made_in,
        requests,
        open_tenants: node.tenants.open_count(),
        open_files: open_files_under(&tenants_dir),
        hosted: node.state.hosted_count(),
        destroyed_in: Duration::ZERO,
    };
    eprintln!("bench: idle: destroying them");
    let t = Instant::now();
    for i in 0..made {
        destroy(sys, &format!("{org}--i{i}"))?;
    }
    Ok(Idle {
        destroyed_in: t.elapsed(),
        ..idle
    })
}

fn print(args: &BranchArgs, weed: &str, rows: &[SizeRow], idle: Option<&Idle>, took: Duration) {
    println!(
        "hemvist bench branch: a control plane and two nodes in this process, backups every {} \
         ms to SeaweedFS {weed} on loopback; {} run(s) per way and size (median shown); the \
         mask rewrites 3 columns of every contact (fake_name, fake_email, hash of the notes); \
         {:.0} s in all\n",
        args.backup_interval_ms,
        args.runs,
        took.as_secs_f64()
    );
    println!(
        "{:<8} {:>9}  {:>10}  {:>10}  {:>14}  {:>14}  {:>12}  {:>11}  {:>11}",
        "size",
        "file",
        "file copy",
        "restore",
        "branch served",
        "masked served",
        "of it waiting",
        "branch/rest",
        "masked/rest"
    );
    for r in rows {
        println!(
            "{:<8} {:>9}  {:>10}  {:>10}  {:>14}  {:>14}  {:>12}  {:>10.2}x  {:>10.2}x",
            format!("{} MB", r.mb),
            format!("{:.1} MB", r.file_bytes as f64 / (1u64 << 20) as f64),
            ms(r.copy),
            ms(r.restore),
            ms(r.branch),
            ms(r.masked),
            ms(r.waiting),
            r.branch.as_secs_f64() / r.restore.as_secs_f64().max(1e-9),
            r.masked.as_secs_f64() / r.restore.as_secs_f64().max(1e-9),
        );
    }
    println!(
        "\nbranch served: POST /orgs/{{id}}/branches -> the branch's sign-in page answered 200 by \
         its node (the parent's last writes shipped, its backups restored with integrity_check, \
         its sessions removed; masked: the mask, a full-text rebuild and VACUUM INTO a fresh \
         file; then hosted). restore: the same tenant's backups restored in this \
         process to a file (with integrity_check). file copy: std::fs::copy of the tenant file \
         after a checkpoint, then fsync."
    );
    if let Some(r) = rows.iter().find(|r| r.mb == 100) {
        let met = r.branch < Duration::from_secs(2)
            && r.branch.as_secs_f64() <= 1.5 * r.restore.as_secs_f64();
        println!(
            "100 MB branch serving in < 2 s, within 1.5x of the restore: {}. {} served, restore \
             {} ({:.2}x); masked {}.",
            if met { "met" } else { "NOT met" },
            ms(r.branch),
            ms(r.restore),
            r.branch.as_secs_f64() / r.restore.as_secs_f64().max(1e-9),
            ms(r.masked)
        );
    }
    if let Some(i) = idle {
        println!(
            "\n{} idle branches of one 1 MB org on one node: made in {:.1} s ({:.0} ms each, 8 at \
             once); watched {} s while idle: {} requests to the store by the nodes' replicators \
             (PUT and DELETE; an idle tenant is not listed or read either), {} tenants open, {} \
             files open under tenants/, {} hosted; destroyed (file and backups) in {:.1} s.",
            i.branches,
            i.made_in.as_secs_f64(),
            i.made_in.as_secs_f64() * 1000.0 / i.branches.max(1) as f64,
            args.idle_secs,
            i.requests,
            i.open_tenants,
            i.open_files,
            i.hosted,
            i.destroyed_in.as_secs_f64()
        );
        println!(
            "500 idle branches cost 0 requests and no open files: {}.",
            if i.branches >= 500 && i.requests == 0 && i.open_files == 0 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
}
