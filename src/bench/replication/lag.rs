//! Replication lag: commit → completion of the first upload that can hold the write.
//!
//! Keeps true: an upload that started before a commit never counts for it, and a write never
//! shipped counts as shipped at the deadline (so unshipped writes raise the lag, never hide).

use std::collections::HashMap;
use std::time::Duration;

use super::proxy::Logged;
use super::requests::{puts, Replicator};

/// Replication lag of a phase's writes.
pub struct Lag {
    pub p50: Duration,
    pub p99: Duration,
    pub writes: usize,
    pub unshipped: usize,
}

/// Each write's lag: commit → completion of the first PUT of its tenant's data that started
/// after the commit (an upload that started earlier cannot hold it). A write with no such PUT
/// by `deadline_us` counts as `deadline_us - commit`.
pub fn lags(
    log: &[Logged],
    replicator: Replicator,
    prefix: &str,
    commits: &[(String, i64)],
    deadline_us: i64,
) -> Lag {
    let mut by_org: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for r in puts(log, prefix, deadline_us) {
        for org in replicator.orgs(r) {
            by_org.entry(org).or_default().push((r.start_us, r.end_us));
        }
    }
    // Sorted by start, with the earliest completion among all later starts.
    let by_org: HashMap<&str, (Vec<i64>, Vec<i64>)> = by_org
        .into_iter()
        .map(|(org, mut v)| {
            v.sort();
            let starts = v.iter().map(|p| p.0).collect();
            let mut ends: Vec<i64> = v.iter().map(|p| p.1).collect();
            for i in (0..ends.len().saturating_sub(1)).rev() {
                ends[i] = ends[i].min(ends[i + 1]);
            }
            (org, (starts, ends))
        })
        .collect();
    let mut unshipped = 0;
    let lags: Vec<Duration> = commits
        .iter()
        .map(|(org, at)| {
            let shipped = by_org.get(org.as_str()).and_then(|(starts, ends)| {
                let i = starts.partition_point(|s| s < at);
                ends.get(i).copied()
            });
            let done = shipped.unwrap_or_else(|| {
                unshipped += 1;
                deadline_us
            });
            Duration::from_micros((done - at).max(0) as u64)
        })
        .collect();
    let writes = lags.len();
    let s = crate::bench::stats(lags);
    Lag {
        p50: s.p50,
        p99: s.p99,
        writes,
        unshipped,
    }
}
