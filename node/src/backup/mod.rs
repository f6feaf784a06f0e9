//! Continuous backup of every hosted tenant to the object store of the node's region.

pub mod format;
pub mod store;
pub mod wal;
