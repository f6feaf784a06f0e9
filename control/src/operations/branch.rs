//! Making a branch of an org: a new org `PARENT--NAME` with its own file, data key, backups,
//! generation and placement, made from the parent's backups at a point in time, masked, in a
//! region the parent's residency policy allows. The whole creation is in this file; its end
//! (by expiry or by hand) is in `branch_destroy.rs`.
//!
//! ```text
//! waiting ──► placing ──► restoring ──► backing_up ──► done
//!                             │
//!                             └──► discarding ──► failed
//! ```
//!
//! - **request**: the parent exists and is no branch; the name makes a valid id; the TTL is
//!   within the policy; the region is one the parent's policy allows (default: its home); the
//!   mask parses and names only tables and columns of the parent's schema. Anything else is
//!   refused (422, 400) before any work.
//! - **waiting**: for a branch of "now" (no point asked) on a node that is not the parent's,
//!   until the parent's node has shipped every write acknowledged before the request (its
//!   reported backup position says nothing older is unshipped). On the parent's own node (where
//!   a branch goes when it can) the node ships the parent's last writes itself before it reads
//!   them, so nothing is waited for; nor for a point in the past, which is, as for a restore,
//!   what the backups held at that time.
//! - **placing**: the branch's org and branch row, one transaction (its residency is the
//!   parent's: it can never be placed or moved where the parent may not be).
//! - **restoring**: its node restores the parent's backups to the point into a staging file,
//!   masks it, gives it its own identity and hosts it (`Host` with `branch_of`); every node
//!   learns its placement, and its node its label (the banner).
//! - **backing_up**: until its first backup, in its region's store under its own key, is
//!   reported: from then on its node rebuilds it from its own backups, never from the parent.
//!   A branch asked for in another region the parent's policy allows is made in the parent's
//!   region (whose store holds the parent's backups; no node reads another region's store)
//!   and then moved there by a move operation, started once this one is done (and by every
//!   pass of the driver while it is not there yet: see `branch_destroy::move_strays`).
//! - **discarding**: the node could not make it: whatever it made is destroyed, the branch
//!   forgotten, and the operation fails with the node's reason.
//!
//! Keeps true: the branch serves nothing and ships nothing before it is masked (the node does
//! both only after); the parent is never written to; the branch's expiry is set when it is
//! placed, so even a branch whose creation stalls is destroyed on time.

use hemvist_proto::mask::{ColumnShape, Mask};
use hemvist_proto::{ErrorKind, Generation, HemvistError, NodeId, OrgId, RegionId};
use serde::{Deserialize, Serialize};

use super::{Operation, OperationKind, Phase, Step};
use crate::clock::now_ms;
use crate::link::{BranchLabel, BranchLabels, BranchSource, NodeCommand};
use crate::plane::Plane;
use crate::residency::ResidencyPolicy;
use crate::store::{BranchRecord, CommandKind, CommandState, NewBranch, NewOrg, OperationRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchPhase {
    Waiting,
    Placing,
    Restoring,
    BackingUp,
    Done,
    Discarding,
    Failed,
}

impl Phase for BranchPhase {
    const KIND: OperationKind = OperationKind::Branch;
    const ALL: &'static [Self] = &[
        BranchPhase::Waiting,
        BranchPhase::Placing,
        BranchPhase::Restoring,
        BranchPhase::BackingUp,
        BranchPhase::Done,
        BranchPhase::Discarding,
        BranchPhase::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            BranchPhase::Waiting => "waiting",
            BranchPhase::Placing => "placing",
            BranchPhase::Restoring => "restoring",
            BranchPhase::BackingUp => "backing_up",
            BranchPhase::Done => "done",
            BranchPhase::Discarding => "discarding",
            BranchPhase::Failed => "failed",
        }
    }

    fn is_final(self) -> bool {
        matches!(self, BranchPhase::Done | BranchPhase::Failed)
    }
}

/// `POST /api/v1/orgs/{id}/branches`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    pub name: String,
    /// How long it lives unless kept alive; the policy's default if absent.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// The parent's point in time (ms since the epoch); now if absent.
    #[serde(default)]
    pub at_ms: Option<i64>,
    /// The mask file's text (TOML).
    #[serde(default)]
    pub mask: Option<String>,
    /// A region the parent's policy allows; the parent's home if absent.
    #[serde(default)]
    pub region: Option<String>,
    /// `copy` (default) or `none`.
    #[serde(default)]
    pub users: Option<String>,
    /// A signed-in user's use keeps it alive.
    #[serde(default)]
    pub keepalive_on_use: bool,
}

/// What the operation knows: what was asked, and once placed, where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BranchDetail {
    pub parent: OrgId,
    pub name: String,
    pub at_ms: i64,
    /// No point was asked for: the branch holds every write acknowledged before the request
    /// (its newest point once those are shipped), and `at_ms` is when it was asked.
    #[serde(default)]
    pub newest: bool,
    /// Where it is made: the parent's home region, whose store holds the parent's backups.
    pub region: RegionId,
    /// Where it is to live, when another region the parent's policy allows: once made, it moves
    /// there (the move operation), and `branches.region` says so until it has.
    #[serde(default)]
    pub move_to: Option<RegionId>,
    pub ttl_ms: i64,
    pub expires_ms: i64,
    pub users: String,
    pub keepalive_on_use: bool,
    /// The mask's text (it names columns and rules, nothing secret).
    pub mask: String,
    #[serde(default)]
    pub node: Option<NodeId>,
    #[serde(default)]
    pub generation: Option<Generation>,
}

type Branch = Operation<BranchPhase>;

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("branch: {e}"))
}

fn detail_json(d: &BranchDetail) -> Result<serde_json::Value, HemvistError> {
    serde_json::to_value(d).map_err(internal)
}

/// How long a branch may wait for its parent's backups, its node's restore, its first backup.
fn stall_ms(plane: &Plane) -> i64 {
    plane.config.move_stall_ms as i64
}

/// A branch as `branch list` and the API show it.
#[derive(Debug, Clone, Serialize)]
pub struct BranchView {
    #[serde(flatten)]
    pub branch: BranchRecord,
    /// `creating`, `moving` (made in its parent's region, on its way to its own), `live`,
    /// `expiring` (inside the warning window), `destroying`, `destroyed`.
    pub state: &'static str,
    pub node: Option<NodeId>,
    pub node_url: Option<String>,
    /// The operation making or destroying it, if one is unfinished.
    pub operation: Option<String>,
}

impl Plane {
    /// Checks a branch request and starts its operation (see the module doc).
    pub fn request_branch(
        &self,
        parent: &str,
        req: BranchRequest,
        actor: &str,
    ) -> Result<OperationRecord, HemvistError> {
        let parent = OrgId::parse(parent)?;
        let record = self
            .store
            .org(&parent)?
            .ok_or_else(|| HemvistError::not_found(format!("no org {parent}")))?;
        if parent.is_branch() {
            return Err(HemvistError::invalid(format!(
                "{parent} is a branch; branch its parent {} instead",
                parent.parent().map(|p| p.to_string()).unwrap_or_default()
            )));
        }
        if let Some(op) = self.store.open_operation_of(Some(&parent))? {
            if op.kind == OperationKind::Erase.as_str() {
                return Err(HemvistError::conflict(format!(
                    "org {parent} is being erased ({}): no branch of it is made",
                    op.id
                )));
            }
            if op.kind == OperationKind::SetResidency.as_str() {
                return Err(HemvistError::conflict(format!(
                    "org {parent} is changing its residency ({}): branch it once that is done",
                    op.id
                )));
            }
        }
        let id = OrgId::branch(&parent, req.name.trim())?;
        if let Some(live) = self.store.branch(&id)?.filter(|b| b.destroyed_ms.is_none()) {
            return Err(HemvistError::conflict(format!(
                "branch {id} exists (made {} ms ago by {}); destroy it first, or pick another name",
                now_ms() - live.created_ms,
                live.owner
            )));
        }
        let policy = &self.config.branches;
        let max_ms = policy.max_ttl_secs as i64 * 1000;
        let ttl_ms = req
            .ttl_ms
            .map(|t| t as i64)
            .unwrap_or(policy.default_ttl_secs as i64 * 1000);
        if ttl_ms <= 0 || ttl_ms > max_ms {
            return Err(HemvistError::invalid(format!(
                "a branch's TTL must be more than 0 and at most {} s (the policy's max_ttl_secs); \
                 {} ms was asked",
                policy.max_ttl_secs, ttl_ms
            )));
        }
        let now = now_ms();
        let at_ms = req.at_ms.unwrap_or(now);
        if at_ms > now + 1_000 {
            return Err(HemvistError::invalid(format!(
                "the point in time {at_ms} is in the future; a branch holds the past"
            )));
        }
        if at_ms < record.created_ms {
            return Err(HemvistError::invalid(format!(
                "org {parent} did not exist at {at_ms} (it was created at {})",
                record.created_ms
            )));
        }
        let region = match &req.region {
            Some(r) => RegionId::parse(r.trim())?,
            None => record.home_region.clone(),
        };
        let config = self
            .config
            .regions
            .iter()
            .find(|r| r.id == region)
            .ok_or_else(|| HemvistError::invalid(format!("region {region} is not configured")))?;
        let residency = ResidencyPolicy::from_stored(&record.residency);
        if !residency.allows(config) {
            return Err(HemvistError::new(
                ErrorKind::Residency,
                format!(
                    "a branch of {parent} may not live in {region}: its residency policy allows \
                     {}; nothing was done",
                    residency.describe()
                ),
            ));
        }
        let users = match req.users.as_deref().map(str::trim) {
            None | Some("") | Some("copy") => "copy",
            Some("none") => "none",
            Some(other) => {
                return Err(HemvistError::invalid(format!(
                    "users {:?}: use copy or none",
                    other.chars().take(40).collect::<String>()
                )))
            }
        };
        let mask = req.mask.unwrap_or_default();
        let parsed = Mask::parse(&mask)?;
        self.check_mask(&parsed, &record)?;
        let detail = BranchDetail {
            parent: parent.clone(),
            name: req.name.trim().to_string(),
            at_ms,
            newest: req.at_ms.is_none(),
            move_to: (region != record.home_region).then(|| region.clone()),
            region: record.home_region.clone(),
            ttl_ms,
            expires_ms: now + ttl_ms,
            users: users.to_string(),
            keepalive_on_use: req.keepalive_on_use,
            mask,
            node: None,
            generation: None,
        };
        let op = self.begin(&id, BranchPhase::Waiting, actor, detail_json(&detail)?)?;
        self.wake_operations.notify_one();
        Ok(op.record)
    }

    /// Refuses a mask that names a table or column the parent's schema does not have. The
    /// schema is built from the migration files the parent is held at, in memory.
    fn check_mask(
        &self,
        mask: &Mask,
        parent: &crate::store::OrgRecord,
    ) -> Result<(), HemvistError> {
        if mask.tables.is_empty() {
            return Ok(());
        }
        let schema = self.schema_of(parent)?;
        let conn = rusqlite::Connection::open_in_memory().map_err(internal)?;
        // The files call the node's word function in statements over rows; there are none
        // here, so one that answers "no words" gives the same tables and columns.
        conn.create_scalar_function(
            "hv_name_words",
            1,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8,
            |_| Ok("[]".to_string()),
        )
        .map_err(internal)?;
        for f in schema.files.iter() {
            conn.execute_batch(&f.sql).map_err(|e| {
                internal(format!(
                    "building the schema to check the mask, {}: {e}",
                    f.name
                ))
            })?;
        }
        mask.check(|table| {
            let mut stmt = conn
                .prepare("SELECT name, \"notnull\", pk FROM pragma_table_info(?1)")
                .ok()?;
            let cols: Vec<ColumnShape> = stmt
                .query_map([table], |r| {
                    Ok(ColumnShape {
                        name: r.get(0)?,
                        not_null: r.get::<_, i64>(1)? != 0,
                        primary_key: r.get::<_, i64>(2)? != 0,
                    })
                })
                .ok()?
                .filter_map(Result::ok)
                .collect();
            (!cols.is_empty()).then_some(cols)
        })
    }

    /// Every branch not destroyed (of `parent`, when given), as `branch list` shows them.
    pub fn list_branches(&self, parent: Option<&str>) -> Result<Vec<BranchView>, HemvistError> {
        let parent = parent.map(OrgId::parse).transpose()?;
        let open: std::collections::HashMap<OrgId, OperationRecord> = self
            .store
            .open_operations()?
            .into_iter()
            .filter_map(|o| o.org.clone().map(|org| (org, o)))
            .collect();
        let urls: std::collections::HashMap<NodeId, String> = self
            .store
            .nodes()?
            .into_iter()
            .map(|n| (n.id, n.public_url))
            .collect();
        let mut out = Vec::new();
        for b in self.store.live_branches(parent.as_ref())? {
            let org = self.store.org(&b.id)?;
            let op = open.get(&b.id);
            out.push(self.branch_view(b, org.as_ref(), op, &urls));
        }
        // Branches still being made have no row yet: their operations say what is coming.
        for (org, op) in &open {
            if op.kind != OperationKind::Branch.as_str() || out.iter().any(|v| v.branch.id == *org)
            {
                continue;
            }
            let Ok(d) = serde_json::from_value::<BranchDetail>(op.detail.clone()) else {
                continue;
            };
            if parent.as_ref().is_some_and(|p| *p != d.parent) {
                continue;
            }
            out.push(BranchView {
                branch: BranchRecord {
                    id: org.clone(),
                    parent: d.parent,
                    name: d.name,
                    at_ms: d.at_ms,
                    region: d.region,
                    owner: op.requested_by.clone(),
                    created_ms: op.started_ms,
                    ttl_ms: d.ttl_ms,
                    expires_ms: d.expires_ms,
                    keepalive_on_use: d.keepalive_on_use,
                    users: d.users,
                    masked: !d.mask.trim().is_empty(),
                    last_used_ms: None,
                    size_bytes: None,
                    destroyed_ms: None,
                    destroyed_why: None,
                },
                state: "creating",
                node: d.node,
                node_url: None,
                operation: Some(op.id.clone()),
            });
        }
        Ok(out)
    }

    pub fn show_branch(&self, id: &str) -> Result<BranchView, HemvistError> {
        let id = OrgId::parse(id)?;
        if let Some(v) = self
            .list_branches(id.parent().as_ref().map(|p| p.as_str()))?
            .into_iter()
            .find(|v| v.branch.id == id)
        {
            return Ok(v);
        }
        match self.store.branch(&id)? {
            Some(b) => Ok(BranchView {
                branch: b,
                state: "destroyed",
                node: None,
                node_url: None,
                operation: None,
            }),
            None => Err(HemvistError::not_found(format!("no branch {id}"))),
        }
    }

    fn branch_view(
        &self,
        b: BranchRecord,
        org: Option<&crate::store::OrgRecord>,
        op: Option<&OperationRecord>,
        urls: &std::collections::HashMap<NodeId, String>,
    ) -> BranchView {
        let warn_ms = self.config.branches.warn_before_secs as i64 * 1000;
        let state = match op.map(|o| o.kind.as_str()) {
            Some(k) if k == OperationKind::Branch.as_str() => "creating",
            Some(k) if k == OperationKind::BranchDestroy.as_str() => "destroying",
            Some(k) if k == OperationKind::Move.as_str() => "moving",
            _ if now_ms() >= b.expires_ms - warn_ms => "expiring",
            _ => "live",
        };
        let state = match (state, org) {
            ("live" | "expiring", Some(o)) if o.home_region != b.region => "moving",
            (s, _) => s,
        };
        BranchView {
            state,
            node: org.map(|o| o.node_id.clone()),
            node_url: org.and_then(|o| urls.get(&o.node_id).cloned()),
            operation: op.map(|o| o.id.clone()),
            branch: b,
        }
    }

    /// Pushes a branch's expiry out to `for_ms` from now (its TTL if not given; at most the
    /// policy's maximum), audited as asked by `actor`; its node's pages learn it at once.
    pub fn keep_branch_alive(
        &self,
        id: &str,
        for_ms: Option<u64>,
        actor: &str,
        why: &str,
    ) -> Result<BranchView, HemvistError> {
        let id = OrgId::parse(id)?;
        let branch = self
            .store
            .branch(&id)?
            .filter(|b| b.destroyed_ms.is_none())
            .ok_or_else(|| HemvistError::not_found(format!("no live branch {id}")))?;
        let max_ms = self.config.branches.max_ttl_secs as i64 * 1000;
        let for_ms = for_ms.map_or(branch.ttl_ms, |f| f as i64);
        if for_ms <= 0 || for_ms > max_ms {
            return Err(HemvistError::invalid(format!(
                "a keepalive may push a branch out by more than 0 and at most {} s (the \
                 policy's max_ttl_secs); {for_ms} ms was asked",
                self.config.branches.max_ttl_secs
            )));
        }
        if let Some(op) = self.store.open_operation_of(Some(&id))? {
            if op.kind == OperationKind::BranchDestroy.as_str() {
                return Err(HemvistError::conflict(format!(
                    "branch {id} is being destroyed ({}); it cannot be kept alive",
                    op.id
                )));
            }
        }
        self.store
            .keep_branch_alive(&id, now_ms() + for_ms, actor, why)?;
        self.send_branch_label(&id)?;
        self.show_branch(id.as_str())
    }

    /// Signed-in users used these branches (a node's heartbeat): recorded now and then, and a
    /// branch kept alive by use is pushed out by its TTL once less than half of it is left.
    pub fn branches_in_use(&self, orgs: Vec<OrgId>) -> Result<(), HemvistError> {
        let now = now_ms();
        // When it was last used is written at most every 10 s per branch.
        let record: Vec<(OrgId, i64)> = {
            let mut seen = self.branch_used.lock().unwrap_or_else(|p| p.into_inner());
            orgs.iter()
                .filter(|o| {
                    let due = seen.get(*o).is_none_or(|at| now - at >= 10_000);
                    if due {
                        seen.insert((*o).clone(), now);
                    }
                    due
                })
                .map(|o| (o.clone(), now))
                .collect()
        };
        if !record.is_empty() {
            self.store.branches_used(&record)?;
        }
        for org in orgs {
            let Some(b) = self.store.branch(&org)? else {
                continue;
            };
            if b.keepalive_on_use && b.destroyed_ms.is_none() && b.expires_ms - now < b.ttl_ms / 2 {
                self.keep_branch_alive(org.as_str(), None, "control", "used by a signed-in user")?;
            }
        }
        Ok(())
    }

    /// A branch's label, as its node shows it.
    fn branch_label(&self, b: &BranchRecord) -> BranchLabel {
        BranchLabel {
            org: b.id.clone(),
            parent: b.parent.clone(),
            at_ms: b.at_ms,
            expires_ms: b.expires_ms,
            warn_from_ms: b.expires_ms - self.config.branches.warn_before_secs as i64 * 1000,
            keepalive_on_use: b.keepalive_on_use,
        }
    }

    /// Tells the branch's node its label now (a keepalive, a new branch).
    pub(crate) fn send_branch_label(&self, id: &OrgId) -> Result<(), HemvistError> {
        let (Some(b), Some(org)) = (self.store.branch(id)?, self.store.org(id)?) else {
            return Ok(());
        };
        self.nodes.send_branch_labels(
            &org.node_id,
            BranchLabels {
                full: false,
                labels: vec![self.branch_label(&b)],
                removed: Vec::new(),
            },
        );
        Ok(())
    }

    /// Every live branch `node` hosts, labelled: sent after each of its state reports.
    pub fn branch_labels_for(&self, node: &NodeId) -> Result<BranchLabels, HemvistError> {
        let labels = self
            .store
            .live_branches_on_node(node)?
            .iter()
            .map(|b| self.branch_label(b))
            .collect();
        Ok(BranchLabels {
            full: true,
            labels,
            removed: Vec::new(),
        })
    }

    /// How many live branches there are, and how many are inside their warning window.
    pub fn branch_counts(&self) -> Result<(u64, u64), HemvistError> {
        let warn_ms = self.config.branches.warn_before_secs as i64 * 1000;
        let now = now_ms();
        let live = self.store.live_branches(None)?;
        let expiring = live
            .iter()
            .filter(|b| now >= b.expires_ms - warn_ms)
            .count();
        Ok((live.len() as u64, expiring as u64))
    }
}

pub fn step(plane: &Plane, record: OperationRecord) -> Result<(), HemvistError> {
    let op: Branch = record.try_into()?;
    let d: BranchDetail = serde_json::from_value(op.record.detail.clone()).map_err(internal)?;
    match op.phase {
        BranchPhase::Waiting => waiting(plane, &op, d),
        BranchPhase::Placing => placing(plane, &op, d),
        BranchPhase::Restoring => restoring(plane, &op, d),
        BranchPhase::BackingUp => backing_up(plane, &op, d),
        BranchPhase::Discarding => discarding(plane, &op, d),
        BranchPhase::Done | BranchPhase::Failed => Ok(()),
    }
}

/// The node of the branch's region that hosts the parent, if it takes orgs: the branch goes
/// there, and that node cuts "now" exactly (it ships the parent's last writes itself).
fn parent_node(plane: &Plane, d: &BranchDetail) -> Result<Option<NodeId>, HemvistError> {
    let Some(parent) = plane.store.org(&d.parent)? else {
        return Ok(None);
    };
    let draining = plane.store.draining_nodes()?;
    Ok(
        (parent.home_region == d.region && plane.takes_orgs(&parent.node_id, &draining))
            .then_some(parent.node_id),
    )
}

/// For a branch of "now" whose node is not the parent's: until every write the parent's node
/// acknowledged before the request is in its region's store. A point in the past is what the
/// backups held then (as a restore to that time), so nothing is waited for.
fn waiting(plane: &Plane, op: &Branch, d: BranchDetail) -> Result<(), HemvistError> {
    let shipped = if !d.newest || parent_node(plane, &d)?.is_some() {
        true
    } else {
        // A write just before the request shows in the node's next heartbeat at the latest.
        let settle = 2 * plane.config.heartbeat_interval_ms as i64;
        if now_ms() < d.at_ms + settle {
            return Ok(());
        }
        match plane.replication.get(&d.parent) {
            Some(r) => r.unshipped_since_ms.is_none_or(|since| since > d.at_ms),
            // No report at all in this process yet: its node has not connected since.
            None => false,
        }
    };
    if shipped {
        if let Some(next) = plane.advance(op, BranchPhase::Placing, None)? {
            return placing(plane, &next, d);
        }
        return Ok(());
    }
    if plane.in_phase_ms(op) > stall_ms(plane) {
        let why = HemvistError::unavailable(format!(
            "the backups of {} did not reach {} within {} s (is its node up?); nothing was made",
            d.parent,
            d.at_ms,
            stall_ms(plane) / 1000
        ));
        if plane.fail(op, BranchPhase::Failed, &why)?.is_some() {
            plane.forget_operation(&op.record.id);
        }
    }
    Ok(())
}

/// The branch's org and branch row, on a node of its region.
fn placing(plane: &Plane, op: &Branch, mut d: BranchDetail) -> Result<(), HemvistError> {
    let parent = plane
        .store
        .org(&d.parent)?
        .ok_or_else(|| HemvistError::not_found(format!("org {} is gone", d.parent)))?;
    let node = match (&d.node, parent_node(plane, &d)?) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) => n,
        (None, None) => {
            let load: std::collections::HashMap<NodeId, u64> =
                plane.store.tenants_per_node()?.into_iter().collect();
            let draining = plane.store.draining_nodes()?;
            let Some(node) = plane
                .store
                .nodes()?
                .into_iter()
                .filter(|n| n.region == d.region && plane.takes_orgs(&n.id, &draining))
                .min_by_key(|n| (load.get(&n.id).copied().unwrap_or(0), n.id.clone()))
                .map(|n| n.id)
            else {
                if plane.watch_stall(op, stall_ms(plane), || {
                    format!("a healthy node in {}", d.region)
                }) && plane.in_phase_ms(op) > 2 * stall_ms(plane)
                {
                    let why = HemvistError::unavailable(format!(
                        "region {} has no healthy node for the branch; nothing was made",
                        d.region
                    ));
                    if plane.fail(op, BranchPhase::Failed, &why)?.is_some() {
                        plane.forget_operation(&op.record.id);
                    }
                }
                return Ok(());
            };
            node
        }
    };
    let (org, _) = plane.store.create_branch(
        &NewOrg {
            id: op.org().clone(),
            name: format!("{} ({})", parent.name, d.name),
            home_region: d.region.clone(),
            residency: parent.residency.clone(),
            placement_reason: format!("a branch of {} in its region {}", d.parent, d.region),
            node_id: node.clone(),
            durability: parent.durability.clone(),
            data_key: hemvist_proto::random::hex(32)?,
            schema_version: parent
                .schema_version
                .map_or_else(|| plane.current_schema(), Ok)?,
            requested_by: op.record.requested_by.clone(),
        },
        &NewBranch {
            parent: &d.parent,
            name: &d.name,
            region: d.move_to.as_ref().unwrap_or(&d.region),
            at_ms: d.at_ms,
            owner: &op.record.requested_by,
            ttl_ms: d.ttl_ms,
            expires_ms: d.expires_ms,
            keepalive_on_use: d.keepalive_on_use,
            users: &d.users,
            masked: !Mask::parse(&d.mask)?.is_empty(),
            operation: &op.record.id,
        },
    )?;
    d.node = Some(org.node_id.clone());
    d.generation = Some(org.generation);
    if let Some(next) = plane.advance(op, BranchPhase::Restoring, Some(detail_json(&d)?))? {
        super::tell_every_node(plane, op.org(), &d.region, &org.node_id, org.generation)?;
        restoring(plane, &next, d)?;
    }
    Ok(())
}

/// The node makes the branch from the parent's backups and hosts it.
fn restoring(plane: &Plane, op: &Branch, d: BranchDetail) -> Result<(), HemvistError> {
    let (Some(node), Some(generation)) = (d.node.clone(), d.generation) else {
        return Err(internal("restoring without a node"));
    };
    let Some(org) = plane.store.org(op.org())? else {
        return Err(internal(format!("branch {} has no org", op.org())));
    };
    let parent = plane
        .store
        .org(&d.parent)?
        .ok_or_else(|| HemvistError::not_found(format!("org {} is gone", d.parent)))?;
    let Some(parent_key) = parent.data_key.clone() else {
        let why = HemvistError::conflict(format!(
            "org {}'s data key was destroyed: its backups cannot be read",
            d.parent
        ));
        return discard(plane, op, &d, why);
    };
    let mut command = plane.host_command(&org, generation, false)?;
    if let NodeCommand::Host {
        branch_of,
        expect_backup,
        ..
    } = &mut command
    {
        *expect_backup = false;
        *branch_of = Some(BranchSource {
            parent: d.parent.clone(),
            parent_data_key: parent_key,
            at_ms: if d.newest { i64::MAX } else { d.at_ms },
            mask: d.mask.clone(),
            users: d.users.clone(),
        });
    }
    let host = plane.drive_step(
        &Step {
            operation: &op.record.id,
            name: "make",
            node: &node,
            org: op.org(),
            kind: CommandKind::Host,
            generation,
            again_on_new_session: false,
        },
        false,
        || command,
    )?;
    match host.state {
        CommandState::Done => {
            if let Some(next) = plane.advance(op, BranchPhase::BackingUp, None)? {
                plane.send_branch_label(op.org())?;
                backing_up(plane, &next, d)?;
            }
        }
        CommandState::Failed => {
            let why = HemvistError::new(
                host.error_kind.unwrap_or(ErrorKind::Internal),
                format!(
                    "{node} could not make branch {}: {}",
                    op.org(),
                    host.error.as_deref().unwrap_or("no reason given")
                ),
            );
            discard(plane, op, &d, why)?;
        }
        _ => {
            plane.watch_stall(op, stall_ms(plane), || {
                format!("{node} to restore and mask the branch")
            });
        }
    }
    Ok(())
}

/// Until the branch's first backup is reported.
fn backing_up(plane: &Plane, op: &Branch, d: BranchDetail) -> Result<(), HemvistError> {
    let backed_up = plane
        .store
        .org(op.org())?
        .is_some_and(|o| o.backed_up_ms.is_some());
    if backed_up {
        if plane.advance(op, BranchPhase::Done, None)?.is_some() {
            plane.forget_operation(&op.record.id);
            tracing::info!(operation = %op.record.id, branch = %op.org(), parent = %d.parent,
                at_ms = d.at_ms, "branch made");
            if d.move_to.is_some() {
                super::branch_destroy::move_strays(plane)?;
            }
        }
    } else {
        plane.watch_stall(op, stall_ms(plane), || {
            "the branch's first backup to be reported".to_string()
        });
    }
    Ok(())
}

fn discard(
    plane: &Plane,
    op: &Branch,
    d: &BranchDetail,
    why: HemvistError,
) -> Result<(), HemvistError> {
    if let Some(next) = plane.fail_with(op, BranchPhase::Discarding, &why, detail_json(d)?)? {
        discarding(plane, &next, d.clone())?;
    }
    Ok(())
}

/// Whatever the node made is destroyed, the branch forgotten; the operation fails.
fn discarding(plane: &Plane, op: &Branch, d: BranchDetail) -> Result<(), HemvistError> {
    let why = HemvistError::new(
        op.record.error_kind.unwrap_or(ErrorKind::Internal),
        op.record
            .error
            .clone()
            .unwrap_or_else(|| "the branch could not be made".into()),
    );
    if let (Some(node), Some(generation)) = (d.node.clone(), d.generation) {
        let destroyed = super::destroy_on_node(plane, op, &node, generation)?;
        if !destroyed {
            return Ok(());
        }
    }
    super::branch_destroy::forget(plane, op.org(), "its creation failed", &op.record.id)?;
    if plane.fail(op, BranchPhase::Failed, &why)?.is_some() {
        plane.forget_operation(&op.record.id);
    }
    Ok(())
}
