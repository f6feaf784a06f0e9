//! The index object: under a tenant's own prefix, where its packed segments are (JSON of
//! [`PackRef`]s, then their SHA-256), so a restore finds them without reading every pack.
//!
//! Keeps true: a tenant's packed segments are listed in an index object within
//! [`INDEX_EVERY_MS`] of being shipped (and at a clean shutdown); a restore scans only the packs
//! newer than a few of those for what no index lists yet.

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use super::keys::ObjectName;

/// The longest a tenant's packed segments wait to be listed in an index object under its own
/// prefix (`backup.index_every_ms` is at most this). Writer and reader both rely on it.
pub const INDEX_EVERY_MS: i64 = 30_000;

/// Where a segment is: its own object, or a byte range of a pack.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackRef {
    pub pack: String,
    pub offset: u64,
    pub len: u64,
    /// The segment's name, as if it were its own object.
    pub segment: String,
}

/// An index object: the places of a tenant's packed segments, checksummed.
pub fn encode_index(refs: &[PackRef]) -> Vec<u8> {
    let mut out = serde_json::to_vec(refs).unwrap_or_default();
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

pub fn decode_index(name: &ObjectName, bytes: &[u8]) -> anyhow::Result<Vec<PackRef>> {
    if bytes.len() < 32 {
        bail!("{}: too short to be an index", name.key());
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        bail!("{}: checksum mismatch (the object is damaged)", name.key());
    }
    serde_json::from_slice(body).with_context(|| format!("{}: unreadable index", name.key()))
}
