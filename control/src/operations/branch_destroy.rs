//! The end of a branch: destroyed at its expiry (the dead man's switch) or by hand. The whole
//! destruction is in this file.
//!
//! ```text
//! destroying ──► done
//! ```
//!
//! - **expiry**: every pass of the operations' driver looks for live branches past their expiry
//!   that no operation owns, and starts the destruction of each (a branch still being made is
//!   destroyed once its creation ends, either way). The expiry is in the store, so it survives
//!   restarts; the operation is the one record of it, so it runs once.
//! - **destroying**: every node that held the branch (its node, and the one it was made on if
//!   it was then moved to its region) stops hosting it, deletes its files (no trash) and every
//!   backup object of it in its region's store, packed segments released (`Destroy`; what
//!   others' packs still hold of it is sealed with its data key, which goes with its org row).
//!   Then its org, placement and key are forgotten and its branch row marked destroyed, in one
//!   transaction audited `branch.destroyed`; every node forgets its placement.
//!
//! Keeps true: a branch is destroyed once (the forgetting is a compare and set on its row,
//! audited in the same transaction); its parent is never touched; a node that is down when the
//! branch expires is waited for (alarm after `move_stall_ms`): its copy is never left behind.

use hemvist_proto::{HemvistError, OrgId};
use serde::{Deserialize, Serialize};

use super::{Operation, OperationKind, Phase};
use crate::clock::now_ms;
use crate::link::{BranchLabels, PlacementUpdate};
use crate::plane::Plane;
use crate::store::OperationRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyPhase {
    Destroying,
    Done,
}

impl Phase for DestroyPhase {
    const KIND: OperationKind = OperationKind::BranchDestroy;
    const ALL: &'static [Self] = &[DestroyPhase::Destroying, DestroyPhase::Done];

    fn as_str(self) -> &'static str {
        match self {
            DestroyPhase::Destroying => "destroying",
            DestroyPhase::Done => "done",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, DestroyPhase::Done)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DestroyDetail {
    /// `expired` or `destroyed by hand`.
    pub why: String,
    pub parent: OrgId,
    pub expires_ms: i64,
}

type Destroy = Operation<DestroyPhase>;

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("branch destroy: {e}"))
}

impl Plane {
    /// Destroys a branch now, as asked by `actor`.
    pub fn destroy_branch(&self, id: &str, actor: &str) -> Result<OperationRecord, HemvistError> {
        let id = OrgId::parse(id)?;
        let branch = self
            .store
            .branch(&id)?
            .filter(|b| b.destroyed_ms.is_none())
            .ok_or_else(|| HemvistError::not_found(format!("no live branch {id}")))?;
        let op = self.begin(
            &id,
            DestroyPhase::Destroying,
            actor,
            detail(&DestroyDetail {
                why: format!("destroyed by {actor}"),
                parent: branch.parent,
                expires_ms: branch.expires_ms,
            })?,
        )?;
        self.wake_operations.notify_one();
        Ok(op.record)
    }
}

fn detail(d: &DestroyDetail) -> Result<serde_json::Value, HemvistError> {
    serde_json::to_value(d).map_err(internal)
}

/// Starts the destruction of every live branch past its expiry that no operation owns.
pub fn expire(plane: &Plane) -> Result<(), HemvistError> {
    let now = now_ms();
    let expired = plane.store.expired_branches(now)?;
    if expired.is_empty() {
        return Ok(());
    }
    let owned = plane.owned_orgs()?;
    for b in expired {
        if owned.contains(&b.id) {
            continue;
        }
        tracing::warn!(branch = %b.id, parent = %b.parent, expired_ms_ago = now - b.expires_ms,
            "branch expired: destroying it");
        start(plane, &b, "expired")?;
    }
    Ok(())
}

/// Starts the destruction of `b` (by the control plane, saying why); nothing if another
/// operation owns it (a pass, or an operator, got there first).
pub(crate) fn start(
    plane: &Plane,
    b: &crate::store::BranchRecord,
    why: &str,
) -> Result<(), HemvistError> {
    let started = plane.begin(
        &b.id,
        DestroyPhase::Destroying,
        "control",
        detail(&DestroyDetail {
            why: why.into(),
            parent: b.parent.clone(),
            expires_ms: b.expires_ms,
        })?,
    );
    match started {
        Ok(op) => destroying(plane, &op),
        Err(e) if e.kind == hemvist_proto::ErrorKind::Conflict => Ok(()),
        Err(e) => Err(e),
    }
}

/// Starts the move of every live branch made in its parent's region for another one, that is
/// not there yet and that no operation owns (the branch's own operation ended; a crash between
/// its end and its move's start is caught by the next pass).
pub fn move_strays(plane: &Plane) -> Result<(), HemvistError> {
    let strays = plane.store.stray_branches()?;
    if strays.is_empty() {
        return Ok(());
    }
    let owned = plane.owned_orgs()?;
    for b in strays {
        if owned.contains(&b.id) {
            continue;
        }
        let asked = crate::operations::move_org::MoveRequest {
            to: b.region.to_string(),
            node: None,
            reason: Some(format!("branch {} is to live in {}", b.id, b.region)),
        };
        match plane.request_move(b.id.as_str(), asked, &b.owner) {
            Ok(op) => {
                tracing::info!(branch = %b.id, to = %b.region, operation = %op.id,
                    "moving a branch to its region")
            }
            // No healthy node there yet, or busy: the next pass tries again.
            Err(e) => tracing::debug!(branch = %b.id, error = %e, "branch not moved yet"),
        }
    }
    Ok(())
}

pub fn step(plane: &Plane, record: OperationRecord) -> Result<(), HemvistError> {
    let op: Destroy = record.try_into()?;
    match op.phase {
        DestroyPhase::Destroying => destroying(plane, &op),
        DestroyPhase::Done => Ok(()),
    }
}

fn destroying(plane: &Plane, op: &Destroy) -> Result<(), HemvistError> {
    let d: DestroyDetail = serde_json::from_value(op.record.detail.clone()).map_err(internal)?;
    if let Some(org) = plane.store.org(op.org())? {
        // Every node that held this branch: a branch moved to its region left its first copy
        // (in the trash) and backups in its parent's region.
        let created = plane.store.branch(op.org())?.map_or(0, |b| b.created_ms);
        let mut nodes = vec![org.node_id.clone()];
        for span in plane.store.placement_history(op.org())? {
            if span.to_ms.is_none_or(|t| t >= created) && !nodes.contains(&span.node_id) {
                nodes.push(span.node_id);
            }
        }
        let mut all = true;
        for node in &nodes {
            all &= super::destroy_on_node(plane, op, node, org.generation)?;
        }
        if !all {
            return Ok(());
        }
    }
    forget(plane, op.org(), &d.why, &op.record.id)?;
    if plane.advance(op, DestroyPhase::Done, None)?.is_some() {
        plane.forget_operation(&op.record.id);
        tracing::warn!(branch = %op.org(), why = %d.why, "branch destroyed");
    }
    Ok(())
}

/// Forgets the branch's org and marks it destroyed (once), and tells every node.
pub(crate) fn forget(
    plane: &Plane,
    id: &OrgId,
    why: &str,
    operation: &str,
) -> Result<(), HemvistError> {
    let node = plane.store.org(id)?.map(|o| o.node_id);
    plane.store.forget_branch(id, why, operation)?;
    plane
        .backed_up
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
    plane
        .branch_used
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
    plane.nodes.broadcast_placements(PlacementUpdate {
        full: false,
        placements: Vec::new(),
        removed: vec![id.clone()],
    });
    if let Some(node) = node {
        plane.nodes.send_branch_labels(
            &node,
            BranchLabels {
                full: false,
                labels: Vec::new(),
                removed: vec![id.clone()],
            },
        );
    }
    Ok(())
}
