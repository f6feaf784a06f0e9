//! Rolling an org back to before its last schema migration: its tenant restored, on its own
//! node, to exactly the restore point that migration recorded (its backup position just
//! before), under a new generation. Every write since that point is lost, which the operator
//! confirmed. The whole rollback is in this file.
//!
//! ```text
//! placing ──► restoring ──► done
//!                 │
//!                 └──► failed   (the node could not reach the point: the org stays migrated,
//!                                and the reconciler hosts its copy at the new generation)
//! ```
//!
//! - **request**: the org's newest migration done by a rollout (not a dry run) gives the restore
//!   point and the version before; the org is pinned (rollouts leave it at that version until
//!   an operator unpins it), audited, so a running rollout does not migrate it again.
//! - **placing**: a new generation, recorded with the placement switch (same node).
//! - **restoring**: the node replaces its copy (to its trash) with the backups restored to the
//!   point and hosts that at the version before.
//!
//! Keeps true: the org's held version changes only when its node reports the restored copy.

use hemvist_proto::{ErrorKind, Generation, HemvistError, NodeId, RegionId};
use serde::{Deserialize, Serialize};

use super::{Operation, OperationKind, Phase, Step};
use crate::link::{NodeCommand, RestorePoint};
use crate::nodes::Migrated;
use crate::plane::Plane;
use crate::store::{CommandKind, CommandState, OperationRecord, PlacementSwitch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackPhase {
    Placing,
    Restoring,
    Done,
    Failed,
}

impl Phase for RollbackPhase {
    const KIND: OperationKind = OperationKind::Rollback;
    const ALL: &'static [Self] = &[
        RollbackPhase::Placing,
        RollbackPhase::Restoring,
        RollbackPhase::Done,
        RollbackPhase::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RollbackPhase::Placing => "placing",
            RollbackPhase::Restoring => "restoring",
            RollbackPhase::Done => "done",
            RollbackPhase::Failed => "failed",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, RollbackPhase::Done | RollbackPhase::Failed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackDetail {
    /// The rollout whose migration is undone.
    pub rollout: String,
    pub region: RegionId,
    pub node: NodeId,
    pub from_generation: Generation,
    pub from_version: u32,
    pub to_version: u32,
    pub point: RestorePoint,
    /// What the operator was told is lost.
    pub warning: String,
    #[serde(default)]
    pub to_generation: Option<Generation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The operator read the warning: every write since the restore point is lost.
    #[serde(default)]
    pub confirm: bool,
}

type Rollback = Operation<RollbackPhase>;

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("rollback: {e}"))
}

fn detail_json(d: &RollbackDetail) -> Result<serde_json::Value, HemvistError> {
    serde_json::to_value(d).map_err(internal)
}

impl Plane {
    /// The org's newest migration by a rollout: the rollout, the versions and the restore point.
    fn last_migration(
        &self,
        org: &hemvist_proto::OrgId,
    ) -> Result<Option<(String, Migrated)>, HemvistError> {
        let mut best: Option<(String, Migrated, i64)> = None;
        for cmd in self.store.commands_for_org(org)? {
            if cmd.kind != CommandKind::Migrate || cmd.state != CommandState::Done {
                continue;
            }
            let Some(m) = cmd
                .result
                .clone()
                .and_then(|r| serde_json::from_value::<Migrated>(r).ok())
            else {
                continue;
            };
            if m.to_version <= m.from_version || m.restore_generation == 0 {
                continue;
            }
            if best.as_ref().is_none_or(|b| cmd.updated_ms > b.2) {
                let rollout = cmd.operation.clone().unwrap_or_default();
                best = Some((rollout, m, cmd.updated_ms));
            }
        }
        Ok(best.map(|(r, m, _)| (r, m)))
    }

    /// Rolls `org` back to before its newest migration. Without `confirm`, refused (409) with
    /// the warning: what would be lost.
    pub fn request_rollback(
        &self,
        org: &str,
        req: RollbackRequest,
        actor: &str,
    ) -> Result<OperationRecord, HemvistError> {
        let org = hemvist_proto::OrgId::parse(org)?;
        let record = self
            .store
            .org(&org)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {org}")))?;
        let Some((rollout, m)) = self.last_migration(&org)? else {
            return Err(HemvistError::conflict(format!(
                "org {org} has no schema migration by a rollout to roll back"
            )));
        };
        if record.schema_version != Some(m.to_version) {
            return Err(HemvistError::conflict(format!(
                "org {org} is held at version {:?}, not at {} where its last migration left it: \
                 nothing was changed",
                record.schema_version, m.to_version
            )));
        }
        let ago_s = (crate::clock::now_ms() - m.restore_ms).max(0) / 1000;
        let warning = format!(
            "org {org} goes back to schema version {} as it was at its restore point ({} ms, \
             {ago_s} s ago): every write to it since then is lost",
            m.from_version, m.restore_ms
        );
        if !req.confirm {
            return Err(HemvistError::conflict(format!(
                "{warning}. Confirm to roll back (`--yes`, or \"confirm\": true)"
            )));
        }
        let detail = RollbackDetail {
            rollout,
            region: record.home_region.clone(),
            node: record.node_id.clone(),
            from_generation: record.generation,
            from_version: m.to_version,
            to_version: m.from_version,
            point: RestorePoint {
                generation: m.restore_generation,
                lsn: m.restore_lsn,
                at_ms: m.restore_ms,
            },
            warning,
            to_generation: None,
        };
        let op = self.begin(&org, RollbackPhase::Placing, actor, detail_json(&detail)?)?;
        self.store.set_pin(
            &org,
            Some(&format!(
                "rolled back to version {} by {}",
                detail.to_version, op.record.id
            )),
            actor,
        )?;
        self.forget_rollout_passes();
        self.wake_operations.notify_one();
        Ok(op.record)
    }
}

pub fn step(plane: &Plane, record: OperationRecord) -> Result<(), HemvistError> {
    let op: Rollback = record.try_into()?;
    let d: RollbackDetail = serde_json::from_value(op.record.detail.clone()).map_err(internal)?;
    match op.phase {
        RollbackPhase::Placing => placing(plane, &op, d),
        RollbackPhase::Restoring => restoring(plane, &op, d),
        RollbackPhase::Done | RollbackPhase::Failed => Ok(()),
    }
}

fn placing(plane: &Plane, op: &Rollback, mut d: RollbackDetail) -> Result<(), HemvistError> {
    let generation = plane.store.issue_generation()?;
    d.to_generation = Some(generation);
    let reason = format!(
        "rolled back to schema version {} by {}",
        d.to_version, op.record.requested_by
    );
    let switched = plane.advance_switching(
        op,
        RollbackPhase::Restoring,
        detail_json(&d)?,
        PlacementSwitch {
            reason: &reason,
            region: &d.region,
            node: &d.node,
            generation,
        },
    )?;
    if let Some(switched) = switched {
        super::tell_every_node(plane, op.org(), &d.region, &d.node, generation)?;
        restoring(plane, &switched, d)?;
    }
    Ok(())
}

fn restoring(plane: &Plane, op: &Rollback, d: RollbackDetail) -> Result<(), HemvistError> {
    let Some(generation) = d.to_generation else {
        return Err(internal("restoring without a generation"));
    };
    let org = plane
        .store
        .org(op.org())?
        .ok_or_else(|| internal(format!("org {} vanished", op.org())))?;
    let mut command = plane.host_command(&org, generation, false)?;
    if let NodeCommand::Host {
        restore_to,
        schema,
        expect_backup,
        ..
    } = &mut command
    {
        *restore_to = Some(d.point);
        *schema = plane.schema_target(d.to_version)?;
        *expect_backup = true;
    }
    let host = plane.drive_step(
        &Step {
            operation: &op.record.id,
            name: "restore",
            node: &d.node,
            org: op.org(),
            kind: CommandKind::Host,
            generation,
            again_on_new_session: false,
        },
        false,
        || command,
    )?;
    match host.state {
        CommandState::Done => {
            plane.store.set_org_schema(op.org(), d.to_version)?;
            if plane.advance(op, RollbackPhase::Done, None)?.is_some() {
                plane.forget_operation(&op.record.id);
                tracing::warn!(operation = %op.record.id, org = %op.org(), version = d.to_version,
                    "org rolled back to before its migration");
            }
        }
        CommandState::Failed => {
            let why = HemvistError::new(
                host.error_kind.unwrap_or(ErrorKind::Internal),
                format!(
                    "{} could not restore {} to its restore point: {}",
                    d.node,
                    op.org(),
                    host.error.as_deref().unwrap_or("no reason given")
                ),
            );
            if plane.fail(op, RollbackPhase::Failed, &why)?.is_some() {
                plane.forget_operation(&op.record.id);
            }
        }
        _ => {}
    }
    Ok(())
}
