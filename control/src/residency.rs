//! An org's residency policy: the jurisdictions or regions its data may live in. Enforced, not
//! advised: placement refuses any region outside it, and nodes refuse hosting commands outside it.

use std::collections::BTreeSet;

use hemvist_proto::{HemvistError, RegionId};
use serde::{Deserialize, Serialize};

use crate::config::RegionConfig;
use crate::store::StoredResidency;

/// Empty on both sides means "anywhere".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyPolicy {
    #[serde(default)]
    pub jurisdictions: BTreeSet<String>,
    #[serde(default)]
    pub regions: BTreeSet<RegionId>,
}

impl ResidencyPolicy {
    /// Parses `EU`, `EU,US` or `eu-north,eu-central`: each item is a configured region id or a
    /// configured jurisdiction. Anything else is an error, so a typo cannot widen a policy.
    pub fn parse(spec: &str, regions: &[RegionConfig]) -> Result<Self, HemvistError> {
        let mut policy = ResidencyPolicy::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(r) = regions.iter().find(|r| r.id.as_str() == item) {
                policy.regions.insert(r.id.clone());
            } else if let Some(r) = regions
                .iter()
                .find(|r| r.jurisdiction.eq_ignore_ascii_case(item))
            {
                policy.jurisdictions.insert(r.jurisdiction.clone());
            } else {
                let known: BTreeSet<&str> = regions
                    .iter()
                    .flat_map(|r| [r.id.as_str(), r.jurisdiction.as_str()])
                    .collect();
                let shown: String = item
                    .chars()
                    .take(40)
                    .flat_map(char::escape_default)
                    .collect();
                return Err(HemvistError::invalid(format!(
                    "residency \"{shown}\" is neither a region nor a jurisdiction; known: {}",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        if policy.is_unrestricted() {
            // A policy given must say something: `","` or `" "` silently meaning "anywhere"
            // would turn a typo into no restriction at all.
            return Err(HemvistError::invalid(
                "residency names no region or jurisdiction; leave it out to allow anywhere",
            ));
        }
        Ok(policy)
    }

    pub fn is_unrestricted(&self) -> bool {
        self.jurisdictions.is_empty() && self.regions.is_empty()
    }

    pub fn allows(&self, region: &RegionConfig) -> bool {
        self.is_unrestricted()
            || self.regions.contains(&region.id)
            || self.jurisdictions.contains(&region.jurisdiction)
    }

    pub fn allowed_regions<'a>(&self, regions: &'a [RegionConfig]) -> Vec<&'a RegionConfig> {
        regions.iter().filter(|r| self.allows(r)).collect()
    }

    /// The form the store keeps: the same lists, sorted.
    pub fn to_stored(&self) -> StoredResidency {
        StoredResidency {
            jurisdictions: self.jurisdictions.iter().cloned().collect(),
            regions: self.regions.iter().cloned().collect(),
        }
    }

    pub fn from_stored(stored: &StoredResidency) -> Self {
        ResidencyPolicy {
            jurisdictions: stored.jurisdictions.iter().cloned().collect(),
            regions: stored.regions.iter().cloned().collect(),
        }
    }

    /// `EU + eu-north`, or `anywhere`.
    pub fn describe(&self) -> String {
        if self.is_unrestricted() {
            return "anywhere".into();
        }
        self.jurisdictions
            .iter()
            .map(String::as_str)
            .chain(self.regions.iter().map(RegionId::as_str))
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stockholm() -> Vec<RegionConfig> {
        vec![RegionConfig {
            id: RegionId::parse("eu-north").unwrap(),
            name: "Stockholm".into(),
            jurisdiction: "EU".into(),
            countries: vec!["SE".into()],
            object_store: "file:///tmp/eu-north".into(),
            object_store_endpoint: None,
            object_store_s3_region: None,
        }]
    }

    #[test]
    fn the_stored_form_is_the_json_of_the_policy() {
        let regions = stockholm();
        let policy = ResidencyPolicy::parse("EU,eu-north", &regions).unwrap();
        let stored = policy.to_stored();
        assert_eq!(
            serde_json::to_string(&stored).unwrap(),
            serde_json::to_string(&policy).unwrap(),
            "databases written before the split read the same"
        );
        assert_eq!(ResidencyPolicy::from_stored(&stored), policy);
    }

    #[test]
    fn a_policy_that_names_nothing_is_refused_not_read_as_anywhere() {
        let regions = stockholm();
        for spec in [",", " ", "", " , ,"] {
            let err = ResidencyPolicy::parse(spec, &regions).unwrap_err();
            assert!(err.message.contains("names no region"), "{spec:?}: {err}");
        }
    }
}
