//! The domain's shared state: the configuration, the store, the link to the nodes (a trait, so
//! the domain never sees a session), GeoIP, counters, the replication positions nodes report,
//! and the reconciler's queue — which nodes to look at soon and which commands went out in which
//! session — kept here so any domain module can ask for a reconcile without knowing the
//! reconciler. Domain modules add their operations as `impl Plane` blocks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hemvist_proto::{HemvistError, NodeId};
use tokio::sync::Notify;

use crate::config::ControlConfig;
use crate::geoip::GeoIp;
use crate::link::NodeLink;
use crate::metrics::Metrics;
use crate::replication::Replication;
use crate::store::{RegionRecord, Store};

/// How a node says a copy is going (a move's target), as last heard.
#[derive(Debug, Clone)]
pub struct CopyProgress {
    pub operation: String,
    pub node: NodeId,
    /// "copying", "caught_up" or "failed".
    pub state: String,
    pub lsn: u64,
    pub bytes: u64,
    pub error: Option<HemvistError>,
    pub at_ms: i64,
    /// Since when the copy has been failing without a good round between (when it is).
    pub failing_since_ms: i64,
}

/// The tenant schema's migration files as the store holds them, in memory (read at start and
/// after every addition; see `schema`).
#[derive(Default)]
pub struct SchemaFiles(
    pub(crate) std::sync::RwLock<Arc<[hemvist_proto::migration::MigrationFile]>>,
);

/// The sums of what nodes report of their tenants' requests and failures (see `health`).
#[derive(Default)]
pub struct TenantHealth(pub(crate) Mutex<HashMap<hemvist_proto::OrgId, HealthTotals>>);

/// A node's data disk as its last heartbeat told it (see `health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeDisk {
    pub free_bytes: u64,
    /// Below the node's headroom: it takes no writes until space is freed.
    pub low: bool,
    pub reported_ms: i64,
}

/// Requests, and those that failed on the server's side or in SQLite.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct HealthTotals {
    pub requests: u64,
    pub errors: u64,
}

/// What operations (`operations/`) keep in memory only: secrets (never stored: a restarted control plane makes
/// new ones and sends them again), the progress nodes report, and which session of a node got
/// each step (a step whose effect lives in a node's memory is sent again to a new session).
#[derive(Default)]
pub struct OperationsMemory {
    pub(crate) secrets: Mutex<HashMap<String, String>>,
    pub(crate) progress: Mutex<HashMap<String, CopyProgress>>,
    pub(crate) delivered: Mutex<HashMap<String, u64>>,
    /// Operations that ended in this process: a late report about one is dropped.
    pub(crate) ended: Mutex<HashSet<String>>,
    /// When this process first stepped each operation's current phase.
    pub(crate) stepping: Mutex<HashMap<String, (String, i64)>>,
    /// Operations stuck in a phase that can only go forward, and what they wait for.
    pub(crate) stalled: Mutex<HashMap<String, Stall>>,
    /// When each operation's progress counts were last written to the store.
    pub(crate) progress_written: Mutex<HashMap<String, i64>>,
    /// What each rollout's passes found settled (see `RolloutPass`).
    pub(crate) rollouts: Mutex<HashMap<String, RolloutPass>>,
}

/// What a rollout's passes found settled, so that a pass looks again only at the orgs still
/// open and its cost follows the wave's concurrency, not the fleet. Kept in memory only: the
/// first pass after a restart (or a change of target, a pin) looks at every org again.
#[derive(Debug, Clone, Default)]
pub struct RolloutPass {
    pub target: u32,
    /// Per position of the rollout's order: found migrated (`Some(true)`) or at the target
    /// (`Some(false)`); either stays so.
    pub settled: Vec<Option<bool>>,
    pub migrated: usize,
    pub at_target: usize,
    /// Positions before `cursor` not settled: held back, deferred, failed or in flight.
    pub open: std::collections::BTreeSet<usize>,
    /// Every position before it has been looked at.
    pub cursor: usize,
}

/// An operation waiting past its phase's limit in a phase it cannot leave backwards: an alarm
/// (logged once, counted in `/metrics`, shown by `ops show`), not an error; it clears itself
/// when the operation moves on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stall {
    pub kind: &'static str,
    pub phase: &'static str,
    /// Since when the phase has been waiting (as this process saw it).
    pub since_ms: i64,
    pub waiting_for: String,
}

pub struct Plane {
    pub config: ControlConfig,
    /// The tenant schema's migration files (see `schema`).
    pub(crate) schema: SchemaFiles,
    /// The tenants' requests and failures as nodes report them (see `health`).
    pub(crate) health: TenantHealth,
    /// What each node last said of its data disk (see `health`).
    pub(crate) disks: Mutex<HashMap<NodeId, NodeDisk>>,
    pub store: Store,
    /// The audit chain's signer and checkpoint store, when configured.
    pub checkpoints: Option<crate::audit::Checkpoints>,
    pub nodes: Arc<dyn NodeLink>,
    pub geoip: Option<GeoIp>,
    /// `node_ca_file`, read and checked at start (PEM): trusted when fetching from nodes.
    pub node_ca_pem: Option<Vec<u8>>,
    pub metrics: Metrics,
    pub replication: Replication,
    pub(crate) wake_reconciler: Notify,
    /// Wakes the operations' driver (an ack or a progress report arrived).
    pub(crate) wake_operations: Notify,
    /// What the operations keep in memory only (secrets, progress, deliveries).
    pub(crate) ops: OperationsMemory,
    /// This system's id (see `store::system`).
    pub system_id: String,
    /// When this process started: a node's silence counts from here at the earliest.
    pub started_ms: i64,
    /// When each node's last heartbeat arrived, in this process (the store's `last_seen_ms` is
    /// written only every tenth).
    pub(crate) heard: Mutex<std::collections::HashMap<NodeId, i64>>,
    /// Orgs whose backups are known to be recorded, so reports do not rewrite it.
    pub(crate) backed_up: Mutex<HashSet<hemvist_proto::OrgId>>,
    /// When each branch's use by a signed-in user was last recorded (see `operations::branch`).
    pub(crate) branch_used: Mutex<HashMap<hemvist_proto::OrgId, i64>>,
    sent: Mutex<HashSet<(u64, String)>>,
    dirty: Mutex<HashSet<NodeId>>,
}

/// How a plane opens beyond its config (see [`Plane::open_with`]).
#[derive(Default)]
pub struct Opening {
    /// The leader lease's token every write of the store must still hold.
    pub fence: Option<i64>,
    pub api_connections: Arc<hemvist_net::ListenerStats>,
    pub grpc_connections: Arc<hemvist_net::ListenerStats>,
}

impl Plane {
    pub fn open(config: ControlConfig, nodes: Arc<dyn NodeLink>) -> anyhow::Result<Self> {
        Self::open_with(config, nodes, Opening::default())
    }

    /// As [`Plane::open`], as one replica of several: every write fenced by the leader lease's
    /// token, and the listeners' counters already in use.
    pub fn open_with(
        config: ControlConfig,
        nodes: Arc<dyn NodeLink>,
        opening: Opening,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create {}", config.data_dir.display()))?;
        let location = config.store_location();
        let store = Store::at(&location)
            .with_context(|| format!("open the control store at {}", location.describe()))?;
        if let Some(token) = opening.fence {
            store.fence_with(token);
        }
        let regions: Vec<RegionRecord<'_>> = config
            .regions
            .iter()
            .map(|r| RegionRecord {
                id: &r.id,
                name: &r.name,
                jurisdiction: &r.jurisdiction,
                countries: &r.countries,
                object_store: &r.object_store,
            })
            .collect();
        store.sync_regions(&regions)?;
        let geoip = match &config.geoip {
            Some(path) => {
                let db = GeoIp::open(path)?;
                tracing::info!(path = %path.display(), kind = %db.database_type, "GeoIP database loaded");
                Some(db)
            }
            None => {
                tracing::warn!(default_region = %config.default_region,
                    "no GeoIP database configured: orgs created by IP go to the default region");
                None
            }
        };
        let checkpoints = crate::audit::Checkpoints::open(&config.audit)?;
        // Read now, not at the first export: a wrong path is a start-up error.
        let node_ca_pem = match &config.node_ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("node_ca_file {}: cannot read it", ca.display()))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    anyhow::bail!(
                        "node_ca_file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                        ca.display()
                    );
                }
                Some(pem)
            }
            None => None,
        };
        let candidate = hemvist_proto::random::hex(16)?;
        let system_id = store.system_id(move || candidate)?;
        let plane = Plane {
            schema: SchemaFiles::default(),
            health: Default::default(),
            disks: Default::default(),
            system_id,
            started_ms: crate::clock::now_ms(),
            heard: Mutex::default(),
            backed_up: Mutex::new(HashSet::new()),
            branch_used: Mutex::default(),
            config,
            store,
            checkpoints,
            nodes,
            geoip,
            node_ca_pem,
            metrics: Metrics {
                api_connections: opening.api_connections,
                grpc_connections: opening.grpc_connections,
                ..Metrics::default()
            },
            replication: Replication::default(),
            wake_reconciler: Notify::new(),
            wake_operations: Notify::new(),
            ops: Default::default(),
            sent: Mutex::new(HashSet::new()),
            dirty: Mutex::new(HashSet::new()),
        };
        plane.load_schema()?;
        Ok(plane)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.config.lease_ttl_ms)
    }

    /// Asks the reconciler to look at this node soon (its desired or reported state changed).
    pub fn reconcile_soon(&self, node: &NodeId) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone());
        self.wake_reconciler.notify_one();
    }

    /// A heartbeat from `node` arrived now.
    pub fn heard_from(&self, node: &NodeId) {
        self.heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone(), crate::clock::now_ms());
    }

    /// Since when `node` has been silent, as far as this process can tell: its last heartbeat
    /// here, or (none here yet) the later of its last recorded one and this process's start.
    pub fn silent_since_ms(&self, node: &NodeId, last_seen_ms: i64) -> i64 {
        let heard = self
            .heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .copied();
        heard.unwrap_or_else(|| last_seen_ms.max(self.started_ms))
    }

    pub(crate) fn take_dirty(&self) -> HashSet<NodeId> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn sent_in_session(&self, epoch: u64, id: &str) -> bool {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.contains(&(epoch, id.to_string()))
    }

    pub(crate) fn note_sent(&self, epoch: u64, id: &str) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.insert((epoch, id.to_string()));
    }

    pub(crate) fn forget_sent(&self, id: &str) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.retain(|(_, s)| s != id);
    }
}
