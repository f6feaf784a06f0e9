//! What the writes say: each move's write pause (the longest any write overlapping the move
//! waited from its first attempt to its acknowledgement, and the longest gap between two
//! acknowledgements), the writes' latency while nothing moved, and whether every acknowledged
//! write is in the tenant's final database exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hemvist_node::Node;
use hemvist_proto::OrgId;

use super::backups::Pruned;
use super::moving::MoveResult;
use super::naive::Naive;
use super::writer::{name, Record, Written};

/// What the writes saw during one move.
#[derive(Debug, Clone, Default)]
pub struct MoveWrites {
    pub pause: Duration,
    pub gap: Duration,
    pub overlapping: usize,
    pub redirected: usize,
    pub unavailable: usize,
}

fn overlaps(r: &Record, from: Instant, to: Instant) -> bool {
    r.first <= to && r.end >= from
}

pub fn per_move(moves: &[MoveResult], writes: &[Record]) -> Vec<MoveWrites> {
    let acks: Vec<Instant> = writes.iter().filter(|r| r.acked).map(|r| r.end).collect();
    moves
        .iter()
        .map(|m| {
            let (from, to) = (m.requested, m.ended);
            let during: Vec<&Record> = writes.iter().filter(|r| overlaps(r, from, to)).collect();
            let gap = acks
                .windows(2)
                .filter(|w| w[1] >= from && w[0] <= to)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default();
            MoveWrites {
                pause: during
                    .iter()
                    .map(|r| r.end - r.first)
                    .max()
                    .unwrap_or_default(),
                gap,
                overlapping: during.len(),
                redirected: during.iter().filter(|r| r.redirects > 0).count(),
                unavailable: during.iter().filter(|r| r.unavailable > 0).count(),
            }
        })
        .collect()
}

/// The writes as a whole: how many, and their latency outside every move.
#[derive(Debug, Clone, Default)]
pub struct WriteSummary {
    pub sent: usize,
    pub acked: usize,
    /// Refused or given up (by status; 0 = no answer within the writer's patience).
    pub failed: Vec<(u16, usize)>,
    pub rate: f64,
    pub calm: Vec<Duration>,
}

pub fn summarize(moves: &[MoveResult], writes: &[Record]) -> WriteSummary {
    let mut failed: HashMap<u16, usize> = HashMap::new();
    for r in writes.iter().filter(|r| !r.acked) {
        *failed.entry(r.refused.unwrap_or(0)).or_default() += 1;
    }
    let span = match (writes.first(), writes.last()) {
        (Some(a), Some(b)) => (b.end - a.first).as_secs_f64(),
        _ => 0.0,
    };
    WriteSummary {
        sent: writes.len(),
        acked: writes.iter().filter(|r| r.acked).count(),
        failed: {
            let mut f: Vec<(u16, usize)> = failed.into_iter().collect();
            f.sort();
            f
        },
        rate: if span > 0.0 {
            writes.len() as f64 / span
        } else {
            0.0
        },
        calm: writes
            .iter()
            .filter(|r| r.acked && !moves.iter().any(|m| overlaps(r, m.requested, m.ended)))
            .map(|r| r.end - r.first)
            .collect(),
    }
}

/// A write this slow, or not acknowledged, is told with every answer it got.
const SLOW: Duration = Duration::from_secs(1);

/// The slowest writes (at most 10) that took over [`SLOW`] or were not acknowledged: when, in
/// which move, and what each attempt was answered (runs of the same answer from the same node
/// folded into one).
pub fn slow_writes(
    moves: &[MoveResult],
    written: &Written,
    nodes: &[(String, String)],
) -> Vec<String> {
    // Node URLs read as node ids.
    let named = |s: &str| {
        nodes
            .iter()
            .fold(s.to_string(), |s, (url, id)| s.replace(url.as_str(), id))
    };
    let mut slow: Vec<&Record> = written
        .records
        .iter()
        .filter(|r| !r.acked || r.end - r.first > SLOW)
        .collect();
    slow.sort_by_key(|r| std::cmp::Reverse(r.end - r.first));
    slow.truncate(10);
    slow.sort_by_key(|r| r.seq);
    slow.iter()
        .map(|r| {
            let during = moves
                .iter()
                .enumerate()
                .find(|(_, m)| overlaps(r, m.requested, m.ended))
                .map(|(i, m)| {
                    format!(
                        "in move {} (sent {} ms after its request)",
                        i + 1,
                        signed_ms(r.first, m.requested)
                    )
                })
                .unwrap_or_else(|| "outside every move".into());
            let mut trail: Vec<(String, String, i64, i64, usize)> = Vec::new();
            for e in written.events.iter().filter(|e| e.seq == r.seq) {
                let t = signed_ms(e.at, r.first);
                match trail.last_mut() {
                    Some(last) if last.0 == named(&e.origin) && last.1 == named(&e.answer) => {
                        last.3 = t;
                        last.4 += 1;
                    }
                    _ => trail.push((named(&e.origin), named(&e.answer), t, t, 1)),
                }
            }
            let trail: Vec<String> = trail
                .iter()
                .map(|(origin, answer, from, to, n)| {
                    if *n > 1 {
                        format!("{origin}: {answer} x{n} (+{from}..+{to} ms)")
                    } else {
                        format!("{origin}: {answer} (+{from} ms)")
                    }
                })
                .collect();
            format!(
                "write {} {} ms, {}, {during}; answers before its end: {}",
                r.seq,
                (r.end - r.first).as_millis(),
                if r.acked {
                    "acknowledged".to_string()
                } else {
                    format!("not acknowledged ({})", r.refused.unwrap_or(0))
                },
                if trail.is_empty() {
                    "none but the last".into()
                } else {
                    trail.join(", ")
                }
            )
        })
        .collect()
}

fn signed_ms(a: Instant, b: Instant) -> i64 {
    if a >= b {
        (a - b).as_millis() as i64
    } else {
        -((b - a).as_millis() as i64)
    }
}

/// Every acknowledged write, looked for in the org's database at its final home.
#[derive(Debug, Clone, Default)]
pub struct Check {
    pub acked: usize,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    /// Stored though never acknowledged (a write whose answer never came).
    pub unacked_stored: usize,
}

pub fn check_writes(
    home: &Node,
    org: &OrgId,
    prefix: &str,
    writes: &[Record],
) -> anyhow::Result<Check> {
    let pattern = format!("{prefix} %");
    let stored: HashMap<String, i64> = home.writer.read(org, |c| {
        let mut stmt =
            c.prepare("SELECT name, count(*) FROM contacts WHERE name LIKE ?1 GROUP BY name")?;
        let rows = stmt.query_map([&pattern], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    })?;
    let mut out = Check::default();
    for r in writes {
        let n = name(prefix, r.seq);
        let count = stored.get(&n).copied().unwrap_or(0);
        if r.acked {
            out.acked += 1;
            match count {
                0 => out.lost.push(n),
                1 => {}
                _ => out.duplicated.push(n),
            }
        } else if count > 0 {
            out.unacked_stored += 1;
        }
    }
    Ok(out)
}

/// Everything one size came to.
pub struct SizeResult {
    pub mb: u64,
    pub file_bytes: u64,
    pub asked: usize,
    pub moves: Vec<MoveResult>,
    pub measured: Vec<MoveWrites>,
    pub check: Option<Check>,
    pub writes: WriteSummary,
    pub slow: Vec<String>,
    /// Snapshots taken and bytes uploaded by both nodes while the writer ran.
    pub backups: (u64, u64),
    pub naive: Option<Naive>,
    pub pruned: Pruned,
    pub error: Option<String>,
}

impl SizeResult {
    pub fn failed(mb: u64, error: String) -> SizeResult {
        SizeResult {
            mb,
            file_bytes: 0,
            asked: 0,
            moves: Vec::new(),
            measured: Vec::new(),
            check: None,
            writes: WriteSummary::default(),
            slow: Vec::new(),
            backups: (0, 0),
            naive: None,
            pruned: Pruned::default(),
            error: Some(error),
        }
    }
}
