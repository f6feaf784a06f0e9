//! `audit verify`: the chain checked entry by entry, then against every signed checkpoint in
//! the checkpoint store. The chain alone catches an edited, removed or moved entry; only the
//! checkpoints catch a log cut back to a shorter chain that is consistent in itself, or one
//! rewritten from some entry on with fresh hashes.

use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::lockbox::Stored;
use crate::clock::format_ms;
use crate::store::{ChainCheck, ChainFault};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub ok: bool,
    /// Entries in the chain, and the newest one's seq.
    pub entries: u64,
    pub head_seq: i64,
    /// The first entry that is not as written (or the first of a range, when only a
    /// checkpoint can tell), and what is wrong with it.
    pub first_bad: Option<Damage>,
    /// Everything found, first first.
    pub problems: Vec<String>,
    pub checkpoints: Option<CheckpointSummary>,
    /// Why the result is weaker than it could be (no checkpoint store, entries not yet covered).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Damage {
    pub seq: i64,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub store: String,
    /// The key that must have signed them.
    pub public_key: String,
    /// Objects found (every version), and how many are checkpoints signed by that key.
    pub found: usize,
    pub trusted: usize,
    /// The newest trusted checkpoint: what the chain was checked against.
    pub newest: Option<CheckpointSeen>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointSeen {
    pub name: String,
    pub version: Option<String>,
    pub seq: i64,
    pub hash: String,
    pub signed_at: String,
    pub lock_mode: Option<String>,
    pub locked_until: Option<String>,
}

/// A checkpoint as read back, with the lock the store reports on it.
pub struct Found {
    pub stored: Stored,
    pub checkpoint: Result<Checkpoint, String>,
    pub lock_mode: Option<String>,
    pub locked_until: Option<String>,
}

/// The verdict from the chain walk and the checkpoints found (`None`: no store configured).
pub fn judge(
    chain: &ChainCheck,
    found: Option<Vec<Found>>,
    public_key: Option<&str>,
    system: &str,
    store_url: &str,
) -> Verdict {
    let head_seq = chain.head.as_ref().map_or(0, |h| h.0);
    let mut damage: Vec<Damage> = Vec::new();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if let Some((seq, fault)) = &chain.first_fault {
        damage.push(Damage {
            seq: *seq,
            problem: match fault {
                ChainFault::Missing { next_present } if *next_present == seq + 1 => {
                    format!("entry {seq} is missing: the log goes from entry {} to entry {next_present}", seq - 1)
                }
                ChainFault::Missing { next_present } => format!(
                    "entries {seq} to {} are missing: the log goes from entry {} to entry {next_present}",
                    next_present - 1,
                    seq - 1
                ),
                ChainFault::Unlinked => format!(
                    "entry {seq} does not follow entry {}: an entry was removed, replaced or moved there",
                    seq - 1
                ),
                ChainFault::Altered => format!(
                    "entry {seq} was changed after it was written: its fields no longer give its hash"
                ),
            },
        });
    }
    let summary = found.map(|found| {
        let key = public_key.unwrap_or_default();
        let mut trusted: Vec<(&Found, &Checkpoint)> = Vec::new();
        for f in &found {
            match &f.checkpoint {
                Ok(c) if c.system == system && c.signed_by(key) => trusted.push((f, c)),
                Ok(_) => problems.push(format!(
                    "{} is not a checkpoint of this system signed by its key",
                    f.stored.name
                )),
                Err(e) => problems.push(format!("{} cannot be read as a checkpoint: {e}", f.stored.name)),
            }
        }
        trusted.sort_by_key(|(_, c)| (c.seq, c.signed_at_ms));
        let mut agreed_through = 0i64;
        for (_, c) in &trusted {
            if c.seq > head_seq {
                damage.push(Damage {
                    seq: head_seq + 1,
                    problem: format!(
                        "the log was cut short: it ends at entry {head_seq}, but the checkpoint signed {} covers entries up to {}",
                        format_ms(c.signed_at_ms),
                        c.seq
                    ),
                });
                break;
            }
            match chain.hashes.get(&c.seq) {
                Some(h) if *h == c.hash => agreed_through = agreed_through.max(c.seq),
                Some(_) => {
                    damage.push(Damage {
                        seq: agreed_through + 1,
                        problem: format!(
                            "entries {} to {} were rewritten: entry {} is not the one the checkpoint signed {} covers",
                            agreed_through + 1,
                            c.seq,
                            c.seq,
                            format_ms(c.signed_at_ms)
                        ),
                    });
                    break;
                }
                // Absent inside the chain: the walk has already named it missing.
                None => {}
            }
        }
        let newest = trusted.last().map(|(f, c)| CheckpointSeen {
            name: f.stored.name.clone(),
            version: f.stored.version.clone(),
            seq: c.seq,
            hash: c.hash.clone(),
            signed_at: format_ms(c.signed_at_ms),
            lock_mode: f.lock_mode.clone(),
            locked_until: f.locked_until.clone(),
        });
        match &newest {
            None if head_seq > 0 => warnings.push(
                "no checkpoint has been written yet: a truncated log cannot be told from a short one".into(),
            ),
            Some(n) if n.seq < head_seq => warnings.push(format!(
                "entries {} to {head_seq} are newer than the newest checkpoint: until the next one, only the chain protects them",
                n.seq + 1
            )),
            Some(n) if n.lock_mode.is_none() => warnings.push(
                "the newest checkpoint is not under Object Lock: whoever holds the store's credentials could remove it".into(),
            ),
            _ => {}
        }
        CheckpointSummary {
            store: store_url.to_string(),
            public_key: key.to_string(),
            found: found.len(),
            trusted: trusted.len(),
            newest,
        }
    });
    if summary.is_none() {
        warnings.push(
            "no checkpoint store is configured ([audit.checkpoints]): a truncated or rewritten log cannot be detected".into(),
        );
    }
    damage.sort_by_key(|d| d.seq);
    let mut all: Vec<String> = damage.iter().map(|d| d.problem.clone()).collect();
    all.extend(problems);
    Verdict {
        ok: all.is_empty(),
        entries: chain.entries,
        head_seq,
        first_bad: damage.into_iter().next(),
        problems: all,
        checkpoints: summary,
        warnings,
    }
}
