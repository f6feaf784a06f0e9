//! The gRPC service nodes dial: a thin adapter that turns wire messages into domain calls and
//! domain messages into wire messages. One bidirectional stream per node; the join token is
//! checked before anything else.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hemvist_proto::pb::{
    self, control_message::Body as Out, node_control_server::NodeControl, node_message::Body as In,
};
use hemvist_proto::{ErrorKind, Generation, HemvistError, NodeId, OrgId, RegionId};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::hub::{Hub, Outgoing};
use crate::link::{NodeCommand, Placement, PlacementUpdate, KEY_CHUNK};
use crate::nodes::{CommandAck, Registration};
use crate::plane::Plane;
use crate::replication::ReplicationView;
use crate::store::TenantSchema;

pub struct NodeApi {
    pub plane: Arc<Plane>,
    pub hub: Arc<Hub>,
    pub shutdown: CancellationToken,
}

pub type OutStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeControl for NodeApi {
    type SessionStream = OutStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let plane = self.plane.clone();
        let presented = request
            .metadata()
            .get(hemvist_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !crate::auth::tokens_equal(presented, &plane.config.join_token) {
            plane.metrics.refused_joins.inc();
            tracing::warn!("refused a node with a wrong join token");
            return Err(Status::unauthenticated("wrong or missing join token"));
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no register message within 10 s"))?;
        let register = match first {
            Some(Ok(pb::NodeMessage {
                body: Some(In::Register(r)),
            })) => r,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be register",
                ))
            }
        };
        let record = Registration::try_from(register)
            .and_then(|r| plane.check_registration(r))
            .map_err(Status::from)?;
        let (p, rec) = (plane.clone(), record.clone());
        tokio::task::spawn_blocking(move || p.register_node(&rec))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;

        let (tx, rx) = mpsc::channel(4_096);
        let epoch = self
            .hub
            .attach(record.id.clone(), tx.clone(), plane.lease());
        tracing::info!(node = %record.id, region = %record.region, url = %record.public_url, epoch, "node registered");
        let _ = tx
            .send(Outgoing::Registered {
                lease_ttl_ms: plane.config.lease_ttl_ms,
                heartbeat_interval_ms: plane.config.heartbeat_interval_ms,
                system_id: plane.system_id.clone(),
            })
            .await;
        send_all_placements(&plane, &tx).await?;
        drop(tx);

        let node = record.id.clone();
        let (hub, shutdown) = (self.hub.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = inbound.next() => next,
                };
                match next {
                    Some(Ok(m)) => {
                        if let Err(e) = handle(&plane, &hub, &node, epoch, m).await {
                            tracing::warn!(%node, error = %e, "bad message from node");
                        }
                    }
                    Some(Err(e)) => {
                        tracing::info!(%node, error = %e, "node stream broke");
                        break;
                    }
                    None => break,
                }
            }
            hub.detach(&node, epoch);
            tracing::info!(%node, epoch, "node session ended");
        });

        let out = ReceiverStream::new(rx).map(|m| Ok(pb::ControlMessage::from(m)));
        Ok(Response::new(Box::pin(out) as OutStream))
    }
}

/// A new session starts with the whole placement list; the first update replaces the node's
/// cache, even when there are no placements at all.
async fn send_all_placements(
    plane: &Arc<Plane>,
    tx: &mpsc::Sender<Outgoing>,
) -> Result<(), Status> {
    let p = plane.clone();
    let all = tokio::task::spawn_blocking(move || p.placements())
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
    let mut updates = PlacementUpdate::chunked(&all, true);
    if updates.is_empty() {
        updates.push(PlacementUpdate {
            full: true,
            placements: vec![],
            removed: vec![],
        });
    }
    for update in updates {
        let _ = tx.send(Outgoing::Placements(update)).await;
    }
    Ok(())
}

async fn handle(
    plane: &Arc<Plane>,
    hub: &Hub,
    node: &NodeId,
    epoch: u64,
    m: pb::NodeMessage,
) -> Result<(), HemvistError> {
    if !hub.is_current(node, epoch) {
        return Err(HemvistError::conflict(
            "a newer session of this node exists",
        ));
    }
    match m.body {
        Some(In::Heartbeat(h)) => {
            hub.renew(node, epoch, plane.lease());
            plane.node_disk_report(node, h.disk_free_bytes, h.disk_low);
            let now = crate::clock::now_ms();
            let mut branches_used = Vec::new();
            for t in h.health {
                if let Ok(org) = OrgId::parse(&t.org) {
                    if t.signed_in_requests > 0 && org.is_branch() {
                        branches_used.push(org.clone());
                    }
                    plane.tenant_health(
                        org,
                        t.requests,
                        t.server_errors.saturating_add(t.sqlite_errors),
                    );
                }
            }
            if !branches_used.is_empty() {
                let p = plane.clone();
                tokio::task::spawn_blocking(move || p.branches_in_use(branches_used))
                    .await
                    .map_err(|e| HemvistError::internal(e.to_string()))??;
            }
            let mut backed_up = Vec::new();
            let mut positions = Vec::new();
            for r in h.replication {
                let Ok(org) = OrgId::parse(&r.org) else {
                    continue;
                };
                if r.shipped_ms > 0 {
                    backed_up.push(org.clone());
                    positions.push((org.clone(), r.generation, r.lsn, now));
                }
                plane.replication.report(
                    org,
                    ReplicationView {
                        node: node.clone(),
                        generation: r.generation,
                        lsn: r.lsn,
                        shipped_ms: r.shipped_ms,
                        unshipped_since_ms: (r.unshipped_since_ms > 0)
                            .then_some(r.unshipped_since_ms),
                        reported_ms: now,
                    },
                );
            }
            if !backed_up.is_empty() {
                let p = plane.clone();
                tokio::task::spawn_blocking(move || {
                    p.replication.persist(&p.store, positions)?;
                    p.backups_seen(backed_up)
                })
                .await
                .map_err(|e| HemvistError::internal(e.to_string()))??;
            }
            hub.send(
                node,
                Outgoing::HeartbeatAck {
                    seq: h.seq,
                    lease_ttl_ms: plane.config.lease_ttl_ms,
                },
            );
            plane.heard_from(node);
            // Last-seen is for people; one write per ten heartbeats is plenty.
            if h.seq % 10 == 0 {
                let (p, n) = (plane.clone(), node.clone());
                tokio::task::spawn_blocking(move || p.store.touch_node(&n))
                    .await
                    .map_err(|e| HemvistError::internal(e.to_string()))??;
            }
        }
        Some(In::State(report)) => {
            let mut tenants = Vec::with_capacity(report.tenants.len());
            let mut sizes = Vec::new();
            for t in report.tenants {
                if t.bytes > 0 {
                    if let Ok(org) = OrgId::parse(&t.org) {
                        if org.is_branch() {
                            sizes.push((org, t.bytes));
                        }
                    }
                }
                tenants.push((
                    OrgId::try_from(t.org)?,
                    Generation::new(t.generation)?,
                    TenantSchema {
                        version: t.schema_version,
                        fingerprint: t.schema_fingerprint,
                    },
                ));
            }
            let (p, n) = (plane.clone(), node.clone());
            let keys = tokio::task::spawn_blocking(move || {
                if !sizes.is_empty() {
                    p.store.branch_sizes(&sizes)?;
                }
                p.state_reported(&n, &tenants)
            })
            .await
            .map_err(|e| HemvistError::internal(e.to_string()))??;
            // Keys are sent only here (no later pass repeats them): wait for room in the
            // session's queue rather than drop a chunk when it is full.
            for chunk in keys.chunks(KEY_CHUNK) {
                if !hub
                    .send_waiting(node, epoch, Outgoing::DataKeys(chunk.to_vec()))
                    .await
                {
                    break;
                }
            }
            let (p, n) = (plane.clone(), node.clone());
            let labels = tokio::task::spawn_blocking(move || p.branch_labels_for(&n))
                .await
                .map_err(|e| HemvistError::internal(e.to_string()))??;
            hub.send_waiting(node, epoch, Outgoing::Branches(labels))
                .await;
        }
        Some(In::Ack(ack)) => {
            let (p, n) = (plane.clone(), node.clone());
            tokio::task::spawn_blocking(move || p.command_acked(&n, CommandAck::from(ack)))
                .await
                .map_err(|e| HemvistError::internal(e.to_string()))??;
        }
        Some(In::Purged(p)) => {
            let org = OrgId::try_from(p.org)?;
            let (pl, n) = (plane.clone(), node.clone());
            tokio::task::spawn_blocking(move || pl.trash_purged(&n, &org, &p.label, p.dropped_ms))
                .await
                .map_err(|e| HemvistError::internal(e.to_string()))??;
        }
        Some(In::MoveProgress(p)) => {
            let progress = crate::operations::CopyProgress {
                operation: p.operation.chars().take(200).collect(),
                node: node.clone(),
                state: p.state.chars().take(20).collect(),
                lsn: p.lsn,
                bytes: p.bytes,
                error: (p.code != 0 || !p.message.is_empty()).then(|| {
                    HemvistError::new(
                        ErrorKind::from_wire(pb::ErrorCode::try_from(p.code).unwrap_or_default()),
                        p.message.chars().take(500).collect::<String>(),
                    )
                }),
                at_ms: crate::clock::now_ms(),
                failing_since_ms: 0,
            };
            plane.copy_progress(progress);
        }
        Some(In::Keepalive(k)) => {
            let org = OrgId::try_from(k.org)?;
            let user: String = k
                .user
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            let actor = format!("{user} on {node}");
            let p = plane.clone();
            let kept = tokio::task::spawn_blocking(move || {
                p.keep_branch_alive(org.as_str(), None, &actor, "the keepalive button")
            })
            .await
            .map_err(|e| HemvistError::internal(e.to_string()))?;
            if let Err(e) = kept {
                tracing::info!(%node, error = %e, "a branch keepalive from a node was refused");
            }
        }
        Some(In::Register(_)) => return Err(HemvistError::invalid("register sent twice")),
        None => return Err(HemvistError::invalid("empty message")),
    }
    Ok(())
}

impl TryFrom<pb::Register> for Registration {
    type Error = HemvistError;

    fn try_from(r: pb::Register) -> Result<Self, HemvistError> {
        Ok(Registration {
            id: NodeId::try_from(r.node_id)?,
            region: RegionId::try_from(r.region)?,
            public_url: r.public_url,
            capacity: r.capacity,
            version: r.version,
        })
    }
}

impl From<pb::CommandAck> for CommandAck {
    fn from(mut ack: pb::CommandAck) -> Self {
        let moved = ack.moved.map(|m| crate::nodes::Moved {
            lsn: m.lsn,
            bytes: m.bytes,
        });
        let migrated = ack.migrated.take().map(|m| crate::nodes::Migrated {
            from_version: m.from_version,
            to_version: m.to_version,
            restore_generation: m.restore_generation,
            restore_lsn: m.restore_lsn,
            restore_ms: m.restore_ms,
            failed: (m.failed_version != 0).then(|| crate::nodes::MigrationFailure {
                version: m.failed_version,
                file: if m.failed_name.ends_with(".sql") {
                    m.failed_name.clone()
                } else {
                    format!("{:04}_{}.sql", m.failed_version, m.failed_name)
                },
                statement: m.failed_statement.chars().take(500).collect(),
                error: m.error.chars().take(500).collect(),
            }),
            micros: m.micros,
            fingerprint: m.fingerprint,
        });
        let probed = ack.probed.map(|p| crate::nodes::Probed {
            objects: p.objects,
            newest_generation: p.newest_generation,
            newest_lsn: p.newest_lsn,
            snapshots: p.snapshots,
        });
        let bytes = ack.tenant.as_ref().map_or(0, |t| t.bytes);
        let outcome = if ack.ok {
            Ok(ack.tenant.map(|t| TenantSchema {
                version: t.schema_version,
                fingerprint: t.schema_fingerprint,
            }))
        } else {
            Err(HemvistError::new(
                ErrorKind::from_wire(ack.code()),
                ack.message,
            ))
        };
        CommandAck {
            id: ack.id,
            outcome,
            moved,
            migrated,
            probed,
            bytes,
        }
    }
}

impl From<Outgoing> for pb::ControlMessage {
    fn from(m: Outgoing) -> Self {
        let body = match m {
            Outgoing::Registered {
                lease_ttl_ms,
                heartbeat_interval_ms,
                system_id,
            } => Out::Registered(pb::Registered {
                lease_ttl_ms,
                heartbeat_interval_ms,
                system_id,
            }),
            Outgoing::DataKeys(keys) => Out::DataKeys(pb::DataKeys {
                keys: keys
                    .into_iter()
                    .map(|k| pb::OrgKey {
                        org: k.org.to_string(),
                        generation: k.generation.get(),
                        data_key: k.data_key,
                    })
                    .collect(),
            }),
            Outgoing::HeartbeatAck { seq, lease_ttl_ms } => {
                Out::HeartbeatAck(pb::HeartbeatAck { seq, lease_ttl_ms })
            }
            Outgoing::Command {
                id,
                operation,
                command,
            } => Out::Command(pb::Command {
                id,
                action: Some(action(*command)),
                operation: operation.unwrap_or_default(),
            }),
            Outgoing::Branches(b) => Out::Branches(pb::BranchLabels {
                full: b.full,
                labels: b
                    .labels
                    .into_iter()
                    .map(|l| pb::BranchLabel {
                        org: l.org.to_string(),
                        parent: l.parent.to_string(),
                        at_ms: l.at_ms,
                        expires_ms: l.expires_ms,
                        warn_from_ms: l.warn_from_ms,
                        keepalive_on_use: l.keepalive_on_use,
                    })
                    .collect(),
                removed: b.removed.iter().map(ToString::to_string).collect(),
            }),
            Outgoing::Placements(update) => Out::Placements(pb::PlacementUpdate {
                full: update.full,
                placements: update.placements.into_iter().map(placement).collect(),
                removed: update.removed.iter().map(ToString::to_string).collect(),
            }),
        };
        pb::ControlMessage { body: Some(body) }
    }
}

fn migrations(schema: &crate::link::SchemaTarget) -> Vec<pb::Migration> {
    schema
        .files
        .iter()
        .map(|f| pb::Migration {
            version: f.version,
            name: f.name.clone(),
            sql: f.sql.clone(),
            checksum: f.checksum.clone(),
            check: f.check.clone().unwrap_or_default(),
        })
        .collect()
}

fn action(command: NodeCommand) -> pb::command::Action {
    use pb::command::Action;
    match command {
        NodeCommand::Host {
            org,
            generation,
            name,
            allowed_regions,
            durability,
            data_key,
            expect_backup,
            moved_here,
            known,
            accept_older,
            schema,
            restore_to,
            branch_of,
        } => Action::Host(pb::HostTenant {
            org: org.to_string(),
            generation: generation.get(),
            name,
            allowed_regions: allowed_regions.iter().map(ToString::to_string).collect(),
            durability,
            data_key,
            expect_backup,
            moved_here,
            known_generation: known.map_or(0, |k| k.generation),
            known_lsn: known.map_or(0, |k| k.lsn),
            known_reported_ms: known.map_or(0, |k| k.reported_ms),
            accept_older,
            schema_version: schema.version,
            schema: migrations(&schema),
            restore_at_ms: restore_to.map_or(0, |r| r.at_ms),
            restore_generation: restore_to.map_or(0, |r| r.generation),
            restore_lsn: restore_to.map_or(0, |r| r.lsn),
            branch_of: branch_of.map(|b| pb::BranchSource {
                parent: b.parent.to_string(),
                parent_data_key: b.parent_data_key,
                at_ms: b.at_ms,
                mask: b.mask,
                users: b.users,
            }),
        }),
        NodeCommand::Migrate {
            org,
            generation,
            schema,
            dry_run,
        } => Action::Migrate(pb::MigrateTenant {
            org: org.to_string(),
            generation: generation.get(),
            target_version: schema.version,
            migrations: migrations(&schema),
            dry_run,
        }),
        NodeCommand::AddUser {
            org,
            generation,
            email,
            name,
            password_hash,
        } => Action::AddUser(pb::AddUser {
            org: org.to_string(),
            generation: generation.get(),
            email,
            name,
            password_hash,
        }),
        NodeCommand::Drop { org, generation } => Action::Drop(pb::DropTenant {
            org: org.to_string(),
            generation: generation.get(),
        }),
        NodeCommand::Destroy { org, generation } => Action::Destroy(pb::DestroyTenant {
            org: org.to_string(),
            generation: generation.get(),
        }),
        NodeCommand::Probe { org, generation } => Action::Probe(pb::ProbeStore {
            org: org.to_string(),
            generation: generation.get(),
        }),
        NodeCommand::MoveOut {
            org,
            generation,
            target,
            secret,
        } => Action::MoveOut(pb::MoveOut {
            org: org.to_string(),
            generation: generation.get(),
            target_node: target.to_string(),
            secret,
        }),
        NodeCommand::MoveIn {
            org,
            generation,
            source,
            source_url,
            secret,
            data_key,
            allowed_regions,
        } => Action::MoveIn(pb::MoveIn {
            org: org.to_string(),
            generation: generation.get(),
            source_node: source.to_string(),
            source_url,
            secret,
            data_key,
            allowed_regions: allowed_regions.iter().map(ToString::to_string).collect(),
        }),
        NodeCommand::Fence { org, generation } => Action::Fence(pb::Fence {
            org: org.to_string(),
            generation: generation.get(),
        }),
        NodeCommand::FinishMove {
            org,
            generation,
            lsn,
        } => Action::FinishMove(pb::FinishMove {
            org: org.to_string(),
            generation: generation.get(),
            lsn,
        }),
        NodeCommand::EndMove { org, rolled_back } => Action::EndMove(pb::EndMove {
            org: org.to_string(),
            rolled_back,
        }),
    }
}

fn placement(p: Placement) -> pb::Placement {
    pb::Placement {
        org: p.org.to_string(),
        region: p.region.to_string(),
        node_id: p.node.to_string(),
        node_url: p.node_url,
        generation: p.generation.get(),
    }
}
