//! The one way to write to a tenant: through the write gate, then the commit, then what every
//! committed write owes the rest of the node (the search index's data version, the replicator's
//! dirty mark) and, for an org in `sync` durability, the wait until the write is in object
//! storage. Nothing is acknowledged that the gate did not allow, and nothing commits under
//! another generation than the one the gate allowed it at. A write that fails for want of
//! space is answered as storage full, never as an internal error.

use std::sync::Arc;
use std::time::Duration;

use hemvist_proto::{HemvistError, OrgId};

use crate::backup::replicator::Replicator;
use crate::gate::WriteGate;
use crate::search::DataVersions;
use crate::state::NodeState;
use crate::tenants::TenantStore;

/// How long a `sync` write waits for object storage before its caller hears it is not there.
const SYNC_WAIT: Duration = Duration::from_secs(10);

pub struct Writer {
    tenants: Arc<TenantStore>,
    hosted: Arc<NodeState>,
    gate: Arc<WriteGate>,
    versions: Arc<DataVersions>,
    backup: Option<Arc<Replicator>>,
}

impl Writer {
    pub fn new(
        tenants: Arc<TenantStore>,
        hosted: Arc<NodeState>,
        gate: Arc<WriteGate>,
        versions: Arc<DataVersions>,
        backup: Option<Arc<Replicator>>,
    ) -> Self {
        Writer {
            tenants,
            hosted,
            gate,
            versions,
            backup,
        }
    }

    pub fn write<T>(
        &self,
        org: &OrgId,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, HemvistError> {
        let generation = self.gate.check(org)?;
        // Checked again inside the write transaction: a fence taken meanwhile wins, and so does
        // a new generation (a rollback replaced the file this write may hold a handle of).
        let now = || match self.gate.check_now(org)? {
            g if g == generation => Ok(()),
            g => Err(HemvistError::unavailable(format!(
                "org {org} was hosted again here (at {g}) while this write waited; try again"
            ))),
        };
        let out = self
            .tenants
            .write_checked(org, now, f)
            .map_err(|e| match self.gate.disk() {
                Some(disk) => disk.classify(e),
                None => e,
            })?;
        self.versions.bump(org);
        if let Some(b) = &self.backup {
            let mark = b.mark_dirty(org);
            // Durability `sync`: the write is acknowledged once it is in object storage. It
            // is committed here already; if the store stays away, the caller hears so and the
            // write is shipped when the store is back.
            if self.hosted.hosted(org).is_some_and(|h| h.sync) {
                b.wait_durable(org, mark, SYNC_WAIT)?;
                self.gate.may_acknowledge(org, generation)?;
            }
        }
        Ok(out)
    }

    /// Reads need no gate: a fenced node may still show what it has.
    pub fn read<T>(
        &self,
        org: &OrgId,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HemvistError> {
        self.tenants.read(org, f)
    }
}
