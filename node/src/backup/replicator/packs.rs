//! Packs and index objects: the small segments of a pass go into one object per node, and each
//! tenant's packed segments are then listed in an index object under its own prefix.
//!
//! Keeps true: a packed segment is listed in an index object within `index_every_ms` of being
//! shipped (and at a clean stop), so a restore needs to scan only the newest packs; a tenant's
//! `pending` references leave its record only once an index holding them is stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures::StreamExt;
use hemvist_proto::{HemvistError, NodeId, OrgId};

use super::state::BackupDb;
use super::upload::Uploader;
use crate::backup::format::{self, Kind, ObjectName, PackRef};
use crate::clock::now_ms;

pub struct Packs {
    /// Tenants with packed segments to list in an index object, and since when.
    index_due: Mutex<HashMap<OrgId, i64>>,
    /// Tells apart this node's packs of the same millisecond.
    seq: AtomicU64,
}

impl Packs {
    /// Every tenant whose record still holds packed segments no index lists is due.
    pub fn new(db: &BackupDb) -> Packs {
        let index_due = db.read(|shipped| {
            shipped
                .iter()
                .filter(|(_, s)| !s.pending.is_empty())
                .map(|(o, s)| (o.clone(), s.shipped_ms))
                .collect()
        });
        Packs {
            index_due: Mutex::new(index_due),
            seq: AtomicU64::new(0),
        }
    }

    /// Uploads one pack holding every small segment of the pass; where each one landed, in the
    /// order of `segments`.
    pub async fn store(
        &self,
        up: Uploader<'_>,
        db: &BackupDb,
        node_id: &NodeId,
        segments: Vec<(ObjectName, Vec<u8>)>,
    ) -> Result<Vec<PackRef>, HemvistError> {
        let (bytes, index_len, places) = format::encode_pack(&segments);
        let key = format::pack_key(
            node_id.as_str(),
            now_ms(),
            self.seq.fetch_add(1, Ordering::Relaxed),
            index_len,
        );
        up.put_key(&key, bytes).await?;
        db.add_pack(&key, now_ms(), segments.len())?;
        up.metrics
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

    /// `org` has packed segments to list, since `since` unless it had some already.
    pub fn note_due(&self, org: &OrgId, since: i64) {
        self.index_due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(org.clone())
            .or_insert(since);
    }

    /// Whether some tenant has waited `every_ms` for its index.
    pub fn due_now(&self, every_ms: i64) -> bool {
        let due = self.index_due.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        due.values().any(|since| now - since >= every_ms)
    }

    /// Lists tenants' packed segments in index objects under their own prefixes: those waiting
    /// longer than `every_ms`, or all of them (`all`, at shutdown), `concurrency` at a time.
    pub async fn write_indexes(
        &self,
        up: Uploader<'_>,
        db: &BackupDb,
        every_ms: i64,
        concurrency: usize,
        all: bool,
    ) {
        let now = now_ms();
        let due: Vec<OrgId> = {
            let due = self.index_due.lock().unwrap_or_else(|p| p.into_inner());
            due.iter()
                .filter(|(_, since)| all || now - **since >= every_ms)
                .map(|(o, _)| o.clone())
                .collect()
        };
        futures::stream::iter(due)
            .for_each_concurrent(concurrency, |org| async move {
                if let Err(e) = self.write_index(up, db, &org).await {
                    tracing::warn!(%org, error = %e, "writing a backup index failed; will retry");
                }
            })
            .await;
    }

    pub(super) async fn write_index(
        &self,
        up: Uploader<'_>,
        db: &BackupDb,
        org: &OrgId,
    ) -> Result<(), HemvistError> {
        let Some(state) = db.get(org) else {
            self.not_due(org);
            return Ok(());
        };
        let names: Vec<ObjectName> = state
            .pending
            .iter()
            .filter_map(|r| ObjectName::parse(&r.segment))
            .collect();
        let (Some(first), Some(last)) = (names.first(), names.last()) else {
            self.not_due(org);
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
        up.put(&name, format::encode_index(&state.pending)).await?;
        // Writes that landed meanwhile stay pending for the next index.
        let mut now = db.get(org).unwrap_or(state);
        now.pending.drain(..listed.min(now.pending.len()));
        db.persist(org, Some(&now))?;
        let mut due = self.index_due.lock().unwrap_or_else(|p| p.into_inner());
        if now.pending.is_empty() {
            due.remove(org);
        } else {
            due.insert(org.clone(), now.shipped_ms);
        }
        Ok(())
    }

    fn not_due(&self, org: &OrgId) {
        self.index_due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(org);
    }
}
