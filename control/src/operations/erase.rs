//! GDPR erasure of an org: its database on every node that ever held it (the trash included),
//! every backup object of it in every region it lived in (packed segments released; what other
//! tenants' packs still hold is sealed with its data key, destroyed here), every branch, its
//! placement in every node's cache, and its data key; a receipt in the audit log; its id
//! tombstoned. The whole erasure is in this file.
//!
//! ```text
//! branches ──► destroying ──► done
//! ```
//!
//! - **request**: confirmed with the org's own id; refused while another operation (a move)
//!   owns the org — `begin` says which.
//! - **branches**: every live branch of the org is destroyed (`branch_destroy`), and waited for.
//! - **destroying**: `Destroy` on every node that ever held the org (its placement history),
//!   each of which deletes its files and purges its region's store of the org; once all have
//!   answered, the org's desired state and data key are deleted and its tombstone and receipt
//!   written, in one transaction (`Store::erase_org`); every node forgets its placement.
//!
//! Keeps true: idempotent and resumable — each step is driven again after a crash, a node
//! destroys what is left (or finds nothing), and the receipt is written once, with the
//! tombstone; a node that is down is waited for (an alarm after `move_stall_ms`), never skipped.

use hemvist_proto::{HemvistError, NodeId, OrgId, RegionId};
use serde::{Deserialize, Serialize};

use super::{Operation, OperationKind, Phase};
use crate::link::PlacementUpdate;
use crate::plane::Plane;
use crate::store::OperationRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasePhase {
    Branches,
    Destroying,
    Done,
}

impl Phase for ErasePhase {
    const KIND: OperationKind = OperationKind::Erase;
    const ALL: &'static [Self] = &[
        ErasePhase::Branches,
        ErasePhase::Destroying,
        ErasePhase::Done,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ErasePhase::Branches => "branches",
            ErasePhase::Destroying => "destroying",
            ErasePhase::Done => "done",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, ErasePhase::Done)
    }
}

/// `POST /api/v1/orgs/{id}/erase`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseRequest {
    /// The org's id again: erasure cannot be undone.
    #[serde(default)]
    pub confirm: Option<String>,
}

/// Where the org's data was, as the request found it: what the receipt names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EraseDetail {
    /// Every node that ever held it, and its region.
    pub nodes: Vec<(NodeId, RegionId)>,
    /// Its branches when the erasure began.
    pub branches: Vec<OrgId>,
}

type Erase = Operation<ErasePhase>;

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("erase: {e}"))
}

impl Plane {
    /// Starts the erasure of `id` (see the module doc).
    pub fn request_erase(
        &self,
        id: &str,
        req: EraseRequest,
        actor: &str,
    ) -> Result<OperationRecord, HemvistError> {
        let org = OrgId::parse(id)?;
        if org.is_branch() {
            return Err(HemvistError::invalid(format!(
                "{org} is a branch: `hemvist branch destroy {org}` destroys it"
            )));
        }
        if req.confirm.as_deref().map(str::trim) != Some(org.as_str()) {
            return Err(HemvistError::invalid(format!(
                "erasing {org} cannot be undone: confirm with its id (`--confirm {org}`, or \
                 \"confirm\": \"{org}\"); nothing was done"
            )));
        }
        if self.store.org(&org)?.is_none() {
            return Err(match self.store.tombstone(&org)? {
                Some(at) => HemvistError::conflict(format!("org {org} was erased at {at} ms")),
                None => HemvistError::not_found(format!("no org {org}")),
            });
        }
        let mut nodes: Vec<(NodeId, RegionId)> = Vec::new();
        for span in self.store.placement_history(&org)? {
            if !nodes.iter().any(|(n, _)| *n == span.node_id) {
                nodes.push((span.node_id, span.region));
            }
        }
        let branches = self
            .store
            .live_branches(Some(&org))?
            .into_iter()
            .map(|b| b.id)
            .collect();
        let detail = EraseDetail { nodes, branches };
        let op = self.begin(
            &org,
            ErasePhase::Branches,
            actor,
            serde_json::to_value(&detail).map_err(internal)?,
        )?;
        self.wake_operations.notify_one();
        Ok(op.record)
    }
}

pub fn step(plane: &Plane, record: OperationRecord) -> Result<(), HemvistError> {
    let op: Erase = record.try_into()?;
    let d: EraseDetail = serde_json::from_value(op.record.detail.clone()).map_err(internal)?;
    match op.phase {
        ErasePhase::Branches => branches(plane, &op, d),
        ErasePhase::Destroying => destroying(plane, &op, d),
        ErasePhase::Done => Ok(()),
    }
}

/// Every live branch of the org destroyed, waited for.
fn branches(plane: &Plane, op: &Erase, d: EraseDetail) -> Result<(), HemvistError> {
    let live = plane.store.live_branches(Some(op.org()))?;
    if !live.is_empty() {
        let owned = plane.owned_orgs()?;
        for b in live.iter().filter(|b| !owned.contains(&b.id)) {
            super::branch_destroy::start(plane, b, &format!("its parent {} was erased", op.org()))?;
        }
        plane.watch_stall(op, plane.config.move_stall_ms as i64, || {
            format!("{} branches of {} to be destroyed", live.len(), op.org())
        });
        return Ok(());
    }
    if let Some(next) = plane.advance(op, ErasePhase::Destroying, None)? {
        destroying(plane, &next, d)?;
    }
    Ok(())
}

/// Every node that held the org destroys what it has of it; then the org is forgotten, its key
/// with it, and its receipt written.
fn destroying(plane: &Plane, op: &Erase, d: EraseDetail) -> Result<(), HemvistError> {
    if let Some(org) = plane.store.org(op.org())? {
        let mut all = true;
        for (node, _) in &d.nodes {
            all &= super::destroy_on_node(plane, op, node, org.generation)?;
        }
        if !all {
            return Ok(());
        }
        let mut regions: Vec<&RegionId> = d.nodes.iter().map(|(_, r)| r).collect();
        regions.sort();
        regions.dedup();
        let receipt = serde_json::json!({
            "operation": op.record.id,
            "requested_by": op.record.requested_by,
            "deleted": {
                "database_on_nodes": d.nodes.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "backups_in_regions": regions,
                "branches": d.branches,
                "placement": true,
            },
            "data_key": "destroyed",
            "generation": org.generation.get(),
        });
        plane
            .store
            .erase_org(op.org(), &op.record.id, &op.record.requested_by, &receipt)?;
        plane
            .backed_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(op.org());
        plane.nodes.broadcast_placements(PlacementUpdate {
            full: false,
            placements: Vec::new(),
            removed: vec![op.org().clone()],
        });
    }
    if plane.advance(op, ErasePhase::Done, None)?.is_some() {
        plane.forget_operation(&op.record.id);
        tracing::warn!(org = %op.org(), operation = %op.record.id, "org erased");
    }
    Ok(())
}
