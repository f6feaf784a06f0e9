//! Where orgs are and are reported to be: the generation counter (`meta.next_generation`, which
//! only ever grows, so a generation is never issued twice, even across restarts), the load per
//! node, and `observed` — what each node last said it hosts, so desired can be told from actual.

use super::sql::{params, Transaction};
use hemvist_proto::{Generation, NodeId, OrgId, RegionId};
use serde::Serialize;

use super::db::Store;
use super::error::{Result, StoreError};

/// The schema a node reports a tenant at: its version, and the fingerprint of the migration
/// files it ran (two tenants at one version with two fingerprints ran different files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TenantSchema {
    pub version: u32,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObservedRecord {
    pub node_id: NodeId,
    pub generation: Generation,
    pub schema_version: u32,
    pub schema_fingerprint: String,
}

/// Where an org is placed from now on, and under which (already issued) generation.
#[derive(Debug, Clone, Copy)]
pub struct PlacementSwitch<'a> {
    /// Why, for `orgs show` ("moved by … from …").
    pub reason: &'a str,
    pub region: &'a RegionId,
    pub node: &'a NodeId,
    pub generation: Generation,
}

/// One placement an org had (or has: `to_ms` is `None`), and what ended it.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementSpan {
    pub region: RegionId,
    pub node_id: NodeId,
    pub generation: Generation,
    pub from_ms: i64,
    pub to_ms: Option<i64>,
    /// The operation that brought the org here (a move); none for its first placement.
    pub operation: Option<String>,
}

/// Opens the org's placement history at its first placement (in the caller's transaction).
pub(super) fn open_history(
    tx: &Transaction<'_>,
    org: &OrgId,
    region: &RegionId,
    node: &NodeId,
    generation: Generation,
    now: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO placement_history (org, region, node_id, generation, from_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            org.as_str(),
            region.as_str(),
            node.as_str(),
            generation.get() as i64,
            now
        ],
    )?;
    Ok(())
}

/// Places the org elsewhere, in the caller's transaction: its placement, home region, placement
/// reason and history change together; the new span names `operation`, which brought it there.
pub(super) fn switch_placement(
    tx: &Transaction<'_>,
    org: &OrgId,
    to: &PlacementSwitch<'_>,
    operation: &str,
    now: i64,
) -> Result<()> {
    let changed = tx.execute(
        "UPDATE placements SET node_id = ?2, generation = ?3, updated_ms = ?4 WHERE org = ?1",
        params![
            org.as_str(),
            to.node.as_str(),
            to.generation.get() as i64,
            now
        ],
    )?;
    if changed != 1 {
        return Err(StoreError::corrupt(format!("org {org} has no placement")));
    }
    tx.execute(
        "UPDATE orgs SET home_region = ?2, placement_reason = ?3 WHERE id = ?1",
        params![org.as_str(), to.region.as_str(), to.reason],
    )?;
    tx.execute(
        "UPDATE placement_history SET to_ms = ?2 WHERE org = ?1 AND to_ms IS NULL",
        params![org.as_str(), now],
    )?;
    open_history(tx, org, to.region, to.node, to.generation, now)?;
    tx.execute(
        "UPDATE placement_history SET operation = ?3 WHERE org = ?1 AND generation = ?2",
        params![org.as_str(), to.generation.get() as i64, operation],
    )?;
    Ok(())
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
    /// Issues a generation on its own (for an operation that records it before using it).
    pub fn issue_generation(&self) -> Result<Generation> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let g = next_generation(&tx)?;
        tx.commit()?;
        Ok(g)
    }

    /// Every placement the org has had, oldest first.
    pub fn placement_history(&self, org: &OrgId) -> Result<Vec<PlacementSpan>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT region, node_id, generation, from_ms, to_ms, operation
             FROM placement_history WHERE org = ?1 ORDER BY from_ms, generation",
        )?;
        let rows = stmt.query_map([org.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (region, node, g, from_ms, to_ms, operation) = row?;
            out.push(PlacementSpan {
                region: RegionId::try_from(region).map_err(StoreError::corrupt)?,
                node_id: NodeId::try_from(node).map_err(StoreError::corrupt)?,
                generation: Generation::new(g as u64).map_err(StoreError::corrupt)?,
                from_ms,
                to_ms,
                operation,
            });
        }
        Ok(out)
    }

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
        tenants: &[(OrgId, Generation, TenantSchema)],
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM observed WHERE node_id = ?1", [node.as_str()])?;
        for (org, generation, schema) in tenants {
            tx.execute(
                "INSERT INTO observed (node_id, org, generation, schema_version, schema_fingerprint)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    node.as_str(),
                    org.as_str(),
                    generation.get() as i64,
                    schema.version,
                    schema.fingerprint
                ],
            )?;
        }
        Ok(tx.commit()?)
    }

    pub fn set_observed(
        &self,
        node: &NodeId,
        org: &OrgId,
        generation: Generation,
        schema: &TenantSchema,
    ) -> Result<()> {
        self.lock().execute(
            UPSERT_OBSERVED,
            params![
                node.as_str(),
                org.as_str(),
                generation.get() as i64,
                schema.version,
                schema.fingerprint
            ],
        )?;
        Ok(())
    }

    /// What a node's answer to a migration says, in one transaction: the schema it now hosts,
    /// and the org held at that version unless it is held at a newer one.
    pub fn record_migration(
        &self,
        node: &NodeId,
        org: &OrgId,
        generation: Generation,
        schema: &TenantSchema,
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute(
            UPSERT_OBSERVED,
            params![
                node.as_str(),
                org.as_str(),
                generation.get() as i64,
                schema.version,
                schema.fingerprint
            ],
        )?;
        tx.execute(
            "UPDATE orgs SET schema_version = ?2
             WHERE id = ?1 AND (schema_version IS NULL OR schema_version < ?2)",
            params![org.as_str(), schema.version],
        )?;
        tx.commit()?;
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
            .prepare("SELECT node_id, generation, schema_version, schema_fingerprint FROM observed WHERE org = ?1")?;
        let rows = stmt.query_map([org.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (node, g, schema, fingerprint) = row?;
            out.push(ObservedRecord {
                node_id: NodeId::try_from(node).map_err(StoreError::corrupt)?,
                generation: Generation::new(g as u64).map_err(StoreError::corrupt)?,
                schema_version: schema,
                schema_fingerprint: fingerprint,
            });
        }
        Ok(out)
    }
}

/// What a node says it hosts: one row per (node, org), replaced.
const UPSERT_OBSERVED: &str = "INSERT INTO observed (node_id, org, generation, schema_version,
    schema_fingerprint) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT(node_id, org) DO UPDATE SET generation = ?3, schema_version = ?4,
      schema_fingerprint = ?5";
