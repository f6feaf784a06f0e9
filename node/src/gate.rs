//! The write gate: invariant 1 (one writer per tenant) on the node's side. A write for an org is
//! acknowledged only while this node hosts the org's current generation (as far as it knows)
//! and holds a live lease from the control plane.
//!
//! While a move fences an org here, a write is held up to [`FENCE_HOLD`]: if the move completes
//! meanwhile, the org now belongs elsewhere (`Fenced`, which the web layer answers with a 307 to
//! the new home); if it is rolled back, the write goes ahead; otherwise it is refused as
//! retryable (503 with `Retry-After`). The last check runs inside the write transaction
//! ([`WriteGate::check_now`]), so no write commits after the fence was reported.
//!
//! A node below its free-space headroom ([`crate::disk`]) acknowledges no write either: the
//! org stays here, read-only, until space is freed.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hemvist_proto::{ErrorKind, Generation, HemvistError, OrgId};

use crate::disk::Disk;
use crate::lease::Lease;
use crate::state::NodeState;

/// How long a write waits at a fence for the move to finish before it is refused.
pub const FENCE_HOLD: Duration = Duration::from_secs(1);

pub struct WriteGate {
    hosted: Arc<NodeState>,
    pub lease: Lease,
    /// The data folder's free space; none in unit tests that do not watch it.
    disk: Option<Arc<Disk>>,
    /// Woken whenever a fence lifts or placements change.
    changed: (Mutex<u64>, Condvar),
}

impl WriteGate {
    pub fn new(hosted: Arc<NodeState>) -> Self {
        WriteGate {
            hosted,
            lease: Lease::default(),
            disk: None,
            changed: (Mutex::new(0), Condvar::new()),
        }
    }

    /// The same gate, refusing writes while `disk` is below its headroom.
    pub fn with_disk(mut self, disk: Arc<Disk>) -> Self {
        self.disk = Some(disk);
        self
    }

    pub fn disk(&self) -> Option<&Arc<Disk>> {
        self.disk.as_ref()
    }

    /// Something a held write waits for happened (a fence lifted, placements changed).
    pub fn wake(&self) {
        let (lock, cvar) = &self.changed;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        cvar.notify_all();
    }

    /// The generation this node may write `org` at, waiting up to [`FENCE_HOLD`] at a fence.
    pub fn check(&self, org: &OrgId) -> Result<Generation, HemvistError> {
        let deadline = Instant::now() + FENCE_HOLD;
        loop {
            let (lock, cvar) = &self.changed;
            let seen = *lock.lock().unwrap_or_else(|p| p.into_inner());
            match self.check_now(org) {
                Err(e) if e.kind == ErrorKind::Unavailable && self.is_fenced(org) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(e);
                    }
                    let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                    if *guard == seen {
                        let _ = cvar
                            .wait_timeout(guard, deadline - now)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
                other => return other,
            }
        }
    }

    fn is_fenced(&self, org: &OrgId) -> bool {
        match (self.hosted.fenced(org), self.hosted.hosted(org)) {
            (Some(f), Some(h)) => f == h.generation,
            _ => false,
        }
    }

    /// Whether a write committed at `generation` and stored may be acknowledged now: this node
    /// still holds the org at that generation, no newer one is placed, and its lease is live. A
    /// sync write waits for the store, longer than a lease may last: one stored after the lease
    /// ran out may have been looked for already by whoever took the org, so it is not
    /// acknowledged (the client's retry, with its idempotency key, finds it where it went).
    pub fn may_acknowledge(&self, org: &OrgId, generation: Generation) -> Result<(), HemvistError> {
        let held = self.hosted.hosted(org).map(|h| h.generation);
        let newer = self
            .hosted
            .placement(org)
            .is_some_and(|p| p.generation > generation);
        if held != Some(generation) || newer || !self.lease.is_live() {
            return Err(HemvistError::unavailable(format!(
                "the write to {org} is stored, but this node's lease ran out or the org moved \
                 while it waited for the store, so it is not acknowledged here; try again"
            )));
        }
        Ok(())
    }

    /// The generation this node may write `org` at right now, or why it may not.
    pub fn check_now(&self, org: &OrgId) -> Result<Generation, HemvistError> {
        let Some(hosted) = self.hosted.hosted(org) else {
            // Dropped meanwhile (a move's source, after the switch): the org lives elsewhere.
            return Err(match self.hosted.placement(org) {
                Some(p) => HemvistError::new(
                    ErrorKind::Fenced,
                    format!("org {org} now belongs to {} at {}", p.node_id, p.generation),
                ),
                None => HemvistError::not_found(format!("org {org} is not hosted here")),
            });
        };
        if let Some(p) = self.hosted.placement(org) {
            if p.generation > hosted.generation {
                return Err(HemvistError::new(
                    ErrorKind::Fenced,
                    format!("org {org} now belongs to {} at {}", p.node_id, p.generation),
                ));
            }
        }
        if self.is_fenced(org) {
            return Err(HemvistError::unavailable(format!(
                "org {org} is being moved to another node; try again in a moment"
            )));
        }
        if !self.lease.is_live() {
            return Err(HemvistError::unavailable(
                "this node has no live lease from the control plane; writes are paused",
            ));
        }
        if let Some(disk) = &self.disk {
            disk.check_writable()?;
        }
        Ok(hosted.generation)
    }
}
