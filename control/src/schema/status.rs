//! `migrate status`: where the fleet's tenants stand. Tenants per schema version, per region
//! and node; tenants whose files differ from the held ones (same version, another fingerprint:
//! an edited file ran there); tenants behind the version they are held at, and those not
//! reported yet; pinned orgs.

use std::collections::BTreeMap;

use hemvist_proto::migration::fingerprint;
use hemvist_proto::HemvistError;
use serde::Serialize;

use crate::plane::Plane;
use crate::store::Pin;

/// At most this many org ids are listed per group (the counts are exact).
const SAMPLE: usize = 20;

#[derive(Debug, Serialize)]
pub struct SchemaStatus {
    /// The version new orgs start at.
    pub current: u32,
    /// The newest version the control plane holds a file for.
    pub newest: u32,
    pub tenants: usize,
    pub versions: Vec<VersionCount>,
    /// Tenants that ran files other than the held ones (by version and fingerprint).
    pub mismatched: Vec<Group>,
    /// Tenants whose node reports an older version than they are held at.
    pub behind: Group,
    /// Orgs whose node has not reported them (not hosted yet, or the node is down).
    pub unreported: Group,
    pub pinned: Vec<Pin>,
    /// The newest rollout's tenants that failed: the tenant, node, file, statement and error.
    pub failures: Vec<Failure>,
    /// The newest rollout: its id, phase and target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    pub org: String,
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct VersionCount {
    pub version: u32,
    pub tenants: usize,
    pub regions: BTreeMap<String, usize>,
    pub nodes: BTreeMap<String, usize>,
}

#[derive(Debug, Default, Serialize)]
pub struct Group {
    pub count: usize,
    pub orgs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl Group {
    fn add(&mut self, org: &str) {
        self.count += 1;
        if self.orgs.len() < SAMPLE {
            self.orgs.push(org.to_string());
        }
    }
}

impl Plane {
    pub fn schema_status(&self) -> Result<SchemaStatus, HemvistError> {
        let files = self.schema_files();
        let current = self.current_schema()?;
        // The fingerprint a tenant at version v has when it ran exactly the held files.
        let expected: Vec<String> = (0..=files.len())
            .map(|v| fingerprint(files[..v].iter().map(|f| (f.version, f.checksum.as_str()))))
            .collect();
        let mut versions: BTreeMap<u32, VersionCount> = BTreeMap::new();
        let mut mismatched: BTreeMap<(u32, String), Group> = BTreeMap::new();
        let mut behind = Group::default();
        let mut unreported = Group::default();
        let census = self.store.schema_census()?;
        // The newest rollout, and the tenants it could not migrate.
        let newest = self
            .store
            .operations()?
            .into_iter()
            .filter(|o| o.kind == "rollout")
            .max_by_key(|o| o.started_ms);
        let mut failures = Vec::new();
        if let Some(op) = &newest {
            for cmd in self.store.commands_of_operation(&op.id)? {
                if cmd.state != crate::store::CommandState::Failed {
                    continue;
                }
                let failed = cmd
                    .result
                    .clone()
                    .and_then(|r| serde_json::from_value::<crate::nodes::Migrated>(r).ok())
                    .and_then(|m| m.failed);
                failures.push(Failure {
                    org: cmd.org.to_string(),
                    node: cmd.node_id.to_string(),
                    file: failed.as_ref().map(|f| f.file.clone()),
                    statement: failed.as_ref().map(|f| f.statement.clone()),
                    error: failed
                        .map(|f| f.error)
                        .or(cmd.error.clone())
                        .unwrap_or_default(),
                });
            }
        }
        let rollout = newest.map(
            |o| serde_json::json!({"id": o.id, "phase": o.phase, "target": o.detail["target"]}),
        );
        for row in &census {
            let Some((version, fp)) = &row.reported else {
                unreported.add(row.org.as_str());
                continue;
            };
            let v = versions.entry(*version).or_insert_with(|| VersionCount {
                version: *version,
                tenants: 0,
                regions: BTreeMap::new(),
                nodes: BTreeMap::new(),
            });
            v.tenants += 1;
            *v.regions.entry(row.region.clone()).or_default() += 1;
            *v.nodes.entry(row.node.clone()).or_default() += 1;
            // An empty fingerprint: a node of an older release, which does not say.
            let known = expected.get(*version as usize);
            if !fp.is_empty() && known.is_some_and(|e| e != fp) || known.is_none() {
                mismatched
                    .entry((*version, fp.clone()))
                    .or_insert_with(|| Group {
                        version: Some(*version),
                        fingerprint: Some(fp.clone()),
                        ..Group::default()
                    })
                    .add(row.org.as_str());
            }
            if *version < row.held_at.unwrap_or(current) {
                behind.add(row.org.as_str());
            }
        }
        Ok(SchemaStatus {
            current,
            newest: files.len() as u32,
            tenants: census.len(),
            versions: versions.into_values().collect(),
            mismatched: mismatched.into_values().collect(),
            behind,
            unreported,
            pinned: self.store.pins()?,
            failures,
            rollout,
        })
    }
}
