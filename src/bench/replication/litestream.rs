//! Litestream's side of a fleet run: `litestream replicate` in directory mode over copies of
//! the template tenant, measured idle and under writes made by the benchmark.
//!
//! Keeps true: Litestream gets the same tenants, the same store and the same write load as
//! hemvist; its writes are made outside its process, so they are not in its CPU.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use hemvist_node::tenants::TenantStore;
use hemvist_proto::OrgId;

use super::lag::lags;
use super::meter::Meter;
use super::procs::Guard;
use super::report::{row, Row};
use super::requests::{puts, Replicator};
use super::setup::{Bench, ACCESS_KEY, BUCKET, SECRET_KEY};
use super::workload::{now_us, org_name, paced, writer_orgs, INSERT};

/// A folder of `n` tenant databases, as hemvist lays them out, copies of the template.
pub fn tenant_files(b: &Bench, root: &Path, n: usize) -> anyhow::Result<Vec<PathBuf>> {
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
pub fn start_litestream(b: &Bench, root: &Path, prefix: &str) -> anyhow::Result<(Guard, PathBuf)> {
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
pub fn wait_backed_up(
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
pub fn run_litestream(b: &Bench, n: usize) -> anyhow::Result<(Vec<Row>, String)> {
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
    let idle = row(
        b,
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
    let write = row(
        b,
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
