//! Which tenants have writes not yet shipped, which writes are durable, and the loop's wake-up.
//!
//! Keeps true: a tenant stays dirty until a pass has shipped everything it had when the pass
//! began; one written meanwhile stays dirty (its lag counted from no earlier than that pass).
//! A write's mark is durable only once a pass that saw at least that many writes shipped them
//! all, and only then is a `sync` writer waiting on it released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use hemvist_proto::{HemvistError, OrgId};

use crate::clock::now_ms;

/// A tenant with writes not yet shipped: since when, and a counter bumped by every write, so a
/// pass knows whether writes came in while it shipped (then the tenant stays dirty).
#[derive(Debug, Clone, Copy)]
pub struct Dirty {
    pub since: i64,
    pub writes: u64,
}

/// What one write's mark did.
pub struct Marked {
    /// Once a pass ships the tenant with at least this many writes, the write is stored.
    pub mark: u64,
    /// The tenant was clean before (its position changed: it now has unshipped writes).
    pub newly_dirty: bool,
}

#[derive(Default)]
struct Marks {
    dirty: HashMap<OrgId, Dirty>,
    /// Per tenant: the count of writes marked (kept when the tenant turns clean, so marks only
    /// grow).
    counts: HashMap<OrgId, u64>,
}

#[derive(Default)]
pub struct DirtyTenants {
    marks: Mutex<Marks>,
    /// Per tenant: how many of its marked writes are in object storage.
    durable: Mutex<HashMap<OrgId, u64>>,
    durable_changed: Condvar,
    /// Wakes the loop: a first dirty tenant (a deadline to keep), or a `sync` write waiting
    /// (`urgent`: ship at once).
    wake: tokio::sync::Notify,
    urgent: AtomicBool,
}

impl DirtyTenants {
    pub fn mark(&self, org: &OrgId) -> Marked {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let Marks { dirty, counts } = &mut *marks;
        let mark = counts.entry(org.clone()).or_insert(0);
        *mark += 1;
        let mark = *mark;
        if let Some(d) = dirty.get_mut(org) {
            d.writes = mark;
            return Marked {
                mark,
                newly_dirty: false,
            };
        }
        let first = dirty.is_empty();
        dirty.insert(
            org.clone(),
            Dirty {
                since: now_ms(),
                writes: mark,
            },
        );
        drop(marks);
        if first {
            // The loop sleeps with nothing to do; it now has a deadline.
            self.wake.notify_one();
        }
        Marked {
            mark,
            newly_dirty: true,
        }
    }

    /// Blocks until the write with `mark` is in object storage (a pass starts at once; every
    /// write that comes in meanwhile joins the next one: group commit), or `limit` passes.
    pub fn wait_durable(
        &self,
        org: &OrgId,
        mark: u64,
        limit: Duration,
    ) -> Result<(), HemvistError> {
        let deadline = Instant::now() + limit;
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        self.urgent.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        loop {
            if durable.get(org).is_some_and(|d| *d >= mark) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HemvistError::unavailable(
                    "the write is committed on this node but not yet in object storage \
                     (durability sync); it will be shipped when the store answers",
                ));
            }
            durable = self
                .durable_changed
                .wait_timeout(durable, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Tenants fully shipped (`done`) stop being dirty, unless written meanwhile; the writes
    /// they had are durable (waiting `sync` writers are told). Returns the tenants now clean.
    pub fn clear(&self, outcomes: Vec<(OrgId, Dirty, bool)>, started: i64) -> Vec<OrgId> {
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        let mut durable = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        let mut cleared = Vec::new();
        for (org, seen, done) in outcomes {
            if !done {
                continue;
            }
            let d = durable.entry(org.clone()).or_insert(0);
            *d = (*d).max(seen.writes);
            match marks.dirty.get_mut(&org) {
                Some(now) if now.writes == seen.writes => {
                    marks.dirty.remove(&org);
                    cleared.push(org);
                }
                // Written while shipping: what is left is no older than this pass.
                Some(now) => now.since = now.since.max(started),
                None => {}
            }
        }
        drop(durable);
        self.durable_changed.notify_all();
        cleared
    }

    /// The dirty tenants as a pass starts.
    pub fn batch(&self) -> Vec<(OrgId, Dirty)> {
        self.read(|dirty| dirty.iter().map(|(o, d)| (o.clone(), *d)).collect())
    }

    /// `f` over the dirty tenants, under their lock (to read them together with other state).
    pub fn read<R>(&self, f: impl FnOnce(&HashMap<OrgId, Dirty>) -> R) -> R {
        f(&self.marks.lock().unwrap_or_else(|p| p.into_inner()).dirty)
    }

    pub fn oldest(&self) -> Option<i64> {
        self.read(|dirty| dirty.values().map(|d| d.since).min())
    }

    pub fn count(&self) -> usize {
        self.read(|dirty| dirty.len())
    }

    pub fn remove(&self, org: &OrgId) {
        self.marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .dirty
            .remove(org);
    }

    /// Whether a `sync` write asked for a pass since the last call.
    pub fn take_urgent(&self) -> bool {
        self.urgent.swap(false, Ordering::SeqCst)
    }

    /// Resolves when a first tenant turns dirty or a `sync` write waits.
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}
