//! The fleet's tenants before the rollout: orgs created through the admin API (each hosted by
//! its region's node from the node's template of the current schema), filled with contacts
//! through the node's own write path (`dev::demo::seed_contacts`: the write gate, the tenant's
//! writer, the replicator's dirty mark), shipped to the store, and copied out at the old
//! version for the naive loops.
//!
//! Keeps true: a copy is taken holding the tenant's writer, which is also what the replicator
//! checkpoints under, so its main file and WAL are copied at one consistent point; the naive
//! loops and the rollout start from the same data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use hemvist_proto::{HemvistError, OrgId};
use serde_json::{json, Value};

use super::system::{System, REGIONS};
use crate::dev::demo::{seed_contacts, Locale};

/// One org of the fleet and the region (index into [`REGIONS`]) it lives in.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub org: OrgId,
    pub region: usize,
}

/// How creating the orgs went: per org, from the `POST /orgs` to its answer, to its node
/// hosting it, and to the control plane showing it ready.
#[derive(Debug, Default)]
pub struct Created {
    pub total: Duration,
    pub answered: Vec<Duration>,
    pub hosted: Vec<Duration>,
    pub ready: Vec<Duration>,
    /// When each org was ready, from the first POST, in order.
    pub finished: Vec<Duration>,
}

impl Created {
    /// How long each quarter of the orgs took to become ready (by when they did): a pace that
    /// falls as the fleet grows shows a cost per org that grows with it.
    pub fn quarters(&self) -> Vec<Duration> {
        let n = self.finished.len();
        if n < 4 {
            return Vec::new();
        }
        (0..4)
            .map(|k| {
                let from = if k == 0 {
                    Duration::ZERO
                } else {
                    self.finished[k * n / 4 - 1]
                };
                self.finished[(k + 1) * n / 4 - 1].saturating_sub(from)
            })
            .collect()
    }
}

fn region_locale(region: usize) -> Locale {
    match region {
        0 => Locale::Swedish,
        1 => Locale::German,
        _ => Locale::American,
    }
}

/// The fleet's orgs, spread over the first `regions` regions in turn.
pub fn fleet(n: usize, regions: usize) -> anyhow::Result<Vec<Tenant>> {
    (0..n)
        .map(|i| {
            Ok(Tenant {
                org: OrgId::parse(&format!("mig-{i:05}"))?,
                region: i % regions.clamp(1, REGIONS.len()),
            })
        })
        .collect()
}

async fn create_one(sys: &System, t: &Tenant) -> anyhow::Result<(Duration, Duration, Duration)> {
    let org = &t.org;
    let started = Instant::now();
    let _: Value = sys
        .control
        .post(
            "/orgs",
            &json!({"id": org.as_str(), "name": format!("Bench {org}"),
                "region": REGIONS[t.region].0}),
        )
        .await
        .with_context(|| format!("create {org}"))?;
    let answered = started.elapsed();
    let node = sys.node(t.region);
    let limit = Duration::from_secs(120);
    // The node's own view is read in memory, so looking often costs the system nothing.
    while node.state.hosted(org).is_none() {
        if started.elapsed() > limit {
            bail!(
                "{org} was not hosted by its node within {} s",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let hosted = started.elapsed();
    loop {
        let shown: Value = sys.control.get(&format!("/orgs/{org}")).await?;
        if shown["ready"] == true {
            break;
        }
        if started.elapsed() > limit {
            bail!("{org} was not ready within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((answered, hosted, started.elapsed()))
}

/// `create_one`, and when it ended since `t0`.
async fn create_timed(
    sys: &System,
    t: &Tenant,
    t0: Instant,
) -> anyhow::Result<(Duration, Duration, Duration, Duration)> {
    let (a, h, r) = create_one(sys, t).await?;
    Ok((a, h, r, t0.elapsed()))
}

/// Creates every org, `parallel` at a time, and waits until each is ready.
pub fn create(sys: &System, fleet: &[Tenant], parallel: usize) -> anyhow::Result<Created> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<(Duration, Duration, Duration, Duration)>> = sys.rt.block_on(
        futures::stream::iter(fleet)
            .map(|t| create_timed(sys, t, started))
            .buffer_unordered(parallel.max(1))
            .collect(),
    );
    let mut out = Created {
        total: started.elapsed(),
        ..Created::default()
    };
    for r in results {
        let (a, h, r, at) = r?;
        out.answered.push(a);
        out.hosted.push(h);
        out.ready.push(r);
        out.finished.push(at);
    }
    out.finished.sort();
    Ok(out)
}

/// Writes `rows` contacts to every tenant through its node's write path (one transaction of
/// contacts, then the full-text index merged, as `hemvist dev` seeds an org), a few tenants at
/// once.
pub fn fill(sys: &System, fleet: &[Tenant], rows: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(t) = fleet.get(i) else {
                            return Ok(());
                        };
                        let node = sys.node(t.region);
                        seed_contacts(
                            &node.writer,
                            &t.org,
                            region_locale(t.region),
                            rows,
                            0x6d69_6772 ^ i as u64,
                        )
                        .with_context(|| format!("fill {}", t.org))?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a fill worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(started.elapsed())
}

/// Waits until every tenant's writes so far are in its region's store: all are marked first,
/// so one or two replicator passes ship them all.
pub fn settle_backups(sys: &System, fleet: &[Tenant]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let marks: Vec<(usize, u64)> = fleet
        .iter()
        .map(|t| {
            let backup = sys
                .node(t.region)
                .backup
                .as_ref()
                .context("a node keeps no backups")?;
            Ok((t.region, backup.mark_dirty(&t.org)))
        })
        .collect::<anyhow::Result<_>>()?;
    for (t, (region, mark)) in fleet.iter().zip(marks) {
        if let Some(backup) = sys.node(region).backup.as_ref() {
            backup
                .wait_durable(&t.org, mark, Duration::from_secs(600))
                .with_context(|| format!("wait for {}'s backups", t.org))?;
        }
    }
    Ok(started.elapsed())
}

/// The copies the naive loops migrate: one folder per loop, one file per tenant, each at the
/// old version with its WAL checkpointed into it (a file at rest, in WAL mode as the node's).
pub struct Copies {
    pub dirs: Vec<PathBuf>,
    /// Each tenant's file size, bytes.
    pub bytes: Vec<u64>,
    pub rows: u64,
    pub version: u32,
}

impl Copies {
    pub fn files(&self, loop_index: usize, fleet: &[Tenant]) -> Vec<PathBuf> {
        fleet
            .iter()
            .map(|t| self.dirs[loop_index].join(format!("{}.db", t.org)))
            .collect()
    }
}

fn io(org: &OrgId, what: &str, e: std::io::Error) -> HemvistError {
    HemvistError::internal(format!("{what} {org}'s tenant file: {e}"))
}

/// Copies every tenant's file (and WAL) under its writer into the first of `loops` folders
/// under `dir`, checkpoints each copy, then copies that into the others.
pub fn copy_out(
    sys: &System,
    fleet: &[Tenant],
    dir: &Path,
    loops: usize,
) -> anyhow::Result<Copies> {
    let dirs: Vec<PathBuf> = (0..loops).map(|i| dir.join(format!("loop-{i}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let mut out = Copies {
        dirs,
        bytes: Vec::with_capacity(fleet.len()),
        rows: 0,
        version: 0,
    };
    for t in fleet {
        let node = sys.node(t.region);
        let first = out.dirs[0].join(format!("{}.db", t.org));
        let src = node.tenants.path(&t.org);
        node.tenants.with_writer(&t.org, |_| {
            std::fs::copy(&src, &first).map_err(|e| io(&t.org, "copy", e))?;
            let wal = PathBuf::from(format!("{}-wal", src.display()));
            if wal.is_file() {
                std::fs::copy(&wal, format!("{}-wal", first.display()))
                    .map_err(|e| io(&t.org, "copy the WAL of", e))?;
            }
            Ok(())
        })?;
        let conn = rusqlite::Connection::open(&first)
            .with_context(|| format!("open {}", first.display()))?;
        let (busy, _, _): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .context("checkpoint a copy")?;
        anyhow::ensure!(
            busy == 0,
            "the checkpoint of {} was blocked",
            first.display()
        );
        let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let rows: i64 = conn.query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))?;
        let bytes: i64 = conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )?;
        drop(conn);
        out.version = version;
        out.rows += rows.max(0) as u64;
        out.bytes.push(bytes.max(0) as u64);
        for d in &out.dirs[1..] {
            std::fs::copy(&first, d.join(format!("{}.db", t.org)))
                .with_context(|| format!("copy {}", first.display()))?;
        }
    }
    Ok(out)
}
