//! Several control replicas on one PostgreSQL store, one leader: the replica holding the
//! store's leader lease (`store/leader.rs`) runs the control plane (the reconciler, the
//! operations, the nodes' sessions); the others wait for the lease and meanwhile forward what
//! they are asked to the leader (`front.rs`).
//!
//! Keeps true: a replica acts as leader only after the store gave it the lease, and every
//! write it makes is fenced by the lease's token, so once another replica holds the lease
//! nothing the deposed one writes is accepted, however late it wakes; a leader that cannot
//! renew its lease within its time to live stops (its process ends, for its supervisor to start
//! it again as a follower), and so does one that finds another holder.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::store::{LeaderLease, Location, Store};

/// The newest lease this replica has seen (a follower forwards to the replica it names).
#[derive(Default)]
pub struct Seen(Mutex<Option<LeaderLease>>);

impl Seen {
    pub fn get(&self) -> Option<LeaderLease> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, lease: LeaderLease) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease);
    }
}

/// A replica asking for, and then keeping, the lease.
pub struct Candidate {
    store: Arc<Store>,
    /// This process, in the lease: its name and a value new at every start.
    pub holder: String,
    ttl: Duration,
    api_url: String,
    grpc_url: String,
    pub seen: Arc<Seen>,
}

/// Why a leader stopped leading.
#[derive(Debug, thiserror::Error)]
pub enum Deposed {
    #[error("another control replica ({0}) holds the leader lease now")]
    Replaced(String),
    #[error("the leader lease could not be renewed within its {0} ms")]
    Expired(u128),
}

impl Candidate {
    pub fn new(
        location: &Location,
        name: &str,
        ttl: Duration,
        api_url: String,
        grpc_url: String,
    ) -> anyhow::Result<Candidate> {
        let store = Store::at(location)?;
        let mut nonce = [0u8; 6];
        hemvist_proto::random::fill(&mut nonce)?;
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Candidate {
            store: Arc::new(store),
            holder: format!("{name}/{nonce}"),
            ttl,
            api_url,
            grpc_url,
            seen: Arc::default(),
        })
    }

    async fn claim(&self, held: Option<i64>) -> anyhow::Result<LeaderLease> {
        let store = self.store.clone();
        let (holder, api, grpc) = (
            self.holder.clone(),
            self.api_url.clone(),
            self.grpc_url.clone(),
        );
        let ttl = self.ttl.as_millis() as i64;
        let lease = tokio::task::spawn_blocking(move || {
            store.claim_leadership(&holder, held, ttl, &api, &grpc)
        })
        .await??;
        self.seen.set(lease.clone());
        Ok(lease)
    }

    /// Waits until this replica holds the lease: its token and when the winning claim was
    /// asked (the lease runs from about then), or `None` on shutdown.
    pub async fn wait_for_lease(&self, shutdown: &CancellationToken) -> Option<(i64, Instant)> {
        let mut last_leader = String::new();
        loop {
            let asked = Instant::now();
            match tokio::time::timeout(self.ttl, self.claim(None)).await {
                Ok(Ok(lease)) if lease.holder == self.holder => {
                    tracing::info!(holder = %self.holder, token = lease.token, "this control replica leads");
                    return Some((lease.token, asked));
                }
                Ok(Ok(lease)) => {
                    if lease.holder != last_leader {
                        tracing::info!(leader = %lease.holder, api = %lease.api_url, "following the leading control replica");
                        last_leader = lease.holder;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "leader lease: cannot read the store; retrying")
                }
                Err(_) => tracing::warn!(
                    "leader lease: the store did not answer a claim in time; retrying"
                ),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(self.ttl / 5) => {}
            }
        }
    }

    /// Renews the lease (won by a claim asked at `asked`) every third of its time to live
    /// until shutdown (then gives it up), or until it is lost: then answers why. A renewal that
    /// does not answer before the lease would run out counts as lost.
    pub async fn keep(
        &self,
        token: i64,
        asked: Instant,
        shutdown: &CancellationToken,
    ) -> Result<(), Deposed> {
        // Measured from when each renewal was asked, as a node measures its own lease.
        let mut renewed = asked;
        let mut wait = self.ttl / 3;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let (store, holder) = (self.store.clone(), self.holder.clone());
                    let resign = tokio::task::spawn_blocking(move || store.resign_leadership(&holder, token));
                    let _ = tokio::time::timeout(self.ttl, resign).await;
                    return Ok(());
                }
                _ = tokio::time::sleep(wait) => {}
            }
            let left = self.ttl.saturating_sub(renewed.elapsed());
            if left.is_zero() {
                return Err(Deposed::Expired(self.ttl.as_millis()));
            }
            let asking = Instant::now();
            match tokio::time::timeout(left, self.claim(Some(token))).await {
                Ok(Ok(lease)) if lease.holder == self.holder && lease.token == token => {
                    renewed = asking;
                    wait = self.ttl / 3;
                }
                Ok(Ok(lease)) => return Err(Deposed::Replaced(lease.holder)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), "leader lease: renewal failed");
                    wait = self.ttl / 10;
                }
                Err(_) => return Err(Deposed::Expired(self.ttl.as_millis())),
            }
        }
    }
}
