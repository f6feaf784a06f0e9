//! What the control plane knows of every org's backups: the position each node last reported
//! (only changes are reported, with heartbeats) and the lag that follows from it. Kept in memory:
//! a node reports every position again on each new session, so a restarted control plane
//! learns it all back within a heartbeat. The newest position of each org is also persisted
//! (written only when it grows, one transaction per heartbeat): a node that lost its disk
//! reports nothing, and its rebuild must still reach that position.

use std::collections::HashMap;
use std::sync::Mutex;

use hemvist_proto::{HemvistError, NodeId, OrgId};
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

use crate::clock::now_ms;
use crate::store::Store;

/// An org is "behind" when its oldest unshipped write is older than this.
pub const BEHIND_MS: i64 = 5_000;

#[derive(Debug, Clone, Serialize)]
pub struct ReplicationView {
    pub node: NodeId,
    pub generation: u64,
    /// The LSN after the last object shipped, and when it was shipped.
    pub lsn: u64,
    pub shipped_ms: i64,
    /// The oldest write not yet in object storage, if any.
    pub unshipped_since_ms: Option<i64>,
    pub reported_ms: i64,
}

impl ReplicationView {
    /// How far behind the object store is now: 0 when everything is shipped.
    pub fn lag_ms(&self, now: i64) -> i64 {
        self.unshipped_since_ms.map_or(0, |t| (now - t).max(0))
    }
}

pub struct Replication {
    orgs: Mutex<HashMap<OrgId, ReplicationView>>,
    /// The newest (generation, LSN) of each org known to be in the store (since start).
    persisted: Mutex<HashMap<OrgId, (u64, u64)>>,
    /// Every reported position's lag at the time it was reported, in seconds.
    reported_lag: Histogram,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            orgs: Mutex::default(),
            persisted: Mutex::default(),
            reported_lag: crate::metrics::replication_lag_histogram(),
        }
    }
}

impl Replication {
    pub fn report(&self, org: OrgId, view: ReplicationView) {
        self.reported_lag
            .observe(view.lag_ms(view.reported_ms) as f64 / 1000.0);
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        // A node still holding an older generation (a move's source) never hides the new one.
        if orgs
            .get(&org)
            .is_some_and(|old| old.generation > view.generation)
        {
            return;
        }
        orgs.insert(org, view);
    }

    /// Persists the positions of one heartbeat `(org, generation, lsn, reported_ms)` that are
    /// newer than what this control plane already stored (after a restart, each once more: the
    /// store keeps only a newer one).
    pub fn persist(
        &self,
        store: &Store,
        positions: Vec<(OrgId, u64, u64, i64)>,
    ) -> Result<(), HemvistError> {
        let grown: Vec<(OrgId, u64, u64, i64)> = {
            let persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
            positions
                .into_iter()
                .filter(|(org, g, lsn, _)| persisted.get(org).is_none_or(|had| (*g, *lsn) > *had))
                .collect()
        };
        if grown.is_empty() {
            return Ok(());
        }
        store.record_positions(&grown)?;
        let mut persisted = self.persisted.lock().unwrap_or_else(|p| p.into_inner());
        for (org, g, lsn, _) in grown {
            let had = persisted.entry(org).or_insert((g, lsn));
            *had = (*had).max((g, lsn));
        }
        Ok(())
    }

    pub fn get(&self, org: &OrgId) -> Option<ReplicationView> {
        self.orgs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
            .cloned()
    }

    /// The lags of the positions reported since start, for the control plane's metrics.
    pub fn reported_lag(&self) -> &Histogram {
        &self.reported_lag
    }

    /// The largest backup lag now among the orgs each node ships (ms; 0: all shipped).
    pub fn lag_by_node(&self) -> HashMap<NodeId, i64> {
        let now = now_ms();
        let orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        let mut lags: HashMap<NodeId, i64> = HashMap::new();
        for v in orgs.values() {
            let lag = lags.entry(v.node.clone()).or_default();
            *lag = (*lag).max(v.lag_ms(now));
        }
        lags
    }

    /// (largest lag, orgs behind by more than [`BEHIND_MS`]).
    pub fn summary(&self) -> (i64, u64) {
        let now = now_ms();
        let orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        let lags = orgs.values().map(|v| v.lag_ms(now));
        lags.fold((0, 0), |(max, behind), lag| {
            (max.max(lag), behind + u64::from(lag > BEHIND_MS))
        })
    }
}
