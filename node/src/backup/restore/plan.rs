//! The plan: what to read, in order, to restore an org as it was at a point in time — the
//! newest snapshot at or before it in the newest generation that has one, then the chain of
//! segments that continues it.
//!
//! Keeps true: a plan never skips an LSN (segments chain start to end) and never uses an
//! object newer than the asked time or one the caller must avoid (a damaged one).

use std::collections::BTreeSet;

use serde::Serialize;

use super::catalog::Catalog;
use crate::backup::format::{Kind, ObjectName};

/// What a restore will read, in order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub generation: u64,
    pub snapshot: (ObjectName, u64),
    pub segments: Vec<(ObjectName, u64)>,
}

impl Plan {
    /// The time of the newest change the plan restores.
    pub fn time_ms(&self) -> i64 {
        self.segments
            .last()
            .map_or(self.snapshot.0.time_ms, |s| s.0.time_ms)
    }
    pub fn lsn(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.snapshot.0.end, |s| s.0.end)
    }
    pub fn bytes(&self) -> u64 {
        self.snapshot.1 + self.segments.iter().map(|s| s.1).sum::<u64>()
    }
}

/// One generation's backups, for `hemvist backups`.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationSummary {
    pub generation: u64,
    pub snapshots: usize,
    pub segments: usize,
    pub bytes: u64,
    pub oldest_ms: i64,
    pub newest_ms: i64,
    pub newest_lsn: u64,
    /// Times a restore can start from (the snapshots), oldest first.
    pub snapshot_times_ms: Vec<i64>,
}

impl Catalog {
    fn generations(&self) -> BTreeSet<u64> {
        self.objects.iter().map(|o| o.0.generation).collect()
    }

    /// The chain of segments in `generation` continuing from `lsn`, none newer than `at_ms`
    /// and none in `avoid`. Where two segments start at the same LSN (one re-shipped after a
    /// crash), the longer one is taken.
    pub fn chain(
        &self,
        generation: u64,
        mut lsn: u64,
        at_ms: i64,
        avoid: &[String],
    ) -> Vec<(ObjectName, u64)> {
        let mut out = Vec::new();
        loop {
            let next = self
                .objects
                .iter()
                .filter(|(n, _)| {
                    n.generation == generation
                        && n.kind == Kind::Segment
                        && n.start == lsn
                        && n.time_ms <= at_ms
                        && !avoid.contains(&n.key())
                })
                .max_by_key(|(n, _)| (n.end, std::cmp::Reverse(n.time_ms)));
            match next {
                Some(s) => {
                    lsn = s.0.end;
                    out.push(s.clone());
                }
                None => return out,
            }
        }
    }

    /// What to read to restore the org as it was at `at_ms`, avoiding the keys in `avoid`.
    pub fn plan(&self, at_ms: i64, avoid: &[String]) -> Option<Plan> {
        for generation in self.generations().into_iter().rev() {
            let snapshot = self
                .objects
                .iter()
                .filter(|(n, _)| {
                    n.generation == generation
                        && n.kind == Kind::Snapshot
                        && n.time_ms <= at_ms
                        && !avoid.contains(&n.key())
                })
                .max_by_key(|(n, _)| (n.end, n.time_ms));
            if let Some(snapshot) = snapshot {
                let segments = self.chain(generation, snapshot.0.end, at_ms, avoid);
                return Some(Plan {
                    generation,
                    snapshot: snapshot.clone(),
                    segments,
                });
            }
        }
        None
    }

    pub fn summary(&self) -> Vec<GenerationSummary> {
        self.generations()
            .into_iter()
            .map(|g| {
                let of_g = || self.objects.iter().filter(move |o| o.0.generation == g);
                let snaps: Vec<&(ObjectName, u64)> =
                    of_g().filter(|o| o.0.kind == Kind::Snapshot).collect();
                let newest = self.plan_in(g);
                GenerationSummary {
                    generation: g,
                    snapshots: snaps.len(),
                    segments: of_g().filter(|o| o.0.kind == Kind::Segment).count(),
                    bytes: of_g().map(|o| o.1).sum(),
                    oldest_ms: snaps.iter().map(|s| s.0.time_ms).min().unwrap_or(0),
                    newest_ms: newest.as_ref().map_or(0, Plan::time_ms),
                    newest_lsn: newest.as_ref().map_or(0, Plan::lsn),
                    snapshot_times_ms: snaps.iter().map(|s| s.0.time_ms).collect(),
                }
            })
            .collect()
    }

    /// The newest point of `generation` alone.
    pub fn plan_in(&self, generation: u64) -> Option<Plan> {
        let only = Catalog {
            objects: self
                .objects
                .iter()
                .filter(|o| o.0.generation == generation)
                .cloned()
                .collect(),
            ..Default::default()
        };
        only.plan(i64::MAX, &[])
    }
}
