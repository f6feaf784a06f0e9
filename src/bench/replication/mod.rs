//! `hemvist bench replication`: what continuous backup costs with many tenants, hemvist's
//! replicator beside Litestream, on the same kind of tenant databases, against the same
//! S3-compatible server (SeaweedFS `weed mini` on loopback), in the same run.
//!
//! Both replicators reach the store only through a counting proxy in this process, which logs
//! every request (method, key, start and completion), so requests are counted the same way for
//! both, whatever each one says about itself. For each tenant count, each replicator is measured
//! in two phases: idle (no writes) and a light write load (10 % of tenants write one small row a
//! second each), for requests per minute, CPU, memory and open files of the replicating process,
//! and, under writes, how long a committed write takes to reach the store (replication lag).
//! Then one large tenant is restored by each.

pub mod node;
pub(crate) mod procs;
mod proxy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use hemvist_node::backup::restore;
use hemvist_node::backup::store::BackupConfig;
use hemvist_node::tenants::TenantStore;
use hemvist_proto::OrgId;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use procs::{cpu_secs, log_tail, open_files, rss_mib, thread_cpu_secs, Guard, Weed};
use proxy::{Logged, Proxy};

#[derive(Args)]
pub struct ReplicationArgs {
    /// Tenant counts to measure, each with both replicators.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    tenants: Vec<usize>,
    /// Length of each phase (idle, then writes), in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The `weed` executable (SeaweedFS); scripts/bench-replication installs one.
    #[arg(long)]
    weed: PathBuf,
    /// The `litestream` executable; scripts/bench-replication installs one.
    #[arg(long)]
    litestream: PathBuf,
    /// Size of the tenant restored at the end, in MB (0: no restore measurement).
    #[arg(long, default_value_t = 100)]
    big_mb: u64,
    /// The longest to wait for a replicator's first upload of every tenant, in seconds.
    #[arg(long, default_value_t = 600)]
    wait_secs: u64,
    /// After the write phase, how long a write may still take to be shipped before it counts
    /// as unshipped, in seconds.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// Measure only the restore of one large tenant (no fleet phases).
    #[arg(long)]
    restore_only: bool,
    /// Keep the working folder (databases, logs, the store's files) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// The one bucket, and the credentials of the one identity of the loopback store.
const BUCKET: &str = "bench";
const ACCESS_KEY: &str = "AKBENCHREPLICATION";
const SECRET_KEY: &str = "bench-replication-secret-key";
/// The write every writer makes: one small contact (the schema's triggers fill its search
/// index too).
pub const INSERT: &str = "INSERT INTO contacts (name, created_ms, updated_ms) VALUES (?1, ?2, ?2)";

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The org of the `i`th tenant (from 1): `t00001`, ...
pub fn org_name(i: usize) -> String {
    format!("t{i:05}")
}

/// The data key of the `i`th tenant: as in production every org has one, and hemvist seals its
/// backups with it; here it is made up, the same in both processes.
pub fn data_key(i: usize) -> hemvist_proto::DataKey {
    let mut rng = crate::dev::demo::Rng::new(i as u64);
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    hemvist_proto::DataKey(key)
}

/// The `writers` tenants written, spread evenly over all of them.
pub fn writer_orgs<T: Clone>(all: &[T], writers: usize) -> Vec<T> {
    let writers = writers.min(all.len());
    (0..writers)
        .map(|i| all[i * all.len() / writers].clone())
        .collect()
}

/// Calls `write(i)` for each of `writers` once a second, spread evenly over the second, for
/// `seconds`. A write late for its slot runs at once; the phase still ends on time. Returns
/// how many writes were made.
pub fn paced(
    writers: usize,
    seconds: u64,
    mut write: impl FnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    if writers == 0 {
        return Ok(0);
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut k = 0;
    loop {
        let due = start + Duration::from_secs_f64(k as f64 / writers as f64);
        let now = Instant::now();
        if due >= end || now >= end {
            return Ok(k);
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        write(k % writers)?;
        k += 1;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Replicator {
    Hemvist,
    Litestream,
}

impl Replicator {
    fn name(self) -> &'static str {
        match self {
            Replicator::Hemvist => "hemvist",
            Replicator::Litestream => "Litestream",
        }
    }

    /// The tenants whose data a request carries: from its key (hemvist:
    /// `tenants/{org}/...`; Litestream: `.../{org}.db/...`), or a hemvist pack's index.
    fn orgs(self, r: &Logged) -> Vec<&str> {
        if !r.pack_orgs.is_empty() {
            return r.pack_orgs.iter().map(String::as_str).collect();
        }
        let org = match self {
            Replicator::Hemvist => r
                .path
                .split_once("/tenants/")
                .and_then(|(_, rest)| rest.split('/').next()),
            Replicator::Litestream => r.path.split('/').find_map(|s| s.strip_suffix(".db")),
        };
        org.into_iter().collect()
    }
}

/// The working folder, removed when dropped unless kept.
struct Work {
    path: PathBuf,
    keep: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What every run shares.
struct Bench<'a> {
    args: &'a ReplicationArgs,
    work: &'a Path,
    proxy: &'a Proxy,
    /// The proxy's URL: the S3 endpoint both replicators are given.
    endpoint: String,
    ticks: f64,
    /// An empty tenant database (current schema), copied for Litestream's tenants.
    template: PathBuf,
}

/// CPU, memory and open files of one process over one phase.
struct Meter {
    pid: u32,
    cpu: f64,
    at: Instant,
    from_us: i64,
    /// The writing thread (hemvist's write phase) and its CPU at the start.
    writer: Option<(u32, f64)>,
}

struct Sampled {
    cpu_pct: f64,
    /// Of which the writing thread (hemvist's write phase: its INSERTs run on the main thread).
    writer_pct: Option<f64>,
    rss_mib: f64,
    open_files: usize,
    from_us: i64,
    to_us: i64,
}

impl Meter {
    fn start(pid: u32, ticks: f64) -> anyhow::Result<Meter> {
        Ok(Meter {
            pid,
            writer: None,
            cpu: cpu_secs(pid, ticks)?,
            at: Instant::now(),
            from_us: now_us(),
        })
    }

    /// The phase's numbers; fails (with the end of its log) if the process has died, since a
    /// dead process's numbers would mean nothing.
    fn stop(self, ticks: f64, process: &mut Guard, log: &Path) -> anyhow::Result<Sampled> {
        process.check_alive(log)?;
        let cpu = cpu_secs(self.pid, ticks)?;
        let wall = self.at.elapsed().as_secs_f64();
        let writer_pct = match self.writer {
            Some((tid, before)) => {
                Some((thread_cpu_secs(self.pid, tid, ticks)? - before) / wall * 100.0)
            }
            None => None,
        };
        Ok(Sampled {
            writer_pct,
            cpu_pct: (cpu - self.cpu) / wall * 100.0,
            rss_mib: rss_mib(self.pid),
            open_files: open_files(self.pid),
            from_us: self.from_us,
            to_us: now_us(),
        })
    }
}

/// Replication lag of a phase's writes.
struct Lag {
    p50: Duration,
    p99: Duration,
    writes: usize,
    unshipped: usize,
}

/// One line of the table.
struct Row {
    replicator: Replicator,
    tenants: usize,
    phase: &'static str,
    sampled: Sampled,
    /// Requests completed in the phase, by kind.
    requests: BTreeMap<String, usize>,
    failed: usize,
    backed_up: usize,
    lag: Option<Lag>,
}

impl Row {
    fn minutes(&self) -> f64 {
        (self.sampled.to_us - self.sampled.from_us) as f64 / 60e6
    }

    fn per_minute(&self) -> f64 {
        self.requests.values().sum::<usize>() as f64 / self.minutes()
    }

    fn cells(&self) -> Vec<String> {
        let order = ["PUT", "GET", "LIST", "HEAD", "DELETE", "POST"];
        let mut kinds: Vec<(&String, &usize)> = self.requests.iter().collect();
        kinds.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(order.len()));
        let by_kind: Vec<String> = kinds
            .iter()
            .map(|(k, n)| format!("{k} {}", rate(**n as f64 / self.minutes())))
            .collect();
        let seconds = self.minutes() * 60.0;
        vec![
            self.replicator.name().into(),
            self.tenants.to_string(),
            self.phase.into(),
            if by_kind.is_empty() {
                "none".into()
            } else {
                by_kind.join(" · ")
            },
            rate(self.per_minute()),
            self.failed.to_string(),
            match self.sampled.writer_pct {
                Some(w) => format!(
                    "{:.1} % ({:.1} % w/o its writes)",
                    self.sampled.cpu_pct,
                    self.sampled.cpu_pct - w
                ),
                None => format!("{:.1} %", self.sampled.cpu_pct),
            },
            format!("{:.0}", self.sampled.rss_mib),
            self.sampled.open_files.to_string(),
            format!("{}/{}", self.backed_up, self.tenants),
            self.lag
                .as_ref()
                .map(|l| format!("{:.0}", l.writes as f64 / seconds))
                .unwrap_or_default(),
            self.lag.as_ref().map(|l| lag_ms(l.p50)).unwrap_or_default(),
            self.lag.as_ref().map(|l| lag_ms(l.p99)).unwrap_or_default(),
        ]
    }
}

fn rate(per_minute: f64) -> String {
    if per_minute > 0.0 && per_minute < 10.0 {
        format!("{per_minute:.1}")
    } else {
        format!("{per_minute:.0}")
    }
}

fn lag_ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

impl Bench<'_> {
    /// A measured phase's line: the proxy's requests that completed within it, the process's
    /// numbers, the tenants with an object under `prefix` by its end.
    fn row(
        &self,
        replicator: Replicator,
        tenants: usize,
        phase: &'static str,
        prefix: &str,
        sampled: Sampled,
        lag: Option<Lag>,
    ) -> Row {
        let mut requests = BTreeMap::new();
        let mut failed = 0;
        let backed_up = self.proxy.with_log(|log| {
            for r in log
                .iter()
                .filter(|r| r.end_us >= sampled.from_us && r.end_us <= sampled.to_us)
            {
                *requests.entry(r.kind().to_string()).or_insert(0) += 1;
                // A missing key is an ordinary answer to a lookup; anything else is a failure.
                if !r.ok() && r.status != 404 {
                    failed += 1;
                }
            }
            backed_up(log, replicator, prefix, sampled.to_us).len()
        });
        Row {
            replicator,
            tenants,
            phase,
            sampled,
            requests,
            failed,
            backed_up,
            lag,
        }
    }
}

/// Successful PUTs under `prefix` (the run's own objects), completed by `until_us`.
fn puts<'a>(log: &'a [Logged], prefix: &'a str, until_us: i64) -> impl Iterator<Item = &'a Logged> {
    let marker = format!("/{BUCKET}/{prefix}/");
    log.iter().filter(move |r| {
        r.method == http::Method::PUT
            && r.ok()
            && r.end_us <= until_us
            && r.path.starts_with(&marker)
    })
}

/// The tenants with at least one object stored under `prefix` by `until_us`.
fn backed_up<'a>(
    log: &'a [Logged],
    replicator: Replicator,
    prefix: &'a str,
    until_us: i64,
) -> HashSet<&'a str> {
    puts(log, prefix, until_us)
        .flat_map(|r| replicator.orgs(r))
        .collect()
}

/// Each write's lag: commit → completion of the first PUT of its tenant's data that started
/// after the commit (an upload that started earlier cannot hold it). A write with no such PUT
/// by `deadline_us` counts as `deadline_us - commit`.
fn lags(
    log: &[Logged],
    replicator: Replicator,
    prefix: &str,
    commits: &[(String, i64)],
    deadline_us: i64,
) -> Lag {
    let mut by_org: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for r in puts(log, prefix, deadline_us) {
        for org in replicator.orgs(r) {
            by_org.entry(org).or_default().push((r.start_us, r.end_us));
        }
    }
    // Sorted by start, with the earliest completion among all later starts.
    let by_org: HashMap<&str, (Vec<i64>, Vec<i64>)> = by_org
        .into_iter()
        .map(|(org, mut v)| {
            v.sort();
            let starts = v.iter().map(|p| p.0).collect();
            let mut ends: Vec<i64> = v.iter().map(|p| p.1).collect();
            for i in (0..ends.len().saturating_sub(1)).rev() {
                ends[i] = ends[i].min(ends[i + 1]);
            }
            (org, (starts, ends))
        })
        .collect();
    let mut unshipped = 0;
    let lags: Vec<Duration> = commits
        .iter()
        .map(|(org, at)| {
            let shipped = by_org.get(org.as_str()).and_then(|(starts, ends)| {
                let i = starts.partition_point(|s| s < at);
                ends.get(i).copied()
            });
            let done = shipped.unwrap_or_else(|| {
                unshipped += 1;
                deadline_us
            });
            Duration::from_micros((done - at).max(0) as u64)
        })
        .collect();
    let writes = lags.len();
    let s = super::stats(lags);
    Lag {
        p50: s.p50,
        p99: s.p99,
        writes,
        unshipped,
    }
}

/// A `hemvist bench replication-node` process and its lines.
struct NodeProcess {
    guard: Guard,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl NodeProcess {
    fn start(
        b: &Bench,
        data: &Path,
        tenants: usize,
        writers: usize,
        prefix: &str,
        big_mb: u64,
    ) -> anyhow::Result<NodeProcess> {
        let log = data.with_extension("log");
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "replication-node", "--data"])
            .arg(data)
            .args(["--tenants", &tenants.to_string()])
            .args(["--writers", &writers.to_string()])
            .args(["--seconds", &b.args.seconds.to_string()])
            .args(["--endpoint", &b.endpoint])
            .args(["--bucket", BUCKET, "--prefix", prefix])
            .args(["--wait-secs", &b.args.wait_secs.to_string()])
            .args(["--big-mb", &big_mb.to_string()])
            .env("HEMVIST_S3_ACCESS_KEY_ID", ACCESS_KEY)
            .env("HEMVIST_S3_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start hemvist bench replication-node")?;
        let stdin = child.stdin.take().context("node stdin")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(NodeProcess {
            guard: Guard {
                child,
                what: "hemvist bench replication-node",
            },
            stdin,
            lines,
            log,
        })
    }

    fn line(&self, limit: Duration) -> anyhow::Result<String> {
        self.lines.recv_timeout(limit).map_err(|_| {
            anyhow::anyhow!(
                "the hemvist node process said nothing for {} s or exited: {}",
                limit.as_secs(),
                log_tail(&self.log)
            )
        })
    }

    fn send(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{command}").context("tell the hemvist node process")
    }

    /// Asks the process to stop (its replicator makes one last pass) and waits for it.
    fn stop(mut self) {
        let _ = self.send("stop");
        self.guard.wait_exit(Duration::from_secs(40));
    }
}

fn ready(line: &str) -> anyhow::Result<serde_json::Value> {
    let json = line
        .strip_prefix("ready ")
        .with_context(|| format!("expected a ready line, got {line:?}"))?;
    Ok(serde_json::from_str(json)?)
}

/// hemvist at `n` tenants: its idle and write rows, and a note on its first uploads.
fn run_hemvist(b: &Bench, n: usize) -> anyhow::Result<(Vec<Row>, String)> {
    let prefix = format!("hv-{n}");
    let writers = (n / 10).max(1);
    eprintln!("bench: hemvist, {n} tenants: hosting and first snapshots");
    let mut node = NodeProcess::start(b, &b.work.join(&prefix), n, writers, &prefix, 0)?;
    let ready = ready(&node.line(Duration::from_secs(b.args.wait_secs + 600))?)?;
    let dirty = ready["dirty"].as_u64().unwrap_or(0);
    let writer_tid = ready["writer_tid"].as_u64().map(|t| t as u32);
    let note = format!(
        "hemvist, {n} tenants: hosted and first snapshot of every tenant stored in {:.1} s{}",
        ready["seconds"].as_f64().unwrap_or(0.0),
        if dirty > 0 {
            format!(" (not finished: {dirty} tenants still waiting after --wait-secs)")
        } else {
            String::new()
        }
    );
    let pid = node.guard.pid();
    eprintln!("bench: hemvist, {n} tenants: idle phase");
    let meter = Meter::start(pid, b.ticks)?;
    std::thread::sleep(Duration::from_secs(b.args.seconds));
    let idle = b.row(
        Replicator::Hemvist,
        n,
        "idle",
        &prefix,
        meter.stop(b.ticks, &mut node.guard, &node.log)?,
        None,
    );

    eprintln!("bench: hemvist, {n} tenants: write phase ({writers} writers)");
    let mut meter = Meter::start(pid, b.ticks)?;
    // The replication node makes its INSERTs on one thread: measured on its own too.
    if let Some(tid) = writer_tid {
        meter.writer = Some((tid, thread_cpu_secs(pid, tid, b.ticks)?));
    }
    node.send("write")?;
    let mut commits = Vec::new();
    loop {
        let line = node.line(Duration::from_secs(b.args.seconds + 120))?;
        if line.starts_with("written ") {
            break;
        }
        let mut parts = line.split_whitespace().skip(1);
        if let (Some(org), Some(at)) = (parts.next(), parts.next().and_then(|t| t.parse().ok())) {
            commits.push((org.to_string(), at));
        }
    }
    let sampled = meter.stop(b.ticks, &mut node.guard, &node.log)?;
    std::thread::sleep(Duration::from_secs(b.args.grace_secs));
    let deadline = now_us();
    let lag = b
        .proxy
        .with_log(|log| lags(log, Replicator::Hemvist, &prefix, &commits, deadline));
    let write = b.row(
        Replicator::Hemvist,
        n,
        "writes",
        &prefix,
        sampled,
        Some(lag),
    );
    node.stop();
    Ok((vec![idle, write], note))
}

/// A folder of `n` tenant databases, as hemvist lays them out, copies of the template.
fn tenant_files(b: &Bench, root: &Path, n: usize) -> anyhow::Result<Vec<PathBuf>> {
    let layout = TenantStore::new(root, 1)?;
    (1..=n)
        .map(|i| {
            let path = layout.path(&OrgId::parse(&org_name(i))?);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::copy(&b.template, &path)
                .with_context(|| format!("copy the template to {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// Litestream replicating every `*.db` under `root/tenants` (directory mode) to `prefix`; its
/// config and log go into `root`.
fn start_litestream(b: &Bench, root: &Path, prefix: &str) -> anyhow::Result<(Guard, PathBuf)> {
    let dir = root.join("tenants");
    let config = root.join("litestream.yml");
    // JSON is YAML, and needs no quoting rules of its own.
    std::fs::write(
        &config,
        serde_json::to_string_pretty(&serde_json::json!({
            "addr": "",
            "dbs": [{
                "dir": dir,
                "pattern": "*.db",
                "recursive": true,
                "watch": true,
                "replica": {
                    "type": "s3",
                    "bucket": BUCKET,
                    "path": prefix,
                    "endpoint": b.endpoint,
                    "region": "us-east-1",
                    "force-path-style": true,
                    "access-key-id": ACCESS_KEY,
                    "secret-access-key": SECRET_KEY,
                },
            }],
        }))?,
    )?;
    let log = root.join("litestream.log");
    let out = std::fs::File::create(&log)?;
    let child = Command::new(&b.args.litestream)
        .args(["replicate", "-config"])
        .arg(&config)
        // With it set (as here), Litestream fails every S3 request: "unable to add custom
        // RootCAs HTTPClient".
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {}", b.args.litestream.display()))?;
    Ok((
        Guard {
            child,
            what: "litestream replicate",
        },
        log,
    ))
}

/// Waits until `want` tenants have an object under `prefix`, the process dies, or `limit`
/// passes. Returns how many had one, and how long it took.
fn wait_backed_up(
    b: &Bench,
    guard: &mut Guard,
    log: &Path,
    prefix: &str,
    want: usize,
    limit: Duration,
) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    // Read once: each look reads only what was logged since the last.
    let (mut have, mut read) = (HashSet::new(), 0);
    loop {
        guard.check_alive(log)?;
        b.proxy.with_log(|log| {
            let new = &log[read.min(log.len())..];
            have.extend(
                puts(new, prefix, i64::MAX)
                    .flat_map(|r| Replicator::Litestream.orgs(r))
                    .map(str::to_string),
            );
            read = log.len();
        });
        if have.len() >= want || started.elapsed() > limit {
            return Ok((have.len(), started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Litestream at `n` tenants: its idle and write rows, and a note on its first uploads.
fn run_litestream(b: &Bench, n: usize) -> anyhow::Result<(Vec<Row>, String)> {
    let prefix = format!("lt-{n}");
    let writers = (n / 10).max(1);
    let root = b.work.join(&prefix);
    eprintln!("bench: Litestream, {n} tenants: copying tenant files");
    let files = tenant_files(b, &root, n)?;
    let (mut guard, log) = start_litestream(b, &root, &prefix)?;
    eprintln!("bench: Litestream, {n} tenants: waiting for a first upload of every tenant");
    let limit = Duration::from_secs(b.args.wait_secs);
    let (have, took) = wait_backed_up(b, &mut guard, &log, &prefix, n, limit)?;
    let note = if have >= n {
        format!(
            "Litestream, {n} tenants: a first upload of every tenant stored in {:.1} s",
            took.as_secs_f64()
        )
    } else {
        format!(
            "Litestream, {n} tenants: only {have} of {n} tenants had any object after {:.0} s \
             (--wait-secs); measured as it was",
            took.as_secs_f64()
        )
    };
    let pid = guard.pid();
    eprintln!("bench: Litestream, {n} tenants: idle phase");
    let meter = Meter::start(pid, b.ticks)?;
    std::thread::sleep(Duration::from_secs(b.args.seconds));
    let idle = b.row(
        Replicator::Litestream,
        n,
        "idle",
        &prefix,
        meter.stop(b.ticks, &mut guard, &log)?,
        None,
    );

    eprintln!("bench: Litestream, {n} tenants: write phase ({writers} writers)");
    let written: Vec<(String, rusqlite::Connection)> = writer_orgs(&files, writers)
        .iter()
        .map(|path| -> anyhow::Result<_> {
            let conn = rusqlite::Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let org = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            Ok((org, conn))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut commits = Vec::new();
    let meter = Meter::start(pid, b.ticks)?;
    paced(written.len(), b.args.seconds, |i| {
        let (org, conn) = &written[i];
        conn.execute(
            INSERT,
            rusqlite::params![format!("Bench Writer {i}"), hemvist_node::now_ms()],
        )?;
        commits.push((org.clone(), now_us()));
        Ok(())
    })?;
    let sampled = meter.stop(b.ticks, &mut guard, &log)?;
    drop(written);
    std::thread::sleep(Duration::from_secs(b.args.grace_secs));
    let deadline = now_us();
    let lag = b
        .proxy
        .with_log(|log| lags(log, Replicator::Litestream, &prefix, &commits, deadline));
    let write = b.row(
        Replicator::Litestream,
        n,
        "writes",
        &prefix,
        sampled,
        Some(lag),
    );
    drop(guard);
    Ok((vec![idle, write], note))
}

/// An S3 store through the proxy, rooted at `prefix` in the bucket.
fn store(b: &Bench, prefix: &str) -> anyhow::Result<std::sync::Arc<dyn ObjectStore>> {
    BackupConfig {
        url: format!("s3://{BUCKET}/{prefix}"),
        endpoint: Some(b.endpoint.clone()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        ..BackupConfig::local(&b.work.join("unused"))
    }
    .open()
}

fn mb_per_s(bytes: u64, took: Duration) -> String {
    format!("{:.0} MB/s", bytes as f64 / 1e6 / took.as_secs_f64())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Downloads the largest object under `store`'s root whose key starts with `under`: (key,
/// size, time).
async fn largest_get(
    store: &std::sync::Arc<dyn ObjectStore>,
    under: Option<&ObjectPath>,
) -> anyhow::Result<(String, u64, Duration)> {
    use futures::TryStreamExt;
    let metas: Vec<object_store::ObjectMeta> = store.list(under).try_collect().await?;
    let largest = metas
        .into_iter()
        .max_by_key(|m| m.size)
        .context("no objects to download")?;
    let t = Instant::now();
    let bytes = store.get(&largest.location).await?.bytes().await?;
    Ok((
        largest.location.to_string(),
        bytes.len() as u64,
        t.elapsed(),
    ))
}

/// How long writing `source`'s bytes to a new file `to` and syncing it takes on this machine,
/// with the bytes already in memory: the least any restore producing that file can take.
fn write_floor(source: &Path, to: &Path) -> anyhow::Result<(u64, Duration)> {
    let bytes = std::fs::read(source).context("read the restored file")?;
    let t = Instant::now();
    let mut file = std::fs::File::create(to)?;
    for piece in bytes.chunks(4 << 20) {
        file.write_all(piece)?;
    }
    file.sync_all()?;
    let took = t.elapsed();
    drop(file);
    std::fs::remove_file(to)?;
    Ok((bytes.len() as u64, took))
}

/// One tenant of about `big_mb` MB, backed up by each replicator and restored from the store.
fn run_restores(b: &Bench) -> anyhow::Result<Vec<String>> {
    let rt = tokio::runtime::Handle::current();
    let mb_wanted = b.args.big_mb;
    let org = OrgId::parse(&org_name(1))?;
    let mut lines = Vec::new();

    eprintln!("bench: restore: a {mb_wanted} MB tenant backed up by hemvist");
    let data = b.work.join("hv-big");
    let node = NodeProcess::start(b, &data, 1, 0, "hv-big", mb_wanted)?;
    let ready = ready(&node.line(Duration::from_secs(b.args.wait_secs + 600))?)?;
    if ready["dirty"].as_u64().unwrap_or(0) > 0 {
        bail!("hemvist did not store the large tenant within --wait-secs");
    }
    node.stop();
    let hv = store(b, "hv-big")?;
    let prefix = ObjectPath::from(format!("tenants/{org}"));
    let (key, size, took) = rt.block_on(largest_get(&hv, Some(&prefix)))?;
    lines.push(format!(
        "hemvist raw GET of the tenant's largest object ({key}, {}): {:.2} s, {}",
        mb(size),
        took.as_secs_f64(),
        mb_per_s(size, took)
    ));
    let out = b.work.join("restored-hemvist.db");
    let t = Instant::now();
    let restored = rt.block_on(async {
        let catalog = restore::catalog(&hv, &org).await?;
        let plan = catalog
            .plan(i64::MAX, &[])
            .context("no restore point for the large tenant")?;
        restore::restore(&hv, &catalog, &plan, &out, Some(&data_key(1))).await
    })?;
    let total = t.elapsed();
    let restore_rate = restored.db_bytes as f64 / restored.fetch_and_apply.as_secs_f64();
    let get_rate = size as f64 / took.as_secs_f64();
    lines.push(format!(
        "hemvist restore: {} database from {} downloaded ({} object{}): fetch + verify + \
         apply (fsync included) {:.2} s = {} of database, {:.0} % of the raw GET's throughput; \
         with listing, integrity_check and rename {:.2} s",
        mb(restored.db_bytes),
        mb(restored.downloaded),
        restored.objects,
        if restored.objects == 1 { "" } else { "s" },
        restored.fetch_and_apply.as_secs_f64(),
        mb_per_s(restored.db_bytes, restored.fetch_and_apply),
        100.0 * restore_rate / get_rate,
        total.as_secs_f64()
    ));
    lines.push(format!(
        "hemvist restore: PRAGMA integrity_check {:.2} s",
        restored.integrity_check.as_secs_f64()
    ));
    let (floor_bytes, floor) = write_floor(&out, &b.work.join("floor.db"))?;
    let floor_rate = floor_bytes as f64 / floor.as_secs_f64();
    lines.push(format!(
        "floor: the restored file's {} written from memory to a new file and fsynced, nothing \
         else: {:.2} s = {}, {:.0} % of the raw GET's throughput (what writing this file alone \
         costs here); the restore reached {:.0} % of it",
        mb(floor_bytes),
        floor.as_secs_f64(),
        mb_per_s(floor_bytes, floor),
        100.0 * floor_rate / get_rate,
        100.0 * restore_rate / floor_rate
    ));

    eprintln!("bench: restore: the same database backed up by Litestream");
    let source = TenantStore::new(&data, 1)?.path(&org);
    {
        let conn = rusqlite::Connection::open(&source)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    let root = b.work.join("lt-big");
    let copy = TenantStore::new(&root, 1)?.path(&org);
    if let Some(dir) = copy.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(&source, &copy)?;
    let (mut guard, log) = start_litestream(b, &root, "lt-big")?;
    let limit = Duration::from_secs(b.args.wait_secs);
    let (have, _) = wait_backed_up(b, &mut guard, &log, "lt-big", 1, limit)?;
    if have == 0 {
        bail!(
            "Litestream stored nothing of the large tenant within --wait-secs: {}",
            log_tail(&log)
        );
    }
    // Until its uploads settle: 3 s without a new PUT.
    let started = Instant::now();
    loop {
        let last = b.proxy.with_log(|log| {
            puts(log, "lt-big", i64::MAX)
                .map(|r| r.end_us)
                .max()
                .unwrap_or(0)
        });
        if now_us() - last > 3_000_000 || started.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(guard);
    let lt = store(b, "lt-big")?;
    let (key, size, took) = rt.block_on(largest_get(&lt, None))?;
    lines.push(format!(
        "Litestream raw GET of the tenant's largest object ({key}, {}): {:.2} s, {}",
        mb(size),
        took.as_secs_f64(),
        mb_per_s(size, took)
    ));
    // The database's path in the bucket: the key up to its `.db` part.
    let db_key: Vec<&str> = key
        .split('/')
        .scan(false, |done, part| {
            if *done {
                return None;
            }
            *done = part.ends_with(".db");
            Some(part)
        })
        .collect();
    let url = format!(
        "s3://{BUCKET}/lt-big/{}?endpoint={}&forcePathStyle=true&region=us-east-1",
        db_key.join("/"),
        b.endpoint
    );
    let out = b.work.join("restored-litestream.db");
    let t = Instant::now();
    let restored = Command::new(&b.args.litestream)
        .args(["restore", "-o"])
        .arg(&out)
        .arg(&url)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .output()
        .context("run litestream restore")?;
    let took = t.elapsed();
    if !restored.status.success() {
        bail!(
            "litestream restore failed: {}",
            String::from_utf8_lossy(&restored.stderr)
        );
    }
    let db_bytes = std::fs::metadata(&out)?.len();
    let t = Instant::now();
    let verdict: String =
        rusqlite::Connection::open(&out)?.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    let check = t.elapsed();
    lines.push(format!(
        "Litestream restore (litestream restore -o, one process, no integrity check): {} \
         database in {:.2} s = {}",
        mb(db_bytes),
        took.as_secs_f64(),
        mb_per_s(db_bytes, took)
    ));
    lines.push(format!(
        "Litestream's restored file: PRAGMA integrity_check (run by the benchmark) {:.2} s: {verdict}",
        check.as_secs_f64()
    ));
    Ok(lines)
}

/// Every request the proxy saw, one a line, for a kept working folder.
fn write_log(log: &[Logged], path: &Path) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "start_us\tend_us\tkind\tstatus\tpath\tquery\tpack_orgs"
    )?;
    for r in log {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.start_us,
            r.end_us,
            r.kind(),
            r.status,
            r.path,
            r.query,
            r.pack_orgs.join(",")
        )?;
    }
    out.flush()?;
    Ok(())
}

/// An empty tenant database at the current schema, created the way a node creates one, with
/// its WAL checkpointed into the file so a copy of the file alone is the whole database.
fn make_template(work: &Path) -> anyhow::Result<PathBuf> {
    let store = TenantStore::new(&work.join("template"), 1)?;
    let org = OrgId::parse("template")?;
    store.create(&org, hemvist_node::now_ms())?;
    let path = store.path(&org);
    let conn = rusqlite::Connection::open(&path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(path)
}

/// The version a tool reports (`weed version`: "version 8000GB 4.48 pypi linux amd64").
fn version(exe: &Path) -> String {
    Command::new(exe)
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.split_whitespace()
                .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

pub fn run(args: ReplicationArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Handle::current();
    let path =
        std::env::temp_dir().join(format!("hemvist-bench-replication-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    // Dropped last: every process below is stopped before its files go.
    let work = Work {
        path,
        keep: args.keep,
    };
    eprintln!("bench: working in {}", work.path.display());
    let weed = Weed::start(
        &args.weed,
        &work.path.join("weed"),
        BUCKET,
        ACCESS_KEY,
        SECRET_KEY,
    )?;
    let proxy = rt.block_on(Proxy::start(&weed.s3))?;
    let bench = Bench {
        args: &args,
        work: &work.path,
        proxy: &proxy,
        endpoint: format!("http://{}", proxy.addr),
        ticks: procs::ticks_per_sec(),
        template: make_template(&work.path)?,
    };
    // The bucket answers through the proxy before anything is measured (weed creates it
    // shortly after its S3 port opens).
    let probe = store(&bench, "probe")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = rt.block_on(probe.list_with_delimiter(None)) {
        if Instant::now() > deadline {
            bail!("the bucket did not appear: {e}: {}", log_tail(&weed.log));
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let fleet: &[usize] = if args.restore_only {
        &[]
    } else {
        &args.tenants
    };
    for &n in fleet {
        for replicator in [Replicator::Hemvist, Replicator::Litestream] {
            let ran = match replicator {
                Replicator::Hemvist => run_hemvist(&bench, n),
                Replicator::Litestream => run_litestream(&bench, n),
            };
            match ran {
                Ok((r, note)) => {
                    rows.extend(r);
                    notes.push(note);
                }
                Err(e) => notes.push(format!("{}, {n} tenants: FAILED: {e:#}", replicator.name())),
            }
        }
    }
    let restores = if args.big_mb > 0 {
        run_restores(&bench).unwrap_or_else(|e| vec![format!("restore: FAILED: {e:#}")])
    } else {
        Vec::new()
    };
    drop(weed);
    if args.keep {
        let path = work.path.join("requests.tsv");
        proxy.with_log(|log| write_log(log, &path))?;
    }

    println!(
        "hemvist bench replication: tenants {:?}, {} s per phase, 10 % of tenants writing one row \
         a second each; S3: SeaweedFS {} on loopback, through a counting proxy; Litestream {}",
        args.tenants,
        args.seconds,
        version(&args.weed),
        version(&args.litestream),
    );
    println!();
    crate::table::print(
        &[
            "replicator",
            "tenants",
            "phase",
            "requests/min by method",
            "req/min",
            "failed",
            "CPU",
            "RSS MiB",
            "open files",
            "backed up",
            "writes/s",
            "lag p50",
            "lag p99",
        ],
        &rows.iter().map(Row::cells).collect::<Vec<_>>(),
    );
    let unshipped: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.lag.as_ref().map(|l| {
                format!(
                    "{} at {}: {} of {}",
                    r.replicator.name(),
                    r.tenants,
                    l.unshipped,
                    l.writes
                )
            })
        })
        .collect();
    println!(
        "\nRequests: per minute over the phase, as the proxy saw them (LIST = GET of the bucket); \
         failed = requests of the phase answered other than 2xx or 404. CPU: user + system \
         time of the replicating process over the phase / wall time (100 % = one core); RSS \
         and open files at the phase's end. Backed up: tenants with at least one object in the \
         store by then. The idle phase starts as soon as every tenant has its first object in \
         the store."
    );
    println!(
        "hemvist runs as its own process (hemvist bench replication-node) and makes its writes \
         itself, so its CPU includes the INSERTs (conservative for hemvist); Litestream's writes \
         are made by the benchmark process and not counted in its CPU. hemvist runs with a \
         node's defaults: every object sealed with the org's data key, tenants' files closed \
         after 60 s unused (so its open files right after the first snapshots include up to \
         1024 tenants)."
    );
    println!(
        "Lag: commit → completion of the first successful PUT that started after the commit and \
         carries the tenant (hemvist: a key under tenants/{{org}}/ or a pack whose index lists the \
         tenant; Litestream: a key under the tenant's file path). A write with none by {} s after \
         the phase counts as lag = (phase end + {} s) − commit; such writes: {}.",
        args.grace_secs,
        args.grace_secs,
        if unshipped.is_empty() {
            "none measured".into()
        } else {
            unshipped.join(", ")
        }
    );
    for note in &notes {
        println!("{note}");
    }
    if !restores.is_empty() {
        println!();
        for line in &restores {
            println!("{line}");
        }
    }
    let writes = |r: Replicator, n: usize| {
        rows.iter()
            .find(|row| row.replicator == r && row.tenants == n && row.phase == "writes")
    };
    let compared = [1000]
        .into_iter()
        .chain(args.tenants.iter().rev().copied())
        .find(|&n| {
            writes(Replicator::Hemvist, n).is_some() && writes(Replicator::Litestream, n).is_some()
        });
    if let Some(n) = compared {
        if let (Some(h), Some(l)) = (
            writes(Replicator::Hemvist, n),
            writes(Replicator::Litestream, n),
        ) {
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}x", a / b)
                } else {
                    "n/a (Litestream at 0)".into()
                }
            };
            println!(
                "\nhemvist / Litestream at {n} tenants under writes: requests {} ({} vs {} per \
                 minute), CPU {} ({:.1} % vs {:.1} %)",
                ratio(h.per_minute(), l.per_minute()),
                rate(h.per_minute()),
                rate(l.per_minute()),
                ratio(h.sampled.cpu_pct, l.sampled.cpu_pct),
                h.sampled.cpu_pct,
                l.sampled.cpu_pct
            );
            if let Some(w) = h.sampled.writer_pct {
                let alone = h.sampled.cpu_pct - w;
                println!(
                    "  without the writing thread (its INSERTs): hemvist {alone:.1} % vs \
                     Litestream {:.1} %, {}",
                    l.sampled.cpu_pct,
                    ratio(alone, l.sampled.cpu_pct)
                );
            }
        }
    }
    Ok(())
}
