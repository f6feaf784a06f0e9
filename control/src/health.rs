//! What nodes report of their tenants' requests and failures (5xx, SQLite errors), summed per
//! org in memory since this control plane started: a rollout compares the sums of the tenants
//! it migrated before and after their bake. Only orgs that exist are counted, so the map is
//! bounded by the fleet. And what each node last said of its data disk, for operators.

use hemvist_proto::{NodeId, OrgId};

use crate::plane::Plane;
pub use crate::plane::{HealthTotals, NodeDisk, TenantHealth};

impl TenantHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<OrgId, HealthTotals>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Plane {
    /// What a heartbeat said of the node's disk (a node that measured nothing says 0 free).
    pub fn node_disk_report(&self, node: &NodeId, free_bytes: u64, low: bool) {
        if free_bytes == 0 && !low {
            return;
        }
        let disk = NodeDisk {
            free_bytes,
            low,
            reported_ms: crate::clock::now_ms(),
        };
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        disks.insert(node.clone(), disk);
    }

    /// What `node` last said of its disk, if it said so within two leases (a silent node's old
    /// report is not shown as its state).
    pub fn node_disk(&self, node: &NodeId) -> Option<NodeDisk> {
        let fresh_from = crate::clock::now_ms() - 2 * self.config.lease_ttl_ms as i64;
        let disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        disks
            .get(node)
            .copied()
            .filter(|d| d.reported_ms >= fresh_from)
    }

    /// A heartbeat's counts for one org since the node's previous heartbeat.
    pub fn tenant_health(&self, org: OrgId, requests: u64, errors: u64) {
        let mut all = self.health.lock();
        if all.len() >= 1_000_000 && !all.contains_key(&org) {
            return;
        }
        let t = all.entry(org).or_default();
        t.requests = t.requests.saturating_add(requests);
        t.errors = t.errors.saturating_add(errors);
    }

    /// The org of `orgs` with the most failures so far, and its sums.
    pub fn worst_of(&self, orgs: &[OrgId]) -> Option<(OrgId, HealthTotals)> {
        let all = self.health.lock();
        orgs.iter()
            .filter_map(|o| all.get(o).map(|t| (o.clone(), *t)))
            .filter(|(_, t)| t.errors > 0)
            .max_by_key(|(_, t)| t.errors)
    }

    /// The sums over `orgs`.
    pub fn health_of(&self, orgs: &[OrgId]) -> HealthTotals {
        let all = self.health.lock();
        orgs.iter()
            .filter_map(|o| all.get(o))
            .fold(HealthTotals::default(), |a, t| HealthTotals {
                requests: a.requests + t.requests,
                errors: a.errors + t.errors,
            })
    }
}
