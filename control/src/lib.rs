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
pub mod front;
pub mod geoip;
pub mod health;
pub mod hub;
pub mod leadership;
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

/// Binds both listeners (port 0 allowed), then serves until `shutdown` is cancelled. On a
/// PostgreSQL store this is one replica of several: it serves as the leader once the store's
/// lease is its own, and until then forwards to the leader (see [`leadership`], [`front`]).
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
    let opening = plane::Opening::default();
    let api_listener = hemvist_net::Listener::new(api_tcp, api_tls, limits.clone())
        .with_stats(opening.api_connections.clone());
    let grpc_listener = hemvist_net::Listener::new(grpc_tcp, grpc_tls, limits)
        .with_stats(opening.grpc_connections.clone());
    let bound = Bound {
        api: api_listener.local_addr()?,
        grpc: grpc_listener.local_addr()?,
    };
    let candidate = match config.store_location() {
        store::Location::Postgres(_) => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let r = &config.replica;
            Some(leadership::Candidate::new(
                &config.store_location(),
                r.name.as_deref().unwrap_or("replica"),
                Duration::from_millis(r.lease_ttl_ms.max(300)),
                r.api_url
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{}", bound.api)),
                r.grpc_url
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{}", bound.grpc)),
            )?)
        }
        store::Location::File(_) => None,
    };
    let name = config
        .replica
        .name
        .clone()
        .unwrap_or_else(|| "replica".into());
    let seen = candidate
        .as_ref()
        .map(|c| c.seen.clone())
        .unwrap_or_default();
    let front = front::Front::new(&name, seen, forwarding_client(&config)?);
    // A single control plane opens its store before it serves anything, as it always has.
    let (opened, candidate) = match candidate {
        None => {
            // It leads before its listeners take a request: nothing is ever forwarded.
            let (plane, hub) = open_plane(config.clone(), opening).await?;
            lead(&front, &plane, &hub, &shutdown);
            (Some((plane, hub)), None)
        }
        Some(c) => (None, Some((c, opening))),
    };
    let handle = tokio::spawn(serve(
        config,
        candidate,
        opened,
        front,
        api_listener,
        grpc_listener,
        shutdown,
    ));
    Ok((bound, handle))
}

/// From now on the front serves this plane (a second call changes nothing).
fn lead(
    front: &front::Front,
    plane: &Arc<plane::Plane>,
    hub: &Arc<hub::Hub>,
    shutdown: &CancellationToken,
) {
    front.lead(
        admin_api::router(plane.clone()).merge(dashboard::router(plane.clone())),
        node_api::NodeApi {
            plane: plane.clone(),
            hub: hub.clone(),
            shutdown: shutdown.clone(),
        },
    );
}

async fn open_plane(
    config: ControlConfig,
    opening: plane::Opening,
) -> anyhow::Result<(Arc<plane::Plane>, Arc<hub::Hub>)> {
    tokio::task::spawn_blocking(move || {
        let hub = Arc::new(hub::Hub::default());
        plane::Plane::open_with(config, hub.clone(), opening).map(|p| (Arc::new(p), hub))
    })
    .await?
}

/// The client a follower forwards admin requests to the leader with.
fn forwarding_client(config: &ControlConfig) -> anyhow::Result<reqwest::Client> {
    hemvist_net::tls::install_crypto();
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        // A silence this long, not a whole answer's time: exports stream for minutes.
        .read_timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &config.node_ca_file {
        let pem = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            http = http.add_root_certificate(cert);
        }
    }
    Ok(http.build()?)
}

async fn serve(
    config: ControlConfig,
    candidate: Option<(leadership::Candidate, plane::Opening)>,
    opened: Option<(Arc<plane::Plane>, Arc<hub::Hub>)>,
    front: Arc<front::Front>,
    api_listener: hemvist_net::Listener,
    grpc_listener: hemvist_net::Listener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = tokio::spawn(hemvist_net::http::serve(
        api_listener,
        front.router(),
        shutdown.clone(),
    ));
    let grpc = {
        let svc = hemvist_proto::pb::node_control_server::NodeControlServer::new(front.nodes());
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
    let drain_listeners = async {
        let _ = api.await;
        let _ = grpc.await;
    };

    // A replica leads only once the lease is its own; it keeps renewing it from then on,
    // while it opens the plane too, and a lost lease ends the process.
    let mut keeper = None;
    let (plane, hub) = match (opened, candidate) {
        (Some(opened), _) => opened,
        (None, Some((c, o))) => {
            let Some((token, asked)) = c.wait_for_lease(&shutdown).await else {
                drain_listeners.await;
                return Ok(());
            };
            let c = Arc::new(c);
            keeper = Some(tokio::spawn({
                let (c, shutdown) = (c.clone(), shutdown.clone());
                async move {
                    let kept = c.keep(token, asked, &shutdown).await;
                    if let Err(why) = &kept {
                        tracing::error!(error = %why, "this control replica no longer leads; stopping");
                        shutdown.cancel();
                    }
                    kept
                }
            }));
            let opening = plane::Opening {
                fence: Some(token),
                api_connections: o.api_connections.clone(),
                grpc_connections: o.grpc_connections.clone(),
            };
            match open_plane(config.clone(), opening).await {
                Ok(v) => v,
                Err(e) => {
                    shutdown.cancel();
                    drain_listeners.await;
                    return Err(e);
                }
            }
        }
        (None, None) => anyhow::bail!("a control plane with neither a store nor a lease"),
    };
    let reconciler = tokio::spawn(reconciler::run(plane.clone(), shutdown.clone()));
    let operations = tokio::spawn(operations::driver::run(plane.clone(), shutdown.clone()));
    let checkpoints = tokio::spawn(checkpointer::run(plane.clone(), shutdown.clone()));
    lead(&front, &plane, &hub, &shutdown);

    shutdown.cancelled().await;
    let deposed = match keeper {
        Some(k) => k.await.ok().and_then(Result::err),
        None => None,
    };
    hub.close_all();
    let drain = async {
        let _ = reconciler.await;
        let _ = operations.await;
        let _ = checkpoints.await;
        drain_listeners.await;
    };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("control plane did not drain within 5 s; stopping anyway");
    }
    tracing::info!("control plane stopped");
    match deposed {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}
