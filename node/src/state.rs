//! The node's own small database (`node.db`) and its in-memory mirror.
//!
//! What is persisted, and why:
//! - `hosted`: which orgs this node holds, at which generation and schema (version, and the
//!   fingerprint of the files its tenant ran). The generation is the node's proof of authority
//!   to write; after a restart the node reports exactly this to the control plane, without
//!   opening a tenant (which is why the fingerprint is kept here, not computed at start). A row
//!   from before fingerprints were kept has none: it is reported empty until the next host or
//!   migration of the org reads it from the tenant.
//! - `migrated`: per hosted org, the answer to the last migration that changed its tenant and
//!   the id of the command that asked for it, so the same command sent again (its ack was lost)
//!   is answered the same, restore point included, instead of "nothing to do".
//! - `rolled_back`: per hosted org, the generation it was last rolled back under and the
//!   restore point it was restored to, written in one transaction with the `hosted` row of that
//!   generation: the same rollback sent again is answered the same, and another host of that
//!   generation asking for a rollback is told it was not one.
//! - `placements`: the node's cached copy of where every org lives, so it can route users
//!   (serve, redirect, 404) without asking the control plane, even while the control plane is
//!   unreachable or right after a restart.
//!
//! - `lease`: when the node's last lease from the control plane ends, and its length. A node
//!   that restarts within a lease length of that end trusts its placement cache at once; one that
//!   was out of touch longer may have had its orgs failed over to another node (the control plane
//!   waits at least `lease_ttl_ms` plus twice that), so it serves none of its own orgs from the
//!   cache (503, retry) until the control plane has sent it every placement again.
//! - `fences`: orgs this node must not acknowledge writes for while a move hands them to another
//!   node (the source reported its final position; a write after it would be lost). A fence
//!   survives a restart and ends when the move is rolled back or the org is dropped.
//!
//! What is not persisted: the orgs' data keys. They live in memory only, arrive with `host`
//! commands and again after every (re)connection (`DataKeys`, over the authenticated, TLS-able
//! stream), and go with the process. Wrapping them with a node key instead would put that key on
//! the same machine as the data it protects; kept in memory, a copied disk or an old node holds
//! no key, and the control plane's copy is the only one that survives, so destroying it makes the
//! org's backups unreadable everywhere. The price: after a restart, a node ships nothing for an
//! org until its key has come back (writes are still taken; they wait in the WAL).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, RwLock};

use anyhow::Context;
use hemvist_proto::{Generation, HemvistError, NodeId, OrgId, RegionId};
use rusqlite::{params, Connection};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosted {
    pub generation: Generation,
    pub schema_version: u32,
    /// The fingerprint of the migration files the tenant ran (empty: not known yet).
    pub schema_fingerprint: String,
    pub name: String,
    /// Durability `sync`: a write is acknowledged once it is in object storage.
    pub sync: bool,
    /// The org's data key: its backups are sealed with it. In memory only (see the module doc).
    pub data_key: Option<hemvist_proto::DataKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub region: RegionId,
    pub node_id: NodeId,
    pub node_url: String,
    pub generation: Generation,
}

pub struct NodeState {
    db: Mutex<Connection>,
    hosted: RwLock<HashMap<OrgId, Hosted>>,
    /// Fenced orgs, and the generation the fence holds for.
    fences: RwLock<HashMap<OrgId, (Generation, String)>>,
    placements: RwLock<HashMap<OrgId, Placement>>,
    /// The placement cache may be trusted for this node's own orgs (see `lease` above).
    cache_trusted: AtomicBool,
    /// The lease end last written to `node.db` (it is written at most once a second).
    lease_written_ms: AtomicI64,
    /// Orgs whose move here has finished its copy and waits for the switch (`host`): their
    /// placement may still name the source, which already sends users here (in memory: the
    /// window is the moment between a move's finish and its host).
    arriving: RwLock<std::collections::HashSet<OrgId>>,
}

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("node state: {e}"))
}

impl NodeState {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS hosted (
               org TEXT PRIMARY KEY, generation INTEGER NOT NULL,
               schema_version INTEGER NOT NULL, name TEXT NOT NULL, hosted_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS placements (
               org TEXT PRIMARY KEY, region TEXT NOT NULL, node_id TEXT NOT NULL,
               node_url TEXT NOT NULL, generation INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS fences (
               org TEXT PRIMARY KEY, generation INTEGER NOT NULL, operation TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS lease (
               id INTEGER PRIMARY KEY CHECK (id = 1), until_ms INTEGER NOT NULL,
               ttl_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS migrated (
               org TEXT PRIMARY KEY, command TEXT NOT NULL, answer TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS rolled_back (
               org TEXT PRIMARY KEY, generation INTEGER NOT NULL,
               restore_generation INTEGER NOT NULL, restore_lsn INTEGER NOT NULL);",
        )?;
        let has_sync: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('hosted') WHERE name = 'sync'")?
            .exists([])?;
        if !has_sync {
            conn.execute_batch(
                "ALTER TABLE hosted ADD COLUMN sync INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE hosted ADD COLUMN data_key TEXT;",
            )?;
        }
        let has_fingerprint: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('hosted') WHERE name = 'schema_fingerprint'")?
            .exists([])?;
        if !has_fingerprint {
            conn.execute_batch("ALTER TABLE hosted ADD COLUMN schema_fingerprint TEXT")?;
        }
        // Nodes before this version kept data keys here: wipe them, and rewrite the file so no
        // freed page still holds one.
        let stale_keys: i64 = conn.query_row(
            "SELECT COUNT(*) FROM hosted WHERE data_key IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        if stale_keys > 0 {
            conn.execute("UPDATE hosted SET data_key = NULL", [])?;
            conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
            tracing::info!(
                keys = stale_keys,
                "removed data keys an older version kept on disk"
            );
        }
        let mut hosted = HashMap::new();
        {
            let mut stmt = conn.prepare(
                "SELECT org, generation, schema_version, name, sync, schema_fingerprint
                 FROM hosted",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, bool>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })?;
            for row in rows {
                let (org, g, schema_version, name, sync, fingerprint) = row?;
                hosted.insert(
                    OrgId::try_from(org)?,
                    Hosted {
                        generation: Generation::new(g as u64)?,
                        schema_version,
                        schema_fingerprint: fingerprint.unwrap_or_default(),
                        name,
                        sync,
                        data_key: None,
                    },
                );
            }
        }
        let mut placements = HashMap::new();
        {
            let mut stmt =
                conn.prepare("SELECT org, region, node_id, node_url, generation FROM placements")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            for row in rows {
                let (org, region, node_id, node_url, g) = row?;
                placements.insert(
                    OrgId::try_from(org)?,
                    Placement {
                        region: RegionId::try_from(region)?,
                        node_id: NodeId::try_from(node_id)?,
                        node_url,
                        generation: Generation::new(g as u64)?,
                    },
                );
            }
        }
        let mut fences = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT org, generation, operation FROM fences")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (org, g, op) = row?;
                fences.insert(OrgId::try_from(org)?, (Generation::new(g as u64)?, op));
            }
        }
        let last_lease: Option<(i64, i64)> = conn
            .query_row("SELECT until_ms, ttl_ms FROM lease WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ok();
        // A node that never had a lease has nothing to have been failed over.
        let cache_trusted =
            last_lease.is_none_or(|(until, ttl)| crate::clock::now_ms() < until + ttl);
        Ok(Self {
            db: Mutex::new(conn),
            hosted: RwLock::new(hosted),
            fences: RwLock::new(fences),
            placements: RwLock::new(placements),
            cache_trusted: AtomicBool::new(cache_trusted),
            lease_written_ms: AtomicI64::new(last_lease.map_or(0, |l| l.0)),
            arriving: RwLock::new(Default::default()),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hosted(&self, org: &OrgId) -> Option<Hosted> {
        self.hosted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
            .cloned()
    }

    pub fn all_hosted(&self) -> Vec<(OrgId, Hosted)> {
        let map = self.hosted.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn hosted_count(&self) -> usize {
        self.hosted.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn set_hosted(&self, org: &OrgId, h: &Hosted, now_ms: i64) -> Result<(), HemvistError> {
        Self::write_hosted(&self.db(), org, h, now_ms).map_err(internal)?;
        self.hosted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(org.clone(), h.clone());
        Ok(())
    }

    fn write_hosted(db: &Connection, org: &OrgId, h: &Hosted, now_ms: i64) -> rusqlite::Result<()> {
        db.execute(
            "INSERT INTO hosted (org, generation, schema_version, name, hosted_ms, sync,
               schema_fingerprint)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(org) DO UPDATE SET generation = ?2, schema_version = ?3, name = ?4,
               sync = ?6, schema_fingerprint = ?7",
            params![
                org.as_str(),
                h.generation.get() as i64,
                h.schema_version,
                h.name,
                now_ms,
                h.sync,
                h.schema_fingerprint,
            ],
        )
        .map(|_| ())
    }

    /// Hosts `org` as [`NodeState::set_hosted`] does, rolled back to the restore point
    /// `(generation, lsn)`, in one transaction: the rollback is recorded with the generation
    /// it was done under, and the answer kept for its last migration goes (the tenant is no
    /// longer what that migration left).
    pub fn set_hosted_rolled_back(
        &self,
        org: &OrgId,
        h: &Hosted,
        restored: (u64, u64),
        now_ms: i64,
    ) -> Result<(), HemvistError> {
        {
            let mut db = self.db();
            let tx = db.transaction().map_err(internal)?;
            Self::write_hosted(&tx, org, h, now_ms).map_err(internal)?;
            tx.execute(
                "INSERT INTO rolled_back (org, generation, restore_generation, restore_lsn)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(org) DO UPDATE SET generation = ?2, restore_generation = ?3,
                   restore_lsn = ?4",
                params![
                    org.as_str(),
                    h.generation.get() as i64,
                    restored.0 as i64,
                    restored.1 as i64
                ],
            )
            .map_err(internal)?;
            tx.execute("DELETE FROM migrated WHERE org = ?1", [org.as_str()])
                .map_err(internal)?;
            tx.commit().map_err(internal)?;
        }
        self.hosted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(org.clone(), h.clone());
        Ok(())
    }

    /// A hosted org's tenant is now at `version`, having run the files of `fingerprint` (a
    /// migration committed); with `answered` (command id, answer), that command's answer is
    /// kept in the same transaction, replacing the org's previous one.
    pub fn set_schema(
        &self,
        org: &OrgId,
        version: u32,
        fingerprint: &str,
        answered: Option<(&str, &str)>,
    ) -> Result<(), HemvistError> {
        {
            let mut db = self.db();
            let tx = db.transaction().map_err(internal)?;
            tx.execute(
                "UPDATE hosted SET schema_version = ?2, schema_fingerprint = ?3 WHERE org = ?1",
                params![org.as_str(), version, fingerprint],
            )
            .map_err(internal)?;
            if let Some((command, answer)) = answered {
                tx.execute(
                    "INSERT INTO migrated (org, command, answer) VALUES (?1, ?2, ?3)
                     ON CONFLICT(org) DO UPDATE SET command = ?2, answer = ?3",
                    params![org.as_str(), command, answer],
                )
                .map_err(internal)?;
            }
            tx.commit().map_err(internal)?;
        }
        let mut map = self.hosted.write().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get_mut(org) {
            h.schema_version = version;
            h.schema_fingerprint = fingerprint.to_string();
        }
        Ok(())
    }

    /// The last rollback of `org` here: (the generation it was done under, and the restore
    /// point's generation and LSN).
    pub fn rolled_back(&self, org: &OrgId) -> Option<(Generation, (u64, u64))> {
        self.db()
            .query_row(
                "SELECT generation, restore_generation, restore_lsn FROM rolled_back
                 WHERE org = ?1",
                [org.as_str()],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .ok()
            .and_then(|(g, rg, rl)| Some((Generation::new(g as u64).ok()?, (rg as u64, rl as u64))))
    }

    /// The answer kept for `command`, if it is the last migration that changed `org` here.
    pub fn migration_answer(&self, org: &OrgId, command: &str) -> Option<String> {
        self.db()
            .query_row(
                "SELECT answer FROM migrated WHERE org = ?1 AND command = ?2",
                params![org.as_str(), command],
                |r| r.get(0),
            )
            .ok()
    }

    /// Keeps the data key of a hosted org, in memory; whether the org is hosted here.
    pub fn set_data_key(&self, org: &OrgId, key: hemvist_proto::DataKey) -> bool {
        let mut map = self.hosted.write().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(org) {
            Some(h) => {
                h.data_key = Some(key);
                true
            }
            None => false,
        }
    }

    /// Forgets a hosted org's data key (it was destroyed at the control plane).
    pub fn forget_data_key(&self, org: &OrgId) {
        let mut map = self.hosted.write().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = map.get_mut(org) {
            h.data_key = None;
        }
    }

    /// Fences `org` at `generation` (persisted before this returns): no write is acknowledged
    /// for it until [`NodeState::unfence`].
    pub fn fence(
        &self,
        org: &OrgId,
        generation: Generation,
        operation: &str,
    ) -> Result<(), HemvistError> {
        self.db()
            .execute(
                "INSERT INTO fences (org, generation, operation) VALUES (?1, ?2, ?3)
                 ON CONFLICT(org) DO UPDATE SET generation = ?2, operation = ?3",
                params![org.as_str(), generation.get() as i64, operation],
            )
            .map_err(internal)?;
        self.fences
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(org.clone(), (generation, operation.to_string()));
        Ok(())
    }

    pub fn unfence(&self, org: &OrgId) -> Result<(), HemvistError> {
        self.db()
            .execute("DELETE FROM fences WHERE org = ?1", [org.as_str()])
            .map_err(internal)?;
        self.fences
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(org);
        Ok(())
    }

    /// The generation `org` is fenced at, if it is.
    pub fn fenced(&self, org: &OrgId) -> Option<Generation> {
        self.fences
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
            .map(|f| f.0)
    }

    /// The operation that fenced `org`, if one did.
    pub fn fenced_by(&self, org: &OrgId) -> Option<String> {
        self.fences
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
            .map(|f| f.1.clone())
    }

    pub fn remove_hosted(&self, org: &OrgId) -> Result<(), HemvistError> {
        {
            let mut db = self.db();
            let tx = db.transaction().map_err(internal)?;
            for sql in [
                "DELETE FROM hosted WHERE org = ?1",
                "DELETE FROM migrated WHERE org = ?1",
                "DELETE FROM rolled_back WHERE org = ?1",
            ] {
                tx.execute(sql, [org.as_str()]).map_err(internal)?;
            }
            tx.commit().map_err(internal)?;
        }
        // Out of memory first: the fence goes only once nothing can pass the gate for the org.
        self.hosted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(org);
        self.unfence(org)
    }

    /// `org`'s copy has arrived here and waits for its switch (or its rollback: `false` again).
    pub fn set_arriving(&self, org: &OrgId, arriving: bool) {
        let mut set = self.arriving.write().unwrap_or_else(|p| p.into_inner());
        if arriving {
            set.insert(org.clone());
        } else {
            set.remove(org);
        }
    }

    pub fn arriving(&self, org: &OrgId) -> bool {
        self.arriving
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(org)
    }

    pub fn placement(&self, org: &OrgId) -> Option<Placement> {
        self.placements
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
            .cloned()
    }

    pub fn placement_count(&self) -> usize {
        self.placements
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether this node may serve its own orgs from the placement cache (see `lease` above).
    pub fn cache_trusted(&self) -> bool {
        self.cache_trusted.load(Ordering::Relaxed)
    }

    /// The node's lease now ends at `until_ms` (wall clock) and lasts `ttl_ms`; kept on disk at
    /// most once a second, so a restart can tell how long it was out of touch.
    pub fn record_lease(&self, until_ms: i64, ttl_ms: i64) {
        let written = self.lease_written_ms.load(Ordering::Relaxed);
        if until_ms - written < 1_000 {
            return;
        }
        let stored = self.db().execute(
            "INSERT INTO lease (id, until_ms, ttl_ms) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET until_ms = ?1, ttl_ms = ?2",
            params![until_ms, ttl_ms],
        );
        match stored {
            Ok(_) => self.lease_written_ms.store(until_ms, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "cannot record the lease in node.db; will retry"),
        }
    }

    /// Applies a placement update from the control plane: `full` replaces the whole cache. An
    /// entry never goes back to an older generation.
    pub fn apply_placements(
        &self,
        full: bool,
        updates: Vec<(OrgId, Placement)>,
        removed: Vec<OrgId>,
    ) -> Result<(), HemvistError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(internal)?;
        if full {
            tx.execute("DELETE FROM placements", []).map_err(internal)?;
        }
        let mut map = self.placements.write().unwrap_or_else(|p| p.into_inner());
        if full {
            map.clear();
        }
        let mut accepted = Vec::with_capacity(updates.len());
        for (org, p) in updates {
            if map
                .get(&org)
                .is_some_and(|old| old.generation > p.generation)
            {
                continue;
            }
            tx.execute(
                "INSERT INTO placements (org, region, node_id, node_url, generation)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(org) DO UPDATE SET region = ?2, node_id = ?3, node_url = ?4,
                   generation = ?5",
                params![
                    org.as_str(),
                    p.region.as_str(),
                    p.node_id.as_str(),
                    p.node_url,
                    p.generation.get() as i64
                ],
            )
            .map_err(internal)?;
            accepted.push((org, p));
        }
        for org in &removed {
            tx.execute("DELETE FROM placements WHERE org = ?1", [org.as_str()])
                .map_err(internal)?;
        }
        if let Err(e) = tx.commit() {
            // The cache may now be ahead of disk for a `full` update; the next update fixes it.
            return Err(internal(e));
        }
        map.extend(accepted);
        for org in removed {
            map.remove(&org);
        }
        if full {
            self.cache_trusted.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_db_from_before_fingerprints_is_upgraded_and_reports_none_until_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE hosted (
                   org TEXT PRIMARY KEY, generation INTEGER NOT NULL,
                   schema_version INTEGER NOT NULL, name TEXT NOT NULL, hosted_ms INTEGER NOT NULL,
                   sync INTEGER NOT NULL DEFAULT 0, data_key TEXT);
                 INSERT INTO hosted VALUES ('acme', 3, 5, 'Acme', 0, 0, NULL);",
            )
            .unwrap();
        let org = OrgId::parse("acme").unwrap();
        let state = NodeState::open(&path).unwrap();
        let h = state.hosted(&org).unwrap();
        assert_eq!((h.schema_version, h.schema_fingerprint.as_str()), (5, ""));
        state
            .set_schema(&org, 6, "0123456789abcdef", Some(("c-1", "{}")))
            .unwrap();
        drop(state);
        let state = NodeState::open(&path).unwrap();
        let h = state.hosted(&org).unwrap();
        assert_eq!(
            (h.schema_version, h.schema_fingerprint.as_str()),
            (6, "0123456789abcdef")
        );
        assert_eq!(state.migration_answer(&org, "c-1").as_deref(), Some("{}"));
        state.remove_hosted(&org).unwrap();
        assert_eq!(state.migration_answer(&org, "c-1"), None);
    }

    #[test]
    fn a_rollback_is_recorded_with_its_generation_and_ends_the_kept_migration_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.db");
        let state = NodeState::open(&path).unwrap();
        let org = OrgId::parse("acme").unwrap();
        let mut h = Hosted {
            generation: Generation::new(3).unwrap(),
            schema_version: 5,
            schema_fingerprint: "f5".into(),
            name: "Acme".into(),
            sync: false,
            data_key: None,
        };
        state.set_hosted(&org, &h, 0).unwrap();
        state
            .set_schema(&org, 6, "f6", Some(("c-1", "{}")))
            .unwrap();
        assert_eq!(state.rolled_back(&org), None);
        h.generation = Generation::new(4).unwrap();
        state.set_hosted_rolled_back(&org, &h, (3, 17), 0).unwrap();
        drop(state);
        let state = NodeState::open(&path).unwrap();
        let held = state.hosted(&org).unwrap();
        assert_eq!((held.generation.get(), held.schema_version), (4, 5));
        assert_eq!(
            state.rolled_back(&org),
            Some((Generation::new(4).unwrap(), (3, 17)))
        );
        assert_eq!(state.migration_answer(&org, "c-1"), None);
        state.remove_hosted(&org).unwrap();
        assert_eq!(state.rolled_back(&org), None);
    }
}
