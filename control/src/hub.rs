//! The live sessions of connected nodes and their leases. Nothing here is persisted: a node that
//! is not connected, or whose lease has run out, is not healthy and gets no new tenants. A
//! session's outbox carries domain messages; the gRPC adapter puts them on the wire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hemvist_proto::NodeId;
use tokio::sync::mpsc;

use crate::link::{BranchLabels, NodeCommand, NodeLink, OrgKey, PlacementUpdate, SessionInfo};

/// What the control plane sends down one node's session.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Registered {
        lease_ttl_ms: u64,
        heartbeat_interval_ms: u64,
        system_id: String,
    },
    HeartbeatAck {
        seq: u64,
        lease_ttl_ms: u64,
    },
    Command {
        id: String,
        operation: Option<String>,
        command: Box<NodeCommand>,
    },
    Placements(PlacementUpdate),
    Branches(BranchLabels),
    DataKeys(Vec<OrgKey>),
}

pub type Outbox = mpsc::Sender<Outgoing>;

struct Session {
    epoch: u64,
    outbox: Outbox,
    lease_until: Instant,
    connected_at: Instant,
    /// A placement update could not be queued: the node needs the full list again.
    needs_resync: bool,
}

#[derive(Default)]
pub struct Hub {
    sessions: Mutex<HashMap<NodeId, Session>>,
    epochs: std::sync::atomic::AtomicU64,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a node's new session, replacing (and so closing) any older one. Returns its epoch.
    pub fn attach(&self, node: NodeId, outbox: Outbox, lease: Duration) -> u64 {
        let epoch = self
            .epochs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let now = Instant::now();
        self.lock().insert(
            node,
            Session {
                epoch,
                outbox,
                lease_until: now + lease,
                connected_at: now,
                needs_resync: false,
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

    /// Queues a message for one node. False if it is not connected or its queue is full; the
    /// reconciler will send again later, so nothing is lost by dropping here.
    pub fn send(&self, node: &NodeId, message: Outgoing) -> bool {
        let outbox = match self.lock().get(node) {
            Some(s) => s.outbox.clone(),
            None => return false,
        };
        outbox.try_send(message).is_ok()
    }

    /// Queues a message for one node's session `epoch`, waiting for room: for what no later
    /// pass would send again (data keys). False if that session is gone.
    pub async fn send_waiting(&self, node: &NodeId, epoch: u64, message: Outgoing) -> bool {
        let outbox = match self.lock().get(node).filter(|s| s.epoch == epoch) {
            Some(s) => s.outbox.clone(),
            None => return false,
        };
        outbox.send(message).await.is_ok()
    }

    /// Drops every session, which ends every node's stream (used at shutdown).
    pub fn close_all(&self) {
        self.lock().clear();
    }
}

impl NodeLink for Hub {
    fn healthy(&self, node: &NodeId) -> bool {
        self.lock()
            .get(node)
            .is_some_and(|s| s.lease_until > Instant::now() && !s.outbox.is_closed())
    }

    fn session(&self, node: &NodeId) -> SessionInfo {
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

    fn sessions(&self) -> Vec<(NodeId, u64)> {
        self.lock()
            .iter()
            .map(|(id, s)| (id.clone(), s.epoch))
            .collect()
    }

    fn send_command(
        &self,
        node: &NodeId,
        id: &str,
        operation: Option<&str>,
        command: NodeCommand,
    ) -> bool {
        self.send(
            node,
            Outgoing::Command {
                id: id.to_string(),
                operation: operation.map(str::to_string),
                command: Box::new(command),
            },
        )
    }

    fn send_placements(&self, node: &NodeId, update: PlacementUpdate) -> bool {
        self.send(node, Outgoing::Placements(update))
    }

    fn send_keys(&self, node: &NodeId, keys: Vec<OrgKey>) -> bool {
        self.send(node, Outgoing::DataKeys(keys))
    }

    fn send_branch_labels(&self, node: &NodeId, labels: BranchLabels) -> bool {
        self.send(node, Outgoing::Branches(labels))
    }

    /// A node whose queue is full is marked for a full resync instead, so no node's routing
    /// cache silently misses a change.
    fn broadcast_placements(&self, update: PlacementUpdate) {
        let mut sessions = self.lock();
        for s in sessions.values_mut() {
            if s.outbox
                .try_send(Outgoing::Placements(update.clone()))
                .is_err()
            {
                s.needs_resync = true;
            }
        }
    }

    fn mark_resync(&self, node: &NodeId) {
        if let Some(s) = self.lock().get_mut(node) {
            s.needs_resync = true;
        }
    }

    fn take_resync(&self) -> Vec<NodeId> {
        let mut out = Vec::new();
        for (id, s) in self.lock().iter_mut() {
            if std::mem::take(&mut s.needs_resync) {
                out.push(id.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> PlacementUpdate {
        PlacementUpdate::default()
    }

    #[test]
    fn a_node_that_misses_a_placement_update_is_marked_for_resync() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(1);
        let node = NodeId::parse("n1").unwrap();
        let epoch = hub.attach(node.clone(), tx, Duration::from_secs(5));
        hub.broadcast_placements(update());
        assert!(hub.take_resync().is_empty());
        hub.broadcast_placements(update());
        assert_eq!(hub.take_resync(), vec![node.clone()]);
        assert!(
            hub.take_resync().is_empty(),
            "the mark is cleared once taken"
        );
        assert!(rx.try_recv().is_ok());
        assert!(hub.healthy(&node));
        hub.detach(&node, epoch + 1);
        assert!(
            hub.healthy(&node),
            "an older session's end does not detach a newer one"
        );
        hub.detach(&node, epoch);
        assert!(!hub.healthy(&node));
    }
}
