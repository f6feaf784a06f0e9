//! A rollback, on the node that hosts the org: its tenant is replaced by its backups restored to
//! exactly a restore point (a migration's: the position just before it ran), and hosted under
//! a new generation at the schema it had there (adopted, never migrated); the replaced file
//! goes to the trash.
//!
//! Keeps true:
//! - nothing local changes until the restored copy is whole, checked (`integrity_check`) and at
//!   the schema version the command names; a position the store cannot reach exactly (up to
//!   it, nothing after) is refused, never answered with an older or a newer point;
//! - the copy is put in place by [`TenantStore::replace`](crate::tenants::TenantStore::replace)
//!   (under the tenant's writer, one rename: a crash leaves the old file or the copy), and
//!   right after the rename, still under the writer, `node.db` records the new generation and
//!   the rollback in one transaction: a crash in between leaves the copy at the old generation,
//!   which the command sent again restores and replaces once more;
//! - the same command sent again after it succeeded is answered the same; a host of that
//!   generation asking for another restore point is refused;
//! - the org's backups go on under the new generation from a fresh snapshot (the old
//!   generation's record is forgotten: its backups stay until the retention window passes
//!   them, and what this node shipped of it is indexed first, so it stays findable).

use std::path::Path;

use hemvist_proto::{DataKey, HemvistError, OrgId};

use super::{HostRequest, Hosting};
use crate::backup::replicator::Replicator;
use crate::backup::{format_time, restore};
use crate::clock::now_ms;
use crate::failpoints;
use crate::migrate::RestorePoint;
use crate::state::Hosted;
use crate::tenants::schema::{self, Schema, TenantSchema};

impl Hosting {
    /// Rolls `req.org` back to `to` and hosts it at `req.generation`, which must be newer than
    /// the generation it is hosted at here (see the module doc). Blocking: runs on the command
    /// thread.
    pub fn roll_back(&self, req: &HostRequest, to: &RestorePoint) -> Result<Hosted, HemvistError> {
        let org = &req.org;
        let _span = tracing::info_span!("roll_back", %org, generation = %req.generation,
            restore_generation = to.generation, restore_lsn = to.lsn)
        .entered();
        self.admit(req)?;
        if to.generation == 0 || to.generation >= req.generation.get() {
            return Err(HemvistError::invalid(format!(
                "org {org}: a rollback under {} must name a restore point of an older \
                 generation, not generation {}; refused, nothing changed",
                req.generation, to.generation
            )));
        }
        let held = self.hosted.hosted(org);
        if held
            .as_ref()
            .is_some_and(|h| h.generation == req.generation)
        {
            return match self.hosted.rolled_back(org) {
                Some((g, point)) if g == req.generation && point == (to.generation, to.lsn) => {
                    self.host(req)
                }
                _ => Err(HemvistError::invalid(format!(
                    "org {org} is hosted here at {} already, not as its rollback to generation \
                     {}, LSN {}: refused, nothing changed",
                    req.generation, to.generation, to.lsn
                ))),
            };
        }
        let Some(b) = &self.backup else {
            return Err(HemvistError::conflict(format!(
                "org {org} cannot be rolled back here: this node has no [backup] to restore it \
                 from; nothing changed"
            )));
        };
        if b.store_is_foreign() {
            return Err(HemvistError::unavailable(format!(
                "org {org}: the backup store belongs to another hemvist system; nothing is \
                 restored from it, nothing changed"
            )));
        }
        let key = req
            .data_key
            .clone()
            .or_else(|| held.as_ref().and_then(|h| h.data_key.clone()));
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| HemvistError::internal("a rollback needs the runtime"))?;
        let staged = self.tenants.path(org).with_extension("rolling-back");
        // What this node shipped of the org and no index lists yet: listed under the org now,
        // so the restore finds it and it stays findable once the generation is forgotten.
        handle.block_on(b.index_org(org))?;
        let prepared = handle
            .block_on(restore_exactly(b, org, to, key.as_ref(), &staged))
            .and_then(|restored| {
                let schema = adopt_staged(org, &staged, &req.schema)?;
                failpoints::check("node.rollback.restored")?;
                Ok((restored, schema))
            });
        let (restored, schema) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        };
        let hosted = Hosted {
            generation: req.generation,
            schema_version: schema.version,
            schema_fingerprint: schema.fingerprint,
            name: req.name.clone(),
            sync: req.sync,
            data_key: key,
        };
        let from = held.as_ref().map_or(0, |h| h.generation.get());
        let label = format!("g{from}-rolled-back-{}", now_ms());
        let replaced = self.tenants.replace(org, &staged, &label, || {
            failpoints::check("node.rollback.replaced")?;
            // Before the new generation is hosted: a pass after it records that generation,
            // which must not be the one forgotten.
            if let Err(e) = b.forget(org) {
                tracing::warn!(error = %e, "could not record the rolled-back generation as departed; retention removes its backups in time");
            }
            self.hosted
                .set_hosted_rolled_back(org, &hosted, (to.generation, to.lsn), now_ms())
        });
        let trashed = match replaced {
            Ok(((), trashed)) => trashed,
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        };
        // A fresh snapshot starts the new generation's backups.
        b.mark_dirty(org);
        tracing::warn!(from_generation = from, lsn = restored.lsn,
            time = %format_time(restored.time_ms), schema_version = hosted.schema_version,
            trashed = ?trashed, "rolled tenant back to its restore point");
        Ok(hosted)
    }
}

/// Restores the org's backups to exactly `to` into `staged` (which is replaced), checked.
async fn restore_exactly(
    b: &Replicator,
    org: &OrgId,
    to: &RestorePoint,
    key: Option<&DataKey>,
    staged: &Path,
) -> Result<restore::Restored, HemvistError> {
    let point = format!(
        "generation {}, LSN {} ({})",
        to.generation,
        to.lsn,
        format_time(to.ms)
    );
    // Nothing named after the point's time is part of it (without one, the LSN alone says).
    let at_ms = if to.ms > 0 { to.ms } else { i64::MAX };
    let catalog = restore::catalog(&b.store, org).await.map_err(|e| {
        HemvistError::unavailable(format!(
            "org {org}: its backups could not be listed: {e:#}; nothing changed"
        ))
    })?;
    let Some(plan) = catalog.plan_to(to.generation, to.lsn, at_ms) else {
        return Err(HemvistError::conflict(format!(
            "org {org}'s backups do not reach exactly its restore point ({point}): {}; \
             refused, nothing changed",
            catalog.why_not_to(to.generation, to.lsn, at_ms)
        )));
    };
    if let Some(dir) = staged.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| HemvistError::unavailable(format!("org {org}: {e}; nothing changed")))?;
    }
    let _ = std::fs::remove_file(staged);
    restore::restore(&b.store, &catalog, &plan, staged, key)
        .await
        .map_err(|e| {
            let why = format!(
                "org {org} could not be restored to its restore point ({point}): {e:#}; \
                 nothing changed"
            );
            match e.downcast_ref::<restore::Damaged>() {
                // The store answered; what it holds will not be better next time.
                Some(_) => HemvistError::conflict(why),
                None => HemvistError::unavailable(why),
            }
        })
}

/// The restored copy's schema, checked as a host checks a tenant's (never migrated): it must be
/// at `schema`'s version. Left in WAL mode, as every tenant file, and synced.
fn adopt_staged(org: &OrgId, staged: &Path, schema: &Schema) -> Result<TenantSchema, HemvistError> {
    let failed = |e: &dyn std::fmt::Display| {
        HemvistError::unavailable(format!(
            "org {org}: the restored copy: {e}; nothing changed"
        ))
    };
    let conn = rusqlite::Connection::open_with_flags(
        staged,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| failed(&e))?;
    let held = schema::adopt(&conn, schema).map_err(|e| {
        HemvistError::new(
            e.kind,
            format!(
                "org {org}: the restored copy: {}; nothing changed",
                e.message
            ),
        )
    })?;
    if held.version != schema.version() {
        return Err(HemvistError::conflict(format!(
            "org {org}: its restore point holds schema version {}, not {} as the rollback \
             says; refused, nothing changed",
            held.version,
            schema.version()
        )));
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| failed(&e))?;
    // The last connection to close checkpoints its (empty) WAL and removes it.
    conn.close().map_err(|(_, e)| failed(&e))?;
    std::fs::File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(|e| failed(&e))?;
    Ok(held)
}
