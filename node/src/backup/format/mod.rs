//! What a backup object holds and what it is called. One file per part: [`keys`] (names),
//! [`crypto`] (sealing), the [`header`] every object shares, and one file per format:
//! [`segment`] (single-body objects), [`snapshot`] (chunked), [`pack`], [`index`].
//!
//! Keys, per tenant and generation (DESIGN invariant 1: the generation is in every key and an
//! object is created once, never overwritten, but for a pack scrubbed of a purged tenant):
//!
//! ```text
//! tenants/{org}/g{generation:010}/snap/{lsn:016x}-{time_ms:013}.hvb           a whole database
//! tenants/{org}/g{generation:010}/wal/{start:016x}-{end:016x}-{time_ms:013}.hvb  WAL since `start`
//! tenants/{org}/g{generation:010}/idx/{start:016x}-{end:016x}-{time_ms:013}.hvi  packed segments
//! packs/{node}/{time_ms:013}-{seq:08x}-{index_len:08x}.hvp   segments... | index | sha256(index)
//! ```
//!
//! An LSN counts the committed WAL frames shipped in the generation, so segments chain
//! (`start` of one is `end` of the one before) and a snapshot at LSN L is continued by the
//! segment that starts at L. Hex and zero padding keep listing order equal to LSN order.
//!
//! Keeps true: every object is LZ4-compressed, checksummed, and (with the org's data key, which
//! every org created by the control plane has) sealed, and is read back only after the
//! checksum, the header against its name, and the seal have passed. Destroying a key erases
//! the org's data even inside shared packs; a purge also scrubs it out of them
//! ([`scrub_pack`]), the only time an object is written again.

mod crypto;
mod header;
mod index;
mod keys;
mod pack;
mod segment;
mod snapshot;
#[cfg(test)]
mod tests;

use anyhow::bail;
use hemvist_proto::DataKey;

pub use index::{decode_index, encode_index, PackRef, INDEX_EVERY_MS};
pub use keys::{pack_key, parse_pack_key, tenant_prefix, Kind, ObjectName};
pub use pack::{decode_pack_index, encode_pack, raw_index, scrub_pack, SCRUBBED};
pub use segment::{encode_segment, Body, Decoded};
pub use snapshot::{
    encode_snapshot, encode_snapshot_parts, open_chunk, open_chunk_into, snapshot_head,
    ChunkBuffers, SnapshotHead, SnapshotTable, CHUNK_RAW,
};

/// Checks the checksum, then the header against the key it was read from, then opens (with
/// the org's data key if the body is sealed) and decodes, whatever the object's format.
pub fn decode(name: &ObjectName, bytes: &[u8], key: Option<&DataKey>) -> anyhow::Result<Decoded> {
    if bytes.len() < header::HEADER_LEN + 32 {
        bail!("{}: too short to be a backup object", name.key());
    }
    if name.kind == Kind::Snapshot {
        if let SnapshotHead::Chunked(table) = snapshot_head(name, bytes)? {
            let db = snapshot::open_all(name, &table, bytes, key)?;
            return Ok(Decoded {
                kind: Kind::Snapshot,
                page_size: table.page_size,
                db_pages: (table.raw_len / table.page_size as u64) as u32,
                body: Body::Database(db),
            });
        }
    }
    segment::decode_single(name, bytes, key)
}
