//! The live sessions of connected nodes and their leases. Nothing here is persisted: a node that
//! is not connected, or whose lease has run out, is not healthy and gets no new tenants.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hemvist_proto::pb::{self, control_message::Body};
use hemvist_proto::{NodeId, RegionId};
use tokio::sync::mpsc;

pub type Outbox = mpsc::Sender<Result<pb::ControlMessage, tonic::Status>>;

struct Session {
    epoch: u64,
    region: RegionId,
    outbox: Outbox,
    lease_until: Instant,
    connected_at: Instant,
}

#[derive(Default)]
pub struct Hub {
    sessions: Mutex<HashMap<NodeId, Session>>,
    epochs: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub connected: bool,
    pub healthy: bool,
    pub lease_remaining_ms: u64,
    pub connected_for_ms: u64,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a node's new session, replacing (and so closing) any older one. Returns its epoch.
    pub fn attach(&self, node: NodeId, region: RegionId, outbox: Outbox, lease: Duration) -> u64 {
        let epoch = self
            .epochs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let now = Instant::now();
        self.lock().insert(
            node,
            Session {
                epoch,
                region,
                outbox,
                lease_until: now + lease,
                connected_at: now,
            },
        );
        epoch
    }

    /// Removes the session if it is still the one identified by `epoch`.
    pub fn detach(&self, node: &NodeId, epoch: u64) {
        let mut sessions = self.lock();
        if sessions.get(node).is_some_and(|s| s.epoch == epoch) {
            sessions.remove(node);
        }
    }

    pub fn is_current(&self, node: &NodeId, epoch: u64) -> bool {
        self.lock().get(node).is_some_and(|s| s.epoch == epoch)
    }

    pub fn renew(&self, node: &NodeId, epoch: u64, lease: Duration) {
        if let Some(s) = self.lock().get_mut(node).filter(|s| s.epoch == epoch) {
            s.lease_until = Instant::now() + lease;
        }
    }

    pub fn healthy(&self, node: &NodeId) -> bool {
        self.lock()
            .get(node)
            .is_some_and(|s| s.lease_until > Instant::now() && !s.outbox.is_closed())
    }

    pub fn info(&self, node: &NodeId) -> SessionInfo {
        let now = Instant::now();
        match self.lock().get(node) {
            Some(s) => SessionInfo {
                connected: !s.outbox.is_closed(),
                healthy: s.lease_until > now && !s.outbox.is_closed(),
                lease_remaining_ms: s.lease_until.saturating_duration_since(now).as_millis() as u64,
                connected_for_ms: now.duration_since(s.connected_at).as_millis() as u64,
            },
            None => SessionInfo {
                connected: false,
                healthy: false,
                lease_remaining_ms: 0,
                connected_for_ms: 0,
            },
        }
    }

    pub fn connected(&self) -> Vec<(NodeId, RegionId, u64)> {
        self.lock()
            .iter()
            .map(|(id, s)| (id.clone(), s.region.clone(), s.epoch))
            .collect()
    }

    /// Queues a message for one node. False if it is not connected or its queue is full; the
    /// reconciler will send again later, so nothing is lost by dropping here.
    pub fn send(&self, node: &NodeId, body: Body) -> bool {
        let outbox = match self.lock().get(node) {
            Some(s) => s.outbox.clone(),
            None => return false,
        };
        outbox
            .try_send(Ok(pb::ControlMessage { body: Some(body) }))
            .is_ok()
    }

    pub fn broadcast(&self, body: Body) {
        let outboxes: Vec<Outbox> = self.lock().values().map(|s| s.outbox.clone()).collect();
        for outbox in outboxes {
            let _ = outbox.try_send(Ok(pb::ControlMessage {
                body: Some(body.clone()),
            }));
        }
    }

    /// Drops every session, which ends every node's stream (used at shutdown).
    pub fn close_all(&self) {
        self.lock().clear();
    }
}
