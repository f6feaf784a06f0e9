//! A branch, on the node that hosts it: made once from its parent's backups at a point in time,
//! masked, and from then on an org like any other, backed up under its own key; and destroyed
//! for good (file and backups) when the control plane says.
//!
//! Keeps true:
//! - the unmasked copy is only ever the `.branching` staging file beside the tenant's path
//!   (restored from the parent's sealed backups, never hosted, never shipped, removed as soon
//!   as the masked copy is written, and removed again by any retry or destroy);
//! - the tenant is hosted, served and shipped only once its masked copy is in place: the
//!   replicator ships what is hosted, and nothing is hosted before;
//! - a branch that already has its file, or backups of its own, is hosted from those, never
//!   made again (a retried command, a restarted node).

use std::path::PathBuf;

use hemvist_proto::mask::Mask;
use hemvist_proto::{DataKey, HemvistError, OrgId};

use super::{HostRequest, Hosting};
use crate::backup::{format_time, restore};
use crate::failpoints;
use crate::state::Hosted;
use crate::tenants::mask;

/// Where a branch comes from (see the control plane's `BranchSource`).
pub struct BranchSource {
    pub parent: OrgId,
    pub parent_key: DataKey,
    pub at_ms: i64,
    pub mask: Mask,
    /// `copy` or `none`.
    pub users: String,
}

impl Hosting {
    /// Hosts the branch `req.org`, making it from `src` first if it has neither a file here
    /// nor backups of its own. Blocking: runs on the command thread.
    pub fn host_branch(
        &self,
        req: &HostRequest,
        src: &BranchSource,
    ) -> Result<Hosted, HemvistError> {
        let org = &req.org;
        self.admit(req)?;
        if self.tenants.exists(org) {
            return self.host(req);
        }
        let Some(b) = &self.backup else {
            return Err(HemvistError::conflict(format!(
                "branch {org} cannot be made here: this node has no [backup] to read {}'s \
                 backups from; nothing was made",
                src.parent
            )));
        };
        if b.store_is_foreign() {
            return Err(HemvistError::unavailable(format!(
                "branch {org}: the backup store belongs to another hemvist system; nothing is \
                 read from it"
            )));
        }
        let Some(branch_key) = req.data_key.clone() else {
            return Err(HemvistError::invalid(format!(
                "branch {org} has no data key of its own: refused (its backups could not be \
                 sealed)"
            )));
        };
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| HemvistError::internal("making a branch needs the runtime"))?;
        let own = handle
            .block_on(restore::catalog(&b.store, org))
            .map_err(|e| {
                HemvistError::unavailable(format!("branch {org}: listing its backups: {e:#}"))
            })?;
        if !own.objects.is_empty() {
            // Made before (then the node lost it, or the answer): its own backups hold it.
            return self.host_with(
                &HostRequest {
                    expect_backup: true,
                    ..req.clone()
                },
                &super::RestoreBar::default(),
            );
        }
        let path = self.tenants.path(org);
        let staged = path.with_extension("branching");
        let masked = path.with_extension("masked");
        let cleanup = || {
            cleanup_one(&staged);
            cleanup_one(&masked);
        };
        cleanup();
        let made = (|| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    HemvistError::unavailable(format!("branch {org}: {e}; nothing was made"))
                })?;
            }
            if src.at_ms == i64::MAX && self.hosted.hosted(&src.parent).is_some() {
                // "Now": every write this node acknowledged to the parent goes to the store first (a
                // pass starts at once), so the newest point holds them all.
                let mark = b.mark_dirty(&src.parent);
                b.wait_durable(&src.parent, mark, std::time::Duration::from_secs(60))
                    .map_err(|e| {
                        HemvistError::new(
                            e.kind,
                            format!(
                                "{}'s last writes could not be shipped: {}; nothing was made",
                                src.parent, e.message
                            ),
                        )
                    })?;
            }
            let restored = handle.block_on(restore_at(b, src, &staged))?;
            failpoints::check("node.branch.restored")?;
            let done = mask::make_own(&staged, &masked, &src.mask, &src.users, &branch_key.0)?;
            // The unmasked copy goes before anything else happens.
            cleanup_one(&staged);
            failpoints::check("node.branch.masked")?;
            std::fs::File::open(&masked)
                .and_then(|f| f.sync_all())
                .map_err(|e| HemvistError::unavailable(format!("branch {org}: {e}")))?;
            std::fs::rename(&masked, &path)
                .map_err(|e| HemvistError::unavailable(format!("branch {org}: {e}")))?;
            tracing::info!(branch = %org, parent = %src.parent, at = %shown_time(src.at_ms),
                parent_generation = restored.generation, parent_lsn = restored.lsn,
                point = %format_time(restored.time_ms), masked_columns = done.columns,
                masked_rows = done.rows_changed, users = %src.users, "made branch");
            Ok::<_, HemvistError>(())
        })();
        cleanup();
        made?;
        let hosted = self.host(&HostRequest {
            expect_backup: false,
            ..req.clone()
        });
        if hosted.is_err() {
            // Never left half made: the next try starts from the parent again.
            let _ = self.tenants.destroy(org);
        }
        hosted
    }

    /// Destroys the org here for good: no longer hosted, its files deleted (no trash), and
    /// every backup object of it in this region's store deleted (its packed segments released).
    /// Idempotent; refused for an org hosted here at a newer generation.
    pub fn destroy_tenant(
        &self,
        org: &OrgId,
        generation: hemvist_proto::Generation,
    ) -> Result<(), HemvistError> {
        failpoints::check("node.destroy")?;
        if let Some(h) = self.hosted.hosted(org) {
            if h.generation > generation {
                return Err(HemvistError::new(
                    hemvist_proto::ErrorKind::Fenced,
                    format!(
                        "org {org} is hosted here at {}, newer than {generation}: not destroyed",
                        h.generation
                    ),
                ));
            }
            self.hosted.remove_hosted(org)?;
        }
        let files = self
            .tenants
            .destroy(org)
            .map_err(|e| HemvistError::unavailable(format!("destroying {org}'s files: {e}")))?;
        let mut objects = 0;
        if let Some(b) = &self.backup {
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|_| HemvistError::internal("destroying a tenant needs the runtime"))?;
            objects = handle.block_on(b.purge(org)).map_err(|e| {
                HemvistError::unavailable(format!("destroying {org}'s backups: {e:#}"))
            })?;
        }
        tracing::warn!(%org, %generation, files, objects, "destroyed tenant: files and backups");
        Ok(())
    }
}

/// A branch's point for people: a time, or "now" (the newest point).
fn shown_time(at_ms: i64) -> String {
    if at_ms == i64::MAX {
        "now".into()
    } else {
        format_time(at_ms)
    }
}

fn cleanup_one(p: &std::path::Path) {
    for side in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(PathBuf::from(format!("{}{side}", p.display())));
    }
}

/// The parent's backups restored to the newest point at or before `src.at_ms`, into `staged`.
async fn restore_at(
    b: &crate::backup::replicator::Replicator,
    src: &BranchSource,
    staged: &std::path::Path,
) -> Result<restore::Restored, HemvistError> {
    let parent = &src.parent;
    // What the parent's node shipped and no index lists yet is found by the catalog's scan of
    // the newest packs.
    let catalog = restore::catalog(&b.store, parent).await.map_err(|e| {
        HemvistError::unavailable(format!(
            "{parent}'s backups could not be listed: {e:#}; nothing was made"
        ))
    })?;
    let Some(plan) = catalog.plan(src.at_ms, &[]) else {
        return Err(HemvistError::conflict(format!(
            "{parent}'s backups hold no point at or before {}: nothing was made",
            shown_time(src.at_ms)
        )));
    };
    restore::restore(&b.store, &catalog, &plan, staged, Some(&src.parent_key))
        .await
        .map_err(|e| {
            let why = format!(
                "{parent}'s backups could not be restored to {}: {e:#}; nothing was made",
                shown_time(src.at_ms)
            );
            match e.downcast_ref::<restore::Damaged>() {
                Some(_) => HemvistError::conflict(why),
                None => HemvistError::unavailable(why),
            }
        })
}
