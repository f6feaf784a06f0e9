//! The driver: steps every unfinished operation whenever something it waits for may have
//! happened (an ack, a progress report) and at least every tick. Each step reads the operation
//! from the store, does what its phase needs (idempotently) and records the next phase, so a
//! driver that restarts — or a control plane that restarts — goes on where the store says.

use std::sync::Arc;
use std::time::Duration;

use hemvist_proto::HemvistError;
use tokio_util::sync::CancellationToken;

use super::{
    branch, branch_destroy, drain, erase, failover, move_org, rollback, rollout, set_residency,
    OperationKind,
};
use crate::plane::Plane;

const TICK: Duration = Duration::from_millis(250);

pub async fn run(plane: Arc<Plane>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = plane.wake_operations.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let p = plane.clone();
        match tokio::task::spawn_blocking(move || step_all(&p)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "operations pass failed; will retry"),
            Err(e) => tracing::error!(error = %e, "operations pass panicked; will retry"),
        }
    }
}

fn step_all(plane: &Plane) -> Result<(), HemvistError> {
    let parent_of = |org: &hemvist_proto::OrgId| set_residency::failover_parent(plane, org);
    if let Err(e) = failover::detect(plane, &parent_of) {
        tracing::warn!(error = %e, "looking for dead nodes failed; will retry");
    }
    if let Err(e) = drain::step(plane) {
        tracing::warn!(error = %e, "draining nodes failed; will retry");
    }
    if let Err(e) = branch_destroy::expire(plane) {
        tracing::warn!(error = %e, "destroying expired branches failed; will retry");
    }
    if let Err(e) = branch_destroy::move_strays(plane) {
        tracing::warn!(error = %e, "moving branches to their regions failed; will retry");
    }
    for record in plane.store.open_operations()? {
        let id = record.id.clone();
        let stepped = match OperationKind::parse(&record.kind) {
            Some(OperationKind::Move) => move_org::step(plane, record),
            Some(OperationKind::Failover) => failover::step(plane, record),
            Some(OperationKind::Rollout) => rollout::step(plane, record),
            Some(OperationKind::Rollback) => rollback::step(plane, record),
            Some(OperationKind::Branch) => branch::step(plane, record),
            Some(OperationKind::BranchDestroy) => branch_destroy::step(plane, record),
            Some(OperationKind::Erase) => erase::step(plane, record),
            Some(OperationKind::SetResidency) => set_residency::step(plane, record),
            None => Err(HemvistError::internal(format!(
                "operation {id} is of kind {:?}, which this control plane does not know",
                record.kind
            ))),
        };
        if let Err(e) = stepped {
            tracing::warn!(operation = %id, error = %e, "operation step failed; will retry");
        }
    }
    Ok(())
}
