//! A hemvist node: hosts tenants (one SQLite file per org), serves their users, and routes users
//! who landed in the wrong place to the org's home node.
//!
//! This file only wires ([`Node::open`], [`start`]). The adapters are [`web`] (org users) and
//! [`control_link`] (the control plane); they alone see [`Node`]. Below them the domain
//! ([`hosting`], [`writes`] through the [`gate`], [`migrate`], [`routing`], [`search`],
//! [`contacts`], [`users`], [`backup`]) takes only the parts it uses, and storage ([`tenants`],
//! [`state`]) knows nothing above it (it only counts its SQLite failures in [`health`], which
//! knows nothing at all).

pub mod backup;
pub mod branches;
pub mod clock;
pub mod config;
pub mod contacts;
pub mod control_link;
pub mod disk;
pub mod export;
pub mod gate;
pub mod health;
pub mod hosting;
pub mod idempotency;
pub mod lease;
pub mod metrics;
pub mod migrate;
pub mod moves;
pub mod routing;
pub mod search;
pub mod state;
pub mod tenants;
pub mod text;
pub mod users;
pub mod web;
pub mod writes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use clock::now_ms;
pub use config::NodeConfig;
pub use hemvist_proto::failpoints;
pub use hosting::HostRequest;

use backup::replicator::Replicator;
use gate::WriteGate;
use hosting::Hosting;
use search::DataVersions;
use state::NodeState;
use tenants::TenantStore;
use writes::Writer;

/// The node's parts, wired once; the adapters reach the domain through it.
pub struct Node {
    pub config: NodeConfig,
    pub public_url: String,
    pub tenants: Arc<TenantStore>,
    pub state: Arc<NodeState>,
    pub gate: Arc<WriteGate>,
    pub hosting: Hosting,
    pub writer: Writer,
    /// Schema migrations the control plane asks for, under each tenant's writer.
    pub migrator: migrate::Migrator,
    pub data_versions: Arc<DataVersions>,
    pub sessions: users::SessionCache,
    pub metrics: metrics::Metrics,
    /// Per-tenant requests and failures since the last heartbeat, which reports them.
    pub health: Arc<health::TenantHealth>,
    pub backup: Option<Arc<Replicator>>,
    /// The data folder's free space and headroom: below it, tenants are read-only.
    pub disk: Arc<disk::Disk>,
    /// The users' HTTP listener's connection counts.
    pub http_stats: Arc<hemvist_net::ListenerStats>,
    /// Moves this node is the source of, and the target of.
    pub moves_out: moves::source::Outgoing,
    pub moves_in: Arc<moves::target::Incoming>,
    /// The branches hosted here, as their pages show them, and keepalives users asked for.
    pub branches: branches::Branches,
}

impl Node {
    pub fn open(config: NodeConfig, public_url: String) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create {}", config.data_dir.display()))?;
        let state = Arc::new(NodeState::open(&config.data_dir.join("node.db"))?);
        let health = Arc::new(health::TenantHealth::default());
        let tenants = Arc::new(
            TenantStore::new(&config.data_dir, config.max_open_tenants)?
                .counting_errors_in(health.clone()),
        );
        let disk = Arc::new(disk::Disk::new(
            &config.data_dir,
            config.disk_headroom_mib.saturating_mul(1024 * 1024),
        ));
        let backup = match &config.backup {
            Some(b) => Some(Arc::new(Replicator::open(
                &config.data_dir,
                b.clone(),
                config.id.clone(),
                tenants.clone(),
                state.clone(),
                disk.clone(),
            )?)),
            None => None,
        };
        let gate = Arc::new(WriteGate::new(state.clone()).with_disk(disk.clone()));
        let data_versions = Arc::new(DataVersions::default());
        let moves_in = Arc::new(moves::target::Incoming::new(
            tenants.clone(),
            state.clone(),
            peer_client(&config)?,
        ));
        Ok(Node {
            moves_out: Default::default(),
            branches: Default::default(),
            moves_in,
            hosting: Hosting::new(
                config.region.clone(),
                tenants.clone(),
                state.clone(),
                backup.clone(),
            ),
            writer: Writer::new(
                tenants.clone(),
                state.clone(),
                gate.clone(),
                data_versions.clone(),
                backup.clone(),
            ),
            migrator: migrate::Migrator::new(
                tenants.clone(),
                state.clone(),
                gate.clone(),
                backup.clone(),
            ),
            backup,
            disk,
            public_url,
            tenants,
            state,
            gate,
            data_versions,
            metrics: metrics::Metrics::default(),
            health,
            sessions: users::SessionCache::default(),
            http_stats: Arc::default(),
            config,
        })
    }

    /// The idle sweep `serve` runs, for callers that run the parts themselves (benchmarks).
    pub fn close_idle_tenants(
        &self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> {
        tenants::sweeper::close_idle_tenants(
            self.tenants.clone(),
            Duration::from_millis(self.config.idle_close_ms),
            shutdown,
        )
    }
}

/// The client a move's target reads its source with: the fleet's CA (`[control_tls] ca`) is
/// trusted besides the system's roots, as nodes' certificates usually come from it too.
fn peer_client(config: &NodeConfig) -> anyhow::Result<reqwest::Client> {
    hemvist_net::tls::install_crypto();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120));
    if let Some(ca) = &config.control_tls.ca {
        let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
        builder = builder.tls_certs_merge(
            reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("parse {}", ca.display()))?,
        );
    }
    Ok(builder.build()?)
}

/// A started node: where it listens, and the handle to wait for it to stop.
pub struct Running {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds the HTTP listener (port 0 allowed), opens the node's state, dials the control plane and
/// serves until `shutdown` is cancelled.
pub async fn start(config: NodeConfig, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let tcp = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind HTTP on {}", config.listen))?;
    let tls = match &config.tls {
        Some(t) => Some(t.load(hemvist_net::tls::Alpn::Http1)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = hemvist_net::Listener::new(tcp, tls, config.limits.clone());
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"))
        .trim_end_matches('/')
        .to_string();
    let node = Arc::new(Node::open(config, public_url)?);
    let listener = listener.with_stats(node.http_stats.clone());
    tracing::info!(node = %node.config.id, region = %node.config.region, url = %node.public_url,
        hosted = node.state.hosted_count(), "node starting");
    let task = tokio::spawn(serve(node.clone(), listener, shutdown));
    Ok(Running { node, addr, task })
}

async fn serve(
    node: Arc<Node>,
    listener: hemvist_net::Listener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let link = tokio::spawn(control_link::run(node.clone(), shutdown.clone()));
    let backup = node
        .backup
        .clone()
        .map(|b| tokio::spawn(b.run(shutdown.clone())));
    let sweeper = tokio::spawn(node.close_idle_tenants(shutdown.clone()));
    let app = web::router_with(node.clone(), &node.config.signin);
    let http = tokio::spawn(hemvist_net::http::serve(listener, app, shutdown.clone()));
    shutdown.cancelled().await;
    let drain = async {
        let _ = link.await;
        let _ = http.await;
        let _ = sweeper.await;
        if let Some(b) = backup {
            let _ = b.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("node did not drain within 5 s; stopping anyway");
    }
    tracing::info!(node = %node.config.id, "node stopped");
    Ok(())
}
