//! What the domain tells nodes, and the one trait it tells them through. The domain speaks
//! these types only; the node adapters turn them into wire messages, so no domain module sees
//! a session, a stream or a `pb` type.

use std::sync::Arc;

use hemvist_proto::migration::MigrationFile;
use hemvist_proto::{Generation, NodeId, OrgId, RegionId};

/// A position of an org's backups (a migration's restore point) and when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestorePoint {
    pub generation: u64,
    pub lsn: u64,
    pub at_ms: i64,
}

/// A schema version and every migration file up to it, in order (shared, not copied, between
/// the commands of a fleet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaTarget {
    pub version: u32,
    pub files: Arc<[MigrationFile]>,
}

/// Placements are pushed in chunks so a fleet of 100k orgs never makes one oversized message.
pub const PLACEMENT_CHUNK: usize = 2_000;

/// A command to one node. Every command is persisted before it is sent and carries a stable id,
/// so a node applies each at most once in effect. Its `Debug` shows no key and no hash.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Host the org at this generation, in one of the regions its residency allows.
    Host {
        org: OrgId,
        generation: Generation,
        name: String,
        allowed_regions: Vec<RegionId>,
        durability: String,
        data_key: String,
        /// Backups of the org have been seen: with no local file and no backup, fail.
        expect_backup: bool,
        /// A move put the org's file on the node: host that file, or fail.
        moved_here: bool,
        /// The newest backup position nodes reported: a restore must reach it.
        known: Option<KnownPosition>,
        /// An operator accepted a restore to an older point than `known` (audited).
        accept_older: bool,
        /// The schema the org is held at: its version, and every file up to it.
        schema: SchemaTarget,
        /// A rollback: replace the node's copy with the org's backups at exactly this point.
        restore_to: Option<RestorePoint>,
        /// A new branch: with no file and no backup of its own, made from its parent's backups.
        branch_of: Option<BranchSource>,
    },
    /// Migrate the org's tenant to `schema.version` in one transaction (or try it, `dry_run`).
    Migrate {
        org: OrgId,
        generation: Generation,
        schema: SchemaTarget,
        dry_run: bool,
    },
    /// Add a user to the org's own database; the password is already hashed.
    AddUser {
        org: OrgId,
        generation: Generation,
        email: String,
        name: String,
        password_hash: String,
    },
    /// Stop hosting the org at this (older) generation.
    Drop { org: OrgId, generation: Generation },
    /// Destroy the org on this node for good: file (no trash) and every backup object of it in
    /// the node's region.
    Destroy { org: OrgId, generation: Generation },
    /// Say what the node's region's store holds of the org at `generation` or newer (reads
    /// only): a move whose new home died before reporting its first backup asks.
    Probe { org: OrgId, generation: Generation },
    /// A move's source: let `target` read the org's backups with `secret`.
    MoveOut {
        org: OrgId,
        generation: Generation,
        target: NodeId,
        secret: String,
    },
    /// A move's target: copy the org from its source and keep tailing it.
    MoveIn {
        org: OrgId,
        generation: Generation,
        source: NodeId,
        source_url: String,
        secret: String,
        data_key: String,
        allowed_regions: Vec<RegionId>,
    },
    /// A move's source: stop acknowledging writes, ship everything, report the final position.
    Fence { org: OrgId, generation: Generation },
    /// A move's target: reach exactly `lsn`, verify, put the file in place (unhosted).
    FinishMove {
        org: OrgId,
        generation: Generation,
        lsn: u64,
    },
    /// The move is over on this node (rolled back: lift the fence, discard the copy).
    EndMove { org: OrgId, rolled_back: bool },
}

/// Where a new branch comes from: its parent's backups at a point in time, masked. Its
/// `Debug` shows no key.
#[derive(Clone, PartialEq, Eq)]
pub struct BranchSource {
    pub parent: OrgId,
    pub parent_data_key: String,
    pub at_ms: i64,
    /// The mask file's text (TOML); empty: nothing masked.
    pub mask: String,
    /// `copy` or `none`.
    pub users: String,
}

impl std::fmt::Debug for BranchSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BranchSource({}, at {}, users {}, ..)",
            self.parent, self.at_ms, self.users
        )
    }
}

/// What a branch's pages show: of what, as of when, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchLabel {
    pub org: OrgId,
    pub parent: OrgId,
    pub at_ms: i64,
    pub expires_ms: i64,
    pub warn_from_ms: i64,
    pub keepalive_on_use: bool,
}

/// Branch labels for the node that hosts them; `full` replaces every label it had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BranchLabels {
    pub full: bool,
    pub labels: Vec<BranchLabel>,
    pub removed: Vec<OrgId>,
}

/// An org's newest backup position as nodes reported it: (generation, LSN after the last object
/// shipped), and when it was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct KnownPosition {
    pub generation: u64,
    pub lsn: u64,
    pub reported_ms: i64,
}

impl From<crate::store::StoredPosition> for KnownPosition {
    fn from(p: crate::store::StoredPosition) -> Self {
        KnownPosition {
            generation: p.generation,
            lsn: p.lsn,
            reported_ms: p.reported_ms,
        }
    }
}

/// Keys go to a node in chunks of this many.
pub const KEY_CHUNK: usize = 1_000;

/// An org's data key, for the node that hosts it (nodes keep keys in memory only); an empty
/// `data_key` revokes it (the control plane's copy was destroyed).
#[derive(Clone, PartialEq, Eq)]
pub struct OrgKey {
    pub org: OrgId,
    pub generation: Generation,
    pub data_key: String,
}

impl std::fmt::Debug for OrgKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OrgKey({}, {}, ..)", self.org, self.generation)
    }
}

impl std::fmt::Debug for NodeCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeCommand::Host {
                org, generation, ..
            } => write!(f, "Host({org}, {generation}, ..)"),
            NodeCommand::Migrate {
                org,
                generation,
                schema,
                dry_run,
            } => write!(
                f,
                "Migrate({org}, {generation}, to {}{})",
                schema.version,
                if *dry_run { ", dry run" } else { "" }
            ),
            NodeCommand::AddUser {
                org, generation, ..
            } => {
                write!(f, "AddUser({org}, {generation}, ..)")
            }
            NodeCommand::Drop { org, generation } => write!(f, "Drop({org}, {generation})"),
            NodeCommand::Probe { org, generation } => {
                write!(f, "Probe({org}, {generation})")
            }
            NodeCommand::Destroy { org, generation } => {
                write!(f, "Destroy({org}, {generation})")
            }
            NodeCommand::MoveOut {
                org,
                generation,
                target,
                ..
            } => write!(f, "MoveOut({org}, {generation}, to {target}, ..)"),
            NodeCommand::MoveIn {
                org,
                generation,
                source,
                ..
            } => write!(f, "MoveIn({org}, {generation}, from {source}, ..)"),
            NodeCommand::Fence { org, generation } => write!(f, "Fence({org}, {generation})"),
            NodeCommand::FinishMove {
                org,
                generation,
                lsn,
            } => write!(f, "FinishMove({org}, {generation}, {lsn})"),
            NodeCommand::EndMove { org, rolled_back } => {
                write!(f, "EndMove({org}, rolled back: {rolled_back})")
            }
        }
    }
}

/// Where an org lives, as nodes cache it for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub org: OrgId,
    pub region: RegionId,
    pub node: NodeId,
    pub node_url: String,
    pub generation: Generation,
}

/// Placements for a node's routing cache; `full` replaces everything it had; `removed`: orgs
/// that no longer exist anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementUpdate {
    pub full: bool,
    pub placements: Vec<Placement>,
    pub removed: Vec<OrgId>,
}

impl PlacementUpdate {
    /// `placements` in chunks of at most [`PLACEMENT_CHUNK`]; with `full`, the first chunk
    /// replaces the node's cache and the rest add to it. No placements, no updates.
    pub fn chunked(placements: &[Placement], full: bool) -> Vec<PlacementUpdate> {
        placements
            .chunks(PLACEMENT_CHUNK)
            .enumerate()
            .map(|(i, chunk)| PlacementUpdate {
                full: full && i == 0,
                placements: chunk.to_vec(),
                removed: Vec::new(),
            })
            .collect()
    }
}

/// A node's session as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionInfo {
    pub connected: bool,
    pub healthy: bool,
    pub lease_remaining_ms: u64,
    pub connected_for_ms: u64,
}

/// The live sessions of the nodes, as the domain sees them. Sending never blocks: false (or a
/// resync mark) means the node did not get it, and the reconciler sends again later.
pub trait NodeLink: Send + Sync {
    /// Connected with a live lease: may get new tenants.
    fn healthy(&self, node: &NodeId) -> bool;
    fn session(&self, node: &NodeId) -> SessionInfo;
    /// Every connected node with its session's epoch (a new session has a new epoch).
    fn sessions(&self) -> Vec<(NodeId, u64)>;
    /// `operation`: the operation the command is a step of, if any (the node is told).
    fn send_command(
        &self,
        node: &NodeId,
        id: &str,
        operation: Option<&str>,
        command: NodeCommand,
    ) -> bool;
    fn send_placements(&self, node: &NodeId, update: PlacementUpdate) -> bool;
    /// Data keys for the node's memory; an empty key makes the node forget the org's key.
    fn send_keys(&self, node: &NodeId, keys: Vec<OrgKey>) -> bool;
    /// What the node shows on the pages of the branches it hosts.
    fn send_branch_labels(&self, node: &NodeId, labels: BranchLabels) -> bool;
    /// To every node; one whose queue is full is marked for a full resync instead.
    fn broadcast_placements(&self, update: PlacementUpdate);
    fn mark_resync(&self, node: &NodeId);
    /// The nodes that missed a placement update, clearing their mark.
    fn take_resync(&self) -> Vec<NodeId>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements_go_in_chunks_and_only_the_first_replaces() {
        let one = Placement {
            org: OrgId::parse("acme").unwrap(),
            region: RegionId::parse("eu-north").unwrap(),
            node: NodeId::parse("n1").unwrap(),
            node_url: "http://n1".into(),
            generation: Generation::new(1).unwrap(),
        };
        let all = vec![one; PLACEMENT_CHUNK + 1];
        let updates = PlacementUpdate::chunked(&all, true);
        assert_eq!(updates.len(), 2);
        assert!(updates[0].full && !updates[1].full);
        assert_eq!(updates[1].placements.len(), 1);
        assert!(PlacementUpdate::chunked(&all, false)
            .iter()
            .all(|u| !u.full));
        assert!(PlacementUpdate::chunked(&[], true).is_empty());
    }
}
