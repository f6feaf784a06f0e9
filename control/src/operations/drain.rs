//! Draining a live node: every org on it moves to another node of its region, each by its own
//! live move (`move_org.rs`), so nothing is lost and each org pauses only for its own fence.
//!
//! What is persisted is the node's `draining_since_ms` (set and cleared with an audit entry);
//! the moves are operations of their own. Each tick starts moves for the node's orgs that no
//! operation owns, at most [`CONCURRENT_MOVES`] at a time per node, so a restarted control plane
//! simply goes on. A draining node gets no new org and is no move's or failover's target; it
//! stays drained (cordoned) until `undrain`. An org whose move rolled back is tried again after
//! [`RETRY_AFTER_MS`], never in a tight loop.

use std::collections::HashMap;

use hemvist_proto::{HemvistError, NodeId};
use serde::Serialize;

use super::move_org::{MovePhase, MoveRequest};
use super::{OperationKind, Phase};
use crate::clock::now_ms;
use crate::plane::Plane;

/// Moves under way off one draining node at once.
pub const CONCURRENT_MOVES: usize = 4;
/// How long an org whose move off a draining node rolled back waits before the next try.
pub const RETRY_AFTER_MS: i64 = 30_000;

/// A node's drain as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DrainView {
    pub node: NodeId,
    pub draining_since_ms: Option<i64>,
    /// Orgs still placed on the node.
    pub orgs_left: usize,
    /// Of them, those an operation is moving now.
    pub moving: usize,
}

impl Plane {
    /// Starts draining `node` (idempotent): refused when the node is unknown or its region has
    /// no other healthy node to take its orgs.
    pub fn request_drain(&self, node: &str, actor: &str) -> Result<DrainView, HemvistError> {
        let node = NodeId::parse(node)?;
        let record = self
            .store
            .node(&node)?
            .ok_or_else(|| HemvistError::not_found(format!("no node {node}")))?;
        let draining = self.store.draining_nodes()?;
        let others = self
            .store
            .nodes()?
            .into_iter()
            .filter(|n| n.region == record.region && n.id != node)
            .filter(|n| self.nodes.healthy(&n.id) && !draining.contains_key(&n.id))
            .count();
        if others == 0 && !draining.contains_key(&node) {
            // The fleet as it is refuses it (409), as any conflict with the state of things:
            // a retry helps only once another node of the region is up, which is not soon.
            return Err(HemvistError::conflict(format!(
                "region {} has no other healthy node to take {node}'s orgs; nothing was changed",
                record.region
            )));
        }
        if self.store.set_draining(&node, true, actor)? {
            tracing::info!(%node, %actor, "draining node");
        }
        self.wake_operations.notify_one();
        self.drain_view(&node)
    }

    /// Ends a drain: the node takes orgs again (those moved off stay where they went).
    pub fn request_undrain(&self, node: &str, actor: &str) -> Result<DrainView, HemvistError> {
        let node = NodeId::parse(node)?;
        if self.store.node(&node)?.is_none() {
            return Err(HemvistError::not_found(format!("no node {node}")));
        }
        if self.store.set_draining(&node, false, actor)? {
            tracing::info!(%node, %actor, "node no longer draining");
        }
        self.drain_view(&node)
    }

    pub fn drain_view(&self, node: &NodeId) -> Result<DrainView, HemvistError> {
        let orgs = self.store.orgs_on_node(node)?;
        let owned = self.owned_orgs()?;
        Ok(DrainView {
            node: node.clone(),
            draining_since_ms: self.store.draining_nodes()?.get(node).copied(),
            orgs_left: orgs.len(),
            moving: orgs.iter().filter(|o| owned.contains(&o.id)).count(),
        })
    }

    /// Whether new orgs, moves and failovers may land on `node`: healthy and not draining.
    pub fn takes_orgs(&self, node: &NodeId, draining: &HashMap<NodeId, i64>) -> bool {
        self.nodes.healthy(node) && !draining.contains_key(node)
    }
}

/// Starts the next moves off every draining, live node.
pub fn step(plane: &Plane) -> Result<(), HemvistError> {
    let draining = plane.store.draining_nodes()?;
    if draining.is_empty() {
        return Ok(());
    }
    let owned = plane.owned_orgs()?;
    let now = now_ms();
    // Only the recent rollbacks: the whole history of operations is not read every tick.
    let last_rolled_back: HashMap<_, i64> = plane
        .store
        .ended_since(
            OperationKind::Move.as_str(),
            MovePhase::RolledBack.as_str(),
            now - RETRY_AFTER_MS,
        )?
        .into_iter()
        .collect();
    for node in draining.keys() {
        // A dead node's orgs are the failover's; a live move needs its source.
        if !plane.nodes.healthy(node) {
            continue;
        }
        let Some(record) = plane.store.node(node)? else {
            continue;
        };
        let orgs = plane.store.orgs_on_node(node)?;
        let mut moving = orgs.iter().filter(|o| owned.contains(&o.id)).count();
        for org in &orgs {
            if moving >= CONCURRENT_MOVES {
                break;
            }
            if owned.contains(&org.id)
                || last_rolled_back
                    .get(&org.id)
                    .is_some_and(|at| now - at < RETRY_AFTER_MS)
            {
                continue;
            }
            let req = MoveRequest {
                to: record.region.to_string(),
                node: None,
                reason: Some(format!("drain of {node}")),
            };
            match plane.request_move(org.id.as_str(), req, &format!("drain of {node}")) {
                Ok(op) => {
                    moving += 1;
                    tracing::info!(%node, org = %org.id, operation = %op.id, "moving an org off a draining node");
                }
                Err(e) => {
                    tracing::warn!(%node, org = %org.id, error = %e, "cannot move an org off a draining node yet");
                    // The region has nowhere to put it now: no use trying the others this tick.
                    break;
                }
            }
        }
    }
    Ok(())
}
