//! Retention: what no restore point inside the window needs is removed.
//!
//! Keeps true: every point in time inside `retention_secs` stays restorable. Only what lies
//! before the newest snapshot at or before the window's start goes (older generations
//! included); a pack goes only once none of its segments is needed. Runs after a snapshot, so
//! only tenants being written pay for it (an idle tenant costs nothing).

use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use hemvist_proto::OrgId;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use super::state::BackupDb;
use super::upload::Uploader;
use crate::backup::format::{self, Kind, ObjectName};
use crate::backup::restore;
use crate::clock::now_ms;

/// Removes what no restore point of `org` inside the last `retention_secs` needs.
pub async fn prune(
    up: Uploader<'_>,
    db: &BackupDb,
    retention_secs: u64,
    org: &OrgId,
) -> anyhow::Result<()> {
    let horizon = now_ms() - retention_secs as i64 * 1000;
    let listed = restore::listed(up.store, org).await?;
    let restorable = restore::Catalog {
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
    remove(up, db, &expired).await
}

/// Removes the backups of a generation this node shipped and then dropped (the org moved away,
/// or was dropped here), once every point they restore is older than the retention window:
/// every object of that generation or older under the org's prefix, and the packed segments
/// they and the departed record (what no index listed at the drop) hold. Each packed segment is
/// released once, whatever fails and is tried again: those an index lists are struck from the
/// record before anything is deleted, and the record's own are struck one by one, each in the
/// same transaction as its release.
pub async fn expire_departed(
    up: Uploader<'_>,
    db: &BackupDb,
    org: &OrgId,
    generation: u64,
) -> anyhow::Result<()> {
    let listed = restore::listed(up.store, org).await?;
    let expired: Vec<&ObjectName> = listed
        .iter()
        .map(|(n, _)| n)
        .filter(|n| n.generation <= generation)
        .collect();
    let indexed = index_refs(up, &expired).await?;
    db.strike_departed(org, generation, &indexed)?;
    delete(up, &expired).await?;
    for r in indexed {
        release_packed(up, db, &r.pack).await?;
    }
    while let Some((pack, left)) = db.release_departed_segment(org, generation)? {
        if left <= 0 {
            delete_pack(up, db, &pack).await?;
        }
    }
    Ok(())
}

/// Deletes `expired` and releases the packed segments their indexes list. Indexes are read,
/// then everything is deleted (in bulk requests), then the segments released: a crash in
/// between leaves a pack behind (storage), never frees one twice (data).
async fn remove(up: Uploader<'_>, db: &BackupDb, expired: &[&ObjectName]) -> anyhow::Result<()> {
    if expired.is_empty() {
        return Ok(());
    }
    let refs = index_refs(up, expired).await?;
    delete(up, expired).await?;
    for r in refs {
        release_packed(up, db, &r.pack).await?;
    }
    Ok(())
}

/// The packed segments the index objects among `expired` list.
pub(super) async fn index_refs(
    up: Uploader<'_>,
    expired: &[&ObjectName],
) -> anyhow::Result<Vec<format::PackRef>> {
    let mut refs = Vec::new();
    for name in expired.iter().filter(|n| n.kind == Kind::Index) {
        let key = ObjectPath::from(name.key());
        let bytes = up.store.get(&key).await?.bytes().await?;
        refs.extend(format::decode_index(name, &bytes)?);
    }
    refs.sort_by(|a, b| a.segment.cmp(&b.segment));
    refs.dedup_by(|a, b| a.segment == b.segment);
    Ok(refs)
}

async fn delete(up: Uploader<'_>, expired: &[&ObjectName]) -> anyhow::Result<()> {
    let keys: Vec<object_store::Result<ObjectPath>> = expired
        .iter()
        .map(|n| Ok(ObjectPath::from(n.key())))
        .collect();
    let deleted: Vec<ObjectPath> = up
        .store
        .delete_stream(futures::stream::iter(keys).boxed())
        .try_collect()
        .await?;
    up.metrics
        .deletes
        .fetch_add(deleted.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// One segment of a pack this node wrote is no longer needed; the pack goes with its last.
async fn release_packed(up: Uploader<'_>, db: &BackupDb, pack: &str) -> anyhow::Result<()> {
    let left = db.release_pack_segment(pack)?;
    if left.is_some_and(|n| n <= 0) {
        delete_pack(up, db, pack).await?;
    }
    Ok(())
}

/// Deletes a pack this node wrote, under the pack lock: a scrub in flight finishes first, and
/// one after finds it gone.
async fn delete_pack(up: Uploader<'_>, db: &BackupDb, pack: &str) -> anyhow::Result<()> {
    let _held = up.pack_lock.lock().await;
    up.store.delete(&ObjectPath::from(pack)).await?;
    up.metrics.deletes.fetch_add(1, Ordering::Relaxed);
    db.forget_pack(pack)?;
    Ok(())
}
