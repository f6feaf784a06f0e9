//! A hemvist node: hosts tenants (one SQLite file per org), serves their users, and routes users
//! who landed in the wrong place to the org's home node.
//!
//! Wiring first ([`start`]), then the adapters ([`web`] for users, [`control_link`] for the
//! control plane), then the domain ([`routing`], hosting in [`Node`]), then storage
//! ([`tenants`], [`state`]).

pub mod backup;
pub mod config;
pub mod contacts;
pub mod control_link;
pub mod demo;
pub mod failpoints;
pub mod lease;
pub mod metrics;
pub mod routing;
pub mod search;
pub mod state;
pub mod tenants;
pub mod text;
pub mod users;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hemvist_proto::{ErrorKind, Generation, HemvistError, OrgId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::NodeConfig;
use state::{Hosted, NodeState};
use tenants::TenantStore;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Node {
    pub config: NodeConfig,
    pub public_url: String,
    pub tenants: TenantStore,
    pub state: NodeState,
    pub lease: lease::Lease,
    pub metrics: metrics::Metrics,
    pub sessions: users::SessionCache,
    pub data_versions: search::DataVersions,
    pub backup: Option<Arc<backup::replicator::Replicator>>,
}

/// What the control plane asked this node to host.
pub struct HostRequest {
    pub org: OrgId,
    pub generation: Generation,
    pub name: String,
    pub allowed_regions: Vec<String>,
    /// Writes are acknowledged only once they are in object storage.
    pub sync: bool,
    /// The org's data key, which seals its backups.
    pub data_key: Option<backup::format::DataKey>,
}

impl Node {
    pub fn open(config: NodeConfig, public_url: String) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create {}", config.data_dir.display()))?;
        let state = NodeState::open(&config.data_dir.join("node.db"))?;
        let backup = match &config.backup {
            Some(b) => Some(Arc::new(backup::replicator::Replicator::open(
                &config.data_dir,
                b.clone(),
            )?)),
            None => None,
        };
        let tenants = TenantStore::new(&config.data_dir, config.max_open_tenants)?;
        Ok(Node {
            backup,
            public_url,
            tenants,
            state,
            lease: lease::Lease::default(),
            metrics: metrics::Metrics::default(),
            sessions: users::SessionCache::default(),
            data_versions: search::DataVersions::default(),
            config,
        })
    }

    /// Hosts an org at a generation: idempotent, refuses what residency forbids and what a
    /// newer generation already owns.
    pub fn host(&self, req: &HostRequest) -> Result<Hosted, HemvistError> {
        // Second line of defense for residency: never write an org's bytes in a region its
        // policy does not list, whatever the control plane says.
        if !req
            .allowed_regions
            .iter()
            .any(|r| r == self.config.region.as_str())
        {
            return Err(HemvistError::new(
                ErrorKind::Residency,
                format!(
                    "org {} may not be stored in region {} (allowed: {})",
                    req.org,
                    self.config.region,
                    if req.allowed_regions.is_empty() {
                        "none given".to_string()
                    } else {
                        req.allowed_regions.join(", ")
                    }
                ),
            ));
        }
        if let Some(h) = self.state.hosted(&req.org) {
            if h.generation > req.generation {
                return Err(HemvistError::new(
                    ErrorKind::Fenced,
                    format!(
                        "org {} is hosted here at {}, newer than {}",
                        req.org, h.generation, req.generation
                    ),
                ));
            }
        }
        failpoints::check("node.host")?;
        if !self.tenants.exists(&req.org) {
            self.restore_from_backup(&req.org, req.data_key.as_ref())?;
        }
        let schema_version = self.tenants.create(&req.org, now_ms())?;
        if let Some(b) = &self.backup {
            b.mark_dirty(&req.org);
        }
        failpoints::check("node.host.after_create")?;
        let hosted = Hosted {
            generation: req.generation,
            schema_version,
            name: req.name.clone(),
            sync: req.sync,
            data_key: req.data_key.clone(),
        };
        self.state.set_hosted(&req.org, &hosted, now_ms())?;
        tracing::info!(org = %req.org, generation = %req.generation, schema_version, "hosting tenant");
        Ok(hosted)
    }

    /// An org assigned here with no local file: if its region's backups hold it, the newest
    /// restore point becomes the local file (blocking; runs on the command thread).
    fn restore_from_backup(
        &self,
        org: &OrgId,
        key: Option<&backup::format::DataKey>,
    ) -> Result<(), HemvistError> {
        let Some(b) = &self.backup else {
            return Ok(());
        };
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| HemvistError::internal("restore needs the runtime"))?;
        let path = self.tenants.path(org);
        let restored = handle.block_on(async {
            let catalog = backup::restore::catalog(&b.store, org).await?;
            let Some(plan) = catalog.plan(i64::MAX, &[]) else {
                return Ok::<_, anyhow::Error>(None);
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let staged = path.with_extension("from-backup");
            let _ = std::fs::remove_file(&staged);
            let done = backup::restore::restore(&b.store, &catalog, &plan, &staged, key).await?;
            std::fs::rename(&staged, &path)?;
            Ok(Some(done))
        });
        match restored {
            Ok(Some(r)) => {
                tracing::info!(%org, generation = r.generation, lsn = r.lsn, time = %backup::format_time(r.time_ms),
                    "restored tenant from backup");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(HemvistError::unavailable(format!(
                "org {org} has no local file and its backup could not be restored: {e:#}"
            ))),
        }
    }

    /// Stops hosting an org at `generation` or older; its files go to `trash/`, not away.
    pub fn drop_tenant(&self, org: &OrgId, generation: Generation) -> Result<(), HemvistError> {
        let Some(h) = self.state.hosted(org) else {
            return Ok(());
        };
        if h.generation > generation {
            return Ok(());
        }
        self.state.remove_hosted(org)?;
        if let Some(b) = &self.backup {
            b.forget(org)?;
        }
        let label = format!("g{}-{}", h.generation.get(), now_ms());
        let moved = self.tenants.retire(org, &label)?;
        tracing::info!(%org, generation = %h.generation, to = ?moved, "dropped tenant");
        Ok(())
    }

    /// Whether this node may acknowledge writes for `org` right now: it holds the org's
    /// current generation (as far as it knows) and a live lease.
    pub fn check_writable(&self, org: &OrgId) -> Result<Generation, HemvistError> {
        let hosted = self
            .state
            .hosted(org)
            .ok_or_else(|| HemvistError::not_found(format!("org {org} is not hosted here")))?;
        if let Some(p) = self.state.placement(org) {
            if p.generation > hosted.generation {
                return Err(HemvistError::new(
                    ErrorKind::Fenced,
                    format!("org {org} now belongs to {} at {}", p.node_id, p.generation),
                ));
            }
        }
        if !self.lease.is_live() {
            return Err(HemvistError::unavailable(
                "this node has no live lease from the control plane; writes are paused",
            ));
        }
        Ok(hosted.generation)
    }

    pub fn write<T>(
        &self,
        org: &OrgId,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, HemvistError> {
        self.check_writable(org)?;
        let out = self.tenants.write(org, f)?;
        self.data_versions.bump(org);
        if let Some(b) = &self.backup {
            let mark = b.mark_dirty(org);
            // Durability `sync`: the write is acknowledged once it is in object storage. It
            // is committed here already; if the store stays away, the caller hears so and the
            // write is shipped when the store is back.
            if self.state.hosted(org).is_some_and(|h| h.sync) {
                b.wait_durable(org, mark, Duration::from_secs(10))?;
            }
        }
        Ok(out)
    }

    pub fn gauges(&self) -> metrics::Gauges {
        metrics::Gauges {
            hosted: self.state.hosted_count() as u64,
            open_tenants: self.tenants.open_count() as u64,
            placements: self.state.placement_count() as u64,
            lease_live: self.lease.is_live(),
            tenant_opens: self
                .tenants
                .opens
                .load(std::sync::atomic::Ordering::Relaxed),
            tenant_evictions: self
                .tenants
                .evictions
                .load(std::sync::atomic::Ordering::Relaxed),
            search_index_builds: self
                .data_versions
                .index_builds
                .load(std::sync::atomic::Ordering::Relaxed),
            search_index_catch_ups: self
                .data_versions
                .index_catch_ups
                .load(std::sync::atomic::Ordering::Relaxed),
            backup: self.backup.clone(),
        }
    }
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
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind HTTP on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_string();
    let node = Arc::new(Node::open(config, public_url)?);
    tracing::info!(node = %node.config.id, region = %node.config.region, url = %node.public_url,
        hosted = node.state.hosted_count(), "node starting");
    let task = tokio::spawn(serve(node.clone(), listener, shutdown));
    Ok(Running { node, addr, task })
}

async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let link = tokio::spawn(control_link::run(node.clone(), shutdown.clone()));
    let backup = node
        .backup
        .clone()
        .map(|b| tokio::spawn(b.run(node.clone(), shutdown.clone())));
    let sweeper = tokio::spawn(close_idle_tenants(node.clone(), shutdown.clone()));
    let app = web::router(node.clone());
    let http = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        })
    };
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

/// One timer for the whole node (never one per tenant) closes tenants that went idle.
pub async fn close_idle_tenants(node: Arc<Node>, shutdown: CancellationToken) {
    let idle = Duration::from_millis(node.config.idle_close_ms.max(1));
    let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let closed = node.tenants.close_idle(idle);
        if closed > 0 {
            tracing::debug!(closed, "closed idle tenants");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hemvist_proto::{NodeId, RegionId};
    use std::time::Instant;

    fn node(dir: &std::path::Path) -> Node {
        let config = NodeConfig {
            id: NodeId::parse("eu-north-1").unwrap(),
            region: RegionId::parse("eu-north").unwrap(),
            control_url: "http://127.0.0.1:1".into(),
            join_token: "x".repeat(20),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: None,
            data_dir: dir.to_path_buf(),
            capacity: 10,
            max_open_tenants: 2,
            idle_close_ms: 60_000,
            backup: None,
        };
        Node::open(config, "http://127.0.0.1:9".into()).unwrap()
    }

    fn req(org: &str, generation: u64, allowed: &[&str]) -> HostRequest {
        HostRequest {
            org: OrgId::parse(org).unwrap(),
            generation: Generation::new(generation).unwrap(),
            name: org.into(),
            allowed_regions: allowed.iter().map(|s| s.to_string()).collect(),
            sync: false,
            data_key: None,
        }
    }

    fn insert(node: &Node, org: &OrgId) -> Result<usize, HemvistError> {
        node.write(org, |tx| {
            tx.execute(
                "INSERT INTO contacts (name, created_ms, updated_ms) VALUES ('Åsa', 0, 0)",
                [],
            )
        })
    }

    #[test]
    fn writes_need_the_current_generation_and_a_live_lease() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path());
        let org = OrgId::parse("acme").unwrap();
        n.host(&req("acme", 3, &["eu-north"])).unwrap();

        let err = insert(&n, &org).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable, "no lease yet: {err}");
        n.lease.renew(Instant::now(), Duration::from_secs(5));
        assert_eq!(insert(&n, &org).unwrap(), 1);

        // An expired lease pauses writes again.
        let dir2 = tempfile::tempdir().unwrap();
        let m = node(dir2.path());
        m.host(&req("acme", 3, &["eu-north"])).unwrap();
        m.lease.renew(Instant::now(), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(insert(&m, &org).unwrap_err().kind, ErrorKind::Unavailable);

        // Once the node learns a newer generation lives elsewhere, it is fenced.
        n.state
            .apply_placements(
                false,
                vec![(
                    org.clone(),
                    state::Placement {
                        region: RegionId::parse("us-east").unwrap(),
                        node_id: NodeId::parse("us-east-1").unwrap(),
                        node_url: "http://127.0.0.1:10".into(),
                        generation: Generation::new(4).unwrap(),
                    },
                )],
                vec![],
            )
            .unwrap();
        assert_eq!(insert(&n, &org).unwrap_err().kind, ErrorKind::Fenced);
        // And an older grant can never take the org back.
        assert_eq!(
            n.host(&req("acme", 2, &["eu-north"])).unwrap_err().kind,
            ErrorKind::Fenced
        );
    }

    #[test]
    fn residency_is_refused_by_the_node_too_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path());
        for allowed in [&["us-east"][..], &[][..]] {
            let err = n.host(&req("yankee", 1, allowed)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Residency);
        }
        let org = OrgId::parse("yankee").unwrap();
        assert!(!n.tenants.path(&org).exists());
        assert!(n.state.hosted(&org).is_none());
    }

    #[test]
    fn hosting_is_idempotent_and_dropping_keeps_the_file_in_trash() {
        let dir = tempfile::tempdir().unwrap();
        let n = node(dir.path());
        let org = OrgId::parse("acme").unwrap();
        n.host(&req("acme", 1, &["eu-north"])).unwrap();
        n.lease.renew(Instant::now(), Duration::from_secs(5));
        insert(&n, &org).unwrap();
        let again = n.host(&req("acme", 1, &["eu-north"])).unwrap();
        assert_eq!(again.schema_version, tenants::schema::latest_version());
        let count: i64 = n
            .tenants
            .read(&org, |c| {
                c.query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
            })
            .unwrap();
        assert_eq!(count, 1, "hosting again kept the data");

        // A drop for an older generation than the one held is ignored.
        n.host(&req("acme", 2, &["eu-north"])).unwrap();
        n.drop_tenant(&org, Generation::new(1).unwrap()).unwrap();
        assert!(n.state.hosted(&org).is_some());
        n.drop_tenant(&org, Generation::new(2).unwrap()).unwrap();
        assert!(n.state.hosted(&org).is_none());
        assert!(!n.tenants.path(&org).exists());
        let trash: Vec<_> = std::fs::read_dir(dir.path().join("trash"))
            .unwrap()
            .collect();
        assert!(
            !trash.is_empty(),
            "the dropped tenant's file is kept in trash/"
        );
    }
}
