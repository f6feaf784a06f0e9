//! The `operations` table: one row per operation, its kind and phase stored as the domain names
//! them (the store interprets neither). A phase changes only from the phase the caller last saw
//! (compare and set), in the same transaction as its audit entry, so a transition is recorded
//! once, before its side effects, whoever races for it.

use super::sql::{params, OptionalExtension, Transaction};
use hemvist_proto::{ErrorKind, OrgId};
use serde::Serialize;

use super::audit::append_audit;
use super::db::Store;
use super::error::{Result, StoreError};
use crate::clock::now_ms;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperationRecord {
    pub id: String,
    pub kind: String,
    /// The org it is about; `None` for an operation on the whole fleet (a rollout), stored as
    /// `''`, so at most one of those is unfinished at a time.
    pub org: Option<OrgId>,
    pub phase: String,
    pub requested_by: String,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
    pub error_kind: Option<ErrorKind>,
    pub error: Option<String>,
    /// What the operation carries beyond its phase (JSON; the domain's to read).
    pub detail: serde_json::Value,
    /// The operation this one is a step of (a residency change's move), if any.
    pub parent: Option<String>,
}

/// An operation to start in its first phase.
pub struct NewOperation<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub org: Option<&'a OrgId>,
    pub phase: &'a str,
    pub requested_by: &'a str,
    pub detail: &'a serde_json::Value,
    /// Started as a step of this unfinished operation of the same org (which owns the org),
    /// while it is in the given phase.
    pub parent: Option<ParentRef<'a>>,
}

/// The operation a child is started under, and the phase it must still be in.
#[derive(Clone, Copy)]
pub struct ParentRef<'a> {
    pub id: &'a str,
    pub phase: &'a str,
}

/// A phase change: from the phase last seen, to the next one, with its audit entry.
pub struct Transition<'a> {
    pub id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// The operation ends in `to`.
    pub finished: bool,
    pub error: Option<(ErrorKind, &'a str)>,
    pub detail: Option<&'a serde_json::Value>,
    pub actor: &'a str,
    pub action: &'a str,
    pub audit: &'a serde_json::Value,
    /// The org's placement changes in the same transaction (a move's switch).
    pub placement: Option<super::placements::PlacementSwitch<'a>>,
}

const SELECT: &str = "SELECT id, kind, org, phase, requested_by, started_ms, updated_ms,
    finished_ms, error_kind, error, detail, parent FROM operations";

type Row = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

fn row(r: &super::sql::Row) -> super::sql::Result<Row> {
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
        r.get(11)?,
    ))
}

fn check(row: Row) -> Result<OperationRecord> {
    let (
        id,
        kind,
        org,
        phase,
        requested_by,
        started_ms,
        updated_ms,
        finished_ms,
        error_kind,
        error,
        detail,
        parent,
    ) = row;
    Ok(OperationRecord {
        id,
        kind,
        org: match org.as_str() {
            "" => None,
            _ => Some(OrgId::try_from(org).map_err(StoreError::corrupt)?),
        },
        phase,
        requested_by,
        started_ms,
        updated_ms,
        finished_ms,
        error_kind: super::error::stored_error_kind(error_kind)?,
        error,
        detail: serde_json::from_str(&detail).map_err(StoreError::corrupt)?,
        parent,
    })
}

fn by_id(tx: &Transaction<'_>, id: &str) -> Result<Option<OperationRecord>> {
    tx.query_row(&format!("{SELECT} WHERE id = ?1"), [id], row)
        .optional()?
        .map(check)
        .transpose()
}

impl Store {
    /// Records a new operation and its audit entry; a conflict if another unfinished operation
    /// owns the org.
    pub fn start_operation(
        &self,
        new: &NewOperation<'_>,
        action: &str,
        audit: &serde_json::Value,
    ) -> Result<OperationRecord> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        if let Some(parent) = new.parent {
            // In the same transaction: a parent that moved on (cancelled, say) starts no child.
            let open: Option<String> = tx
                .query_row(
                    "SELECT org FROM operations
                     WHERE id = ?1 AND finished_ms IS NULL AND phase = ?2",
                    [parent.id, parent.phase],
                    |r| r.get(0),
                )
                .optional()?;
            if open.as_deref() != Some(new.org.map_or("", |o| o.as_str())) {
                return Err(StoreError::Stale(format!(
                    "operation {} is not an unfinished operation of the same org in phase {}",
                    parent.id, parent.phase
                )));
            }
        }
        // The partial unique indexes refuse a second unfinished owner, or a second unfinished
        // child, of the org: Conflict.
        tx.execute(
            "INSERT INTO operations (id, kind, org, phase, requested_by, started_ms, updated_ms,
               detail, parent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8)",
            params![
                new.id,
                new.kind,
                new.org.map_or("", |o| o.as_str()),
                new.phase,
                new.requested_by,
                now,
                new.detail.to_string(),
                new.parent.map(|p| p.id)
            ],
        )?;
        append_audit(&tx, new.requested_by, action, new.org, audit)?;
        let op = by_id(&tx, new.id)?
            .ok_or_else(|| StoreError::corrupt(format!("operation {} vanished", new.id)))?;
        tx.commit()?;
        Ok(op)
    }

    /// Moves an operation from the phase the caller saw to the next, with its audit entry, in
    /// one transaction. `None` if it is no longer in `from` (someone else moved it on, or it
    /// finished): the caller reads it again instead of repeating a side effect.
    pub fn advance_operation(&self, t: &Transition<'_>) -> Result<Option<OperationRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(op) = by_id(&tx, t.id)? else {
            return Ok(None);
        };
        if op.phase != t.from || op.finished_ms.is_some() {
            return Ok(None);
        }
        let now = now_ms();
        tx.execute(
            "UPDATE operations SET phase = ?2, updated_ms = ?3, finished_ms = ?4,
               error_kind = ?5, error = ?6, detail = COALESCE(?7, detail)
             WHERE id = ?1",
            params![
                t.id,
                t.to,
                now,
                t.finished.then_some(now),
                t.error.map(|e| e.0.as_str()),
                t.error.map(|e| e.1),
                t.detail.map(|d| d.to_string()),
            ],
        )?;
        if let Some(sw) = t.placement {
            let org = op
                .org
                .as_ref()
                .ok_or_else(|| StoreError::corrupt("a fleet operation switched a placement"))?;
            super::placements::switch_placement(&tx, org, &sw, t.id, now)?;
        }
        append_audit(&tx, t.actor, t.action, op.org.as_ref(), t.audit)?;
        let op = by_id(&tx, t.id)?;
        tx.commit()?;
        Ok(op)
    }

    /// Replaces an unfinished operation's detail without a change of phase (its progress
    /// counts; not audited: the phases are).
    pub fn set_operation_detail(&self, id: &str, detail: &serde_json::Value) -> Result<()> {
        self.lock().execute(
            "UPDATE operations SET detail = ?2 WHERE id = ?1 AND finished_ms IS NULL",
            params![id, detail.to_string()],
        )?;
        Ok(())
    }

    pub fn operation(&self, id: &str) -> Result<Option<OperationRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        by_id(&tx, id)
    }

    /// Every operation, newest first.
    pub fn operations(&self) -> Result<Vec<OperationRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{SELECT} ORDER BY started_ms DESC, id"))?;
        let rows = stmt.query_map([], row)?;
        rows.map(|r| check(r?)).collect()
    }

    /// The unfinished operations: the orgs they own are left alone by the reconciler.
    /// The org's unfinished operation, if any (one at most: a partial unique index says so).
    /// The unfinished operation of `org` (`None`: the unfinished fleet operation), if any.
    pub fn open_operation_of(&self, org: Option<&OrgId>) -> Result<Option<OperationRecord>> {
        let conn = self.lock();
        // The owner first, before a child it runs.
        let mut stmt = conn.prepare(&format!(
            "{SELECT} WHERE org = ?1 AND finished_ms IS NULL ORDER BY parent IS NOT NULL"
        ))?;
        let mut rows = stmt.query_map([org.map_or("", |o| o.as_str())], row)?;
        rows.next().map(|r| check(r?)).transpose()
    }

    /// The orgs an unfinished operation owns (their ids only: cheap at any number).
    pub fn owned_orgs(&self) -> Result<Vec<OrgId>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT org FROM operations WHERE finished_ms IS NULL AND org != ''")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|r| OrgId::try_from(r?).map_err(StoreError::corrupt))
            .collect()
    }

    /// The orgs whose operation of `kind` ended in `phase` since `since_ms`, with when (the
    /// latest per org).
    pub fn ended_since(&self, kind: &str, phase: &str, since_ms: i64) -> Result<Vec<(OrgId, i64)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT org, MAX(finished_ms) FROM operations
             WHERE kind = ?1 AND phase = ?2 AND finished_ms >= ?3 GROUP BY org",
        )?;
        let rows = stmt.query_map(params![kind, phase, since_ms], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        rows.map(|r| {
            let (org, at) = r?;
            Ok((OrgId::try_from(org).map_err(StoreError::corrupt)?, at))
        })
        .collect()
    }

    /// The operations started as steps of `parent`, oldest first.
    pub fn children_of(&self, parent: &str) -> Result<Vec<OperationRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "{SELECT} WHERE parent = ?1 ORDER BY started_ms, id"
        ))?;
        let rows = stmt.query_map([parent], row)?;
        rows.map(|r| check(r?)).collect()
    }

    pub fn open_operations(&self) -> Result<Vec<OperationRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!("{SELECT} WHERE finished_ms IS NULL ORDER BY id"))?;
        let rows = stmt.query_map([], row)?;
        rows.map(|r| check(r?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn start(store: &Store, id: &str, org: &OrgId) -> Result<OperationRecord> {
        store.start_operation(
            &NewOperation {
                id,
                kind: "move",
                org: Some(org),
                phase: "preparing",
                requested_by: "ops",
                detail: &json!({"to": "eu-central"}),
                parent: None,
            },
            "move.started",
            &json!({"to": "eu-central"}),
        )
    }

    fn step<'a>(id: &'a str, from: &'a str, to: &'a str, finished: bool) -> Transition<'a> {
        Transition {
            id,
            from,
            to,
            finished,
            error: None,
            detail: None,
            actor: "control",
            action: "move.phase",
            audit: &serde_json::Value::Null,
            placement: None,
        }
    }

    #[test]
    fn one_open_operation_per_org_and_phases_change_only_from_the_one_seen() {
        let (store, _) = super::super::db::temp_store();
        let org = OrgId::parse("acme").unwrap();
        let op = start(&store, "op-1", &org).unwrap();
        assert_eq!((op.phase.as_str(), op.finished_ms), ("preparing", None));
        assert!(matches!(
            start(&store, "op-2", &org),
            Err(StoreError::Conflict(_))
        ));

        let moved = store
            .advance_operation(&step("op-1", "preparing", "copying", false))
            .unwrap()
            .unwrap();
        assert_eq!(moved.phase, "copying");
        // A second caller that still saw `preparing` changes nothing.
        assert!(store
            .advance_operation(&step("op-1", "preparing", "copying", false))
            .unwrap()
            .is_none());
        let mut failed = step("op-1", "copying", "rolled_back", true);
        failed.error = Some((ErrorKind::Unavailable, "the target died"));
        let done = store.advance_operation(&failed).unwrap().unwrap();
        assert_eq!(done.error_kind, Some(ErrorKind::Unavailable));
        assert!(done.finished_ms.is_some());
        assert_eq!(done.detail, json!({"to": "eu-central"}));
        // A finished operation moves no further, and the org is free for the next one.
        assert!(store
            .advance_operation(&step("op-1", "rolled_back", "copying", false))
            .unwrap()
            .is_none());
        assert!(store.open_operations().unwrap().is_empty());
        start(&store, "op-3", &org).unwrap();
        assert_eq!(store.operations().unwrap().len(), 2);
        // Every start and transition is in the audit chain, which still verifies.
        assert_eq!(store.verify_audit().unwrap(), Ok(4));
    }

    fn child(store: &Store, id: &str, org: &OrgId, parent: &str) -> Result<OperationRecord> {
        store.start_operation(
            &NewOperation {
                id,
                kind: "move",
                org: Some(org),
                phase: "copying",
                requested_by: "ops",
                detail: &json!({}),
                parent: Some(ParentRef {
                    id: parent,
                    phase: "preparing",
                }),
            },
            "move.started",
            &json!({}),
        )
    }

    #[test]
    fn an_owner_may_run_one_child_at_a_time_and_only_while_it_is_unfinished() {
        let (store, _) = super::super::db::temp_store();
        let org = OrgId::parse("acme").unwrap();
        let other = OrgId::parse("globex").unwrap();
        start(&store, "owner", &org).unwrap();
        start(&store, "elsewhere", &other).unwrap();
        let c = child(&store, "child-1", &org, "owner").unwrap();
        assert_eq!(c.parent.as_deref(), Some("owner"));
        assert!(matches!(
            child(&store, "child-2", &org, "owner"),
            Err(StoreError::Conflict(_))
        ));
        assert!(
            matches!(
                child(&store, "child-x", &org, "elsewhere"),
                Err(StoreError::Stale(_))
            ),
            "a parent of another org is refused"
        );
        assert_eq!(
            store.open_operation_of(Some(&org)).unwrap().unwrap().id,
            "owner",
            "the owner is the org's open operation, not its child"
        );
        store
            .advance_operation(&step("child-1", "copying", "done", true))
            .unwrap()
            .unwrap();
        child(&store, "child-2", &org, "owner").unwrap();
        let kids: Vec<String> = store
            .children_of("owner")
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(kids, ["child-1", "child-2"]);
        store
            .advance_operation(&step("owner", "preparing", "copying", false))
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                child(&store, "child-3", &org, "owner"),
                Err(StoreError::Stale(_))
            ),
            "a parent no longer in the phase that starts children"
        );
        store
            .advance_operation(&step("owner", "copying", "done", true))
            .unwrap()
            .unwrap();
        assert!(matches!(
            child(&store, "child-3", &org, "owner"),
            Err(StoreError::Stale(_))
        ));
    }
}
