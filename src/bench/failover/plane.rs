//! One case's system: a control plane in this process (one region, a short lease and grace),
//! and its nodes as `hemvist node` processes of this very binary, so that a node can be killed
//! as a machine dies: SIGKILL, with no drain, no last heartbeat and no last backup pass.
//!
//! Keeps true: everything binds 127.0.0.1; the admin token is made up per case and never
//! printed; the S3 credentials reach the nodes through their environment, not their config.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use hemvist_control::{ControlConfig, RegionConfig};
use hemvist_proto::RegionId;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::super::moves::system::{ACCESS_KEY, BUCKET, SECRET_KEY};
use super::super::replication::procs::{log_tail, Guard};
use crate::client::Client;

/// The one region; its store is `s3://bench/{case}`.
pub const REGION: &str = "eu-north";

/// The timings the control plane and nodes run with (printed with the table).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease_ttl_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub failover_grace_ms: u64,
    pub backup_interval_ms: u64,
}

pub struct NodeProc {
    pub id: String,
    pub url: String,
    pub data: PathBuf,
    pub log: PathBuf,
    guard: Option<Guard>,
}

impl NodeProc {
    /// SIGKILL, then reaps it: nothing more leaves the process.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut g) = self.guard.take() {
            g.child.kill().context("SIGKILL the node")?;
            g.child.wait().context("reap the node")?;
        }
        Ok(())
    }

    /// SIGTERM and waits for it to exit (killed after 10 s): its files are then at rest.
    pub fn stop(&mut self) {
        drop(self.guard.take());
    }

    /// The tenant file of an org on this node.
    pub fn tenant_file(&self, org: &str) -> PathBuf {
        self.data
            .join("tenants")
            .join(&org[..2.min(org.len())])
            .join(format!("{org}.db"))
    }
}

pub struct Plane {
    pub rt: tokio::runtime::Handle,
    pub control: Client,
    pub api_url: String,
    /// For the naive baseline's `hemvist restore` (passed in its environment).
    pub admin_token: String,
    pub s3: String,
    pub case: String,
    pub timing: Timing,
    pub nodes: Vec<NodeProc>,
    dir: PathBuf,
    grpc: String,
    join_token: String,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Plane {
    pub fn start(dir: &Path, s3: &str, case: &str, timing: Timing) -> anyhow::Result<Plane> {
        let rt = tokio::runtime::Handle::current();
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let admin_token = hemvist_proto::random::hex(24)?;
        let join_token = hemvist_proto::random::hex(24)?;
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let config = ControlConfig {
            api_listen: loopback,
            grpc_listen: loopback,
            data_dir: dir.join("control"),
            store: None,
            replica: Default::default(),
            admin_token: admin_token.clone(),
            join_token: join_token.clone(),
            default_region: RegionId::parse(REGION)?,
            geoip: None,
            lease_ttl_ms: timing.lease_ttl_ms,
            heartbeat_interval_ms: timing.heartbeat_interval_ms,
            command_retry_ms: 500,
            move_stall_ms: 30_000,
            failover_grace_ms: timing.failover_grace_ms,
            regions: vec![RegionConfig {
                id: RegionId::parse(REGION)?,
                name: "Stockholm".into(),
                jurisdiction: "EU".into(),
                countries: Vec::new(),
                object_store: format!("s3://{BUCKET}/{case}"),
                object_store_endpoint: Some(s3.to_string()),
                object_store_s3_region: None,
            }],
            tls: None,
            node_ca_file: None,
            limits: Default::default(),
            branches: Default::default(),
            audit: Default::default(),
        };
        config.validate()?;
        let shutdown = CancellationToken::new();
        let (bound, task) = rt
            .block_on(hemvist_control::start(config, shutdown.clone()))
            .context("start the control plane")?;
        let api_url = format!("http://{}", bound.api);
        let control = Client::connect(&api_url, &admin_token, None)?;
        Ok(Plane {
            rt,
            control,
            api_url,
            admin_token,
            s3: s3.to_string(),
            case: case.to_string(),
            timing,
            nodes: Vec::new(),
            dir: dir.to_path_buf(),
            grpc: format!("http://{}", bound.grpc),
            join_token,
            shutdown,
            task: Some(task),
        })
    }

    /// Starts `hemvist node` with id `id` and waits until the control plane counts `healthy`
    /// healthy nodes.
    pub fn add_node(&mut self, id: &str, healthy: usize) -> anyhow::Result<()> {
        let data = self.dir.join("nodes").join(id);
        let config = self.dir.join(format!("node-{id}.toml"));
        let log = self.dir.join(format!("node-{id}.log"));
        std::fs::write(
            &config,
            format!(
                "id = \"{id}\"\nregion = \"{REGION}\"\ncontrol_url = \"{}\"\n\
                 join_token = \"{}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
                 capacity = 10000\nmax_open_tenants = 2048\nidle_close_ms = 600000\n\
                 disk_headroom_mib = 64\n\n[backup]\nurl = \"s3://{BUCKET}/{}\"\n\
                 endpoint = \"{}\"\ninterval_ms = {}\n",
                self.grpc,
                self.join_token,
                data.display().to_string(),
                self.case,
                self.s3,
                self.timing.backup_interval_ms
            ),
        )?;
        let err = std::fs::File::create(&log)?;
        let exe = std::env::current_exe().context("find this executable")?;
        let mut child = Command::new(exe)
            .args(["node", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,h2=warn,tower=warn,hyper=warn")
            .env("NO_COLOR", "1")
            .env("HEMVIST_S3_ACCESS_KEY_ID", ACCESS_KEY)
            .env("HEMVIST_S3_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .context("start hemvist node")?;
        let stdout = child.stdout.take().context("the node's stdout")?;
        let mut guard = Guard {
            child,
            what: "hemvist node",
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Read to the end, so the node never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(json) = line.strip_prefix("hemvist-ready ") {
                    let _ = tx.send(json.to_string());
                }
            }
        });
        let ready: Value = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(json) => serde_json::from_str(&json).context("the node's ready line")?,
            Err(_) => {
                guard.check_alive(&log)?;
                bail!("node {id} did not become ready: {}", log_tail(&log));
            }
        };
        let url = ready["url"]
            .as_str()
            .context("the ready line names no URL")?
            .to_string();
        self.nodes.push(NodeProc {
            id: id.to_string(),
            url,
            data,
            log,
            guard: Some(guard),
        });
        self.wait_for(
            &format!("{healthy} healthy nodes"),
            Duration::from_secs(30),
            || {
                let nodes: Vec<Value> = self.get("/nodes").ok()?;
                (nodes.iter().filter(|n| n["healthy"] == true).count() >= healthy).then_some(())
            },
        )
    }

    pub fn node(&mut self, id: &str) -> anyhow::Result<&mut NodeProc> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id} in this run"))
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

    /// Stops the nodes still running, then the control plane.
    pub fn stop(mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = self
                .rt
                .block_on(tokio::time::timeout(Duration::from_secs(10), task));
        }
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
