//! Per-tenant health, counted in memory between two heartbeats: the requests served to an org's
//! users, how many were answered 5xx, and how many tenant reads and writes failed in SQLite. A
//! rollout watches these for the tenants it migrated, and halts when their errors rise.
//!
//! Keeps true: what is recorded is counted once, in the next [`TenantHealth::take`] (a take
//! resets every count it returns); memory stays bounded: at most `limit` orgs are counted
//! between two takes (the web layer records only orgs served here, so in practice the orgs
//! hosted here), and what a further org would add is dropped and counted in
//! [`TenantHealth::dropped`]. Nothing here knows HTTP or SQLite: callers say what happened.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use hemvist_proto::OrgId;

/// More orgs than a node hosts; only a flood of distinct orgs between two heartbeats (which
/// the web layer does not record) would reach it.
pub const MAX_ORGS: usize = 100_000;

/// One org's counts since the last take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    /// Answered with a 5xx status.
    pub server_errors: u64,
    /// Tenant reads and writes that failed in SQLite (a request's 5xx caused by one counts in
    /// both).
    pub sqlite_errors: u64,
    /// Of `requests`, those by a signed-in user (a branch kept alive by use counts them).
    pub signed_in: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    server_errors: AtomicU64,
    sqlite_errors: AtomicU64,
    signed_in: AtomicU64,
}

pub struct TenantHealth {
    /// Recorders share the read lock and count atomically; a take swaps the map out under the
    /// write lock, so no count lands in a map already taken.
    orgs: RwLock<HashMap<OrgId, Counters>>,
    limit: usize,
    dropped: AtomicU64,
}

impl Default for TenantHealth {
    fn default() -> Self {
        TenantHealth::new(MAX_ORGS)
    }
}

impl TenantHealth {
    pub fn new(limit: usize) -> Self {
        TenantHealth {
            orgs: RwLock::default(),
            limit,
            dropped: AtomicU64::new(0),
        }
    }

    /// A request served to one of `org`'s users, and whether it was answered 5xx.
    pub fn request(&self, org: &OrgId, server_error: bool) {
        self.request_by(org, server_error, false);
    }

    /// As [`TenantHealth::request`], saying whether a signed-in user made it.
    pub fn request_by(&self, org: &OrgId, server_error: bool, signed_in: bool) {
        self.add(org, |c| {
            c.requests.fetch_add(1, Ordering::Relaxed);
            if server_error {
                c.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            if signed_in {
                c.signed_in.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// A read or write of `org`'s tenant failed in SQLite.
    pub fn sqlite_error(&self, org: &OrgId) {
        self.add(org, |c| {
            c.sqlite_errors.fetch_add(1, Ordering::Relaxed);
        });
    }

    fn add(&self, org: &OrgId, count: impl Fn(&Counters)) {
        {
            let orgs = self.orgs.read().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = orgs.get(org) {
                count(c);
                return;
            }
        }
        let mut orgs = self.orgs.write().unwrap_or_else(|p| p.into_inner());
        if !orgs.contains_key(org) && orgs.len() >= self.limit {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        count(orgs.entry(org.clone()).or_default());
    }

    /// The counts since the last take of every org that served a request meanwhile, and every
    /// count reset. SQLite errors of an org that served no request (a control command's write,
    /// say) are reset too, unreported: the heartbeat speaks of the tenants users used.
    pub fn take(&self) -> Vec<(OrgId, Counts)> {
        let taken = std::mem::take(&mut *self.orgs.write().unwrap_or_else(|p| p.into_inner()));
        let mut out: Vec<(OrgId, Counts)> = taken
            .into_iter()
            .map(|(org, c)| {
                let counts = Counts {
                    requests: c.requests.into_inner(),
                    server_errors: c.server_errors.into_inner(),
                    sqlite_errors: c.sqlite_errors.into_inner(),
                    signed_in: c.signed_in.into_inner(),
                };
                (org, counts)
            })
            .filter(|(_, c)| c.requests > 0)
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// What was not counted because `limit` orgs were counted already, since the node started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    #[test]
    fn a_take_returns_the_counts_since_the_last_and_resets_them() {
        let h = TenantHealth::default();
        h.request(&org("acme"), false);
        h.request(&org("acme"), true);
        h.sqlite_error(&org("acme"));
        h.request(&org("fika"), false);
        // Only a control command's failed write: not a tenant users used.
        h.sqlite_error(&org("quiet"));
        assert_eq!(
            h.take(),
            vec![
                (
                    org("acme"),
                    Counts {
                        requests: 2,
                        server_errors: 1,
                        sqlite_errors: 1,
                        signed_in: 0,
                    }
                ),
                (
                    org("fika"),
                    Counts {
                        requests: 1,
                        ..Counts::default()
                    }
                ),
            ]
        );
        assert!(h.take().is_empty(), "everything was reset");
        h.request(&org("quiet"), false);
        assert_eq!(
            h.take(),
            vec![(
                org("quiet"),
                Counts {
                    requests: 1,
                    ..Counts::default()
                }
            )],
            "the error before the last take is not carried over"
        );
    }

    #[test]
    fn no_more_than_the_limit_of_orgs_is_counted_between_two_takes() {
        let h = TenantHealth::new(3);
        for i in 0..10 {
            h.request(&org(&format!("org-{i}")), true);
        }
        // The orgs counted already go on being counted.
        h.request(&org("org-0"), false);
        let taken = h.take();
        assert_eq!(taken.len(), 3);
        assert_eq!(h.dropped(), 7);
        assert_eq!(taken[0].1.requests, 2);
        // A take frees the room.
        h.request(&org("org-9"), false);
        assert_eq!(h.take().len(), 1);
    }

    #[test]
    fn counts_from_many_threads_all_land() {
        let h = std::sync::Arc::new(TenantHealth::default());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..1_000 {
                        h.request(&org(&format!("org-{}", (t + i) % 4)), i % 10 == 0);
                    }
                })
            })
            .collect();
        let mut total = Counts::default();
        let mut add = |taken: Vec<(OrgId, Counts)>| {
            for (_, c) in taken {
                total.requests += c.requests;
                total.server_errors += c.server_errors;
            }
        };
        // Takes race the recorders: nothing is lost or counted twice.
        for _ in 0..50 {
            add(h.take());
        }
        for t in threads {
            t.join().unwrap();
        }
        add(h.take());
        assert_eq!(total.requests, 8_000);
        assert_eq!(total.server_errors, 800);
    }
}
