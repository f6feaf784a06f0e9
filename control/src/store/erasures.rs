//! The `tombstones` table: erased orgs, whose ids stay taken. An org is erased (its desired
//! state, data key included, deleted and its tombstone written) in one transaction with its
//! receipt in the audit log.

use super::sql::{params, OptionalExtension};
use hemvist_proto::OrgId;

use super::audit::append_audit;
use super::db::Store;
use super::error::Result;
use super::orgs::delete_org_in;
use crate::clock::now_ms;

impl Store {
    /// Forgets the org for good (placement, what nodes reported, its row and data key) and
    /// writes its tombstone and `receipt` (audited `org.erased`), in one transaction; whether
    /// it was still there (an erasure asked again finds its tombstone and writes nothing).
    pub fn erase_org(
        &self,
        id: &OrgId,
        operation: &str,
        actor: &str,
        receipt: &serde_json::Value,
    ) -> Result<bool> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let exists: bool = tx.query_row(
            "SELECT count(*) > 0 FROM orgs WHERE id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )?;
        let tombstoned: bool = tx.query_row(
            "SELECT count(*) > 0 FROM tombstones WHERE id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )?;
        if !exists || tombstoned {
            return Ok(false);
        }
        let now = now_ms();
        delete_org_in(&tx, id, now)?;
        tx.execute(
            "INSERT INTO tombstones (id, erased_ms, operation, erased_by) VALUES (?1, ?2, ?3, ?4)",
            params![id.as_str(), now, operation, actor],
        )?;
        append_audit(&tx, "control", "org.erased", Some(id), receipt)?;
        tx.commit()?;
        Ok(true)
    }

    /// When the org was erased, if it was.
    pub fn tombstone(&self, id: &OrgId) -> Result<Option<i64>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT erased_ms FROM tombstones WHERE id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    }
}
