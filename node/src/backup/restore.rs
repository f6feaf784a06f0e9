//! Point-in-time restore of one tenant: the newest snapshot at or before the asked time, then
//! the chain of WAL segments that continues it, each object verified (checksum, header against
//! its name) before its bytes are used, and `PRAGMA integrity_check` on the result before the
//! file is put where it was asked. A damaged object stops the restore with its name and the
//! newest point that can be restored without it.

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use hemvist_proto::OrgId;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;

use super::format::{self, Body, Kind, ObjectName};

/// Every backup object of one org, as listed.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub objects: Vec<(ObjectName, u64)>,
}

/// What a restore will read, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub generation: u64,
    pub snapshot: (ObjectName, u64),
    pub segments: Vec<(ObjectName, u64)>,
}

impl Plan {
    /// The time of the newest change the plan restores.
    pub fn time_ms(&self) -> i64 {
        self.segments
            .last()
            .map_or(self.snapshot.0.time_ms, |s| s.0.time_ms)
    }
    pub fn lsn(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.snapshot.0.end, |s| s.0.end)
    }
    pub fn bytes(&self) -> u64 {
        self.snapshot.1 + self.segments.iter().map(|s| s.1).sum::<u64>()
    }
}

/// One generation's backups, for `hemvist backups`.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationSummary {
    pub generation: u64,
    pub snapshots: usize,
    pub segments: usize,
    pub bytes: u64,
    pub oldest_ms: i64,
    pub newest_ms: i64,
    pub newest_lsn: u64,
    /// Times a restore can start from (the snapshots), oldest first.
    pub snapshot_times_ms: Vec<i64>,
}

pub async fn catalog(store: &Arc<dyn ObjectStore>, org: &OrgId) -> anyhow::Result<Catalog> {
    let prefix = ObjectPath::from(format::tenant_prefix(org));
    let metas: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .with_context(|| format!("list the backups of {org}"))?;
    let mut objects: Vec<(ObjectName, u64)> = metas
        .into_iter()
        .filter_map(|m| ObjectName::parse(m.location.as_ref()).map(|n| (n, m.size)))
        .filter(|(n, _)| &n.org == org)
        .collect();
    objects.sort_by(|a, b| {
        (a.0.generation, a.0.start, a.0.end, a.0.time_ms).cmp(&(
            b.0.generation,
            b.0.start,
            b.0.end,
            b.0.time_ms,
        ))
    });
    Ok(Catalog { objects })
}

impl Catalog {
    fn generations(&self) -> BTreeSet<u64> {
        self.objects.iter().map(|o| o.0.generation).collect()
    }

    /// The chain of segments in `generation` continuing from `lsn`, none newer than `at_ms`
    /// and none in `avoid`. Where two segments start at the same LSN (one re-shipped after a
    /// crash), the longer one is taken.
    fn chain(
        &self,
        generation: u64,
        mut lsn: u64,
        at_ms: i64,
        avoid: &[String],
    ) -> Vec<(ObjectName, u64)> {
        let mut out = Vec::new();
        loop {
            let next = self
                .objects
                .iter()
                .filter(|(n, _)| {
                    n.generation == generation
                        && n.kind == Kind::Segment
                        && n.start == lsn
                        && n.time_ms <= at_ms
                        && !avoid.contains(&n.key())
                })
                .max_by_key(|(n, _)| (n.end, std::cmp::Reverse(n.time_ms)));
            match next {
                Some(s) => {
                    lsn = s.0.end;
                    out.push(s.clone());
                }
                None => return out,
            }
        }
    }

    /// What to read to restore the org as it was at `at_ms`, avoiding the keys in `avoid`.
    pub fn plan(&self, at_ms: i64, avoid: &[String]) -> Option<Plan> {
        for generation in self.generations().into_iter().rev() {
            let snapshot = self
                .objects
                .iter()
                .filter(|(n, _)| {
                    n.generation == generation
                        && n.kind == Kind::Snapshot
                        && n.time_ms <= at_ms
                        && !avoid.contains(&n.key())
                })
                .max_by_key(|(n, _)| (n.end, n.time_ms));
            if let Some(snapshot) = snapshot {
                let segments = self.chain(generation, snapshot.0.end, at_ms, avoid);
                return Some(Plan {
                    generation,
                    snapshot: snapshot.clone(),
                    segments,
                });
            }
        }
        None
    }

    pub fn summary(&self) -> Vec<GenerationSummary> {
        self.generations()
            .into_iter()
            .map(|g| {
                let of_g = || self.objects.iter().filter(move |o| o.0.generation == g);
                let snaps: Vec<&(ObjectName, u64)> =
                    of_g().filter(|o| o.0.kind == Kind::Snapshot).collect();
                let newest = self.plan_in(g);
                GenerationSummary {
                    generation: g,
                    snapshots: snaps.len(),
                    segments: of_g().filter(|o| o.0.kind == Kind::Segment).count(),
                    bytes: of_g().map(|o| o.1).sum(),
                    oldest_ms: snaps.iter().map(|s| s.0.time_ms).min().unwrap_or(0),
                    newest_ms: newest.as_ref().map_or(0, Plan::time_ms),
                    newest_lsn: newest.as_ref().map_or(0, Plan::lsn),
                    snapshot_times_ms: snaps.iter().map(|s| s.0.time_ms).collect(),
                }
            })
            .collect()
    }

    fn plan_in(&self, generation: u64) -> Option<Plan> {
        let only = Catalog {
            objects: self
                .objects
                .iter()
                .filter(|o| o.0.generation == generation)
                .cloned()
                .collect(),
        };
        only.plan(i64::MAX, &[])
    }
}

/// How a restore went.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub generation: u64,
    pub lsn: u64,
    pub time_ms: i64,
    pub objects: usize,
    /// Bytes downloaded (compressed) and written (the database file).
    pub downloaded: u64,
    pub db_bytes: u64,
    pub fetch_and_apply: Duration,
    pub integrity_check: Duration,
}

/// A restore that could not be completed: the object at fault, and the newest point that can
/// be restored without it (if any).
#[derive(Debug)]
pub struct Damaged {
    pub key: String,
    pub reason: String,
    pub newest_consistent_ms: Option<i64>,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "backup object {} is unusable: {}", self.key, self.reason)?;
        match self.newest_consistent_ms {
            Some(ms) => write!(
                f,
                "; the newest point restorable without it is {} (--at {ms})",
                crate::backup::format_time(ms)
            ),
            None => write!(f, "; no restore point exists without it"),
        }
    }
}

impl std::error::Error for Damaged {}

/// Restores the plan into `out` (which must not exist): written beside it, verified, renamed.
pub async fn restore(
    store: &Arc<dyn ObjectStore>,
    catalog: &Catalog,
    plan: &Plan,
    out: &Path,
) -> anyhow::Result<Restored> {
    if out.exists() {
        anyhow::bail!(
            "{} already exists; restore never overwrites a file",
            out.display()
        );
    }
    let partial = out.with_extension("restoring");
    let _ = std::fs::remove_file(&partial);
    let started = Instant::now();
    let mut file =
        std::fs::File::create(&partial).with_context(|| format!("create {}", partial.display()))?;
    let objects: Vec<(ObjectName, u64)> = std::iter::once(plan.snapshot.clone())
        .chain(plan.segments.iter().cloned())
        .collect();
    // Downloads run ahead of the writes (up to 4 objects), in order.
    let mut fetched = futures::stream::iter(objects.clone().into_iter().map(|(name, _)| {
        let store = store.clone();
        async move {
            let key = name.key();
            let got = store.get(&ObjectPath::from(key.as_str())).await;
            let bytes = match got {
                Ok(r) => r.bytes().await,
                Err(e) => Err(e),
            };
            (name, bytes)
        }
    }))
    .buffered(4);
    let mut downloaded = 0u64;
    let mut applied: Option<&(ObjectName, u64)> = None;
    let mut index = 0;
    while let Some((name, bytes)) = fetched.next().await {
        let damaged = |reason: String| -> anyhow::Error {
            let _ = std::fs::remove_file(&partial);
            let newest_consistent_ms = match applied {
                // A bad segment: everything before it is fine.
                Some(prev) => Some(prev.0.time_ms),
                // A bad snapshot: what an older snapshot can reach without it.
                None => catalog
                    .plan(name.time_ms - 1, &[name.key()])
                    .map(|p| p.time_ms()),
            };
            Damaged {
                key: name.key(),
                reason,
                newest_consistent_ms,
            }
            .into()
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(damaged("it is missing".into()))
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("download {}", name.key()))),
        };
        downloaded += bytes.len() as u64;
        let decoded = match format::decode(&name, &bytes) {
            Ok(d) => d,
            Err(e) => return Err(damaged(format!("{e:#}"))),
        };
        match decoded.body {
            Body::Database(db) => {
                file.write_all(&db)?;
            }
            Body::Pages(pages) => {
                for (page, data) in pages {
                    file.seek(SeekFrom::Start(
                        (page as u64 - 1) * decoded.page_size as u64,
                    ))?;
                    file.write_all(&data)?;
                }
                file.set_len(decoded.db_pages as u64 * decoded.page_size as u64)?;
            }
        }
        applied = Some(&objects[index]);
        index += 1;
    }
    file.sync_all()?;
    let db_bytes = file.metadata()?.len();
    drop(file);
    let fetch_and_apply = started.elapsed();
    let checked = Instant::now();
    let verdict = tokio::task::spawn_blocking({
        let partial = partial.clone();
        move || -> anyhow::Result<String> {
            let conn = rusqlite::Connection::open_with_flags(
                &partial,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
            )?;
            let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            // Leave a plain file: no WAL beside it.
            conn.pragma_update(None, "journal_mode", "DELETE")?;
            Ok(verdict)
        }
    })
    .await??;
    let integrity_check = checked.elapsed();
    if verdict != "ok" {
        let _ = std::fs::remove_file(&partial);
        anyhow::bail!("the restored database fails PRAGMA integrity_check: {verdict}");
    }
    std::fs::rename(&partial, out)?;
    Ok(Restored {
        generation: plan.generation,
        lsn: plan.lsn(),
        time_ms: plan.time_ms(),
        objects: objects.len(),
        downloaded,
        db_bytes,
        fetch_and_apply,
        integrity_check,
    })
}
