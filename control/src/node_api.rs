//! The gRPC service nodes dial: a thin adapter from the wire to the hub, the store and the
//! reconciler. One bidirectional stream per node; the join token is checked before anything else.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hemvist_proto::pb::{
    self, control_message::Body as Out, node_control_server::NodeControl, node_message::Body as In,
};
use hemvist_proto::{ErrorKind, Generation, HemvistError, NodeId, OrgId, RegionId};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::persistence::{CommandKind, NodeRecord};
use crate::Control;

pub struct NodeApi {
    pub control: Arc<Control>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

/// Placements are pushed in chunks so a fleet of 100k orgs never makes one oversized message.
pub(crate) const PLACEMENT_CHUNK: usize = 2_000;

#[tonic::async_trait]
impl NodeControl for NodeApi {
    type SessionStream = OutStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let control = self.control.clone();
        let presented = request
            .metadata()
            .get(hemvist_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !crate::tokens_equal(presented, &control.config.join_token) {
            control.metrics.refused_joins.inc();
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
        let record = check_register(&control, register).map_err(Status::from)?;
        let c = control.clone();
        let rec = record.clone();
        tokio::task::spawn_blocking(move || register_node(&c, &rec))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;

        let (tx, rx) = mpsc::channel(4_096);
        let lease = control.lease();
        let epoch = control
            .hub
            .attach(record.id.clone(), record.region.clone(), tx.clone(), lease);
        tracing::info!(node = %record.id, region = %record.region, url = %record.public_url, epoch, "node registered");
        let _ = tx
            .send(Ok(msg(Out::Registered(pb::Registered {
                lease_ttl_ms: control.config.lease_ttl_ms,
                heartbeat_interval_ms: control.config.heartbeat_interval_ms,
            }))))
            .await;
        send_all_placements(&control, &tx).await?;
        drop(tx);

        let node = record.id.clone();
        tokio::spawn(async move {
            let shutdown = control.shutdown.clone();
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    next = inbound.next() => next,
                };
                match next {
                    Some(Ok(m)) => {
                        if let Err(e) = handle(&control, &node, epoch, m).await {
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
            control.hub.detach(&node, epoch);
            tracing::info!(%node, epoch, "node session ended");
        });

        let out = ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(out) as OutStream))
    }
}

fn msg(body: Out) -> pb::ControlMessage {
    pb::ControlMessage { body: Some(body) }
}

fn check_register(control: &Control, r: pb::Register) -> Result<NodeRecord, HemvistError> {
    let id = NodeId::try_from(r.node_id)?;
    let region = RegionId::try_from(r.region)?;
    if !control.config.regions.iter().any(|c| c.id == region) {
        return Err(HemvistError::invalid(format!(
            "node {id} says it is in region {region}, which is not configured"
        )));
    }
    let url = r.public_url.trim_end_matches('/').to_string();
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
        capacity: r.capacity.max(1),
        version: r.version.chars().take(64).collect(),
        last_seen_ms: 0,
    })
}

/// Records the node; if its public URL changed, every node learns the new address of the orgs
/// it hosts, so no routing cache keeps redirecting to where the node used to be.
fn register_node(control: &Control, record: &NodeRecord) -> Result<(), HemvistError> {
    let previous = control.store.node(&record.id)?;
    control.store.upsert_node(record)?;
    let moved = previous.is_some_and(|p| p.public_url != record.public_url);
    if moved {
        let orgs = control.store.orgs_on_node(&record.id)?;
        tracing::info!(node = %record.id, url = %record.public_url, orgs = orgs.len(), "node address changed; telling every node");
        let placements: Vec<pb::Placement> = orgs
            .into_iter()
            .map(|o| pb::Placement {
                org: o.id.to_string(),
                region: o.home_region.to_string(),
                node_id: record.id.to_string(),
                node_url: record.public_url.clone(),
                generation: o.generation.get(),
            })
            .collect();
        for chunk in placements.chunks(PLACEMENT_CHUNK) {
            control.hub.broadcast(Out::Placements(pb::PlacementUpdate {
                full: false,
                placements: chunk.to_vec(),
                removed: vec![],
            }));
        }
    }
    Ok(())
}

async fn send_all_placements(
    control: &Arc<Control>,
    tx: &mpsc::Sender<Result<pb::ControlMessage, Status>>,
) -> Result<(), Status> {
    let c = control.clone();
    let all = tokio::task::spawn_blocking(move || c.placements())
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
    let mut first = true;
    let mut chunks = all.chunks(PLACEMENT_CHUNK).peekable();
    if chunks.peek().is_none() {
        let _ = tx
            .send(Ok(msg(Out::Placements(pb::PlacementUpdate {
                full: true,
                placements: vec![],
                removed: vec![],
            }))))
            .await;
    }
    for chunk in chunks {
        let _ = tx
            .send(Ok(msg(Out::Placements(pb::PlacementUpdate {
                full: first,
                placements: chunk.to_vec(),
                removed: vec![],
            }))))
            .await;
        first = false;
    }
    Ok(())
}

async fn handle(
    control: &Arc<Control>,
    node: &NodeId,
    epoch: u64,
    m: pb::NodeMessage,
) -> Result<(), HemvistError> {
    if !control.hub.is_current(node, epoch) {
        return Err(HemvistError::conflict(
            "a newer session of this node exists",
        ));
    }
    match m.body {
        Some(In::Heartbeat(h)) => {
            control.hub.renew(node, epoch, control.lease());
            let now = crate::persistence::now_ms();
            for r in h.replication {
                let Ok(org) = OrgId::parse(&r.org) else {
                    continue;
                };
                control.replication.report(
                    org,
                    crate::replication::ReplicationView {
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
            control.hub.send(
                node,
                Out::HeartbeatAck(pb::HeartbeatAck {
                    seq: h.seq,
                    lease_ttl_ms: control.config.lease_ttl_ms,
                }),
            );
            if h.seq % 10 == 0 {
                let (c, n) = (control.clone(), node.clone());
                tokio::task::spawn_blocking(move || c.store.touch_node(&n))
                    .await
                    .map_err(|e| HemvistError::internal(e.to_string()))??;
            }
        }
        Some(In::State(report)) => {
            let mut tenants = Vec::with_capacity(report.tenants.len());
            for t in report.tenants {
                tenants.push((
                    OrgId::try_from(t.org)?,
                    Generation::new(t.generation)?,
                    t.schema_version,
                ));
            }
            tracing::info!(%node, tenants = tenants.len(), "state report");
            let (c, n) = (control.clone(), node.clone());
            tokio::task::spawn_blocking(move || c.store.replace_observed(&n, &tenants))
                .await
                .map_err(|e| HemvistError::internal(e.to_string()))??;
            control.reconcile_soon(node);
        }
        Some(In::Ack(ack)) => {
            let (c, n) = (control.clone(), node.clone());
            tokio::task::spawn_blocking(move || apply_ack(&c, &n, ack))
                .await
                .map_err(|e| HemvistError::internal(e.to_string()))??;
            control.reconcile_soon(node);
        }
        Some(In::Register(_)) => return Err(HemvistError::invalid("register sent twice")),
        None => return Err(HemvistError::invalid("empty message")),
    }
    Ok(())
}

fn apply_ack(control: &Control, node: &NodeId, ack: pb::CommandAck) -> Result<(), HemvistError> {
    control.forget_sent(&ack.id);
    let kind = ErrorKind::from_wire(ack.code());
    let error = (!ack.ok).then(|| {
        format!(
            "{kind:?}: {}",
            ack.message.chars().take(500).collect::<String>()
        )
    });
    let failure = error.as_deref().map(|e| (e, kind.retryable()));
    let Some(cmd) = control.store.ack_command(node, &ack.id, failure)? else {
        return Err(HemvistError::not_found(format!(
            "ack for unknown command {}",
            ack.id
        )));
    };
    if let Some(e) = &error {
        tracing::warn!(%node, command = %cmd.id, error = %e, "node refused command");
        return Ok(());
    }
    tracing::info!(%node, command = %cmd.id, "command done");
    match cmd.kind {
        CommandKind::Host => {
            let schema = ack.tenant.map(|t| t.schema_version).unwrap_or(0);
            control
                .store
                .set_observed(node, &cmd.org, cmd.generation, schema)?;
            control.store.audit(
                node.as_str(),
                "tenant.hosted",
                Some(&cmd.org),
                &serde_json::json!({"node": node, "generation": cmd.generation.get(), "schema_version": schema}),
            )?;
        }
        CommandKind::AddUser => {
            let email = cmd
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_str::<crate::users::UserPayload>(p).ok())
                .map(|p| p.email)
                .unwrap_or_default();
            control.store.audit(
                node.as_str(),
                "user.added",
                Some(&cmd.org),
                &serde_json::json!({"node": node, "email": email}),
            )?;
        }
        CommandKind::Drop => {
            control.store.remove_observed(node, &cmd.org)?;
            control.store.audit(
                node.as_str(),
                "tenant.dropped",
                Some(&cmd.org),
                &serde_json::json!({"node": node, "generation": cmd.generation.get()}),
            )?;
        }
    }
    Ok(())
}
