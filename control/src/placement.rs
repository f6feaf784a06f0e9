//! Where a new org goes: a pure function of the regions, the nodes' health and load, the org's
//! residency policy and a hint (an explicit region or a country from GeoIP).
//!
//! Goals, in order: never violate residency; honour an explicit region; serve users from the
//! region that serves their country; otherwise the configured default; within a region, the
//! least-loaded healthy node (fewest tenants for its capacity, then id for determinism).

use hemvist_proto::{HemvistError, NodeId, RegionId};

use crate::config::RegionConfig;
use crate::residency::ResidencyPolicy;

#[derive(Debug, Clone)]
pub enum Hint {
    Region(RegionId),
    /// The client's country (ISO code) as GeoIP saw it, with the IP for the explanation.
    Country {
        ip: String,
        country: String,
    },
    /// GeoIP had nothing for this IP.
    UnknownIp {
        ip: String,
    },
    /// No GeoIP database is configured.
    NoGeoIp {
        ip: String,
    },
    None,
}

#[derive(Debug, Clone)]
pub struct NodeLoad {
    pub id: NodeId,
    pub region: RegionId,
    pub healthy: bool,
    /// Being drained: it takes no new org.
    pub draining: bool,
    pub tenants: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub region: RegionId,
    pub node: NodeId,
    /// One sentence for people and the audit log: why here.
    pub reason: String,
}

pub fn place(
    regions: &[RegionConfig],
    default_region: &RegionId,
    nodes: &[NodeLoad],
    policy: &ResidencyPolicy,
    hint: &Hint,
) -> Result<Decision, HemvistError> {
    let allowed = policy.allowed_regions(regions);
    if allowed.is_empty() {
        return Err(HemvistError::new(
            hemvist_proto::ErrorKind::Residency,
            format!(
                "no configured region satisfies the residency policy ({}); nothing was created",
                policy.describe()
            ),
        ));
    }
    let find = |id: &RegionId| regions.iter().find(|r| &r.id == id);
    let fallback = |why: String| -> (RegionId, String) {
        match find(default_region).filter(|r| policy.allows(r)) {
            Some(r) => (r.id.clone(), format!("{why}; default region {}", r.id)),
            None => (
                allowed[0].id.clone(),
                format!(
                    "{why}; default region {default_region} is outside the residency policy ({}), \
                     so the first allowed region {}",
                    policy.describe(),
                    allowed[0].id
                ),
            ),
        }
    };

    let (region, reason) = match hint {
        Hint::Region(id) => {
            let Some(r) = find(id) else {
                return Err(HemvistError::invalid(format!("unknown region {id}")));
            };
            if !policy.allows(r) {
                return Err(HemvistError::new(
                    hemvist_proto::ErrorKind::Residency,
                    format!(
                        "region {id} ({}) is outside the residency policy ({}); nothing was created",
                        r.jurisdiction,
                        policy.describe()
                    ),
                ));
            }
            (r.id.clone(), format!("explicit region {id}"))
        }
        Hint::Country { ip, country } => {
            match regions.iter().find(|r| r.countries.iter().any(|c| c == country)) {
                Some(r) if policy.allows(r) => (
                    r.id.clone(),
                    format!("IP {ip} is in {country}, served by {}", r.id),
                ),
                Some(r) => fallback(format!(
                    "IP {ip} is in {country}, served by {}, which the residency policy ({}) excludes",
                    r.id,
                    policy.describe()
                )),
                None => fallback(format!("IP {ip} is in {country}, which no region serves")),
            }
        }
        Hint::UnknownIp { ip } => fallback(format!("GeoIP has no country for IP {ip}")),
        Hint::NoGeoIp { ip } => fallback(format!("no GeoIP database configured to place IP {ip}")),
        Hint::None => fallback("no region or IP given".into()),
    };

    let node = nodes
        .iter()
        .filter(|n| n.region == region && n.healthy && !n.draining && n.tenants < n.capacity)
        .min_by(|a, b| {
            let la = a.tenants as f64 / a.capacity.max(1) as f64;
            let lb = b.tenants as f64 / b.capacity.max(1) as f64;
            la.total_cmp(&lb).then_with(|| a.id.cmp(&b.id))
        })
        .ok_or_else(|| {
            HemvistError::unavailable(format!(
                "no healthy node with free capacity in region {region}; nothing was created"
            ))
        })?;
    Ok(Decision {
        region,
        node: node.id.clone(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: &str, j: &str, countries: &[&str]) -> RegionConfig {
        RegionConfig {
            id: RegionId::parse(id).unwrap(),
            name: id.into(),
            jurisdiction: j.into(),
            countries: countries.iter().map(|c| c.to_string()).collect(),
            object_store: format!("file:///tmp/{id}"),
            object_store_endpoint: None,
            object_store_s3_region: None,
        }
    }

    fn node(id: &str, region: &str, healthy: bool, tenants: u64) -> NodeLoad {
        NodeLoad {
            id: NodeId::parse(id).unwrap(),
            region: RegionId::parse(region).unwrap(),
            healthy,
            draining: false,
            tenants,
            capacity: 100,
        }
    }

    fn world() -> (Vec<RegionConfig>, RegionId, Vec<NodeLoad>) {
        (
            vec![
                region("eu-north", "EU", &["SE", "NO"]),
                region("us-east", "US", &["US"]),
            ],
            RegionId::parse("us-east").unwrap(),
            vec![
                node("n1", "eu-north", true, 10),
                node("n2", "eu-north", true, 3),
                node("n3", "eu-north", false, 0),
                node("u1", "us-east", true, 0),
            ],
        )
    }

    #[test]
    fn country_picks_region_and_least_loaded_healthy_node() {
        let (regions, default, nodes) = world();
        let hint = Hint::Country {
            ip: "1.2.3.4".into(),
            country: "SE".into(),
        };
        let d = place(
            &regions,
            &default,
            &nodes,
            &ResidencyPolicy::default(),
            &hint,
        )
        .unwrap();
        assert_eq!(d.region.as_str(), "eu-north");
        assert_eq!(d.node.as_str(), "n2");
    }

    #[test]
    fn residency_overrides_geo_and_impossible_policy_is_refused() {
        let (regions, default, nodes) = world();
        let eu = ResidencyPolicy::parse("EU", &regions).unwrap();
        let hint = Hint::Country {
            ip: "8.8.8.8".into(),
            country: "US".into(),
        };
        let d = place(&regions, &default, &nodes, &eu, &hint).unwrap();
        assert_eq!(d.region.as_str(), "eu-north");
        let us_region = Hint::Region(RegionId::parse("us-east").unwrap());
        let err = place(&regions, &default, &nodes, &eu, &us_region).unwrap_err();
        assert_eq!(err.kind, hemvist_proto::ErrorKind::Residency);
        assert!(ResidencyPolicy::parse("CH", &regions).is_err());
    }

    #[test]
    fn no_healthy_node_is_unavailable() {
        let (regions, default, mut nodes) = world();
        nodes.retain(|n| n.region.as_str() != "us-east");
        let err = place(
            &regions,
            &default,
            &nodes,
            &ResidencyPolicy::default(),
            &Hint::None,
        )
        .unwrap_err();
        assert_eq!(err.kind, hemvist_proto::ErrorKind::Unavailable);
    }
}
