//! Where orgs are and are reported to be: the generation counter (`meta.next_generation`, which
//! only ever grows, so a generation is never issued twice, even across restarts), the load per
//! node, and `observed` — what each node last said it hosts, so desired can be told from actual.

use hemvist_proto::{Generation, NodeId, OrgId};
use rusqlite::{params, Transaction};
use serde::Serialize;

use super::db::Store;
use super::error::{Result, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct ObservedRecord {
    pub node_id: NodeId,
    pub generation: Generation,
    pub schema_version: u32,
}

/// Issues the next generation inside the caller's transaction.
pub(super) fn next_generation(tx: &Transaction<'_>) -> Result<Generation> {
    let n: i64 = tx.query_row(
        "UPDATE meta SET value = value + 1 WHERE key = 'next_generation' RETURNING value - 1",
        [],
        |r| r.get(0),
    )?;
    Generation::new(n as u64).map_err(StoreError::corrupt)
}

impl Store {
    /// Tenants placed on each node: the load placement balances.
    pub fn tenants_per_node(&self) -> Result<Vec<(NodeId, u64)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT node_id, COUNT(*) FROM placements GROUP BY node_id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, n) = row?;
            out.push((NodeId::try_from(id).map_err(StoreError::corrupt)?, n as u64));
        }
        Ok(out)
    }

    /// Replaces what a node is known to host with its latest full report.
    pub fn replace_observed(
        &self,
        node: &NodeId,
        tenants: &[(OrgId, Generation, u32)],
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM observed WHERE node_id = ?1", [node.as_str()])?;
        for (org, generation, schema) in tenants {
            tx.execute(
                "INSERT INTO observed (node_id, org, generation, schema_version) VALUES (?1, ?2, ?3, ?4)",
                params![node.as_str(), org.as_str(), generation.get() as i64, schema],
            )?;
        }
        Ok(tx.commit()?)
    }

    pub fn set_observed(
        &self,
        node: &NodeId,
        org: &OrgId,
        generation: Generation,
        schema: u32,
    ) -> Result<()> {
        self.lock().execute(
            "INSERT INTO observed (node_id, org, generation, schema_version) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(node_id, org) DO UPDATE SET generation = ?3, schema_version = ?4",
            params![node.as_str(), org.as_str(), generation.get() as i64, schema],
        )?;
        Ok(())
    }

    pub fn remove_observed(&self, node: &NodeId, org: &OrgId) -> Result<()> {
        self.lock().execute(
            "DELETE FROM observed WHERE node_id = ?1 AND org = ?2",
            params![node.as_str(), org.as_str()],
        )?;
        Ok(())
    }

    pub fn observed_on_node(&self, node: &NodeId) -> Result<Vec<(OrgId, Generation)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT org, generation FROM observed WHERE node_id = ?1")?;
        let rows = stmt.query_map([node.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (org, g) = row?;
            out.push((
                OrgId::try_from(org).map_err(StoreError::corrupt)?,
                Generation::new(g as u64).map_err(StoreError::corrupt)?,
            ));
        }
        Ok(out)
    }

    pub fn observed_for_org(&self, org: &OrgId) -> Result<Vec<ObservedRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT node_id, generation, schema_version FROM observed WHERE org = ?1")?;
        let rows = stmt.query_map([org.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (node, g, schema) = row?;
            out.push(ObservedRecord {
                node_id: NodeId::try_from(node).map_err(StoreError::corrupt)?,
                generation: Generation::new(g as u64).map_err(StoreError::corrupt)?,
                schema_version: schema,
            });
        }
        Ok(out)
    }
}
