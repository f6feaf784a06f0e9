//! `backup.db`: what was shipped of each tenant, which packs this node wrote and how many of
//! their segments a restore may still need, and which packed segments of purged orgs are still
//! to be scrubbed out of their packs; and, in memory, whose position changed since the control
//! plane was last told.
//!
//! Keeps true: a tenant's record is written only after the upload it describes succeeded, so a
//! crash at any point ships again (an object that exists already is the same upload) and loses
//! nothing. The in-memory copy is what shipping reads; it is updated even when the row cannot
//! be written (a full disk), because it describes what is in the store, and the row is written
//! again at the next pass ([`BackupDb::save_unsaved`]). A crash before that leaves an older
//! row: the same frames are shipped again (the same LSNs, which a restore tolerates), or, if
//! the WAL was checkpointed meanwhile, the shipper finds it restarted and takes a snapshot above
//! every LSN the store holds.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use hemvist_proto::{HemvistError, OrgId};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::backup::format::PackRef;
use crate::backup::internal;
use crate::backup::wal::WalPos;

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

pub struct BackupDb {
    db: Mutex<Connection>,
    shipped: Mutex<HashMap<OrgId, Shipped>>,
    /// Orgs whose position changed since the control plane was last told.
    changed: Mutex<HashSet<OrgId>>,
    /// Orgs whose row is older than their in-memory record (the row could not be written).
    unsaved: Mutex<HashSet<OrgId>>,
}

impl BackupDb {
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let db = Connection::open(data_dir.join("backup.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL: a state update lost with power is an upload repeated (the same LSNs, which a
        // restore tolerates), never a loss; FULL would fsync once per tenant per pass.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS shipped (org TEXT PRIMARY KEY, state TEXT NOT NULL);
             -- Packs this node wrote, and how many of their segments a restore may still need.
             CREATE TABLE IF NOT EXISTS packs (key TEXT PRIMARY KEY, time_ms INTEGER NOT NULL,
               live INTEGER NOT NULL);
             -- Generations this node shipped and then dropped (the org moved away): their
             -- backups go once the retention window has passed them.
             CREATE TABLE IF NOT EXISTS departed (org TEXT NOT NULL, generation INTEGER NOT NULL,
               dropped_ms INTEGER NOT NULL, pending TEXT NOT NULL,
               PRIMARY KEY (org, generation));
             -- Packed segments of an org being purged, recorded before any is released: they
             -- are scrubbed out of whatever pack still holds them (see `scrub`).
             CREATE TABLE IF NOT EXISTS scrub (org TEXT NOT NULL, pack TEXT NOT NULL,
               at INTEGER NOT NULL, len INTEGER NOT NULL, segment TEXT NOT NULL,
               PRIMARY KEY (org, pack, segment));",
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
        Ok(Self {
            db: Mutex::new(db),
            shipped: Mutex::new(shipped),
            changed: Mutex::new(HashSet::new()),
            unsaved: Mutex::new(HashSet::new()),
        })
    }

    pub fn get(&self, org: &OrgId) -> Option<Shipped> {
        let s = self.shipped.lock().unwrap_or_else(|p| p.into_inner());
        s.get(org).cloned()
    }

    /// `f` over every tenant's record, under its lock.
    pub fn read<R>(&self, f: impl FnOnce(&HashMap<OrgId, Shipped>) -> R) -> R {
        f(&self.shipped.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records what was shipped of `org` (`None`: forget it). A row that cannot be written is
    /// logged and written again later; shipping goes on from the in-memory record.
    pub fn persist(&self, org: &OrgId, state: Option<&Shipped>) -> Result<(), HemvistError> {
        let text = state
            .map(|s| serde_json::to_string(s).map_err(internal))
            .transpose()?;
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut shipped = self.shipped.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(s) => shipped.insert(org.clone(), s.clone()),
            None => shipped.remove(org),
        };
        drop(shipped);
        let written = Self::write_row(&db, org, text.as_deref());
        drop(db);
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
        match written {
            Ok(()) => {
                unsaved.remove(org);
            }
            Err(e) => {
                if unsaved.insert(org.clone()) {
                    tracing::warn!(%org, error = %e,
                        "backup.db: cannot record the shipped position; shipping goes on, the record is written again later");
                }
            }
        }
        drop(unsaved);
        self.note_changed(org);
        Ok(())
    }

    fn write_row(db: &Connection, org: &OrgId, state: Option<&str>) -> rusqlite::Result<()> {
        match state {
            Some(s) => db.execute(
                "INSERT INTO shipped (org, state) VALUES (?1, ?2)
                 ON CONFLICT (org) DO UPDATE SET state = excluded.state",
                rusqlite::params![org.as_str(), s],
            ),
            None => db.execute("DELETE FROM shipped WHERE org = ?1", [org.as_str()]),
        }
        .map(|_| ())
    }

    /// Writes the rows that could not be written before, from the in-memory records.
    pub fn save_unsaved(&self) {
        let orgs: Vec<OrgId> = {
            let unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
            if unsaved.is_empty() {
                return;
            }
            unsaved.iter().cloned().collect()
        };
        for org in orgs {
            let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
            let text = self.get(&org).and_then(|s| serde_json::to_string(&s).ok());
            if Self::write_row(&db, &org, text.as_deref()).is_ok() {
                drop(db);
                let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
                unsaved.remove(&org);
            } else {
                // Still no room; the next pass tries again.
                return;
            }
        }
        tracing::info!("backup.db: every shipped position is recorded again");
    }

    pub fn note_changed(&self, org: &OrgId) {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        changed.insert(org.clone());
    }

    /// `f` with the set of changed orgs, to add to it or take it.
    pub fn changed<R>(&self, f: impl FnOnce(&mut HashSet<OrgId>) -> R) -> R {
        f(&mut self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A pack this node stored, with its `live` segments.
    pub fn add_pack(&self, key: &str, time_ms: i64, live: usize) -> Result<(), HemvistError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.execute(
            "INSERT OR IGNORE INTO packs (key, time_ms, live) VALUES (?1, ?2, ?3)",
            rusqlite::params![key, time_ms, live as i64],
        )
        .map_err(internal)?;
        Ok(())
    }

    /// One segment of the pack is no longer needed; how many still are (`None`: not a pack
    /// this node knows).
    pub fn release_pack_segment(&self, key: &str) -> rusqlite::Result<Option<i64>> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.query_row(
            "UPDATE packs SET live = live - 1 WHERE key = ?1 RETURNING live",
            [key],
            |r| r.get(0),
        )
        .optional()
    }

    /// Records a generation this node dropped after shipping it (with the packed segments no
    /// index lists), so its backups can go when they leave the retention window.
    pub fn note_departed(
        &self,
        org: &OrgId,
        state: &Shipped,
        now_ms: i64,
    ) -> Result<(), HemvistError> {
        let pending = serde_json::to_string(&state.pending).map_err(internal)?;
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.execute(
            "INSERT OR REPLACE INTO departed (org, generation, dropped_ms, pending) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![org.as_str(), state.generation as i64, now_ms, pending],
        )
        .map_err(internal)?;
        Ok(())
    }

    /// Departed generations dropped before `before_ms`.
    pub fn departed_before(&self, before_ms: i64) -> Vec<(OrgId, u64)> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(mut stmt) = db.prepare("SELECT org, generation FROM departed WHERE dropped_ms < ?1")
        else {
            return Vec::new();
        };
        stmt.query_map([before_ms], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map(|rows| {
            rows.filter_map(Result::ok)
                .filter_map(|(o, g)| Some((OrgId::parse(&o).ok()?, g as u64)))
                .collect()
        })
        .unwrap_or_default()
    }

    fn departed_pending(
        tx: &rusqlite::Transaction<'_>,
        org: &OrgId,
        generation: u64,
    ) -> rusqlite::Result<Option<Vec<PackRef>>> {
        let text: Option<String> = tx
            .query_row(
                "SELECT pending FROM departed WHERE org = ?1 AND generation = ?2",
                rusqlite::params![org.as_str(), generation as i64],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text.map(|t| serde_json::from_str(&t).unwrap_or_default()))
    }

    fn set_departed_pending(
        tx: &rusqlite::Transaction<'_>,
        org: &OrgId,
        generation: u64,
        pending: &[PackRef],
    ) -> rusqlite::Result<()> {
        tx.execute(
            "UPDATE departed SET pending = ?3 WHERE org = ?1 AND generation = ?2",
            rusqlite::params![
                org.as_str(),
                generation as i64,
                serde_json::to_string(pending).unwrap_or_else(|_| "[]".into())
            ],
        )?;
        Ok(())
    }

    /// Strikes from a departed generation's record the segments `indexed` lists (an index will
    /// release them), so none is released twice.
    pub fn strike_departed(
        &self,
        org: &OrgId,
        generation: u64,
        indexed: &[PackRef],
    ) -> Result<(), HemvistError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db.transaction().map_err(internal)?;
        if let Some(mut pending) = Self::departed_pending(&tx, org, generation).map_err(internal)? {
            pending.retain(|p| !indexed.iter().any(|i| i.segment == p.segment));
            Self::set_departed_pending(&tx, org, generation, &pending).map_err(internal)?;
        }
        tx.commit().map_err(internal)
    }

    /// Releases one segment of a departed generation's record and strikes it, in one
    /// transaction: its pack and how many of the pack's segments are still needed; `None` when
    /// the record has none left.
    pub fn release_departed_segment(
        &self,
        org: &OrgId,
        generation: u64,
    ) -> Result<Option<(String, i64)>, HemvistError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db.transaction().map_err(internal)?;
        let Some(mut pending) = Self::departed_pending(&tx, org, generation).map_err(internal)?
        else {
            return Ok(None);
        };
        let Some(r) = pending.pop() else {
            return Ok(None);
        };
        Self::set_departed_pending(&tx, org, generation, &pending).map_err(internal)?;
        let left: Option<i64> = tx
            .query_row(
                "UPDATE packs SET live = live - 1 WHERE key = ?1 RETURNING live",
                [&r.pack],
                |row| row.get(0),
            )
            .optional()
            .map_err(internal)?;
        tx.commit().map_err(internal)?;
        Ok(Some((r.pack, left.unwrap_or(1))))
    }

    /// The departed generations of `org` this node keeps a record of.
    pub fn departed_of(&self, org: &OrgId) -> Vec<u64> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(mut stmt) =
            db.prepare("SELECT generation FROM departed WHERE org = ?1 ORDER BY generation")
        else {
            return Vec::new();
        };
        stmt.query_map([org.as_str()], |r| r.get::<_, i64>(0))
            .map(|rows| rows.filter_map(Result::ok).map(|g| g as u64).collect())
            .unwrap_or_default()
    }

    pub fn forget_departed(&self, org: &OrgId, generation: u64) -> Result<(), HemvistError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.execute(
            "DELETE FROM departed WHERE org = ?1 AND generation = ?2",
            rusqlite::params![org.as_str(), generation as i64],
        )
        .map_err(internal)?;
        Ok(())
    }

    /// The packed segments every departed record of `org` holds (what no index listed at its
    /// drop).
    pub fn departed_pending_of(&self, org: &OrgId) -> Result<Vec<PackRef>, HemvistError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = db
            .prepare("SELECT pending FROM departed WHERE org = ?1")
            .map_err(internal)?;
        let texts = stmt
            .query_map([org.as_str()], |r| r.get::<_, String>(0))
            .and_then(Iterator::collect::<rusqlite::Result<Vec<String>>>)
            .map_err(internal)?;
        Ok(texts
            .iter()
            .flat_map(|t| serde_json::from_str::<Vec<PackRef>>(t).unwrap_or_default())
            .collect())
    }

    /// Records packed segments of `org` to scrub out of their packs; those recorded already
    /// stay as they are.
    pub fn note_scrub(&self, org: &OrgId, refs: &[PackRef]) -> Result<(), HemvistError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db.transaction().map_err(internal)?;
        for r in refs {
            tx.execute(
                "INSERT OR IGNORE INTO scrub (org, pack, at, len, segment) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![org.as_str(), r.pack, r.offset as i64, r.len as i64, r.segment],
            )
            .map_err(internal)?;
        }
        tx.commit().map_err(internal)
    }

    /// The packed segments of `org` still to scrub, by pack.
    pub fn scrub_due(&self, org: &OrgId) -> Result<Vec<PackRef>, HemvistError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = db
            .prepare("SELECT pack, at, len, segment FROM scrub WHERE org = ?1 ORDER BY pack, at")
            .map_err(internal)?;
        stmt.query_map([org.as_str()], |r| {
            Ok(PackRef {
                pack: r.get(0)?,
                offset: r.get::<_, i64>(1)? as u64,
                len: r.get::<_, i64>(2)? as u64,
                segment: r.get(3)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(internal)
    }

    /// `pack` holds nothing of `org` any more (scrubbed, or gone).
    pub fn scrub_done(&self, org: &OrgId, pack: &str) -> Result<(), HemvistError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.execute(
            "DELETE FROM scrub WHERE org = ?1 AND pack = ?2",
            rusqlite::params![org.as_str(), pack],
        )
        .map_err(internal)?;
        Ok(())
    }

    pub fn forget_pack(&self, key: &str) -> rusqlite::Result<()> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        db.execute("DELETE FROM packs WHERE key = ?1", [key])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(lsn: u64) -> Shipped {
        Shipped {
            generation: 1,
            lsn,
            wal: WalPos::default(),
            page_size: 4096,
            snapshot_lsn: Some(1),
            since_snapshot: 0,
            shipped_ms: 0,
            pending: Vec::new(),
            snapshot_ms: 0,
        }
    }

    fn row(dir: &Path, org: &OrgId) -> Option<Shipped> {
        let db = Connection::open(dir.join("backup.db")).unwrap();
        db.query_row(
            "SELECT state FROM shipped WHERE org = ?1",
            [org.as_str()],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .unwrap()
        .map(|s| serde_json::from_str(&s).unwrap())
    }

    #[test]
    fn a_row_that_cannot_be_written_holds_up_nothing_and_is_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let db = BackupDb::open(dir.path()).unwrap();
        let org = OrgId::parse("acme").unwrap();
        db.persist(&org, Some(&shipped(5))).unwrap();
        assert_eq!(row(dir.path(), &org), Some(shipped(5)));

        // The row cannot be written (as on a full disk): shipping goes on from memory.
        db.db
            .lock()
            .unwrap()
            .execute_batch("ALTER TABLE shipped RENAME TO away")
            .unwrap();
        db.persist(&org, Some(&shipped(9))).unwrap();
        assert_eq!(db.get(&org), Some(shipped(9)));
        db.save_unsaved();
        assert_eq!(db.unsaved.lock().unwrap().len(), 1, "still no room");

        // Room again: the next pass writes what memory holds.
        db.db
            .lock()
            .unwrap()
            .execute_batch("ALTER TABLE away RENAME TO shipped")
            .unwrap();
        assert_eq!(row(dir.path(), &org), Some(shipped(5)));
        db.save_unsaved();
        assert_eq!(row(dir.path(), &org), Some(shipped(9)));
        assert!(db.unsaved.lock().unwrap().is_empty());
    }
}
