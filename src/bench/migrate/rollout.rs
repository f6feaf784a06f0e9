//! The rollout, as an operator runs it: the migration file sent (`POST /migrations`), the
//! rollout started (`POST /migrations/rollouts`) and followed (`GET /operations/{id}`) until it
//! ends; then where its time went, from the audit log (each phase's entry and when) and the
//! control plane's store (each tenant's `migrate` command: when it was sent, when its answer
//! came, and the transaction time its node reported); then the fleet checked.
//!
//! The store is opened read-only, while the control plane runs: it is what `ops show` would
//! need a per-tenant view for, and reading it changes nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::system::System;
use super::tenants::Tenant;
use super::MigrateArgs;

/// How often the operation is looked at while it runs.
const POLL: Duration = Duration::from_millis(100);
/// The longest a rollout may take before the bench gives up on it.
const LIMIT: Duration = Duration::from_secs(600);

/// One wave, as the audit log and the commands tell it.
#[derive(Debug, Clone, Default)]
pub struct Wave {
    pub index: usize,
    /// Tenants in this wave (not in an earlier one).
    pub tenants: usize,
    /// From the rollout's start to this wave's first `waving` entry.
    pub starts_at: Duration,
    /// `waving` until its `baking` (or `finishing`) entry.
    pub waving: Duration,
    /// The bake after it (none after the last).
    pub bake: Option<Duration>,
    /// Its first command sent to its last answer.
    pub commands: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Rolled {
    pub id: String,
    pub phase: String,
    pub error: Option<String>,
    pub target: u32,
    /// POST sent → this bench saw it done (polled every 100 ms).
    pub wall: Duration,
    /// The operation's own started_ms → finished_ms.
    pub recorded: Option<Duration>,
    /// Where each wave ends in the order (what the control plane made of `--waves`).
    pub bounds: Vec<usize>,
    pub waves: Vec<Wave>,
    /// The `finishing` phase (finishing → done).
    pub finishing: Option<Duration>,
    pub progress: Value,
    /// Per tenant: the transaction time its node reported (`micros`).
    pub tx: Vec<Duration>,
    /// Per tenant: the command's first send → its answer recorded.
    pub command: Vec<Duration>,
    /// Commands per state, and sends beyond the first.
    pub states: Vec<(String, usize)>,
    pub resends: u64,
    /// Snapshots and bytes the replicators stored during the rollout.
    pub backups: (u64, u64),
    pub check: Option<Checked>,
}

/// What the fleet looks like after the rollout.
#[derive(Debug, Default)]
pub struct Checked {
    /// `GET /migrations/status`: tenants per version.
    pub versions: Vec<(u32, usize)>,
    pub behind: u64,
    pub unreported: u64,
    /// Tenant files read through their nodes: at the target, and with every contact's note set.
    pub files_at_target: usize,
    pub files_checked: usize,
    pub files_bad: Vec<String>,
}

/// The migration file under its versioned name, sent to the control plane.
pub fn push(sys: &System, file: &str, sql: &str) -> anyhow::Result<()> {
    let added: Value = sys.post(
        "/migrations",
        &json!({"files": [{"file": file, "sql": sql}]}),
    )?;
    let held = |k: &str| added[k].as_array().is_some_and(|v| !v.is_empty());
    anyhow::ensure!(
        held("added") || held("known"),
        "the control plane did not take {file}: {added}"
    );
    Ok(())
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(v.max(0) as u64)
}

pub fn run(sys: &System, args: &MigrateArgs, bake_ms: u64, target: u32) -> anyhow::Result<Rolled> {
    let before = sys.backup_totals();
    let body = json!({
        "to": target,
        "canary": args.canary,
        "waves": args.waves,
        "bake_ms": bake_ms,
        "concurrency": args.concurrency,
        "dry_run": false,
    });
    let started = Instant::now();
    let op: Value = sys.post("/migrations/rollouts", &body)?;
    let id = op["id"]
        .as_str()
        .context("the rollout's answer has no id")?
        .to_string();
    let mut seen = (String::new(), u64::MAX);
    let done = loop {
        let now: Value = sys.get(&format!("/operations/{id}"))?;
        let phase = now["phase"].as_str().unwrap_or_default().to_string();
        let wave = now["detail"]["wave"].as_u64().unwrap_or(0);
        if (phase.clone(), wave) != seen {
            eprintln!(
                "bench: rollout {phase} wave {wave} at {:.2} s ({} migrated)",
                started.elapsed().as_secs_f64(),
                now["detail"]["progress"]["migrated"]
            );
            seen = (phase.clone(), wave);
        }
        if matches!(phase.as_str(), "done" | "halted" | "aborted") {
            break now;
        }
        if started.elapsed() > LIMIT {
            bail!(
                "the rollout was still {phase} after {} s: {}",
                LIMIT.as_secs(),
                now["detail"]["progress"]
            );
        }
        std::thread::sleep(POLL);
    };
    let wall = started.elapsed();
    let after = sys.backup_totals();
    let d = &done["detail"];
    let mut out = Rolled {
        id: id.clone(),
        phase: done["phase"].as_str().unwrap_or_default().to_string(),
        error: done["error"].as_str().map(str::to_string),
        target,
        wall,
        recorded: match (done["started_ms"].as_i64(), done["finished_ms"].as_i64()) {
            (Some(a), Some(b)) => Some(ms(b - a)),
            _ => None,
        },
        bounds: d["waves"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(Value::as_u64)
                    .map(|n| n as usize)
                    .collect()
            })
            .unwrap_or_default(),
        progress: d["progress"].clone(),
        backups: (after.0 - before.0, after.1 - before.1),
        ..Rolled::default()
    };
    let order: Vec<String> = d["order"]
        .as_array()
        .map(|o| {
            o.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let started_ms = done["started_ms"].as_i64().unwrap_or(0);
    timeline(sys, &mut out, started_ms)?;
    commands(sys, &mut out, &order)?;
    Ok(out)
}

/// The phases' entries in the audit log: when each wave began and ended, and its bake.
fn timeline(sys: &System, out: &mut Rolled, started_ms: i64) -> anyhow::Result<()> {
    let audit: Vec<Value> = sys.get("/audit?limit=10000")?;
    let mut events: Vec<(i64, String, usize)> = audit
        .iter()
        .filter(|e| e["detail"]["operation"] == out.id.as_str())
        .map(|e| {
            (
                e["at_ms"].as_i64().unwrap_or(0),
                e["detail"]["to"].as_str().unwrap_or_default().to_string(),
                e["detail"]["detail"]["wave"].as_u64().unwrap_or(0) as usize,
            )
        })
        .collect();
    events.sort_by_key(|e| e.0);
    let mut begun: HashMap<usize, i64> = HashMap::from([(0, started_ms)]);
    let mut ended: HashMap<usize, i64> = HashMap::new();
    let mut finishing = None;
    for (at, to, wave) in &events {
        match to.as_str() {
            "waving" => {
                begun.entry(*wave).or_insert(*at);
            }
            "baking" => {
                ended.entry(*wave).or_insert(*at);
            }
            "finishing" => {
                ended.entry(*wave).or_insert(*at);
                finishing = Some(*at);
            }
            "done" => {
                out.finishing = finishing.map(|f| ms(at - f));
            }
            _ => {}
        }
    }
    let mut prev = 0;
    for (i, &upto) in out.bounds.iter().enumerate() {
        let (Some(&b), Some(&e)) = (begun.get(&i), ended.get(&i)) else {
            continue;
        };
        out.waves.push(Wave {
            index: i,
            tenants: upto.saturating_sub(prev),
            starts_at: ms(b - started_ms),
            waving: ms(e - b),
            bake: begun.get(&(i + 1)).map(|next| ms(next - e)),
            commands: None,
        });
        prev = upto;
    }
    Ok(())
}

/// Each tenant's `migrate` command, read from the control plane's store.
fn commands(sys: &System, out: &mut Rolled, order: &[String]) -> anyhow::Result<()> {
    let db = rusqlite::Connection::open_with_flags(
        &sys.control_db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .with_context(|| format!("open {} read-only", sys.control_db.display()))?;
    db.busy_timeout(Duration::from_secs(5))?;
    let mut stmt = db.prepare(
        "SELECT org, state, attempts, created_ms, updated_ms, result FROM commands
         WHERE operation = ?1 AND kind = 'migrate'",
    )?;
    let rows = stmt.query_map([&out.id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let position: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, o)| (o.as_str(), i))
        .collect();
    // Per wave: its first send and its last answer.
    let mut spans: HashMap<usize, (i64, i64)> = HashMap::new();
    let mut states: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let (org, state, attempts, created, updated, result) = row?;
        *states.entry(state.clone()).or_default() += 1;
        out.resends += (attempts - 1).max(0) as u64;
        if state == "done" {
            out.command.push(ms(updated - created));
            if let Some(micros) = result
                .as_deref()
                .and_then(|r| serde_json::from_str::<Value>(r).ok())
                .and_then(|v| v["micros"].as_u64())
            {
                out.tx.push(Duration::from_micros(micros));
            }
        }
        if let Some(&p) = position.get(org.as_str()) {
            let wave = out.bounds.iter().position(|&b| p < b).unwrap_or(0);
            let s = spans.entry(wave).or_insert((created, updated));
            s.0 = s.0.min(created);
            s.1 = s.1.max(updated);
        }
    }
    for w in &mut out.waves {
        w.commands = spans.get(&w.index).map(|(a, b)| ms(b - a));
    }
    let mut states: Vec<(String, usize)> = states.into_iter().collect();
    states.sort();
    out.states = states;
    Ok(())
}

/// The fleet after the rollout: `migrate status` (what the nodes reported), and every tenant's
/// file read through its node (its version, and the migration's own check).
pub fn check(
    sys: &System,
    fleet: &[Tenant],
    target: u32,
    check_sql: &str,
) -> anyhow::Result<Checked> {
    let status: Value = sys.get("/migrations/status")?;
    let mut out = Checked {
        versions: status["versions"]
            .as_array()
            .map(|v| {
                v.iter()
                    .map(|c| {
                        (
                            c["version"].as_u64().unwrap_or(0) as u32,
                            c["tenants"].as_u64().unwrap_or(0) as usize,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        behind: status["behind"]["count"].as_u64().unwrap_or(0),
        unreported: status["unreported"]["count"].as_u64().unwrap_or(0),
        ..Checked::default()
    };
    for t in fleet {
        let node = sys.node(t.region);
        let read = node.tenants.read(&t.org, |c| {
            let version: u32 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let ok: i64 = c.query_row(check_sql, [], |r| r.get(0))?;
            Ok((version, ok))
        });
        out.files_checked += 1;
        match read {
            Ok((v, ok)) if v == target && ok != 0 => out.files_at_target += 1,
            Ok((v, ok)) => {
                if out.files_bad.len() < 5 {
                    out.files_bad
                        .push(format!("{}: version {v}, check answered {ok}", t.org));
                }
            }
            Err(e) => {
                if out.files_bad.len() < 5 {
                    out.files_bad.push(format!("{}: {e}", t.org));
                }
            }
        }
    }
    Ok(out)
}
