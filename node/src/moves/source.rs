//! A move, on its source: the target reads the org's backups through this node (no node needs
//! another region's store credentials, and what crosses is sealed), and when the control plane
//! says so, the org is fenced here and everything committed is shipped, giving the final
//! position the target must reach exactly.
//!
//! Keeps true: a target reads only the objects of the moved org's generation, and the packs the
//! catalog it was given lists, with the move's secret (kept here as a digest, in memory only);
//! the fence is persisted before the position is reported, and no write commits after it (the
//! gate checks it again inside each write transaction, and the fence waits once for the
//! database's write lock).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hemvist_proto::{ErrorKind, Generation, HemvistError, NodeId, OrgId};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use sha2::{Digest, Sha256};

use crate::backup::format::ObjectName;
use crate::backup::replicator::Replicator;
use crate::backup::restore::{self, WireCatalog};
use crate::failpoints;
use crate::state::NodeState;
use crate::tenants::TenantStore;

/// How long the fence waits for everything committed to be in the store.
const FINAL_SHIP_WAIT: Duration = Duration::from_secs(10);

struct Session {
    operation: String,
    generation: Generation,
    target: NodeId,
    secret: [u8; 32],
    /// The packed segments a catalog sent to the target listed (pack, offset, length): the
    /// only ranges of packs it may read (the rest of a pack is other tenants').
    packs: HashSet<(String, u64, u64)>,
}

/// The moves this node is the source of.
#[derive(Default)]
pub struct Outgoing {
    sessions: Mutex<HashMap<OrgId, Session>>,
    /// Operations ended here. A fence of one of them is refused: a rolled-back move's fence
    /// applied late (a stalled thread, a command from an old session) would hold the org
    /// forever. Taken around both the fence and its lifting, so neither can slip between.
    ended: Mutex<HashSet<String>>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Equal digests, compared without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The org's final position once fenced: the LSN after the last object shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalPosition {
    pub lsn: u64,
}

impl Outgoing {
    /// Lets `target` read the org's backups (of `generation`) with `secret`. Asking again
    /// replaces the secret (a control plane that restarted sends a new one).
    pub fn open(
        &self,
        state: &NodeState,
        org: &OrgId,
        generation: Generation,
        operation: &str,
        target: NodeId,
        secret: &str,
    ) -> Result<(), HemvistError> {
        match state.hosted(org) {
            Some(h) if h.generation == generation => {}
            _ => {
                return Err(HemvistError::new(
                    ErrorKind::Fenced,
                    format!("org {org} is not hosted here at {generation}"),
                ))
            }
        }
        if secret.len() < 32 {
            return Err(HemvistError::invalid("a move's secret is too short"));
        }
        tracing::info!(%org, operation, %target, "serving a move's copy");
        self.lock().insert(
            org.clone(),
            Session {
                operation: operation.to_string(),
                generation,
                target,
                secret: digest(secret),
                packs: HashSet::new(),
            },
        );
        Ok(())
    }

    /// The move is over here: the target's credential is forgotten and, if it was rolled
    /// back, the org's fence lifted (no later fence of this operation is taken).
    pub fn end(
        &self,
        state: &NodeState,
        org: &OrgId,
        operation: &str,
        rolled_back: bool,
    ) -> Result<bool, HemvistError> {
        if let Some(s) = self.lock().remove(org) {
            tracing::info!(%org, operation = %s.operation, target = %s.target, "move's copy no longer served");
        }
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.insert(operation.to_string());
        // Only this move's fence: another operation's is not this one's to lift.
        if rolled_back && state.fenced_by(org).as_deref() == Some(operation) {
            state.unfence(org)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OrgId, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation a bearer may read, or why not (one answer for "no move" and "wrong
    /// secret": a caller learns nothing about which).
    fn authorize(&self, org: &OrgId, bearer: Option<&str>) -> Result<Generation, HemvistError> {
        let sessions = self.lock();
        match (sessions.get(org), bearer) {
            (Some(s), Some(b)) if same(&s.secret, &digest(b)) => Ok(s.generation),
            _ => Err(HemvistError::new(
                ErrorKind::Unauthenticated,
                format!("no move of {org} accepts this credential"),
            )),
        }
    }

    /// What the target can copy: the org's backups of the moved generation, as this node (their
    /// writer) knows them: its own objects, its index objects (with `since_ms`, a target
    /// catching up, only those written since) and the packed segments no index lists yet, from
    /// its own record — no scan of every node's packs.
    pub async fn catalog(
        &self,
        backup: &Replicator,
        org: &OrgId,
        bearer: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<WireCatalog, HemvistError> {
        let generation = self.authorize(org, bearer)?;
        let pending = backup
            .shipped(org)
            .filter(|s| s.generation == generation.get())
            .map(|s| s.pending)
            .unwrap_or_default();
        // An index written a little before `since_ms` may list what came after it.
        let index_since = since_ms.map_or(i64::MIN, |t| t.saturating_sub(5_000));
        let catalog = restore::catalog_known(&backup.store, org, index_since, &pending)
            .await
            .map_err(|e| HemvistError::unavailable(format!("list the backups of {org}: {e:#}")))?;
        for w in &catalog.warnings {
            tracing::warn!(%org, warning = %w, "while listing a move's copy");
        }
        let wire = catalog.to_wire(generation.get());
        let sizes: HashMap<&str, u64> =
            wire.objects.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        if let Some(s) = self.lock().get_mut(org) {
            s.packs
                .extend(wire.packed.iter().filter_map(|(segment, (pack, offset))| {
                    Some((pack.clone(), *offset, *sizes.get(segment.as_str())?))
                }));
        }
        Ok(wire)
    }

    /// One object (or a range of it) the target may read, and the object's whole size.
    pub async fn object(
        &self,
        store: &Arc<dyn ObjectStore>,
        org: &OrgId,
        bearer: Option<&str>,
        key: &str,
        range: impl FnOnce() -> Result<Option<std::ops::Range<u64>>, HemvistError>,
    ) -> Result<(bytes::Bytes, u64), HemvistError> {
        // Who asks is checked before anything they sent is read further.
        self.authorize(org, bearer)?;
        let range = range()?;
        let generation = self.authorize(org, bearer)?;
        let own = ObjectName::parse(key)
            .is_some_and(|n| &n.org == org && n.generation == generation.get());
        let listed_pack = range.as_ref().is_some_and(|r| {
            self.lock().get(org).is_some_and(|s| {
                s.packs
                    .contains(&(key.to_string(), r.start, r.end.saturating_sub(r.start)))
            })
        });
        if !own && !listed_pack {
            return Err(HemvistError::not_found(format!(
                "{key:?} is not an object of this move"
            )));
        }
        let got = store
            .get_opts(
                &ObjectPath::from(key),
                GetOptions {
                    range: range.map(GetRange::Bounded),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    HemvistError::not_found(format!("{key} is not in the store"))
                }
                e => HemvistError::unavailable(format!("read {key}: {e}")),
            })?;
        let size = got.meta.size;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| HemvistError::unavailable(format!("read {key}: {e}")))?;
        Ok((bytes, size))
    }
}

/// Fences `org` at `generation` for `operation`: persisted first, then every write that got
/// past the gate before it is let finish (the writer lock, once), then everything committed is
/// shipped; the position after it is final. Asking again repeats nothing and gives the same
/// position. Refused for an operation that already ended here.
pub fn fence(
    outgoing: &Outgoing,
    state: &NodeState,
    tenants: &TenantStore,
    backup: Option<&Arc<Replicator>>,
    org: &OrgId,
    generation: Generation,
    operation: &str,
) -> Result<FinalPosition, HemvistError> {
    match state.hosted(org) {
        Some(h) if h.generation == generation => {}
        _ => {
            return Err(HemvistError::new(
                ErrorKind::Fenced,
                format!("org {org} is not hosted here at {generation}"),
            ))
        }
    }
    let Some(backup) = backup else {
        return Err(HemvistError::unavailable(
            "this node has no [backup]: a move copies through the backups",
        ));
    };
    {
        let ended = outgoing.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.contains(operation) {
            return Err(HemvistError::conflict(format!(
                "the move {operation} has ended here; its fence is not taken"
            )));
        }
        if state.fenced(org) != Some(generation) {
            state.fence(org, generation, operation)?;
            tracing::info!(%org, %generation, operation, "fenced: writes are held, then sent to the new home");
        }
    }
    failpoints::check("node.fence.fenced")?;
    // Every write that began before the fence has committed once this returns (one that
    // begins after it sees the fence inside its transaction and changes nothing).
    tenants.write_barrier(org)?;
    let mark = backup.mark_dirty(org);
    backup.wait_durable(org, mark, FINAL_SHIP_WAIT)?;
    let shipped = backup
        .shipped(org)
        .filter(|s| s.generation == generation.get())
        .ok_or_else(|| {
            HemvistError::unavailable(format!("org {org} has nothing shipped at {generation}"))
        })?;
    if state.fenced(org) != Some(generation) {
        return Err(HemvistError::conflict(format!(
            "the fence of {org} was lifted meanwhile (the move was rolled back)"
        )));
    }
    failpoints::check("node.fence.shipped")?;
    Ok(FinalPosition { lsn: shipped.lsn })
}
