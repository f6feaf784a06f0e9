//! A fleet for the control plane's benchmarks (`bench report`, `bench dashboard`): three
//! regions, one node record each, N orgs filled straight into the store through its own
//! functions (the path `orgs create` takes, less the node's round trip), and the configuration
//! of a control plane over that store, bound to 127.0.0.1, with a made-up admin token.

use std::path::Path;

use hemvist_control::config::{AuditConfig, CheckpointStore, LockMode};
use hemvist_control::store::{NewOrg, NodeRecord, RegionRecord, Store, StoredResidency};
use hemvist_control::{ControlConfig, RegionConfig};
use hemvist_proto::{NodeId, OrgId, RegionId};

const REGIONS: &[(&str, &str)] = &[("eu-north", "EU"), ("eu-central", "EU"), ("us-east", "US")];

/// The fleet's regions, their stores under `dir`.
pub fn regions(dir: &Path) -> anyhow::Result<Vec<RegionConfig>> {
    REGIONS
        .iter()
        .map(|(id, j)| {
            Ok(RegionConfig {
                id: RegionId::parse(id)?,
                name: id.to_string(),
                jurisdiction: j.to_string(),
                countries: Vec::new(),
                object_store: format!("file://{}", dir.join("objects").join(id).display()),
                object_store_endpoint: None,
                object_store_s3_region: None,
            })
        })
        .collect()
}

/// `orgs` orgs (`org-00000`, … named by `name_of`), round robin over the regions, into the
/// store at `db`.
pub fn fill(
    db: &Path,
    regions: &[RegionConfig],
    orgs: usize,
    name_of: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let store = Store::open(db)?;
    let records: Vec<RegionRecord<'_>> = regions
        .iter()
        .map(|r| RegionRecord {
            id: &r.id,
            name: &r.name,
            jurisdiction: &r.jurisdiction,
            countries: &r.countries,
            object_store: &r.object_store,
        })
        .collect();
    store.sync_regions(&records)?;
    for r in regions {
        store.upsert_node(&NodeRecord {
            id: NodeId::parse(&format!("{}-1", r.id))?,
            region: r.id.clone(),
            public_url: "http://127.0.0.1:9".into(),
            capacity: 1_000_000,
            version: "bench".into(),
            last_seen_ms: 0,
        })?;
    }
    for i in 0..orgs {
        let r = &regions[i % regions.len()];
        store.create_org(&NewOrg {
            id: OrgId::parse(&format!("org-{i:05}"))?,
            name: name_of(i),
            home_region: r.id.clone(),
            residency: StoredResidency {
                jurisdictions: vec![r.jurisdiction.clone()],
                regions: Vec::new(),
            },
            placement_reason: "bench".into(),
            node_id: NodeId::parse(&format!("{}-1", r.id))?,
            durability: "async".into(),
            data_key: hemvist_proto::random::hex(32)?,
            schema_version: 1,
            requested_by: "bench".into(),
        })?;
    }
    Ok(())
}

/// A control plane over the store in `data`, with a signing key and checkpoints under `dir`.
pub fn control_config(
    dir: &Path,
    data: &Path,
    regions: Vec<RegionConfig>,
    admin_token: &str,
) -> anyhow::Result<ControlConfig> {
    Ok(ControlConfig {
        api_listen: "127.0.0.1:0".parse()?,
        grpc_listen: "127.0.0.1:0".parse()?,
        data_dir: data.to_path_buf(),
        store: None,
        replica: Default::default(),
        admin_token: admin_token.to_string(),
        join_token: hemvist_proto::random::hex(24)?,
        default_region: regions[0].id.clone(),
        geoip: None,
        lease_ttl_ms: 10_000,
        heartbeat_interval_ms: 1_000,
        command_retry_ms: 5_000,
        move_stall_ms: 30_000,
        failover_grace_ms: 60_000,
        regions,
        tls: None,
        node_ca_file: None,
        limits: Default::default(),
        branches: Default::default(),
        audit: AuditConfig {
            signing_key: Some(hemvist_proto::random::hex(32)?),
            checkpoint_interval_ms: 200,
            checkpoints: Some(CheckpointStore {
                url: format!("file://{}", dir.join("checkpoints").display()),
                endpoint: None,
                s3_region: "us-east-1".into(),
                ca_file: None,
                access_key_id: None,
                secret_access_key: None,
                lock: LockMode::Off,
                lock_days: 1,
            }),
        },
    })
}
