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

use hemvist_proto::{Generation, HemvistError, NodeId, OrgId};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::link::{NodeCommand, PlacementUpdate};
use crate::plane::Plane;
use crate::store::{CommandKind, CommandRecord, CommandState, NewCommand};
use crate::users::UserPayload;

const TICK: Duration = Duration::from_secs(1);
/// Every connected node is looked at this often even if nothing says it changed.
const FULL_PASS: Duration = Duration::from_secs(30);

pub async fn run(plane: Arc<Plane>, shutdown: CancellationToken) {
    let mut last_full = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = plane.wake_reconciler.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let full = last_full.elapsed() >= FULL_PASS;
        if full {
            last_full = std::time::Instant::now();
        }
        let p = plane.clone();
        let pass = tokio::task::spawn_blocking(move || reconcile_pass(&p, full)).await;
        match pass {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reconcile pass failed; will retry"),
            Err(e) => tracing::error!(error = %e, "reconcile pass panicked; will retry"),
        }
    }
}

/// Looks at the nodes whose state changed, that have unfinished commands, or (on a full pass)
/// all of them, so a quiet fleet of 100k tenants costs one small query a tick.
fn reconcile_pass(plane: &Plane, full: bool) -> Result<(), HemvistError> {
    for node in plane.nodes.take_resync() {
        resync_placements(plane, &node)?;
    }
    let mut due = plane.take_dirty();
    due.extend(plane.store.nodes_with_open_commands()?);
    for (node, epoch) in plane.nodes.sessions() {
        if full || due.contains(&node) {
            if let Err(e) = reconcile_node(plane, &node, epoch) {
                plane.reconcile_soon(&node);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The id of the one `host` or `drop` command for this org, generation and node.
fn command_id(kind: CommandKind, org: &OrgId, generation: Generation, node: &NodeId) -> String {
    format!("{}-{}-{}-{}", kind.as_str(), org, generation.get(), node)
}

fn ensure(
    plane: &Plane,
    node: &NodeId,
    org: &OrgId,
    kind: CommandKind,
    generation: Generation,
) -> Result<CommandRecord, HemvistError> {
    Ok(plane.store.ensure_command(&NewCommand {
        id: &command_id(kind, org, generation, node),
        node,
        org,
        kind,
        generation,
        payload: None,
        operation: None,
    })?)
}

fn reconcile_node(plane: &Plane, node: &NodeId, epoch: u64) -> Result<(), HemvistError> {
    let desired = plane.store.orgs_on_node(node)?;
    let observed: HashMap<OrgId, Generation> =
        plane.store.observed_on_node(node)?.into_iter().collect();
    let open: HashMap<String, CommandRecord> = plane
        .store
        .open_commands(node)?
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    let desired_ids: HashSet<&OrgId> = desired.iter().map(|o| &o.id).collect();
    // An org an operation owns is the operation's to change (a move hosts and drops it itself).
    let owned = plane.owned_orgs()?;

    close_shown_outcomes(plane, node, &open, &observed)?;

    for org in &desired {
        if observed.get(&org.id) == Some(&org.generation) || owned.contains(&org.id) {
            continue;
        }
        let cmd = ensure(plane, node, &org.id, CommandKind::Host, org.generation)?;
        if cmd.state == CommandState::Failed {
            continue;
        }
        let command = plane.host_command(org, org.generation, false)?;
        let is_open = open.contains_key(&cmd.id);
        send_if_due(plane, node, epoch, &cmd, is_open, command)?;
    }

    for cmd in open.values().filter(|c| c.kind == CommandKind::AddUser) {
        let Some(p) = UserPayload::of(cmd) else {
            continue;
        };
        let command = NodeCommand::AddUser {
            org: cmd.org.clone(),
            generation: cmd.generation,
            email: p.email,
            name: p.name,
            password_hash: p.password_hash,
        };
        send_if_due(plane, node, epoch, cmd, true, command)?;
    }

    for (org, generation) in &observed {
        if desired_ids.contains(org) || owned.contains(org) {
            continue;
        }
        match plane.store.org(org)? {
            Some(placed) if placed.generation > *generation => {
                let cmd = ensure(plane, node, org, CommandKind::Drop, *generation)?;
                if cmd.state == CommandState::Failed {
                    continue;
                }
                let command = NodeCommand::Drop {
                    org: org.clone(),
                    generation: *generation,
                };
                let is_open = open.contains_key(&cmd.id);
                send_if_due(plane, node, epoch, &cmd, is_open, command)?;
            }
            Some(_) => {}
            None => {
                tracing::warn!(%node, %org, "node hosts an org the control plane does not know; leaving it alone")
            }
        }
    }
    Ok(())
}

/// A `host` or `drop` whose answer was lost (the control plane stopped before it was recorded)
/// is closed by what the node reports: the org held at that generation, or no longer held.
/// Left open, it would hold `hemvist_commands_open` up forever, since an org observed at its
/// generation is never looked at again.
fn close_shown_outcomes(
    plane: &Plane,
    node: &NodeId,
    open: &HashMap<String, CommandRecord>,
    observed: &HashMap<OrgId, Generation>,
) -> Result<(), HemvistError> {
    for cmd in open.values() {
        // Only the reconciler's own commands: an operation's steps are the operation's to close.
        if cmd.operation.is_some() || cmd.id != command_id(cmd.kind, &cmd.org, cmd.generation, node)
        {
            continue;
        }
        let shown = match cmd.kind {
            CommandKind::Host => observed.get(&cmd.org) == Some(&cmd.generation),
            CommandKind::Drop => observed
                .get(&cmd.org)
                .is_none_or(|held| *held > cmd.generation),
            _ => false,
        };
        if shown {
            tracing::info!(%node, command = %cmd.id, "closing a command the node's report shows done");
            plane
                .store
                .ack_command(node, &cmd.id, CommandState::Done, None, None)?;
        }
    }
    Ok(())
}

fn send_if_due(
    plane: &Plane,
    node: &NodeId,
    epoch: u64,
    cmd: &CommandRecord,
    is_open: bool,
    command: NodeCommand,
) -> Result<(), HemvistError> {
    let sent_this_session = plane.sent_in_session(epoch, &cmd.id);
    let stale = now_ms() - cmd.updated_ms > plane.config.command_retry_ms as i64;
    let due = match cmd.state {
        CommandState::Pending => true,
        // Unanswered, or answered "try again": again after a while, or at once on a new session.
        CommandState::Sent | CommandState::Done => !is_open || !sent_this_session || stale,
        CommandState::Retry => stale,
        CommandState::Failed => false,
    };
    if !due {
        return Ok(());
    }
    if plane.nodes.send_command(node, &cmd.id, None, command) {
        tracing::info!(%node, command = %cmd.id, attempt = cmd.attempts + 1, "sent command");
        plane.store.mark_command_sent(&cmd.id)?;
        plane.note_sent(epoch, &cmd.id);
    }
    Ok(())
}

/// Sends a node the full placement list again, after it missed an update.
fn resync_placements(plane: &Plane, node: &NodeId) -> Result<(), HemvistError> {
    let all = plane.placements()?;
    tracing::info!(%node, placements = all.len(), "resending all placements");
    for update in PlacementUpdate::chunked(&all, true) {
        if !plane.nodes.send_placements(node, update) {
            plane.nodes.mark_resync(node);
            break;
        }
    }
    Ok(())
}
