//! The replicator: ships every hosted tenant's new WAL frames to the region's object store.
//!
//! Invariants:
//! - Cost grows with activity, not tenants: a tenant is looked at only after a write marks it
//!   dirty (or at start, if its WAL holds frames not yet shipped). An idle tenant costs no
//!   request, no timer and no open file.
//! - One loop per node, waking every interval, ships the dirty tenants `concurrency` at a time.
//! - Nothing is checkpointed before it is shipped: tenants' writers never checkpoint on their
//!   own (`tenants::checkpoints_by_backup`); the replicator checkpoints under the tenant's
//!   writer lock after shipping the last frames.
//! - Every object is created with a conditional put under its generation's prefix and never
//!   overwritten; a node that no longer holds the org's generation ships nothing more for it.
//! - What was shipped is recorded in `backup.db` after the upload succeeded, so a crash at any
//!   point ships again (an object that exists already is the same upload) and loses nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hemvist_proto::{HemvistError, OrgId};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::format::{self, Kind, ObjectName, PackRef};
use super::store::BackupConfig;
use super::wal::{self, WalPos, WalRead};
use crate::clock::now_ms;
use crate::state::NodeState;
use crate::tenants::TenantStore;
use hemvist_proto::NodeId;

/// A WAL this long (in frames) is checkpointed once shipped.
const CHECKPOINT_FRAMES: u64 = 1_000;
/// At most this much page data goes into one segment.
const SEGMENT_BYTES: usize = 32 * 1024 * 1024;
/// Segments up to this size go into the pass's pack; larger ones are their own objects.
const PACKED_SEGMENT_BYTES: usize = 1024 * 1024;
/// The longest a tenant's packed segments wait to be listed in an index object under its own
/// prefix (`backup.index_every_ms` is at most this); they are also listed at shutdown.
pub const INDEX_EVERY_MS: i64 = 30_000;

/// What was shipped of one tenant, persisted after every successful upload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shipped {
    pub generation: u64,
    /// The LSN after the last object shipped.
    pub lsn: u64,
    pub wal: WalPos,
    pub page_size: u32,
    /// Whether this generation has a snapshot yet, and the WAL bytes shipped since the last.
    pub snapshot_lsn: Option<u64>,
    pub since_snapshot: u64,
    pub shipped_ms: i64,
    /// Packed segments not yet listed in an index object under the tenant's prefix.
    #[serde(default)]
    pub pending: Vec<PackRef>,
    /// When the generation's newest snapshot was taken.
    #[serde(default)]
    pub snapshot_ms: i64,
}

/// What shipping one tenant came to.
enum Step {
    /// Everything is shipped.
    Done,
    /// Shipped a part; more remains.
    More,
    /// A segment for the pass's pack, and the state once the pack is stored.
    Pack(Box<Packed>),
}

struct Packed {
    name: ObjectName,
    bytes: Vec<u8>,
    next: Shipped,
    more: bool,
}

#[derive(Default)]
pub struct BackupMetrics {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub put_failures: AtomicU64,
    pub snapshots: AtomicU64,
    pub segments: AtomicU64,
    pub checkpoints: AtomicU64,
    pub deletes: AtomicU64,
    /// The oldest unshipped write among dirty tenants, as of the last pass (ms; 0 = none).
    pub lag_ms: AtomicU64,
}

impl Replicator {
    /// The replicator's lines of the node's Prometheus metrics.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let m = &self.metrics;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let metrics: [(&str, &str, &str, u64); 9] = [
            (
                "hemvist_backup_puts_total",
                "counter",
                "Objects uploaded.",
                get(&m.puts),
            ),
            (
                "hemvist_backup_put_bytes_total",
                "counter",
                "Bytes uploaded.",
                get(&m.put_bytes),
            ),
            (
                "hemvist_backup_put_failures_total",
                "counter",
                "Uploads that failed (and were retried).",
                get(&m.put_failures),
            ),
            (
                "hemvist_backup_snapshots_total",
                "counter",
                "Snapshots uploaded.",
                get(&m.snapshots),
            ),
            (
                "hemvist_backup_segments_total",
                "counter",
                "WAL segments uploaded.",
                get(&m.segments),
            ),
            (
                "hemvist_backup_checkpoints_total",
                "counter",
                "Checkpoints after shipping.",
                get(&m.checkpoints),
            ),
            (
                "hemvist_backup_deletes_total",
                "counter",
                "Expired backup objects removed.",
                get(&m.deletes),
            ),
            (
                "hemvist_backup_dirty_tenants",
                "gauge",
                "Tenants with writes not yet shipped.",
                self.dirty_count() as u64,
            ),
            (
                "hemvist_backup_lag_ms",
                "gauge",
                "Age of the oldest unshipped write at the last pass.",
                get(&m.lag_ms),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, v) in metrics {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

/// A tenant with writes not yet shipped: since when, and a counter bumped by every write, so a
/// pass knows whether writes came in while it shipped (then the tenant stays dirty).
#[derive(Debug, Clone, Copy)]
struct Dirty {
    since: i64,
    writes: u64,
}

pub struct Replicator {
    pub store: Arc<dyn ObjectStore>,
    pub config: BackupConfig,
    /// Tenants with writes not yet shipped, and when the oldest of them was marked.
    dirty: Mutex<HashMap<OrgId, Dirty>>,
    shipped: Mutex<HashMap<OrgId, Shipped>>,
    /// Orgs whose position changed since the control plane was last told.
    changed: Mutex<std::collections::HashSet<OrgId>>,
    /// Per tenant: the count of writes marked, and how many of them are in object storage.
    marks: Mutex<HashMap<OrgId, u64>>,
    durable: Mutex<HashMap<OrgId, u64>>,
    durable_changed: std::sync::Condvar,
    /// Wakes the loop: a first dirty tenant (a deadline to keep), or a `sync` write waiting
    /// (`urgent`: ship at once).
    wake: tokio::sync::Notify,
    urgent: std::sync::atomic::AtomicBool,
    /// Tenants with packed segments to list in an index object, and since when.
    index_due: Mutex<HashMap<OrgId, i64>>,
    pack_seq: AtomicU64,
    db: Mutex<Connection>,
    pub metrics: BackupMetrics,
    /// What it ships: the node's tenant files, which of them it hosts at which generation (and
    /// with which data key), and the node's id for its packs.
    tenants: Arc<TenantStore>,
    hosted: Arc<NodeState>,
    node_id: NodeId,
}

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("backup: {e}"))
}

impl Replicator {
    pub fn open(
        data_dir: &Path,
        config: BackupConfig,
        node_id: NodeId,
        tenants: Arc<TenantStore>,
        hosted: Arc<NodeState>,
    ) -> anyhow::Result<Self> {
        let store = config.open()?;
        let db = Connection::open(data_dir.join("backup.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL: a state update lost with power is an upload repeated (the same LSNs, which a
        // restore tolerates), never a loss; FULL would fsync once per tenant per pass.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS shipped (org TEXT PRIMARY KEY, state TEXT NOT NULL);
             -- Packs this node wrote, and how many of their segments a restore may still need.
             CREATE TABLE IF NOT EXISTS packs (key TEXT PRIMARY KEY, time_ms INTEGER NOT NULL,
               live INTEGER NOT NULL);",
        )?;
        let mut shipped = HashMap::new();
        {
            let mut stmt = db.prepare("SELECT org, state FROM shipped")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (org, state) = row?;
                if let (Ok(org), Ok(state)) = (OrgId::parse(&org), serde_json::from_str(&state)) {
                    shipped.insert(org, state);
                }
            }
        }
        crate::tenants::checkpoints_by_backup();
        let index_due: HashMap<OrgId, i64> = shipped
            .iter()
            .filter(|(_, s): &(&OrgId, &Shipped)| !s.pending.is_empty())
            .map(|(o, s)| (o.clone(), s.shipped_ms))
            .collect();
        Ok(Self {
            store,
            config,
            dirty: Mutex::new(HashMap::new()),
            shipped: Mutex::new(shipped),
            changed: Mutex::new(Default::default()),
            index_due: Mutex::new(index_due),
            marks: Mutex::new(HashMap::new()),
            durable: Mutex::new(HashMap::new()),
            durable_changed: std::sync::Condvar::new(),
            wake: tokio::sync::Notify::new(),
            urgent: std::sync::atomic::AtomicBool::new(false),
            pack_seq: AtomicU64::new(0),
            db: Mutex::new(db),
            metrics: BackupMetrics::default(),
            tenants,
            hosted,
            node_id,
        })
    }

    /// Called after every committed write (and after hosting): ship this tenant soon.
    /// Returns the mark of this write: once a pass ships the tenant with a count of writes at
    /// least this, the write is in object storage.
    pub fn mark_dirty(&self, org: &OrgId) -> u64 {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let mark = marks.entry(org.clone()).or_insert(0);
        *mark += 1;
        let mark = *mark;
        drop(marks);
        match dirty.get_mut(org) {
            Some(d) => d.writes = mark,
            None => {
                let first = dirty.is_empty();
                dirty.insert(
                    org.clone(),
                    Dirty {
                        since: now_ms(),
                        writes: mark,
                    },
                );
                drop(dirty);
                self.note_changed(org);
                if first {
                    // The loop sleeps with nothing to do; it now has a deadline.
                    self.wake.notify_one();
                }
            }
        }
        mark
    }

    /// Blocks until the write with `mark` is in object storage (a pass starts at once; every
    /// write that comes in meanwhile joins the next one: group commit), or `limit` passes.
    pub fn wait_durable(
        &self,
        org: &OrgId,
        mark: u64,
        limit: Duration,
    ) -> Result<(), HemvistError> {
        let deadline = std::time::Instant::now() + limit;
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        self.urgent.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        loop {
            if durable.get(org).is_some_and(|d| *d >= mark) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(HemvistError::unavailable(
                    "the write is committed on this node but not yet in object storage \
                     (durability sync); it will be shipped when the store answers",
                ));
            }
            durable = self
                .durable_changed
                .wait_timeout(durable, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn note_changed(&self, org: &OrgId) {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        changed.insert(org.clone());
    }

    /// Every org's position is reported again (a new session with the control plane).
    pub fn report_all(&self) {
        let orgs: Vec<OrgId> = self
            .shipped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        changed.extend(orgs);
        changed.extend(
            self.dirty
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
    }

    /// The positions that changed since the last call: (org, shipped, oldest unshipped write).
    pub fn take_changes(&self) -> Vec<(OrgId, Option<Shipped>, Option<i64>)> {
        let orgs: Vec<OrgId> = self
            .changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let shipped = self.shipped.lock().unwrap_or_else(|p| p.into_inner());
        orgs.into_iter()
            .map(|o| {
                let s = shipped.get(&o).cloned();
                let d = dirty.get(&o).map(|d| d.since);
                (o, s, d)
            })
            .collect()
    }

    pub fn shipped(&self, org: &OrgId) -> Option<Shipped> {
        let s = self.shipped.lock().unwrap_or_else(|p| p.into_inner());
        s.get(org).cloned()
    }

    fn oldest_dirty(&self) -> Option<i64> {
        let dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        dirty.values().map(|d| d.since).min()
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// At start: every hosted tenant whose WAL holds more than was shipped (or that was never
    /// shipped in its generation) is dirty. One `stat` per tenant, no file kept open.
    pub fn scan(&self) {
        for (org, hosted) in self.hosted.all_hosted() {
            let shipped = self.shipped(&org);
            let stale = match &shipped {
                None => true,
                Some(s) if s.generation != hosted.generation.get() => true,
                Some(s) => {
                    let wal = wal::wal_path(&self.tenants.path(&org));
                    let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                    let frame = wal::FRAME_HEADER + s.page_size as u64;
                    let known = if s.wal.salts.is_none() {
                        0
                    } else {
                        wal::HEADER + s.wal.frames * frame
                    };
                    len > known && len >= wal::HEADER + frame
                }
            };
            if stale {
                self.mark_dirty(&org);
            }
        }
    }

    fn persist(&self, org: &OrgId, state: Option<&Shipped>) -> Result<(), HemvistError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(s) => db.execute(
                "INSERT INTO shipped (org, state) VALUES (?1, ?2)
                 ON CONFLICT (org) DO UPDATE SET state = excluded.state",
                rusqlite::params![org.as_str(), serde_json::to_string(s).map_err(internal)?],
            ),
            None => db.execute("DELETE FROM shipped WHERE org = ?1", [org.as_str()]),
        }
        .map_err(internal)?;
        let mut shipped = self.shipped.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(s) => shipped.insert(org.clone(), s.clone()),
            None => shipped.remove(org),
        };
        drop(shipped);
        self.note_changed(org);
        Ok(())
    }

    /// Creates an object; one that exists already is this same upload retried.
    async fn put(&self, name: &ObjectName, bytes: Vec<u8>) -> Result<(), HemvistError> {
        self.put_key(&name.key(), bytes).await
    }

    async fn put_key(&self, name: &str, bytes: Vec<u8>) -> Result<(), HemvistError> {
        let key = ObjectPath::from(name);
        let len = bytes.len() as u64;
        let payload = PutPayload::from(Bytes::from(bytes));
        let mut delay = Duration::from_millis(100);
        loop {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self.store.put_opts(&key, payload.clone(), opts).await {
                Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {
                    self.metrics.puts.fetch_add(1, Ordering::Relaxed);
                    self.metrics.put_bytes.fetch_add(len, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => {
                    self.metrics.put_failures.fetch_add(1, Ordering::Relaxed);
                    if delay > Duration::from_secs(8) {
                        return Err(HemvistError::unavailable(format!(
                            "backup: upload of {name} failed: {e}"
                        )));
                    }
                    tracing::warn!(key = %name, error = %e, "backup upload failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }

    /// Ships what one tenant has not shipped yet, or prepares its segment for the pack.
    async fn ship(&self, org: &OrgId) -> Result<Step, HemvistError> {
        let Some(hosted) = self.hosted.hosted(org) else {
            self.persist(org, None)?;
            return Ok(Step::Done);
        };
        if self
            .hosted
            .placement(org)
            .is_some_and(|p| p.generation > hosted.generation)
        {
            // Fenced: the org belongs to a newer generation elsewhere; ship nothing more.
            return Ok(Step::Done);
        }
        let generation = hosted.generation.get();
        let current = self.shipped(org).filter(|s| s.generation == generation);
        let needs_snapshot = match &current {
            None => true,
            Some(s) => {
                s.snapshot_lsn.is_none()
                    || s.since_snapshot >= self.config.snapshot_after_bytes
                    || (s.snapshot_ms > 0
                        && now_ms() - s.snapshot_ms > self.config.retention_secs as i64 * 500)
            }
        };
        if needs_snapshot {
            self.snapshot(org, generation, current.as_ref()).await?;
            return Ok(Step::Done);
        }
        let Some(state) = current else {
            return Ok(Step::Done);
        };
        let wal_path = wal::wal_path(&self.tenants.path(org));
        let from = state.wal;
        let read = tokio::task::spawn_blocking(move || {
            wal::read_since(&wal_path, Some(&from), SEGMENT_BYTES)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        match read {
            WalRead::Nothing => {
                self.maybe_checkpoint(org, &state).await?;
                Ok(Step::Done)
            }
            WalRead::Restarted => {
                // Frames may have been checkpointed unseen: a snapshot covers whatever they were.
                tracing::warn!(%org, "WAL restarted outside the replicator; taking a snapshot");
                self.snapshot(org, generation, Some(&state)).await?;
                Ok(Step::Done)
            }
            WalRead::Read { changes, next } => {
                let name = ObjectName {
                    org: org.clone(),
                    generation,
                    kind: Kind::Segment,
                    start: state.lsn,
                    end: state.lsn + changes.frames,
                    time_ms: now_ms(),
                };
                let size = changes.pages.len() as u64 * changes.page_size as u64;
                let more = size as usize >= SEGMENT_BYTES;
                let key = hosted.data_key.clone();
                let bytes = tokio::task::spawn_blocking({
                    let name = name.clone();
                    move || {
                        format::encode_segment(
                            &name,
                            changes.page_size,
                            changes.db_pages,
                            &changes.pages,
                            key.as_ref(),
                        )
                    }
                })
                .await
                .map_err(internal)?;
                let shipped = Shipped {
                    lsn: name.end,
                    wal: next,
                    since_snapshot: state.since_snapshot + size,
                    shipped_ms: name.time_ms,
                    ..state
                };
                if bytes.len() <= PACKED_SEGMENT_BYTES {
                    return Ok(Step::Pack(Box::new(Packed {
                        name,
                        bytes,
                        next: shipped,
                        more,
                    })));
                }
                self.put(&name, bytes).await?;
                self.metrics.segments.fetch_add(1, Ordering::Relaxed);
                self.persist(org, Some(&shipped))?;
                if !more {
                    self.maybe_checkpoint(org, &shipped).await?;
                }
                Ok(if more { Step::More } else { Step::Done })
            }
        }
    }

    /// Once the WAL is long, ship its last frames and checkpoint it, under the writer lock.
    async fn maybe_checkpoint(&self, org: &OrgId, state: &Shipped) -> Result<(), HemvistError> {
        if state.wal.frames < CHECKPOINT_FRAMES {
            return Ok(());
        }
        let (n, o, me) = (&self.tenants, org.clone(), state.clone());
        let rt = tokio::runtime::Handle::current();
        // The upload under the lock is rare (once per CHECKPOINT_FRAMES frames) and short.
        tokio::task::block_in_place(|| {
            n.with_writer(&o, |conn| {
                let wal_path = wal::wal_path(&n.path(&o));
                let mut state = me.clone();
                if let WalRead::Read { changes, next } =
                    wal::read_since(&wal_path, Some(&state.wal), usize::MAX).map_err(internal)?
                {
                    let name = ObjectName {
                        org: o.clone(),
                        generation: state.generation,
                        kind: Kind::Segment,
                        start: state.lsn,
                        end: state.lsn + changes.frames,
                        time_ms: now_ms(),
                    };
                    let key = self.hosted.hosted(&o).and_then(|h| h.data_key);
                    let bytes = format::encode_segment(
                        &name,
                        changes.page_size,
                        changes.db_pages,
                        &changes.pages,
                        key.as_ref(),
                    );
                    rt.block_on(self.put(&name, bytes))?;
                    self.metrics.segments.fetch_add(1, Ordering::Relaxed);
                    state.lsn = name.end;
                    state.wal = next;
                    state.since_snapshot += changes.pages.len() as u64 * changes.page_size as u64;
                    state.shipped_ms = name.time_ms;
                    self.persist(&o, Some(&state))?;
                }
                let (busy, _, _): (i64, i64, i64) = conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(internal)?;
                if busy == 0 {
                    state.wal = WalPos::default();
                    self.persist(&o, Some(&state))?;
                    self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
    }

    /// Checkpoints the tenant (so its file is the whole database) and uploads the file as the
    /// generation's next snapshot. Writes go on meanwhile: they only append to the WAL, and
    /// nothing but this task checkpoints.
    async fn snapshot(
        &self,
        org: &OrgId,
        generation: u64,
        state: Option<&Shipped>,
    ) -> Result<(), HemvistError> {
        let (n, o) = (&self.tenants, org.clone());
        tokio::task::block_in_place(|| {
            n.with_writer(&o, |conn| {
                let (busy, _, _): (i64, i64, i64) = conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(internal)?;
                if busy != 0 {
                    return Err(HemvistError::unavailable(
                        "backup: checkpoint is busy; will retry",
                    ));
                }
                Ok(())
            })
        })?;
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        let path = self.tenants.path(org);
        let lsn = match state {
            Some(s) => s.lsn + 1,
            // Nothing recorded for this generation here (a first ship, a restored tenant, or a
            // lost backup.db): continue above whatever the store already holds for it, so two
            // histories never share an LSN.
            // One LIST of the tenant's prefix; packed segments not yet listed in an index
            // object may hold LSNs past it, so a generation that has objects jumps far ahead.
            None => {
                let listed = super::restore::listed(&self.store, org)
                    .await
                    .map_err(|e| HemvistError::unavailable(format!("backup: {e:#}")))?;
                listed
                    .iter()
                    .filter(|(n, _)| n.generation == generation)
                    .map(|(n, _)| n.end + (1 << 32))
                    .max()
                    .unwrap_or(0)
            }
        };
        let name = ObjectName {
            org: org.clone(),
            generation,
            kind: Kind::Snapshot,
            start: lsn,
            end: lsn,
            time_ms: now_ms(),
        };
        let key = self.hosted.hosted(org).and_then(|h| h.data_key);
        let (bytes, page_size) = tokio::task::spawn_blocking({
            let name = name.clone();
            move || -> Result<(Vec<u8>, u32), HemvistError> {
                let db = std::fs::read(&path).map_err(internal)?;
                let page_size = if db.len() >= 18 {
                    match u16::from_be_bytes([db[16], db[17]]) {
                        1 => 65536,
                        n => n as u32,
                    }
                } else {
                    4096
                };
                Ok((
                    format::encode_snapshot(&name, page_size, &db, key.as_ref()),
                    page_size,
                ))
            }
        })
        .await
        .map_err(internal)??;
        self.put(&name, bytes).await?;
        self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
        let shipped = Shipped {
            generation,
            lsn,
            wal: WalPos::default(),
            page_size,
            snapshot_lsn: Some(lsn),
            since_snapshot: 0,
            shipped_ms: name.time_ms,
            // Packed segments before the snapshot still serve restores to earlier times.
            pending: state.map(|s| s.pending.clone()).unwrap_or_default(),
            snapshot_ms: name.time_ms,
        };
        self.persist(org, Some(&shipped))?;
        if let Err(e) = self.prune(org).await {
            tracing::warn!(%org, error = %e, "removing expired backups failed; will retry at the next snapshot");
        }
        Ok(())
    }

    /// Removes what no restore point inside the retention window needs: everything before the
    /// newest snapshot at or before the window's start (older generations included). Packed
    /// segments are released from their packs; a pack goes once none of its segments is
    /// needed. Runs after a snapshot, so only tenants being written pay for it.
    async fn prune(&self, org: &OrgId) -> anyhow::Result<()> {
        let horizon = now_ms() - self.config.retention_secs as i64 * 1000;
        let listed = super::restore::listed(&self.store, org).await?;
        let restorable = super::restore::Catalog {
            objects: listed
                .iter()
                .filter(|(n, _)| n.kind != Kind::Index)
                .cloned()
                .collect(),
            ..Default::default()
        };
        let Some(base) = restorable.plan(horizon, &[]) else {
            return Ok(());
        };
        let (generation, lsn) = (base.generation, base.snapshot.0.end);
        let expired: Vec<&ObjectName> = listed
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                n.generation < generation
                    || (n.generation == generation
                        && match n.kind {
                            Kind::Snapshot => n.end < lsn,
                            Kind::Segment | Kind::Index => n.end <= lsn,
                        })
            })
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        // Indexes are read, then everything is deleted (in bulk requests), then the indexes'
        // segments released: a crash in between leaves a pack behind (storage), never frees
        // one twice (data).
        let mut refs = Vec::new();
        for name in expired.iter().filter(|n| n.kind == Kind::Index) {
            let key = ObjectPath::from(name.key());
            let bytes = self.store.get(&key).await?.bytes().await?;
            refs.extend(format::decode_index(name, &bytes)?);
        }
        let keys: Vec<object_store::Result<ObjectPath>> = expired
            .iter()
            .map(|n| Ok(ObjectPath::from(n.key())))
            .collect();
        let deleted: Vec<ObjectPath> = self
            .store
            .delete_stream(futures::stream::iter(keys).boxed())
            .try_collect()
            .await?;
        self.metrics
            .deletes
            .fetch_add(deleted.len() as u64, Ordering::Relaxed);
        for r in refs {
            self.release_packed(&r.pack).await?;
        }
        Ok(())
    }

    /// One segment of a pack this node wrote is no longer needed; the pack goes with its last.
    async fn release_packed(&self, pack: &str) -> anyhow::Result<()> {
        let left: Option<i64> = {
            let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
            db.query_row(
                "UPDATE packs SET live = live - 1 WHERE key = ?1 RETURNING live",
                [pack],
                |r| r.get(0),
            )
            .optional()?
        };
        if left.is_some_and(|n| n <= 0) {
            self.store.delete(&ObjectPath::from(pack)).await?;
            self.metrics.deletes.fetch_add(1, Ordering::Relaxed);
            let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
            db.execute("DELETE FROM packs WHERE key = ?1", [pack])?;
        }
        Ok(())
    }

    /// One pass: every dirty tenant shipped, `concurrency` at a time. A tenant stays dirty
    /// (and its lag keeps counting) until what it had is in the store: while its upload is in
    /// flight, after a failure, and when writes came in meanwhile.
    pub async fn pass(&self) {
        let started = now_ms();
        let batch: Vec<(OrgId, Dirty)> = {
            let dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            dirty.iter().map(|(o, d)| (o.clone(), *d)).collect()
        };
        let oldest = batch.iter().map(|b| b.1.since).min();
        self.metrics.lag_ms.store(
            oldest.map_or(0, |t| (started - t).max(0) as u64),
            Ordering::Relaxed,
        );
        let steps: Vec<(OrgId, Dirty, Result<Step, HemvistError>)> = futures::stream::iter(batch)
            .map(|(org, seen)| async move {
                let step = self.ship(&org).await;
                (org, seen, step)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let mut outcomes: Vec<(OrgId, Dirty, bool)> = Vec::with_capacity(steps.len());
        let mut packed: Vec<(OrgId, Dirty, Packed)> = Vec::new();
        for (org, seen, step) in steps {
            match step {
                Ok(Step::Done) => outcomes.push((org, seen, true)),
                Ok(Step::More) => outcomes.push((org, seen, false)),
                Ok(Step::Pack(p)) => packed.push((org, seen, *p)),
                Err(e) => {
                    tracing::warn!(%org, error = %e, "backup of tenant failed; will retry");
                    outcomes.push((org, seen, false));
                }
            }
        }
        if !packed.is_empty() {
            let stored = self.store_pack(&packed).await;
            // `store_pack` returns one reference per packed tenant, in the same order.
            for (i, (org, seen, p)) in packed.into_iter().enumerate() {
                let done = match &stored {
                    Ok(refs) => {
                        let mut next = p.next;
                        if let Some(r) = refs.get(i).filter(|r| r.segment == p.name.key()) {
                            next.pending.push(r.clone());
                        }
                        let ok = self.persist(&org, Some(&next)).is_ok();
                        self.index_due
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(org.clone())
                            .or_insert(next.shipped_ms);
                        if ok && !p.more {
                            if let Err(e) = self.maybe_checkpoint(&org, &next).await {
                                tracing::warn!(%org, error = %e, "checkpoint after shipping failed");
                            }
                        }
                        ok && !p.more
                    }
                    Err(_) => false,
                };
                outcomes.push((org, seen, done));
            }
            if let Err(e) = stored {
                tracing::warn!(error = %e, "backup pack upload failed; its tenants will be shipped again");
            }
        }
        let cleared = self.clear_dirty(outcomes, started);
        for org in cleared {
            self.note_changed(&org);
        }
        self.write_indexes(false).await;
    }

    /// Tenants fully shipped stop being dirty, unless written meanwhile; the writes they had
    /// are durable (waiting `sync` writers are told).
    fn clear_dirty(&self, outcomes: Vec<(OrgId, Dirty, bool)>, started: i64) -> Vec<OrgId> {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        let mut cleared = Vec::new();
        for (org, seen, done) in outcomes {
            if !done {
                continue;
            }
            let d = durable.entry(org.clone()).or_insert(0);
            *d = (*d).max(seen.writes);
            match dirty.get_mut(&org) {
                Some(now) if now.writes == seen.writes => {
                    dirty.remove(&org);
                    cleared.push(org);
                }
                // Written while shipping: what is left is no older than this pass.
                Some(now) => now.since = now.since.max(started),
                None => {}
            }
        }
        drop(durable);
        self.durable_changed.notify_all();
        cleared
    }

    /// Uploads one pack holding every small segment of the pass; where each one landed, in the
    /// order of `packed`.
    async fn store_pack(
        &self,
        packed: &[(OrgId, Dirty, Packed)],
    ) -> Result<Vec<PackRef>, HemvistError> {
        let segments: Vec<(ObjectName, Vec<u8>)> = packed
            .iter()
            .map(|(_, _, p)| (p.name.clone(), p.bytes.clone()))
            .collect();
        let (bytes, index_len, places) = format::encode_pack(&segments);
        let key = format::pack_key(
            self.node_id.as_str(),
            now_ms(),
            self.pack_seq.fetch_add(1, Ordering::Relaxed),
            index_len,
        );
        self.put_key(&key, bytes).await?;
        {
            let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
            db.execute(
                "INSERT OR IGNORE INTO packs (key, time_ms, live) VALUES (?1, ?2, ?3)",
                rusqlite::params![key, now_ms(), segments.len() as i64],
            )
            .map_err(internal)?;
        }
        self.metrics
            .segments
            .fetch_add(segments.len() as u64, Ordering::Relaxed);
        Ok(segments
            .iter()
            .zip(places)
            .map(|((name, _), (offset, len))| PackRef {
                pack: key.clone(),
                offset,
                len,
                segment: name.key(),
            })
            .collect())
    }

    fn index_due_now(&self) -> bool {
        let due = self.index_due.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        due.values()
            .any(|since| now - since >= self.config.index_every_ms as i64)
    }

    /// Lists tenants' packed segments in index objects under their own prefixes: those waiting
    /// longer than `index_every_ms`, or all of them (`all`, at shutdown).
    async fn write_indexes(&self, all: bool) {
        let now = now_ms();
        let every = self.config.index_every_ms as i64;
        let due: Vec<OrgId> = {
            let due = self.index_due.lock().unwrap_or_else(|p| p.into_inner());
            due.iter()
                .filter(|(_, since)| all || now - **since >= every)
                .map(|(o, _)| o.clone())
                .collect()
        };
        futures::stream::iter(due)
            .for_each_concurrent(self.config.concurrency, |org| async move {
                if let Err(e) = self.write_index(&org).await {
                    tracing::warn!(%org, error = %e, "writing a backup index failed; will retry");
                }
            })
            .await;
    }

    async fn write_index(&self, org: &OrgId) -> Result<(), HemvistError> {
        let Some(state) = self.shipped(org) else {
            self.index_due
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(org);
            return Ok(());
        };
        let names: Vec<ObjectName> = state
            .pending
            .iter()
            .filter_map(|r| ObjectName::parse(&r.segment))
            .collect();
        let (Some(first), Some(last)) = (names.first(), names.last()) else {
            self.index_due
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(org);
            return Ok(());
        };
        let name = ObjectName {
            org: org.clone(),
            generation: last.generation,
            kind: Kind::Index,
            start: first.start,
            end: last.end,
            time_ms: last.time_ms,
        };
        let listed = state.pending.len();
        self.put(&name, format::encode_index(&state.pending))
            .await?;
        // Writes that landed meanwhile stay pending for the next index.
        let mut now = self.shipped(org).unwrap_or(state);
        now.pending.drain(..listed.min(now.pending.len()));
        self.persist(org, Some(&now))?;
        let mut due = self.index_due.lock().unwrap_or_else(|p| p.into_inner());
        if now.pending.is_empty() {
            due.remove(org);
        } else {
            due.insert(org.clone(), now.shipped_ms);
        }
        Ok(())
    }

    /// Runs passes every interval until cancelled, then one last pass.
    /// Runs until cancelled, then one last pass. A pass starts when the oldest unshipped write
    /// is one interval old less the time an upload takes (a fifth of the interval), so a write
    /// is in the store within the interval; at once when a `sync` write waits; never while
    /// nothing is dirty. After a pass that shipped nothing (the store is failing), the next
    /// waits a whole interval.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        self.scan();
        let interval = self.config.interval_ms as i64;
        let lead = interval - interval / 5;
        loop {
            let now = now_ms();
            let due = self.oldest_dirty().map(|since| since + lead);
            let urgent = self.urgent.swap(false, Ordering::SeqCst);
            if urgent || due.is_some_and(|d| d <= now) {
                let before = self.metrics.puts.load(Ordering::Relaxed);
                self.pass().await;
                let stalled =
                    self.dirty_count() > 0 && self.metrics.puts.load(Ordering::Relaxed) == before;
                if stalled {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(interval as u64)) => {}
                    }
                }
                continue;
            }
            if self.index_due_now() {
                self.write_indexes(false).await;
            }
            let wait = due.map_or(interval, |d| (d - now).clamp(1, interval));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = self.wake.notified() => {}
            }
        }
        if self.dirty_count() > 0 {
            self.pass().await;
        }
        // A clean stop leaves nothing that only a scan of the packs would find.
        self.write_indexes(true).await;
    }

    /// Forgets an org this node no longer hosts.
    pub fn forget(&self, org: &OrgId) -> Result<(), HemvistError> {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(org);
        self.persist(org, None)
    }
}
