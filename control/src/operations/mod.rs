//! Operations: the changes of where data lives that span machines and time (moves, failovers,
//! drains, rollouts, branches, erasures), each a persisted state machine. One file per kind;
//! this module is what they all share.
//!
//! Keeps true:
//! - an operation's phase is recorded, with its audit entry, in one transaction before any side
//!   effect of that phase is acknowledged ([`Plane::advance`]); a transition is a compare and set
//!   from the phase last seen, so a restarted or racing driver never repeats one;
//! - at most one unfinished operation owns an org, and the reconciler leaves an owned org alone;
//! - phases are an enum per kind ([`Phase`]); the store keeps their names and nothing else.

pub mod branch;
pub mod branch_destroy;
pub mod drain;
pub mod driver;
pub mod erase;
pub mod failover;
pub mod move_org;
pub mod rollback;
pub mod rollout;
pub mod set_residency;

use std::sync::Mutex;

use hemvist_proto::{ErrorKind, Generation, HemvistError, NodeId, OrgId};

use crate::clock::now_ms;
use crate::link::{NodeCommand, Placement, PlacementUpdate};
use crate::plane::Plane;
pub use crate::plane::{CopyProgress, OperationsMemory as Memory, Stall};
use crate::store::{
    CommandKind, CommandRecord, CommandState, NewCommand, NewOperation, OperationRecord, ParentRef,
    PlacementSwitch, Transition,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One step of an operation: a command to one node, under an id stable across re-sends
/// (`{operation}.{name}`), so the node applies it at most once in effect.
pub struct Step<'a> {
    pub operation: &'a str,
    pub name: &'a str,
    pub node: &'a NodeId,
    pub org: &'a OrgId,
    pub kind: CommandKind,
    pub generation: Generation,
    /// Its effect lives in the node's memory (a credential, a running copy): a node that
    /// reconnected (maybe restarted) gets it again, even after it was done.
    pub again_on_new_session: bool,
}

/// The kinds of operation (one file each, as they are built).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    Move,
    Failover,
    Rollout,
    Rollback,
    Branch,
    BranchDestroy,
    Erase,
    SetResidency,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Move => "move",
            OperationKind::Failover => "failover",
            OperationKind::Rollout => "rollout",
            OperationKind::Rollback => "rollback",
            OperationKind::Branch => "branch",
            OperationKind::BranchDestroy => "branch-destroy",
            OperationKind::Erase => "erase",
            OperationKind::SetResidency => "set-residency",
        }
    }

    pub fn parse(s: &str) -> Option<OperationKind> {
        [
            OperationKind::Move,
            OperationKind::Failover,
            OperationKind::Rollout,
            OperationKind::Rollback,
            OperationKind::Branch,
            OperationKind::BranchDestroy,
            OperationKind::Erase,
            OperationKind::SetResidency,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A kind's phases.
pub trait Phase: Copy + Eq + std::fmt::Debug + Sized + 'static {
    const KIND: OperationKind;
    /// The kind is about the whole fleet (a rollout), not one org.
    const FLEET: bool = false;
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    /// The operation ends here (done, or rolled back).
    fn is_final(self) -> bool;
    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.as_str() == s)
    }
}

/// An operation as its kind sees it: its record, with the phase typed.
#[derive(Debug, Clone)]
pub struct Operation<P: Phase> {
    pub record: OperationRecord,
    pub phase: P,
}

impl<P: Phase> Operation<P> {
    /// The org a per-org operation is about.
    pub fn org(&self) -> &OrgId {
        // Reading the record refused a per-org kind without an org (`TryFrom` below).
        self.record
            .org
            .as_ref()
            .expect("a per-org operation has an org")
    }
}

impl<P: Phase> TryFrom<OperationRecord> for Operation<P> {
    type Error = HemvistError;

    fn try_from(record: OperationRecord) -> Result<Self, HemvistError> {
        if record.kind != P::KIND.as_str() {
            return Err(HemvistError::internal(format!(
                "operation {} is a {}, not a {}",
                record.id,
                record.kind,
                P::KIND.as_str()
            )));
        }
        if record.org.is_none() != P::FLEET {
            return Err(HemvistError::internal(format!(
                "operation {} is a {} {} an org",
                record.id,
                P::KIND.as_str(),
                if P::FLEET { "with" } else { "without" }
            )));
        }
        let phase = P::parse(&record.phase).ok_or_else(|| {
            HemvistError::internal(format!(
                "operation {} is in phase {:?}, which a {} does not have",
                record.id,
                record.phase,
                P::KIND.as_str()
            ))
        })?;
        Ok(Operation { record, phase })
    }
}

impl Plane {
    /// Starts an operation of `P`'s kind on `org` in phase `first`, audited as requested by
    /// `actor`. A conflict if another unfinished operation owns the org.
    pub fn begin<P: Phase>(
        &self,
        org: &OrgId,
        first: P,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<Operation<P>, HemvistError> {
        self.start_operation(Some(org), first, actor, detail, None)
    }

    /// Starts an operation of `P`'s kind on `org` as a step of `parent`, the unfinished
    /// operation that owns the org (a residency change's move), while it is in the phase named.
    /// A conflict if `parent` is not that (any more), or already runs an unfinished child.
    pub fn begin_child<P: Phase>(
        &self,
        org: &OrgId,
        first: P,
        actor: &str,
        detail: serde_json::Value,
        parent: ParentRef<'_>,
    ) -> Result<Operation<P>, HemvistError> {
        if let Some(open) = self
            .store
            .children_of(parent.id)?
            .into_iter()
            .find(|c| c.finished_ms.is_none())
        {
            return Err(HemvistError::conflict(format!(
                "operation {} already runs {} {} (in phase {})",
                parent.id, open.kind, open.id, open.phase
            )));
        }
        self.start_operation(Some(org), first, actor, detail, Some(parent))
    }

    /// Starts an operation of `P`'s kind on the whole fleet; a conflict if another is
    /// unfinished (one fleet operation at a time).
    pub fn begin_fleet<P: Phase>(
        &self,
        first: P,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<Operation<P>, HemvistError> {
        self.start_operation(None, first, actor, detail, None)
    }

    fn start_operation<P: Phase>(
        &self,
        org: Option<&OrgId>,
        first: P,
        actor: &str,
        detail: serde_json::Value,
        parent: Option<ParentRef<'_>>,
    ) -> Result<Operation<P>, HemvistError> {
        if let Some(open) = self
            .store
            .open_operation_of(org)?
            .filter(|open| Some(open.id.as_str()) != parent.map(|p| p.id))
        {
            return Err(HemvistError::conflict(match org {
                Some(org) => format!(
                    "org {org} is busy: {} {} is in phase {}",
                    open.kind, open.id, open.phase
                ),
                None => format!(
                    "the fleet is busy: {} {} is in phase {} (one fleet operation at a time)",
                    open.kind, open.id, open.phase
                ),
            }));
        }
        let id = match org {
            Some(org) => format!(
                "{}-{org}-{}",
                P::KIND.as_str(),
                hemvist_proto::random::hex(6)?
            ),
            None => format!("{}-{}", P::KIND.as_str(), hemvist_proto::random::hex(6)?),
        };
        let record = self.store.start_operation(
            &NewOperation {
                id: &id,
                kind: P::KIND.as_str(),
                org,
                phase: first.as_str(),
                requested_by: actor,
                detail: &detail,
                parent,
            },
            &format!("{}.started", P::KIND.as_str()),
            &serde_json::json!({
                "operation": id,
                "phase": first.as_str(),
                "detail": detail,
                "parent": parent.map(|p| p.id),
            }),
        )?;
        tracing::info!(operation = %id, org = ?org, phase = first.as_str(), %actor, "operation started");
        hemvist_proto::failpoints::check(&format!(
            "control.{}.{}",
            P::KIND.as_str(),
            first.as_str()
        ))?;
        record.try_into()
    }

    /// Records `op`'s move to phase `to` (with `detail` replacing its detail, when given), audited
    /// in the same transaction. `None` if the operation was no longer where `op` saw it: read it
    /// again rather than repeat the side effects of `to`.
    pub fn advance<P: Phase>(
        &self,
        op: &Operation<P>,
        to: P,
        detail: Option<serde_json::Value>,
    ) -> Result<Option<Operation<P>>, HemvistError> {
        self.transition(op, to, None, detail)
    }

    /// Ends `op` in the final phase `to` with the error that brought it there.
    pub fn fail<P: Phase>(
        &self,
        op: &Operation<P>,
        to: P,
        error: &HemvistError,
    ) -> Result<Option<Operation<P>>, HemvistError> {
        self.transition(op, to, Some((error.kind, error.message.as_str())), None)
    }

    /// As [`Plane::fail`], into a phase that may not be final (a rollback under way), with
    /// `detail` replacing the operation's.
    pub fn fail_with<P: Phase>(
        &self,
        op: &Operation<P>,
        to: P,
        error: &HemvistError,
        detail: serde_json::Value,
    ) -> Result<Option<Operation<P>>, HemvistError> {
        self.transition_with(
            op,
            to,
            Some((error.kind, error.message.as_str())),
            Some(detail),
            None,
        )
    }

    /// Records `op`'s move to phase `to` and, in the same transaction, the org's placement
    /// switch to `placement`: the one moment its writer changes.
    pub fn advance_switching<P: Phase>(
        &self,
        op: &Operation<P>,
        to: P,
        detail: serde_json::Value,
        placement: PlacementSwitch<'_>,
    ) -> Result<Option<Operation<P>>, HemvistError> {
        self.transition_with(op, to, None, Some(detail), Some(placement))
    }

    fn transition<P: Phase>(
        &self,
        op: &Operation<P>,
        to: P,
        error: Option<(ErrorKind, &str)>,
        detail: Option<serde_json::Value>,
    ) -> Result<Option<Operation<P>>, HemvistError> {
        self.transition_with(op, to, error, detail, None)
    }

    fn transition_with<P: Phase>(
        &self,
        op: &Operation<P>,
        to: P,
        error: Option<(ErrorKind, &str)>,
        detail: Option<serde_json::Value>,
        placement: Option<PlacementSwitch<'_>>,
    ) -> Result<Option<Operation<P>>, HemvistError> {
        // Who asked, and everything the operation knows at this step (for a move: from and to,
        // generations, the final position, the pause): each phase's entry tells its own story.
        let audit = serde_json::json!({
            "operation": op.record.id,
            "requested_by": op.record.requested_by,
            "from": op.phase.as_str(),
            "to": to.as_str(),
            "error": error.map(|(k, m)| serde_json::json!({"kind": k.as_str(), "message": m})),
            "detail": detail.as_ref().unwrap_or(&op.record.detail),
        });
        let moved = self.store.advance_operation(&Transition {
            id: &op.record.id,
            from: op.phase.as_str(),
            to: to.as_str(),
            finished: to.is_final(),
            error,
            detail: detail.as_ref(),
            actor: "control",
            action: &format!("{}.{}", P::KIND.as_str(), to.as_str()),
            audit: &audit,
            placement,
        })?;
        if moved.is_some() {
            lock(&self.ops.stalled).remove(&op.record.id);
            tracing::info!(operation = %op.record.id, org = ?op.record.org,
                from = op.phase.as_str(), to = to.as_str(), "operation phase");
            // A crash here is a crash after the phase is recorded, before any of its effects.
            hemvist_proto::failpoints::check(&format!(
                "control.{}.{}",
                P::KIND.as_str(),
                to.as_str()
            ))?;
        }
        moved.map(Operation::try_from).transpose()
    }

    /// The orgs an unfinished operation owns: the reconciler leaves them to it.
    pub fn owned_orgs(&self) -> Result<std::collections::HashSet<OrgId>, HemvistError> {
        Ok(self.store.owned_orgs()?.into_iter().collect())
    }

    pub fn operations(&self) -> Result<Vec<OperationRecord>, HemvistError> {
        Ok(self.store.operations()?)
    }

    /// A node's report on a copy: kept (in memory) for the operation's driver, which it wakes.
    pub fn copy_progress(&self, mut p: CopyProgress) {
        if lock(&self.ops.ended).contains(&p.operation) {
            return;
        }
        let mut all = lock(&self.ops.progress);
        // What nodes report is bounded by what operations exist, not by what they send.
        if all.len() >= 10_000 && !all.contains_key(&p.operation) {
            return;
        }
        p.failing_since_ms = match all.get(&p.operation) {
            Some(old) if old.state == "failed" && p.state == "failed" => old.failing_since_ms,
            _ => p.at_ms,
        };
        all.insert(p.operation.clone(), p);
        drop(all);
        self.wake_operations.notify_one();
    }

    /// The last report on `operation`'s copy from `node`.
    pub fn progress_of(&self, operation: &str, node: &NodeId) -> Option<CopyProgress> {
        lock(&self.ops.progress)
            .get(operation)
            .filter(|p| &p.node == node)
            .cloned()
    }

    /// The operation's secret, made when first asked for; `true` if it is new (every step that
    /// carries it must be sent again).
    pub fn secret_of(&self, operation: &str) -> Result<(String, bool), HemvistError> {
        let mut secrets = lock(&self.ops.secrets);
        if let Some(s) = secrets.get(operation) {
            return Ok((s.clone(), false));
        }
        let s = hemvist_proto::random::hex(32)?;
        secrets.insert(operation.to_string(), s.clone());
        Ok((s, true))
    }

    /// How long `op`'s current phase has been driven by this process: a phase's time limits
    /// count from the later of when it was recorded and when this control plane (maybe just
    /// restarted, its nodes still reconnecting) first stepped it.
    pub fn in_phase_ms<P: Phase>(&self, op: &Operation<P>) -> i64 {
        let now = now_ms();
        let mut stepping = lock(&self.ops.stepping);
        let seen = stepping
            .entry(op.record.id.clone())
            .and_modify(|(phase, since)| {
                if phase != op.phase.as_str() {
                    *phase = op.phase.as_str().to_string();
                    *since = now;
                }
            })
            .or_insert_with(|| (op.phase.as_str().to_string(), now));
        now - seen.1.max(op.record.updated_ms)
    }

    /// Raises (or keeps) the alarm on `op` when its phase, one it cannot leave backwards, has
    /// waited longer than `limit_ms`, saying what for; clears it when it has not. `true` while
    /// raised.
    pub fn watch_stall<P: Phase>(
        &self,
        op: &Operation<P>,
        limit_ms: i64,
        waiting_for: impl FnOnce() -> String,
    ) -> bool {
        let waited = self.in_phase_ms(op);
        let mut stalled = lock(&self.ops.stalled);
        if waited <= limit_ms {
            stalled.remove(&op.record.id);
            return false;
        }
        let phase = op.phase.as_str();
        if stalled.get(&op.record.id).is_none_or(|s| s.phase != phase) {
            let stall = Stall {
                kind: P::KIND.as_str(),
                phase,
                since_ms: now_ms() - waited,
                waiting_for: waiting_for(),
            };
            tracing::error!(operation = %op.record.id, org = ?op.record.org, phase,
                waited_ms = waited, waiting_for = %stall.waiting_for,
                "operation stalled: it cannot go back from this phase and waits");
            stalled.insert(op.record.id.clone(), stall);
        }
        true
    }

    /// How many operations are stalled now (`hemvist_operations_stalled`).
    pub fn stalled_count(&self) -> u64 {
        lock(&self.ops.stalled).len() as u64
    }

    /// Forgets what an ended operation kept in memory.
    /// What rollouts' passes found settled: forgotten when a pin changes (their next passes
    /// look at every org again).
    pub fn forget_rollout_passes(&self) {
        lock(&self.ops.rollouts).clear();
    }

    pub fn forget_operation(&self, operation: &str) {
        lock(&self.ops.stalled).remove(operation);
        lock(&self.ops.progress_written).remove(operation);
        lock(&self.ops.rollouts).remove(operation);
        lock(&self.ops.ended).insert(operation.to_string());
        lock(&self.ops.secrets).remove(operation);
        lock(&self.ops.progress).remove(operation);
        lock(&self.ops.stepping).remove(operation);
        let prefix = format!("{operation}.");
        lock(&self.ops.delivered).retain(|id, _| !id.starts_with(&prefix));
    }

    /// Drives one step: persisted before it is first sent, sent when due (never sent, unanswered
    /// for `command_retry_ms`, answered "retry" that long ago, `force`d, or — for a step kept in
    /// a node's memory — the node has a new session since), and its record returned.
    pub fn drive_step(
        &self,
        step: &Step<'_>,
        force: bool,
        command: impl FnOnce() -> NodeCommand,
    ) -> Result<CommandRecord, HemvistError> {
        let id = format!("{}.{}", step.operation, step.name);
        let cmd = self.store.ensure_command(&NewCommand {
            id: &id,
            node: step.node,
            org: step.org,
            kind: step.kind,
            generation: step.generation,
            payload: None,
            operation: Some(step.operation),
        })?;
        let Some(epoch) = self
            .nodes
            .sessions()
            .into_iter()
            .find(|(n, _)| n == step.node)
            .map(|(_, e)| e)
        else {
            return Ok(cmd);
        };
        let delivered = lock(&self.ops.delivered).get(&id).copied();
        let stale = now_ms() - cmd.updated_ms > self.config.command_retry_ms as i64;
        let due = force
            || match cmd.state {
                CommandState::Pending => true,
                CommandState::Sent => stale || delivered != Some(epoch),
                CommandState::Retry => stale,
                CommandState::Done => step.again_on_new_session && delivered != Some(epoch),
                CommandState::Failed => false,
            };
        if due {
            if cmd.state == CommandState::Done {
                // Sent again to a new session: open until it answers again (marked before it
                // goes, so a quick answer is not overwritten).
                self.store
                    .ack_command(step.node, &id, CommandState::Sent, None, None)?;
            }
            if self
                .nodes
                .send_command(step.node, &id, Some(step.operation), command())
            {
                tracing::info!(node = %step.node, command = %id, attempt = cmd.attempts + 1, "sent operation step");
                self.store.mark_command_sent(&id)?;
                lock(&self.ops.delivered).insert(id.clone(), epoch);
            } else if cmd.state == CommandState::Done {
                // Not sent after all: as it was.
                self.store
                    .ack_command(step.node, &id, CommandState::Done, None, None)?;
            }
        }
        Ok(self.store.command(&id)?.unwrap_or(cmd))
    }

    /// An operation as the API shows it: its record, its steps, and its copy's progress.
    pub fn operation_view(&self, id: &str) -> Result<serde_json::Value, HemvistError> {
        let record = self.operation(id)?;
        // A fleet operation's steps are one per tenant: its detail sums them up instead.
        let steps: Vec<CommandRecord> = match &record.org {
            Some(org) => self
                .store
                .commands_for_org(org)?
                .into_iter()
                .filter(|c| c.operation.as_deref() == Some(id))
                .collect(),
            None => Vec::new(),
        };
        let progress = lock(&self.ops.progress).get(id).map(|p| {
            serde_json::json!({
                "node": p.node,
                "state": p.state,
                "lsn": p.lsn,
                "bytes": p.bytes,
                "error": p.error.as_ref().map(|e| e.message.clone()),
                "at_ms": p.at_ms,
            })
        });
        let source_lsn = record
            .org
            .as_ref()
            .and_then(|org| self.replication.get(org))
            .map(|r| (r.generation, r.lsn));
        let mut v =
            serde_json::to_value(&record).map_err(|e| HemvistError::internal(e.to_string()))?;
        v["steps"] =
            serde_json::to_value(steps).map_err(|e| HemvistError::internal(e.to_string()))?;
        v["progress"] = progress.unwrap_or(serde_json::Value::Null);
        v["children"] = self
            .store
            .children_of(id)?
            .into_iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id, "kind": c.kind, "phase": c.phase, "finished_ms": c.finished_ms,
                    "error": c.error,
                })
            })
            .collect();
        v["stalled"] = lock(&self.ops.stalled)
            .get(id)
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null);
        v["replication"] = source_lsn
            .map(|(g, l)| serde_json::json!({"generation": g, "lsn": l}))
            .unwrap_or(serde_json::Value::Null);
        Ok(v)
    }

    /// Cancels an operation as its kind allows: a move rolls back before its switch (and a
    /// residency change with it), a rollout is aborted; a failover cannot be cancelled.
    pub fn cancel_operation(&self, id: &str, actor: &str) -> Result<OperationRecord, HemvistError> {
        let record = self.operation(id)?;
        match OperationKind::parse(&record.kind) {
            Some(OperationKind::Move) => self.cancel_move(id, actor),
            Some(OperationKind::Rollout) => self.abort_rollout(id, actor),
            Some(OperationKind::SetResidency) => self.cancel_residency_change(id, actor),
            _ => Err(HemvistError::conflict(format!(
                "operation {id} is a {}, which cannot be cancelled",
                record.kind
            ))),
        }
    }

    pub fn operation(&self, id: &str) -> Result<OperationRecord, HemvistError> {
        self.store
            .operation(id)?
            .ok_or_else(|| HemvistError::not_found(format!("no operation {id}")))
    }
}

/// Drives the `Destroy` step of `op` on `node` (a branch's, an erased org's, or a forbidden
/// region's copy there);
/// whether it is done. A node that fails it raises an alarm and is asked again.
pub(crate) fn destroy_on_node<P: Phase>(
    plane: &Plane,
    op: &Operation<P>,
    node: &NodeId,
    generation: Generation,
) -> Result<bool, HemvistError> {
    let org = op.org().clone();
    let cmd = plane.drive_step(
        &Step {
            operation: &op.record.id,
            name: &format!("destroy-{node}"),
            node,
            org: &org,
            kind: CommandKind::Destroy,
            generation,
            again_on_new_session: false,
        },
        false,
        || NodeCommand::Destroy {
            org: org.clone(),
            generation,
        },
    )?;
    match cmd.state {
        CommandState::Done => Ok(true),
        CommandState::Failed => {
            // A node that cannot delete what it holds is an alarm, not a reason to forget it.
            plane.watch_stall(op, 0, || {
                format!(
                    "{node} to destroy its copy of {org}; it failed: {}",
                    cmd.error.as_deref().unwrap_or("no reason given")
                )
            });
            if now_ms() - cmd.updated_ms > plane.config.command_retry_ms as i64 {
                let kind = cmd.error_kind.unwrap_or(hemvist_proto::ErrorKind::Internal);
                let error = cmd.error.clone().unwrap_or_default();
                plane.store.ack_command(
                    node,
                    &cmd.id,
                    CommandState::Retry,
                    Some((kind, &error)),
                    None,
                )?;
            }
            Ok(false)
        }
        _ => {
            plane.watch_stall(op, plane.config.move_stall_ms as i64, || {
                format!("{node} to destroy its copy of {org} (is it up?)")
            });
            Ok(false)
        }
    }
}

/// Every node's routing cache learns an org's new home (one that misses it is resynced).
pub(crate) fn tell_every_node(
    plane: &Plane,
    org: &OrgId,
    region: &hemvist_proto::RegionId,
    node: &NodeId,
    generation: Generation,
) -> Result<(), HemvistError> {
    let node_url = plane
        .store
        .node(node)?
        .map(|n| n.public_url)
        .unwrap_or_default();
    plane.nodes.broadcast_placements(PlacementUpdate {
        full: false,
        placements: vec![Placement {
            org: org.clone(),
            region: region.clone(),
            node: node.clone(),
            node_url,
            generation,
        }],
        removed: Vec::new(),
    });
    if org.is_branch() {
        // Its new node shows its banner from the start.
        plane.send_branch_label(org)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A kind's phases as a move will have them (the real ones come with `move_org.rs`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Steps {
        Preparing,
        Copying,
        Done,
        RolledBack,
    }

    impl Phase for Steps {
        const KIND: OperationKind = OperationKind::Move;
        const ALL: &'static [Self] = &[
            Steps::Preparing,
            Steps::Copying,
            Steps::Done,
            Steps::RolledBack,
        ];
        fn as_str(self) -> &'static str {
            match self {
                Steps::Preparing => "preparing",
                Steps::Copying => "copying",
                Steps::Done => "done",
                Steps::RolledBack => "rolled_back",
            }
        }
        fn is_final(self) -> bool {
            matches!(self, Steps::Done | Steps::RolledBack)
        }
    }

    fn plane() -> (Plane, tempfile_dir::Dir) {
        let dir = tempfile_dir::Dir::new();
        let text = format!(
            "data_dir = {:?}\nadmin_token = \"admin-token-0123456789\"\n\
             join_token = \"join-token-0123456789\"\ndefault_region = \"eu-north\"\n\
             [[regions]]\nid = \"eu-north\"\nname = \"Stockholm\"\njurisdiction = \"EU\"\n\
             object_store = \"file:///dev/null\"\n",
            dir.0.display().to_string()
        );
        let config: crate::ControlConfig = toml::from_str(&text).unwrap();
        let plane = Plane::open(config, Arc::new(crate::hub::Hub::default())).unwrap();
        (plane, dir)
    }

    mod tempfile_dir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU64, Ordering};
                static N: AtomicU64 = AtomicU64::new(0);
                let p = std::env::temp_dir().join(format!(
                    "hemvist-ops-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn an_operation_owns_its_org_until_it_ends_and_each_phase_is_recorded_once() {
        let (plane, _dir) = plane();
        let org = OrgId::parse("acme").unwrap();
        let op = plane
            .begin(
                &org,
                Steps::Preparing,
                "ops-laptop",
                serde_json::json!({"to": "x"}),
            )
            .unwrap();
        assert!(op.record.id.starts_with("move-acme-"));
        assert!(plane.owned_orgs().unwrap().contains(&org));
        let err = plane
            .begin(
                &org,
                Steps::Preparing,
                "ops-laptop",
                serde_json::Value::Null,
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict, "{err}");

        let copying = plane.advance(&op, Steps::Copying, None).unwrap().unwrap();
        assert_eq!(copying.phase, Steps::Copying);
        // A driver that restarted holding the old view repeats nothing.
        assert!(plane.advance(&op, Steps::Copying, None).unwrap().is_none());

        let why = HemvistError::unavailable("the target node died");
        let ended = plane
            .fail(&copying, Steps::RolledBack, &why)
            .unwrap()
            .unwrap();
        assert_eq!(ended.phase, Steps::RolledBack);
        assert_eq!(ended.record.error_kind, Some(ErrorKind::Unavailable));
        assert!(plane.owned_orgs().unwrap().is_empty());

        let audit = plane.store.audit_for_org(&org).unwrap();
        let actions: Vec<&str> = audit.iter().filter_map(|a| a["action"].as_str()).collect();
        assert_eq!(
            actions,
            ["move.started", "move.copying", "move.rolled_back"]
        );
        assert_eq!(audit[0]["actor"], "ops-laptop");
    }
}
