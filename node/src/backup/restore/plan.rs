//! The plan: what to read, in order, to restore an org as it was at a point in time — the
//! newest snapshot at or before it in the newest generation that has one, then the chain of
//! segments that continues it.
//!
//! Keeps true: a plan never skips an LSN (segments chain start to end) and never uses an
//! object newer than the asked time or one the caller must avoid (a damaged one); and
//! [`Catalog::shortfall`] names everything newer than the plan that the store shows (objects
//! past a gap, damaged objects and what they held) or the control plane reported, so no caller
//! takes an older point without knowing it.

use std::collections::{BTreeSet, HashMap};

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
    /// and none in `avoid`, that reaches furthest. Where two segments start at the same LSN (one
    /// re-shipped after a crash), the one leading further is taken (then the longer one).
    pub fn chain(
        &self,
        generation: u64,
        mut lsn: u64,
        at_ms: i64,
        avoid: &[String],
    ) -> Vec<(ObjectName, u64)> {
        let mut by_start: HashMap<u64, Vec<&(ObjectName, u64)>> = HashMap::new();
        for o in self.objects.iter().filter(|(n, _)| {
            n.generation == generation
                && n.kind == Kind::Segment
                && n.start >= lsn
                && n.time_ms <= at_ms
                && !avoid.contains(&n.key())
        }) {
            by_start.entry(o.0.start).or_default().push(o);
        }
        // Segments only lead forward (end > start): from the highest start down, each start's
        // furthest reach is known from the ones after it.
        let mut starts: Vec<u64> = by_start.keys().copied().collect();
        starts.sort_unstable_by(|a, b| b.cmp(a));
        let mut best: HashMap<u64, (u64, &(ObjectName, u64))> = HashMap::new();
        for start in starts {
            let pick = by_start[&start]
                .iter()
                .map(|s| {
                    let reach = best.get(&s.0.end).map_or(s.0.end, |b| b.0);
                    (reach, *s)
                })
                .max_by_key(|(reach, s)| (*reach, s.0.end, std::cmp::Reverse(s.0.time_ms)));
            if let Some(pick) = pick {
                best.insert(start, pick);
            }
        }
        let mut out = Vec::new();
        while let Some((_, s)) = best.get(&lsn) {
            lsn = s.0.end;
            out.push((*s).clone());
        }
        out
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

    /// What to read to restore the org to exactly position `lsn` of `generation`: everything
    /// up to it and nothing after (a rollback to a migration's restore point). The newest
    /// snapshot of the generation at or before `lsn` from which segments chain to exactly
    /// `lsn`, using no object named after `at_ms` (the position's own time: nothing shipped
    /// later, such as the generation's first snapshot taken after the point, can be the
    /// point). `None`: no such chain ([`Catalog::why_not_to`] says why).
    pub fn plan_to(&self, generation: u64, lsn: u64, at_ms: i64) -> Option<Plan> {
        let mut snapshots: Vec<&(ObjectName, u64)> = self
            .objects
            .iter()
            .filter(|(n, _)| {
                n.generation == generation
                    && n.kind == Kind::Snapshot
                    && n.end <= lsn
                    && n.time_ms <= at_ms
            })
            .collect();
        snapshots.sort_by_key(|(n, _)| std::cmp::Reverse((n.end, n.time_ms)));
        // Segments past the position are out of the picture: the furthest chain left ends at
        // the position whenever any chain does.
        let up_to = Catalog {
            objects: self
                .objects
                .iter()
                .filter(|(n, _)| n.kind == Kind::Segment && n.end <= lsn)
                .cloned()
                .collect(),
            ..Default::default()
        };
        snapshots.into_iter().find_map(|snapshot| {
            let segments = up_to.chain(generation, snapshot.0.end, at_ms, &[]);
            let reach = segments.last().map_or(snapshot.0.end, |s| s.0.end);
            (reach == lsn).then(|| Plan {
                generation,
                snapshot: snapshot.clone(),
                segments,
            })
        })
    }

    /// Why [`Catalog::plan_to`] finds no plan to that position, for a message.
    pub fn why_not_to(&self, generation: u64, lsn: u64, at_ms: i64) -> String {
        let of_g: Vec<&ObjectName> = self
            .objects
            .iter()
            .map(|(n, _)| n)
            .filter(|n| n.generation == generation)
            .collect();
        let mut why = if of_g.is_empty() {
            format!("the store holds no backup of generation {generation}")
        } else {
            let snapshot = of_g
                .iter()
                .filter(|n| n.kind == Kind::Snapshot && n.end <= lsn && n.time_ms <= at_ms)
                .max_by_key(|n| (n.end, n.time_ms));
            match snapshot {
                None => {
                    let oldest = of_g
                        .iter()
                        .filter(|n| n.kind == Kind::Snapshot)
                        .min_by_key(|n| n.end);
                    format!(
                        "generation {generation} has no snapshot at or before LSN {lsn} taken \
                         by then{}",
                        oldest.map_or(String::new(), |o| format!(
                            " (its oldest is at LSN {}, {}: removed by retention?)",
                            o.end,
                            crate::backup::format_time(o.time_ms)
                        ))
                    )
                }
                Some(s) => {
                    let reach = self
                        .chain(generation, s.end, at_ms, &[])
                        .iter()
                        .map(|c| c.0.end)
                        .take_while(|end| *end <= lsn)
                        .last()
                        .unwrap_or(s.end);
                    let newest = of_g.iter().map(|n| n.end).max().unwrap_or(reach);
                    format!(
                        "from its snapshot at LSN {}, the segments of generation {generation} \
                         shipped by then reach LSN {reach}, not {lsn} (its newest object ends at \
                         LSN {newest})",
                        s.end
                    )
                }
            }
        };
        for d in &self.damaged {
            why.push_str(&format!("; {} is damaged ({})", d.key, d.reason));
        }
        why
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

/// The newest position the control plane last saw shipped for the org: (generation, LSN after
/// the last object), and when it was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub generation: u64,
    pub lsn: u64,
    pub reported_ms: i64,
}

/// What a restore would miss: each piece of the org's history newer than the plan that the
/// store shows or the control plane reported, and the newest point that can be reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shortfall {
    pub missing: Vec<String>,
    /// (generation, LSN, time) of the newest reachable point, if any.
    pub reach: Option<(u64, u64, i64)>,
}

impl Shortfall {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
    }
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 4;
        write!(f, "missing: ")?;
        for (i, m) in self.missing.iter().take(SHOWN).enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{m}")?;
        }
        if self.missing.len() > SHOWN {
            write!(f, "; and {} more", self.missing.len() - SHOWN)?;
        }
        match self.reach {
            Some((g, lsn, t)) => write!(
                f,
                ". The newest point that can be reached is generation {g}, LSN {lsn}, {} (--at {t})",
                crate::backup::format_time(t)
            ),
            None => write!(f, ". No point can be reached"),
        }
    }
}

impl Catalog {
    /// Everything newer than `plan` (the restore of the org as it was at `at_ms`) that the
    /// store shows or `known` says was shipped: empty when the plan reaches the newest position
    /// known for that time.
    pub fn shortfall(&self, plan: Option<&Plan>, at_ms: i64, known: Option<&Known>) -> Shortfall {
        let reach = plan.map(|p| (p.generation, p.lsn(), p.time_ms()));
        // Whether position (generation, lsn) lies past the plan's end.
        let beyond = |generation: u64, lsn: u64| match reach {
            None => true,
            Some((g, l, _)) => generation > g || (generation == g && lsn > l),
        };
        let mut missing = Vec::new();
        let past_gap = self
            .objects
            .iter()
            .filter(|(n, _)| {
                n.kind != Kind::Index && n.time_ms <= at_ms && beyond(n.generation, n.end)
            })
            .max_by_key(|(n, _)| (n.generation, n.end));
        if let Some((n, _)) = past_gap {
            missing.push(match (n.kind, reach) {
                (Kind::Segment, Some((g, l, _))) if g == n.generation => format!(
                    "generation {} has segments up to LSN {} ({}), but LSN {l} is continued by none",
                    n.generation,
                    n.end,
                    crate::backup::format_time(n.time_ms)
                ),
                _ => format!(
                    "generation {} has objects up to LSN {} ({}) that no snapshot leads to",
                    n.generation,
                    n.end,
                    crate::backup::format_time(n.time_ms)
                ),
            });
        }
        for d in &self.damaged {
            for h in d
                .holds
                .iter()
                .filter(|h| h.time_ms <= at_ms && beyond(h.generation, h.end))
            {
                missing.push(format!(
                    "generation {} LSN {}..{} ({}) is in {}, which is damaged ({})",
                    h.generation,
                    h.start,
                    h.end,
                    crate::backup::format_time(h.time_ms),
                    d.key,
                    d.reason
                ));
            }
            let newer = reach.is_none_or(|(_, _, t)| d.time_ms > t);
            if !d.complete && newer && d.time_ms <= at_ms {
                missing.push(format!(
                    "{} ({}) is damaged ({}) and what it held cannot be told: it may hold \
                     writes newer than the point reached",
                    d.key,
                    crate::backup::format_time(d.time_ms),
                    d.reason
                ));
            }
        }
        if let Some(k) = known {
            if k.reported_ms <= at_ms && beyond(k.generation, k.lsn) {
                missing.push(format!(
                    "the control plane was told generation {} was shipped to LSN {} ({})",
                    k.generation,
                    k.lsn,
                    crate::backup::format_time(k.reported_ms)
                ));
            }
        }
        Shortfall { missing, reach }
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::{DamagedObject, HeldRange};
    use super::*;
    use hemvist_proto::OrgId;

    fn name(kind: Kind, generation: u64, start: u64, end: u64, time_ms: i64) -> ObjectName {
        ObjectName {
            org: OrgId::parse("fika").unwrap(),
            generation,
            kind,
            start,
            end,
            time_ms,
        }
    }

    fn catalog(objects: &[ObjectName]) -> Catalog {
        Catalog {
            objects: objects.iter().map(|n| (n.clone(), 10)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_chain_that_reaches_furthest_is_taken() {
        // A re-ship after a crash: [10, 25) is longer than [10, 20), but only [10, 20) leads on.
        let c = catalog(&[
            name(Kind::Snapshot, 1, 10, 10, 100),
            name(Kind::Segment, 1, 10, 20, 110),
            name(Kind::Segment, 1, 20, 30, 120),
            name(Kind::Segment, 1, 10, 25, 130),
        ]);
        let plan = c.plan(i64::MAX, &[]).unwrap();
        assert_eq!(plan.lsn(), 30);
        assert!(c.shortfall(Some(&plan), i64::MAX, None).is_empty());
    }

    #[test]
    fn a_plan_to_a_position_stops_exactly_there_or_is_none() {
        // Generation 2: a snapshot at 0, segments to 30 (one re-shipped: [10, 25) beside
        // [10, 20)), then a snapshot at 31 taken after the segments, and what came after it.
        let c = catalog(&[
            name(Kind::Snapshot, 1, 0, 0, 50),
            name(Kind::Segment, 1, 0, 9, 60),
            name(Kind::Snapshot, 2, 0, 0, 100),
            name(Kind::Segment, 2, 0, 10, 110),
            name(Kind::Segment, 2, 10, 20, 120),
            name(Kind::Segment, 2, 20, 30, 130),
            name(Kind::Segment, 2, 10, 25, 140),
            name(Kind::Snapshot, 2, 31, 31, 150),
            name(Kind::Segment, 2, 31, 40, 160),
        ]);
        let ends = |p: &Plan| -> (u64, Vec<u64>) {
            (
                p.snapshot.0.end,
                p.segments.iter().map(|s| s.0.end).collect(),
            )
        };
        let plan = c.plan_to(2, 20, i64::MAX).unwrap();
        assert_eq!((plan.generation, plan.lsn()), (2, 20));
        assert_eq!(ends(&plan), (0, vec![10, 20]), "nothing past 20");
        // The re-shipped segment reaches 25, which the furthest chain passes by.
        assert_eq!(
            ends(&c.plan_to(2, 25, i64::MAX).unwrap()),
            (0, vec![10, 25])
        );
        assert_eq!(ends(&c.plan_to(2, 0, i64::MAX).unwrap()), (0, vec![]));
        // After a newer snapshot: from it.
        assert_eq!(ends(&c.plan_to(2, 40, i64::MAX).unwrap()), (31, vec![40]));
        assert_eq!(ends(&c.plan_to(2, 31, i64::MAX).unwrap()), (31, vec![]));
        // An older generation, though a newer one exists.
        assert_eq!(c.plan_to(1, 9, i64::MAX).unwrap().lsn(), 9);
        // No object ends there; past the newest; no such generation.
        for (g, lsn) in [(2, 15), (2, 41), (3, 0)] {
            assert!(c.plan_to(g, lsn, i64::MAX).is_none(), "{g}/{lsn}");
        }
        // Nothing named after the position's time: the snapshot at 0 of a generation first
        // shipped after the point is not the point.
        assert!(c.plan_to(2, 0, 99).is_none());
        assert!(c
            .why_not_to(2, 0, 99)
            .contains("no snapshot at or before LSN 0"));
        assert_eq!(c.plan_to(2, 20, 125).unwrap().lsn(), 20);
        assert!(
            c.plan_to(2, 30, 125).is_none(),
            "[20, 30) is newer than 125"
        );

        // A hole: [10, 20) lost.
        let mut holed = c.clone();
        holed
            .objects
            .retain(|(n, _)| n.generation != 2 || n.start != 10);
        assert!(holed.plan_to(2, 30, i64::MAX).is_none());
        let why = holed.why_not_to(2, 30, i64::MAX);
        assert!(why.contains("reach LSN 10, not 30"), "{why}");
        assert!(c
            .why_not_to(7, 1, i64::MAX)
            .contains("no backup of generation 7"));
    }

    #[test]
    fn a_plan_short_of_what_is_known_says_what_it_misses() {
        let mut c = catalog(&[
            name(Kind::Snapshot, 1, 0, 0, 100),
            name(Kind::Segment, 1, 0, 5, 110),
        ]);
        let plan = c.plan(i64::MAX, &[]).unwrap();
        assert!(c.shortfall(Some(&plan), i64::MAX, None).is_empty());

        // The control plane saw more shipped; not when restoring to before it was told.
        let known = Known {
            generation: 1,
            lsn: 9,
            reported_ms: 500,
        };
        let short = c.shortfall(Some(&plan), i64::MAX, Some(&known));
        assert_eq!(short.missing.len(), 1, "{short}");
        assert_eq!(short.reach, Some((1, 5, 110)));
        assert!(short.to_string().contains("LSN 9"), "{short}");
        assert!(c.shortfall(Some(&plan), 400, Some(&known)).is_empty());

        // A segment past a hole.
        c.objects.push((name(Kind::Segment, 1, 7, 9, 130), 10));
        let short = c.shortfall(Some(&plan), i64::MAX, None);
        assert!(short.missing[0].contains("up to LSN 9"), "{short}");

        // A damaged pack whose contents cannot be told, written after the point reached.
        let mut d = catalog(&[
            name(Kind::Snapshot, 1, 0, 0, 100),
            name(Kind::Segment, 1, 0, 5, 110),
        ]);
        d.damaged.push(DamagedObject {
            key: "packs/n1/0000000000200-00000001-00000080.hvp".into(),
            reason: "index checksum mismatch".into(),
            time_ms: 200,
            holds: vec![],
            complete: false,
        });
        let short = d.shortfall(Some(&plan), i64::MAX, None);
        assert!(short.missing[0].contains("cannot be told"), "{short}");
        // One told completely, holding the org's next segment.
        d.damaged[0].complete = true;
        assert!(d.shortfall(Some(&plan), i64::MAX, None).is_empty());
        d.damaged[0].holds.push(HeldRange {
            generation: 1,
            start: 5,
            end: 8,
            time_ms: 190,
        });
        let short = d.shortfall(Some(&plan), i64::MAX, None);
        assert!(short.missing[0].contains("LSN 5..8"), "{short}");
        assert!(d.shortfall(Some(&plan), 150, None).is_empty());
    }
}
