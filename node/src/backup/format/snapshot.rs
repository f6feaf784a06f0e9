//! The chunked snapshot: the database file in chunks of [`CHUNK_RAW`] bytes, each compressed
//! (and sealed) on its own and listed with its checksum in a table after the header:
//! `header | count u32 | chunk u32 | (offset u64, len u32, sha256)* | sha256(all before) | chunks`.
//! A restore reads the table with one ranged GET, then fetches and opens chunks in parallel.
//!
//! Keeps true: a chunk is opened only with the header and its own index as associated data
//! (sealed) or after its SHA-256 matched the table (plain), so a damaged, truncated, swapped or
//! misplaced chunk is refused and named; a wrong key is told apart from damage.

use anyhow::{bail, Context};
use hemvist_proto::DataKey;
use sha2::{Digest, Sha256};

use super::crypto::{self, NONCE, TAG};
use super::header::{header, valid_page_size, HEADER_LEN, KIND_CHUNKED, MAGIC, SEALED};
use super::keys::{Kind, ObjectName};
use crate::backup::{be32, be64};

/// Raw bytes per snapshot chunk.
pub const CHUNK_RAW: usize = 4 * 1024 * 1024;
const TABLE_ENTRY: usize = 8 + 4 + 32;

pub fn encode_snapshot(
    name: &ObjectName,
    page_size: u32,
    db: &[u8],
    key: Option<&DataKey>,
) -> Vec<u8> {
    encode_snapshot_parts(name, page_size, db, key).concat()
}

/// The snapshot object in its parts, in order: the header with the chunk table, then each
/// chunk. An upload sends the parts as they are; joining 1 GB of chunks into one buffer first
/// would only copy it.
pub fn encode_snapshot_parts(
    name: &ObjectName,
    page_size: u32,
    db: &[u8],
    key: Option<&DataKey>,
) -> Vec<Vec<u8>> {
    let db_pages = (db.len() / page_size.max(1) as usize) as u32;
    let mut h = header(
        Kind::Snapshot,
        page_size,
        db_pages,
        db.len() as u64,
        name,
        key.is_some(),
    );
    // The kind says "chunked snapshot", keeping the sealed bit.
    let sealed_bit = be32(&h, 4) & SEALED;
    h[4..8].copy_from_slice(&(KIND_CHUNKED | sealed_bit).to_be_bytes());
    let chunks = seal_chunks(&h, db, key);
    let table_end = HEADER_LEN + 8 + chunks.len() * TABLE_ENTRY + 32;
    let mut head = Vec::with_capacity(table_end);
    head.extend_from_slice(&h);
    head.extend_from_slice(&(chunks.len() as u32).to_be_bytes());
    head.extend_from_slice(&(CHUNK_RAW as u32).to_be_bytes());
    let mut offset = table_end as u64;
    for (c, sum) in &chunks {
        head.extend_from_slice(&offset.to_be_bytes());
        head.extend_from_slice(&(c.len() as u32).to_be_bytes());
        head.extend_from_slice(sum);
        offset += c.len() as u64;
    }
    let sum = Sha256::digest(&head);
    head.extend_from_slice(&sum);
    let mut parts = Vec::with_capacity(1 + chunks.len());
    parts.push(head);
    parts.extend(chunks.into_iter().map(|(c, _)| c));
    parts
}

/// Every chunk of `db`, sealed, with its SHA-256, in order. Chunks are independent, so they
/// are sealed on every core at once (a 1 GB snapshot is seconds of LZ4, sealing and hashing).
fn seal_chunks(header: &[u8], db: &[u8], key: Option<&DataKey>) -> Vec<(Vec<u8>, [u8; 32])> {
    let raw: Vec<&[u8]> = db.chunks(CHUNK_RAW).collect();
    let one = |(i, raw): (usize, &&[u8])| {
        let sealed = seal_chunk(header, i as u32, raw, key);
        let sum: [u8; 32] = Sha256::digest(&sealed).into();
        (sealed, sum)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || raw.len() < 2 {
        return raw.iter().enumerate().map(one).collect();
    }
    // Contiguous runs of chunks, one per thread, joined back in order.
    let per = raw.len().div_ceil(threads);
    std::thread::scope(|s| {
        let runs: Vec<_> = raw
            .chunks(per)
            .enumerate()
            .map(|(run, chunks)| {
                s.spawn(move || {
                    chunks
                        .iter()
                        .enumerate()
                        .map(|(i, c)| one((run * per + i, c)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        runs.into_iter()
            .flat_map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The associated data of chunk `index`: the header and the index, so chunks cannot be swapped
/// between places or objects.
fn chunk_aad(header: &[u8], index: u32) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(&index.to_be_bytes());
    aad
}

/// One chunk: LZ4, then sealed.
fn seal_chunk(header: &[u8], index: u32, raw: &[u8], key: Option<&DataKey>) -> Vec<u8> {
    let compressed = lz4_flex::block::compress(raw);
    let Some(key) = key else {
        return compressed;
    };
    crypto::seal(key, &chunk_aad(header, index), &compressed)
}

/// Where the chunks of a chunked snapshot are, read from the start of the object.
#[derive(Debug, Clone)]
pub struct SnapshotTable {
    header: Vec<u8>,
    sealed: bool,
    pub page_size: u32,
    pub raw_len: u64,
    pub chunk_raw: u64,
    /// (offset, length, sha256) of each chunk.
    pub chunks: Vec<(u64, u32, [u8; 32])>,
}

/// What the first bytes of a snapshot object say.
pub enum SnapshotHead {
    /// A chunked snapshot and its table.
    Chunked(SnapshotTable),
    /// The table is longer than what was read: read this many bytes from the start.
    NeedBytes(usize),
    /// An older, single-body snapshot: read it whole and decode it.
    Whole,
}

pub fn snapshot_head(name: &ObjectName, head: &[u8]) -> anyhow::Result<SnapshotHead> {
    if head.len() < HEADER_LEN + 8 {
        bail!("{}: too short to be a snapshot", name.key());
    }
    let be32 = |at: usize| be32(head, at);
    let be64 = |at: usize| be64(head, at);
    if &head[..4] != MAGIC {
        bail!("{}: not a hemvist backup object", name.key());
    }
    if be32(4) & !SEALED != KIND_CHUNKED {
        return Ok(SnapshotHead::Whole);
    }
    let count = be32(HEADER_LEN) as usize;
    let table_end = HEADER_LEN + 8 + count * TABLE_ENTRY + 32;
    if head.len() < table_end {
        return Ok(SnapshotHead::NeedBytes(table_end));
    }
    if Sha256::digest(&head[..table_end - 32]).as_slice() != &head[table_end - 32..table_end] {
        bail!(
            "{}: checksum mismatch in its chunk table (the object is damaged)",
            name.key()
        );
    }
    let (start, end, time_ms) = (be64(16), be64(24), be64(32) as i64);
    if name.kind != Kind::Snapshot
        || start != name.start
        || end != name.end
        || time_ms != name.time_ms
    {
        bail!("{}: its header does not match its name", name.key());
    }
    let page_size = be32(8);
    if !valid_page_size(page_size) {
        bail!("{}: bad page size {page_size}", name.key());
    }
    let chunk_raw = be32(HEADER_LEN + 4) as u64;
    let raw_len = be64(40);
    if chunk_raw == 0 || raw_len.div_ceil(chunk_raw) != count as u64 {
        bail!(
            "{}: chunk table does not match the database size",
            name.key()
        );
    }
    let chunks = (0..count)
        .map(|i| {
            let at = HEADER_LEN + 8 + i * TABLE_ENTRY;
            let mut sum = [0u8; 32];
            sum.copy_from_slice(&head[at + 12..at + 44]);
            (be64(at), be32(at + 8), sum)
        })
        .collect();
    Ok(SnapshotHead::Chunked(SnapshotTable {
        header: head[..HEADER_LEN].to_vec(),
        sealed: be32(4) & SEALED != 0,
        page_size,
        raw_len,
        chunk_raw,
        chunks,
    }))
}

/// The whole database of a chunked snapshot held in memory, every chunk checked.
pub fn open_all(
    name: &ObjectName,
    table: &SnapshotTable,
    bytes: &[u8],
    key: Option<&DataKey>,
) -> anyhow::Result<Vec<u8>> {
    let mut db = Vec::with_capacity(table.raw_len as usize);
    for (i, (offset, len, _)) in table.chunks.iter().enumerate() {
        let at = *offset as usize;
        let chunk = bytes
            .get(at..at + *len as usize)
            .with_context(|| format!("{}: cut short", name.key()))?;
        db.extend_from_slice(&open_chunk(name, table, i, chunk, key)?);
    }
    Ok(db)
}

/// Verifies, opens and decompresses chunk `index` of a chunked snapshot.
pub fn open_chunk(
    name: &ObjectName,
    table: &SnapshotTable,
    index: usize,
    bytes: &[u8],
    key: Option<&DataKey>,
) -> anyhow::Result<Vec<u8>> {
    let mut buffers = ChunkBuffers::default();
    open_chunk_into(name, table, index, bytes, key, &mut buffers)?;
    Ok(buffers.raw().to_vec())
}

/// The memory one restoring thread reuses from chunk to chunk, so a restore does not allocate
/// (and fault in) fresh pages for every chunk it opens.
#[derive(Default)]
pub struct ChunkBuffers {
    opened: Vec<u8>,
    raw: Vec<u8>,
}

impl ChunkBuffers {
    /// The chunk's database bytes after [`open_chunk_into`].
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// [`open_chunk`] into `buffers`. A sealed chunk is verified by its seal (Poly1305 over the
/// ciphertext: a damaged, truncated or misplaced chunk cannot be opened); only when it does not
/// open is its SHA-256 computed, to tell a damaged object from a wrong key. A chunk stored
/// plain is verified by its SHA-256. Then LZ4 into a buffer of exactly the size the table
/// promises.
pub fn open_chunk_into(
    name: &ObjectName,
    table: &SnapshotTable,
    index: usize,
    bytes: &[u8],
    key: Option<&DataKey>,
    buffers: &mut ChunkBuffers,
) -> anyhow::Result<()> {
    let (_, len, sum) = table.chunks[index];
    let damaged = || {
        anyhow::anyhow!(
            "{}: checksum mismatch in chunk {index} (the object is damaged)",
            name.key()
        )
    };
    let intact = || bytes.len() == len as usize && Sha256::digest(bytes).as_slice() == sum;
    let expected = (table.raw_len - index as u64 * table.chunk_raw).min(table.chunk_raw) as usize;
    let compressed = if table.sealed {
        if bytes.len() != len as usize || bytes.len() < NONCE + TAG {
            return Err(damaged());
        }
        let Some(key) = key else {
            if !intact() {
                return Err(damaged());
            }
            bail!(
                "{}: sealed with the org's data key, and no key was given (an org whose key was destroyed is erased)",
                name.key()
            );
        };
        let aad = chunk_aad(&table.header, index as u32);
        if !crypto::open_into(key, &aad, bytes, &mut buffers.opened) {
            if !intact() {
                return Err(damaged());
            }
            bail!("{}: cannot be opened with this data key", name.key());
        }
        &buffers.opened[..]
    } else {
        if !intact() {
            return Err(damaged());
        }
        bytes
    };
    buffers.raw.resize(expected, 0);
    let n = lz4_flex::block::decompress_into(compressed, &mut buffers.raw)
        .with_context(|| format!("{}: cannot decompress chunk {index}", name.key()))?;
    if n != expected {
        bail!("{}: chunk {index} has the wrong size", name.key());
    }
    Ok(())
}
