//! Operator-facing operations on orgs: create (placement + persistence + notifying nodes), read,
//! and the operator's acceptance of an older restore point for a rebuild.
//! An org is created once: asking again with the same parameters (name, and the region,
//! residency and durability when given) returns it unchanged, and anything else under its id is
//! a conflict that names the difference and changes nothing.

use std::net::IpAddr;

use hemvist_proto::{Generation, HemvistError, NodeId, OrgId, RegionId};
use serde::{Deserialize, Serialize};

use crate::link::{NodeCommand, Placement, PlacementUpdate};
use crate::placement::{self, Hint, NodeLoad};
use crate::plane::Plane;
use crate::residency::ResidencyPolicy;
use crate::store::{CommandRecord, Created, NewOrg, ObservedRecord, OrgRecord};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    /// `EU`, `EU,US`, `eu-north`...; absent means anywhere.
    #[serde(default)]
    pub residency: Option<String>,
    /// `async` (the default: a write is in object storage within the replication interval) or
    /// `sync` (a write is acknowledged only once it is in object storage).
    #[serde(default)]
    pub durability: Option<String>,
}

/// What a create asked for, to compare with an org that exists already.
struct Asked<'a> {
    name: &'a str,
    region: Option<&'a RegionId>,
    residency: &'a ResidencyPolicy,
    durability: Option<&'a str>,
}

/// `POST /orgs/{id}/accept-older`: why the operator takes the older point.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptOlder {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CreatedOrg {
    pub created: bool,
    pub org: OrgView,
}

#[derive(Debug, Serialize)]
pub struct OrgView {
    pub id: OrgId,
    pub name: String,
    pub home_region: RegionId,
    pub residency: String,
    pub allowed_regions: Vec<RegionId>,
    pub node: NodeId,
    pub node_url: Option<String>,
    pub generation: Generation,
    pub placement_reason: String,
    pub created_ms: i64,
    pub durability: String,
    /// Desired placement is held by the node at the current generation.
    pub ready: bool,
    /// The schema version its node reports it at.
    pub schema_version: Option<u32>,
    /// The version the control plane holds it at (its node migrates it only when told).
    pub schema_held: u32,
    /// The fingerprint of the migration files it ran, as its node reports it.
    pub schema_fingerprint: Option<String>,
    /// When backups of the org were first reported (none yet: `null`).
    pub backed_up_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct OrgDetail {
    #[serde(flatten)]
    pub org: OrgView,
    pub observed: Vec<ObservedRecord>,
    /// The backup position its node last reported, and the lag now (ms).
    pub replication: Option<crate::replication::ReplicationView>,
    pub replication_lag_ms: Option<i64>,
    /// The newest backup position nodes reported, as persisted: a rebuild must reach it.
    pub known_position: Option<crate::store::StoredPosition>,
    /// An operator accepted an older point for the next rebuild (until a newer position).
    pub accepts_older: bool,
    pub commands: Vec<CommandRecord>,
    pub audit: Vec<serde_json::Value>,
    /// Every placement the org has had, oldest first (the last is where it lives now).
    pub locations: Vec<crate::store::PlacementSpan>,
    /// The unfinished operation that owns the org, if any (a move: its secondary copy, where it
    /// is being prepared, is in its detail's `to_node`).
    pub operation: Option<crate::store::OperationRecord>,
}

fn check_name(name: &str) -> Result<String, HemvistError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(HemvistError::invalid("org name is empty"));
    }
    if name.chars().count() > 200 {
        return Err(HemvistError::invalid(
            "org name is longer than 200 characters",
        ));
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    {
        return Err(HemvistError::invalid(
            "org name contains control or bidirectional-override characters",
        ));
    }
    Ok(name.to_string())
}

impl Plane {
    /// The regions `org`'s residency policy allows, of those configured.
    pub(crate) fn allowed_regions(&self, org: &OrgRecord) -> Vec<RegionId> {
        ResidencyPolicy::from_stored(&org.residency)
            .allowed_regions(&self.config.regions)
            .into_iter()
            .map(|r| r.id.clone())
            .collect()
    }

    /// The `host` command for `org` at `generation`, the one builder of it. A node with no file
    /// of the org restores it, held to the newest position known (or what an operator accepted);
    /// `moved_here`: a move's finished copy is in place, so it hosts that file and never restores.
    pub(crate) fn host_command(
        &self,
        org: &OrgRecord,
        generation: Generation,
        moved_here: bool,
    ) -> Result<NodeCommand, HemvistError> {
        Ok(NodeCommand::Host {
            org: org.id.clone(),
            generation,
            name: org.name.clone(),
            allowed_regions: self.allowed_regions(org),
            durability: org.durability.clone(),
            data_key: org.data_key.clone().unwrap_or_default(),
            // Finding no file of a moved copy would mean a lost copy, never "new org".
            expect_backup: moved_here || org.backed_up_ms.is_some(),
            moved_here,
            known: if moved_here {
                None
            } else {
                org.known.map(Into::into)
            },
            accept_older: !moved_here && org.accepts_older(),
            schema: self.schema_of(org)?,
            restore_to: None,
            branch_of: None,
        })
    }

    pub fn create_org(&self, req: CreateOrg, actor: &str) -> Result<CreatedOrg, HemvistError> {
        let id = OrgId::parse(&req.id)?;
        if id.is_branch() {
            return Err(HemvistError::invalid(format!(
                "org id {id}: '--' is reserved for branches (`hemvist branch create {} --name {}`)",
                id.parent().map(|p| p.to_string()).unwrap_or_default(),
                id.as_str()
                    .split_once("--")
                    .map(|(_, n)| n)
                    .unwrap_or_default()
            )));
        }
        let name = check_name(&req.name)?;
        let residency = match &req.residency {
            Some(spec) => ResidencyPolicy::parse(spec, &self.config.regions)?,
            None => ResidencyPolicy::default(),
        };
        let hint = match (&req.region, &req.ip) {
            (Some(_), Some(_)) => {
                return Err(HemvistError::invalid("give a region or an IP, not both"))
            }
            (Some(r), None) => Hint::Region(RegionId::parse(r)?),
            (None, Some(ip)) => {
                let addr: IpAddr = ip.trim().parse().map_err(|_| {
                    let shown: String =
                        ip.chars().take(60).flat_map(char::escape_default).collect();
                    HemvistError::invalid(format!("\"{shown}\" is not an IP address"))
                })?;
                match &self.geoip {
                    None => Hint::NoGeoIp {
                        ip: addr.to_string(),
                    },
                    Some(db) => match db.country(addr) {
                        Ok(Some(country)) => Hint::Country {
                            ip: addr.to_string(),
                            country,
                        },
                        Ok(None) => Hint::UnknownIp {
                            ip: addr.to_string(),
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "GeoIP lookup failed");
                            Hint::UnknownIp {
                                ip: addr.to_string(),
                            }
                        }
                    },
                }
            }
            (None, None) => Hint::None,
        };

        let asked_durability = match req.durability.as_deref().map(str::trim) {
            None | Some("") => None,
            Some("async") => Some("async"),
            Some("sync") => Some("sync"),
            Some(other) => {
                return Err(HemvistError::invalid(format!(
                    "durability {other:?}: use async or sync"
                )))
            }
        };
        let asked = Asked {
            name: &name,
            region: match &hint {
                Hint::Region(r) => Some(r),
                _ => None,
            },
            residency: &residency,
            durability: asked_durability,
        };
        if let Some(at) = self.store.tombstone(&id)? {
            return Err(HemvistError::conflict(format!(
                "org {id} was erased at {at} ms: its id is not used again; nothing was created"
            )));
        }
        // Creating an org twice must not need a healthy node the second time.
        if let Some(existing) = self.store.org(&id)? {
            return self.same_or_conflict(existing, &asked);
        }
        let durability = asked_durability.unwrap_or("async").to_string();
        let loads = self.node_loads()?;
        let decision = placement::place(
            &self.config.regions,
            &self.config.default_region,
            &loads,
            &residency,
            &hint,
        )?;
        let created = self.store.create_org(&NewOrg {
            id,
            name: name.clone(),
            home_region: decision.region.clone(),
            residency: residency.to_stored(),
            placement_reason: decision.reason.clone(),
            node_id: decision.node.clone(),
            durability,
            data_key: hemvist_proto::random::hex(32)?,
            schema_version: self.new_org_schema()?,
            requested_by: actor.to_string(),
        })?;
        match created {
            Created::Existing(existing) => self.same_or_conflict(existing, &asked),
            Created::New(org) => {
                tracing::info!(org = %org.id, node = %org.node_id, generation = %org.generation, reason = %org.placement_reason, "org placed");
                self.metrics.orgs_created.inc();
                if let Some(p) = self.placement_of(&org)? {
                    self.nodes.broadcast_placements(PlacementUpdate {
                        full: false,
                        placements: vec![p],
                        removed: Vec::new(),
                    });
                }
                self.reconcile_soon(&org.node_id);
                Ok(CreatedOrg {
                    created: true,
                    org: self.view(org)?,
                })
            }
        }
    }

    /// The existing org, if every parameter asked matches it; else a conflict naming each
    /// difference. A parameter not given (no region, no residency, no durability) matches.
    fn same_or_conflict(
        &self,
        existing: OrgRecord,
        asked: &Asked<'_>,
    ) -> Result<CreatedOrg, HemvistError> {
        let existing_residency = ResidencyPolicy::from_stored(&existing.residency);
        let mut differences = Vec::new();
        if existing.name != asked.name {
            differences.push(format!(
                "its name is \"{}\", not \"{}\"",
                existing.name, asked.name
            ));
        }
        if let Some(region) = asked.region.filter(|r| **r != existing.home_region) {
            differences.push(format!(
                "it lives in {}, not {region}",
                existing.home_region
            ));
        }
        if &existing_residency != asked.residency && !asked.residency.is_unrestricted() {
            differences.push(format!(
                "its residency is {}, not {}",
                existing_residency.describe(),
                asked.residency.describe()
            ));
        }
        if let Some(d) = asked.durability.filter(|d| *d != existing.durability) {
            differences.push(format!(
                "its durability is {}, not {d}",
                existing.durability
            ));
        }
        if differences.is_empty() {
            return Ok(CreatedOrg {
                created: false,
                org: self.view(existing)?,
            });
        }
        Err(HemvistError::conflict(format!(
            "org {} already exists and differs: {}; nothing was changed",
            existing.id,
            differences.join("; ")
        )))
    }

    /// An operator accepts that the org's rebuild restores the newest point its backups reach,
    /// though it is older than the position nodes reported: recorded against that position
    /// (a newer report lapses it), audited with who asked, why, and what the node last said it
    /// can reach; the refused `host` is sent again at once.
    pub fn accept_older(
        &self,
        id: &str,
        req: AcceptOlder,
        actor: &str,
    ) -> Result<serde_json::Value, HemvistError> {
        let id = OrgId::parse(id)?;
        let org = self
            .store
            .org(&id)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {id}")))?;
        let reason: String = req.reason.unwrap_or_default().chars().take(500).collect();
        // What the node said it can reach, in its refusal of the host command.
        let refusal = self
            .store
            .commands_for_org(&id)?
            .into_iter()
            .filter(|c| {
                c.kind == crate::store::CommandKind::Host
                    && c.node_id == org.node_id
                    && c.generation == org.generation
            })
            .find_map(|c| c.error);
        let detail = serde_json::json!({
            "requested_by": actor,
            "reason": reason,
            "node": org.node_id,
            "generation": org.generation.get(),
            "known": org.known,
            "refusal": refusal,
        });
        let org = self
            .store
            .accept_older(&id, actor, &detail)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {id}")))?;
        tracing::warn!(org = %id, %actor, known = ?org.known,
            "operator accepted an older restore point for the org's rebuild");
        self.reconcile_soon(&org.node_id);
        Ok(serde_json::json!({ "org": id, "accepted": detail }))
    }

    pub fn node_loads(&self) -> Result<Vec<NodeLoad>, HemvistError> {
        let counts: std::collections::HashMap<NodeId, u64> =
            self.store.tenants_per_node()?.into_iter().collect();
        let draining = self.store.draining_nodes()?;
        Ok(self
            .store
            .nodes()?
            .into_iter()
            .map(|n| NodeLoad {
                healthy: self.nodes.healthy(&n.id),
                draining: draining.contains_key(&n.id),
                tenants: counts.get(&n.id).copied().unwrap_or(0),
                capacity: n.capacity,
                region: n.region,
                id: n.id,
            })
            .collect())
    }

    fn placement_of(&self, org: &OrgRecord) -> Result<Option<Placement>, HemvistError> {
        let node = self.store.node(&org.node_id)?;
        Ok(node.map(|n| Placement {
            org: org.id.clone(),
            region: org.home_region.clone(),
            node: n.id,
            node_url: n.public_url,
            generation: org.generation,
        }))
    }

    /// Every org's placement, as nodes cache it for routing.
    pub fn placements(&self) -> Result<Vec<Placement>, HemvistError> {
        let urls: std::collections::HashMap<NodeId, String> = self
            .store
            .nodes()?
            .into_iter()
            .map(|n| (n.id, n.public_url))
            .collect();
        Ok(self
            .store
            .orgs()?
            .into_iter()
            .map(|o| Placement {
                node_url: urls.get(&o.node_id).cloned().unwrap_or_default(),
                org: o.id,
                region: o.home_region,
                node: o.node_id,
                generation: o.generation,
            })
            .collect())
    }

    pub fn view(&self, org: OrgRecord) -> Result<OrgView, HemvistError> {
        let observed = self.store.observed_for_org(&org.id)?;
        let held = observed
            .iter()
            .find(|o| o.node_id == org.node_id && o.generation == org.generation);
        let node_url = self.store.node(&org.node_id)?.map(|n| n.public_url);
        let residency = ResidencyPolicy::from_stored(&org.residency);
        Ok(OrgView {
            allowed_regions: self.allowed_regions(&org),
            residency: residency.describe(),
            ready: held.is_some(),
            schema_version: held.map(|o| o.schema_version),
            schema_held: match org.schema_version {
                Some(v) => v,
                None => self.current_schema()?,
            },
            schema_fingerprint: held.map(|o| o.schema_fingerprint.clone()),
            id: org.id,
            name: org.name,
            home_region: org.home_region,
            node: org.node_id,
            node_url,
            generation: org.generation,
            placement_reason: org.placement_reason,
            created_ms: org.created_ms,
            durability: org.durability,
            backed_up_ms: org.backed_up_ms,
        })
    }

    /// A page of orgs by id: up to `limit` after the cursor `after` (the last id of the
    /// previous page), so listing stays as fast at 100,000 orgs as at ten.
    pub fn list_orgs(
        &self,
        after: Option<&OrgId>,
        limit: usize,
    ) -> Result<Vec<OrgView>, HemvistError> {
        self.store
            .orgs_page(after, limit)?
            .into_iter()
            .map(|o| self.view(o))
            .collect()
    }

    /// Orgs whose id starts with `text` or whose name contains it, at most `limit` (an
    /// operator's search box).
    pub fn search_orgs(&self, text: &str, limit: usize) -> Result<Vec<OrgView>, HemvistError> {
        let text: String = text
            .trim()
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
        self.store
            .search_orgs(&text, limit)?
            .into_iter()
            .map(|o| self.view(o))
            .collect()
    }

    /// The org's data key, for a restore outside its node; every request is audited.
    pub fn data_key(&self, id: &str, actor: &str) -> Result<String, HemvistError> {
        let id = OrgId::parse(id)?;
        let org = self
            .store
            .org(&id)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {id}")))?;
        let key = org.data_key.ok_or_else(|| {
            HemvistError::not_found(format!(
                "org {id} has no data key (created before keys, or its key was destroyed)"
            ))
        })?;
        self.store.audit(
            actor,
            "data_key.read",
            Some(&id),
            &serde_json::json!({"purpose": "restore"}),
        )?;
        Ok(key)
    }

    /// Destroys the control plane's copy of the org's data key, the only one that survives a
    /// node's restart: the org's backups become unreadable everywhere. Audited.
    pub fn destroy_data_key(&self, id: &str, actor: &str) -> Result<(), HemvistError> {
        let id = OrgId::parse(id)?;
        let org = self
            .store
            .org(&id)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {id}")))?;
        if self.store.destroy_data_key(&id)? {
            // The node's copy in memory goes too: nothing more is sealed with a key nobody
            // will ever hold again (its backups stop until the org is erased or given a new key).
            let revoked = self.nodes.send_keys(
                &org.node_id,
                vec![crate::link::OrgKey {
                    org: id.clone(),
                    generation: org.generation,
                    data_key: String::new(),
                }],
            );
            tracing::warn!(org = %id, %actor, node_told = revoked,
                "data key destroyed: the org's backups are unreadable");
            self.store.audit(
                actor,
                "data_key.destroyed",
                Some(&id),
                &serde_json::json!({}),
            )?;
        }
        Ok(())
    }

    pub fn show_org(&self, id: &str) -> Result<OrgDetail, HemvistError> {
        let id = OrgId::parse(id)?;
        let org = self
            .store
            .org(&id)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {id}")))?;
        let replication = self.replication.get(&id);
        Ok(OrgDetail {
            replication_lag_ms: replication
                .as_ref()
                .map(|r| r.lag_ms(crate::clock::now_ms())),
            replication,
            known_position: org.known,
            accepts_older: org.accepts_older(),
            observed: self.store.observed_for_org(&id)?,
            commands: self.store.commands_for_org(&id)?,
            audit: self.store.audit_for_org(&id)?,
            locations: self.store.placement_history(&id)?,
            operation: self
                .store
                .open_operations()?
                .into_iter()
                .filter(|o| o.org.as_ref() == Some(&id))
                // The owner, not a child it runs.
                .min_by_key(|o| o.parent.is_some()),
            org: self.view(org)?,
        })
    }
}
