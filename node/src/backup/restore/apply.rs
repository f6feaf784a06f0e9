//! Applying a plan: the snapshot's chunks and then the segments' pages written into a new
//! file, which is checked and only then put where it was asked.
//!
//! Keeps true: every object is verified (checksum, header against its name, seal) before its
//! bytes are used; `PRAGMA integrity_check` passes before the file is renamed into place; an
//! existing file is never overwritten; a damaged object stops the restore with its name and the
//! newest point restorable without it, leaving no file behind.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hemvist_proto::DataKey;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Serialize;

use super::catalog::Catalog;
use super::plan::Plan;
use crate::backup::format::{self, Body, ObjectName};

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

/// Why writing segments stopped: the one at `index` is damaged (missing, or failing its checks),
/// or something else went wrong (the store, the disk).
pub enum SegmentError {
    Damaged { index: usize, reason: String },
    Other(anyhow::Error),
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::Damaged { index, reason } => write!(f, "segment {index}: {reason}"),
            SegmentError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

/// Fetches `segments` (downloads run up to 4 objects ahead) and writes each one's pages into
/// `file`, in order, each verified before its bytes are used. Returns the bytes downloaded.
pub async fn write_segments(
    store: &Arc<dyn ObjectStore>,
    catalog: &Catalog,
    segments: &[(ObjectName, u64)],
    file: &std::fs::File,
    key: Option<&DataKey>,
) -> Result<u64, SegmentError> {
    use std::os::unix::fs::FileExt;
    let mut fetched = futures::stream::iter(segments.iter().cloned().map(|(name, len)| {
        let store = store.clone();
        let packed = catalog.packed.get(&name.key()).cloned();
        async move {
            match packed {
                Some((pack, offset)) => {
                    store
                        .get_range(&ObjectPath::from(pack.as_str()), offset..offset + len)
                        .await
                }
                None => match store.get(&ObjectPath::from(name.key())).await {
                    Ok(r) => r.bytes().await,
                    Err(e) => Err(e),
                },
            }
        }
    }))
    .buffered(4);
    let mut downloaded = 0;
    let mut index = 0;
    while let Some(bytes) = fetched.next().await {
        let name = &segments[index].0;
        let bytes = match bytes {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(SegmentError::Damaged {
                    index,
                    reason: "it is missing".into(),
                })
            }
            Err(e) => {
                return Err(SegmentError::Other(
                    anyhow::Error::new(e).context(format!("download {}", name.key())),
                ))
            }
        };
        downloaded += bytes.len() as u64;
        let decoded = format::decode(name, &bytes, key).map_err(|e| SegmentError::Damaged {
            index,
            reason: format!("{e:#}"),
        })?;
        if let Body::Pages(pages) = decoded.body {
            let write = || -> std::io::Result<()> {
                for (page, data) in pages {
                    file.write_all_at(&data, (page as u64 - 1) * decoded.page_size as u64)?;
                }
                file.set_len(decoded.db_pages as u64 * decoded.page_size as u64)
            };
            write().map_err(|e| SegmentError::Other(e.into()))?;
        }
        index += 1;
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
    match write_segments(store, catalog, &plan.segments, &file, key).await {
        Ok(n) => downloaded += n,
        Err(SegmentError::Damaged { index, reason }) => {
            let applied = match index {
                0 => &plan.snapshot,
                i => &plan.segments[i - 1],
            };
            return Err(damaged(&plan.segments[index].0, Some(applied), reason));
        }
        Err(SegmentError::Other(e)) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
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
