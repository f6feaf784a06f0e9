//! Shipping one tenant: its new WAL frames as a segment (small ones go into the pass's pack),
//! a snapshot when one is due, and a checkpoint once the WAL is long.
//!
//! Keeps true: nothing is checkpointed before it is shipped. Tenants' writers never checkpoint
//! on their own (`tenants::checkpoints_by_backup`); a checkpoint here runs under the tenant's
//! writer lock, after the last frames are in the store. A node that no longer holds the org's
//! generation ships nothing more for it. Two histories of a generation never share an LSN.
//! Below the node's free-space headroom a shipped WAL is checkpointed whatever its length, so
//! its space goes back to the file system first.

use std::sync::atomic::Ordering;

use hemvist_proto::{HemvistError, OrgId};

use super::retention;
use super::state::{BackupDb, Shipped};
use super::upload::Uploader;
use crate::backup::format::{self, Kind, ObjectName};
use crate::backup::internal;
use crate::backup::restore;
use crate::backup::store::BackupConfig;
use crate::backup::wal::{self, WalPos, WalRead};
use crate::clock::now_ms;
use crate::disk::Disk;
use crate::state::NodeState;
use crate::tenants::TenantStore;

/// A WAL this long (in frames) is checkpointed once shipped.
const CHECKPOINT_FRAMES: u64 = 1_000;
/// At most this much page data goes into one segment.
const SEGMENT_BYTES: usize = 32 * 1024 * 1024;
/// Segments up to this size go into the pass's pack; larger ones are their own objects.
const PACKED_SEGMENT_BYTES: usize = 1024 * 1024;

/// What shipping one tenant came to.
pub enum Step {
    /// Everything is shipped.
    Done,
    /// Shipped a part; more remains.
    More,
    /// A segment for the pass's pack, and the state once the pack is stored.
    Pack(Box<Packed>),
    /// The org's data key has not arrived yet (it is kept in memory only, and comes from the
    /// control plane after a restart): nothing is shipped unsealed, the tenant stays dirty.
    WaitingForKey,
}

pub struct Packed {
    pub name: ObjectName,
    pub bytes: Vec<u8>,
    pub next: Shipped,
    /// More of the WAL remains after this segment.
    pub more: bool,
}

/// What shipping reads and writes: the tenants' files, which of them the node hosts (at which
/// generation, with which data key), the store, and `backup.db`.
#[derive(Clone, Copy)]
pub struct Shipper<'a> {
    pub config: &'a BackupConfig,
    pub up: Uploader<'a>,
    pub db: &'a BackupDb,
    pub tenants: &'a TenantStore,
    pub hosted: &'a NodeState,
    pub disk: &'a Disk,
}

/// The org's data key as of now. Read again after every wait, since a `drop` or a destroyed key
/// may have taken it meanwhile: no object is ever encoded without one.
fn key_of(hosted: &NodeState, org: &OrgId) -> Result<hemvist_proto::DataKey, HemvistError> {
    hosted.hosted(org).and_then(|h| h.data_key).ok_or_else(|| {
        HemvistError::unavailable(format!(
            "backup of {org}: its data key is gone (dropped, or destroyed); nothing is shipped unsealed"
        ))
    })
}

impl Shipper<'_> {
    /// Ships what one tenant has not shipped yet, or prepares its segment for the pack.
    pub async fn ship(&self, org: &OrgId) -> Result<Step, HemvistError> {
        let Some(hosted) = self.hosted.hosted(org) else {
            self.db.persist(org, None)?;
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
        if hosted.data_key.is_none() {
            return Ok(Step::WaitingForKey);
        }
        let generation = hosted.generation.get();
        let current = self.db.get(org).filter(|s| s.generation == generation);
        // A fenced org (a move's source handing it over) takes no new snapshot: its target is
        // finishing from the segments after what it has, inside the write pause.
        let fenced = self.hosted.fenced(org) == Some(hosted.generation);
        let needs_snapshot = match &current {
            None => true,
            Some(s) if fenced => s.snapshot_lsn.is_none(),
            Some(s) => {
                s.snapshot_lsn.is_none()
                    || s.since_snapshot >= self.config.snapshot_after_bytes
                    || (s.snapshot_ms > 0
                        && now_ms() - s.snapshot_ms > self.config.retention_secs as i64 * 500)
            }
        };
        if needs_snapshot {
            self.snapshot(org, generation, current.as_ref(), false)
                .await?;
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
                self.snapshot(org, generation, Some(&state), true).await?;
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
                self.up.put(&name, bytes).await?;
                self.up.metrics.segments.fetch_add(1, Ordering::Relaxed);
                self.db.persist(org, Some(&shipped))?;
                if !more {
                    self.maybe_checkpoint(org, &shipped).await?;
                }
                Ok(if more { Step::More } else { Step::Done })
            }
        }
    }

    /// Once the WAL is long (or holds anything while the disk is below its headroom), ship its
    /// last frames and checkpoint it, under the writer lock.
    pub async fn maybe_checkpoint(&self, org: &OrgId, state: &Shipped) -> Result<(), HemvistError> {
        let due =
            state.wal.frames >= CHECKPOINT_FRAMES || (state.wal.frames > 0 && self.disk.is_low());
        if !due {
            return Ok(());
        }
        let (n, o, me) = (self.tenants, org.clone(), state.clone());
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
                    let key = Some(key_of(self.hosted, &o)?);
                    let bytes = format::encode_segment(
                        &name,
                        changes.page_size,
                        changes.db_pages,
                        &changes.pages,
                        key.as_ref(),
                    );
                    rt.block_on(self.up.put(&name, bytes))?;
                    self.up.metrics.segments.fetch_add(1, Ordering::Relaxed);
                    state.lsn = name.end;
                    state.wal = next;
                    state.since_snapshot += changes.pages.len() as u64 * changes.page_size as u64;
                    state.shipped_ms = name.time_ms;
                    self.db.persist(&o, Some(&state))?;
                }
                let (busy, _, _): (i64, i64, i64) = conn
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(internal)?;
                if busy == 0 {
                    state.wal = WalPos::default();
                    self.db.persist(&o, Some(&state))?;
                    self.up.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
    }

    /// Checkpoints the tenant (so its file is the whole database) and uploads the file as the
    /// generation's next snapshot. Writes go on meanwhile: they only append to the WAL, and
    /// nothing but this task checkpoints. After a WAL found `restarted`, the record may be
    /// older than the store (a crash before a row could be written), so the snapshot goes
    /// above every LSN the store holds.
    async fn snapshot(
        &self,
        org: &OrgId,
        generation: u64,
        state: Option<&Shipped>,
        restarted: bool,
    ) -> Result<(), HemvistError> {
        let (n, o) = (self.tenants, org.clone());
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
        self.up.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        let path = self.tenants.path(org);
        let lsn = match state {
            Some(s) if !restarted => s.lsn + 1,
            // Nothing recorded for this generation here (a first ship, a restored tenant, or a
            // lost backup.db): continue above whatever the store already holds for it, so two
            // histories never share an LSN.
            // One LIST of the tenant's prefix; packed segments not yet listed in an index
            // object may hold LSNs past it, so a generation that has objects jumps far ahead.
            _ => {
                let listed = restore::listed(self.up.store, org)
                    .await
                    .map_err(|e| HemvistError::unavailable(format!("backup: {e:#}")))?;
                let above = listed
                    .iter()
                    .filter(|(n, _)| n.generation == generation)
                    .map(|(n, _)| n.end + (1 << 32))
                    .max()
                    .unwrap_or(0);
                above.max(state.map_or(0, |s| s.lsn + 1))
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
        let key = Some(key_of(self.hosted, org)?);
        let (parts, page_size) = tokio::task::spawn_blocking({
            let name = name.clone();
            move || -> Result<(Vec<Vec<u8>>, u32), HemvistError> {
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
                    format::encode_snapshot_parts(&name, page_size, &db, key.as_ref()),
                    page_size,
                ))
            }
        })
        .await
        .map_err(internal)??;
        if self.hosted.hosted(org).map(|h| h.generation.get()) != Some(generation) {
            // Hosted anew while the file was read (a rollback put another file in its place):
            // what was read may be that file, which is no snapshot of this generation.
            return Err(HemvistError::unavailable(format!(
                "backup of {org}: hosted anew while its snapshot was read; not shipped"
            )));
        }
        // A node that dies before its generation's first snapshot is stored, or right after
        // (before anyone heard of it): what a move's recovery must tell apart.
        crate::failpoints::check("node.backup.snapshot")?;
        let started = std::time::Instant::now();
        let bytes: usize = parts.iter().map(Vec::len).sum();
        self.up.put_parts(&name, parts).await?;
        tracing::debug!(%org, generation, lsn, bytes, upload_ms = started.elapsed().as_millis() as u64, "snapshot stored");
        crate::failpoints::check("node.backup.snapshot.stored")?;
        self.up.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
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
        self.db.persist(org, Some(&shipped))?;
        if let Err(e) = retention::prune(self.up, self.db, self.config.retention_secs, org).await {
            tracing::warn!(%org, error = %e, "removing expired backups failed; will retry at the next snapshot");
        }
        Ok(())
    }
}
