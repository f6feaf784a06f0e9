//! Scrubbing: what a purged org left in packs that other tenants still need is overwritten, so
//! none of its bytes stays in the store, whether or not its data key lives on (a residency
//! purge keeps it; an erasure destroys it).
//!
//! Keeps true:
//! - Every packed segment of the org the store may hold (what its index objects list, and what
//!   its current and departed records hold that no index lists yet) is recorded in `backup.db`
//!   ([`record`]) before any is released, and a pack's rows go only once the pack holds nothing
//!   of the org or is gone: a purge that stops half-way and is asked again still scrubs them.
//! - A scrubbed pack keeps its key and length, and every other tenant's segment its bytes and
//!   place (`format::scrub_pack`). Scrubbing a pack again writes nothing.
//! - A pack this node deleted is never brought back: deleting a pack and scrubbing one hold the
//!   same lock ([`Uploader::pack_lock`]), and the scrub reads the pack under it before writing.
//!   Packs other nodes wrote (found through index objects, after a failover) are scrubbed too,
//!   but that node's own retention does not take this lock: a pack it deletes while a scrub of
//!   it is in flight can come back, as an orphan holding no byte of the purged org.

use std::collections::BTreeMap;

use hemvist_proto::OrgId;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use super::retention;
use super::state::BackupDb;
use super::upload::Uploader;
use crate::backup::format::{self, ObjectName, PackRef};
use crate::backup::restore;

/// What scrubbing one pack came to.
#[derive(Debug, PartialEq, Eq)]
enum Scrubbed {
    /// Written again without the org.
    Rewritten,
    /// It held nothing of the org (any more).
    Clean,
    /// It is no longer in the store.
    Gone,
}

/// Records every packed segment of `org` the store may hold, to scrub once it is released.
pub async fn record(up: Uploader<'_>, db: &BackupDb, org: &OrgId) -> anyhow::Result<()> {
    let listed = restore::listed(up.store, org).await?;
    let names: Vec<&ObjectName> = listed.iter().map(|(n, _)| n).collect();
    let mut refs = retention::index_refs(up, &names).await?;
    refs.extend(db.departed_pending_of(org)?);
    refs.extend(db.get(org).map(|s| s.pending).unwrap_or_default());
    refs.retain(|r| format::parse_pack_key(&r.pack).is_some());
    db.note_scrub(org, &refs)?;
    Ok(())
}

/// Scrubs `org` out of every pack `backup.db` still holds rows of it for; how many packs were
/// written again. A pack that fails keeps its rows (and the first failure is returned) while
/// the others go on.
pub async fn scrub(up: Uploader<'_>, db: &BackupDb, org: &OrgId) -> anyhow::Result<usize> {
    let mut packs: BTreeMap<String, Vec<PackRef>> = BTreeMap::new();
    for r in db.scrub_due(org)? {
        packs.entry(r.pack.clone()).or_default().push(r);
    }
    let (mut rewritten, mut failed) = (0, None);
    for (pack, refs) in packs {
        match scrub_pack(up, org, &pack, &refs).await {
            Ok(done) => {
                rewritten += usize::from(done == Scrubbed::Rewritten);
                db.scrub_done(org, &pack)?;
            }
            Err(e) => {
                tracing::warn!(%org, %pack, error = %format!("{e:#}"), "could not scrub a pack of a purged org");
                failed.get_or_insert(e);
            }
        }
    }
    match failed {
        Some(e) => Err(e.context(format!("scrub {org} out of its packs"))),
        None => Ok(rewritten),
    }
}

/// Scrubs one pack of `org`, under the pack lock. A pack whose index fails its checks has only
/// the places `refs` name zeroed (its index, already unreadable, is left as it is).
async fn scrub_pack(
    up: Uploader<'_>,
    org: &OrgId,
    pack: &str,
    refs: &[PackRef],
) -> anyhow::Result<Scrubbed> {
    let _held = up.pack_lock.lock().await;
    let mut bytes = match up.store.get(&ObjectPath::from(pack)).await {
        Err(object_store::Error::NotFound { .. }) => return Ok(Scrubbed::Gone),
        got => got?.bytes().await?.to_vec(),
    };
    let scrubbed = match format::scrub_pack(pack, &mut bytes, |n| &n.org == org) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(%org, %pack, error = %format!("{e:#}"), "a pack's index is damaged; zeroing the places the org's indexes name");
            zero_places(&mut bytes, pack, refs)
        }
    };
    if scrubbed == 0 {
        return Ok(Scrubbed::Clean);
    }
    up.overwrite_key(pack, bytes).await?;
    Ok(Scrubbed::Rewritten)
}

/// Zeroes the places of `refs` that lie before the pack's index and are not zeros already; how
/// many were.
fn zero_places(bytes: &mut [u8], pack: &str, refs: &[PackRef]) -> usize {
    let index_len = format::parse_pack_key(pack).map_or(0, |k| k.2);
    let end = (bytes.len() as u64).saturating_sub(index_len);
    let mut zeroed = 0;
    for r in refs {
        let Some(to) = r.offset.checked_add(r.len).filter(|to| *to <= end) else {
            continue;
        };
        let place = &mut bytes[r.offset as usize..to as usize];
        if place.iter().any(|b| *b != 0) {
            place.fill(0);
            zeroed += 1;
        }
    }
    zeroed
}
