//! The tenant schema as the control plane holds it: the migration files it was given
//! (`schema_files`, immutable: a known version under another checksum is refused), the version
//! new orgs start at (`system` key `schema_current`), each org's version (`orgs.schema_version`)
//! and the orgs held back from rollouts (`schema_pins`).

use super::sql::{params, OptionalExtension};
use hemvist_proto::migration::MigrationFile;
use hemvist_proto::OrgId;

use super::audit::append_audit;
use super::db::Store;
use super::error::{Result, StoreError};
use crate::clock::now_ms;

/// What adding files did: the versions stored now, and those already held (same checksum).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddedFiles {
    pub added: Vec<u32>,
    pub known: Vec<u32>,
}

/// A file given with a version the control plane holds under another checksum.
#[derive(Debug, PartialEq, Eq)]
pub struct EditedFile {
    pub file: String,
    pub held: String,
    pub given: String,
}

/// An org a rollout leaves alone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pin {
    pub org: OrgId,
    pub reason: String,
    pub pinned_ms: i64,
    pub pinned_by: String,
}

impl Store {
    /// Every file held, in version order.
    pub fn schema_files(&self) -> Result<Vec<MigrationFile>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT version, name, checksum, sql, check_sql FROM schema_files ORDER BY version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(MigrationFile {
                version: r.get(0)?,
                name: r.get(1)?,
                checksum: r.get(2)?,
                sql: r.get(3)?,
                check: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<super::sql::Result<_>>()?)
    }

    /// Stores the files not held yet, audited, in one transaction; refuses them all (nothing
    /// stored) if one has a held version under another checksum, or if they would leave a gap.
    pub fn add_schema_files(
        &self,
        files: &[MigrationFile],
        actor: &str,
    ) -> Result<std::result::Result<AddedFiles, EditedFile>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut out = AddedFiles::default();
        for f in files {
            let held: Option<String> = tx
                .query_row(
                    "SELECT checksum FROM schema_files WHERE version = ?1",
                    [f.version],
                    |r| r.get(0),
                )
                .optional()?;
            match held {
                Some(c) if c == f.checksum => out.known.push(f.version),
                Some(c) => {
                    return Ok(Err(EditedFile {
                        file: f.file_name(),
                        held: c,
                        given: f.checksum.clone(),
                    }))
                }
                None => {
                    let below: i64 = tx.query_row(
                        "SELECT count(*) FROM schema_files WHERE version < ?1",
                        [f.version],
                        |r| r.get(0),
                    )?;
                    if below != f.version as i64 - 1 {
                        return Err(StoreError::corrupt(format!(
                            "schema file {} would leave a gap below it",
                            f.file_name()
                        )));
                    }
                    tx.execute(
                        "INSERT INTO schema_files (version, name, checksum, sql, check_sql,
                           added_ms, added_by) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            f.version,
                            f.name,
                            f.checksum,
                            f.sql,
                            f.check,
                            now_ms(),
                            actor
                        ],
                    )?;
                    append_audit(
                        &tx,
                        actor,
                        "schema.file_added",
                        None,
                        &serde_json::json!({"file": f.file_name(), "checksum": f.checksum}),
                    )?;
                    out.added.push(f.version);
                }
            }
        }
        tx.commit()?;
        Ok(Ok(out))
    }

    /// The version new orgs start at, once set.
    pub fn schema_current(&self) -> Result<Option<u32>> {
        let v: Option<String> = self
            .lock()
            .query_row(
                "SELECT value FROM system WHERE key = 'schema_current'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        v.map(|v| v.parse().map_err(StoreError::corrupt))
            .transpose()
    }

    pub fn set_schema_current(&self, version: u32) -> Result<()> {
        self.lock().execute(
            "INSERT INTO system (key, value) VALUES ('schema_current', ?1)
             ON CONFLICT(key) DO UPDATE SET value = ?1",
            [version.to_string()],
        )?;
        Ok(())
    }

    /// Holds `org` at `version` (after its node migrated it, or when it is created).
    pub fn set_org_schema(&self, org: &OrgId, version: u32) -> Result<()> {
        self.lock().execute(
            "UPDATE orgs SET schema_version = ?2 WHERE id = ?1",
            params![org.as_str(), version],
        )?;
        Ok(())
    }

    pub fn pins(&self) -> Result<Vec<Pin>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT org, reason, pinned_ms, pinned_by FROM schema_pins ORDER BY org")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.map(|r| {
            let (org, reason, pinned_ms, pinned_by) = r?;
            Ok(Pin {
                org: OrgId::try_from(org).map_err(StoreError::corrupt)?,
                reason,
                pinned_ms,
                pinned_by,
            })
        })
        .collect()
    }

    /// Pins (`Some(reason)`) or unpins `org`, audited; whether anything changed.
    pub fn set_pin(&self, org: &OrgId, reason: Option<&str>, actor: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let changed = match reason {
            Some(r) => tx.execute(
                "INSERT INTO schema_pins (org, reason, pinned_ms, pinned_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(org) DO UPDATE SET reason = ?2",
                params![org.as_str(), r, now_ms(), actor],
            )?,
            None => tx.execute("DELETE FROM schema_pins WHERE org = ?1", [org.as_str()])?,
        };
        if changed > 0 {
            append_audit(
                &tx,
                actor,
                if reason.is_some() {
                    "schema.pinned"
                } else {
                    "schema.unpinned"
                },
                Some(org),
                &serde_json::json!({"reason": reason}),
            )?;
        }
        tx.commit()?;
        Ok(changed > 0)
    }
}

/// One org's schema as the store knows it: the version it is held at and what its node last
/// reported (`None`: no report from the node it is placed on yet).
#[derive(Debug, Clone)]
pub struct SchemaCensusRow {
    pub org: OrgId,
    pub region: String,
    pub node: String,
    pub held_at: Option<u32>,
    pub reported: Option<(u32, String)>,
}

impl Store {
    /// Every org with its held and reported schema, in one query.
    pub fn schema_census(&self) -> Result<Vec<SchemaCensusRow>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT o.id, o.home_region, p.node_id, o.schema_version, ob.schema_version,
                    ob.schema_fingerprint
             FROM orgs o JOIN placements p ON p.org = o.id
             LEFT JOIN observed ob ON ob.org = o.id AND ob.node_id = p.node_id
             ORDER BY o.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<u32>>(3)?,
                r.get::<_, Option<u32>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        rows.map(|r| {
            let (org, region, node, held_at, version, fingerprint) = r?;
            Ok(SchemaCensusRow {
                org: OrgId::try_from(org).map_err(StoreError::corrupt)?,
                region,
                node,
                held_at,
                reported: version.map(|v| (v, fingerprint.unwrap_or_default())),
            })
        })
        .collect()
    }
}
