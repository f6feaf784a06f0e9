//! The replicator: ships every hosted tenant's new WAL frames to the region's object store.
//! This file holds the [`Replicator`] its callers see and the pass loop; each job has its own
//! module and state: [`dirty`] (what waits to be shipped, and who waits for it), [`state`]
//! (`backup.db`), [`ship`] (segments, snapshots, checkpoints), [`packs`] (packs and index
//! objects), [`retention`], [`scrub`] (a purged org out of shared packs), [`upload`],
//! [`metrics`].
//!
//! Keeps true:
//! - Cost grows with activity, not tenants: a tenant is looked at only after a write marks it
//!   dirty (or at start, if its WAL holds frames not yet shipped). An idle tenant costs no
//!   request, no timer and no open file.
//! - One loop per node ships the dirty tenants `concurrency` at a time, so that a write is in
//!   the store within the interval.
//! - Below the node's free-space headroom ([`crate::disk`]), checkpoints come first: every
//!   tenant whose WAL holds shipped frames is checkpointed (after its last frames are in the
//!   store), however short its WAL, so the space the WAL holds is given back before writes
//!   resume. A `backup.db` that cannot be written (a full disk) holds up no checkpoint.

mod dirty;
mod metrics;
mod packs;
mod retention;
mod scrub;
mod ship;
mod state;
#[cfg(test)]
mod tests;
mod upload;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hemvist_proto::{HemvistError, NodeId, OrgId};
use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;

pub use metrics::BackupMetrics;
pub use state::Shipped;

use super::restore;
use super::store::BackupConfig;
use super::wal;
use crate::clock::now_ms;
use crate::disk::Disk;
use crate::state::NodeState;
use crate::tenants::TenantStore;
use dirty::{Dirty, DirtyTenants};
use packs::Packs;
use ship::{Packed, Shipper, Step};
use state::BackupDb;
use upload::Uploader;

pub struct Replicator {
    pub store: Arc<dyn ObjectStore>,
    pub config: BackupConfig,
    pub metrics: BackupMetrics,
    dirty: DirtyTenants,
    db: BackupDb,
    packs: Packs,
    /// What it ships: the node's tenant files, which of them it hosts at which generation (and
    /// with which data key), and the node's id for its packs.
    tenants: Arc<TenantStore>,
    hosted: Arc<NodeState>,
    node_id: NodeId,
    /// The data folder's free space: below the headroom, checkpoints come first.
    disk: Arc<Disk>,
    /// When tenants were last checkpointed for want of space.
    pressure_checked: std::sync::atomic::AtomicI64,
    /// The store names another hemvist system (see `marker`): nothing is shipped into it.
    foreign: std::sync::atomic::AtomicBool,
    /// When dropped generations were last looked at for expiry.
    departed_checked: std::sync::atomic::AtomicI64,
    /// Held while a pack is deleted or scrubbed ([`Uploader::pack_lock`]).
    pack_lock: tokio::sync::Mutex<()>,
}

impl Replicator {
    pub fn open(
        data_dir: &Path,
        config: BackupConfig,
        node_id: NodeId,
        tenants: Arc<TenantStore>,
        hosted: Arc<NodeState>,
        disk: Arc<Disk>,
    ) -> anyhow::Result<Self> {
        let replicator = Self::new(data_dir, config, node_id, tenants, hosted, disk)?;
        crate::tenants::checkpoints_by_backup();
        Ok(replicator)
    }

    /// As [`Replicator::open`], leaving the tenants' own checkpoints to them (a process-wide
    /// switch, which tests of other modules must not see).
    fn new(
        data_dir: &Path,
        config: BackupConfig,
        node_id: NodeId,
        tenants: Arc<TenantStore>,
        hosted: Arc<NodeState>,
        disk: Arc<Disk>,
    ) -> anyhow::Result<Self> {
        let store = config.open()?;
        let db = BackupDb::open(data_dir)?;
        let packs = Packs::new(&db);
        Ok(Self {
            store,
            config,
            metrics: BackupMetrics::default(),
            dirty: DirtyTenants::default(),
            db,
            packs,
            tenants,
            hosted,
            node_id,
            disk,
            pressure_checked: Default::default(),
            foreign: Default::default(),
            departed_checked: Default::default(),
            pack_lock: Default::default(),
        })
    }

    /// Makes the region's store name this system, once its id is known (at each registration
    /// with the control plane). A store that names another system gets nothing more from this
    /// node: shipping stops, loudly, until the configuration is fixed.
    pub async fn claim_store(&self, system_id: &str) {
        match super::marker::claim(&*self.store, system_id, self.node_id.as_str()).await {
            Ok(super::marker::Claim::Ours) => {
                self.foreign.store(false, Ordering::Relaxed);
            }
            Ok(super::marker::Claim::Foreign(other)) => {
                self.foreign.store(true, Ordering::Relaxed);
                tracing::error!(store = %self.config.url, this_system = %system_id, store_system = %other,
                    "the backup store belongs to another hemvist system; shipping nothing into it");
            }
            Err(e) => {
                tracing::warn!(store = %self.config.url, error = %e, "could not check the backup store's system marker; will check at the next registration");
            }
        }
    }

    /// Whether the store was found to belong to another system.
    pub fn store_is_foreign(&self) -> bool {
        self.foreign.load(Ordering::Relaxed)
    }

    fn up(&self) -> Uploader<'_> {
        Uploader {
            store: &self.store,
            metrics: &self.metrics,
            timeout: Duration::from_millis(self.config.put_timeout_ms),
            pack_lock: &self.pack_lock,
        }
    }

    fn shipper(&self) -> Shipper<'_> {
        Shipper {
            config: &self.config,
            up: self.up(),
            db: &self.db,
            tenants: &self.tenants,
            hosted: &self.hosted,
            disk: &self.disk,
        }
    }

    /// Called after every committed write (and after hosting): ship this tenant soon.
    /// Returns the mark of this write: once a pass ships the tenant with a count of writes at
    /// least this, the write is in object storage.
    pub fn mark_dirty(&self, org: &OrgId) -> u64 {
        let marked = self.dirty.mark(org);
        if marked.newly_dirty {
            self.db.note_changed(org);
        }
        marked.mark
    }

    /// Blocks until the write with `mark` is in object storage (a pass starts at once; every
    /// write that comes in meanwhile joins the next one: group commit), or `limit` passes.
    pub fn wait_durable(
        &self,
        org: &OrgId,
        mark: u64,
        limit: Duration,
    ) -> Result<(), HemvistError> {
        self.dirty.wait_durable(org, mark, limit)
    }

    /// Every org's position is reported again (a new session with the control plane).
    pub fn report_all(&self) {
        let orgs: Vec<OrgId> = self.db.read(|shipped| shipped.keys().cloned().collect());
        self.db.changed(|changed| {
            changed.extend(orgs);
            self.dirty
                .read(|dirty| changed.extend(dirty.keys().cloned()));
        });
    }

    /// The positions that changed since the last call: (org, shipped, oldest unshipped write).
    pub fn take_changes(&self) -> Vec<(OrgId, Option<Shipped>, Option<i64>)> {
        let orgs: Vec<OrgId> = self.db.changed(|changed| changed.drain().collect());
        self.dirty.read(|dirty| {
            self.db.read(|shipped| {
                orgs.into_iter()
                    .map(|o| {
                        let s = shipped.get(&o).cloned();
                        let d = dirty.get(&o).map(|d| d.since);
                        (o, s, d)
                    })
                    .collect()
            })
        })
    }

    pub fn shipped(&self, org: &OrgId) -> Option<Shipped> {
        self.db.get(org)
    }

    /// Whether every transaction committed to the tenant is in the store under `generation`:
    /// its record is of that generation and its WAL holds nothing committed past the record.
    /// Asked holding the tenant's write lock, the answer holds until the lock goes.
    pub fn settled(&self, org: &OrgId, generation: u64) -> bool {
        let Some(s) = self.shipped(org).filter(|s| s.generation == generation) else {
            return false;
        };
        let wal = wal::wal_path(&self.tenants.path(org));
        matches!(
            wal::read_since(&wal, Some(&s.wal), 0),
            Ok(wal::WalRead::Nothing)
        )
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.count()
    }

    /// The age of the oldest write not yet in object storage, now (ms; 0 when none waits).
    pub fn lag_ms(&self) -> u64 {
        self.dirty
            .oldest()
            .map_or(0, |since| (now_ms() - since).max(0) as u64)
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

    /// One pass: every dirty tenant shipped, `concurrency` at a time. A tenant stays dirty
    /// (and its lag keeps counting) until what it had is in the store: while its upload is in
    /// flight, after a failure, and when writes came in meanwhile.
    pub async fn pass(&self) {
        if self.store_is_foreign() {
            return;
        }
        let started = now_ms();
        self.db.save_unsaved();
        let batch = self.dirty.batch();
        let oldest = batch.iter().map(|b| b.1.since).min();
        self.metrics
            .record_lag(oldest.map(|t| (started - t).max(0) as u64));
        let shipper = self.shipper();
        let steps: Vec<(OrgId, Dirty, Result<Step, HemvistError>)> = futures::stream::iter(batch)
            .map(|(org, seen)| async move {
                let step = shipper.ship(&org).await;
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
                Ok(Step::More) | Ok(Step::WaitingForKey) => outcomes.push((org, seen, false)),
                Ok(Step::Pack(p)) => packed.push((org, seen, *p)),
                Err(e) => {
                    tracing::warn!(%org, error = %e, "backup of tenant failed; will retry");
                    outcomes.push((org, seen, false));
                }
            }
        }
        if !packed.is_empty() {
            outcomes.extend(self.ship_packed(packed).await);
        }
        let cleared = self.dirty.clear(outcomes, started);
        for org in cleared {
            self.db.note_changed(&org);
        }
        self.write_indexes(false).await;
    }

    /// Stores the pass's pack, then records each packed tenant's new position; whether each
    /// one is now fully shipped.
    async fn ship_packed(&self, packed: Vec<(OrgId, Dirty, Packed)>) -> Vec<(OrgId, Dirty, bool)> {
        let segments = packed
            .iter()
            .map(|(_, _, p)| (p.name.clone(), p.bytes.clone()))
            .collect();
        let stored = self
            .packs
            .store(self.up(), &self.db, &self.node_id, segments)
            .await;
        let mut outcomes = Vec::with_capacity(packed.len());
        // `store` returns one reference per packed tenant, in the same order.
        for (i, (org, seen, p)) in packed.into_iter().enumerate() {
            let done = match &stored {
                Ok(refs) => {
                    let mut next = p.next;
                    if let Some(r) = refs.get(i).filter(|r| r.segment == p.name.key()) {
                        next.pending.push(r.clone());
                    }
                    let ok = match self.db.persist(&org, Some(&next)) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(%org, error = %e, "recording a shipped position failed");
                            false
                        }
                    };
                    self.packs.note_due(&org, next.shipped_ms);
                    if ok && !p.more {
                        if let Err(e) = self.shipper().maybe_checkpoint(&org, &next).await {
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
        outcomes
    }

    async fn write_indexes(&self, all: bool) {
        self.packs
            .write_indexes(
                self.up(),
                &self.db,
                self.config.index_every_ms as i64,
                self.config.concurrency,
                all,
            )
            .await;
    }

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
            let due = self.dirty.oldest().map(|since| since + lead);
            let urgent = self.dirty.take_urgent();
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
            if self.packs.due_now(self.config.index_every_ms as i64) {
                self.write_indexes(false).await;
            }
            self.checkpoint_for_space().await;
            self.expire_departed().await;
            let wait = due.map_or(interval, |d| (d - now).clamp(1, interval));
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = self.dirty.woken() => {}
            }
        }
        if self.dirty_count() > 0 {
            self.pass().await;
        }
        // A clean stop leaves nothing that only a scan of the packs would find.
        self.write_indexes(true).await;
    }

    /// Below the headroom, checkpoints every shipped tenant whose WAL holds frames, at most once
    /// an interval: the WAL's space goes back to the file system before anything else takes it.
    /// Touches only tenants whose record says their WAL is not empty, so idle, checkpointed
    /// tenants cost nothing.
    async fn checkpoint_for_space(&self) {
        let now = now_ms();
        let every = self.config.interval_ms as i64;
        if now - self.pressure_checked.load(Ordering::Relaxed) < every || !self.disk.is_low() {
            return;
        }
        self.pressure_checked.store(now, Ordering::Relaxed);
        self.db.save_unsaved();
        // Dirty tenants are checkpointed by the pass that ships them; the others have shipped
        // their whole WAL, so checkpointing them needs no upload under their writer lock.
        let long: Vec<(OrgId, Shipped)> = self.dirty.read(|dirty| {
            self.db.read(|shipped| {
                shipped
                    .iter()
                    .filter(|(o, s)| s.wal.frames > 0 && !dirty.contains_key(*o))
                    .map(|(o, s)| (o.clone(), s.clone()))
                    .collect()
            })
        });
        let shipper = self.shipper();
        for (org, state) in long {
            let Some(hosted) = self.hosted.hosted(&org) else {
                continue;
            };
            let fenced = self
                .hosted
                .placement(&org)
                .is_some_and(|p| p.generation > hosted.generation);
            if fenced || hosted.generation.get() != state.generation {
                continue;
            }
            if let Err(e) = shipper.maybe_checkpoint(&org, &state).await {
                tracing::warn!(%org, error = %e, "checkpoint for want of space failed; will retry");
            }
        }
    }

    /// Lists the org's packed segments that no index object lists yet in one now, so that what
    /// this node shipped of it stays findable after it forgets the org (a restore of its old
    /// region must not depend on a scan of recent packs).
    pub async fn index_org(&self, org: &OrgId) -> Result<(), HemvistError> {
        self.packs.write_index(self.up(), &self.db, org).await
    }

    /// Forgets an org this node no longer hosts; what it shipped of it is removed from the
    /// store once the retention window has passed it ([`Replicator::expire_departed`]).
    pub fn forget(&self, org: &OrgId) -> Result<(), HemvistError> {
        self.dirty.remove(org);
        if let Some(state) = self.db.get(org) {
            self.db.note_departed(org, &state, now_ms())?;
        }
        self.db.persist(org, None)
    }

    /// Deletes every backup object of `org` in the store now, whatever the retention window
    /// (a destroyed branch, an erased org, a region its residency no longer allows): its own
    /// objects of every generation, and its packed segments released (a pack goes with its
    /// last needed segment) and scrubbed out of the packs other tenants still need, whether or
    /// not its key lives on ([`scrub`]). Asked again after stopping half-way, it finishes. The
    /// org must no longer be hosted here. How many of its objects were deleted.
    pub async fn purge(&self, org: &OrgId) -> anyhow::Result<usize> {
        // Before anything is released: afterwards, nothing in the store says where they were.
        scrub::record(self.up(), &self.db, org).await?;
        let before = self.release_all(org).await?;
        let scrubbed = scrub::scrub(self.up(), &self.db, org).await?;
        let left = restore::listed(&self.store, org).await?.len();
        if left > 0 {
            anyhow::bail!("{left} backup objects of {org} are still listed after deleting them");
        }
        tracing::info!(%org, objects = before, packs_scrubbed = scrubbed, "purged the org's backups");
        Ok(before)
    }

    /// Deletes the org's own objects and releases its packed segments; how many objects it
    /// found to delete.
    async fn release_all(&self, org: &OrgId) -> anyhow::Result<usize> {
        self.index_org(org).await?;
        self.forget(org)?;
        let before = restore::listed(&self.store, org).await?.len();
        for generation in self.db.departed_of(org) {
            retention::expire_departed(self.up(), &self.db, org, generation).await?;
            self.db.forget_departed(org, generation)?;
        }
        // What other nodes shipped of it (before a failover, say) goes too.
        retention::expire_departed(self.up(), &self.db, org, u64::MAX).await?;
        Ok(before)
    }

    /// Removes the backups of generations dropped here longer ago than the retention window
    /// (every point they restore is older than it). Checked at most once a minute (or half the
    /// window, if shorter), from `backup.db` alone: no request unless something is due.
    async fn expire_departed(&self) {
        let now = now_ms();
        let every = (self.config.retention_secs as i64 * 500).clamp(1_000, 60_000);
        if now - self.departed_checked.load(Ordering::Relaxed) < every {
            return;
        }
        self.departed_checked.store(now, Ordering::Relaxed);
        let horizon = now - self.config.retention_secs as i64 * 1000;
        for (org, generation) in self.db.departed_before(horizon) {
            match retention::expire_departed(self.up(), &self.db, &org, generation).await {
                Ok(()) => {
                    tracing::info!(%org, generation, "removed the expired backups of a generation this node dropped");
                    if let Err(e) = self.db.forget_departed(&org, generation) {
                        tracing::warn!(%org, error = %e, "could not forget a departed generation");
                    }
                }
                Err(e) => {
                    tracing::warn!(%org, generation, error = %e, "could not remove expired backups; will try again")
                }
            }
        }
    }
}
