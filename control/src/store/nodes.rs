//! The `regions` and `nodes` tables. Regions are a copy of the configuration, so history can be
//! read against what the regions were when it was written; every node that ever registered
//! stays, so placement survives a restart and a node that went away can still be shown.

use super::sql::params;
use hemvist_proto::{NodeId, RegionId};
use serde::Serialize;

use super::audit::append_audit;
use super::db::Store;
use super::error::{Result, StoreError};
use crate::clock::now_ms;

/// A configured region as recorded.
pub struct RegionRecord<'a> {
    pub id: &'a RegionId,
    pub name: &'a str,
    pub jurisdiction: &'a str,
    pub countries: &'a [String],
    pub object_store: &'a str,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub region: RegionId,
    pub public_url: String,
    pub capacity: u64,
    pub version: String,
    pub last_seen_ms: i64,
}

impl Store {
    /// Records the regions as configured now; regions no longer configured stay.
    pub fn sync_regions(&self, regions: &[RegionRecord<'_>]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for r in regions {
            tx.execute(
                "INSERT INTO regions (id, name, jurisdiction, countries, object_store)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, jurisdiction = ?3, countries = ?4,
                   object_store = ?5",
                params![
                    r.id.as_str(),
                    r.name,
                    r.jurisdiction,
                    r.countries.join(","),
                    r.object_store
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn upsert_node(&self, n: &NodeRecord) -> Result<()> {
        let now = now_ms();
        self.lock().execute(
            "INSERT INTO nodes (id, region, public_url, capacity, version, first_seen_ms,
               last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT(id) DO UPDATE SET region = ?2, public_url = ?3, capacity = ?4,
               version = ?5, last_seen_ms = ?6",
            params![
                n.id.as_str(),
                n.region.as_str(),
                n.public_url,
                n.capacity as i64,
                n.version,
                now
            ],
        )?;
        Ok(())
    }

    pub fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>> {
        Ok(self.nodes()?.into_iter().find(|n| &n.id == id))
    }

    pub fn touch_node(&self, id: &NodeId) -> Result<()> {
        self.lock().execute(
            "UPDATE nodes SET last_seen_ms = ?2 WHERE id = ?1",
            params![id.as_str(), now_ms()],
        )?;
        Ok(())
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, region, public_url, capacity, version, last_seen_ms FROM nodes
             ORDER BY region, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, region, public_url, capacity, version, last_seen_ms) = row?;
            out.push(NodeRecord {
                id: NodeId::try_from(id).map_err(StoreError::corrupt)?,
                region: RegionId::try_from(region).map_err(StoreError::corrupt)?,
                public_url,
                capacity: capacity.max(0) as u64,
                version,
                last_seen_ms,
            });
        }
        Ok(out)
    }

    /// Starts (or, with `draining` false, ends) draining a node, audited in the same
    /// transaction; whether anything changed.
    pub fn set_draining(&self, id: &NodeId, draining: bool, actor: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let changed = if draining {
            tx.execute(
                "UPDATE nodes SET draining_since_ms = ?2 WHERE id = ?1 AND draining_since_ms IS NULL",
                params![id.as_str(), now_ms()],
            )?
        } else {
            tx.execute(
                "UPDATE nodes SET draining_since_ms = NULL WHERE id = ?1 AND draining_since_ms IS NOT NULL",
                params![id.as_str()],
            )?
        } > 0;
        if changed {
            let action = if draining {
                "node.drain"
            } else {
                "node.undrain"
            };
            append_audit(&tx, actor, action, None, &serde_json::json!({ "node": id }))?;
        }
        tx.commit()?;
        Ok(changed)
    }

    /// The nodes being drained, and since when.
    pub fn draining_nodes(&self) -> Result<std::collections::HashMap<NodeId, i64>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, draining_since_ms FROM nodes WHERE draining_since_ms IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (id, since) = row?;
            out.insert(NodeId::try_from(id).map_err(StoreError::corrupt)?, since);
        }
        Ok(out)
    }
}
