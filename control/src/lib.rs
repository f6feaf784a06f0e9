//! hemvist's control plane: where every org lives and what it may never leave.
//!
//! Read top-down; each layer imports only the layers below it:
//! - wiring: this file ([`start`]) builds the [`Control`] and serves it.
//! - adapters: [`admin_api`] (operators, HTTP/JSON), [`dashboard`] (operators, HTML at `/`),
//!   [`node_api`] (nodes, gRPC) and [`hub`] (the nodes' live sessions). They translate between
//!   wire and domain types.
//! - domain: [`plane`] (the shared state), [`orgs`], [`users`], [`nodes`], [`placement`],
//!   [`residency`], [`reconciler`], [`replication`], [`audit`] (checkpoints of the audit chain) and
//!   [`checkpointer`] (the task that writes them),
//!   and [`link`] (what the domain tells nodes,
//!   and the trait it tells them through). No domain module names `tonic`, `axum` or `pb`.
//! - storage: [`store`], which knows no domain type.
//! - leaves used by all: [`config`], [`clock`], [`auth`], [`geoip`], [`metrics`].

pub mod admin_api;
pub mod audit;
pub mod auth;
pub mod checkpointer;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod exports;
pub mod geoip;
pub mod health;
pub mod hub;
pub mod link;
pub mod metrics;
pub mod node_api;
pub mod nodes;
pub mod operations;
pub mod orgs;
pub mod placement;
pub mod plane;
pub mod reconciler;
pub mod replication;
pub mod residency;
pub mod residency_change;
pub mod schema;
pub mod store;
pub mod tokens;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::tokens_equal;
pub use config::{ControlConfig, RegionConfig};

/// The wiring: the domain, and the hub through which it reaches the nodes.
pub struct Control {
    pub plane: Arc<plane::Plane>,
    pub hub: Arc<hub::Hub>,
    pub shutdown: CancellationToken,
}

impl Control {
    pub fn open(config: ControlConfig, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let hub = Arc::new(hub::Hub::default());
        let plane = Arc::new(plane::Plane::open(config, hub.clone())?);
        Ok(Control {
            plane,
            hub,
            shutdown,
        })
    }
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
    config.limits.check()?;
    let (api_tls, grpc_tls) = match &config.tls {
        Some(t) => {
            let api = hemvist_net::tls::ServerTls {
                client_ca: None,
                ..t.clone()
            };
            (
                Some(api.load(hemvist_net::tls::Alpn::Http1)?),
                Some(t.load(hemvist_net::tls::Alpn::Grpc)?),
            )
        }
        None => (None, None),
    };
    let api_tcp = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("bind admin API on {}", config.api_listen))?;
    let grpc_tcp = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("bind gRPC on {}", config.grpc_listen))?;
    let limits = config.limits.clone();
    let control = Control::open(config, shutdown)?;
    let metrics = &control.plane.metrics;
    let api_listener = hemvist_net::Listener::new(api_tcp, api_tls, limits.clone())
        .with_stats(metrics.api_connections.clone());
    let grpc_listener = hemvist_net::Listener::new(grpc_tcp, grpc_tls, limits)
        .with_stats(metrics.grpc_connections.clone());
    let bound = Bound {
        api: api_listener.local_addr()?,
        grpc: grpc_listener.local_addr()?,
    };
    let handle = tokio::spawn(serve(control, api_listener, grpc_listener));
    Ok((bound, handle))
}

async fn serve(
    control: Control,
    api_listener: hemvist_net::Listener,
    grpc_listener: hemvist_net::Listener,
) -> anyhow::Result<()> {
    let Control {
        plane,
        hub,
        shutdown,
    } = control;
    let reconciler = tokio::spawn(reconciler::run(plane.clone(), shutdown.clone()));
    let operations = tokio::spawn(operations::driver::run(plane.clone(), shutdown.clone()));
    let checkpoints = tokio::spawn(checkpointer::run(plane.clone(), shutdown.clone()));

    let api = tokio::spawn(hemvist_net::http::serve(
        api_listener,
        admin_api::router(plane.clone()).merge(dashboard::router(plane.clone())),
        shutdown.clone(),
    ));

    let grpc = {
        let svc =
            hemvist_proto::pb::node_control_server::NodeControlServer::new(node_api::NodeApi {
                plane: plane.clone(),
                hub: hub.clone(),
                shutdown: shutdown.clone(),
            });
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(5)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    grpc_listener.incoming(shutdown.clone()),
                    async move { shutdown.cancelled().await },
                )
                .await
        })
    };

    shutdown.cancelled().await;
    hub.close_all();
    let drain = async {
        let _ = reconciler.await;
        let _ = operations.await;
        let _ = checkpoints.await;
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
