//! Failing an org over from a dead node to another node of its region. The whole failover is in
//! this file: how a dead node is told from a slow one, and each org's own operation.
//!
//! ```text
//! placing ──► restoring ──► done
//!                 │
//!                 └──► failed   (the new node refused for good: the org stays placed there,
//!                                and the reconciler keeps asking, loudly)
//! ```
//!
//! - **detection**: a node whose lease has been gone for `failover_grace_ms` (its lease ends
//!   `lease_ttl_ms` after its last heartbeat, counted from no earlier than this control plane's
//!   start, so a control plane that was itself down fails nobody over at boot) is dead; each org placed on it that no operation owns
//!   gets a failover.
//! - **placing**: the least loaded healthy node of the same region (the org's policy allowed
//!   that region, and nothing else is considered) is recorded, in the same transaction as the
//!   placement switch to it under a new generation. If none is healthy, the failover waits.
//! - **restoring**: the new node hosts the org from the region's store (`Host`, expecting a
//!   backup once one was ever reported): a sync org's every acknowledged write is there, an
//!   async one's up to its backup interval. Every node learns the new placement.
//!
//! Keeps true: never two writers — the dead node stopped acknowledging writes when its lease ran
//! out (measured on the node, long before the grace period ends), and if it comes back it finds
//! its generation superseded, is fenced, and its copy is dropped to `trash/` by the reconciler.

use hemvist_proto::{Generation, HemvistError, NodeId, OrgId, RegionId};
use serde::{Deserialize, Serialize};

use super::{Operation, OperationKind, Phase, Step};
use crate::clock::now_ms;
use crate::plane::Plane;
use crate::store::{CommandKind, CommandState, OperationRecord, PlacementSwitch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverPhase {
    Placing,
    Restoring,
    Done,
    Failed,
}

impl Phase for FailoverPhase {
    const KIND: OperationKind = OperationKind::Failover;
    const ALL: &'static [Self] = &[
        FailoverPhase::Placing,
        FailoverPhase::Restoring,
        FailoverPhase::Done,
        FailoverPhase::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            FailoverPhase::Placing => "placing",
            FailoverPhase::Restoring => "restoring",
            FailoverPhase::Done => "done",
            FailoverPhase::Failed => "failed",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, FailoverPhase::Done | FailoverPhase::Failed)
    }
}

/// What a failover records beyond its phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverDetail {
    pub region: RegionId,
    pub from_node: NodeId,
    pub from_generation: Generation,
    /// When the dead node was last heard from.
    pub last_seen_ms: i64,
    #[serde(default)]
    pub to_node: Option<NodeId>,
    #[serde(default)]
    pub to_generation: Option<Generation>,
    /// When the new node took the org (writes are acknowledged again).
    #[serde(default)]
    pub serving_ms: Option<i64>,
}

type Failover = Operation<FailoverPhase>;

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("failover: {e}"))
}

fn detail_json(d: &FailoverDetail) -> Result<serde_json::Value, HemvistError> {
    serde_json::to_value(d).map_err(internal)
}

/// Since when `node` has been silent, if that is past its lease and the grace period after it
/// (its orgs are failed over), `None` while it is alive or not yet given up on.
fn dead_since(plane: &Plane, node: &NodeId, last_seen_ms: i64) -> Option<i64> {
    if plane.nodes.healthy(node) {
        return None;
    }
    // The lease runs out `lease_ttl_ms` after the last heartbeat; the grace period starts then.
    let grace = (plane.config.lease_ttl_ms + plane.config.failover_grace_ms) as i64;
    let silent_since = plane.silent_since_ms(node, last_seen_ms);
    (now_ms() - silent_since >= grace).then_some(silent_since)
}

/// Whether `node` is dead (its orgs would be failed over): for an operation that waits on it.
pub fn is_dead(plane: &Plane, node: &NodeId) -> Result<bool, HemvistError> {
    let last_seen = plane.store.node(node)?.map_or(0, |n| n.last_seen_ms);
    Ok(dead_since(plane, node, last_seen).is_some())
}

/// Which unfinished operation owning an org lets a failover of it run as its child, and in
/// which of its phases (the driver knows every kind; see `set_residency::failover_parent`).
pub type FailoverParent<'a> =
    &'a dyn Fn(&OrgId) -> Result<Option<(String, &'static str)>, HemvistError>;

/// Starts a failover for every org of every dead node that no operation owns yet, or whose
/// owner lets it run as its child (`parent_of`).
pub fn detect(plane: &Plane, parent_of: FailoverParent<'_>) -> Result<(), HemvistError> {
    let now = now_ms();
    let mut owned = None;
    for node in plane.store.nodes()? {
        let Some(silent_since) = dead_since(plane, &node.id, node.last_seen_ms) else {
            continue;
        };
        let orgs = plane.store.orgs_on_node(&node.id)?;
        if orgs.is_empty() {
            continue;
        }
        let owned = match &mut owned {
            Some(o) => o,
            None => owned.insert(plane.owned_orgs()?),
        };
        for org in orgs {
            // An owner that does not hold the org's node (a residency change past its move)
            // runs the failover as its child; any other owner handles the dead node itself.
            let parent = if owned.contains(&org.id) {
                match parent_of(&org.id)? {
                    Some(p) => Some(p),
                    None => continue,
                }
            } else {
                None
            };
            let detail = FailoverDetail {
                region: org.home_region.clone(),
                from_node: node.id.clone(),
                from_generation: org.generation,
                last_seen_ms: silent_since,
                to_node: None,
                to_generation: None,
                serving_ms: None,
            };
            let actor = format!("control (node {} silent since {silent_since})", node.id);
            let started = match &parent {
                None => plane.begin(
                    &org.id,
                    FailoverPhase::Placing,
                    &actor,
                    detail_json(&detail)?,
                ),
                Some((id, phase)) => plane.begin_child(
                    &org.id,
                    FailoverPhase::Placing,
                    &actor,
                    detail_json(&detail)?,
                    crate::store::ParentRef { id, phase },
                ),
            };
            match started {
                Ok(op) => {
                    tracing::warn!(operation = %op.record.id, org = %org.id, node = %node.id,
                        silent_ms = now - silent_since, "node dead past its grace period; failing its org over");
                    owned.insert(org.id);
                }
                Err(e) => tracing::warn!(org = %org.id, error = %e, "cannot start a failover"),
            }
        }
    }
    Ok(())
}

/// Does what the failover's phase needs next.
pub fn step(plane: &Plane, record: OperationRecord) -> Result<(), HemvistError> {
    let op: Failover = record.try_into()?;
    let d: FailoverDetail = serde_json::from_value(op.record.detail.clone()).map_err(internal)?;
    match op.phase {
        FailoverPhase::Placing => placing(plane, &op, d),
        FailoverPhase::Restoring => restoring(plane, &op, d),
        FailoverPhase::Done | FailoverPhase::Failed => Ok(()),
    }
}

fn placing(plane: &Plane, op: &Failover, mut d: FailoverDetail) -> Result<(), HemvistError> {
    let org = plane
        .store
        .org(op.org())?
        .ok_or_else(|| internal(format!("org {} vanished", op.org())))?;
    if org.node_id != d.from_node || org.generation != d.from_generation {
        // Placed elsewhere meanwhile (by an operator, say): nothing to fail over.
        let why = HemvistError::conflict(format!(
            "org {} is no longer on {} at {}",
            org.id, d.from_node, d.from_generation
        ));
        plane.fail(op, FailoverPhase::Failed, &why)?;
        plane.forget_operation(&op.record.id);
        return Ok(());
    }
    if plane.nodes.healthy(&d.from_node) {
        // It came back before anything changed: it is still the org's writer.
        let why = HemvistError::conflict(format!(
            "node {} came back before the failover placed {} elsewhere",
            d.from_node, org.id
        ));
        plane.fail(op, FailoverPhase::Failed, &why)?;
        plane.forget_operation(&op.record.id);
        return Ok(());
    }
    let load: std::collections::HashMap<NodeId, u64> =
        plane.store.tenants_per_node()?.into_iter().collect();
    let draining = plane.store.draining_nodes()?;
    let target = plane
        .store
        .nodes()?
        .into_iter()
        .filter(|n| n.region == d.region && n.id != d.from_node)
        .filter(|n| plane.takes_orgs(&n.id, &draining))
        .filter(|n| load.get(&n.id).copied().unwrap_or(0) < n.capacity)
        .min_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id.clone()));
    let Some(target) = target else {
        tracing::debug!(operation = %op.record.id, region = %d.region,
            "no healthy node with room in the region; the failover waits");
        return Ok(());
    };
    let generation = plane.store.issue_generation()?;
    d.to_node = Some(target.id.clone());
    d.to_generation = Some(generation);
    let reason = format!(
        "failed over from {} (silent since {})",
        d.from_node, d.last_seen_ms
    );
    let switched = plane.advance_switching(
        op,
        FailoverPhase::Restoring,
        detail_json(&d)?,
        PlacementSwitch {
            reason: &reason,
            region: &d.region,
            node: &target.id,
            generation,
        },
    )?;
    if let Some(switched) = switched {
        super::tell_every_node(plane, op.org(), &d.region, &target.id, generation)?;
        tracing::info!(operation = %op.record.id, org = %op.org(), node = %target.id,
            %generation, "failover placed the org on a new node");
        restoring(plane, &switched, d)?;
    }
    Ok(())
}

fn restoring(plane: &Plane, op: &Failover, mut d: FailoverDetail) -> Result<(), HemvistError> {
    let (Some(to_node), Some(generation)) = (d.to_node.clone(), d.to_generation) else {
        return Err(internal("restoring without a new node"));
    };
    let org = plane
        .store
        .org(op.org())?
        .ok_or_else(|| internal(format!("org {} vanished", op.org())))?;
    let command = plane.host_command(&org, generation, false)?;
    let host = plane.drive_step(
        &Step {
            operation: &op.record.id,
            name: "host",
            node: &to_node,
            org: op.org(),
            kind: CommandKind::Host,
            generation,
            again_on_new_session: false,
        },
        false,
        // Its restore must reach the newest position its dead node reported, or wait for an
        // operator to accept an older one (`orgs rebuild --accept-older`, audited).
        || command,
    )?;
    match host.state {
        CommandState::Done => {
            d.serving_ms = Some(host.updated_ms);
            if plane
                .advance(op, FailoverPhase::Done, Some(detail_json(&d)?))?
                .is_some()
            {
                super::tell_every_node(plane, op.org(), &d.region, &to_node, generation)?;
                plane
                    .metrics
                    .record_failover("done", d.serving_ms.map(|s| s - d.last_seen_ms));
                plane.forget_operation(&op.record.id);
                tracing::info!(operation = %op.record.id, org = %op.org(), node = %to_node,
                    "failed-over org serving on its new node");
            }
        }
        CommandState::Failed => {
            // The new node cannot host it (a gap in the backups it will not cover, say): the
            // org stays placed there and the operator decides; the reconciler keeps asking.
            let why = HemvistError::new(
                host.error_kind
                    .unwrap_or(hemvist_proto::ErrorKind::Internal),
                format!(
                    "{to_node} refused to host {}: {}",
                    op.org(),
                    host.error.as_deref().unwrap_or("no reason given")
                ),
            );
            tracing::error!(operation = %op.record.id, error = %why, "failover failed");
            if plane.fail(op, FailoverPhase::Failed, &why)?.is_some() {
                plane.metrics.record_failover("failed", None);
            }
            plane.forget_operation(&op.record.id);
        }
        _ => {}
    }
    Ok(())
}
