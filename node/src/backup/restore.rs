//! Point-in-time restore of one tenant: the newest snapshot at or before the asked time, then
//! the chain of WAL segments that continues it, each object verified (checksum, header against
//! its name) before its bytes are used, and `PRAGMA integrity_check` on the result before the
//! file is put where it was asked. A damaged object stops the restore with its name and the
//! newest point that can be restored without it.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use hemvist_proto::{DataKey, OrgId};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;

use super::format::{self, Body, Kind, ObjectName};

/// Every backup object of one org: snapshots and segments, with their sizes. A segment that
/// lives in a pack has its place in `packed`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub objects: Vec<(ObjectName, u64)>,
    /// Segment key -> (pack key, offset).
    pub packed: std::collections::HashMap<String, (String, u64)>,
    /// What could not be read while listing (a damaged pack index, say).
    pub warnings: Vec<String>,
}

/// Packs newer than this before a node's newest pack may hold segments no index lists yet.
const TAIL_WINDOW_MS: i64 = 3 * format::INDEX_EVERY_MS;

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

/// The names under the org's prefix alone (one LIST): enough to know the LSNs in use.
pub async fn listed(
    store: &Arc<dyn ObjectStore>,
    org: &OrgId,
) -> anyhow::Result<Vec<(ObjectName, u64)>> {
    let prefix = ObjectPath::from(format::tenant_prefix(org));
    let metas: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .with_context(|| format!("list the backups of {org}"))?;
    Ok(metas
        .into_iter()
        .filter_map(|m| ObjectName::parse(m.location.as_ref()).map(|n| (n, m.size)))
        .filter(|(n, _)| &n.org == org)
        .collect())
}

/// Everything a restore of the org can use: its own objects, the packed segments its index
/// objects list, and the packed segments of the last minute or so that no index lists yet.
pub async fn catalog(store: &Arc<dyn ObjectStore>, org: &OrgId) -> anyhow::Result<Catalog> {
    catalog_with(store, org, true).await
}

/// As [`catalog`]; without `scan_packs`, only what the org's index objects list (to check
/// that they alone reach the newest point).
pub async fn catalog_with(
    store: &Arc<dyn ObjectStore>,
    org: &OrgId,
    scan_packs: bool,
) -> anyhow::Result<Catalog> {
    let names = listed(store, org).await?;
    let mut catalog = Catalog::default();
    let mut indexes = Vec::new();
    for (name, size) in names {
        match name.kind {
            Kind::Index => indexes.push(name),
            _ => catalog.objects.push((name, size)),
        }
    }
    let read: Vec<(ObjectName, anyhow::Result<Vec<format::PackRef>>)> =
        futures::stream::iter(indexes.into_iter().map(|name| {
            let store = store.clone();
            async move {
                let got = async {
                    let bytes = store
                        .get(&ObjectPath::from(name.key()))
                        .await?
                        .bytes()
                        .await?;
                    format::decode_index(&name, &bytes)
                }
                .await;
                (name, got)
            }
        }))
        .buffer_unordered(8)
        .collect()
        .await;
    for (name, refs) in read {
        match refs {
            Ok(refs) => {
                for r in refs {
                    catalog.add_packed(&r.segment, &r.pack, r.offset, r.len);
                }
            }
            Err(e) => catalog
                .warnings
                .push(format!("index {} unreadable: {e:#}", name.key())),
        }
    }
    if scan_packs {
        scan_recent_packs(store, org, &mut catalog).await?;
    }
    catalog.objects.sort_by(|a, b| {
        (a.0.generation, a.0.start, a.0.end, a.0.time_ms).cmp(&(
            b.0.generation,
            b.0.start,
            b.0.end,
            b.0.time_ms,
        ))
    });
    Ok(catalog)
}

/// A pack's index: each segment's name, offset and length.
type PackIndex = Vec<(ObjectName, u64, u64)>;

/// Whether any pack of the node is at or after `time_ms`.
async fn pack_at_or_after(
    store: &Arc<dyn ObjectStore>,
    node: &ObjectPath,
    time_ms: i64,
) -> anyhow::Result<bool> {
    let offset = ObjectPath::from(format!("{node}/{time_ms:013}"));
    let mut listing = store.list_with_offset(Some(node), &offset);
    Ok(listing.next().await.transpose()?.is_some())
}

/// The packs written shortly before each node's newest one (or now): their indexes are read
/// (one ranged GET each) for segments of `org` that no index object lists yet.
async fn scan_recent_packs(
    store: &Arc<dyn ObjectStore>,
    org: &OrgId,
    catalog: &mut Catalog,
) -> anyhow::Result<()> {
    let nodes = store
        .list_with_delimiter(Some(&ObjectPath::from("packs")))
        .await
        .context("list the nodes that write packs")?
        .common_prefixes;
    for node in nodes {
        if !pack_at_or_after(store, &node, 0).await? {
            continue;
        }
        // The newest pack's time, to the second, by bisection over LISTs with an offset.
        let (mut lo, mut hi) = (0i64, crate::clock::now_ms() + 86_400_000);
        while hi - lo > 1_000 {
            let mid = lo + (hi - lo) / 2;
            if pack_at_or_after(store, &node, mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let from = ObjectPath::from(format!("{node}/{:013}", (lo - TAIL_WINDOW_MS).max(0)));
        let packs: Vec<object_store::ObjectMeta> = store
            .list_with_offset(Some(&node), &from)
            .try_collect()
            .await?;
        let tails: Vec<(String, anyhow::Result<PackIndex>)> =
            futures::stream::iter(packs.into_iter().filter_map(|m| {
                let key = m.location.to_string();
                let (_, _, index_len) = format::parse_pack_key(&key)?;
                Some((key, m.size, index_len))
            }))
            .map(|(key, size, index_len)| {
                let store = store.clone();
                async move {
                    let got = async {
                        anyhow::ensure!(index_len <= size, "{key}: shorter than its index");
                        let tail = store
                            .get_range(&ObjectPath::from(key.as_str()), size - index_len..size)
                            .await?;
                        format::decode_pack_index(&key, &tail)
                    }
                    .await;
                    (key, got)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (key, index) in tails {
            match index {
                Ok(entries) => {
                    for (name, offset, len) in entries.into_iter().filter(|e| &e.0.org == org) {
                        catalog.add_packed(&name.key(), &key, offset, len);
                    }
                }
                Err(e) => catalog.warnings.push(format!("{e:#}")),
            }
        }
    }
    Ok(())
}

impl Catalog {
    fn add_packed(&mut self, segment: &str, pack: &str, offset: u64, len: u64) {
        if self.packed.contains_key(segment) {
            return;
        }
        if let Some(name) = ObjectName::parse(segment) {
            self.packed
                .insert(segment.to_string(), (pack.to_string(), offset));
            self.objects.push((name, len));
        }
    }

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
            ..Default::default()
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

enum SnapshotError {
    Damaged(String),
    Other(anyhow::Error),
}

/// Chunk downloads that may run ahead of the threads that open and write them.
const CHUNK_DOWNLOADS: usize = 8;

/// Writes the snapshot into `file`: one ranged GET reads the chunk table (and tells the object's
/// size), then up to [`CHUNK_DOWNLOADS`] ranged GETs run on their own tasks while one blocking
/// thread per core verifies, opens and writes each chunk at its place, reusing its buffers.
/// Returns the bytes downloaded.
async fn restore_snapshot(
    store: &Arc<dyn ObjectStore>,
    name: &ObjectName,
    file: &Arc<std::fs::File>,
    key: Option<&DataKey>,
) -> Result<u64, SnapshotError> {
    use format::SnapshotHead;
    use std::os::unix::fs::FileExt;
    let path = ObjectPath::from(name.key());
    let other = |e: object_store::Error| match e {
        object_store::Error::NotFound { .. } => SnapshotError::Damaged("it is missing".into()),
        e => {
            SnapshotError::Other(anyhow::Error::new(e).context(format!("download {}", name.key())))
        }
    };
    let first = store
        .get_opts(
            &path,
            object_store::GetOptions {
                range: Some(object_store::GetRange::Bounded(0..64 * 1024)),
                ..Default::default()
            },
        )
        .await
        .map_err(other)?;
    let size = first.meta.size;
    let mut head = first.bytes().await.map_err(other)?;
    let mut downloaded = head.len() as u64;
    let table = loop {
        match format::snapshot_head(name, &head)
            .map_err(|e| SnapshotError::Damaged(format!("{e:#}")))?
        {
            SnapshotHead::Chunked(t) => break t,
            SnapshotHead::NeedBytes(n) if (n as u64) <= size && n > head.len() => {
                head = store.get_range(&path, 0..n as u64).await.map_err(other)?;
                downloaded += head.len() as u64;
            }
            SnapshotHead::NeedBytes(_) => {
                return Err(SnapshotError::Damaged(
                    "its chunk table is cut short".into(),
                ))
            }
            SnapshotHead::Whole => {
                // An older single-body snapshot.
                let bytes = if size <= head.len() as u64 {
                    head
                } else {
                    let bytes = store.get_range(&path, 0..size).await.map_err(other)?;
                    downloaded += bytes.len() as u64;
                    bytes
                };
                let decoded = format::decode(name, &bytes, key)
                    .map_err(|e| SnapshotError::Damaged(format!("{e:#}")))?;
                if let Body::Database(db) = decoded.body {
                    file.write_all_at(&db, 0)
                        .map_err(|e| SnapshotError::Other(e.into()))?;
                }
                return Ok(downloaded);
            }
        }
    };
    file.set_len(table.raw_len)
        .map_err(|e| SnapshotError::Other(e.into()))?;
    let table = Arc::new(table);
    let key = key.cloned();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2);
    let mut done = futures::stream::iter(0..table.chunks.len())
        .map(|i| {
            let (store, path, table) = (store.clone(), path.clone(), table.clone());
            // A task of its own, so the download goes on while the threads are busy.
            let download = tokio::spawn(async move {
                let (offset, len, _) = table.chunks[i];
                store.get_range(&path, offset..offset + len as u64).await
            });
            async move { (i, download.await) }
        })
        .buffer_unordered(CHUNK_DOWNLOADS)
        .map(|(i, got)| {
            let (table, file, key, name) = (table.clone(), file.clone(), key.clone(), name.clone());
            async move {
                let bytes = match got {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(object_store::Error::NotFound { .. })) => {
                        return Err(SnapshotError::Damaged("it is missing".into()))
                    }
                    Ok(Err(e)) => return Err(SnapshotError::Other(anyhow::Error::new(e))),
                    Err(e) => {
                        return Err(SnapshotError::Other(anyhow::anyhow!("chunk download: {e}")))
                    }
                };
                tokio::task::spawn_blocking(move || {
                    thread_local! {
                        static BUFFERS: std::cell::RefCell<format::ChunkBuffers> =
                            std::cell::RefCell::default();
                    }
                    BUFFERS.with_borrow_mut(|buffers| {
                        format::open_chunk_into(&name, &table, i, &bytes, key.as_ref(), buffers)
                            .map_err(|e| SnapshotError::Damaged(format!("{e:#}")))?;
                        file.write_all_at(buffers.raw(), i as u64 * table.chunk_raw)
                            .map_err(|e| SnapshotError::Other(e.into()))?;
                        Ok(bytes.len() as u64)
                    })
                })
                .await
                .map_err(|e| SnapshotError::Other(anyhow::anyhow!("chunk task: {e}")))?
            }
        })
        .buffer_unordered(workers);
    while let Some(n) = done.next().await {
        downloaded += n?;
    }
    Ok(downloaded)
}

/// Restores the plan into `out` (which must not exist): written beside it, verified, renamed.
pub async fn restore(
    store: &Arc<dyn ObjectStore>,
    catalog: &Catalog,
    plan: &Plan,
    out: &Path,
    key: Option<&DataKey>,
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
    let file =
        std::fs::File::create(&partial).with_context(|| format!("create {}", partial.display()))?;
    let file = Arc::new(file);
    let damaged =
        |name: &ObjectName, applied: Option<&(ObjectName, u64)>, reason: String| -> anyhow::Error {
            let _ = std::fs::remove_file(&partial);
            let newest_consistent_ms = match applied {
                // A bad segment: everything before it is fine.
                Some(prev) => Some(prev.0.time_ms),
                // A bad snapshot: what an older snapshot can reach without it.
                None => catalog
                    .plan(name.time_ms - 1, &[name.key()])
                    .map(|p| p.time_ms()),
            };
            let key = match catalog.packed.get(&name.key()) {
                Some((pack, offset)) => format!("{} (at {offset} in {pack})", name.key()),
                None => name.key(),
            };
            Damaged {
                key,
                reason,
                newest_consistent_ms,
            }
            .into()
        };
    let mut downloaded = match restore_snapshot(store, &plan.snapshot.0, &file, key).await {
        Ok(n) => n,
        Err(SnapshotError::Damaged(reason)) => return Err(damaged(&plan.snapshot.0, None, reason)),
        Err(SnapshotError::Other(e)) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // Segments: downloads run ahead of the writes (up to 4 objects), applied in order.
    let mut fetched =
        futures::stream::iter(plan.segments.clone().into_iter().map(|(name, len)| {
            let store = store.clone();
            let packed = catalog.packed.get(&name.key()).cloned();
            async move {
                let bytes = match packed {
                    Some((pack, offset)) => {
                        store
                            .get_range(&ObjectPath::from(pack.as_str()), offset..offset + len)
                            .await
                    }
                    None => match store.get(&ObjectPath::from(name.key())).await {
                        Ok(r) => r.bytes().await,
                        Err(e) => Err(e),
                    },
                };
                (name, bytes)
            }
        }))
        .buffered(4);
    let mut applied: &(ObjectName, u64) = &plan.snapshot;
    let mut index = 0;
    while let Some((name, bytes)) = fetched.next().await {
        let bytes = match bytes {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(damaged(&name, Some(applied), "it is missing".into()))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(anyhow::Error::new(e).context(format!("download {}", name.key())));
            }
        };
        downloaded += bytes.len() as u64;
        let decoded = match format::decode(&name, &bytes, key) {
            Ok(d) => d,
            Err(e) => return Err(damaged(&name, Some(applied), format!("{e:#}"))),
        };
        if let Body::Pages(pages) = decoded.body {
            use std::os::unix::fs::FileExt;
            for (page, data) in pages {
                file.write_all_at(&data, (page as u64 - 1) * decoded.page_size as u64)?;
            }
            file.set_len(decoded.db_pages as u64 * decoded.page_size as u64)?;
        }
        applied = &plan.segments[index];
        index += 1;
    }
    let file = Arc::try_unwrap(file).map_err(|_| anyhow::anyhow!("restore file still shared"))?;
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
        objects: 1 + plan.segments.len(),
        downloaded,
        db_bytes,
        fetch_and_apply,
        integrity_check,
    })
}
