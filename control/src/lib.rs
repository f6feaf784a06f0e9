//! hemvist's control plane: where every org lives and what it may never leave.
//!
//! Wiring first ([`run`]), then the adapters ([`admin_api`] for operators, [`node_api`] for
//! nodes), then the domain ([`orgs`], [`placement`], [`residency`], [`reconciler`]), then storage
//! ([`persistence`]).

pub mod admin_api;
pub mod config;
pub mod geoip;
pub mod hub;
pub mod metrics;
pub mod node_api;
pub mod orgs;
pub mod persistence;
pub mod placement;
pub mod reconciler;
pub mod replication;
pub mod residency;
pub mod users;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hemvist_proto::NodeId;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::{ControlConfig, RegionConfig};

/// Everything the control plane's services share.
pub struct Control {
    pub config: ControlConfig,
    pub store: persistence::Store,
    pub hub: hub::Hub,
    pub geoip: Option<geoip::GeoIp>,
    pub metrics: metrics::Metrics,
    pub replication: replication::Replication,
    pub wake_reconciler: Notify,
    pub shutdown: CancellationToken,
    sent: Mutex<HashSet<(u64, String)>>,
    dirty: Mutex<HashSet<NodeId>>,
}

impl Control {
    pub fn open(config: ControlConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create {}", config.data_dir.display()))?;
        let store = persistence::Store::open(&config.data_dir.join("control.db"))?;
        store.sync_regions(&config.regions)?;
        let geoip = match &config.geoip {
            Some(path) => {
                let db = geoip::GeoIp::open(path)?;
                tracing::info!(path = %path.display(), kind = %db.database_type, "GeoIP database loaded");
                Some(db)
            }
            None => {
                tracing::warn!(default_region = %config.default_region,
                    "no GeoIP database configured: orgs created by IP go to the default region");
                None
            }
        };
        Ok(Control {
            config,
            store,
            hub: hub::Hub::default(),
            geoip,
            metrics: metrics::Metrics::default(),
            replication: replication::Replication::default(),
            wake_reconciler: Notify::new(),
            shutdown,
            sent: Mutex::new(HashSet::new()),
            dirty: Mutex::new(HashSet::new()),
        })
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

    fn take_dirty(&self) -> HashSet<NodeId> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn sent_in_session(&self, epoch: u64, id: &str) -> bool {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.contains(&(epoch, id.to_string()))
    }

    fn note_sent(&self, epoch: u64, id: &str) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.insert((epoch, id.to_string()));
    }

    fn forget_sent(&self, id: &str) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.retain(|(_, s)| s != id);
    }
}

/// Compares secrets in time independent of where they differ.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where the control plane ended up listening.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub api: SocketAddr,
    pub grpc: SocketAddr,
}

/// Binds both listeners (port 0 allowed), then serves until `shutdown` is cancelled.
pub async fn start(
    config: ControlConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(Bound, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let api_listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("bind admin API on {}", config.api_listen))?;
    let grpc_listener = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("bind gRPC on {}", config.grpc_listen))?;
    let bound = Bound {
        api: api_listener.local_addr()?,
        grpc: grpc_listener.local_addr()?,
    };
    let control = Arc::new(Control::open(config, shutdown.clone())?);
    let handle = tokio::spawn(serve(control, api_listener, grpc_listener, shutdown));
    Ok((bound, handle))
}

async fn serve(
    control: Arc<Control>,
    api_listener: TcpListener,
    grpc_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let reconciler = tokio::spawn(reconciler::run(control.clone(), shutdown.clone()));

    let api = {
        let shutdown = shutdown.clone();
        let app = admin_api::router(control.clone());
        tokio::spawn(async move {
            axum::serve(api_listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        })
    };

    let grpc = {
        let shutdown = shutdown.clone();
        let svc =
            hemvist_proto::pb::node_control_server::NodeControlServer::new(node_api::NodeApi {
                control: control.clone(),
            });
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(5)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                    async move { shutdown.cancelled().await },
                )
                .await
        })
    };

    shutdown.cancelled().await;
    control.hub.close_all();
    let drain = async {
        let _ = reconciler.await;
        let _ = api.await;
        let _ = grpc.await;
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("control plane did not drain within 5 s; stopping anyway");
    }
    tracing::info!("control plane stopped");
    Ok(())
}
