//! The node's side of the control stream: dial, register, report state, heartbeat, apply
//! commands, keep the routing cache current. Reconnects with capped exponential backoff and
//! resends its full state each time, so the control plane can re-drive whatever is unfinished.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hemvist_proto::migration::MigrationFile;
use hemvist_proto::pb::{
    self, command::Action, control_message::Body as In, node_control_client::NodeControlClient,
    node_message::Body as Out,
};
use hemvist_proto::{ErrorKind, Generation, HemvistError, NodeId, OrgId, RegionId};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::migrate::{MigrateRequest, RestorePoint};
use crate::state::Placement;
use crate::tenants::schema::Schema;
use crate::{HostRequest, Node};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Commands of different orgs run in up to this many lanes at once (one org, one lane).
const COMMAND_LANES: usize = 8;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub async fn run(node: Arc<Node>, shutdown: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    let addresses: Vec<String> = node
        .config
        .control_addresses()
        .into_iter()
        .map(String::from)
        .collect();
    let mut at = 0;
    loop {
        let started = Instant::now();
        let url = addresses[at % addresses.len()].clone();
        let result = session(&node, &url, &shutdown).await;
        node.metrics.link_up.store(0, Ordering::Relaxed);
        if shutdown.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => tracing::info!("control plane closed the stream; reconnecting"),
            Err(e) if e.code() == tonic::Code::Unauthenticated => {
                node.metrics.link_refused.inc();
                tracing::error!(
                    "the control plane refused this node's join token: {}",
                    e.message()
                );
                backoff = MAX_BACKOFF;
            }
            Err(e) => {
                let causes = std::error::Error::source(&e).map(with_causes);
                let why = match causes {
                    Some(c) if !e.message().contains(&c) => format!("{}: {c}", e.message()),
                    _ => e.message().to_string(),
                };
                tracing::warn!(code = ?e.code(), control = %url, "control link: {why}");
                // Another replica next: the one a follower names as the leader, if this node
                // knows it, else the next in the list.
                at = addresses
                    .iter()
                    .position(|a| a != &url && e.message().contains(a.as_str()))
                    .unwrap_or(at + 1);
                if addresses.len() > 1 && e.message().contains("does not lead") {
                    backoff = MIN_BACKOFF;
                }
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = MIN_BACKOFF;
        }
        let jitter = Duration::from_millis(u64::from(started.elapsed().subsec_nanos()) % 100);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn out(body: Out) -> pb::NodeMessage {
    pb::NodeMessage { body: Some(body) }
}

/// The backup positions that changed since the last heartbeat.
fn replication_changes(node: &Node) -> Vec<pb::Replication> {
    let Some(b) = &node.backup else {
        return Vec::new();
    };
    b.take_changes()
        .into_iter()
        .map(|(org, shipped, unshipped_since)| pb::Replication {
            org: org.to_string(),
            generation: shipped.as_ref().map_or(0, |s| s.generation),
            lsn: shipped.as_ref().map_or(0, |s| s.lsn),
            shipped_ms: shipped.as_ref().map_or(0, |s| s.shipped_ms),
            unshipped_since_ms: unshipped_since.unwrap_or(0),
        })
        .collect()
}

/// Each org's requests and failures since the last heartbeat (then reset).
fn tenant_health(node: &Node) -> Vec<pb::TenantHealth> {
    node.health
        .take()
        .into_iter()
        .map(|(org, c)| pb::TenantHealth {
            org: org.to_string(),
            requests: c.requests,
            server_errors: c.server_errors,
            sqlite_errors: c.sqlite_errors,
            signed_in_requests: c.signed_in,
        })
        .collect()
}

fn state_report(node: &Node) -> pb::StateReport {
    pb::StateReport {
        tenants: node
            .state
            .all_hosted()
            .into_iter()
            .map(|(org, h)| pb::HostedTenant {
                // A branch's size, for `branch list` (one stat; other orgs are not looked at).
                bytes: if org.is_branch() {
                    std::fs::metadata(node.tenants.path(&org)).map_or(0, |m| m.len())
                } else {
                    0
                },
                org: org.to_string(),
                generation: h.generation.get(),
                schema_version: h.schema_version,
                schema_fingerprint: h.schema_fingerprint,
            })
            .collect(),
    }
}

async fn session(
    node: &Arc<Node>,
    url: &str,
    shutdown: &CancellationToken,
) -> Result<(), tonic::Status> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| tonic::Status::invalid_argument(format!("control_url: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        let tls = control_tls(&node.config.control_tls)
            .map_err(|e| tonic::Status::invalid_argument(format!("control_tls: {e:#}")))?;
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| tonic::Status::invalid_argument(format!("control_tls: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("dial {url}: {}", with_causes(&e))))?;
    let mut client = NodeControlClient::new(channel);

    let (tx, rx) = mpsc::channel::<pb::NodeMessage>(1_024);
    let register = pb::Register {
        node_id: node.config.id.to_string(),
        region: node.config.region.to_string(),
        public_url: node.public_url.clone(),
        capacity: node.config.capacity,
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let _ = tx.send(out(Out::Register(register))).await;
    let n = node.clone();
    let report = tokio::task::spawn_blocking(move || state_report(&n))
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let _ = tx.send(out(Out::State(report))).await;

    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", node.config.join_token)
        .parse()
        .map_err(|_| tonic::Status::invalid_argument("join token is not a valid header value"))?;
    request
        .metadata_mut()
        .insert(hemvist_proto::AUTHORIZATION, bearer);
    let mut inbound = client.session(request).await?.into_inner();

    // Commands run off the stream's task so heartbeats keep flowing, in lanes: one org's
    // commands one at a time, in order; other orgs' meanwhile in other lanes, so one org's long
    // step (a move finishing, a fence shipping) holds up no other org's rollback or host.
    let (lanes, workers): (Vec<_>, Vec<_>) = (0..COMMAND_LANES)
        .map(|_| {
            let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<pb::Command>();
            let (node, tx) = (node.clone(), tx.clone());
            let worker = tokio::spawn(async move {
                while let Some(cmd) = cmd_rx.recv().await {
                    let n = node.clone();
                    let ack = tokio::task::spawn_blocking(move || apply(&n, cmd))
                        .await
                        .unwrap_or_else(|e| pb::CommandAck {
                            ok: false,
                            code: ErrorKind::Internal.to_wire() as i32,
                            message: format!("command panicked: {e}"),
                            ..Default::default()
                        });
                    if tx.send(out(Out::Ack(ack))).await.is_err() {
                        break;
                    }
                }
            });
            (cmd_tx, worker)
        })
        .unzip();

    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    // The trash is emptied only while connected, so every deletion reaches the audit log.
    let grace = Duration::from_secs(node.config.trash_grace_secs);
    let mut purge =
        tokio::time::interval((grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600)));
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = purge.tick() => {
                let tenants = node.tenants.clone();
                let purged = tokio::task::spawn_blocking(move || {
                    tenants.purge_trash(grace, crate::clock::now_ms())
                })
                .await
                .unwrap_or_default();
                for p in purged {
                    tracing::info!(org = %p.org, label = %p.label, "purged a dropped tenant from trash");
                    let msg = pb::TrashPurged {
                        org: p.org.to_string(),
                        label: p.label,
                        dropped_ms: p.dropped_ms,
                    };
                    if tx.send(out(Out::Purged(msg))).await.is_err() {
                        break;
                    }
                }
            }
            _ = node.branches.asked.notified() => {
                for (org, user) in node.branches.take_keepalives() {
                    let msg = pb::BranchKeepalive { org: org.to_string(), user };
                    if tx.send(out(Out::Keepalive(msg))).await.is_err() {
                        break;
                    }
                }
            }
            _ = node.moves_in.reported.notified() => {
                for p in node.moves_in.take_progress() {
                    let (code, message) = match &p.error {
                        Some(e) => (e.kind.to_wire() as i32, e.message.clone()),
                        None => (0, String::new()),
                    };
                    let msg = pb::MoveProgress {
                        operation: p.operation,
                        org: p.org.to_string(),
                        state: p.state.to_string(),
                        lsn: p.lsn,
                        bytes: p.bytes,
                        code,
                        message,
                    };
                    if tx.send(out(Out::MoveProgress(msg))).await.is_err() {
                        break;
                    }
                }
            }
            _ = heartbeat.tick() => {
                seq += 1;
                in_flight.insert(seq, Instant::now());
                in_flight.retain(|s, _| *s + 60 > seq);
                let replication = replication_changes(node);
                // Taken here: counts in a heartbeat that is then not sent are lost (one interval).
                let health = tenant_health(node);
                let beat = pb::Heartbeat {
                    seq,
                    replication,
                    health,
                    // Unreadable free space (the disk's own "unknown") is not reported.
                    disk_free_bytes: match node.disk.free_bytes() {
                        u64::MAX => 0,
                        free => free,
                    },
                    disk_low: node.disk.is_low(),
                };
                if tx.send(out(Out::Heartbeat(beat))).await.is_err() {
                    break Err(tonic::Status::unavailable("outbound stream closed"));
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(pb::ControlMessage { body: Some(body) })) => match body {
                    In::Registered(r) => {
                        node.metrics.link_connects.inc();
                        node.metrics.link_up.store(1, Ordering::Relaxed);
                        let every = Duration::from_millis(r.heartbeat_interval_ms.clamp(100, 60_000));
                        heartbeat = tokio::time::interval(every);
                        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        tracing::info!(control = %url, "registered with the control plane");
                        if let Some(b) = &node.backup {
                            b.report_all();
                            if !r.system_id.is_empty() {
                                let (b, id) = (b.clone(), r.system_id.clone());
                                tokio::spawn(async move { b.claim_store(&id).await });
                            }
                        }
                    }
                    In::HeartbeatAck(ack) => {
                        if let Some(sent) = in_flight.remove(&ack.seq) {
                            node.gate.lease.renew(sent, Duration::from_millis(ack.lease_ttl_ms));
                            let sent_ms = crate::clock::now_ms() - sent.elapsed().as_millis() as i64;
                            let ttl = ack.lease_ttl_ms as i64;
                            node.state.record_lease(sent_ms + ttl, ttl);
                        }
                    }
                    In::Command(cmd) => {
                        let _ = lanes[lane_of(&cmd)].send(cmd);
                    }
                    In::DataKeys(keys) => take_keys(node, keys),
                    In::Branches(b) => take_branches(node, b),
                    In::Placements(update) => {
                        let n = node.clone();
                        let applied = tokio::task::spawn_blocking(move || apply_placements(&n, update)).await;
                        node.gate.wake();
                        match applied {
                            Ok(Ok(count)) => tracing::debug!(count, "placements updated"),
                            Ok(Err(e)) => tracing::warn!(error = %e, "bad placement update"),
                            Err(e) => tracing::warn!(error = %e, "placement update panicked"),
                        }
                    }
                },
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        }
    };
    drop(lanes);
    for w in workers {
        w.abort();
    }
    result
}

/// An error with the chain of its causes: tonic's own message is often only "transport error"
/// or "operation was canceled", while the cause (a certificate the node cannot check, one the
/// control plane asked for and did not get) is what the operator can act on.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut why = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !why.contains(&s_text) {
            why.push_str(&format!(": {s_text}"));
        }
        source = s.source();
    }
    why
}

/// Keeps the data keys the control plane sent, in memory (see `state`); a key for an org not
/// hosted here is ignored.
fn take_keys(node: &Node, keys: pb::DataKeys) {
    let (mut taken, mut bad) = (0usize, 0usize);
    for k in keys.keys {
        if k.data_key.is_empty() {
            // Revoked: the control plane destroyed the org's key; forget ours too.
            if let Ok(org) = OrgId::try_from(k.org) {
                node.state.forget_data_key(&org);
                tracing::warn!(%org, "data key revoked by the control plane; its backups stop");
            }
            continue;
        }
        match (
            OrgId::try_from(k.org),
            hemvist_proto::DataKey::from_hex(&k.data_key),
        ) {
            (Ok(org), Ok(key)) => {
                if node.state.set_data_key(&org, key) {
                    taken += 1;
                }
            }
            _ => bad += 1,
        }
    }
    if bad > 0 {
        tracing::warn!(bad, "data keys that do not parse were ignored");
    }
    tracing::debug!(taken, "data keys received");
}

/// How the node checks the control plane's certificate (its CA, or the system's roots) and,
/// when configured, proves its own.
fn control_tls(c: &crate::config::ControlTls) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    use anyhow::Context;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new();
    tls = match &c.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(
            std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?,
        )),
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&c.cert, &c.key) {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).with_context(|| format!("read {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("read {}", key.display()))?,
        ));
    }
    Ok(tls)
}

/// The lane of a command's org (a command of no known kind goes to the first).
fn lane_of(cmd: &pb::Command) -> usize {
    use std::hash::{Hash, Hasher};
    let org = match &cmd.action {
        Some(Action::Host(a)) => a.org.as_str(),
        Some(Action::Drop(a)) => a.org.as_str(),
        Some(Action::AddUser(a)) => a.org.as_str(),
        Some(Action::MoveOut(a)) => a.org.as_str(),
        Some(Action::MoveIn(a)) => a.org.as_str(),
        Some(Action::Fence(a)) => a.org.as_str(),
        Some(Action::FinishMove(a)) => a.org.as_str(),
        Some(Action::EndMove(a)) => a.org.as_str(),
        Some(Action::Migrate(a)) => a.org.as_str(),
        Some(Action::Destroy(a)) => a.org.as_str(),
        Some(Action::Probe(a)) => a.org.as_str(),
        None => "",
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    org.hash(&mut h);
    (h.finish() as usize) % COMMAND_LANES
}

fn apply(node: &Node, cmd: pb::Command) -> pb::CommandAck {
    let id = cmd.id.clone();
    let _span = tracing::info_span!("command", id = %id, node = %node.config.id).entered();
    // A `migrate` is answered with its report, done or failed.
    let mut migrated = None;
    let result = match cmd.action {
        Some(Action::Host(h)) => host(node, h).map(Done::hosted),
        Some(Action::Drop(d)) => drop_tenant(node, d).map(|_| Done::default()),
        Some(Action::Destroy(d)) => destroy_tenant(node, d).map(|_| Done::default()),
        Some(Action::Probe(p)) => probe_store(node, p).map(Done::probed),
        Some(Action::AddUser(u)) => add_user(node, u).map(|_| Done::default()),
        Some(Action::MoveOut(m)) => move_out(node, &cmd.operation, m).map(|_| Done::default()),
        Some(Action::MoveIn(m)) => move_in(node, &cmd.operation, m).map(|_| Done::default()),
        Some(Action::Fence(f)) => fence(node, &cmd.operation, f).map(Done::moved),
        Some(Action::FinishMove(f)) => finish_move(node, &cmd.operation, f).map(Done::moved),
        Some(Action::EndMove(e)) => end_move(node, &cmd.operation, e).map(|_| Done::default()),
        Some(Action::Migrate(m)) => {
            let (result, report) = migrate(node, &id, m);
            migrated = Some(report);
            result.map(Done::hosted)
        }
        // A kind added to the contract after this node was built decodes as no action: refuse
        // it by name and tell the control plane, never guess what it meant.
        None => Err(HemvistError::invalid(format!(
            "command {id} is of a kind this node does not know (is the node older than the \
             control plane?); refused"
        ))),
    };
    match result {
        Ok(done) => {
            node.metrics.commands_ok.inc();
            pb::CommandAck {
                id,
                ok: true,
                code: 0,
                message: String::new(),
                tenant: done.tenant,
                moved: done.moved,
                migrated,
                probed: done.probed,
            }
        }
        Err(e) => {
            node.metrics.commands_failed.inc();
            tracing::warn!(command = %id, error = %e, "refused command");
            pb::CommandAck {
                id,
                ok: false,
                code: e.kind.to_wire() as i32,
                message: e.message,
                tenant: None,
                moved: None,
                migrated,
                probed: None,
            }
        }
    }
}

/// What a command did, for its ack.
#[derive(Default)]
struct Done {
    tenant: Option<pb::HostedTenant>,
    moved: Option<pb::MoveReport>,
    probed: Option<pb::ProbeReport>,
}

impl Done {
    fn hosted(t: pb::HostedTenant) -> Done {
        Done {
            tenant: Some(t),
            ..Done::default()
        }
    }

    fn probed(p: pb::ProbeReport) -> Done {
        Done {
            probed: Some(p),
            ..Done::default()
        }
    }

    fn moved((lsn, bytes): (u64, u64)) -> Done {
        Done {
            moved: Some(pb::MoveReport { lsn, bytes }),
            ..Done::default()
        }
    }
}

fn operation_of(id: &str) -> Result<&str, HemvistError> {
    if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()) {
        return Err(HemvistError::invalid(
            "a move's command must name its operation",
        ));
    }
    Ok(id)
}

fn data_key(hex: &str) -> Result<hemvist_proto::DataKey, HemvistError> {
    hemvist_proto::DataKey::from_hex(hex)
        .map_err(|e| HemvistError::invalid(format!("data key: {e}")))
}

fn move_out(node: &Node, operation: &str, m: pb::MoveOut) -> Result<(), HemvistError> {
    let org = OrgId::try_from(m.org)?;
    node.moves_out.open(
        &node.state,
        &org,
        Generation::new(m.generation)?,
        operation_of(operation)?,
        NodeId::try_from(m.target_node)?,
        &m.secret,
    )?;
    // The copy starts from the org's backups: one never written since it was hosted (or whose
    // first snapshot was missed) gets a pass now, so the target finds something to copy.
    if let Some(b) = &node.backup {
        b.mark_dirty(&org);
    }
    Ok(())
}

fn move_in(node: &Node, operation: &str, m: pb::MoveIn) -> Result<(), HemvistError> {
    if !m
        .allowed_regions
        .iter()
        .any(|r| r == node.config.region.as_str())
    {
        return Err(HemvistError::new(
            ErrorKind::Residency,
            format!(
                "org {} may not be stored in region {}",
                m.org, node.config.region
            ),
        ));
    }
    if !(m.source_url.starts_with("http://") || m.source_url.starts_with("https://")) {
        return Err(HemvistError::invalid(
            "a move's source must be an http(s) URL",
        ));
    }
    node.moves_in.start(crate::moves::target::CopyRequest {
        operation: operation_of(operation)?.to_string(),
        org: OrgId::try_from(m.org)?,
        generation: Generation::new(m.generation)?,
        source_url: m.source_url,
        secret: m.secret,
        data_key: data_key(&m.data_key)?,
    })
}

fn fence(node: &Node, operation: &str, f: pb::Fence) -> Result<(u64, u64), HemvistError> {
    let org = OrgId::try_from(f.org)?;
    let position = crate::moves::source::fence(
        &node.moves_out,
        &node.state,
        &node.tenants,
        node.backup.as_ref(),
        &org,
        Generation::new(f.generation)?,
        operation_of(operation)?,
    )?;
    Ok((position.lsn, 0))
}

fn finish_move(
    node: &Node,
    operation: &str,
    f: pb::FinishMove,
) -> Result<(u64, u64), HemvistError> {
    let org = OrgId::try_from(f.org)?;
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| HemvistError::internal("finishing a move needs the runtime"))?;
    handle.block_on(node.moves_in.finish(operation_of(operation)?, &org, f.lsn))
}

fn end_move(node: &Node, operation: &str, e: pb::EndMove) -> Result<(), HemvistError> {
    let org = OrgId::try_from(e.org)?;
    let operation = operation_of(operation)?;
    crate::failpoints::check("node.move.end")?;
    node.moves_in.end(&org, e.rolled_back)?;
    if node
        .moves_out
        .end(&node.state, &org, operation, e.rolled_back)?
    {
        node.gate.wake();
        tracing::info!(%org, operation, "move rolled back: fence lifted, writes go ahead");
    }
    Ok(())
}

/// A migration file as the control plane sent it, checked: a well-formed `NNNN_name.sql` whose
/// checksum is the SHA-256 of its SQL and whose check is its `-- check:` line (so what runs is
/// exactly the file the checksum names).
fn migration_file(m: pb::Migration) -> Result<MigrationFile, HemvistError> {
    let file = MigrationFile::parse(
        &format!("{:04}_{}.sql", m.version, m.name),
        m.sql.as_bytes(),
    )?;
    if !m.checksum.eq_ignore_ascii_case(&file.checksum) {
        return Err(HemvistError::invalid(format!(
            "migration {}: the checksum sent ({}) is not its SQL's ({}); refused",
            file.file_name(),
            m.checksum,
            file.checksum
        )));
    }
    if file.check.as_deref().unwrap_or("") != m.check.trim() {
        return Err(HemvistError::invalid(format!(
            "migration {}: the check sent ({:?}) is not its file's ({:?}); refused",
            file.file_name(),
            m.check,
            file.check.as_deref().unwrap_or("")
        )));
    }
    Ok(file)
}

/// The version and every file up to it, checked (see `Schema::new`).
fn schema(version: u32, files: Vec<pb::Migration>) -> Result<Schema, HemvistError> {
    let files = files
        .into_iter()
        .map(migration_file)
        .collect::<Result<Vec<_>, _>>()?;
    Schema::new(version, files)
}

fn migrate(
    node: &Node,
    command: &str,
    m: pb::MigrateTenant,
) -> (Result<pb::HostedTenant, HemvistError>, pb::MigrateReport) {
    let org = OrgId::try_from(m.org).map_err(HemvistError::from);
    let req = org.clone().and_then(|org| {
        Ok(MigrateRequest {
            command: command.to_string(),
            org,
            generation: Generation::new(m.generation)?,
            schema: schema(m.target_version, m.migrations)?,
            dry_run: m.dry_run,
        })
    });
    let done = match req {
        Ok(req) => node.migrator.migrate(&req),
        Err(e) => node.migrator.refused(org.as_ref().ok(), e),
    };
    let r = done.report;
    let failed = r.failed.unwrap_or_default();
    let report = pb::MigrateReport {
        from_version: r.from_version,
        to_version: r.to_version,
        restore_generation: r.restore.generation,
        restore_lsn: r.restore.lsn,
        restore_ms: r.restore.ms,
        failed_version: failed.version,
        failed_name: failed.name,
        failed_statement: failed.statement,
        error: match &done.outcome {
            Err(e) if failed.error.is_empty() => e.message.clone(),
            _ => failed.error,
        },
        micros: r.micros,
        fingerprint: r.fingerprint,
    };
    let tenant = done.outcome.and_then(|t| {
        let org = org?;
        Ok(pb::HostedTenant {
            generation: node
                .state
                .hosted(&org)
                .map_or(m.generation, |h| h.generation.get()),
            org: org.to_string(),
            schema_version: t.version,
            schema_fingerprint: t.fingerprint,
            bytes: 0,
        })
    });
    (tenant, report)
}

fn host(node: &Node, h: pb::HostTenant) -> Result<pb::HostedTenant, HemvistError> {
    // Any of them set: a rollback, never answered by hosting the local file (the migrated
    // tenant); one with no generation is refused as such.
    let rollback = (h.restore_generation != 0 || h.restore_lsn != 0 || h.restore_at_ms != 0)
        .then_some(RestorePoint {
            generation: h.restore_generation,
            lsn: h.restore_lsn,
            ms: h.restore_at_ms,
        });
    let req = HostRequest {
        org: OrgId::try_from(h.org)?,
        generation: Generation::new(h.generation)?,
        name: h.name.chars().take(200).collect(),
        allowed_regions: h.allowed_regions,
        sync: h.durability == "sync",
        data_key: if h.data_key.is_empty() {
            None
        } else {
            Some(data_key(&h.data_key)?)
        },
        expect_backup: h.expect_backup,
        moved_here: h.moved_here,
        schema: schema(h.schema_version, h.schema)?,
    };
    let bar = crate::hosting::RestoreBar {
        known: (h.known_generation > 0).then_some(crate::backup::restore::Known {
            generation: h.known_generation,
            lsn: h.known_lsn,
            reported_ms: h.known_reported_ms,
        }),
        accept_older: h.accept_older,
    };
    let branch = match h.branch_of {
        Some(b) if rollback.is_none() => Some(crate::hosting::BranchSource {
            parent: OrgId::try_from(b.parent)?,
            parent_key: data_key(&b.parent_data_key)?,
            at_ms: b.at_ms,
            mask: hemvist_proto::mask::Mask::parse(&b.mask)?,
            users: match b.users.as_str() {
                "" | "copy" => "copy".to_string(),
                "none" => "none".to_string(),
                other => {
                    return Err(HemvistError::invalid(format!(
                        "branch users {:?}: copy or none",
                        other.chars().take(20).collect::<String>()
                    )))
                }
            },
        }),
        Some(_) => {
            return Err(HemvistError::invalid(
                "a host is a rollback or a branch, not both",
            ))
        }
        None => None,
    };
    let hosted = match (&rollback, &branch) {
        (Some(to), _) => node.hosting.roll_back(&req, to)?,
        (None, Some(b)) => node.hosting.host_branch(&req, b)?,
        (None, None) => node.hosting.host_with(&req, &bar)?,
    };
    Ok(pb::HostedTenant {
        bytes: if req.org.is_branch() {
            std::fs::metadata(node.tenants.path(&req.org)).map_or(0, |m| m.len())
        } else {
            0
        },
        org: req.org.to_string(),
        generation: hosted.generation.get(),
        schema_version: hosted.schema_version,
        schema_fingerprint: hosted.schema_fingerprint,
    })
}

fn add_user(node: &Node, u: pb::AddUser) -> Result<(), HemvistError> {
    let org = OrgId::try_from(u.org)?;
    let generation = Generation::new(u.generation)?;
    match node.state.hosted(&org) {
        Some(h) if h.generation == generation => {}
        _ => {
            return Err(HemvistError::new(
                ErrorKind::Fenced,
                format!("org {org} is not hosted here at {generation}"),
            ))
        }
    }
    crate::users::add_user(&node.writer, &org, &u.email, &u.name, &u.password_hash).map(|_| ())
}

fn destroy_tenant(node: &Node, d: pb::DestroyTenant) -> Result<(), HemvistError> {
    let org = OrgId::try_from(d.org)?;
    node.hosting
        .destroy_tenant(&org, Generation::new(d.generation)?)?;
    node.branches.apply(false, Vec::new(), vec![org]);
    Ok(())
}

/// What this region's store holds of the org from a generation on: read only, so asking again
/// is harmless; a store that cannot be listed is a retryable error, never "nothing".
fn probe_store(node: &Node, p: pb::ProbeStore) -> Result<pb::ProbeReport, HemvistError> {
    let org = OrgId::try_from(p.org)?;
    let generation = Generation::new(p.generation)?;
    let Some(b) = &node.backup else {
        return Err(HemvistError::invalid(format!(
            "probe of {org}: this node has no [backup], so no store to look in"
        )));
    };
    if b.store_is_foreign() {
        return Err(HemvistError::unavailable(format!(
            "probe of {org}: the backup store belongs to another hemvist system"
        )));
    }
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| HemvistError::internal("a probe needs the runtime"))?;
    let catalog = handle
        .block_on(crate::backup::restore::catalog(&b.store, &org))
        .map_err(|e| {
            HemvistError::unavailable(format!("probe of {org}: its store cannot be read: {e:#}"))
        })?;
    let held = catalog.held_from(generation.get());
    tracing::info!(%org, %generation, objects = held.objects, snapshots = held.snapshots, newest = ?held.newest,
        "probed the region's store");
    let (newest_generation, newest_lsn) = held.newest.unwrap_or((0, 0));
    Ok(pb::ProbeReport {
        objects: held.objects,
        newest_generation,
        newest_lsn,
        snapshots: held.snapshots,
    })
}

fn take_branches(node: &Node, b: pb::BranchLabels) {
    let mut labels = Vec::with_capacity(b.labels.len());
    for l in b.labels {
        let (Ok(org), Ok(parent)) = (OrgId::parse(&l.org), OrgId::parse(&l.parent)) else {
            tracing::warn!("a branch label with a bad org id; ignored");
            continue;
        };
        labels.push((
            org,
            crate::branches::Label {
                parent,
                at_ms: l.at_ms,
                expires_ms: l.expires_ms,
                warn_from_ms: l.warn_from_ms,
                keepalive_on_use: l.keepalive_on_use,
            },
        ));
    }
    let removed = b
        .removed
        .iter()
        .filter_map(|o| OrgId::parse(o).ok())
        .collect();
    node.branches.apply(b.full, labels, removed);
}

fn drop_tenant(node: &Node, d: pb::DropTenant) -> Result<(), HemvistError> {
    node.hosting
        .drop_tenant(&OrgId::try_from(d.org)?, Generation::new(d.generation)?)
}

fn apply_placements(node: &Node, update: pb::PlacementUpdate) -> Result<usize, HemvistError> {
    let mut placements = Vec::with_capacity(update.placements.len());
    for p in update.placements {
        placements.push((
            OrgId::try_from(p.org)?,
            Placement {
                region: RegionId::try_from(p.region)?,
                node_id: NodeId::try_from(p.node_id)?,
                node_url: p.node_url,
                generation: Generation::new(p.generation)?,
            },
        ));
    }
    let removed = update
        .removed
        .into_iter()
        .map(OrgId::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let count = placements.len();
    node.state
        .apply_placements(update.full, placements, removed)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &std::path::Path) -> Node {
        let config = crate::NodeConfig {
            id: NodeId::parse("eu-north-1").unwrap(),
            region: RegionId::parse("eu-north").unwrap(),
            control_url: "http://127.0.0.1:1".into(),
            control_urls: Vec::new(),
            join_token: "x".repeat(20),
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: None,
            control_tls: Default::default(),
            insecure: false,
            tls: None,
            limits: Default::default(),
            signin: Default::default(),
            data_dir: dir.to_path_buf(),
            capacity: 10,
            max_open_tenants: 2,
            idle_close_ms: 60_000,
            trash_grace_secs: 7 * 24 * 3600,
            idempotency_ttl_secs: 24 * 3600,
            disk_headroom_mib: 0,
            backup: None,
        };
        Node::open(config, "http://127.0.0.1:9".into()).unwrap()
    }

    #[test]
    fn a_command_of_an_unknown_kind_is_refused_and_reported() {
        // `Command { id: "c-1", <field 99>: "x" }`: a kind from a newer contract.
        let mut wire = vec![0x0a, 3];
        wire.extend_from_slice(b"c-1");
        wire.extend_from_slice(&[0x9a, 0x06, 1, b'x']);
        let cmd = <pb::Command as prost::Message>::decode(wire.as_slice()).unwrap();
        assert!(cmd.action.is_none());

        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path());
        let ack = apply(&node, cmd);
        assert!(!ack.ok);
        assert_eq!(ack.id, "c-1");
        assert_eq!(ack.code, ErrorKind::InvalidArgument.to_wire() as i32);
        assert!(ack.message.contains("does not know"), "{}", ack.message);
        assert_eq!(node.metrics.commands_failed.get(), 1);
        assert_eq!(node.state.hosted_count(), 0, "nothing was hosted");
    }

    fn files(n: usize) -> Vec<pb::Migration> {
        hemvist_proto::migration::builtin()
            .into_iter()
            .take(n)
            .map(|f| pb::Migration {
                version: f.version,
                name: f.name,
                sql: f.sql,
                checksum: f.checksum,
                check: f.check.unwrap_or_default(),
            })
            .collect()
    }

    fn command(id: &str, action: Action) -> pb::Command {
        pb::Command {
            id: id.into(),
            action: Some(action),
            operation: String::new(),
        }
    }

    fn migrate(target: u32, migrations: Vec<pb::Migration>) -> Action {
        Action::Migrate(pb::MigrateTenant {
            org: "acme".into(),
            generation: 1,
            target_version: target,
            migrations,
            dry_run: false,
        })
    }

    #[test]
    fn a_host_creates_at_the_version_sent_and_a_migrate_is_always_answered_with_its_report() {
        let dir = tempfile::tempdir().unwrap();
        let node = node(dir.path());
        let host = pb::HostTenant {
            org: "acme".into(),
            generation: 1,
            name: "Acme".into(),
            allowed_regions: vec!["eu-north".into()],
            schema_version: 3,
            schema: files(3),
            ..Default::default()
        };
        let ack = apply(&node, command("h-1", Action::Host(host.clone())));
        assert!(ack.ok, "{}", ack.message);
        let tenant = ack.tenant.unwrap();
        assert_eq!(tenant.schema_version, 3);
        let at3 = crate::tenants::schema::Schema::new(
            3,
            hemvist_proto::migration::builtin()
                .into_iter()
                .take(3)
                .collect(),
        )
        .unwrap();
        assert_eq!(tenant.schema_fingerprint, at3.fingerprint());
        assert_eq!(
            state_report(&node).tenants[0].schema_fingerprint,
            at3.fingerprint()
        );

        // A bad list is refused, with a report all the same.
        let mut gap = files(5);
        gap.remove(1);
        let ack = apply(&node, command("m-1", migrate(5, gap)));
        assert!(!ack.ok);
        assert_eq!(ack.code, ErrorKind::InvalidArgument.to_wire() as i32);
        let report = ack.migrated.unwrap();
        assert_eq!((report.from_version, report.to_version), (3, 3));
        assert!(report.error.contains("without a gap"), "{}", report.error);
        // A file whose checksum is not its SQL's.
        let mut forged = files(5);
        forged[4].sql.push_str("\nDROP TABLE contacts;\n");
        let ack = apply(&node, command("m-2", migrate(5, forged)));
        assert!(!ack.ok && ack.migrated.is_some());
        assert!(
            ack.message.contains("0005_idempotency_keys.sql"),
            "{}",
            ack.message
        );

        node.gate
            .lease
            .renew(std::time::Instant::now(), Duration::from_secs(60));
        let ack = apply(&node, command("m-3", migrate(5, files(5))));
        assert!(ack.ok, "{}", ack.message);
        let report = ack.migrated.unwrap();
        assert_eq!((report.from_version, report.to_version), (3, 5));
        assert_eq!(report.restore_generation, 1);
        assert_eq!(ack.tenant.unwrap().schema_version, 5);
        assert_eq!(state_report(&node).tenants[0].schema_version, 5);

        // Hosting it again checks it and reports its own version, without migrating.
        let ack = apply(&node, command("h-2", Action::Host(host.clone())));
        assert_eq!(ack.tenant.unwrap().schema_version, 5);

        // A rollback needs backups to restore from: refused, not answered with the local file.
        let rollback = pb::HostTenant {
            generation: 2,
            restore_generation: 1,
            restore_lsn: 7,
            ..host.clone()
        };
        let ack = apply(&node, command("h-3", Action::Host(rollback)));
        assert!(
            !ack.ok && ack.message.contains("rolled back") && ack.message.contains("[backup]"),
            "{}",
            ack.message
        );
        assert_eq!(ack.code, ErrorKind::Conflict.to_wire() as i32);
        // One without a restore point's generation is no rollback either.
        let nameless = pb::HostTenant {
            generation: 2,
            restore_lsn: 7,
            ..host
        };
        let ack = apply(&node, command("h-4", Action::Host(nameless)));
        assert_eq!(ack.code, ErrorKind::InvalidArgument.to_wire() as i32);
        assert_eq!(
            node.state
                .hosted(&OrgId::parse("acme").unwrap())
                .unwrap()
                .generation
                .get(),
            1
        );
    }
}
