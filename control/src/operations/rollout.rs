//! A fleet-wide schema migration in canary waves. The whole rollout is in this file.
//!
//! ```text
//! waving ──► baking ──► waving (the next wave) ... ──► finishing ──► done
//!   │  ▲        │                                         │
//!   ▼  │        ▼                                         ▼
//!  halted ◄── (a tenant failed; errors rose while baking)  aborted  (abort, from any phase)
//!  paused ──► (resume) back where it was
//! ```
//!
//! - **start**: the target version (default: the newest file held), the order of the orgs
//!   (the canary first, chosen round-robin across regions unless named; then the rest, also
//!   interleaved by region) and the waves (how far into that order each one reaches) are fixed
//!   and persisted, so a restarted control plane goes on with the same tenants.
//! - **waving**: each tenant of the wave not yet at the target is migrated by its own node in
//!   one transaction (`Migrate`, at most `concurrency` at once), which reports its restore point
//!   (its backup position just before). A pinned org is held back; an org another operation
//!   owns (a move) or whose node is down is deferred, and migrated later (at the latest while
//!   finishing). The first failure **halts** the rollout: the tenant's transaction rolled back,
//!   and the operator sees the tenant, file, statement and error.
//! - **baking**: for `bake_ms` the tenants migrated so far are watched on their nodes (requests,
//!   5xx, SQLite errors from the heartbeats); errors above the threshold halt the rollout.
//! - **finishing**: new orgs start at the target from here on (while the rollout runs they
//!   already do); the deferred tenants are migrated as their nodes and moves allow.
//!
//! Keeps true: one fleet operation at a time; a tenant is migrated only by a command of this
//! rollout (`{rollout}.{org}.{generation}`: a move gives it a new one, to its new node); the
//! org's held version changes only when its node reports the migration done; a dry run changes
//! no tenant and no version; pause, resume and abort are recorded phases, audited.

use std::collections::{BTreeMap, HashMap, HashSet};

use hemvist_proto::{ErrorKind, HemvistError, OrgId};
use serde::{Deserialize, Serialize};

use super::{Operation, OperationKind, Phase, Step};
use crate::clock::now_ms;
use crate::health::HealthTotals;
use crate::link::NodeCommand;
use crate::nodes::Migrated;
use crate::plane::{Plane, RolloutPass};
use crate::store::{CommandKind, CommandRecord, CommandState, OperationRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutPhase {
    Waving,
    Baking,
    Finishing,
    Paused,
    Halted,
    Done,
    Aborted,
}

impl Phase for RolloutPhase {
    const KIND: OperationKind = OperationKind::Rollout;
    const FLEET: bool = true;
    const ALL: &'static [Self] = &[
        RolloutPhase::Waving,
        RolloutPhase::Baking,
        RolloutPhase::Finishing,
        RolloutPhase::Paused,
        RolloutPhase::Halted,
        RolloutPhase::Done,
        RolloutPhase::Aborted,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Waving => "waving",
            RolloutPhase::Baking => "baking",
            RolloutPhase::Finishing => "finishing",
            RolloutPhase::Paused => "paused",
            RolloutPhase::Halted => "halted",
            RolloutPhase::Done => "done",
            RolloutPhase::Aborted => "aborted",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, RolloutPhase::Done | RolloutPhase::Aborted)
    }
}

/// Why a rollout halted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Halt {
    pub org: OrgId,
    pub node: String,
    /// `migration` (the tenant's transaction failed) or `errors` (errors rose while baking).
    pub cause: String,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub statement: Option<String>,
    pub error: String,
}

/// What a rollout records beyond its phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutDetail {
    pub target: u32,
    /// The version new orgs started at before.
    pub from_current: u32,
    pub dry_run: bool,
    /// The orgs in the order they are migrated: the canary first.
    pub order: Vec<OrgId>,
    /// Where each wave ends in `order` (the canary is wave 0; the last ends at its end).
    pub waves: Vec<usize>,
    pub wave: usize,
    pub bake_ms: u64,
    pub concurrency: usize,
    /// Baking halts when the migrated tenants had more server or SQLite errors than this many
    /// per thousand requests (and at least `min_errors`).
    pub errors_per_mille: u64,
    pub min_errors: u64,
    #[serde(default)]
    pub baking_since_ms: Option<i64>,
    /// The migrated tenants' health counters when baking began.
    #[serde(default)]
    pub health_at_bake: Option<HealthTotals>,
    /// Where a paused or halted rollout goes on from.
    #[serde(default)]
    pub resume_to: Option<String>,
    #[serde(default)]
    pub halted: Option<Halt>,
    #[serde(default)]
    pub progress: Progress,
}

/// Counts over the order, as of the last step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub migrated: usize,
    pub failed: usize,
    pub in_flight: usize,
    /// Waiting for room under the concurrency limit.
    pub queued: usize,
    pub held_back: usize,
    pub deferred: usize,
    /// Orgs at the target already (created at it, or migrated before).
    pub at_target: usize,
}

/// An operator's request (`POST /migrations/rollouts`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The version to reach; the newest file held if absent.
    #[serde(default)]
    pub to: Option<u32>,
    /// The canary: org ids, or a count (`"3"`), or a share (`"2%"`). Default: the first wave.
    #[serde(default)]
    pub canary: Option<String>,
    /// The waves after the canary, as counts or shares (`["1", "5%", "25%", "100%"]`).
    #[serde(default)]
    pub waves: Option<Vec<String>>,
    #[serde(default)]
    pub bake_ms: Option<u64>,
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub errors_per_mille: Option<u64>,
    #[serde(default)]
    pub min_errors: Option<u64>,
}

const DEFAULT_WAVES: [&str; 4] = ["1", "5%", "25%", "100%"];
const DEFAULT_BAKE_MS: u64 = 30_000;
const DEFAULT_CONCURRENCY: usize = 16;
const MAX_CONCURRENCY: usize = 256;

type Rollout = Operation<RolloutPhase>;

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("rollout: {e}"))
}

fn detail_json(d: &RolloutDetail) -> Result<serde_json::Value, HemvistError> {
    serde_json::to_value(d).map_err(internal)
}

fn detail_of(op: &Rollout) -> Result<RolloutDetail, HemvistError> {
    serde_json::from_value(op.record.detail.clone()).map_err(internal)
}

/// A count (`"3"`) or a share (`"5%"`) of `total`, at least 1 of a non-empty fleet.
fn amount(spec: &str, total: usize) -> Result<usize, HemvistError> {
    let bad = || {
        let shown: String = spec
            .chars()
            .take(20)
            .flat_map(char::escape_default)
            .collect();
        HemvistError::invalid(format!(
            "\"{shown}\" is not a wave size: a count like 3 or a share like 5%"
        ))
    };
    let n = match spec.trim().strip_suffix('%') {
        Some(p) => {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            ((total as f64) * p / 100.0).ceil() as usize
        }
        None => spec.trim().parse::<usize>().map_err(|_| bad())?,
    };
    if n == 0 {
        return Err(bad());
    }
    Ok(n.min(total))
}

/// The orgs interleaved by region (each region's orgs in id order), so every prefix of the
/// order spans as many regions as it can.
fn interleaved(by_region: BTreeMap<String, Vec<OrgId>>) -> Vec<OrgId> {
    let mut lanes: Vec<std::vec::IntoIter<OrgId>> =
        by_region.into_values().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let mut any = false;
        for lane in &mut lanes {
            if let Some(o) = lane.next() {
                out.push(o);
                any = true;
            }
        }
        if !any {
            return out;
        }
    }
}

impl Plane {
    /// Starts a rollout to `req.to` (default: the newest version held): refused if the version
    /// is not held, if it is not above the current one, or if another fleet operation runs.
    pub fn request_rollout(
        &self,
        req: RolloutRequest,
        actor: &str,
    ) -> Result<OperationRecord, HemvistError> {
        let files = self.schema_files();
        let current = self.current_schema()?;
        let target = req.to.unwrap_or(files.len() as u32);
        if target as usize > files.len() || target == 0 {
            return Err(HemvistError::invalid(format!(
                "there is no schema version {target} here: the control plane holds files up to \
                 {} (`hemvist migrate push --dir DIR` sends new ones)",
                files.len()
            )));
        }
        if target <= current && !req.dry_run {
            return Err(HemvistError::conflict(format!(
                "new orgs already start at version {current}; a rollout goes forward only (to \
                 go back, `hemvist migrate rollback ORG` restores an org to before its migration)"
            )));
        }
        let concurrency = req.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 || concurrency > MAX_CONCURRENCY {
            return Err(HemvistError::invalid(format!(
                "concurrency must be 1 to {MAX_CONCURRENCY}"
            )));
        }
        let orgs = self.store.orgs()?;
        let total = orgs.len();
        let mut by_region: BTreeMap<String, Vec<OrgId>> = BTreeMap::new();
        for o in &orgs {
            by_region
                .entry(o.home_region.to_string())
                .or_default()
                .push(o.id.clone());
        }
        let wave_specs: Vec<String> = req
            .waves
            .clone()
            .unwrap_or_else(|| DEFAULT_WAVES.iter().map(|s| s.to_string()).collect());
        let (canary, rest_specs): (Vec<OrgId>, Vec<String>) = match &req.canary {
            Some(c) if c.chars().any(|ch| ch.is_ascii_alphabetic()) => {
                let mut named = Vec::new();
                for id in c.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let id = OrgId::parse(id)?;
                    if !orgs.iter().any(|o| o.id == id) {
                        return Err(HemvistError::not_found(format!(
                            "no org {id} to be a canary"
                        )));
                    }
                    if !named.contains(&id) {
                        named.push(id);
                    }
                }
                (named, wave_specs)
            }
            Some(c) => {
                let n = if total == 0 { 0 } else { amount(c, total)? };
                (
                    interleaved(by_region.clone()).into_iter().take(n).collect(),
                    wave_specs,
                )
            }
            None => {
                let first = wave_specs.first().cloned().unwrap_or_else(|| "1".into());
                let n = if total == 0 {
                    0
                } else {
                    amount(&first, total)?
                };
                (
                    interleaved(by_region.clone()).into_iter().take(n).collect(),
                    wave_specs.into_iter().skip(1).collect(),
                )
            }
        };
        let chosen: HashSet<&OrgId> = canary.iter().collect();
        for list in by_region.values_mut() {
            list.retain(|o| !chosen.contains(o));
        }
        let mut order = canary.clone();
        order.extend(interleaved(by_region));
        let mut waves = vec![canary.len()];
        for spec in &rest_specs {
            let n = if total == 0 { 0 } else { amount(spec, total)? };
            if n > *waves.last().unwrap_or(&0) {
                waves.push(n);
            }
        }
        if *waves.last().unwrap_or(&0) < order.len() {
            waves.push(order.len());
        }
        let detail = RolloutDetail {
            target,
            from_current: current,
            dry_run: req.dry_run,
            order,
            waves,
            wave: 0,
            bake_ms: req.bake_ms.unwrap_or(DEFAULT_BAKE_MS),
            concurrency,
            errors_per_mille: req.errors_per_mille.unwrap_or(10),
            min_errors: req.min_errors.unwrap_or(3),
            baking_since_ms: None,
            health_at_bake: None,
            resume_to: None,
            halted: None,
            progress: Progress::default(),
        };
        let op = self.begin_fleet(RolloutPhase::Waving, actor, detail_json(&detail)?)?;
        tracing::info!(operation = %op.record.id, target, orgs = total, canary = ?canary,
            dry_run = req.dry_run, "rollout started");
        self.wake_operations.notify_one();
        Ok(op.record)
    }

    /// The version a running (not dry-run, not halted) rollout is taking the fleet to.
    pub fn rollout_target(&self) -> Result<Option<u32>, HemvistError> {
        let Some(open) = self.store.open_operation_of(None)? else {
            return Ok(None);
        };
        if open.kind != OperationKind::Rollout.as_str() {
            return Ok(None);
        }
        let op: Rollout = open.try_into()?;
        let d = detail_of(&op)?;
        // A halted rollout's version is in doubt: new orgs start at the one before meanwhile.
        let running = !matches!(op.phase, RolloutPhase::Aborted | RolloutPhase::Halted);
        Ok((!d.dry_run && running).then_some(d.target))
    }

    /// The running rollout's tenants not yet migrated, at the target or held back.
    pub fn rollout_pending(&self) -> Result<u64, HemvistError> {
        let Some(open) = self.store.open_operation_of(None)? else {
            return Ok(0);
        };
        if open.kind != OperationKind::Rollout.as_str() {
            return Ok(0);
        }
        let op: Rollout = open.try_into()?;
        let d = detail_of(&op)?;
        let p = &d.progress;
        Ok(d.order
            .len()
            .saturating_sub(p.migrated + p.at_target + p.held_back) as u64)
    }

    /// Pauses a rollout: nothing new is sent (what is under way finishes).
    pub fn pause_rollout(&self, id: &str, actor: &str) -> Result<OperationRecord, HemvistError> {
        self.rollout_control(id, actor, |op, d| match op.phase {
            RolloutPhase::Waving | RolloutPhase::Baking | RolloutPhase::Finishing => {
                d.resume_to = Some(op.phase.as_str().to_string());
                Ok(RolloutPhase::Paused)
            }
            p => Err(HemvistError::conflict(format!(
                "rollout {id} is {}: only a running rollout pauses",
                p.as_str()
            ))),
        })
    }

    /// Resumes a paused or halted rollout (a halted one tries its failed tenants again), to
    /// `to` if given: a newer version, whose files may fix what halted it (a check of an
    /// earlier file holds if it does once every file of the tenant's migration has run).
    pub fn resume_rollout(
        &self,
        id: &str,
        to: Option<u32>,
        actor: &str,
    ) -> Result<OperationRecord, HemvistError> {
        let newest = self.schema_files().len() as u32;
        let record = self.rollout_control(id, actor, |op, d| match op.phase {
            RolloutPhase::Paused | RolloutPhase::Halted => {
                if let Some(to) = to {
                    if to < d.target || to > newest {
                        return Err(HemvistError::invalid(format!(
                            "rollout {id} goes to version {}; it can resume to a version from \
                             there up to {newest}, the newest held, not {to}",
                            d.target
                        )));
                    }
                    d.target = to;
                }
                let to = d
                    .resume_to
                    .take()
                    .and_then(|p| RolloutPhase::parse(&p))
                    .unwrap_or(RolloutPhase::Waving);
                d.halted = None;
                // Baking again from the start: the wave's watch begins anew.
                d.baking_since_ms = None;
                d.health_at_bake = None;
                Ok(to)
            }
            p => Err(HemvistError::conflict(format!(
                "rollout {id} is {}: only a paused or halted rollout resumes",
                p.as_str()
            ))),
        })?;
        // Its failed tenants are tried again.
        for cmd in self.store.commands_of_operation(id)? {
            if cmd.state == CommandState::Failed {
                self.store
                    .ack_command(&cmd.node_id, &cmd.id, CommandState::Retry, None, None)?;
            }
        }
        Ok(record)
    }

    /// Aborts a rollout: no tenant is migrated after it (the migrated ones stay migrated; `migrate
    /// rollback ORG` restores one to before), and new orgs start at the version they did before.
    pub fn abort_rollout(&self, id: &str, actor: &str) -> Result<OperationRecord, HemvistError> {
        self.rollout_control(id, actor, |op, _| {
            if op.phase.is_final() {
                return Err(HemvistError::conflict(format!(
                    "rollout {id} has already ended ({})",
                    op.phase.as_str()
                )));
            }
            Ok(RolloutPhase::Aborted)
        })
    }

    fn rollout_control(
        &self,
        id: &str,
        actor: &str,
        decide: impl Fn(&Rollout, &mut RolloutDetail) -> Result<RolloutPhase, HemvistError>,
    ) -> Result<OperationRecord, HemvistError> {
        for _ in 0..5 {
            let record = self.operation(id)?;
            if record.kind != OperationKind::Rollout.as_str() {
                return Err(HemvistError::conflict(format!(
                    "operation {id} is a {}, not a rollout",
                    record.kind
                )));
            }
            let op: Rollout = record.try_into()?;
            let mut d = detail_of(&op)?;
            let to = decide(&op, &mut d)?;
            let moved = if to == RolloutPhase::Aborted {
                let why = HemvistError::new(ErrorKind::Cancelled, format!("aborted by {actor}"));
                self.fail_with(&op, to, &why, detail_json(&d)?)?
            } else {
                self.advance(&op, to, Some(detail_json(&d)?))?
            };
            if let Some(moved) = moved {
                tracing::info!(operation = %id, phase = to.as_str(), %actor, "rollout changed by an operator");
                if to.is_final() {
                    self.forget_operation(id);
                }
                self.wake_operations.notify_one();
                return Ok(moved.record);
            }
        }
        Err(HemvistError::conflict(format!(
            "rollout {id} kept changing; try again"
        )))
    }
}

/// Does what the rollout's phase needs next.
pub fn step(plane: &Plane, record: OperationRecord) -> Result<(), HemvistError> {
    let op: Rollout = record.try_into()?;
    let d = detail_of(&op)?;
    match op.phase {
        RolloutPhase::Waving => waving(plane, &op, d),
        RolloutPhase::Baking => baking(plane, &op, d),
        RolloutPhase::Finishing => finishing(plane, &op, d),
        RolloutPhase::Paused
        | RolloutPhase::Halted
        | RolloutPhase::Done
        | RolloutPhase::Aborted => Ok(()),
    }
}

/// Where one org of the order stands.
enum Standing {
    AtTarget,
    Migrated,
    InFlight,
    Failed(Box<Halt>),
    HeldBack,
    Deferred,
    /// Ready to be sent.
    Due,
}

/// What a pass made of one org.
enum Outcome {
    /// Migrated (`true`) or at the target: it stays so.
    Settled(bool),
    /// Waiting for room under the concurrency limit.
    Queued,
    /// Sent, held back, deferred or failed: looked at again next pass.
    Open,
}

/// Drives the first `upto` orgs of the order (and, `late`, the orgs created since the rollout
/// began at the version before, while it was halted, say), sending at most `concurrency` at
/// once, and counts where they stand; the first failure found, if any.
///
/// A pass looks only at the orgs still open and at the next ones there is room for, so its cost
/// follows the concurrency, not the fleet ([`RolloutPass`]); the first pass of this process
/// (or after a change of target or of a pin) looks at all of them.
fn drive(
    plane: &Plane,
    op: &Rollout,
    d: &RolloutDetail,
    upto: usize,
    late: bool,
) -> Result<(Progress, Option<Halt>), HemvistError> {
    let upto = upto.min(d.order.len());
    let kept = plane
        .ops
        .rollouts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&op.record.id)
        .filter(|p| p.target == d.target && p.settled.len() == d.order.len());
    let fresh = kept.is_none();
    let mut pass = kept.unwrap_or_else(|| RolloutPass {
        target: d.target,
        settled: vec![None; d.order.len()],
        ..Default::default()
    });
    let mut driver = Driver {
        plane,
        op,
        d,
        owned: plane.owned_orgs()?,
        pinned: plane.store.pins()?.into_iter().map(|p| p.org).collect(),
        schema: plane.schema_target(d.target)?,
        progress: Progress::default(),
        halt: None,
        in_flight: 0,
    };
    let open: Vec<usize> = pass.open.iter().copied().filter(|&i| i < upto).collect();
    driver.batch(&mut pass, &open)?;
    while pass.cursor < upto {
        let room = d.concurrency.saturating_sub(driver.in_flight);
        if !fresh && room == 0 {
            break;
        }
        // Some of the next ones are at the target, held back or deferred: a few more than
        // there is room for.
        let want = if fresh { usize::MAX } else { room + 8 };
        let chunk: Vec<usize> = (pass.cursor..upto)
            .filter(|i| pass.settled[*i].is_none() && !pass.open.contains(i))
            .take(want)
            .collect();
        let Some(&last) = chunk.last() else {
            pass.cursor = upto;
            break;
        };
        if let Some(queued) = driver.batch(&mut pass, &chunk)? {
            pass.cursor = queued;
            break;
        }
        pass.cursor = last + 1;
    }
    let mut progress = driver.progress.clone();
    progress.migrated += pass.migrated;
    progress.at_target += pass.at_target;
    progress.queued += (pass.cursor..upto)
        .filter(|i| pass.settled[*i].is_none() && !pass.open.contains(i))
        .count();
    if late {
        let ordered: HashSet<&OrgId> = d.order.iter().collect();
        let late: Vec<crate::store::OrgRecord> = plane
            .store
            .orgs_below_schema(d.target)?
            .into_iter()
            .filter(|o| !ordered.contains(&o.id))
            .collect();
        if !late.is_empty() {
            let ids: Vec<String> = late.iter().map(|o| driver.command_id(o)).collect();
            let commands = commands_by_id(plane.store.commands_by_ids(&ids)?);
            driver.progress = Progress::default();
            driver.count_in_flight(late.iter().zip(&ids), &commands);
            for (org, cmd_id) in late.iter().zip(&ids) {
                match driver.one(&org.id, Some(org), commands.get(cmd_id))? {
                    Outcome::Settled(true) => progress.migrated += 1,
                    Outcome::Settled(false) => progress.at_target += 1,
                    Outcome::Queued => progress.queued += 1,
                    Outcome::Open => {}
                }
            }
            let p = &driver.progress;
            progress.failed += p.failed;
            progress.in_flight += p.in_flight;
            progress.held_back += p.held_back;
            progress.deferred += p.deferred;
        }
    }
    let halt = driver.halt.take();
    plane
        .ops
        .rollouts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(op.record.id.clone(), pass);
    Ok((progress, halt))
}

fn commands_by_id(commands: Vec<CommandRecord>) -> HashMap<String, CommandRecord> {
    commands.into_iter().map(|c| (c.id.clone(), c)).collect()
}

/// One pass of [`drive`]: what it needs to hand, and what it counted.
struct Driver<'a> {
    plane: &'a Plane,
    op: &'a Rollout,
    d: &'a RolloutDetail,
    owned: HashSet<OrgId>,
    pinned: HashSet<OrgId>,
    schema: crate::link::SchemaTarget,
    progress: Progress,
    halt: Option<Halt>,
    /// Sent and unanswered.
    in_flight: usize,
}

impl Driver<'_> {
    /// Per generation (a moved org gets a command to its new node) and per target (a resumed
    /// rollout with a fixing file migrates its canaries again, to the new version).
    fn command_name(&self, org: &crate::store::OrgRecord) -> String {
        format!("{}.{}.v{}", org.id, org.generation, self.d.target)
    }

    fn command_id(&self, org: &crate::store::OrgRecord) -> String {
        format!("{}.{}", self.op.record.id, self.command_name(org))
    }

    /// Counts the commands sent and unanswered among the orgs' current ones (a moved org's old
    /// one is not).
    fn count_in_flight<'o>(
        &mut self,
        orgs: impl Iterator<Item = (&'o crate::store::OrgRecord, &'o String)>,
        commands: &HashMap<String, CommandRecord>,
    ) {
        self.in_flight += orgs
            .filter(|(_, id)| {
                commands
                    .get(*id)
                    .is_some_and(|c| matches!(c.state, CommandState::Sent | CommandState::Retry))
            })
            .count();
    }

    /// Drives the orgs at these positions of the order (read in two queries) and records what
    /// became of each in `pass`; the first position that had to wait for room at or after the
    /// pass's cursor, if any.
    fn batch(
        &mut self,
        pass: &mut RolloutPass,
        positions: &[usize],
    ) -> Result<Option<usize>, HemvistError> {
        if positions.is_empty() {
            return Ok(None);
        }
        let ids: Vec<&OrgId> = positions.iter().map(|&i| &self.d.order[i]).collect();
        let orgs: HashMap<OrgId, crate::store::OrgRecord> = self
            .plane
            .store
            .orgs_by_ids(&ids)?
            .into_iter()
            .map(|o| (o.id.clone(), o))
            .collect();
        let present: Vec<(&crate::store::OrgRecord, String)> = ids
            .iter()
            .filter_map(|id| orgs.get(*id))
            .map(|o| (o, self.command_id(o)))
            .collect();
        let cmd_ids: Vec<String> = present.iter().map(|(_, c)| c.clone()).collect();
        let commands = commands_by_id(self.plane.store.commands_by_ids(&cmd_ids)?);
        self.count_in_flight(present.iter().map(|(o, c)| (*o, c)), &commands);
        let mut first_queued = None;
        for &i in positions {
            let org_id = &self.d.order[i];
            let org = orgs.get(org_id);
            let cmd = org.and_then(|o| commands.get(&self.command_id(o)));
            match self.one(org_id, org, cmd)? {
                Outcome::Settled(migrated) => {
                    if pass.settled[i].is_none() {
                        pass.settled[i] = Some(migrated);
                        if migrated {
                            pass.migrated += 1;
                        } else {
                            pass.at_target += 1;
                        }
                    }
                    pass.open.remove(&i);
                }
                Outcome::Open => {
                    pass.open.insert(i);
                }
                // Before the cursor it stays open; after it, it is counted with the rest.
                Outcome::Queued if i < pass.cursor => {
                    self.progress.queued += 1;
                }
                Outcome::Queued => {
                    first_queued.get_or_insert(i);
                }
            }
        }
        Ok(first_queued)
    }

    /// Looks at one org (`None`: deleted since the rollout began) and its current command,
    /// sends the command when it is due and there is room, and counts it.
    fn one(
        &mut self,
        org_id: &OrgId,
        org: Option<&crate::store::OrgRecord>,
        cmd: Option<&CommandRecord>,
    ) -> Result<Outcome, HemvistError> {
        let d = self.d;
        let Some(org) = org else {
            // Nothing to migrate.
            return Ok(Outcome::Settled(false));
        };
        let standing = match cmd {
            _ if !d.dry_run && org.schema_version.is_some_and(|v| v >= d.target) => {
                if cmd.is_some_and(|c| c.state == CommandState::Done) {
                    Standing::Migrated
                } else {
                    Standing::AtTarget
                }
            }
            Some(c) if c.state == CommandState::Done => Standing::Migrated,
            Some(c) if c.state == CommandState::Failed => {
                Standing::Failed(Box::new(halt_of(org_id, c)))
            }
            _ if self.pinned.contains(org_id) => Standing::HeldBack,
            _ if self.owned.contains(org_id) || !self.plane.nodes.healthy(&org.node_id) => {
                Standing::Deferred
            }
            Some(c) if c.state == CommandState::Sent => Standing::InFlight,
            _ => Standing::Due,
        };
        let outcome = match standing {
            Standing::AtTarget => Outcome::Settled(false),
            Standing::Migrated => Outcome::Settled(true),
            Standing::Failed(h) => {
                self.progress.failed += 1;
                self.halt.get_or_insert(*h);
                Outcome::Open
            }
            Standing::HeldBack => {
                self.progress.held_back += 1;
                Outcome::Open
            }
            Standing::Deferred => {
                self.progress.deferred += 1;
                Outcome::Open
            }
            Standing::InFlight | Standing::Due => {
                let resend = cmd.is_some_and(|c| c.state != CommandState::Pending);
                if !resend && self.in_flight >= d.concurrency {
                    return Ok(Outcome::Queued);
                }
                let name = self.command_name(org);
                let sent = self.plane.drive_step(
                    &Step {
                        operation: &self.op.record.id,
                        name: &name,
                        node: &org.node_id,
                        org: &org.id,
                        kind: CommandKind::Migrate,
                        generation: org.generation,
                        again_on_new_session: false,
                    },
                    false,
                    || NodeCommand::Migrate {
                        org: org.id.clone(),
                        generation: org.generation,
                        schema: self.schema.clone(),
                        dry_run: d.dry_run,
                    },
                )?;
                match sent.state {
                    CommandState::Done => Outcome::Settled(true),
                    CommandState::Failed => {
                        self.progress.failed += 1;
                        self.halt.get_or_insert(halt_of(org_id, &sent));
                        Outcome::Open
                    }
                    _ => {
                        if !resend {
                            self.in_flight += 1;
                        }
                        self.progress.in_flight += 1;
                        Outcome::Open
                    }
                }
            }
        };
        Ok(outcome)
    }
}

fn halt_of(org: &OrgId, cmd: &CommandRecord) -> Halt {
    let report: Option<Migrated> = cmd
        .result
        .clone()
        .and_then(|r| serde_json::from_value(r).ok());
    let failed = report.and_then(|m| m.failed);
    Halt {
        org: org.clone(),
        node: cmd.node_id.to_string(),
        cause: "migration".into(),
        file: failed.as_ref().map(|f| f.file.clone()),
        statement: failed.as_ref().map(|f| f.statement.clone()),
        error: failed
            .map(|f| f.error)
            .or_else(|| cmd.error.clone())
            .unwrap_or_else(|| "refused".into()),
    }
}

/// Halts the rollout on `halt` (the operator resumes or aborts it).
fn halt(plane: &Plane, op: &Rollout, mut d: RolloutDetail, halt: Halt) -> Result<(), HemvistError> {
    tracing::error!(operation = %op.record.id, org = %halt.org, file = ?halt.file,
        statement = ?halt.statement, error = %halt.error, "rollout halted");
    d.resume_to = Some(op.phase.as_str().to_string());
    let why = HemvistError::new(
        ErrorKind::InvalidArgument,
        format!(
            "{} on {}{}{}: {}",
            halt.org,
            halt.node,
            halt.file
                .as_deref()
                .map(|f| format!(", {f}"))
                .unwrap_or_default(),
            halt.statement
                .as_deref()
                .map(|s| format!(", at `{s}`"))
                .unwrap_or_default(),
            halt.error
        ),
    );
    d.halted = Some(halt);
    plane.fail_with(op, RolloutPhase::Halted, &why, detail_json(&d)?)?;
    Ok(())
}

fn record_progress(
    plane: &Plane,
    op: &Rollout,
    d: &mut RolloutDetail,
    progress: Progress,
) -> Result<(), HemvistError> {
    // At most once a second: the counts are for people (and are counted again after a
    // restart); the phases are what is kept exactly.
    if d.progress != progress {
        d.progress = progress;
        let now = now_ms();
        let mut written = plane
            .ops
            .progress_written
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let last = written.get(&op.record.id).copied().unwrap_or(0);
        if now - last >= 1_000 {
            written.insert(op.record.id.clone(), now);
            drop(written);
            plane
                .store
                .set_operation_detail(&op.record.id, &detail_json(d)?)?;
        }
    }
    Ok(())
}

fn waving(plane: &Plane, op: &Rollout, mut d: RolloutDetail) -> Result<(), HemvistError> {
    let upto = d.waves.get(d.wave).copied().unwrap_or(d.order.len());
    let (progress, failure) = drive(plane, op, &d, upto, false)?;
    if let Some(h) = failure {
        d.progress = progress;
        return halt(plane, op, d, h);
    }
    let settled = progress.in_flight == 0 && progress.queued == 0;
    record_progress(plane, op, &mut d, progress)?;
    if !settled {
        return Ok(());
    }
    let last = d.wave + 1 >= d.waves.len();
    let next = if last {
        RolloutPhase::Finishing
    } else {
        d.baking_since_ms = Some(now_ms());
        d.health_at_bake = Some(plane.health_of(&d.order[..upto]));
        RolloutPhase::Baking
    };
    tracing::info!(operation = %op.record.id, wave = d.wave, upto, "rollout wave done");
    if plane.advance(op, next, Some(detail_json(&d)?))?.is_some() {
        plane.wake_operations.notify_one();
    }
    Ok(())
}

fn baking(plane: &Plane, op: &Rollout, mut d: RolloutDetail) -> Result<(), HemvistError> {
    let upto = d.waves.get(d.wave).copied().unwrap_or(d.order.len());
    let since = d.baking_since_ms.unwrap_or(op.record.updated_ms);
    let before = d.health_at_bake.unwrap_or_default();
    let now = plane.health_of(&d.order[..upto]);
    let requests = now.requests.saturating_sub(before.requests);
    let errors = now.errors.saturating_sub(before.errors);
    if errors >= d.min_errors && errors * 1000 > requests * d.errors_per_mille {
        let worst = plane.worst_of(&d.order[..upto]);
        let org = worst
            .as_ref()
            .map(|w| w.0.clone())
            .or_else(|| d.order.first().cloned());
        let Some(org) = org else {
            return Ok(());
        };
        let h = Halt {
            org,
            node: String::new(),
            cause: "errors".into(),
            file: None,
            statement: None,
            error: format!(
                "while baking wave {}, its tenants had {errors} server or SQLite errors in \
                 {requests} requests (the limit is {} per thousand, at least {})",
                d.wave, d.errors_per_mille, d.min_errors
            ),
        };
        return halt(plane, op, d, h);
    }
    if now_ms() - since < d.bake_ms as i64 {
        return Ok(());
    }
    d.wave += 1;
    d.baking_since_ms = None;
    d.health_at_bake = None;
    if plane
        .advance(op, RolloutPhase::Waving, Some(detail_json(&d)?))?
        .is_some()
    {
        plane.wake_operations.notify_one();
    }
    Ok(())
}

fn finishing(plane: &Plane, op: &Rollout, mut d: RolloutDetail) -> Result<(), HemvistError> {
    if !d.dry_run && plane.current_schema()? < d.target {
        plane.store.set_schema_current(d.target)?;
        tracing::info!(operation = %op.record.id, version = d.target, "new orgs start at the rollout's version");
    }
    let (progress, failure) = drive(plane, op, &d, d.order.len(), true)?;
    if let Some(h) = failure {
        d.progress = progress;
        return halt(plane, op, d, h);
    }
    let left = progress.in_flight + progress.queued + progress.deferred;
    record_progress(plane, op, &mut d, progress)?;
    if left > 0 {
        return Ok(());
    }
    if plane
        .advance(op, RolloutPhase::Done, Some(detail_json(&d)?))?
        .is_some()
    {
        plane.forget_operation(&op.record.id);
        tracing::info!(operation = %op.record.id, version = d.target, dry_run = d.dry_run, "rollout done");
    }
    Ok(())
}
