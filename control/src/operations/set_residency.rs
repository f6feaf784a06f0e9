//! Changing an org's residency policy to one that forbids where it is: `orgs set-residency ORG
//! POLICY --move-to REGION`, one audited operation. The whole change is in this file.
//!
//! ```text
//! widening ──► moving ──► purging ──► narrowing ──► done
//!    │            │
//!    └────────────┴──► reverting ──► rolled_back
//! ```
//!
//! - **widening**: the org's policy becomes the union of the old and the new one, audited as a
//!   policy change (`org.residency_changed`, naming this operation). While the org is carried
//!   from where the old policy put it to where the new one wants it, its data is in both, and
//!   the record says so: the residency report judges every interval by the policy in force.
//! - **moving**: a live move to `move_to` (`move_org.rs`), run as this operation's child (it
//!   names this one as its parent; the org stays owned by this operation). Skipped when the org
//!   already lives in `move_to`. A move that rolls back ends the change: **reverting** puts the
//!   old policy back, and the operation ends **rolled_back** with the move's reason.
//! - **purging**: every node of each region the new policy forbids that ever held the org (or,
//!   when none is left, any node of that region) gets `Destroy`: its files of the org, its trash
//!   included, and every backup object of the org in that region's store, its packed segments
//!   scrubbed from shared packs. Waited for: a node that is down is an alarm, not a skip. A live
//!   branch in a forbidden region is waited for too (the request refused one; one made since
//!   must be destroyed first).
//! - **narrowing**: the policy becomes the new one (audited); done.
//!
//! Past its move the change no longer depends on the org's node: if that node dies meanwhile,
//! the org is failed over as the change's child ([`failover_parent`]), not held back by a purge
//! that waits on another region.
//!
//! Keeps true: the org's data is only ever where the policy in force allows — old, union, new —
//! and the union lasts exactly as long as the org is carried over; every step is idempotent (a
//! policy step is a compare and set that finds its own result done, a destroy is asked again)
//! so a restarted control plane goes on where the store says.

use hemvist_proto::{ErrorKind, HemvistError, NodeId, OrgId, RegionId};
use serde::{Deserialize, Serialize};

use super::move_org::MoveRequest;
use super::{Operation, OperationKind, Phase};
use crate::clock::now_ms;
use crate::plane::Plane;
use crate::residency::ResidencyPolicy;
use crate::store::{OperationRecord, StoredResidency};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResidencyPhase {
    Widening,
    Moving,
    Purging,
    Narrowing,
    Done,
    Reverting,
    RolledBack,
}

impl Phase for ResidencyPhase {
    const KIND: OperationKind = OperationKind::SetResidency;
    const ALL: &'static [Self] = &[
        ResidencyPhase::Widening,
        ResidencyPhase::Moving,
        ResidencyPhase::Purging,
        ResidencyPhase::Narrowing,
        ResidencyPhase::Done,
        ResidencyPhase::Reverting,
        ResidencyPhase::RolledBack,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ResidencyPhase::Widening => "widening",
            ResidencyPhase::Moving => "moving",
            ResidencyPhase::Purging => "purging",
            ResidencyPhase::Narrowing => "narrowing",
            ResidencyPhase::Done => "done",
            ResidencyPhase::Reverting => "reverting",
            ResidencyPhase::RolledBack => "rolled_back",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, ResidencyPhase::Done | ResidencyPhase::RolledBack)
    }
}

/// What the change carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResidencyDetail {
    pub from: StoredResidency,
    pub to: StoredResidency,
    /// Old and new together: the policy while the org is carried over.
    pub during: StoredResidency,
    pub from_policy: String,
    pub to_policy: String,
    pub move_to: RegionId,
    pub reason: String,
    /// The move that carried the org, once it ended.
    #[serde(default)]
    pub moved_by: Option<String>,
    /// What was deleted: each forbidden region, and the nodes of it that destroyed the org.
    #[serde(default)]
    pub purged: PurgeTargets,
    #[serde(default)]
    pub purged_ms: Option<i64>,
}

type Change = Operation<ResidencyPhase>;

/// Each forbidden region, and the nodes of it that delete the org there.
type PurgeTargets = Vec<(RegionId, Vec<NodeId>)>;

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("set-residency: {e}"))
}

fn detail_json(d: &ResidencyDetail) -> Result<serde_json::Value, HemvistError> {
    serde_json::to_value(d).map_err(internal)
}

/// The policy that allows what either allows.
pub fn union(a: &ResidencyPolicy, b: &ResidencyPolicy) -> ResidencyPolicy {
    if a.is_unrestricted() || b.is_unrestricted() {
        return ResidencyPolicy::default();
    }
    ResidencyPolicy {
        jurisdictions: a.jurisdictions.union(&b.jurisdictions).cloned().collect(),
        regions: a.regions.union(&b.regions).cloned().collect(),
    }
}

impl Plane {
    /// Starts the change of `org` from `old` to `new`, carrying it to `move_to` (checked by the
    /// caller: configured, and allowed by `new`).
    pub(crate) fn begin_residency_change(
        &self,
        org: &OrgId,
        old: &ResidencyPolicy,
        new: &ResidencyPolicy,
        move_to: RegionId,
        reason: String,
        actor: &str,
    ) -> Result<OperationRecord, HemvistError> {
        let detail = ResidencyDetail {
            from: old.to_stored(),
            to: new.to_stored(),
            during: union(old, new).to_stored(),
            from_policy: old.describe(),
            to_policy: new.describe(),
            move_to,
            reason,
            moved_by: None,
            purged: Vec::new(),
            purged_ms: None,
        };
        let op = self.begin(org, ResidencyPhase::Widening, actor, detail_json(&detail)?)?;
        self.wake_operations.notify_one();
        Ok(op.record)
    }

    /// Cancels a change while it can go back: before its move's switch (the move rolls back,
    /// then the change reverts), or before its move has started.
    pub fn cancel_residency_change(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<OperationRecord, HemvistError> {
        let why = HemvistError::new(ErrorKind::Cancelled, format!("cancelled by {actor}"));
        for _ in 0..5 {
            let op: Change = self.operation(id)?.try_into()?;
            let open_child = self
                .store
                .children_of(id)?
                .into_iter()
                .find(|c| c.finished_ms.is_none());
            match (op.phase, open_child) {
                (ResidencyPhase::Moving, Some(child)) => {
                    // The move rolls back; this change then reverts the policy.
                    self.cancel_move(&child.id, actor)?;
                    return self.operation(id);
                }
                (ResidencyPhase::Widening | ResidencyPhase::Moving, None) => {
                    // No move under way: straight to reverting. A move the driver is about to
                    // start is refused by the store (its parent is no longer `moving`).
                    let reverting = self.fail_with(
                        &op,
                        ResidencyPhase::Reverting,
                        &why,
                        op.record.detail.clone(),
                    )?;
                    if reverting.is_some() {
                        self.wake_operations.notify_one();
                        return self.operation(id);
                    }
                    // The driver moved it on meanwhile: look again.
                }
                (ResidencyPhase::Reverting | ResidencyPhase::RolledBack, _) => {
                    return Err(HemvistError::conflict(format!(
                        "operation {id} is {} already",
                        op.phase.as_str()
                    )))
                }
                (phase, _) => {
                    return Err(HemvistError::conflict(format!(
                        "operation {id} is {}: the org has been carried over, so the change \
                         can only finish",
                        phase.as_str()
                    )))
                }
            }
        }
        Err(HemvistError::conflict(format!(
            "operation {id} kept changing; try again"
        )))
    }
}

/// The residency change owning `org` that lets a failover of it run as its child, and the phase
/// it is in: one past its move (purging, narrowing), which no longer depends on the org's node,
/// with no child running. A failover is never held back by a purge waiting on another region.
pub fn failover_parent(
    plane: &Plane,
    org: &OrgId,
) -> Result<Option<(String, &'static str)>, HemvistError> {
    let Some(owner) = plane.store.open_operation_of(Some(org))? else {
        return Ok(None);
    };
    if owner.kind != OperationKind::SetResidency.as_str() {
        return Ok(None);
    }
    let phase = match ResidencyPhase::parse(&owner.phase) {
        Some(p @ (ResidencyPhase::Purging | ResidencyPhase::Narrowing)) => p.as_str(),
        _ => return Ok(None),
    };
    if plane
        .store
        .children_of(&owner.id)?
        .iter()
        .any(|c| c.finished_ms.is_none())
    {
        return Ok(None);
    }
    Ok(Some((owner.id, phase)))
}

pub fn step(plane: &Plane, record: OperationRecord) -> Result<(), HemvistError> {
    let op: Change = record.try_into()?;
    let d: ResidencyDetail = serde_json::from_value(op.record.detail.clone()).map_err(internal)?;
    match op.phase {
        ResidencyPhase::Widening => widening(plane, &op, d),
        ResidencyPhase::Moving => moving(plane, &op, d),
        ResidencyPhase::Purging => purging(plane, &op, d),
        ResidencyPhase::Narrowing => narrowing(plane, &op, d),
        ResidencyPhase::Reverting => reverting(plane, &op, d),
        ResidencyPhase::Done | ResidencyPhase::RolledBack => Ok(()),
    }
}

/// Sets the org's policy from `expected` to `to`, audited; done already counts. A policy that
/// is neither was changed behind the operation's back: an internal error (it waits).
fn swap_policy(
    plane: &Plane,
    op: &Change,
    expected: &StoredResidency,
    to: &StoredResidency,
    d: &ResidencyDetail,
) -> Result<(), HemvistError> {
    let org = plane
        .store
        .org(op.org())?
        .ok_or_else(|| HemvistError::not_found(format!("no org {}", op.org())))?;
    if org.residency == *to {
        return Ok(());
    }
    if org.residency != *expected {
        return Err(internal(format!(
            "org {}'s policy is {}, neither the expected {} nor {}",
            op.org(),
            ResidencyPolicy::from_stored(&org.residency).describe(),
            ResidencyPolicy::from_stored(expected).describe(),
            ResidencyPolicy::from_stored(to).describe()
        )));
    }
    let detail = serde_json::json!({
        "from": ResidencyPolicy::from_stored(expected).describe(),
        "to": ResidencyPolicy::from_stored(to).describe(),
        "residency": to,
        "reason": d.reason,
        "operation": op.record.id,
        "phase": op.phase.as_str(),
    });
    if !plane
        .store
        .set_residency(op.org(), expected, to, &op.record.requested_by, &detail)?
    {
        return Err(HemvistError::conflict(format!(
            "org {}'s policy changed meanwhile; will look again",
            op.org()
        )));
    }
    tracing::info!(org = %op.org(), operation = %op.record.id,
        to = %ResidencyPolicy::from_stored(to).describe(), "residency policy set by an operation");
    Ok(())
}

/// The union in force; then the move, unless the org is there already.
fn widening(plane: &Plane, op: &Change, d: ResidencyDetail) -> Result<(), HemvistError> {
    swap_policy(plane, op, &d.from, &d.during, &d)?;
    let org = plane
        .store
        .org(op.org())?
        .ok_or_else(|| HemvistError::not_found(format!("no org {}", op.org())))?;
    let next = if org.home_region == d.move_to {
        ResidencyPhase::Purging
    } else {
        ResidencyPhase::Moving
    };
    if let Some(next) = plane.advance(op, next, None)? {
        step(plane, next.record)?;
    }
    Ok(())
}

/// Starts the move as this operation's child, once, and waits for its end.
fn moving(plane: &Plane, op: &Change, mut d: ResidencyDetail) -> Result<(), HemvistError> {
    let Some(child) = plane.store.children_of(&op.record.id)?.pop() else {
        let req = MoveRequest {
            to: d.move_to.to_string(),
            node: None,
            reason: Some(format!(
                "residency change {} to {}{}",
                op.record.id,
                d.to_policy,
                if d.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.reason)
                }
            )),
        };
        match plane.start_move(
            op.org().as_str(),
            req,
            &op.record.requested_by,
            Some(crate::store::ParentRef {
                id: &op.record.id,
                phase: ResidencyPhase::Moving.as_str(),
            }),
        ) {
            Ok(m) => {
                tracing::info!(operation = %op.record.id, r#move = %m.id, "residency change: moving the org")
            }
            Err(e) if e.kind == ErrorKind::Unavailable => {
                // No healthy node to move to (yet): waited for, with an alarm.
                plane.watch_stall(op, plane.config.move_stall_ms as i64, || {
                    format!("a move of {} to {}: {e}", op.org(), d.move_to)
                });
            }
            Err(e) => {
                let why = HemvistError::new(
                    e.kind,
                    format!("the move to {} could not start: {}", d.move_to, e.message),
                );
                plane.fail_with(op, ResidencyPhase::Reverting, &why, detail_json(&d)?)?;
            }
        }
        return Ok(());
    };
    if child.finished_ms.is_none() {
        return Ok(());
    }
    d.moved_by = Some(child.id.clone());
    if child.phase == "done" {
        if let Some(next) = plane.advance(op, ResidencyPhase::Purging, Some(detail_json(&d)?))? {
            step(plane, next.record)?;
        }
        return Ok(());
    }
    let why = HemvistError::new(
        child.error_kind.unwrap_or(ErrorKind::Unavailable),
        format!(
            "the move {} ended {}: {}; the policy stays {}",
            child.id,
            child.phase,
            child.error.as_deref().unwrap_or("no reason given"),
            d.from_policy
        ),
    );
    if let Some(next) = plane.fail_with(op, ResidencyPhase::Reverting, &why, detail_json(&d)?)? {
        step(plane, next.record)?;
    }
    Ok(())
}

/// The nodes that delete the org from each region the new policy forbids: those of the region
/// that ever held it, or any one of it when none of them is left (the region's store is shared).
fn purge_targets(
    plane: &Plane,
    org: &OrgId,
    to: &ResidencyPolicy,
) -> Result<Result<PurgeTargets, String>, HemvistError> {
    let forbidden = |region: &RegionId| {
        plane
            .config
            .regions
            .iter()
            .find(|r| r.id == *region)
            .is_none_or(|r| !to.allows(r))
    };
    let nodes = plane.store.nodes()?;
    let mut targets: PurgeTargets = Vec::new();
    for span in plane.store.placement_history(org)? {
        if !forbidden(&span.region) {
            continue;
        }
        if span.to_ms.is_none() {
            return Ok(Err(format!(
                "{org} still lives in {}, which the new policy forbids",
                span.region
            )));
        }
        let entry = match targets.iter_mut().find(|(r, _)| *r == span.region) {
            Some(e) => e,
            None => {
                targets.push((span.region.clone(), Vec::new()));
                targets.last_mut().expect("just pushed")
            }
        };
        if nodes.iter().any(|n| n.id == span.node_id) && !entry.1.contains(&span.node_id) {
            entry.1.push(span.node_id.clone());
        }
    }
    for (region, held) in &mut targets {
        if held.is_empty() {
            match nodes
                .iter()
                .filter(|n| n.region == *region)
                .min_by_key(|n| n.id.clone())
            {
                Some(n) => held.push(n.id.clone()),
                None => {
                    return Ok(Err(format!(
                        "region {region} holds backups of {org} and has no node to delete them"
                    )))
                }
            }
        }
    }
    Ok(Ok(targets))
}

/// Every forbidden region cleared of the org, then the new policy.
fn purging(plane: &Plane, op: &Change, mut d: ResidencyDetail) -> Result<(), HemvistError> {
    let to = ResidencyPolicy::from_stored(&d.to);
    let branches: Vec<String> = plane
        .store
        .live_branches(Some(op.org()))?
        .into_iter()
        .filter(|b| {
            plane
                .config
                .regions
                .iter()
                .find(|r| r.id == b.region)
                .is_none_or(|r| !to.allows(r))
        })
        .map(|b| format!("{} in {}", b.id, b.region))
        .collect();
    if !branches.is_empty() {
        plane.watch_stall(op, 0, || {
            format!(
                "its branches where the new policy forbids to be destroyed: {}",
                branches.join(", ")
            )
        });
        return Ok(());
    }
    let targets = match purge_targets(plane, op.org(), &to)? {
        Ok(t) => t,
        Err(why) => {
            plane.watch_stall(op, 0, || why);
            return Ok(());
        }
    };
    let generation = plane
        .store
        .org(op.org())?
        .ok_or_else(|| HemvistError::not_found(format!("no org {}", op.org())))?
        .generation;
    // One node of a region at a time: nodes of one region share its store, and two scrubbing
    // the same shared pack at once could write back one another's (`scrub.rs`).
    let mut all = true;
    for (_, nodes) in &targets {
        for node in nodes {
            if !super::destroy_on_node(plane, op, node, generation)? {
                all = false;
                break;
            }
        }
    }
    if !all {
        return Ok(());
    }
    d.purged = targets;
    d.purged_ms = Some(now_ms());
    if let Some(next) = plane.advance(op, ResidencyPhase::Narrowing, Some(detail_json(&d)?))? {
        step(plane, next.record)?;
    }
    Ok(())
}

fn narrowing(plane: &Plane, op: &Change, d: ResidencyDetail) -> Result<(), HemvistError> {
    swap_policy(plane, op, &d.during, &d.to, &d)?;
    if plane.advance(op, ResidencyPhase::Done, None)?.is_some() {
        plane.forget_operation(&op.record.id);
        tracing::info!(org = %op.org(), operation = %op.record.id, policy = %d.to_policy,
            "residency policy changed, the org carried over");
    }
    Ok(())
}

/// The old policy back; first, a copy the rolled-back move may have left on its target where
/// the old policy forbids (a target that did not answer its discard) is destroyed there.
fn reverting(plane: &Plane, op: &Change, d: ResidencyDetail) -> Result<(), HemvistError> {
    let old = ResidencyPolicy::from_stored(&d.from);
    if let Some(child) = plane.store.children_of(&op.record.id)?.pop() {
        let target = |k: &str| child.detail[k].as_str().map(str::to_string);
        if let (Some(node), Some(region)) = (target("to_node"), target("to_region")) {
            let forbidden = plane
                .config
                .regions
                .iter()
                .find(|r| r.id.as_str() == region)
                .is_none_or(|r| !old.allows(r));
            let discarded = plane
                .store
                .command(&format!("{}.rollback-in", child.id))?
                .is_some_and(|c| c.state == crate::store::CommandState::Done);
            if forbidden && !discarded {
                let node = NodeId::parse(&node)?;
                let generation = plane
                    .store
                    .org(op.org())?
                    .ok_or_else(|| HemvistError::not_found(format!("no org {}", op.org())))?
                    .generation;
                if !super::destroy_on_node(plane, op, &node, generation)? {
                    return Ok(());
                }
            }
        }
    }
    swap_policy(plane, op, &d.during, &d.from, &d)?;
    let why = HemvistError::new(
        op.record.error_kind.unwrap_or(ErrorKind::Internal),
        op.record.error.clone().unwrap_or_default(),
    );
    if plane.fail(op, ResidencyPhase::RolledBack, &why)?.is_some() {
        plane.forget_operation(&op.record.id);
        tracing::warn!(org = %op.org(), operation = %op.record.id, policy = %d.from_policy,
            "residency change rolled back; the old policy stands");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(regions: &[&str], jurisdictions: &[&str]) -> ResidencyPolicy {
        ResidencyPolicy {
            regions: regions
                .iter()
                .map(|r| RegionId::parse(r).unwrap())
                .collect(),
            jurisdictions: jurisdictions.iter().map(|j| j.to_string()).collect(),
        }
    }

    #[test]
    fn the_union_allows_what_either_allows_and_anywhere_absorbs() {
        let a = policy(&["eu-north"], &[]);
        let b = policy(&["eu-central"], &["US"]);
        let u = union(&a, &b);
        assert_eq!(u, policy(&["eu-central", "eu-north"], &["US"]));
        assert!(union(&a, &ResidencyPolicy::default()).is_unrestricted());
        assert_eq!(union(&a, &a), a);
    }
}
