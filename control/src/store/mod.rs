//! The control plane's store: embedded SQLite behind one type, `Store`, split by table.
//! Schema versioned, migrations embedded (`migrations/*.sql`, applied in order).
//!
//! What is persisted, and why:
//! - `regions`, `nodes` (`nodes.rs`): the configured regions as they were, and every node that
//!   ever registered.
//! - `orgs` + `placements` (`orgs.rs`): the desired state — which node hosts an org at which
//!   generation; and the newest backup position nodes reported of it, which a rebuild must
//!   reach unless an operator accepted an older point (also there).
//! - `meta.next_generation`, `observed` (`placements.rs`): the generation counter, which only
//!   grows, and what each node last said it hosts.
//! - `commands` (`commands.rs`): every command sent to a node and its state.
//! - `audit` (`audit.rs`): the hash-chained log of every change of where data lives.
//! - `system` (`system.rs`): the system's id, made once.
//! - `admin_tokens` (`tokens.rs`): named, revocable admin tokens, as hashes only.
//! - `operations` (`operations.rs`): moves and the like, their phases changed by compare and set
//!   together with their audit entries.
//! - `branches` (`branches.rs`): which orgs are branches of which, as of when, until when.
//! - `tombstones` (`erasures.rs`): erased orgs, whose ids stay taken.
//!
//! Leases are not persisted: after a restart every node is unhealthy until it heartbeats again.
//! The store interprets nothing it is handed (a residency is stored as its lists, not as a
//! policy) and imports no domain module; its errors keep their kind (`StoreError`).

mod audit;
mod branches;
mod commands;
mod db;
mod erasures;
mod error;
mod leader;
mod nodes;
mod operations;
mod orgs;
mod placements;
mod schema;
pub mod sql;
mod system;
mod tokens;

pub use audit::{AuditFilter, ChainCheck, ChainFault};
pub use branches::{BranchRecord, NewBranch};
pub use commands::{CommandKind, CommandRecord, CommandState, NewCommand};
pub use db::{database_url, fresh_database, Location, Store};
pub use error::StoreError;
pub use leader::LeaderLease;
pub use nodes::{NodeRecord, RegionRecord};
pub use operations::{NewOperation, OperationRecord, ParentRef, Transition};
pub use orgs::{Created, NewOrg, OrgRecord, StoredPosition, StoredResidency};
pub use placements::{ObservedRecord, PlacementSpan, PlacementSwitch, TenantSchema};
pub use schema::{AddedFiles, EditedFile, Pin, SchemaCensusRow};
pub use sql::EngineKind;
pub use tokens::TokenRecord;
