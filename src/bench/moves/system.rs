//! The system the benchmark moves orgs in, running in this process: SeaweedFS (a process of its
//! own), one control plane and two nodes on loopback, and the admin-API verbs the run uses.
//!
//! Keeps true: every part binds 127.0.0.1 on a port of its choosing; the admin token is made up
//! here, never printed, and sent only to this control plane; everything the system logs goes to
//! one file in the working folder, never to the terminal; `stop` stops it all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hemvist_control::{ControlConfig, RegionConfig};
use hemvist_node::backup::store::BackupConfig;
use hemvist_node::{Node, NodeConfig};
use hemvist_proto::{NodeId, OrgId, RegionId};
use object_store::ObjectStore;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::super::replication::procs::{log_tail, Weed};
use super::MoveArgs;
use crate::client::Client;

/// The two regions; orgs start in the first and alternate.
pub const REGIONS: [(&str, &str); 2] = [("eu-north", "Stockholm"), ("eu-central", "Frankfurt")];

/// The bucket, and the one identity of the loopback store.
pub(crate) const BUCKET: &str = "bench";
pub(crate) const ACCESS_KEY: &str = "AKBENCHMOVE";
pub(crate) const SECRET_KEY: &str = "bench-move-secret-key";

/// The working folder, removed when dropped unless kept.
pub struct Work {
    pub path: PathBuf,
    pub keep: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Fails early, naming a way out, when `parent` cannot hold a run whose largest tenant is
/// `largest_mb`: its file, the target's copy, the source's copy in the trash, the store's two
/// generations and the naive baseline's two files are on disk at once at worst.
pub fn check_room(parent: &Path, largest_mb: u64) -> anyhow::Result<()> {
    let need = (largest_mb * 6 + 512) << 20;
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(parent)
        .output()
        .context("run df")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let free = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb << 10);
    if let Some(free) = free {
        if free < need {
            bail!(
                "{} has {:.1} GB free; a run with a {largest_mb} MB tenant needs about {:.1} GB. \
                 Pick a folder with room with --dir (a tmpfs such as /dev/shm will do if memory \
                 allows), or smaller --sizes-mb",
                parent.display(),
                free as f64 / 1e9,
                need as f64 / 1e9
            );
        }
    }
    Ok(())
}

pub struct System {
    pub work: PathBuf,
    pub rt: tokio::runtime::Handle,
    pub control: Client,
    pub nodes: Vec<hemvist_node::Running>,
    /// Each region's store, as its node sees it (for pruning and measuring it).
    pub stores: Vec<(RegionId, Arc<dyn ObjectStore>)>,
    /// SeaweedFS's master, for asking it to reclaim deleted objects' space.
    pub master: Option<String>,
    pub weed_exe: PathBuf,
    pub log: PathBuf,
    shutdown: CancellationToken,
    control_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    weed: Weed,
}

pub(crate) fn backup_config(s3: &str, region: &str, interval_ms: u64) -> BackupConfig {
    BackupConfig {
        url: format!("s3://{BUCKET}/{region}"),
        endpoint: Some(s3.to_string()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        interval_ms,
        ..BackupConfig::local(Path::new("/nonexistent"))
    }
}

/// The system's log goes to `path` (RUST_LOG chooses what; info by default).
pub(crate) fn log_to(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// What a benchmark's system is started with.
pub struct SystemArgs {
    /// The `weed` executable (SeaweedFS).
    pub weed: PathBuf,
    /// The nodes' backup interval (`[backup] interval_ms`).
    pub backup_interval_ms: u64,
    /// How long a tenant may be idle before its node closes it.
    pub idle_close_ms: u64,
    /// The nodes' `[backup] snapshot_after_bytes`, if not the default.
    pub snapshot_after_bytes: Option<u64>,
}

impl From<&MoveArgs> for SystemArgs {
    fn from(args: &MoveArgs) -> Self {
        SystemArgs {
            weed: args.weed.clone(),
            backup_interval_ms: args.backup_interval_ms,
            idle_close_ms: 60_000,
            snapshot_after_bytes: None,
        }
    }
}

impl System {
    pub fn start(args: &SystemArgs, work: &Path) -> anyhow::Result<System> {
        let rt = tokio::runtime::Handle::current();
        let log = work.join("hemvist.log");
        log_to(&log)?;
        let weed = Weed::start(
            &args.weed,
            &work.join("weed"),
            BUCKET,
            ACCESS_KEY,
            SECRET_KEY,
        )?;
        let master = std::fs::read_to_string(&weed.log).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.trim().strip_prefix("Master UI:"))
                .map(|u| u.trim().trim_end_matches('/').to_string())
        });
        let stores: Vec<(RegionId, Arc<dyn ObjectStore>)> = REGIONS
            .iter()
            .map(|(id, _)| {
                Ok((
                    RegionId::parse(id)?,
                    backup_config(&weed.s3, id, args.backup_interval_ms).open()?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        // The bucket answers before anything is measured (weed creates it shortly after its S3
        // port opens).
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = rt.block_on(stores[0].1.list_with_delimiter(None)) {
            if Instant::now() > deadline {
                bail!("the bucket did not appear: {e}: {}", log_tail(&weed.log));
            }
            std::thread::sleep(Duration::from_millis(250));
        }

        let admin_token = hemvist_proto::random::hex(24)?;
        let join_token = hemvist_proto::random::hex(24)?;
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let regions = REGIONS
            .iter()
            .map(|(id, name)| {
                Ok(RegionConfig {
                    id: RegionId::parse(id)?,
                    name: name.to_string(),
                    jurisdiction: "EU".into(),
                    countries: Vec::new(),
                    object_store: format!("s3://{BUCKET}/{id}"),
                    object_store_endpoint: Some(weed.s3.clone()),
                    object_store_s3_region: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = ControlConfig {
            api_listen: loopback,
            grpc_listen: loopback,
            data_dir: work.join("control"),
            store: None,
            replica: Default::default(),
            admin_token: admin_token.clone(),
            join_token: join_token.clone(),
            default_region: RegionId::parse(REGIONS[0].0)?,
            geoip: None,
            // As the tests run it: a node's lease is renewed every 300 ms and lasts 3 s.
            lease_ttl_ms: 3_000,
            heartbeat_interval_ms: 300,
            command_retry_ms: 500,
            move_stall_ms: 30_000,
            failover_grace_ms: 60_000,
            regions,
            tls: None,
            node_ca_file: None,
            limits: Default::default(),
            branches: Default::default(),
            audit: Default::default(),
        };
        config.validate()?;
        let shutdown = CancellationToken::new();
        let (bound, control_task) = rt
            .block_on(hemvist_control::start(config, shutdown.clone()))
            .context("start the control plane")?;
        let control = Client::connect(&format!("http://{}", bound.api), &admin_token, None)?;

        let mut nodes = Vec::new();
        for (id, _) in REGIONS {
            let config = NodeConfig {
                id: NodeId::parse(&format!("{id}-1"))?,
                region: RegionId::parse(id)?,
                control_url: format!("http://{}", bound.grpc),
                control_urls: Vec::new(),
                join_token: join_token.clone(),
                listen: loopback,
                public_url: None,
                control_tls: Default::default(),
                insecure: false,
                tls: None,
                limits: Default::default(),
                signin: Default::default(),
                data_dir: work.join("nodes").join(format!("{id}-1")),
                capacity: 1_000,
                max_open_tenants: 1_024,
                idle_close_ms: args.idle_close_ms,
                // A moved org's old copy goes to the trash; it need not stay on this disk.
                trash_grace_secs: 5,
                idempotency_ttl_secs: 24 * 3600,
                disk_headroom_mib: 256,
                backup: Some({
                    let mut b = backup_config(&weed.s3, id, args.backup_interval_ms);
                    if let Some(n) = args.snapshot_after_bytes {
                        b.snapshot_after_bytes = n;
                    }
                    b
                }),
            };
            config.validate()?;
            let running = rt
                .block_on(hemvist_node::start(config, shutdown.clone()))
                .with_context(|| format!("start node {id}-1"))?;
            nodes.push(running);
        }
        let sys = System {
            work: work.to_path_buf(),
            rt,
            control,
            nodes,
            stores,
            master,
            weed_exe: args.weed.clone(),
            log,
            shutdown,
            control_task,
            weed,
        };
        sys.wait_for("both nodes healthy", Duration::from_secs(30), || {
            let nodes: Vec<Value> = sys.get("/nodes").ok()?;
            (nodes.iter().filter(|n| n["healthy"] == true).count() >= REGIONS.len()).then_some(())
        })?;
        Ok(sys)
    }

    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.rt.block_on(self.control.get(path))
    }

    pub fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<T> {
        self.rt.block_on(self.control.post(path, body))
    }

    /// Polls `f` every 50 ms until it gives a value.
    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        f: impl FnMut() -> Option<T>,
    ) -> anyhow::Result<T> {
        crate::bench::wait_for(what, limit, f)
    }

    /// `orgs show ORG`.
    pub fn org(&self, org: &OrgId) -> anyhow::Result<Value> {
        self.get(&format!("/orgs/{org}"))
    }

    /// Creates an org in `region` (residency EU) and waits until its node serves it.
    pub fn create_org(&self, org: &OrgId, region: &str) -> anyhow::Result<()> {
        let _: Value = self.post(
            "/orgs",
            &json!({"id": org.as_str(), "name": format!("Bench {org}"), "region": region,
                "residency": "EU"}),
        )?;
        self.wait_for(&format!("{org} ready"), Duration::from_secs(30), || {
            let shown = self.org(org).ok()?;
            let node = self.node(shown["node"].as_str()?)?;
            (shown["ready"] == true
                && node.state.hosted(org).is_some()
                && node.gate.lease.is_live())
            .then_some(())
        })
    }

    pub fn add_user(&self, org: &OrgId, email: &str, password: &str) -> anyhow::Result<()> {
        let _: Value = self.post(
            &format!("/orgs/{org}/users"),
            &json!({"email": email, "name": "Bench Writer", "password": password}),
        )?;
        Ok(())
    }

    pub fn node(&self, id: &str) -> Option<&Arc<Node>> {
        self.nodes
            .iter()
            .map(|n| &n.node)
            .find(|n| n.config.id.as_str() == id)
    }

    /// The node the control plane names as the org's home.
    pub fn node_hosting(&self, org: &OrgId) -> anyhow::Result<&Arc<Node>> {
        let shown = self.org(org)?;
        let id = shown["node"].as_str().context("orgs show names no node")?;
        self.node(id)
            .with_context(|| format!("{org} is on {id}, which is not part of this run"))
    }

    /// Snapshots taken and bytes uploaded by both nodes' replicators so far.
    pub fn backup_totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.nodes
            .iter()
            .filter_map(|n| n.node.backup.as_ref())
            .fold((0, 0), |(s, b), r| {
                (
                    s + r.metrics.snapshots.load(Relaxed),
                    b + r.metrics.put_bytes.load(Relaxed),
                )
            })
    }

    /// (public URL, node id) of every node.
    pub fn node_names(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .map(|n| (n.node.public_url.clone(), n.node.config.id.to_string()))
            .collect()
    }

    pub fn home_url(&self, org: &OrgId) -> anyhow::Result<String> {
        Ok(self.node_hosting(org)?.public_url.clone())
    }

    /// The region the org does not live in now: where it moves next.
    pub fn other_region(&self, org: &OrgId) -> anyhow::Result<String> {
        let shown = self.org(org)?;
        let home = shown["home_region"].as_str().unwrap_or_default();
        Ok(REGIONS
            .iter()
            .map(|(id, _)| *id)
            .find(|id| *id != home)
            .unwrap_or(REGIONS[0].0)
            .to_string())
    }

    pub fn weed_version(&self) -> String {
        std::process::Command::new(&self.weed_exe)
            .arg("version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_else(|| "(version unknown)".into())
    }

    /// The warnings and errors the system logged, each kind of message once with its count,
    /// to quote when something looked wrong.
    pub fn log_excerpts(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut seen: Vec<(String, String, usize)> = Vec::new();
        for line in text.lines() {
            // No GeoIP database is configured on purpose: every org is placed by region.
            if !(line.contains(" WARN ") || line.contains(" ERROR ")) || line.contains("GeoIP") {
                continue;
            }
            // The message without its timestamp, and without the fields that vary.
            let body = line.split_once(' ').map_or(line, |(_, rest)| rest).trim();
            let key: String = body
                .split_whitespace()
                .filter(|w| !w.contains('=') && !w.chars().any(|c| c.is_ascii_digit()))
                .collect::<Vec<_>>()
                .join(" ");
            match seen.iter_mut().find(|(k, _, _)| *k == key) {
                Some(s) => s.2 += 1,
                None => seen.push((key, line.to_string(), 1)),
            }
        }
        seen.into_iter()
            .take(40)
            .map(|(_, line, n)| {
                let line: String = line.chars().take(400).collect();
                if n > 1 {
                    format!("{line}  [{n} times]")
                } else {
                    line
                }
            })
            .collect()
    }

    /// Stops the nodes and the control plane (each drains), then SeaweedFS.
    pub fn stop(self) {
        self.shutdown.cancel();
        let System {
            rt,
            nodes,
            control_task,
            weed,
            ..
        } = self;
        rt.block_on(async {
            for n in nodes {
                let _ = tokio::time::timeout(Duration::from_secs(10), n.task).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), control_task).await;
        });
        drop(weed);
    }
}
