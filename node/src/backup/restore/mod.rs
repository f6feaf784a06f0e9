//! Point-in-time restore of one tenant: the newest snapshot at or before the asked time, then
//! the chain of WAL segments that continues it, each object verified (checksum, header against
//! its name) before its bytes are used, and `PRAGMA integrity_check` on the result before the
//! file is put where it was asked. A damaged object stops the restore with its name and the
//! newest point that can be restored without it.
//!
//! [`catalog`] finds what exists, [`plan`] chooses what to read, [`apply`] reads, verifies and
//! writes it.

mod apply;
mod catalog;
mod plan;

pub use apply::{restore, write_segments, Damaged, Restored, SegmentError};
pub use catalog::{
    catalog, catalog_known, catalog_with, listed, Catalog, DamagedObject, HeldFrom, HeldRange,
    WireCatalog,
};
pub use plan::{GenerationSummary, Known, Plan, Shortfall};
