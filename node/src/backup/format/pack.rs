//! The pack: the small segments of every tenant shipped in one pass, in one object per node
//! (`segments... | index | sha256(index)`), so a node makes one request per interval however
//! many tenants wrote. The index (JSON: each segment's name, offset and length) is at the end
//! and its length is in the pack's key, so one ranged GET reads it.
//!
//! Keeps true: each segment inside a pack is byte for byte what it would be as its own object,
//! so it is verified the same way, and damage to a pack is found per segment. A pack is written
//! again only to scrub a purged tenant out of it ([`scrub_pack`]): the same key and length, every
//! other segment at its place, the index still whole and checksummed.

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use super::keys::{parse_pack_key, ObjectName};

/// The name a scrubbed segment takes in a pack's index: it names no object, so every reader
/// passes over it.
pub const SCRUBBED: &str = "scrubbed";

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
    Ok(raw_index(pack, tail)?
        .into_iter()
        .filter_map(|(key, off, len)| ObjectName::parse(&key).map(|n| (n, off, len)))
        .collect())
}

/// Every entry of a pack's index as written (scrubbed ones included), once its checksum passed.
pub fn raw_index(pack: &str, tail: &[u8]) -> anyhow::Result<Vec<(String, u64, u64)>> {
    if tail.len() < 32 {
        bail!("{pack}: index too short");
    }
    let (index, sum) = tail.split_at(tail.len() - 32);
    if Sha256::digest(index).as_slice() != sum {
        bail!("{pack}: index checksum mismatch (the pack is damaged)");
    }
    serde_json::from_slice(index).with_context(|| format!("{pack}: unreadable index"))
}

/// Scrubs, in place, the segments of `bytes` (the whole pack called `pack`) that `gone` picks:
/// their bytes become zeros, their names in the index [`SCRUBBED`] padded with JSON whitespace
/// to the same length, and the index's checksum is written again. The pack keeps its length
/// (its index's is in its key) and every other segment and entry its place. How many segments
/// were scrubbed; at 0 (nothing of them left) the pack is as it was.
pub fn scrub_pack(
    pack: &str,
    bytes: &mut [u8],
    gone: impl Fn(&ObjectName) -> bool,
) -> anyhow::Result<usize> {
    let Some((_, _, index_len)) = parse_pack_key(pack) else {
        bail!("{pack}: not a pack's key");
    };
    let Some(at) = (bytes.len() as u64).checked_sub(index_len) else {
        bail!("{pack}: shorter than its index");
    };
    let at = at as usize;
    let entries = raw_index(pack, &bytes[at..])?;
    let mut index = Vec::with_capacity(bytes.len() - at);
    let mut scrubbed = Vec::new();
    index.push(b'[');
    for (i, (key, offset, len)) in entries.iter().enumerate() {
        if i > 0 {
            index.push(b',');
        }
        let entry = serde_json::to_vec(&(key, offset, len))?;
        if !ObjectName::parse(key).is_some_and(|n| gone(&n)) {
            index.extend_from_slice(&entry);
            continue;
        }
        let end = offset.saturating_add(*len);
        anyhow::ensure!(end <= at as u64, "{pack}: {key} lies past the segments");
        scrubbed.push(*offset as usize..end as usize);
        // `["name",offset,len]` becomes `["scrubbed"    ,offset,len]`.
        let name = serde_json::to_vec(key)?.len();
        let plain = serde_json::to_vec(SCRUBBED)?;
        index.push(b'[');
        index.extend_from_slice(&plain);
        index.resize(index.len() + name.saturating_sub(plain.len()), b' ');
        index.extend_from_slice(&entry[1 + name..]);
    }
    index.push(b']');
    if scrubbed.is_empty() {
        return Ok(0);
    }
    let room = bytes.len() - at - 32;
    // Written compactly, the index is never longer than it was; what it was written with
    // beyond that (whitespace, escapes) is made up at its end.
    anyhow::ensure!(
        index.len() <= room,
        "{pack}: its index cannot be written again in place"
    );
    index.resize(room, b' ');
    for range in &scrubbed {
        bytes[range.clone()].fill(0);
    }
    let sum = Sha256::digest(&index);
    bytes[at..at + room].copy_from_slice(&index);
    bytes[at + room..].copy_from_slice(&sum);
    Ok(scrubbed.len())
}
