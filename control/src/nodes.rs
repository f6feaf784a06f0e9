//! What nodes tell the control plane, in domain terms: who they are (registration), what they
//! host (state reports) and how their commands went (acks). A node is recorded only in a
//! configured region with an http(s) URL; what it reports hosting replaces what it reported
//! before; an ack records the command's outcome, and on success its effect and audit entry.

use hemvist_proto::{ErrorKind, Generation, HemvistError, NodeId, OrgId, RegionId};

use crate::link::{OrgKey, Placement, PlacementUpdate};
use crate::plane::Plane;
use crate::store::{CommandKind, CommandState, NodeRecord, TenantSchema};
use crate::users::UserPayload;

/// A node introducing itself, its ids already parsed.
pub struct Registration {
    pub id: NodeId,
    pub region: RegionId,
    pub public_url: String,
    pub capacity: u64,
    pub version: String,
}

/// A node's answer to a command.
pub struct CommandAck {
    pub id: String,
    /// The schema the org is at after a `host` or a `migrate`, or why the node refused.
    pub outcome: Result<Option<TenantSchema>, HemvistError>,
    /// The position a move's step reported (`fence`, `finish_move`).
    pub moved: Option<Moved>,
    /// What a `migrate` did, whether it succeeded or not.
    pub migrated: Option<Migrated>,
    /// What a `probe` found in the node's region's store.
    pub probed: Option<Probed>,
    /// After a `host` of a branch: its file's size (0 when not said).
    pub bytes: u64,
}

/// What a node's `migrate` did (kept as the command's result, failed or not).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Migrated {
    pub from_version: u32,
    pub to_version: u32,
    /// The tenant's backup position just before: the restore point of a rollback.
    pub restore_generation: u64,
    pub restore_lsn: u64,
    pub restore_ms: i64,
    /// On failure: the file, the statement, SQLite's error (the transaction rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<MigrationFailure>,
    pub micros: u64,
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MigrationFailure {
    pub version: u32,
    pub file: String,
    pub statement: String,
    pub error: String,
}

/// What a region's store holds of an org from a generation on (a `probe`'s answer, kept as
/// the command's result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Probed {
    /// Backup objects of that generation or newer (a damaged one that may hold some counts).
    pub objects: u64,
    pub newest_generation: u64,
    pub newest_lsn: u64,
    /// Of `objects`, the readable snapshots (a restore starts from one).
    #[serde(default)]
    pub snapshots: u64,
}

/// A position a move's step reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Moved {
    pub lsn: u64,
    pub bytes: u64,
}

impl Plane {
    pub fn check_registration(&self, r: Registration) -> Result<NodeRecord, HemvistError> {
        let Registration {
            id,
            region,
            public_url,
            capacity,
            version,
        } = r;
        if !self.config.regions.iter().any(|c| c.id == region) {
            return Err(HemvistError::invalid(format!(
                "node {id} says it is in region {region}, which is not configured"
            )));
        }
        let url = public_url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() > 512
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(HemvistError::invalid(format!(
                "node {id}: public URL must be an http(s) URL"
            )));
        }
        Ok(NodeRecord {
            id,
            region,
            public_url: url,
            capacity: capacity.max(1),
            version: version.chars().take(64).collect(),
            last_seen_ms: 0,
        })
    }

    /// Records the node; if its public URL changed, every node learns the new address of the
    /// orgs it hosts, so no routing cache keeps redirecting to where the node used to be.
    pub fn register_node(&self, record: &NodeRecord) -> Result<(), HemvistError> {
        let previous = self.store.node(&record.id)?;
        self.store.upsert_node(record)?;
        let moved = previous.is_some_and(|p| p.public_url != record.public_url);
        if moved {
            let orgs = self.store.orgs_on_node(&record.id)?;
            tracing::info!(node = %record.id, url = %record.public_url, orgs = orgs.len(), "node address changed; telling every node");
            let placements: Vec<Placement> = orgs
                .into_iter()
                .map(|o| Placement {
                    org: o.id,
                    region: o.home_region,
                    node: record.id.clone(),
                    node_url: record.public_url.clone(),
                    generation: o.generation,
                })
                .collect();
            for update in PlacementUpdate::chunked(&placements, false) {
                self.nodes.broadcast_placements(update);
            }
        }
        Ok(())
    }

    /// A node's full list of what it hosts, replacing the last one. Answers with the data keys
    /// of the reported orgs that are meant to be on this node (it keeps keys in memory only,
    /// so after a restart it has none); an org placed elsewhere, or whose key was destroyed,
    /// gets none.
    pub fn state_reported(
        &self,
        node: &NodeId,
        tenants: &[(OrgId, Generation, TenantSchema)],
    ) -> Result<Vec<OrgKey>, HemvistError> {
        tracing::info!(%node, tenants = tenants.len(), "state report");
        self.store.replace_observed(node, tenants)?;
        self.reconcile_soon(node);
        let reported: std::collections::HashSet<&OrgId> = tenants.iter().map(|t| &t.0).collect();
        Ok(self
            .store
            .orgs_on_node(node)?
            .into_iter()
            .filter(|o| reported.contains(&o.id))
            .filter_map(|o| {
                Some(OrgKey {
                    generation: o.generation,
                    data_key: o.data_key?,
                    org: o.id,
                })
            })
            .collect())
    }

    /// Orgs a node reports shipped backups of: recorded once, so that no node ever answers a
    /// `host` for them with an empty tenant.
    pub fn backups_seen(&self, orgs: Vec<OrgId>) -> Result<(), HemvistError> {
        let new: Vec<OrgId> = {
            let known = self.backed_up.lock().unwrap_or_else(|p| p.into_inner());
            orgs.into_iter().filter(|o| !known.contains(o)).collect()
        };
        for org in new {
            self.store.mark_backed_up(&org, crate::clock::now_ms())?;
            self.backed_up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(org);
        }
        Ok(())
    }

    /// A node deleted a dropped tenant's files from its trash after the grace period.
    pub fn trash_purged(
        &self,
        node: &NodeId,
        org: &OrgId,
        label: &str,
        dropped_ms: i64,
    ) -> Result<(), HemvistError> {
        let label: String = label.chars().take(100).collect();
        tracing::info!(%node, %org, %label, "dropped tenant purged from trash");
        self.store.audit(
            node.as_str(),
            "tenant.purged",
            Some(org),
            &serde_json::json!({"node": node, "label": label, "dropped_ms": dropped_ms}),
        )?;
        Ok(())
    }

    /// Records a command's outcome: done (with its effect on what the node hosts, audited),
    /// `retry` after a failure retrying can fix, `failed` after one it cannot. The node is
    /// looked at again once the outcome is recorded.
    pub fn command_acked(&self, node: &NodeId, ack: CommandAck) -> Result<(), HemvistError> {
        // A migration changes no placement: only its rollout needs to look again (a reconciler
        // pass over the node's every org per answer was most of a rollout's control-plane time).
        let migration = ack.migrated.is_some();
        self.record_ack(node, ack)?;
        if !migration {
            self.reconcile_soon(node);
        }
        self.wake_operations.notify_one();
        Ok(())
    }

    fn record_ack(&self, node: &NodeId, ack: CommandAck) -> Result<(), HemvistError> {
        // A control plane that stops here has sent the command and lost its answer.
        hemvist_proto::failpoints::check("control.ack")?;
        self.forget_sent(&ack.id);
        // A migration re-sent and answered again is counted once.
        let answered_before = ack.migrated.is_some()
            && self
                .store
                .command(&ack.id)?
                .is_some_and(|c| matches!(c.state, CommandState::Done | CommandState::Failed));
        let (state, error) = match &ack.outcome {
            Ok(_) => (CommandState::Done, None),
            Err(e) => {
                let message: String = e.message.chars().take(500).collect();
                let state = if e.kind.retryable() {
                    CommandState::Retry
                } else {
                    CommandState::Failed
                };
                (state, Some((e.kind, message)))
            }
        };
        let result = match (&ack.migrated, ack.outcome.is_ok()) {
            (Some(m), _) => Some(serde_json::json!(m)),
            (None, false) => None,
            (None, true) => match (ack.moved, ack.probed) {
                (Some(m), _) => Some(serde_json::json!(m)),
                (None, Some(p)) => Some(serde_json::json!(p)),
                (None, None) => None,
            },
        };
        let Some(cmd) = self.store.ack_command(
            node,
            &ack.id,
            state,
            error.as_ref().map(|(k, m)| (*k, m.as_str())),
            result.as_ref(),
        )?
        else {
            return Err(HemvistError::not_found(format!(
                "ack for unknown command {}",
                ack.id
            )));
        };
        let schema = match ack.outcome {
            Ok(schema) => schema,
            Err(_) => {
                if cmd.kind == CommandKind::Migrate
                    && state == CommandState::Failed
                    && !answered_before
                {
                    self.metrics.record_migration("failed");
                }
                let (kind, e) = error.unwrap_or((ErrorKind::Internal, String::new()));
                tracing::warn!(%node, command = %cmd.id, kind = kind.as_str(), error = %e, "node refused command");
                return Ok(());
            }
        };
        tracing::info!(%node, command = %cmd.id, "command done");
        match cmd.kind {
            CommandKind::Host => {
                if ack.bytes > 0 && cmd.org.is_branch() {
                    self.store.branch_sizes(&[(cmd.org.clone(), ack.bytes)])?;
                }
                let schema = schema.unwrap_or_default();
                self.store
                    .set_observed(node, &cmd.org, cmd.generation, &schema)?;
                self.store.audit(
                    node.as_str(),
                    "tenant.hosted",
                    Some(&cmd.org),
                    &serde_json::json!({"node": node, "generation": cmd.generation.get(), "schema_version": schema.version}),
                )?;
            }
            CommandKind::Migrate => {
                let changed = ack
                    .migrated
                    .as_ref()
                    .is_some_and(|m| m.to_version != m.from_version);
                if !answered_before {
                    self.metrics
                        .record_migration(if changed { "done" } else { "unchanged" });
                }
                // A migration holds the org at its new version; so does an answer that finds the
                // tenant migrated already (its node died before it could tell). A dry run reports
                // the version the tenant has.
                if let Some(schema) = schema {
                    self.store
                        .record_migration(node, &cmd.org, cmd.generation, &schema)?;
                }
            }
            CommandKind::AddUser => {
                let (email, requested_by) = UserPayload::of(&cmd)
                    .map(|p| (p.email, p.requested_by))
                    .unwrap_or_default();
                self.store.audit(
                    node.as_str(),
                    "user.added",
                    Some(&cmd.org),
                    &serde_json::json!({"node": node, "email": email, "requested_by": requested_by}),
                )?;
            }
            CommandKind::Drop => {
                self.store.remove_observed(node, &cmd.org)?;
                self.store.audit(
                    node.as_str(),
                    "tenant.dropped",
                    Some(&cmd.org),
                    &serde_json::json!({"node": node, "generation": cmd.generation.get()}),
                )?;
            }
            CommandKind::Destroy => {
                self.store.remove_observed(node, &cmd.org)?;
                self.store.audit(
                    node.as_str(),
                    "tenant.destroyed",
                    Some(&cmd.org),
                    &serde_json::json!({"node": node, "generation": cmd.generation.get(),
                        "deleted": ["file", "backups in its region"]}),
                )?;
            }
            // A move's steps: the operation reads their outcome and audits its own phases.
            CommandKind::MoveOut
            | CommandKind::MoveIn
            | CommandKind::Fence
            | CommandKind::FinishMove
            | CommandKind::EndMove
            | CommandKind::Probe => {}
        }
        Ok(())
    }
}
