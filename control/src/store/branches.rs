//! The `branches` table: what an org that is a branch is a branch of, as of when, and until
//! when it lives. The branch itself is an org like any other (`orgs`, `placements`); it is made
//! with its branch row in one transaction, and destroyed with it in another, each audited.

use super::sql::{params, OptionalExtension, Row, Transaction};
use hemvist_proto::{OrgId, RegionId};
use serde::Serialize;

use super::audit::append_audit;
use super::db::Store;
use super::error::{Result, StoreError};
use super::orgs::{delete_org_in, insert_org, org_in, NewOrg, OrgRecord};
use crate::clock::now_ms;

#[derive(Debug, Clone, Serialize)]
pub struct BranchRecord {
    pub id: OrgId,
    pub parent: OrgId,
    pub name: String,
    /// The parent's point in time the branch holds.
    pub at_ms: i64,
    pub region: RegionId,
    pub owner: String,
    pub created_ms: i64,
    /// How far a keepalive pushes the expiry out, unless it names its own.
    pub ttl_ms: i64,
    pub expires_ms: i64,
    pub keepalive_on_use: bool,
    pub users: String,
    pub masked: bool,
    pub last_used_ms: Option<i64>,
    /// Its file's size as its node last reported it.
    pub size_bytes: Option<i64>,
    pub destroyed_ms: Option<i64>,
    pub destroyed_why: Option<String>,
}

pub struct NewBranch<'a> {
    pub parent: &'a OrgId,
    pub name: &'a str,
    /// The region it is to live in (it may be made elsewhere, then moved).
    pub region: &'a RegionId,
    pub at_ms: i64,
    pub owner: &'a str,
    pub ttl_ms: i64,
    pub expires_ms: i64,
    pub keepalive_on_use: bool,
    pub users: &'a str,
    pub masked: bool,
    /// The operation that makes it, for the audit entry.
    pub operation: &'a str,
}

const BRANCH_SELECT: &str = "SELECT id, parent, name, at_ms, region, owner, created_ms, ttl_ms,
    expires_ms, keepalive_on_use, users, masked, last_used_ms, destroyed_ms, destroyed_why,
    size_bytes FROM branches";

fn branch_row(r: &Row) -> super::sql::Result<Result<BranchRecord>> {
    let id: String = r.get(0)?;
    let parent: String = r.get(1)?;
    let region: String = r.get(4)?;
    let parsed = (|| -> Result<BranchRecord> {
        Ok(BranchRecord {
            id: OrgId::parse(&id).map_err(StoreError::corrupt)?,
            parent: OrgId::parse(&parent).map_err(StoreError::corrupt)?,
            name: r.get(2)?,
            at_ms: r.get(3)?,
            region: RegionId::parse(&region).map_err(StoreError::corrupt)?,
            owner: r.get(5)?,
            created_ms: r.get(6)?,
            ttl_ms: r.get(7)?,
            expires_ms: r.get(8)?,
            keepalive_on_use: r.get(9)?,
            users: r.get(10)?,
            masked: r.get(11)?,
            last_used_ms: r.get(12)?,
            destroyed_ms: r.get(13)?,
            destroyed_why: r.get(14)?,
            size_bytes: r.get(15)?,
        })
    })();
    Ok(parsed)
}

fn branch_in(tx: &Transaction<'_>, id: &OrgId) -> Result<Option<BranchRecord>> {
    tx.query_row(
        &format!("{BRANCH_SELECT} WHERE id = ?1"),
        [id.as_str()],
        branch_row,
    )
    .optional()?
    .transpose()
}

impl Store {
    /// Makes the branch's org (its first placement under a fresh generation) and its branch row
    /// in one transaction, audited. A live branch under the id is returned untouched (its
    /// operation asked again); a destroyed one's row is replaced.
    pub fn create_branch(
        &self,
        org: &NewOrg,
        branch: &NewBranch<'_>,
    ) -> Result<(OrgRecord, BranchRecord)> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        if let (Some(o), Some(b)) = (org_in(&tx, &org.id)?, branch_in(&tx, &org.id)?) {
            if b.destroyed_ms.is_none() {
                return Ok((o, b));
            }
        }
        let created = insert_org(&tx, org)?;
        let now = now_ms();
        tx.execute("DELETE FROM branches WHERE id = ?1", [org.id.as_str()])?;
        tx.execute(
            "INSERT INTO branches (id, parent, name, at_ms, region, owner, created_ms, ttl_ms,
               expires_ms, keepalive_on_use, users, masked)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                org.id.as_str(),
                branch.parent.as_str(),
                branch.name,
                branch.at_ms,
                branch.region.as_str(),
                branch.owner,
                now,
                branch.ttl_ms,
                branch.expires_ms,
                branch.keepalive_on_use,
                branch.users,
                branch.masked,
            ],
        )?;
        append_audit(
            &tx,
            branch.owner,
            "branch.created",
            Some(&org.id),
            &serde_json::json!({
                "operation": branch.operation,
                "parent": branch.parent,
                "at_ms": branch.at_ms,
                "region": branch.region,
                "made_in": org.home_region,
                "node": org.node_id,
                "generation": created.generation.get(),
                "expires_ms": branch.expires_ms,
                "masked": branch.masked,
                "users": branch.users,
            }),
        )?;
        let made = branch_in(&tx, &org.id)?
            .ok_or_else(|| StoreError::corrupt(format!("branch {} vanished", org.id)))?;
        tx.commit()?;
        Ok((created, made))
    }

    pub fn branch(&self, id: &OrgId) -> Result<Option<BranchRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        branch_in(&tx, id)
    }

    /// Every branch ever made, destroyed ones included (of `parent`, when given), oldest first:
    /// the residency report's record of where copies lived.
    pub fn all_branches(&self, parent: Option<&OrgId>) -> Result<Vec<BranchRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{BRANCH_SELECT} WHERE (CAST(?1 AS TEXT) IS NULL OR parent = ?1) ORDER BY created_ms, id"
        ))?;
        let rows = stmt.query_map([parent.map(|p| p.as_str())], branch_row)?;
        rows.map(|r| r?).collect()
    }

    /// Every branch not destroyed (of `parent`, when given), oldest first.
    pub fn live_branches(&self, parent: Option<&OrgId>) -> Result<Vec<BranchRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{BRANCH_SELECT} WHERE destroyed_ms IS NULL AND (CAST(?1 AS TEXT) IS NULL OR parent = ?1)
             ORDER BY created_ms, id"
        ))?;
        let rows = stmt.query_map([parent.map(|p| p.as_str())], branch_row)?;
        rows.map(|r| r?).collect()
    }

    /// Every live branch whose org is placed on `node`, in one query.
    pub fn live_branches_on_node(&self, node: &hemvist_proto::NodeId) -> Result<Vec<BranchRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT b.id, b.parent, b.name, b.at_ms, b.region, b.owner, b.created_ms, b.ttl_ms,
               b.expires_ms, b.keepalive_on_use, b.users, b.masked, b.last_used_ms,
               b.destroyed_ms, b.destroyed_why, b.size_bytes
             FROM branches b JOIN placements p ON p.org = b.id
             WHERE p.node_id = ?1 AND b.destroyed_ms IS NULL ORDER BY b.id",
        )?;
        let rows = stmt.query_map([node.as_str()], branch_row)?;
        rows.map(|r| r?).collect()
    }

    /// Live branches whose org lives in another region than the branch is to live in (made in
    /// its parent's region, not moved yet), in one query.
    pub fn stray_branches(&self) -> Result<Vec<BranchRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT b.id, b.parent, b.name, b.at_ms, b.region, b.owner, b.created_ms, b.ttl_ms,
               b.expires_ms, b.keepalive_on_use, b.users, b.masked, b.last_used_ms,
               b.destroyed_ms, b.destroyed_why, b.size_bytes
             FROM branches b JOIN orgs o ON o.id = b.id
             WHERE b.destroyed_ms IS NULL AND o.home_region != b.region ORDER BY b.id",
        )?;
        let rows = stmt.query_map([], branch_row)?;
        rows.map(|r| r?).collect()
    }

    /// Live branches whose expiry is at or before `now`.
    pub fn expired_branches(&self, now: i64) -> Result<Vec<BranchRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "{BRANCH_SELECT} WHERE destroyed_ms IS NULL AND expires_ms <= ?1 ORDER BY expires_ms"
        ))?;
        let rows = stmt.query_map([now], branch_row)?;
        rows.map(|r| r?).collect()
    }

    /// Pushes a live branch's expiry to `expires_ms` (never earlier than it was), audited as
    /// asked by `actor`; the branch as it is now, `None` if there is no live branch `id`.
    pub fn keep_branch_alive(
        &self,
        id: &OrgId,
        expires_ms: i64,
        actor: &str,
        why: &str,
    ) -> Result<Option<BranchRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(before) = branch_in(&tx, id)?.filter(|b| b.destroyed_ms.is_none()) else {
            return Ok(None);
        };
        if expires_ms > before.expires_ms {
            tx.execute(
                "UPDATE branches SET expires_ms = ?2 WHERE id = ?1",
                params![id.as_str(), expires_ms],
            )?;
            append_audit(
                &tx,
                actor,
                "branch.kept_alive",
                Some(id),
                &serde_json::json!({
                    "from_ms": before.expires_ms,
                    "to_ms": expires_ms,
                    "why": why,
                }),
            )?;
        }
        let after = branch_in(&tx, id)?;
        tx.commit()?;
        Ok(after)
    }

    /// Records when live branches were last used by a signed-in user (no audit: not a change).
    pub fn branches_used(&self, used: &[(OrgId, i64)]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (id, at) in used {
            tx.execute(
                "UPDATE branches SET last_used_ms =
                   CASE WHEN coalesce(last_used_ms, 0) > ?2 THEN last_used_ms ELSE ?2 END
                 WHERE id = ?1 AND destroyed_ms IS NULL",
                params![id.as_str(), at],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records live branches' file sizes as their node reported them.
    pub fn branch_sizes(&self, sizes: &[(OrgId, u64)]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (id, bytes) in sizes {
            tx.execute(
                "UPDATE branches SET size_bytes = ?2 WHERE id = ?1 AND destroyed_ms IS NULL",
                params![id.as_str(), *bytes as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets a destroyed branch's org (placement, what nodes reported of it) and marks its
    /// branch row destroyed, with why, in one transaction, audited. Whether it was live.
    pub fn forget_branch(&self, id: &OrgId, why: &str, operation: &str) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(branch) = branch_in(&tx, id)?.filter(|b| b.destroyed_ms.is_none()) else {
            return Ok(false);
        };
        let now = now_ms();
        delete_org_in(&tx, id, now)?;
        tx.execute(
            "UPDATE branches SET destroyed_ms = ?2, destroyed_why = ?3 WHERE id = ?1",
            params![id.as_str(), now, why],
        )?;
        append_audit(
            &tx,
            "control",
            "branch.destroyed",
            Some(id),
            &serde_json::json!({
                "operation": operation,
                "parent": branch.parent,
                "region": branch.region,
                "why": why,
                "expires_ms": branch.expires_ms,
                "deleted": ["file", "backups", "placement", "users"],
            }),
        )?;
        tx.commit()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredResidency;
    use hemvist_proto::NodeId;

    fn new_org(id: &str) -> NewOrg {
        NewOrg {
            id: OrgId::parse(id).unwrap(),
            name: "Acme (branch)".into(),
            home_region: RegionId::parse("eu-north").unwrap(),
            residency: StoredResidency::default(),
            placement_reason: "branch".into(),
            node_id: NodeId::parse("n1").unwrap(),
            durability: "async".into(),
            data_key: "00".repeat(32),
            schema_version: 5,
            requested_by: "ops".into(),
        }
    }

    #[test]
    fn a_branch_is_made_once_kept_alive_forward_only_and_forgotten_once() {
        let (store, _path) = super::super::db::temp_store();
        let parent = OrgId::parse("acme").unwrap();
        let org = new_org("acme--qa");
        let region = RegionId::parse("eu-north").unwrap();
        let new = NewBranch {
            parent: &parent,
            name: "qa",
            region: &region,
            at_ms: 1_000,
            owner: "ops",
            ttl_ms: 60_000,
            expires_ms: now_ms() + 60_000,
            keepalive_on_use: false,
            users: "copy",
            masked: true,
            operation: "branch-acme--qa-1",
        };
        let (o, b) = store.create_branch(&org, &new).unwrap();
        let (o2, _) = store.create_branch(&org, &new).unwrap();
        assert_eq!(o.generation, o2.generation, "asked again: the same branch");
        assert_eq!(store.live_branches(Some(&parent)).unwrap().len(), 1);
        assert!(store.expired_branches(now_ms()).unwrap().is_empty());

        let kept = store
            .keep_branch_alive(&b.id, b.expires_ms - 5, "ops", "test")
            .unwrap()
            .unwrap();
        assert_eq!(kept.expires_ms, b.expires_ms, "never earlier");
        let kept = store
            .keep_branch_alive(&b.id, b.expires_ms + 5, "ops", "test")
            .unwrap()
            .unwrap();
        assert_eq!(kept.expires_ms, b.expires_ms + 5);
        assert!(store
            .expired_branches(b.expires_ms + 5)
            .unwrap()
            .iter()
            .any(|e| e.id == b.id));

        assert!(store.forget_branch(&b.id, "expired", "op").unwrap());
        assert!(!store.forget_branch(&b.id, "expired", "op").unwrap());
        assert!(store.org(&b.id).unwrap().is_none());
        assert!(store.live_branches(None).unwrap().is_empty());
        let actions: Vec<String> = store
            .audit_for_org(&b.id)
            .unwrap()
            .iter()
            .filter_map(|a| a["action"].as_str().map(String::from))
            .collect();
        assert_eq!(
            actions.iter().filter(|a| *a == "branch.destroyed").count(),
            1
        );

        let (again, _) = store.create_branch(&org, &new).unwrap();
        assert!(again.generation > o.generation, "a new branch of the name");
    }
}
