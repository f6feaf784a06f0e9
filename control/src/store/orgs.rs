//! The `orgs` table with each org's current placement (`placements`): the desired state. An org
//! and its first placement are written in one transaction, under a generation that was never
//! issued before, with the audit record that says why it went there.

use super::sql::{params, OptionalExtension, Transaction};
use hemvist_proto::{Generation, NodeId, OrgId, RegionId};
use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::db::Store;
use super::error::{Result, StoreError};
use super::placements::next_generation;
use crate::clock::now_ms;

/// An org's residency as stored (JSON in `orgs.residency`): the jurisdictions and regions the
/// domain's policy allows. The store keeps it; it does not interpret it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResidency {
    #[serde(default)]
    pub jurisdictions: Vec<String>,
    #[serde(default)]
    pub regions: Vec<RegionId>,
}

#[derive(Clone, Serialize)]
pub struct OrgRecord {
    pub id: OrgId,
    pub name: String,
    pub home_region: RegionId,
    pub residency: StoredResidency,
    pub placement_reason: String,
    pub created_ms: i64,
    pub node_id: NodeId,
    pub generation: Generation,
    pub durability: String,
    /// Never serialized into views; sent to the org's node and to audited key requests only.
    #[serde(skip)]
    pub data_key: Option<String>,
    /// When backups of the org were first reported; none yet if `None`.
    pub backed_up_ms: Option<i64>,
    /// The newest backup position nodes reported (it only grows).
    pub known: Option<StoredPosition>,
    /// An operator accepted restoring an older point than this known position (`reported_ms`
    /// 0, and generation and LSN 0 when none was known).
    pub accept_older: Option<StoredPosition>,
    /// The schema version the control plane holds the org at (`None`: the system's current).
    pub schema_version: Option<u32>,
}

/// A backup position: generation, LSN after the last object shipped, when it was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StoredPosition {
    pub generation: u64,
    pub lsn: u64,
    pub reported_ms: i64,
}

impl OrgRecord {
    /// Whether an operator's acceptance of an older point holds for what is known now (it lapses
    /// once a newer position is reported).
    pub fn accepts_older(&self) -> bool {
        let now = self.known.map_or((0, 0), |k| (k.generation, k.lsn));
        self.accept_older
            .is_some_and(|a| (a.generation, a.lsn) == now)
    }
}

pub struct NewOrg {
    pub id: OrgId,
    pub name: String,
    pub home_region: RegionId,
    pub residency: StoredResidency,
    pub placement_reason: String,
    pub node_id: NodeId,
    pub durability: String,
    pub data_key: String,
    /// The schema version it starts at.
    pub schema_version: u32,
    /// Who asked for it (an admin token's name), for the audit log.
    pub requested_by: String,
}

pub enum Created {
    New(OrgRecord),
    /// An org under this id already existed; nothing was written. Whether it is the same org
    /// is the caller's judgement.
    Existing(OrgRecord),
}

impl std::fmt::Debug for OrgRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgRecord")
            .field("id", &self.id)
            .field("node_id", &self.node_id)
            .field("generation", &self.generation)
            .field("data_key", &self.data_key.as_ref().map(|_| ".."))
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Creates the org and its first placement under a fresh generation, in one transaction,
    /// with its audit record. An org already under the same id is returned untouched.
    pub fn create_org(&self, new: &NewOrg) -> Result<Created> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let Some(existing) = org_in(&tx, &new.id)? {
            return Ok(Created::Existing(existing));
        }
        let created = insert_org(&tx, new)?;
        tx.commit()?;
        Ok(Created::New(created))
    }

    pub fn org(&self, id: &OrgId) -> Result<Option<OrgRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        org_in(&tx, id)
    }

    pub fn orgs(&self) -> Result<Vec<OrgRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{ORG_SELECT} ORDER BY o.id"))?;
        let rows = stmt.query_map([], org_row)?;
        rows.map(|r| check_org(r?)).collect()
    }

    /// Up to `limit` orgs by id, after `after` (a cursor: the last id of the previous page).
    pub fn orgs_page(&self, after: Option<&OrgId>, limit: usize) -> Result<Vec<OrgRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{ORG_SELECT} WHERE o.id > ?1 ORDER BY o.id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(
            params![after.map_or("", |a| a.as_str()), limit as i64],
            org_row,
        )?;
        rows.map(|r| check_org(r?)).collect()
    }

    /// Up to `limit` orgs whose id starts with `text` or whose name contains it (ASCII case
    /// ignored), those by id first, then by id: what a search box shows while one types.
    pub fn search_orgs(&self, text: &str, limit: usize) -> Result<Vec<OrgRecord>> {
        let escaped: String = text
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{ORG_SELECT} WHERE o.id LIKE ?1 ESCAPE '\\' OR o.name LIKE ?2 ESCAPE '\\'
             ORDER BY o.id LIKE ?1 ESCAPE '\\' DESC, o.id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![format!("{escaped}%"), format!("%{escaped}%"), limit as i64],
            org_row,
        )?;
        rows.map(|r| check_org(r?)).collect()
    }

    /// The orgs of `ids` that exist, in one query.
    pub fn orgs_by_ids(&self, ids: &[&OrgId]) -> Result<Vec<OrgRecord>> {
        let list = serde_json::to_string(&ids.iter().map(|i| i.as_str()).collect::<Vec<_>>())
            .map_err(|e| StoreError::corrupt(e.to_string()))?;
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{ORG_SELECT} WHERE o.id IN (SELECT value FROM json_each(?1))"
        ))?;
        let rows = stmt.query_map([list], org_row)?;
        rows.map(|r| check_org(r?)).collect()
    }

    /// The orgs held at a schema version below `version`.
    pub fn orgs_below_schema(&self, version: u32) -> Result<Vec<OrgRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{ORG_SELECT} WHERE o.schema_version < ?1 ORDER BY o.id"
        ))?;
        let rows = stmt.query_map([version], org_row)?;
        rows.map(|r| check_org(r?)).collect()
    }

    /// The orgs whose desired placement is on `node`.
    pub fn orgs_on_node(&self, node: &NodeId) -> Result<Vec<OrgRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{ORG_SELECT} WHERE p.node_id = ?1 ORDER BY o.id"))?;
        let rows = stmt.query_map([node.as_str()], org_row)?;
        rows.map(|r| check_org(r?)).collect()
    }

    /// Records that backups of the org exist (the first report only); whether this was news.
    pub fn mark_backed_up(&self, id: &OrgId, now_ms: i64) -> Result<bool> {
        let changed = self.lock().execute(
            "UPDATE orgs SET backed_up_ms = ?2 WHERE id = ?1 AND backed_up_ms IS NULL",
            params![id.as_str(), now_ms],
        )?;
        Ok(changed > 0)
    }

    /// Forgets the org's data key; whether there was one. What was sealed with it can no longer
    /// be opened by anyone.
    pub fn destroy_data_key(&self, id: &OrgId) -> Result<bool> {
        Ok(self.lock().execute(
            "UPDATE orgs SET data_key = NULL WHERE id = ?1 AND data_key IS NOT NULL",
            [id.as_str()],
        )? > 0)
    }

    /// Records reported backup positions `(org, generation, lsn, reported_ms)` where they are
    /// newer than the one stored, in one transaction; how many were.
    pub fn record_positions(&self, positions: &[(OrgId, u64, u64, i64)]) -> Result<usize> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut grown = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE orgs SET known_generation = ?2, known_lsn = ?3, known_ms = ?4
                 WHERE id = ?1 AND (known_generation IS NULL OR known_generation < ?2
                   OR (known_generation = ?2 AND known_lsn < ?3))",
            )?;
            for (org, generation, lsn, at) in positions {
                grown +=
                    stmt.execute(params![org.as_str(), *generation as i64, *lsn as i64, at])?;
            }
        }
        tx.commit()?;
        Ok(grown)
    }

    /// An operator accepts that the org's next rebuild restores the newest point its backups
    /// reach, older than the known position: recorded against that position, audited with
    /// `detail`, and the org's refused `host` commands are made due again, in one transaction.
    /// The org's record as it now is.
    pub fn accept_older(
        &self,
        id: &OrgId,
        actor: &str,
        detail: &serde_json::Value,
    ) -> Result<Option<OrgRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(org) = org_in(&tx, id)? else {
            return Ok(None);
        };
        let (generation, lsn) = org.known.map_or((0, 0), |k| (k.generation, k.lsn));
        tx.execute(
            "UPDATE orgs SET accept_older_generation = ?2, accept_older_lsn = ?3 WHERE id = ?1",
            params![id.as_str(), generation as i64, lsn as i64],
        )?;
        tx.execute(
            "UPDATE commands SET state = 'retry', updated_ms = 0
             WHERE org = ?1 AND kind = 'host' AND state IN ('retry', 'failed')",
            [id.as_str()],
        )?;
        append_audit(&tx, actor, "org.accepted_older", Some(id), detail)?;
        let org = org_in(&tx, id)?;
        tx.commit()?;
        Ok(org)
    }

    pub fn count_orgs(&self) -> Result<u64> {
        Ok(self
            .lock()
            .query_row("SELECT COUNT(*) FROM orgs", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)?)
    }
}

const ORG_SELECT: &str = "SELECT o.id, o.name, o.home_region, o.residency, o.placement_reason,
    o.created_ms, p.node_id, p.generation, o.durability, o.data_key, o.backed_up_ms,
    o.known_generation, o.known_lsn, o.known_ms, o.accept_older_generation, o.accept_older_lsn,
    o.schema_version
    FROM orgs o JOIN placements p ON p.org = o.id";

type OrgRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    String,
    Option<String>,
    Option<i64>,
    [Option<i64>; 5],
    Option<u32>,
);

fn org_row(r: &super::sql::Row) -> super::sql::Result<OrgRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        [r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?, r.get(15)?],
        r.get(16)?,
    ))
}

fn check_org(row: OrgRow) -> Result<OrgRecord> {
    let (
        id,
        name,
        region,
        residency,
        reason,
        created_ms,
        node,
        generation,
        durability,
        data_key,
        backed_up_ms,
        [known_generation, known_lsn, known_ms, accept_generation, accept_lsn],
        schema_version,
    ) = row;
    let position = |g: Option<i64>, l: Option<i64>, at: Option<i64>| match (g, l) {
        (Some(g), Some(l)) => Some(StoredPosition {
            generation: g as u64,
            lsn: l as u64,
            reported_ms: at.unwrap_or(0),
        }),
        _ => None,
    };
    Ok(OrgRecord {
        id: OrgId::try_from(id).map_err(StoreError::corrupt)?,
        name,
        home_region: RegionId::try_from(region).map_err(StoreError::corrupt)?,
        residency: serde_json::from_str(&residency).map_err(StoreError::corrupt)?,
        placement_reason: reason,
        created_ms,
        node_id: NodeId::try_from(node).map_err(StoreError::corrupt)?,
        generation: Generation::new(generation as u64).map_err(StoreError::corrupt)?,
        durability,
        data_key,
        backed_up_ms,
        known: position(known_generation, known_lsn, known_ms),
        accept_older: position(accept_generation, accept_lsn, None),
        schema_version,
    })
}

pub(super) fn org_in(tx: &Transaction<'_>, id: &OrgId) -> Result<Option<OrgRecord>> {
    tx.query_row(
        &format!("{ORG_SELECT} WHERE o.id = ?1"),
        [id.as_str()],
        org_row,
    )
    .optional()?
    .map(check_org)
    .transpose()
}

/// Inserts a new org and its first placement under a fresh generation, with its audit record.
pub(super) fn insert_org(tx: &Transaction<'_>, new: &NewOrg) -> Result<OrgRecord> {
    let generation = next_generation(tx)?;
    let now = now_ms();
    let residency = serde_json::to_string(&new.residency).map_err(StoreError::corrupt)?;
    tx.execute(
        "INSERT INTO orgs (id, name, home_region, residency, placement_reason, created_ms,
           durability, data_key, schema_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            new.id.as_str(),
            new.name,
            new.home_region.as_str(),
            residency,
            new.placement_reason,
            now,
            new.durability,
            new.data_key,
            new.schema_version
        ],
    )?;
    tx.execute(
        "INSERT INTO placements (org, node_id, generation, updated_ms) VALUES (?1, ?2, ?3, ?4)",
        params![
            new.id.as_str(),
            new.node_id.as_str(),
            generation.get() as i64,
            now
        ],
    )?;
    super::placements::open_history(tx, &new.id, &new.home_region, &new.node_id, generation, now)?;
    append_audit(
        tx,
        "control",
        "org.placed",
        Some(&new.id),
        &serde_json::json!({
            "region": new.home_region,
            "node": new.node_id,
            "generation": generation.get(),
            "residency": new.residency,
            "reason": new.placement_reason,
            "requested_by": new.requested_by,
        }),
    )?;
    org_in(tx, &new.id)?.ok_or_else(|| StoreError::corrupt(format!("org {} vanished", new.id)))
}

impl Store {
    /// Changes the org's residency, compared and set against the one the caller checked, with
    /// its audit entry (`org.residency_changed`) in the same transaction. `false` if the org's
    /// residency was no longer `expected`.
    pub fn set_residency(
        &self,
        id: &OrgId,
        expected: &StoredResidency,
        new: &StoredResidency,
        actor: &str,
        detail: &serde_json::Value,
    ) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let old = serde_json::to_string(expected).map_err(StoreError::corrupt)?;
        let changed = tx.execute(
            "UPDATE orgs SET residency = ?2 WHERE id = ?1 AND residency = ?3",
            params![
                id.as_str(),
                serde_json::to_string(new).map_err(StoreError::corrupt)?,
                old
            ],
        )?;
        if changed == 0 {
            return Ok(false);
        }
        append_audit(&tx, actor, "org.residency_changed", Some(id), detail)?;
        tx.commit()?;
        Ok(true)
    }
}

/// Deletes the org's desired state: its placement (its history closed at `now`), what nodes
/// reported of it, and its row, data key included.
pub(super) fn delete_org_in(tx: &Transaction<'_>, id: &OrgId, now: i64) -> Result<()> {
    tx.execute(
        "UPDATE placement_history SET to_ms = ?2 WHERE org = ?1 AND to_ms IS NULL",
        params![id.as_str(), now],
    )?;
    tx.execute("DELETE FROM observed WHERE org = ?1", [id.as_str()])?;
    tx.execute("DELETE FROM placements WHERE org = ?1", [id.as_str()])?;
    tx.execute("DELETE FROM orgs WHERE id = ?1", [id.as_str()])?;
    Ok(())
}
