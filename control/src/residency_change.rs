//! `orgs set-residency`: changing an org's residency policy. Allowed only when nothing of the
//! org is anywhere the new policy forbids: not its home, not a region it lived in before (its
//! backups there are kept for the nodes' retention period), not a live branch. Otherwise it is
//! refused with each forbidden location named, and nothing changes.
//!
//! Not built yet: `--move-to REGION` (move the org and delete the forbidden backups as one
//! operation); the refusal says so.

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
    /// Not supported yet: refused with an explanation.
    #[serde(default)]
    pub move_to: Option<String>,
}

impl Plane {
    /// Changes `org`'s policy (see the module doc); the org as it is afterwards.
    pub fn set_residency(
        &self,
        org: &str,
        req: ResidencyRequest,
        actor: &str,
    ) -> Result<crate::store::OrgRecord, HemvistError> {
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
        let old = ResidencyPolicy::from_stored(&record.residency);
        if old == new {
            return Ok(record);
        }
        let allowed = |region: &hemvist_proto::RegionId| {
            self.config
                .regions
                .iter()
                .find(|r| r.id == *region)
                .is_some_and(|r| new.allows(r))
        };
        let mut forbidden = Vec::new();
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
                forbidden.push(format!("its branch {} lives in {}", b.id, b.region));
            }
        }
        forbidden.dedup();
        if req.move_to.is_some() {
            return Err(HemvistError::invalid(
                "--move-to is not supported yet: move the org first (`hemvist orgs move`), \
                 then change its policy once nothing of it is left where the new one forbids; \
                 nothing was changed",
            ));
        }
        if !forbidden.is_empty() {
            return Err(HemvistError::new(
                ErrorKind::Residency,
                format!(
                    "org {org} cannot take the policy {}: {}; nothing was changed",
                    new.describe(),
                    forbidden.join("; ")
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
            .ok_or_else(|| HemvistError::not_found(format!("no org {org}")))
    }
}
