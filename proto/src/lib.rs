//! The contract between hemvist's control plane and its nodes.
//!
//! `pb` is the generated gRPC code; it is only ever touched at the edges. The rest of this crate
//! are the checked types both sides share: once you hold an [`OrgId`], it is safe for a path, an
//! object key or a query, because its constructor is the only validation there is.

mod data_key;
mod error;
pub mod failpoints;
mod ids;
pub mod mask;
pub mod migration;
pub mod random;
pub mod ticket;

pub use data_key::DataKey;
pub use error::{ErrorKind, HemvistError};
pub use ids::{Generation, IdError, NodeId, OrgId, RegionId};

/// Generated from `proto/hemvist/v1/node_control.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hemvist.v1");
}

/// Metadata key carrying the node's join token on the control stream.
pub const AUTHORIZATION: &str = "authorization";
