//! Makes the nodes match the desired placement: for every connected node, each org placed on it
//! at a generation it does not yet hold gets a `host` command, and each org it holds that is now
//! placed elsewhere at a newer generation gets a `drop`. Commands are persisted before they are
//! sent and keep their id across re-sends, so a node applies each at most once in effect.
//!
//! An org a node reports that the control plane does not know is left alone and logged: a
//! control-plane store restored from an old backup must never make nodes delete data.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hemvist_proto::pb::{self, command::Action, control_message::Body};
use hemvist_proto::{Generation, HemvistError, NodeId, OrgId};
use tokio_util::sync::CancellationToken;

use crate::persistence::{now_ms, CommandKind, CommandRecord};
use crate::Control;

const TICK: Duration = Duration::from_secs(1);
/// Every connected node is looked at this often even if nothing says it changed.
const FULL_PASS: Duration = Duration::from_secs(30);

pub async fn run(control: Arc<Control>, shutdown: CancellationToken) {
    let mut last_full = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = control.wake_reconciler.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let full = last_full.elapsed() >= FULL_PASS;
        if full {
            last_full = std::time::Instant::now();
        }
        let c = control.clone();
        let pass = tokio::task::spawn_blocking(move || reconcile_pass(&c, full)).await;
        match pass {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reconcile pass failed; will retry"),
            Err(e) => tracing::error!(error = %e, "reconcile pass panicked; will retry"),
        }
    }
}

/// Looks at the nodes whose state changed, that have unfinished commands, or (on a full pass)
/// all of them, so a quiet fleet of 100k tenants costs one small query a tick.
fn reconcile_pass(control: &Control, full: bool) -> Result<(), HemvistError> {
    for node in control.hub.take_resync() {
        resync_placements(control, &node)?;
    }
    let mut due = control.take_dirty();
    due.extend(control.store.nodes_with_open_commands()?);
    for (node, _region, epoch) in control.hub.connected() {
        if full || due.contains(&node) {
            if let Err(e) = reconcile_node(control, &node, epoch) {
                control.reconcile_soon(&node);
                return Err(e);
            }
        }
    }
    Ok(())
}

fn reconcile_node(control: &Control, node: &NodeId, epoch: u64) -> Result<(), HemvistError> {
    let desired = control.store.orgs_on_node(node)?;
    let observed: HashMap<OrgId, Generation> =
        control.store.observed_on_node(node)?.into_iter().collect();
    let open: HashMap<String, CommandRecord> = control
        .store
        .open_commands(node)?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    let desired_ids: HashSet<&OrgId> = desired.iter().map(|o| &o.id).collect();

    for org in &desired {
        if observed.get(&org.id) == Some(&org.generation) {
            continue;
        }
        let cmd = control
            .store
            .ensure_command(node, &org.id, CommandKind::Host, org.generation)?;
        if cmd.state == "failed" {
            continue;
        }
        let allowed_regions = org
            .residency
            .allowed_regions(&control.config.regions)
            .into_iter()
            .map(|r| r.id.to_string())
            .collect();
        let action = Action::Host(pb::HostTenant {
            org: org.id.to_string(),
            generation: org.generation.get(),
            name: org.name.clone(),
            allowed_regions,
            durability: org.durability.clone(),
            data_key: org.data_key.clone().unwrap_or_default(),
        });
        send_if_due(
            control,
            node,
            epoch,
            &cmd,
            open.contains_key(&cmd.id),
            action,
        )?;
    }

    for cmd in open.values().filter(|c| c.kind == CommandKind::AddUser) {
        let Some(p) = cmd
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str::<crate::users::UserPayload>(p).ok())
        else {
            continue;
        };
        let action = Action::AddUser(pb::AddUser {
            org: cmd.org.to_string(),
            generation: cmd.generation.get(),
            email: p.email,
            name: p.name,
            password_hash: p.password_hash,
        });
        send_if_due(control, node, epoch, cmd, true, action)?;
    }

    for (org, generation) in &observed {
        if desired_ids.contains(org) {
            continue;
        }
        match control.store.org(org)? {
            Some(placed) if placed.generation > *generation => {
                let cmd =
                    control
                        .store
                        .ensure_command(node, org, CommandKind::Drop, *generation)?;
                if cmd.state == "failed" {
                    continue;
                }
                let action = Action::Drop(pb::DropTenant {
                    org: org.to_string(),
                    generation: generation.get(),
                });
                send_if_due(
                    control,
                    node,
                    epoch,
                    &cmd,
                    open.contains_key(&cmd.id),
                    action,
                )?;
            }
            Some(_) => {}
            None => {
                tracing::warn!(%node, %org, "node hosts an org the control plane does not know; leaving it alone")
            }
        }
    }
    Ok(())
}

fn send_if_due(
    control: &Control,
    node: &NodeId,
    epoch: u64,
    cmd: &CommandRecord,
    is_open: bool,
    action: Action,
) -> Result<(), HemvistError> {
    let sent_this_session = control.sent_in_session(epoch, &cmd.id);
    let stale = now_ms() - cmd.updated_ms > control.config.command_retry_ms as i64;
    let due = match cmd.state.as_str() {
        "pending" => true,
        // Unanswered, or answered "try again": again after a while, or at once on a new session.
        "sent" | "done" => !is_open || !sent_this_session || stale,
        "retry" => stale,
        _ => false,
    };
    if !due {
        return Ok(());
    }
    let sent = control.hub.send(
        node,
        Body::Command(pb::Command {
            id: cmd.id.clone(),
            action: Some(action),
        }),
    );
    if sent {
        tracing::info!(%node, command = %cmd.id, attempt = cmd.attempts + 1, "sent command");
        control.store.mark_command_sent(&cmd.id)?;
        control.note_sent(epoch, &cmd.id);
    }
    Ok(())
}

/// Sends a node the full placement list again, after it missed an update.
fn resync_placements(control: &Control, node: &NodeId) -> Result<(), HemvistError> {
    let all = control.placements()?;
    tracing::info!(%node, placements = all.len(), "resending all placements");
    let mut first = true;
    for chunk in all.chunks(crate::node_api::PLACEMENT_CHUNK) {
        let update = Body::Placements(pb::PlacementUpdate {
            full: first,
            placements: chunk.to_vec(),
            removed: vec![],
        });
        if !control.hub.send(node, update) {
            control.hub.mark_resync(node);
            break;
        }
        first = false;
    }
    Ok(())
}
