//! `orgs set-residency`: changing an org's residency policy. Allowed at once when nothing of
//! the org is anywhere the new policy forbids: not its home, not a region it lived in before
//! (its backups there are kept for the nodes' retention period), not a live branch. Otherwise
//! it is refused with each forbidden location named, and nothing changes — unless `move_to`
//! names a region the new policy allows: then one operation carries the org there and deletes
//! what is left where the new policy forbids (`operations/set_residency.rs`). A live branch
//! where the new policy forbids is refused either way: destroy it first.

use hemvist_proto::{ErrorKind, HemvistError, OrgId};
use serde::Deserialize;

use crate::clock::format_ms;
use crate::plane::Plane;
use crate::residency::ResidencyPolicy;

/// `POST /api/v1/orgs/{id}/residency`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyRequest {
    /// `EU`, `EU,US`, `eu-north,eu-central`, or `anywhere`.
    pub policy: String,
    /// Why, for the audit log.
    #[serde(default)]
    pub reason: Option<String>,
    /// Carry the org to this region (one the new policy allows) and delete its backups where
    /// the new policy forbids, as one operation.
    #[serde(default)]
    pub move_to: Option<String>,
}

/// What a policy change did.
pub enum ResidencyOutcome {
    /// The policy changed at once (nothing of the org was where the new one forbids).
    Changed(crate::store::OrgRecord),
    /// An operation carries the org over first (`move_to`).
    Started(crate::store::OperationRecord),
}

impl Plane {
    /// Changes `org`'s policy, or starts the operation that does (see the module doc).
    pub fn set_residency(
        &self,
        org: &str,
        req: ResidencyRequest,
        actor: &str,
    ) -> Result<ResidencyOutcome, HemvistError> {
        let org = OrgId::parse(org)?;
        if org.is_branch() {
            return Err(HemvistError::invalid(format!(
                "{org} is a branch: it follows its parent's policy"
            )));
        }
        let spec = req.policy.trim();
        let new = if spec.eq_ignore_ascii_case("anywhere") {
            ResidencyPolicy::default()
        } else {
            ResidencyPolicy::parse(spec, &self.config.regions)?
        };
        let record = self
            .store
            .org(&org)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {org}")))?;
        if let Some(open) = self.store.open_operation_of(Some(&org))? {
            return Err(HemvistError::conflict(format!(
                "org {org} is busy: {} {} is in phase {}; nothing was changed",
                open.kind, open.id, open.phase
            )));
        }
        let old = ResidencyPolicy::from_stored(&record.residency);
        let move_to = req
            .move_to
            .as_deref()
            .map(|r| {
                let id = hemvist_proto::RegionId::parse(r.trim())?;
                let region = self
                    .config
                    .regions
                    .iter()
                    .find(|c| c.id == id)
                    .ok_or_else(|| HemvistError::invalid(format!("region {id} is not configured")))?;
                if !new.allows(region) {
                    return Err(HemvistError::new(
                        ErrorKind::Residency,
                        format!(
                            "--move-to {id}: the new policy {} does not allow it; nothing was changed",
                            new.describe()
                        ),
                    ));
                }
                Ok(id)
            })
            .transpose()?;
        if old == new && move_to.is_none() {
            return Ok(ResidencyOutcome::Changed(record));
        }
        let allowed = |region: &hemvist_proto::RegionId| {
            self.config
                .regions
                .iter()
                .find(|r| r.id == *region)
                .is_some_and(|r| new.allows(r))
        };
        let mut forbidden = Vec::new();
        let mut branches = Vec::new();
        if !allowed(&record.home_region) {
            forbidden.push(format!("it lives in {}", record.home_region));
        }
        for span in self.store.placement_history(&org)? {
            if let Some(to) = span.to_ms {
                if !allowed(&span.region) {
                    forbidden.push(format!(
                        "its backups from its time in {} (until {}) are kept there for the retention period",
                        span.region,
                        format_ms(to)
                    ));
                }
            }
        }
        for b in self.store.live_branches(Some(&org))? {
            if !allowed(&b.region) {
                branches.push(format!("its branch {} lives in {}", b.id, b.region));
            }
        }
        forbidden.dedup();
        if move_to.is_some() && !branches.is_empty() {
            // Carrying the org over leaves its branches where they are: they go first.
            return Err(HemvistError::new(
                ErrorKind::Residency,
                format!(
                    "org {org} cannot take the policy {}: {} (destroy it first: `hemvist branch \
                     destroy`); nothing was changed",
                    new.describe(),
                    branches.join("; ")
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
        if let Some(to) = move_to {
            if !forbidden.is_empty() || to != record.home_region {
                let op = self.begin_residency_change(&org, &old, &new, to, reason, actor)?;
                tracing::info!(org = %org, operation = %op.id, "residency change started");
                return Ok(ResidencyOutcome::Started(op));
            }
        }
        if old == new {
            return Ok(ResidencyOutcome::Changed(record));
        }
        forbidden.extend(branches);
        if !forbidden.is_empty() {
            return Err(HemvistError::new(
                ErrorKind::Residency,
                format!(
                    "org {org} cannot take the policy {}: {}; nothing was changed (`--move-to \
                     REGION` carries it to a region the new policy allows and deletes the rest)",
                    new.describe(),
                    forbidden.join("; ")
                ),
            ));
        }
        let detail = serde_json::json!({
            "from": old.describe(),
            "to": new.describe(),
            "residency": new.to_stored(),
            "reason": reason,
        });
        if !self
            .store
            .set_residency(&org, &record.residency, &new.to_stored(), actor, &detail)?
        {
            return Err(HemvistError::conflict(format!(
                "org {org}'s policy changed meanwhile; nothing was changed, try again"
            )));
        }
        tracing::info!(org = %org, from = %old.describe(), to = %new.describe(), "residency policy changed");
        self.store
            .org(&org)?
            .map(ResidencyOutcome::Changed)
            .ok_or_else(|| HemvistError::not_found(format!("no org {org}")))
    }
}
