//! The fleet the benchmark migrates, running in this process: SeaweedFS (a process of its own),
//! one control plane, and one node in each of three regions (eu-north, eu-central, us-east) on
//! loopback, each node backing up to its region's prefix of one bucket; and the admin-API verbs
//! the run uses.
//!
//! Keeps true: every part binds 127.0.0.1 on a port of its choosing; the admin token is made up
//! here, never printed, and sent only to this control plane; everything the system logs goes to
//! one file in the working folder, never to the terminal; `stop` stops it all.
//!
//! Built as `bench move`'s system (its pub(crate) pieces are used as they are: the working
//! folder, the store's identity and configuration, the log); the few lines of its
//! `log_excerpts` that this needs are copied below, since that method belongs to its `System`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hemvist_control::{ControlConfig, RegionConfig};
use hemvist_node::{Node, NodeConfig};
use hemvist_proto::{NodeId, RegionId};
use object_store::ObjectStore;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::super::moves::system::{backup_config, log_to, ACCESS_KEY, BUCKET, SECRET_KEY};
use super::super::replication::procs::{log_tail, Weed};
use super::MigrateArgs;
use crate::client::Client;

/// The three regions: id, name, jurisdiction. Orgs are spread over them in turn.
pub const REGIONS: [(&str, &str, &str); 3] = [
    ("eu-north", "Stockholm", "EU"),
    ("eu-central", "Frankfurt", "EU"),
    ("us-east", "Virginia", "US"),
];

pub struct System {
    pub rt: tokio::runtime::Handle,
    pub control: Client,
    /// The control plane's store, read (read-only) for what its API does not show: the
    /// rollout's per-tenant command results.
    pub control_db: PathBuf,
    /// One per region, in the order of [`REGIONS`].
    pub nodes: Vec<hemvist_node::Running>,
    pub log: PathBuf,
    pub weed_exe: PathBuf,
    shutdown: CancellationToken,
    control_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    weed: Weed,
}

impl System {
    pub fn start(args: &MigrateArgs, work: &Path) -> anyhow::Result<System> {
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
        // The bucket answers before anything is measured (weed creates it shortly after its S3
        // port opens).
        let probe = backup_config(&weed.s3, REGIONS[0].0, args.backup_interval_ms).open()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = rt.block_on(probe.list_with_delimiter(None)) {
            if Instant::now() > deadline {
                bail!("the bucket did not appear: {e}: {}", log_tail(&weed.log));
            }
            std::thread::sleep(Duration::from_millis(250));
        }

        let admin_token = hemvist_proto::random::hex(24)?;
        let join_token = hemvist_proto::random::hex(24)?;
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let used = &REGIONS[..args.regions.clamp(1, REGIONS.len())];
        let regions = used
            .iter()
            .map(|(id, name, jurisdiction)| {
                Ok(RegionConfig {
                    id: RegionId::parse(id)?,
                    name: name.to_string(),
                    jurisdiction: jurisdiction.to_string(),
                    countries: Vec::new(),
                    object_store: format!("s3://{BUCKET}/{id}"),
                    object_store_endpoint: Some(weed.s3.clone()),
                    object_store_s3_region: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let data_dir = work.join("control");
        let config = ControlConfig {
            api_listen: loopback,
            grpc_listen: loopback,
            data_dir: data_dir.clone(),
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

        // Every tenant stays open from its creation to the end (none is evicted or closed for
        // idleness mid-run), and every region's node could take the whole fleet.
        let room = args.tenants + 64;
        let mut nodes = Vec::new();
        for (id, _, _) in used {
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
                capacity: room.max(1_000) as u64,
                // As a node runs: an idle tenant is closed when more than this many are open (a
                // larger fleet would exceed the process's open-file limit: three files a tenant).
                max_open_tenants: 1_024,
                idle_close_ms: 3_600_000,
                trash_grace_secs: 5,
                idempotency_ttl_secs: 24 * 3600,
                disk_headroom_mib: 256,
                backup: Some(backup_config(&weed.s3, id, args.backup_interval_ms)),
            };
            config.validate()?;
            let running = rt
                .block_on(hemvist_node::start(config, shutdown.clone()))
                .with_context(|| format!("start node {id}-1"))?;
            nodes.push(running);
        }
        let sys = System {
            rt,
            control,
            control_db: data_dir.join("control.db"),
            nodes,
            log,
            weed_exe: args.weed.clone(),
            shutdown,
            control_task,
            weed,
        };
        let want = used.len();
        crate::bench::wait_for("every node healthy", Duration::from_secs(30), || {
            let nodes: Vec<Value> = sys.get("/nodes").ok()?;
            (nodes.iter().filter(|n| n["healthy"] == true).count() >= want).then_some(())
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

    /// The node of the `i`th region of [`REGIONS`].
    pub fn node(&self, region: usize) -> &Arc<Node> {
        &self.nodes[region].node
    }

    /// Snapshots taken and bytes uploaded by the nodes' replicators so far.
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

    pub fn weed_version(&self) -> String {
        std::process::Command::new(&self.weed_exe)
            .arg("version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_else(|| "(version unknown)".into())
    }

    /// The warnings and errors the system logged, each kind of message once with its count
    /// (copied from `bench move`'s system).
    pub fn log_excerpts(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut seen: Vec<(String, String, usize)> = Vec::new();
        for line in text.lines() {
            // No GeoIP database is configured on purpose: every org is placed by region.
            if !(line.contains(" WARN ") || line.contains(" ERROR ")) || line.contains("GeoIP") {
                continue;
            }
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
