//! The write gate: invariant 1 (one writer per tenant) on the node's side. A write for an org is
//! acknowledged only while this node hosts the org's current generation (as far as it knows)
//! and holds a live lease from the control plane.

use std::sync::Arc;

use hemvist_proto::{ErrorKind, Generation, HemvistError, OrgId};

use crate::lease::Lease;
use crate::state::NodeState;

pub struct WriteGate {
    hosted: Arc<NodeState>,
    pub lease: Lease,
}

impl WriteGate {
    pub fn new(hosted: Arc<NodeState>) -> Self {
        WriteGate {
            hosted,
            lease: Lease::default(),
        }
    }

    /// The generation this node may write `org` at right now, or why it may not.
    pub fn check(&self, org: &OrgId) -> Result<Generation, HemvistError> {
        let hosted = self
            .hosted
            .hosted(org)
            .ok_or_else(|| HemvistError::not_found(format!("org {org} is not hosted here")))?;
        if let Some(p) = self.hosted.placement(org) {
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
}
