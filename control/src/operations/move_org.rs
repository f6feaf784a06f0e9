//! Moving an org to another region (or node) while it serves. The whole move is in this file.
//!
//! ```text
//! copying ──► fencing ──► finishing ──► switching ──► releasing ──► done
//!    │           │            │             │    ▲         ▲  │
//!    │           │            │             ▼    │         │  ▼
//!    │           │            │           recovering ──────┘  (new home dead before its
//!    │           │            │                │               first backup was reported)
//!    │           │            │                ▼
//!    └───────────┴────────────┴──► rolling_back ──► rolled_back ◄── returning
//! ```
//!
//! - **copying**: the source serves the org's backups to the target (`MoveOut`), which copies
//!   and tails them (`MoveIn`) until it reports it has caught up.
//! - **fencing**: the source stops acknowledging writes and ships everything (`Fence`); its
//!   answer is the final position. Writes wait at the fence (up to 1 s on the node).
//! - **finishing**: the target reaches exactly that position and verifies it (`FinishMove`).
//! - **switching**: recorded in the same transaction as the placement switch to the target
//!   under a new generation: the one moment the writer changes. The target hosts the org
//!   (`Host`); every node learns the new placement, so the source's held writes are sent there.
//! - **releasing**: once the target's first backup in its region's store is reported, the
//!   source drops its copy (to its trash) and both forget the move. A target dead by then
//!   (past its lease and the failover grace) is not waited for: the move ends, noting why, and
//!   the org is failed over from that backup like any dead node's.
//! - **recovering**: the new home died (past its lease and the failover grace) before its first
//!   backup was reported. Another node of its region looks in the region's store (`Probe`,
//!   read only). If the store holds anything of the new generation, the new home may have
//!   acknowledged writes that only that store has: on to releasing, which ends the move for a
//!   failover from it. If it holds nothing, no write the new home acknowledged survives
//!   anywhere but in a sync org's case could not exist (a sync write is acknowledged only once
//!   its segment is stored, after the generation's first snapshot), so the source's copy, at
//!   exactly the final position, is the org: on to returning. A new home that comes back
//!   before either is decided is the owner again (back to the phase it left).
//! - **returning**: recorded with the placement switch back to the source under a newer
//!   generation; the source hosts its own copy (never a restore) and serves again. The move
//!   ends rolled back, saying why. An async org loses what the dead new home acknowledged and
//!   never shipped, as it would in any failover of a dead node.
//!
//! Switching, releasing, recovering and returning cannot go back to before the switch. One
//! that waits longer than `move_stall_ms` raises an alarm (`Plane::watch_stall`: logged,
//! `hemvist_operations_stalled`, `ops show` says what it waits for) instead of failing.
//! - **rolling_back**: before the switch, any failure (or a cancel) lifts the source's fence
//!   and discards the target's copy; the source never stopped being the owner.
//!
//! Keeps true: never two writers — the target writes only after the switch, the source not
//! after its fence, and the fence comes before the final position is known; a returning
//! source writes only under a generation issued after the new home's lease ran out; never none
//! for long — a stuck phase rolls back before the switch, and after it a dead new home is
//! recovered from; no acknowledged write lost — the final position covers everything the
//! source committed, and a new home's is in its region's store or it was never acknowledged.

use hemvist_proto::{ErrorKind, Generation, HemvistError, NodeId, OrgId, RegionId};
use serde::{Deserialize, Serialize};

use super::{Operation, OperationKind, Phase, Step};
use crate::clock::now_ms;
use crate::link::NodeCommand;
use crate::nodes::{Moved, Probed};
use crate::plane::Plane;
use crate::residency::ResidencyPolicy;
use crate::store::{CommandKind, CommandRecord, CommandState, OperationRecord, PlacementSwitch};

/// How long a copy may fail (or the target stay silent) before the move rolls back; the fence
/// and the finish may take half of it, and a rollback waits twice as long for the target to
/// discard its copy once the source serves again (`move_stall_ms`).
fn stall_ms(plane: &Plane) -> i64 {
    plane.config.move_stall_ms as i64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MovePhase {
    Copying,
    Fencing,
    Finishing,
    Switching,
    Releasing,
    Recovering,
    Returning,
    Done,
    RollingBack,
    RolledBack,
}

impl Phase for MovePhase {
    const KIND: OperationKind = OperationKind::Move;
    const ALL: &'static [Self] = &[
        MovePhase::Copying,
        MovePhase::Fencing,
        MovePhase::Finishing,
        MovePhase::Switching,
        MovePhase::Releasing,
        MovePhase::Recovering,
        MovePhase::Returning,
        MovePhase::Done,
        MovePhase::RollingBack,
        MovePhase::RolledBack,
    ];

    fn as_str(self) -> &'static str {
        match self {
            MovePhase::Copying => "copying",
            MovePhase::Fencing => "fencing",
            MovePhase::Finishing => "finishing",
            MovePhase::Switching => "switching",
            MovePhase::Releasing => "releasing",
            MovePhase::Recovering => "recovering",
            MovePhase::Returning => "returning",
            MovePhase::Done => "done",
            MovePhase::RollingBack => "rolling_back",
            MovePhase::RolledBack => "rolled_back",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, MovePhase::Done | MovePhase::RolledBack)
    }
}

impl MovePhase {
    /// Before the switch: the source still owns the org, and the move can roll back.
    fn before_switch(self) -> bool {
        matches!(
            self,
            MovePhase::Copying | MovePhase::Fencing | MovePhase::Finishing
        )
    }
}

/// What a move records beyond its phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveDetail {
    pub from_region: RegionId,
    pub from_node: NodeId,
    pub from_generation: Generation,
    pub to_region: RegionId,
    pub to_node: NodeId,
    /// Issued when the source has fenced; the org's generation from the switch on.
    #[serde(default)]
    pub to_generation: Option<Generation>,
    pub reason: String,
    /// The source's final position, from its fence.
    #[serde(default)]
    pub final_lsn: Option<u64>,
    /// Bytes the target downloaded for its copy.
    #[serde(default)]
    pub bytes: u64,
    /// When fencing began (writes stop being acknowledged from here, at the latest).
    #[serde(default)]
    pub fencing_ms: Option<i64>,
    #[serde(default)]
    pub switched_ms: Option<i64>,
    /// When the target took the org (writes are acknowledged again).
    #[serde(default)]
    pub serving_ms: Option<i64>,
    /// The write pause: from fencing to serving.
    #[serde(default)]
    pub pause_ms: Option<i64>,
    /// The phase a rollback started from.
    #[serde(default)]
    pub rolled_back_from: Option<String>,
    /// How the move ended, when not as planned (its new home died after its first backup).
    #[serde(default)]
    pub note: Option<String>,
    /// Recovering from a dead new home: the phase it left (`switching` or `releasing`).
    #[serde(default)]
    pub recovering_from: Option<String>,
    /// What the new home's region's store was found to hold of `to_generation` (a probe).
    #[serde(default)]
    pub probed: Option<Probed>,
    /// Returning to the source: the generation it serves under again.
    #[serde(default)]
    pub return_generation: Option<Generation>,
    /// How many times the new home was found dead (each recovery asks its own probe: an old
    /// answer says nothing of what a home that came back and died again shipped).
    #[serde(default)]
    pub recoveries: u32,
}

/// An operator's request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The region to move to.
    pub to: String,
    /// A node of that region; the least loaded healthy one if absent.
    #[serde(default)]
    pub node: Option<String>,
    /// Why (for the audit log and `orgs show`).
    #[serde(default)]
    pub reason: Option<String>,
}

type Move = Operation<MovePhase>;

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("move: {e}"))
}

fn detail_json(d: &MoveDetail) -> Result<serde_json::Value, HemvistError> {
    serde_json::to_value(d).map_err(internal)
}

impl Plane {
    /// Starts moving `org` to a region (and node): refused, with nothing changed, when the
    /// region is outside its residency policy (422), unknown (400), has no healthy node, or the
    /// org is already there or busy with another operation (409).
    pub fn request_move(
        &self,
        org: &str,
        req: MoveRequest,
        actor: &str,
    ) -> Result<OperationRecord, HemvistError> {
        self.start_move(org, req, actor, None)
    }

    /// As [`Plane::request_move`], as a step of `parent` (the operation owning the org) when
    /// given.
    pub(crate) fn start_move(
        &self,
        org: &str,
        req: MoveRequest,
        actor: &str,
        parent: Option<crate::store::ParentRef<'_>>,
    ) -> Result<OperationRecord, HemvistError> {
        let org = OrgId::parse(org)?;
        let to_region = RegionId::parse(&req.to)?;
        let record = self
            .store
            .org(&org)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {org}")))?;
        let region = self
            .config
            .regions
            .iter()
            .find(|r| r.id == to_region)
            .ok_or_else(|| {
                HemvistError::invalid(format!("region {to_region} is not configured"))
            })?;
        let policy = ResidencyPolicy::from_stored(&record.residency);
        if !policy.allows(region) {
            return Err(HemvistError::new(
                ErrorKind::Residency,
                format!(
                    "org {org} may not live in {to_region}: its residency policy allows {}; \
                     nothing was changed",
                    policy.describe()
                ),
            ));
        }
        let reason: String = req
            .reason
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let nodes = self.store.nodes()?;
        let to_node = match req.node {
            Some(n) => {
                let n = NodeId::parse(&n)?;
                let node = nodes
                    .iter()
                    .find(|r| r.id == n)
                    .ok_or_else(|| HemvistError::not_found(format!("no node {n}")))?;
                if node.region != to_region {
                    return Err(HemvistError::invalid(format!(
                        "node {n} is in {}, not {to_region}",
                        node.region
                    )));
                }
                if !self.nodes.healthy(&n) {
                    return Err(HemvistError::unavailable(format!(
                        "node {n} is not connected with a live lease"
                    )));
                }
                n
            }
            None => {
                let load: std::collections::HashMap<NodeId, u64> =
                    self.store.tenants_per_node()?.into_iter().collect();
                let draining = self.store.draining_nodes()?;
                nodes
                    .iter()
                    .filter(|n| n.region == to_region && n.id != record.node_id)
                    .filter(|n| self.takes_orgs(&n.id, &draining))
                    .min_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id.clone()))
                    .map(|n| n.id.clone())
                    .ok_or_else(|| {
                        if to_region == record.home_region {
                            HemvistError::conflict(format!(
                                "org {org} already lives in {to_region}, and the region has no \
                                 other healthy node"
                            ))
                        } else {
                            HemvistError::unavailable(format!(
                                "region {to_region} has no healthy node to move {org} to"
                            ))
                        }
                    })?
            }
        };
        if to_node == record.node_id {
            return Err(HemvistError::conflict(format!(
                "org {org} already lives on {to_node}"
            )));
        }
        if !self.nodes.healthy(&record.node_id) {
            return Err(HemvistError::unavailable(format!(
                "org {org}'s node {} is not connected: a live move needs its source",
                record.node_id
            )));
        }
        let detail = MoveDetail {
            from_region: record.home_region.clone(),
            from_node: record.node_id.clone(),
            from_generation: record.generation,
            to_region,
            to_node,
            to_generation: None,
            reason,
            final_lsn: None,
            bytes: 0,
            fencing_ms: None,
            switched_ms: None,
            serving_ms: None,
            pause_ms: None,
            rolled_back_from: None,
            note: None,
            recovering_from: None,
            probed: None,
            return_generation: None,
            recoveries: 0,
        };
        let op = match parent {
            None => self.begin(&org, MovePhase::Copying, actor, detail_json(&detail)?)?,
            Some(parent) => self.begin_child(
                &org,
                MovePhase::Copying,
                actor,
                detail_json(&detail)?,
                parent,
            )?,
        };
        self.wake_operations.notify_one();
        Ok(op.record)
    }

    /// Cancels a move before its switch (it rolls back); after it, a move only goes forward.
    pub fn cancel_move(&self, id: &str, actor: &str) -> Result<OperationRecord, HemvistError> {
        for _ in 0..5 {
            let record = self.operation(id)?;
            if record.finished_ms.is_some() {
                return Err(HemvistError::conflict(format!(
                    "operation {id} has already ended ({})",
                    record.phase
                )));
            }
            let op: Move = record.try_into()?;
            if !op.phase.before_switch() {
                return Err(HemvistError::conflict(format!(
                    "operation {id} is {}: the org has switched to its new home, so the move \
                     can only finish",
                    op.phase.as_str()
                )));
            }
            let why = HemvistError::new(ErrorKind::Cancelled, format!("cancelled by {actor}"));
            if let Some(rolling) = roll_back(self, &op, &why)? {
                return Ok(rolling.record);
            }
        }
        Err(HemvistError::conflict(format!(
            "operation {id} kept changing; try again"
        )))
    }
}

/// Does what the move's phase needs next.
pub fn step(plane: &Plane, record: OperationRecord) -> Result<(), HemvistError> {
    let op: Move = record.try_into()?;
    let d: MoveDetail = serde_json::from_value(op.record.detail.clone()).map_err(internal)?;
    match op.phase {
        MovePhase::Copying => copying(plane, &op, &d),
        MovePhase::Fencing => fencing(plane, &op, d),
        MovePhase::Finishing => finishing(plane, &op, d),
        MovePhase::Switching => switching(plane, &op, d),
        MovePhase::Releasing => releasing(plane, &op, &d),
        MovePhase::Recovering => recovering(plane, &op, d),
        MovePhase::Returning => returning(plane, &op, &d),
        MovePhase::RollingBack => rolling_back(plane, &op, &d),
        MovePhase::Done | MovePhase::RolledBack => Ok(()),
    }
}

fn step_of<'a>(
    op: &'a Move,
    name: &'a str,
    node: &'a NodeId,
    kind: CommandKind,
    generation: Generation,
    again_on_new_session: bool,
) -> Step<'a> {
    Step {
        operation: &op.record.id,
        name,
        node,
        org: op.org(),
        kind,
        generation,
        again_on_new_session,
    }
}

/// A step its node refused is asked again (past the switch there is no way back, so a refusal
/// is not an answer), keeping what the node said.
fn ask_again(plane: &Plane, cmd: &CommandRecord) -> Result<(), HemvistError> {
    plane.store.ack_command(
        &cmd.node_id,
        &cmd.id,
        CommandState::Retry,
        cmd.error_kind
            .map(|k| (k, cmd.error.as_deref().unwrap_or(""))),
        None,
    )?;
    Ok(())
}

/// Why a step failed, as its node said.
fn refusal(cmd: &CommandRecord) -> HemvistError {
    HemvistError::new(
        cmd.error_kind.unwrap_or(ErrorKind::Internal),
        format!(
            "{} on {}: {}",
            cmd.kind.as_str(),
            cmd.node_id,
            cmd.error.as_deref().unwrap_or("refused")
        ),
    )
}

fn moved(cmd: &CommandRecord) -> Option<Moved> {
    serde_json::from_value(cmd.result.clone()?).ok()
}

/// Keeps the copy channel up (both ends hold it in memory): the source's credential and the
/// target's copy, sent again to a node that reconnected or after this control plane restarted.
fn keep_copying(
    plane: &Plane,
    op: &Move,
    d: &MoveDetail,
) -> Result<(CommandRecord, CommandRecord), HemvistError> {
    let (secret, fresh) = plane.secret_of(&op.record.id)?;
    let org = plane
        .store
        .org(op.org())?
        .ok_or_else(|| internal(format!("org {} vanished", op.org())))?;
    let source_url = plane
        .store
        .node(&d.from_node)?
        .ok_or_else(|| internal(format!("node {} is unknown", d.from_node)))?
        .public_url;
    let out = plane.drive_step(
        &step_of(
            op,
            "out",
            &d.from_node,
            CommandKind::MoveOut,
            d.from_generation,
            true,
        ),
        fresh,
        || NodeCommand::MoveOut {
            org: op.org().clone(),
            generation: d.from_generation,
            target: d.to_node.clone(),
            secret: secret.clone(),
        },
    )?;
    let allowed_regions = plane.allowed_regions(&org);
    let inn = plane.drive_step(
        &step_of(
            op,
            "in",
            &d.to_node,
            CommandKind::MoveIn,
            d.from_generation,
            true,
        ),
        fresh,
        || NodeCommand::MoveIn {
            org: op.org().clone(),
            generation: d.from_generation,
            source: d.from_node.clone(),
            source_url,
            secret,
            data_key: org.data_key.clone().unwrap_or_default(),
            allowed_regions,
        },
    )?;
    Ok((out, inn))
}

/// Starts rolling back (the phase it started from is recorded). `None` if the move had moved on.
fn roll_back(plane: &Plane, op: &Move, why: &HemvistError) -> Result<Option<Move>, HemvistError> {
    let mut d: MoveDetail = serde_json::from_value(op.record.detail.clone()).map_err(internal)?;
    d.rolled_back_from = Some(op.phase.as_str().to_string());
    if let Some(p) = plane.progress_of(&op.record.id, &d.to_node) {
        d.bytes = d.bytes.max(p.bytes);
    }
    tracing::warn!(operation = %op.record.id, org = %op.org(), phase = op.phase.as_str(), error = %why, "move rolling back");
    let Some(rolling) = plane.fail_with(op, MovePhase::RollingBack, why, detail_json(&d)?)? else {
        return Ok(None);
    };
    plane.wake_operations.notify_one();
    Ok(Some(rolling))
}

fn copying(plane: &Plane, op: &Move, d: &MoveDetail) -> Result<(), HemvistError> {
    let (out, inn) = keep_copying(plane, op, d)?;
    for cmd in [&out, &inn] {
        if cmd.state == CommandState::Failed {
            roll_back(plane, op, &refusal(cmd))?;
            return Ok(());
        }
    }
    let now = now_ms();
    let progress = plane.progress_of(&op.record.id, &d.to_node);
    match &progress {
        // Only a fresh report (a few of the target's rounds old) says it is close now: a target
        // that went quiet after catching up would leave the source fenced for nothing.
        Some(p)
            if p.state == "caught_up"
                && now - p.at_ms < 2_000
                && out.state == CommandState::Done
                && inn.state == CommandState::Done =>
        {
            let mut next = d.clone();
            next.bytes = p.bytes;
            next.fencing_ms = Some(now);
            if plane
                .advance(op, MovePhase::Fencing, Some(detail_json(&next)?))?
                .is_some()
            {
                plane.wake_operations.notify_one();
            }
        }
        Some(p) if p.state == "failed" && now - p.failing_since_ms > stall_ms(plane) => {
            let e = p
                .error
                .clone()
                .unwrap_or_else(|| internal("the copy failed"));
            roll_back(plane, op, &e)?;
        }
        Some(p) if now - p.at_ms > stall_ms(plane) => {
            roll_back(
                plane,
                op,
                &HemvistError::unavailable(format!(
                    "the target {} has said nothing about its copy for {} ms",
                    d.to_node,
                    now - p.at_ms
                )),
            )?;
        }
        None if plane.in_phase_ms(op) > stall_ms(plane) => {
            roll_back(
                plane,
                op,
                &HemvistError::unavailable(format!(
                    "the target {} never reported its copy",
                    d.to_node
                )),
            )?;
        }
        _ => {}
    }
    Ok(())
}

fn fencing(plane: &Plane, op: &Move, mut d: MoveDetail) -> Result<(), HemvistError> {
    keep_copying(plane, op, &d)?;
    let fence = plane.drive_step(
        &step_of(
            op,
            "fence",
            &d.from_node,
            CommandKind::Fence,
            d.from_generation,
            false,
        ),
        false,
        || NodeCommand::Fence {
            org: op.org().clone(),
            generation: d.from_generation,
        },
    )?;
    match fence.state {
        CommandState::Done => {
            let Some(position) = moved(&fence) else {
                roll_back(plane, op, &internal("the source fenced without a position"))?;
                return Ok(());
            };
            d.final_lsn = Some(position.lsn);
            d.to_generation = Some(plane.store.issue_generation()?);
            if plane
                .advance(op, MovePhase::Finishing, Some(detail_json(&d)?))?
                .is_some()
            {
                plane.wake_operations.notify_one();
            }
        }
        CommandState::Failed => {
            roll_back(plane, op, &refusal(&fence))?;
        }
        _ if plane.in_phase_ms(op) > stall_ms(plane) / 2 => {
            let why = match fence.error_kind {
                Some(_) => refusal(&fence),
                None => HemvistError::unavailable(format!(
                    "the source {} did not fence within {} ms",
                    d.from_node,
                    stall_ms(plane) / 2
                )),
            };
            roll_back(plane, op, &why)?;
        }
        _ => {}
    }
    Ok(())
}

fn finishing(plane: &Plane, op: &Move, mut d: MoveDetail) -> Result<(), HemvistError> {
    keep_copying(plane, op, &d)?;
    let (Some(lsn), Some(to_generation)) = (d.final_lsn, d.to_generation) else {
        roll_back(plane, op, &internal("finishing without a final position"))?;
        return Ok(());
    };
    let finish = plane.drive_step(
        &step_of(
            op,
            "finish",
            &d.to_node,
            CommandKind::FinishMove,
            d.from_generation,
            false,
        ),
        false,
        || NodeCommand::FinishMove {
            org: op.org().clone(),
            generation: d.from_generation,
            lsn,
        },
    )?;
    match finish.state {
        CommandState::Done => {
            if moved(&finish).map(|m| m.lsn) != Some(lsn) {
                roll_back(
                    plane,
                    op,
                    &internal(format!("the target finished elsewhere than {lsn}")),
                )?;
                return Ok(());
            }
            d.switched_ms = Some(now_ms());
            let reason = format!(
                "moved from {} by {}{}",
                d.from_region,
                op.record.requested_by,
                if d.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.reason)
                }
            );
            let switched = plane.advance_switching(
                op,
                MovePhase::Switching,
                detail_json(&d)?,
                PlacementSwitch {
                    reason: &reason,
                    region: &d.to_region,
                    node: &d.to_node,
                    generation: to_generation,
                },
            )?;
            if let Some(switched) = switched {
                // Told at once, whatever the host step does next: a target that acks before
                // the step is read again must not leave the old home without the new address.
                super::tell_every_node(plane, op.org(), &d.to_region, &d.to_node, to_generation)?;
                tracing::info!(operation = %op.record.id, org = %op.org(), node = %d.to_node,
                    generation = %to_generation, "move switched: the org's writer is now its target");
                switching(plane, &switched, d)?;
            }
        }
        CommandState::Failed => {
            roll_back(plane, op, &refusal(&finish))?;
        }
        _ if plane.in_phase_ms(op) > stall_ms(plane) / 2 => {
            let why = match finish.error_kind {
                Some(_) => refusal(&finish),
                None => HemvistError::unavailable(format!(
                    "the target {} did not finish within {} ms",
                    d.to_node,
                    stall_ms(plane) / 2
                )),
            };
            roll_back(plane, op, &why)?;
        }
        _ => {}
    }
    Ok(())
}

fn switching(plane: &Plane, op: &Move, mut d: MoveDetail) -> Result<(), HemvistError> {
    let Some(to_generation) = d.to_generation else {
        return Err(internal("switched without a generation"));
    };
    let org = plane
        .store
        .org(op.org())?
        .ok_or_else(|| internal(format!("org {} vanished", op.org())))?;
    let command = plane.host_command(&org, to_generation, true)?;
    let host = plane.drive_step(
        &step_of(
            op,
            "host",
            &d.to_node,
            CommandKind::Host,
            to_generation,
            false,
        ),
        false,
        // The copy is in place: it hosts that file, never a restore.
        || command,
    )?;
    if host.state != CommandState::Done && super::failover::is_dead(plane, &d.to_node)? {
        return start_recovering(plane, op, d);
    }
    if host.state != CommandState::Done {
        plane.watch_stall(op, stall_ms(plane), || {
            format!(
                "the new home {} to host the org (its host step is {}{}); the switch is recorded, \
                 so the move can only go forward: the source {} stays fenced and keeps its copy",
                d.to_node,
                host.state.as_str(),
                host.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
                d.from_node
            )
        });
        // Again until the target serves: a control plane that restarted right after the switch
        // has told nobody yet.
        super::tell_every_node(plane, op.org(), &d.to_region, &d.to_node, to_generation)?;
    }
    match host.state {
        CommandState::Done => {
            let serving = host.updated_ms;
            d.serving_ms = Some(serving);
            d.pause_ms = d.fencing_ms.map(|f| (serving - f).max(0));
            if plane
                .advance(op, MovePhase::Releasing, Some(detail_json(&d)?))?
                .is_some()
            {
                // Once more now that the target serves (a restarted control plane may have
                // found the host step already done).
                super::tell_every_node(plane, op.org(), &d.to_region, &d.to_node, to_generation)?;
                plane.metrics.record_move_pause(d.pause_ms);
                tracing::info!(operation = %op.record.id, org = %op.org(),
                    pause_ms = ?d.pause_ms, "moved org serving at its new home");
                plane.wake_operations.notify_one();
            }
        }
        CommandState::Failed => {
            // Past the switch there is no way back to the source: keep asking, loudly.
            tracing::error!(operation = %op.record.id, error = %refusal(&host),
                "the move's target refused to host the switched org; retrying");
            ask_again(plane, &host)?;
        }
        _ => {}
    }
    Ok(())
}

fn releasing(plane: &Plane, op: &Move, d: &MoveDetail) -> Result<(), HemvistError> {
    let Some(to_generation) = d.to_generation else {
        return Err(internal("releasing without a generation"));
    };
    // The source keeps its copy until the new home's first backup is in its region's store
    // (reported, or found there by a probe after the new home died).
    let backed_up = first_backup_reported(plane, op, d, to_generation)
        || d.probed.is_some_and(|p| p.snapshots > 0);
    if !backed_up {
        if super::failover::is_dead(plane, &d.to_node)? {
            return start_recovering(plane, op, d.clone());
        }
        plane.watch_stall(op, stall_ms(plane), || {
            format!(
                "the new home {}'s first backup in {}'s store (the source {} keeps its copy \
                 until then)",
                d.to_node, d.to_region, d.from_node
            )
        });
        return Ok(());
    }
    // A new home that died after its first backup is failed over like any dead node's org
    // (from that backup): the move ends here, without its word.
    let target_dead = super::failover::is_dead(plane, &d.to_node)?;
    let end_in = plane.drive_step(
        &step_of(
            op,
            "end-in",
            &d.to_node,
            CommandKind::EndMove,
            to_generation,
            false,
        ),
        false,
        || NodeCommand::EndMove {
            org: op.org().clone(),
            rolled_back: false,
        },
    )?;
    let end_out = plane.drive_step(
        &step_of(
            op,
            "end-out",
            &d.from_node,
            CommandKind::EndMove,
            d.from_generation,
            false,
        ),
        false,
        || NodeCommand::EndMove {
            org: op.org().clone(),
            rolled_back: false,
        },
    )?;
    let drop = plane.drive_step(
        &step_of(
            op,
            "drop",
            &d.from_node,
            CommandKind::Drop,
            d.from_generation,
            false,
        ),
        false,
        || NodeCommand::Drop {
            org: op.org().clone(),
            generation: d.from_generation,
        },
    )?;
    let steps = [&end_in, &end_out, &drop];
    let released = |c: &CommandRecord| {
        c.state == CommandState::Done || (target_dead && c.node_id == d.to_node)
    };
    if !steps.iter().all(|c| released(c)) {
        plane.watch_stall(op, stall_ms(plane), || {
            let open: Vec<String> = steps
                .iter()
                .filter(|c| !released(c))
                .map(|c| {
                    format!(
                        "{} on {} ({})",
                        c.kind.as_str(),
                        c.node_id,
                        c.state.as_str()
                    )
                })
                .collect();
            format!("the release: {}", open.join(", "))
        });
    } else if plane
        .advance(
            op,
            MovePhase::Done,
            target_dead
                .then(|| {
                    let mut ended = d.clone();
                    ended.note = Some(match d.probed {
                        Some(p) => format!(
                            "the new home {} died before its first backup was reported, but \
                             {}'s store holds {} object(s) of {to_generation} (to LSN {}); a \
                             failover takes the org from them",
                            d.to_node, d.to_region, p.objects, p.newest_lsn
                        ),
                        None => format!(
                            "the new home {} died after its first backup; a failover takes \
                             the org from that backup",
                            d.to_node
                        ),
                    });
                    detail_json(&ended)
                })
                .transpose()?,
        )?
        .is_some()
    {
        if target_dead {
            tracing::warn!(operation = %op.record.id, org = %op.org(), node = %d.to_node,
                "the move's new home died after its first backup; the move ends for a failover");
        }
        plane.forget_operation(&op.record.id);
        plane.metrics.record_move("done", d.bytes);
        tracing::info!(operation = %op.record.id, org = %op.org(), from = %d.from_node,
            to = %d.to_node, "move done");
    }
    Ok(())
}

/// Whether the new home reported its first backup of `generation` in its region's store.
fn first_backup_reported(plane: &Plane, op: &Move, d: &MoveDetail, generation: Generation) -> bool {
    plane.replication.get(op.org()).is_some_and(|r| {
        r.node == d.to_node && r.generation == generation.get() && r.shipped_ms > 0
    })
}

/// The new home died past the switch, before its first backup was reported: find out what its
/// region's store holds of it before deciding where the org goes.
fn start_recovering(plane: &Plane, op: &Move, mut d: MoveDetail) -> Result<(), HemvistError> {
    d.recovering_from = Some(op.phase.as_str().to_string());
    d.recoveries += 1;
    d.probed = None;
    tracing::warn!(operation = %op.record.id, org = %op.org(), node = %d.to_node,
        phase = op.phase.as_str(),
        "the move's new home died before its first backup was reported; looking in its store");
    if plane
        .advance(op, MovePhase::Recovering, Some(detail_json(&d)?))?
        .is_some()
    {
        plane.wake_operations.notify_one();
    }
    Ok(())
}

fn recovering(plane: &Plane, op: &Move, mut d: MoveDetail) -> Result<(), HemvistError> {
    let Some(to_generation) = d.to_generation else {
        return Err(internal("recovering without a generation"));
    };
    let left = match d.recovering_from.as_deref() {
        Some("switching") => MovePhase::Switching,
        _ => MovePhase::Releasing,
    };
    // Back before anything was decided (only a read was asked so far): it is the owner still.
    // Connected at all counts: a node that reconnects gets its lease at its next heartbeat.
    if plane.nodes.session(&d.to_node).connected
        || first_backup_reported(plane, op, &d, to_generation)
    {
        tracing::info!(operation = %op.record.id, node = %d.to_node,
            "the move's new home is back (or its backup was reported); the move goes on");
        d.recovering_from = None;
        d.probed = None;
        plane.advance(op, left, Some(detail_json(&d)?))?;
        plane.wake_operations.notify_one();
        return Ok(());
    }
    let mut nodes: Vec<NodeId> = plane
        .store
        .nodes()?
        .into_iter()
        .filter(|n| n.region == d.to_region && n.id != d.to_node && plane.nodes.healthy(&n.id))
        .map(|n| n.id)
        .collect();
    nodes.sort();
    let Some(prober) = nodes.first() else {
        plane.watch_stall(op, stall_ms(plane), || {
            format!(
                "a live node in {} to look in its store for what the dead new home {} shipped \
                 (the source {} stays fenced and keeps its copy)",
                d.to_region, d.to_node, d.from_node
            )
        });
        return Ok(());
    };
    // One step per recovery and asked node: a prober that dies is replaced by the next.
    let name = format!("probe-{}-{prober}", d.recoveries);
    let probe = plane.drive_step(
        &step_of(op, &name, prober, CommandKind::Probe, to_generation, false),
        false,
        || NodeCommand::Probe {
            org: op.org().clone(),
            generation: to_generation,
        },
    )?;
    let probed = (probe.state == CommandState::Done)
        .then(|| serde_json::from_value::<Probed>(probe.result.clone()?).ok())
        .flatten();
    let Some(probed) = probed else {
        plane.watch_stall(op, stall_ms(plane), || {
            format!(
                "{prober} to say what {}'s store holds of {to_generation} (its probe is {}{})",
                d.to_region,
                probe.state.as_str(),
                probe
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )
        });
        if probe.state == CommandState::Failed {
            // Nothing decided without an answer: ask again.
            ask_again(plane, &probe)?;
        }
        return Ok(());
    };
    d.probed = Some(probed);
    if probed.objects > 0 && probed.snapshots == 0 {
        // Something of the new generation, but nothing a restore starts from (damaged?):
        // neither the source's copy nor that store can be known to hold every acknowledged
        // write. An operator decides; the source stays fenced and keeps its copy.
        plane.watch_stall(op, 0, || {
            format!(
                "an operator: {}'s store holds {} object(s) of {to_generation} but no readable \
                 snapshot of it, so neither it nor the source {}'s copy can be known to hold \
                 every write the dead new home {} acknowledged",
                d.to_region, probed.objects, d.from_node, d.to_node
            )
        });
        return Ok(());
    }
    if probed.objects > 0 {
        // Writes the new home acknowledged may be there alone: the org stays in its new
        // region, failed over from that store once the move has let go of it.
        tracing::warn!(operation = %op.record.id, org = %op.org(), objects = probed.objects,
            "the dead new home's store holds the new generation; the move ends for a failover");
        plane.advance(op, MovePhase::Releasing, Some(detail_json(&d)?))?;
        plane.wake_operations.notify_one();
        return Ok(());
    }
    // Nothing of the new generation anywhere: the source's copy, at exactly the final
    // position, is the org. It serves again under a newer generation than the dead home's,
    // if it is alive to take it back.
    if !plane.nodes.healthy(&d.from_node) {
        plane.watch_stall(op, stall_ms(plane), || {
            format!(
                "the source {} to be alive to take the org back ({}'s store holds nothing of \
                 {to_generation}; the source's copy is the org)",
                d.from_node, d.to_region
            )
        });
        return Ok(());
    }
    let generation = plane.store.issue_generation()?;
    d.return_generation = Some(generation);
    let reason = format!(
        "returned from {}, which died before its first backup",
        d.to_node
    );
    let switched = plane.advance_switching(
        op,
        MovePhase::Returning,
        detail_json(&d)?,
        PlacementSwitch {
            reason: &reason,
            region: &d.from_region,
            node: &d.from_node,
            generation,
        },
    )?;
    if let Some(switched) = switched {
        tracing::warn!(operation = %op.record.id, org = %op.org(), node = %d.from_node,
            %generation, "the move's new home died with nothing stored; the org returns to its source");
        super::tell_every_node(plane, op.org(), &d.from_region, &d.from_node, generation)?;
        returning(plane, &switched, &d)?;
    }
    Ok(())
}

fn returning(plane: &Plane, op: &Move, d: &MoveDetail) -> Result<(), HemvistError> {
    let (Some(generation), Some(dead_generation)) = (d.return_generation, d.to_generation) else {
        return Err(internal("returning without a generation"));
    };
    let org = plane
        .store
        .org(op.org())?
        .ok_or_else(|| internal(format!("org {} vanished", op.org())))?;
    let command = plane.host_command(&org, generation, true)?;
    let host = plane.drive_step(
        &step_of(
            op,
            "return-host",
            &d.from_node,
            CommandKind::Host,
            generation,
            false,
        ),
        false,
        // Its own copy, at the final position: hosted as it is, never a restore.
        || command,
    )?;
    let end_out = if host.state == CommandState::Done {
        Some(plane.drive_step(
            &step_of(
                op,
                "return-out",
                &d.from_node,
                CommandKind::EndMove,
                generation,
                false,
            ),
            false,
            || NodeCommand::EndMove {
                org: op.org().clone(),
                rolled_back: true,
            },
        )?)
    } else {
        None
    };
    match (&host.state, end_out.as_ref().map(|c| c.state)) {
        (CommandState::Done, Some(CommandState::Done)) => {
            super::tell_every_node(plane, op.org(), &d.from_region, &d.from_node, generation)?;
            let why = HemvistError::unavailable(format!(
                "the new home {} died before its first backup was reported, and {}'s store \
                 holds nothing of {dead_generation}: the org is back on {} under {generation}, \
                 at the final position {} (a write {} acknowledged is there; an async write \
                 the dead home acknowledged and never shipped is lost, as in any failover)",
                d.to_node,
                d.to_region,
                d.from_node,
                d.final_lsn.unwrap_or(0),
                d.from_node
            ));
            if plane.fail(op, MovePhase::RolledBack, &why)?.is_some() {
                plane.forget_operation(&op.record.id);
                plane.metrics.record_move("rolled_back", d.bytes);
                tracing::warn!(operation = %op.record.id, org = %op.org(), node = %d.from_node,
                    "move rolled back past its switch: the org serves on its source again");
            }
        }
        (CommandState::Failed, _) => {
            tracing::error!(operation = %op.record.id, error = %refusal(&host),
                "the source refused to take its org back; retrying");
            ask_again(plane, &host)?;
        }
        _ => {
            plane.watch_stall(op, stall_ms(plane), || {
                format!(
                    "the source {} to take the org back under {generation} (host {}{})",
                    d.from_node,
                    host.state.as_str(),
                    end_out
                        .as_ref()
                        .map(|c| format!(", end of move {}", c.state.as_str()))
                        .unwrap_or_default()
                )
            });
        }
    }
    Ok(())
}

fn rolling_back(plane: &Plane, op: &Move, d: &MoveDetail) -> Result<(), HemvistError> {
    let end_out = plane.drive_step(
        &step_of(
            op,
            "rollback-out",
            &d.from_node,
            CommandKind::EndMove,
            d.from_generation,
            false,
        ),
        false,
        || NodeCommand::EndMove {
            org: op.org().clone(),
            rolled_back: true,
        },
    )?;
    let end_in = plane.drive_step(
        &step_of(
            op,
            "rollback-in",
            &d.to_node,
            CommandKind::EndMove,
            d.from_generation,
            false,
        ),
        false,
        || NodeCommand::EndMove {
            org: op.org().clone(),
            rolled_back: true,
        },
    )?;
    let source_serving = end_out.state == CommandState::Done;
    let target_clean = end_in.state == CommandState::Done;
    let waited = plane.in_phase_ms(op) > 2 * stall_ms(plane);
    if source_serving && (target_clean || waited) {
        if !target_clean {
            tracing::warn!(operation = %op.record.id, node = %d.to_node,
                "the move's target did not discard its copy; it stays in its staging file");
        }
        let why = HemvistError::new(
            op.record.error_kind.unwrap_or(ErrorKind::Internal),
            op.record.error.clone().unwrap_or_default(),
        );
        if plane.fail(op, MovePhase::RolledBack, &why)?.is_some() {
            plane.forget_operation(&op.record.id);
            plane.metrics.record_move("rolled_back", 0);
            tracing::info!(operation = %op.record.id, org = %op.org(), "move rolled back; the org stays on its source");
        }
    }
    Ok(())
}
