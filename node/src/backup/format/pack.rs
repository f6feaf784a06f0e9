//! The pack: the small segments of every tenant shipped in one pass, in one object per node
//! (`segments... | index | sha256(index)`), so a node makes one request per interval however
//! many tenants wrote. The index (JSON: each segment's name, offset and length) is at the end
//! and its length is in the pack's key, so one ranged GET reads it.
//!
//! Keeps true: each segment inside a pack is byte for byte what it would be as its own object,
//! so it is verified the same way, and damage to a pack is found per segment.

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use super::keys::ObjectName;

/// Packs segments: the pack's bytes, its index length (for the key), and where each segment
/// landed (offset, length), in the order given.
pub fn encode_pack(segments: &[(ObjectName, Vec<u8>)]) -> (Vec<u8>, usize, Vec<(u64, u64)>) {
    let mut out = Vec::with_capacity(segments.iter().map(|s| s.1.len()).sum::<usize>() + 1024);
    let mut places = Vec::with_capacity(segments.len());
    let mut index = Vec::with_capacity(segments.len());
    for (name, bytes) in segments {
        places.push((out.len() as u64, bytes.len() as u64));
        index.push(serde_json::json!([name.key(), out.len(), bytes.len()]));
        out.extend_from_slice(bytes);
    }
    let index = serde_json::to_vec(&index).unwrap_or_default();
    let sum = Sha256::digest(&index);
    out.extend_from_slice(&index);
    out.extend_from_slice(&sum);
    (out, index.len() + 32, places)
}

/// Reads a pack's index from its tail (the last `index_len` bytes, as named in its key):
/// (segment name, offset, length).
pub fn decode_pack_index(pack: &str, tail: &[u8]) -> anyhow::Result<Vec<(ObjectName, u64, u64)>> {
    if tail.len() < 32 {
        bail!("{pack}: index too short");
    }
    let (index, sum) = tail.split_at(tail.len() - 32);
    if Sha256::digest(index).as_slice() != sum {
        bail!("{pack}: index checksum mismatch (the pack is damaged)");
    }
    let entries: Vec<(String, u64, u64)> =
        serde_json::from_slice(index).with_context(|| format!("{pack}: unreadable index"))?;
    Ok(entries
        .into_iter()
        .filter_map(|(key, off, len)| ObjectName::parse(&key).map(|n| (n, off, len)))
        .collect())
}
