//! `hemvist dev`: the whole system on one machine, with no external service. A control plane and
//! three nodes in three regions run in this process on loopback, each region backed by a local
//! object-store folder, and demo orgs are seeded in their home regions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hemvist_control::{ControlConfig, RegionConfig};
use hemvist_node::backup::store::BackupConfig;
use hemvist_node::NodeConfig;
use hemvist_proto::{NodeId, OrgId, RegionId};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use demo::Locale;

pub mod demo;
pub(crate) mod postgres;
pub(crate) mod replicas;
pub mod tls;
mod welcome;

use welcome::{print_welcome, DevJson, Login, NodeJson, OrgJson};

#[derive(Args)]
pub struct DevArgs {
    /// Where everything is kept; it survives a restart.
    #[arg(long, default_value = ".hemvist")]
    data: PathBuf,
    /// First of the loopback ports used: control API, control gRPC, then nodes at +11, +12, +13.
    /// 0 lets the system pick every port (see dev.json for where things ended up).
    #[arg(long, default_value_t = 7700)]
    port_base: u16,
    /// Contacts in the big demo org.
    #[arg(long, default_value_t = 50_000)]
    contacts: u64,
    /// A MaxMind-format GeoIP database; by default the one `scripts/setup` installs, if present.
    #[arg(long, env = "HEMVIST_GEOIP")]
    geoip: Option<PathBuf>,
    /// Every link over TLS: a throwaway CA and certificate are made in the data folder (the CA
    /// file is named in dev.json as `ca_file`, and the operator verbs trust it).
    #[arg(long)]
    tls: bool,
    /// A control plane of three replicas (separate processes) on a local PostgreSQL (Debian's
    /// `postgresql` package), one of which leads: kill the leader and another takes over.
    #[arg(long)]
    ha: bool,
}

/// The GeoIP file `scripts/setup` installs (CC0, from the npm registry).
pub const DEFAULT_GEOIP: &str =
    ".deps/node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb";

#[derive(Serialize, Deserialize)]
pub struct Secrets {
    admin_token: String,
    join_token: String,
    /// The seed of the key that signs the audit chain's checkpoints (added later: older
    /// folders get one on their next start).
    #[serde(default)]
    audit_signing_key: Option<String>,
}

impl Secrets {
    /// Fresh secrets, kept nowhere (a benchmark's).
    pub fn new() -> anyhow::Result<Secrets> {
        Ok(Secrets {
            admin_token: random_token()?,
            join_token: random_token()?,
            audit_signing_key: Some(hemvist_proto::random::hex(32)?),
        })
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn join_token(&self) -> &str {
        &self.join_token
    }
}

fn random_token() -> anyhow::Result<String> {
    Ok(hemvist_proto::random::hex(24)?)
}

fn secrets(dir: &Path) -> anyhow::Result<Secrets> {
    let path = dir.join("secrets.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut s: Secrets =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        if s.audit_signing_key.is_none() {
            s.audit_signing_key = Some(hemvist_proto::random::hex(32)?);
            std::fs::write(&path, serde_json::to_string_pretty(&s)?)?;
        }
        return Ok(s);
    }
    let s = Secrets {
        admin_token: random_token()?,
        join_token: random_token()?,
        audit_signing_key: Some(hemvist_proto::random::hex(32)?),
    };
    std::fs::write(&path, serde_json::to_string_pretty(&s)?)?;
    Ok(s)
}

struct DemoRegion {
    id: &'static str,
    name: &'static str,
    jurisdiction: &'static str,
    countries: &'static [&'static str],
}

const REGIONS: &[DemoRegion] = &[
    DemoRegion {
        id: "eu-north",
        name: "Stockholm",
        jurisdiction: "EU",
        countries: &["SE", "NO", "DK", "FI", "IS", "EE", "LV", "LT"],
    },
    DemoRegion {
        id: "eu-central",
        name: "Frankfurt",
        jurisdiction: "EU",
        countries: &[
            "DE", "AT", "CH", "NL", "BE", "LU", "FR", "IT", "ES", "PT", "PL", "CZ", "SK", "HU",
            "SI", "HR", "IE", "GB", "GR", "RO", "BG",
        ],
    },
    DemoRegion {
        id: "us-east",
        name: "Virginia",
        jurisdiction: "US",
        countries: &["US", "CA", "MX"],
    },
];

struct DemoOrg {
    id: &'static str,
    name: &'static str,
    region: &'static str,
    residency: &'static str,
    locale: Locale,
    big: bool,
}

const ORGS: &[DemoOrg] = &[
    DemoOrg {
        id: "nordlys",
        name: "Nordlys AB",
        region: "eu-north",
        residency: "EU",
        locale: Locale::Swedish,
        big: true,
    },
    DemoOrg {
        id: "rheinwerk",
        name: "Rheinwerk GmbH",
        region: "eu-central",
        residency: "EU",
        locale: Locale::German,
        big: false,
    },
    DemoOrg {
        id: "bluebird",
        name: "Bluebird Inc.",
        region: "us-east",
        residency: "US",
        locale: Locale::American,
        big: false,
    },
];

const DEMO_PASSWORD: &str = "hemvist-demo";

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let data = args.data.clone();
    std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
    let data = data.canonicalize()?;
    let secrets = secrets(&data)?;
    let tls = if args.tls {
        Some(tls::ensure(&data)?)
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let geoip = args
        .geoip
        .clone()
        .or_else(|| Some(PathBuf::from(DEFAULT_GEOIP)).filter(|p| p.is_file()))
        .map(|p| p.canonicalize().unwrap_or(p));
    if let Some(g) = &geoip {
        if !g.is_file() {
            bail!("GeoIP database {} does not exist", g.display());
        }
    }
    let port = |offset: u16| -> anyhow::Result<std::net::SocketAddr> {
        if args.port_base == 0 {
            return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        let p = args
            .port_base
            .checked_add(offset)
            .context("--port-base is too high")?;
        Ok(std::net::SocketAddr::from(([127, 0, 0, 1], p)))
    };

    let regions: Vec<RegionConfig> = REGIONS
        .iter()
        .map(|r| {
            let objects = data.join("objects").join(r.id);
            std::fs::create_dir_all(&objects)?;
            Ok(RegionConfig {
                id: RegionId::parse(r.id)?,
                name: r.name.into(),
                jurisdiction: r.jurisdiction.into(),
                countries: r.countries.iter().map(|c| c.to_string()).collect(),
                object_store: format!("file://{}", objects.display()),
                object_store_endpoint: None,
                object_store_s3_region: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let control_config = ControlConfig {
        api_listen: port(0)?,
        grpc_listen: port(1)?,
        data_dir: data.join("control"),
        store: None,
        replica: Default::default(),
        admin_token: secrets.admin_token.clone(),
        join_token: secrets.join_token.clone(),
        default_region: RegionId::parse("eu-central")?,
        geoip: geoip.clone(),
        lease_ttl_ms: 10_000,
        heartbeat_interval_ms: 1_000,
        command_retry_ms: 5_000,
        move_stall_ms: 30_000,
        failover_grace_ms: 60_000,
        regions,
        tls: tls.as_ref().map(|t| hemvist_net::tls::ServerTls {
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: None,
        }),
        node_ca_file: tls.as_ref().map(|t| t.ca.clone()),
        limits: Default::default(),
        branches: Default::default(),
        // Checkpoints in a folder beside the objects: a demo has no Object Lock.
        audit: hemvist_control::config::AuditConfig {
            signing_key: secrets.audit_signing_key.clone(),
            checkpoint_interval_ms: 10_000,
            checkpoints: Some(hemvist_control::config::CheckpointStore {
                url: format!("file://{}", data.join("audit-checkpoints").display()),
                endpoint: None,
                s3_region: "us-east-1".into(),
                ca_file: None,
                access_key_id: None,
                secret_access_key: None,
                lock: hemvist_control::config::LockMode::Off,
                lock_days: 1,
            }),
        },
    };
    control_config.validate()?;
    write_config(&data, "control.toml", &control_config)?;

    let shutdown = crate::shutdown_on_signal();
    let mut local_postgres = None;
    let mut replicas = None;
    let mut control_task = None;
    let bound = if args.ha {
        let free = |a: std::net::SocketAddr| -> anyhow::Result<std::net::SocketAddr> {
            Ok(std::net::TcpListener::bind(a)?.local_addr()?)
        };
        let pg = postgres::LocalPostgres::start(&data, free(port(9)?)?.port())?;
        let mut base = control_config.clone();
        base.store = Some(pg.database("hemvist")?);
        base.replica.lease_ttl_ms = 3_000;
        let mut addrs = Vec::new();
        for i in 0..3u16 {
            addrs.push((free(port(2 * i)?)?, free(port(2 * i + 1)?)?));
        }
        let r = replicas::Replicas::start(&data, &base, &secrets, &addrs, scheme, &shutdown)?;
        local_postgres = Some(pg);
        replicas = Some(r);
        hemvist_control::Bound {
            api: addrs[0].0,
            grpc: addrs[0].1,
        }
    } else {
        let (bound, task) = hemvist_control::start(control_config, shutdown.clone())
            .await
            .with_context(|| {
                format!(
                    "start the control plane (is port {} free? try --port-base)",
                    args.port_base
                )
            })?;
        control_task = Some(task);
        bound
    };
    let control_url = format!("{scheme}://{}", bound.api);
    let other_replicas: Vec<String> = replicas
        .as_ref()
        .map(|r| r.list.iter().skip(1).map(|(j, _)| j.grpc.clone()).collect())
        .unwrap_or_default();

    let mut nodes = Vec::new();
    for (i, r) in REGIONS.iter().enumerate() {
        let addr = port(11 + i as u16)?;
        // Bound here so the public URL is known before the node starts, even on port 0.
        let addr = std::net::TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .with_context(|| format!("bind node {}-1 on {addr} (try --port-base)", r.id))?;
        let config = NodeConfig {
            id: NodeId::parse(&format!("{}-1", r.id))?,
            region: RegionId::parse(r.id)?,
            control_url: format!("{scheme}://{}", bound.grpc),
            control_urls: other_replicas.clone(),
            join_token: secrets.join_token.clone(),
            listen: addr,
            public_url: Some(format!("{scheme}://{addr}")),
            control_tls: hemvist_node::config::ControlTls {
                ca: tls.as_ref().map(|t| t.ca.clone()),
                ..Default::default()
            },
            insecure: false,
            tls: tls.as_ref().map(|t| hemvist_net::tls::ServerTls {
                cert: t.cert.clone(),
                key: t.key.clone(),
                client_ca: None,
            }),
            limits: Default::default(),
            signin: Default::default(),
            data_dir: data.join("nodes").join(format!("{}-1", r.id)),
            capacity: 100_000,
            max_open_tenants: 1_024,
            idle_close_ms: 60_000,
            trash_grace_secs: 7 * 24 * 3600,
            idempotency_ttl_secs: 24 * 3600,
            disk_headroom_mib: 256,
            // Each region backs up to its own local folder, through the same object_store
            // code as an S3 bucket.
            backup: Some(BackupConfig::local(&data.join("objects").join(r.id))),
        };
        write_config(&data, &format!("node-{}-1.toml", r.id), &config)?;
        let running = hemvist_node::start(config, shutdown.clone())
            .await
            .with_context(|| format!("start node {}-1", r.id))?;
        nodes.push((r, running));
    }

    let control = Client::connect(
        &control_url,
        &secrets.admin_token,
        tls.as_ref().map(|t| t.ca.as_path()),
    )?;
    // Replicas elect a leader first (a follower answers 503 until one leads).
    wait_for_nodes(&control, nodes.len(), Duration::from_secs(60)).await?;

    let mut orgs = Vec::new();
    for o in ORGS {
        let created = create_org(&control, o.id, o.name, o.region, o.residency)
            .await
            .with_context(|| format!("create demo org {}", o.id))?;
        let (r, running) = nodes
            .iter()
            .find(|(r, _)| r.id == o.region)
            .context("demo org in an unknown region")?;
        let node = running.node.clone();
        let org = OrgId::parse(o.id)?;
        wait_hosted(&node, &org, Duration::from_secs(30)).await?;
        let target = if o.big {
            args.contacts
        } else {
            args.contacts.min(2_000)
        };
        let started = Instant::now();
        let (locale, seed) = (o.locale, fnv(o.id));
        let (n2, org2) = (node.clone(), org.clone());
        let added = tokio::task::spawn_blocking(move || {
            demo::seed_contacts(&n2.writer, &org2, locale, target, seed)
        })
        .await??;
        if added > 0 {
            tracing::info!(
                org = o.id,
                added,
                took_ms = started.elapsed().as_millis() as u64,
                "seeded demo contacts"
            );
        }
        let email = format!("demo@{}.example", o.id);
        add_user(&control, o.id, &email, "Demo User", DEMO_PASSWORD)
            .await
            .with_context(|| format!("add the demo user of {}", o.id))?;
        orgs.push(OrgJson {
            id: o.id.into(),
            name: o.name.into(),
            region: o.region.into(),
            node: created,
            url: format!("{}/o/{}/", running.node.public_url, o.id),
            contacts: target,
            login: Login {
                email,
                password: DEMO_PASSWORD.into(),
            },
        });
        let _ = r;
    }

    let dev = DevJson {
        control_url: control_url.clone(),
        control_grpc: format!("{scheme}://{}", bound.grpc),
        ca_file: tls.as_ref().map(|t| t.ca.display().to_string()),
        admin_token: secrets.admin_token.clone(),
        data_dir: data.display().to_string(),
        geoip: geoip.as_ref().map(|g| g.display().to_string()),
        replicas: replicas.as_ref().map(|r| r.json()).unwrap_or_default(),
        postgres: local_postgres.as_ref().map(|p| p.server_url.clone()),
        nodes: nodes
            .iter()
            .map(|(r, running)| NodeJson {
                id: running.node.config.id.to_string(),
                region: r.id.into(),
                region_name: r.name.into(),
                url: running.node.public_url.clone(),
                backup_url: running.node.config.backup.as_ref().map(|b| b.url.clone()),
            })
            .collect(),
        orgs,
    };
    std::fs::write(data.join("dev.json"), serde_json::to_string_pretty(&dev)?)?;
    print_welcome(&dev);

    shutdown.cancelled().await;
    for (_, running) in nodes {
        let _ = running.task.await;
    }
    if let Some(task) = control_task {
        let _ = task.await;
    }
    if let Some(r) = replicas {
        r.stopped().await;
    }
    drop(local_postgres);
    println!("hemvist dev stopped; data kept in {}", data.display());
    Ok(())
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn write_config<T: Serialize>(data: &Path, name: &str, config: &T) -> anyhow::Result<()> {
    let dir = data.join("config");
    std::fs::create_dir_all(&dir)?;
    let text = format!(
        "# Written by `hemvist dev` for reference; `hemvist dev` itself does not read it.\n{}",
        toml::to_string(config)?
    );
    std::fs::write(dir.join(name), text)?;
    Ok(())
}

async fn wait_hosted(
    node: &hemvist_node::Node,
    org: &OrgId,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while node.state.hosted(org).is_none() || !node.gate.lease.is_live() {
        if Instant::now() > deadline {
            bail!(
                "node {} did not host {org} within {limit:?}",
                node.config.id
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

// The demo drives its own control plane through the same admin API and client operators use.

async fn wait_for_nodes(control: &Client, n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(nodes) = control.get::<Vec<serde_json::Value>>("/nodes").await {
            if nodes.iter().filter(|n| n["healthy"] == true).count() >= n {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the nodes did not register with the control plane within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn add_user(
    control: &Client,
    org: &str,
    email: &str,
    name: &str,
    password: &str,
) -> anyhow::Result<()> {
    let body = serde_json::json!({"email": email, "name": name, "password": password});
    control
        .post::<serde_json::Value>(&format!("/orgs/{org}/users"), &body)
        .await?;
    Ok(())
}

/// Creates (or finds) an org; returns the node it is placed on.
async fn create_org(
    control: &Client,
    id: &str,
    name: &str,
    region: &str,
    residency: &str,
) -> anyhow::Result<String> {
    let body =
        serde_json::json!({"id": id, "name": name, "region": region, "residency": residency});
    let created: serde_json::Value = control.post("/orgs", &body).await?;
    Ok(created["org"]["node"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}
