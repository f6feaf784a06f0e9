//! What a backup object holds and what it is called.
//!
//! Keys, per tenant and generation (DESIGN invariant 1: the generation is in every key and an
//! object is created once, never overwritten):
//!
//! ```text
//! tenants/{org}/g{generation:010}/snap/{lsn:016x}-{time_ms:013}.hvb           a whole database
//! tenants/{org}/g{generation:010}/wal/{start:016x}-{end:016x}-{time_ms:013}.hvb  WAL since `start`
//! ```
//!
//! An LSN counts the committed WAL frames shipped in the generation, so segments chain
//! (`start` of one is `end` of the one before) and a snapshot at LSN L is continued by the
//! segment that starts at L. Hex and zero padding keep listing order equal to LSN order.
//!
//! An object is `header | body | sha256(header | body)`; the body is LZ4-compressed: the
//! database file for a snapshot, `(page number u32, page)` pairs for a segment. With the org's
//! data key (every org created by the control plane has one), the compressed body is sealed:
//! `nonce (24) | XChaCha20-Poly1305(body)` with the header as associated data, and the kind in
//! the header has its top bit set. The SHA-256 still covers everything, so damage is told
//! apart from a wrong key without the key.
//!
//! Packs: the small segments of every tenant shipped in one pass go into one object per node,
//! so a node makes one request per interval however many tenants wrote:
//!
//! ```text
//! packs/{node}/{time_ms:013}-{seq:08x}-{index_len:08x}.hvp   segments... | index | sha256(index)
//! tenants/{org}/g{generation:010}/idx/{start:016x}-{end:016x}-{time_ms:013}.hvi
//! ```
//!
//! Each segment inside a pack is byte for byte what it would be as its own object, so it is
//! verified the same way. A pack's index (JSON: each segment's name, offset and length) is at
//! its end and its length is in its key, so one ranged GET reads it. Every tenant's packed
//! segments are listed, within about a minute, in an index object under the tenant's own prefix
//! (one small PUT per active tenant per minute); a restore reads those, and scans only the packs
//! newer than that minute.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use hemvist_proto::OrgId;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"HVB1";
const SEALED: u32 = 0x8000_0000;
const NONCE: usize = 24;

pub use hemvist_proto::DataKey;

/// A nonce never used before in this process: a random prefix read once, then a counter.
fn nonce() -> [u8; NONCE] {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut p = [0u8; 16];
        if hemvist_proto::random::fill(&mut p).is_err() {
            // No urandom: the clock and the process id still make a prefix unlikely to repeat.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            p[..16].copy_from_slice(&(t ^ (std::process::id() as u128) << 64).to_le_bytes());
        }
        p
    });
    let mut n = [0u8; NONCE];
    n[..16].copy_from_slice(prefix);
    n[16..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    n
}
const HEADER_LEN: usize = 4 + 4 + 4 + 4 + 8 + 8 + 8 + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Snapshot,
    Segment,
    /// Where a tenant's packed segments from `start` to `end` are.
    Index,
}

/// Where an object sits in a tenant's history, parsed from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    pub org: OrgId,
    pub generation: u64,
    pub kind: Kind,
    /// The snapshot's LSN, or the segment's first.
    pub start: u64,
    /// The snapshot's LSN, or the LSN after the segment.
    pub end: u64,
    pub time_ms: i64,
}

pub fn tenant_prefix(org: &OrgId) -> String {
    format!("tenants/{org}/")
}

impl ObjectName {
    pub fn key(&self) -> String {
        let g = format!("tenants/{}/g{:010}", self.org, self.generation);
        match self.kind {
            Kind::Snapshot => format!("{g}/snap/{:016x}-{:013}.hvb", self.start, self.time_ms),
            Kind::Segment => format!(
                "{g}/wal/{:016x}-{:016x}-{:013}.hvb",
                self.start, self.end, self.time_ms
            ),
            Kind::Index => format!(
                "{g}/idx/{:016x}-{:016x}-{:013}.hvi",
                self.start, self.end, self.time_ms
            ),
        }
    }

    /// Parses a key written by [`ObjectName::key`]; anything else is `None` (and ignored).
    pub fn parse(key: &str) -> Option<ObjectName> {
        let mut parts = key.split('/');
        if parts.next()? != "tenants" {
            return None;
        }
        let org = OrgId::parse(parts.next()?).ok()?;
        let generation = parts.next()?.strip_prefix('g')?.parse().ok()?;
        let kind = parts.next()?;
        let file = parts.next()?;
        let file = file
            .strip_suffix(".hvb")
            .or_else(|| file.strip_suffix(".hvi").filter(|_| kind == "idx"))?;
        if parts.next().is_some() {
            return None;
        }
        let fields: Vec<&str> = file.split('-').collect();
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        match (kind, fields.as_slice()) {
            ("snap", [lsn, time]) => Some(ObjectName {
                org,
                generation,
                kind: Kind::Snapshot,
                start: hex(lsn)?,
                end: hex(lsn)?,
                time_ms: time.parse().ok()?,
            }),
            ("wal" | "idx", [start, end, time]) => Some(ObjectName {
                org,
                generation,
                kind: if kind == "wal" {
                    Kind::Segment
                } else {
                    Kind::Index
                },
                start: hex(start)?,
                end: hex(end)?,
                time_ms: time.parse().ok()?,
            })
            .filter(|n| n.end > n.start),
            _ => None,
        }
    }
}

/// The decoded content of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub kind: Kind,
    pub page_size: u32,
    pub db_pages: u32,
    /// The whole database (snapshot) or the pages written (segment).
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Database(Vec<u8>),
    Pages(BTreeMap<u32, Vec<u8>>),
}

fn header(
    kind: Kind,
    page_size: u32,
    db_pages: u32,
    raw_len: u64,
    name: &ObjectName,
    sealed: bool,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    let kind = if kind == Kind::Snapshot { 1u32 } else { 2 };
    h.extend_from_slice(&(if sealed { kind | SEALED } else { kind }).to_be_bytes());
    h.extend_from_slice(&page_size.to_be_bytes());
    h.extend_from_slice(&db_pages.to_be_bytes());
    h.extend_from_slice(&name.start.to_be_bytes());
    h.extend_from_slice(&name.end.to_be_bytes());
    h.extend_from_slice(&name.time_ms.to_be_bytes());
    h.extend_from_slice(&raw_len.to_be_bytes());
    h
}

fn seal(mut out: Vec<u8>, raw: &[u8], key: Option<&DataKey>) -> Vec<u8> {
    let compressed = lz4_flex::block::compress(raw);
    match key {
        None => out.extend_from_slice(&compressed),
        Some(key) => {
            use chacha20poly1305::aead::{Aead, KeyInit, Payload};
            let cipher = chacha20poly1305::XChaCha20Poly1305::new((&key.0).into());
            let nonce = nonce();
            let sealed = cipher
                .encrypt(
                    (&nonce).into(),
                    Payload {
                        msg: &compressed,
                        aad: &out,
                    },
                )
                .unwrap_or_default();
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Raw bytes per snapshot chunk.
pub const CHUNK_RAW: usize = 4 * 1024 * 1024;
const KIND_CHUNKED: u32 = 3;
const TABLE_ENTRY: usize = 8 + 4 + 32;

/// A snapshot is written in chunks of [`CHUNK_RAW`] bytes, each compressed (and sealed) on its
/// own and listed with its checksum in a table after the header:
/// `header | count u32 | chunk u32 | (offset u64, len u32, sha256)* | sha256(all before) | chunks`.
/// A restore reads the table with one ranged GET, then fetches and opens chunks in parallel.
pub fn encode_snapshot(
    name: &ObjectName,
    page_size: u32,
    db: &[u8],
    key: Option<&DataKey>,
) -> Vec<u8> {
    let db_pages = (db.len() / page_size.max(1) as usize) as u32;
    let mut h = header(
        Kind::Snapshot,
        page_size,
        db_pages,
        db.len() as u64,
        name,
        key.is_some(),
    );
    // The kind says "chunked snapshot" (3), keeping the sealed bit.
    let sealed_bit = super::be32(&h, 4) & SEALED;
    h[4..8].copy_from_slice(&(KIND_CHUNKED | sealed_bit).to_be_bytes());
    let chunks: Vec<Vec<u8>> = db
        .chunks(CHUNK_RAW)
        .enumerate()
        .map(|(i, raw)| seal_chunk(&h, i as u32, raw, key))
        .collect();
    let table_end = HEADER_LEN + 8 + chunks.len() * TABLE_ENTRY + 32;
    let mut out = Vec::with_capacity(table_end + chunks.iter().map(Vec::len).sum::<usize>());
    out.extend_from_slice(&h);
    out.extend_from_slice(&(chunks.len() as u32).to_be_bytes());
    out.extend_from_slice(&(CHUNK_RAW as u32).to_be_bytes());
    let mut offset = table_end as u64;
    for c in &chunks {
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(c.len() as u32).to_be_bytes());
        out.extend_from_slice(&Sha256::digest(c));
        offset += c.len() as u64;
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    for c in chunks {
        out.extend_from_slice(&c);
    }
    out
}

/// One chunk: LZ4, then sealed with the header and the chunk's number as associated data (so
/// chunks cannot be swapped between places or objects).
fn seal_chunk(header: &[u8], index: u32, raw: &[u8], key: Option<&DataKey>) -> Vec<u8> {
    let compressed = lz4_flex::block::compress(raw);
    let Some(key) = key else {
        return compressed;
    };
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let cipher = chacha20poly1305::XChaCha20Poly1305::new((&key.0).into());
    let nonce = nonce();
    let mut aad = header.to_vec();
    aad.extend_from_slice(&index.to_be_bytes());
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &compressed,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
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
    /// An older, single-body snapshot: read it whole and [`decode`] it.
    Whole,
}

pub fn snapshot_head(name: &ObjectName, head: &[u8]) -> anyhow::Result<SnapshotHead> {
    if head.len() < HEADER_LEN + 8 {
        bail!("{}: too short to be a snapshot", name.key());
    }
    let be32 = |at: usize| super::be32(head, at);
    let be64 = |at: usize| super::be64(head, at);
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
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
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
/// ciphertext, with the snapshot's header and the chunk's index as associated data: a damaged,
/// truncated or misplaced chunk cannot be opened); only when it does not open is its SHA-256
/// computed, to tell a damaged object from a wrong key. A chunk stored plain is verified by
/// its SHA-256. Then LZ4 into a buffer of exactly the size the table promises.
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
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        if bytes.len() != len as usize || bytes.len() < NONCE + 16 {
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
        let mut aad = table.header.clone();
        aad.extend_from_slice(&(index as u32).to_be_bytes());
        let cipher = chacha20poly1305::XChaCha20Poly1305::new((&key.0).into());
        buffers.opened.clear();
        buffers.opened.extend_from_slice(&bytes[NONCE..]);
        if cipher
            .decrypt_in_place(bytes[..NONCE].into(), &aad, &mut buffers.opened)
            .is_err()
        {
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

pub fn encode_segment(
    name: &ObjectName,
    page_size: u32,
    db_pages: u32,
    pages: &BTreeMap<u32, Vec<u8>>,
    key: Option<&DataKey>,
) -> Vec<u8> {
    let mut raw = Vec::with_capacity(pages.len() * (4 + page_size as usize));
    for (page, data) in pages {
        raw.extend_from_slice(&page.to_be_bytes());
        raw.extend_from_slice(data);
    }
    let h = header(
        Kind::Segment,
        page_size,
        db_pages,
        raw.len() as u64,
        name,
        key.is_some(),
    );
    seal(h, &raw, key)
}

/// Checks the checksum, then the header against the key it was read from, then opens (with
/// the org's data key if the body is sealed) and decodes.
pub fn decode(name: &ObjectName, bytes: &[u8], key: Option<&DataKey>) -> anyhow::Result<Decoded> {
    if bytes.len() < HEADER_LEN + 32 {
        bail!("{}: too short to be a backup object", name.key());
    }
    if name.kind == Kind::Snapshot {
        if let SnapshotHead::Chunked(table) = snapshot_head(name, bytes)? {
            let mut db = Vec::with_capacity(table.raw_len as usize);
            for (i, (offset, len, _)) in table.chunks.iter().enumerate() {
                let at = *offset as usize;
                let chunk = bytes
                    .get(at..at + *len as usize)
                    .with_context(|| format!("{}: cut short", name.key()))?;
                db.extend_from_slice(&open_chunk(name, &table, i, chunk, key)?);
            }
            return Ok(Decoded {
                kind: Kind::Snapshot,
                page_size: table.page_size,
                db_pages: (table.raw_len / table.page_size as u64) as u32,
                body: Body::Database(db),
            });
        }
    }
    let (content, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(content).as_slice() != sum {
        bail!("{}: checksum mismatch (the object is damaged)", name.key());
    }
    let be32 = |at: usize| super::be32(content, at);
    let be64 = |at: usize| super::be64(content, at);
    if &content[..4] != MAGIC {
        bail!("{}: not a hemvist backup object", name.key());
    }
    let sealed = be32(4) & SEALED != 0;
    let kind = match be32(4) & !SEALED {
        1 => Kind::Snapshot,
        2 => Kind::Segment,
        k => bail!("{}: unknown object kind {k}", name.key()),
    };
    let (page_size, db_pages) = (be32(8), be32(12));
    let (start, end, time_ms, raw_len) = (be64(16), be64(24), be64(32) as i64, be64(40));
    if kind != name.kind || start != name.start || end != name.end || time_ms != name.time_ms {
        bail!("{}: its header does not match its name", name.key());
    }
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        bail!("{}: bad page size {page_size}", name.key());
    }
    let opened;
    let compressed = if sealed {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let Some(key) = key else {
            bail!(
                "{}: sealed with the org's data key, and no key was given (an org whose key was destroyed is erased)",
                name.key()
            );
        };
        let body = &content[HEADER_LEN..];
        if body.len() < NONCE + 16 {
            bail!("{}: sealed body too short", name.key());
        }
        let cipher = chacha20poly1305::XChaCha20Poly1305::new((&key.0).into());
        opened = cipher
            .decrypt(
                body[..NONCE].into(),
                Payload {
                    msg: &body[NONCE..],
                    aad: &content[..HEADER_LEN],
                },
            )
            .map_err(|_| anyhow::anyhow!("{}: cannot be opened with this data key", name.key()))?;
        &opened[..]
    } else {
        &content[HEADER_LEN..]
    };
    let raw = lz4_flex::block::decompress(compressed, raw_len as usize)
        .with_context(|| format!("{}: cannot decompress", name.key()))?;
    let body = match kind {
        Kind::Snapshot => {
            if raw.len() != db_pages as usize * page_size as usize {
                bail!("{}: database size does not match its header", name.key());
            }
            Body::Database(raw)
        }
        Kind::Segment | Kind::Index => {
            let entry = 4 + page_size as usize;
            if raw.len() % entry != 0 {
                bail!("{}: page data is cut short", name.key());
            }
            let pages = raw
                .chunks_exact(entry)
                .map(|c| {
                    (
                        u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                        c[4..].to_vec(),
                    )
                })
                .collect();
            Body::Pages(pages)
        }
    };
    Ok(Decoded {
        kind,
        page_size,
        db_pages,
        body,
    })
}

/// Where a segment is: its own object, or a byte range of a pack.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackRef {
    pub pack: String,
    pub offset: u64,
    pub len: u64,
    /// The segment's name, as if it were its own object.
    pub segment: String,
}

/// A pack's key: the node that wrote it, when, a per-node sequence, and its index's length.
pub fn pack_key(node: &str, time_ms: i64, seq: u64, index_len: usize) -> String {
    format!("packs/{node}/{time_ms:013}-{seq:08x}-{index_len:08x}.hvp")
}

/// (node, time, index length) of a pack key.
pub fn parse_pack_key(key: &str) -> Option<(String, i64, u64)> {
    let rest = key.strip_prefix("packs/")?;
    let (node, file) = rest.split_once('/')?;
    let file = file.strip_suffix(".hvp")?;
    let fields: Vec<&str> = file.split('-').collect();
    let [time, _seq, index_len] = fields[..] else {
        return None;
    };
    Some((
        node.to_string(),
        time.parse().ok()?,
        u64::from_str_radix(index_len, 16).ok()?,
    ))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn name(kind: Kind, start: u64, end: u64) -> ObjectName {
        ObjectName {
            org: OrgId::parse("acme").expect("org"),
            generation: 3,
            kind,
            start,
            end,
            time_ms: 1_764_000_000_123,
        }
    }

    #[test]
    fn keys_round_trip_and_sort_by_lsn() {
        let s = name(Kind::Segment, 0x10, 0x2a);
        assert_eq!(
            s.key(),
            "tenants/acme/g0000000003/wal/0000000000000010-000000000000002a-1764000000123.hvb"
        );
        assert_eq!(ObjectName::parse(&s.key()), Some(s.clone()));
        let snap = name(Kind::Snapshot, 0x2a, 0x2a);
        assert_eq!(ObjectName::parse(&snap.key()), Some(snap));
        assert!(name(Kind::Segment, 9, 0x10).key() < s.key());
        for bad in [
            "tenants/acme/g3/wal/10-2a-1.txt",
            "tenants/../g3/snap/1-1.hvb",
            "other/acme/g3/snap/1-1.hvb",
            "tenants/acme/g3/wal/2a-10-1.hvb",
        ] {
            assert_eq!(ObjectName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn objects_round_trip_and_damage_is_named() {
        let seg = name(Kind::Segment, 1, 5);
        let pages: BTreeMap<u32, Vec<u8>> = [(1, vec![7u8; 512]), (4, vec![9u8; 512])].into();
        let bytes = encode_segment(&seg, 512, 4, &pages, None);
        let decoded = decode(&seg, &bytes, None).expect("decode");
        assert_eq!(decoded.body, Body::Pages(pages));
        assert_eq!(decoded.db_pages, 4);
        let mut damaged = bytes.clone();
        damaged[HEADER_LEN + 3] ^= 1;
        let err = decode(&seg, &damaged, None)
            .expect_err("damaged")
            .to_string();
        assert!(
            err.contains(&seg.key()) && err.contains("checksum"),
            "{err}"
        );
        // The right bytes under another name are refused too.
        let other = name(Kind::Segment, 1, 6);
        assert!(decode(&other, &bytes, None).is_err());
        let snap = name(Kind::Snapshot, 5, 5);
        let db = vec![3u8; 1024];
        let decoded =
            decode(&snap, &encode_snapshot(&snap, 512, &db, None), None).expect("snapshot");
        assert_eq!(
            (decoded.db_pages, decoded.body),
            (2, Body::Database(db.clone()))
        );
        // Sealed with a data key: opened with it; without it or with another, a clear refusal
        // (and never the bytes); damage is still told by the checksum.
        let key = DataKey([9u8; 32]);
        let sealed = encode_snapshot(&snap, 512, &db, Some(&key));
        assert!(
            !sealed.windows(16).any(|w| w == [3u8; 16]),
            "plaintext leaked"
        );
        let opened = decode(&snap, &sealed, Some(&key)).expect("open");
        assert_eq!(opened.body, Body::Database(db));
        let no_key = decode(&snap, &sealed, None)
            .expect_err("no key")
            .to_string();
        assert!(no_key.contains("data key"), "{no_key}");
        let wrong = decode(&snap, &sealed, Some(&DataKey([1u8; 32])))
            .expect_err("wrong key")
            .to_string();
        assert!(wrong.contains("cannot be opened"), "{wrong}");
        assert_eq!(DataKey::from_hex(&key.to_hex()).expect("hex"), key);
        assert!(!format!("{key:?}").contains("09"));
    }

    #[test]
    fn snapshots_are_chunked_and_each_chunk_is_checked() {
        let snap = name(Kind::Snapshot, 7, 7);
        let db: Vec<u8> = (0..CHUNK_RAW * 2 + 4096)
            .map(|i| (i / 4096) as u8)
            .collect();
        let key = DataKey([5u8; 32]);
        let bytes = encode_snapshot(&snap, 4096, &db, Some(&key));
        let SnapshotHead::Chunked(table) = snapshot_head(&snap, &bytes).expect("head") else {
            panic!("a chunked snapshot");
        };
        assert_eq!((table.chunks.len(), table.raw_len), (3, db.len() as u64));
        let mut rebuilt = Vec::new();
        for (i, (off, len, _)) in table.chunks.iter().enumerate() {
            let chunk = &bytes[*off as usize..(*off + *len as u64) as usize];
            rebuilt.extend(open_chunk(&snap, &table, i, chunk, Some(&key)).expect("chunk"));
        }
        assert_eq!(rebuilt, db);
        // A chunk put in another chunk's place is refused, and so is a damaged one.
        let (o0, l0, _) = table.chunks[0];
        let first = &bytes[o0 as usize..(o0 + l0 as u64) as usize];
        assert!(open_chunk(&snap, &table, 1, first, Some(&key)).is_err());
        let mut damaged = first.to_vec();
        damaged[10] ^= 1;
        let err = open_chunk(&snap, &table, 0, &damaged, Some(&key))
            .expect_err("damaged")
            .to_string();
        assert!(err.contains("chunk 0") && err.contains("checksum"), "{err}");
        // Intact but sealed with another key: told apart from damage.
        let err = open_chunk(&snap, &table, 0, first, Some(&DataKey([6u8; 32])))
            .expect_err("wrong key")
            .to_string();
        assert!(err.contains("cannot be opened"), "{err}");
        // One thread's buffers reused across chunks of different sizes.
        let mut buffers = ChunkBuffers::default();
        for i in [2, 0, 2, 1] {
            let (off, len, _) = table.chunks[i];
            let chunk = &bytes[off as usize..(off + len as u64) as usize];
            open_chunk_into(&snap, &table, i, chunk, Some(&key), &mut buffers).expect("reused");
            let at = i * CHUNK_RAW;
            assert_eq!(buffers.raw(), &db[at..(at + CHUNK_RAW).min(db.len())]);
        }
        assert_eq!(
            decode(&snap, &bytes, Some(&key)).expect("whole").body,
            Body::Database(db.clone())
        );
        // Stored plain: the checksum is what finds damage.
        let plain = encode_snapshot(&snap, 4096, &db, None);
        let SnapshotHead::Chunked(table) = snapshot_head(&snap, &plain).expect("head") else {
            panic!("a chunked snapshot");
        };
        let (o0, l0, _) = table.chunks[0];
        let mut damaged = plain[o0 as usize..(o0 + l0 as u64) as usize].to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let err = open_chunk(&snap, &table, 0, &damaged, None)
            .expect_err("damaged plain chunk")
            .to_string();
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn packs_hold_segments_byte_for_byte_and_index_them() {
        let a = name(Kind::Segment, 1, 5);
        let mut b = name(Kind::Segment, 9, 12);
        b.org = OrgId::parse("other").expect("org");
        let pages: BTreeMap<u32, Vec<u8>> = [(1, vec![7u8; 512])].into();
        let segs = vec![
            (a.clone(), encode_segment(&a, 512, 1, &pages, None)),
            (b.clone(), encode_segment(&b, 512, 1, &pages, None)),
        ];
        let (pack, index_len, places) = encode_pack(&segs);
        let key = pack_key("eu-north-1", 1_764_000_000_000, 7, index_len);
        assert_eq!(
            parse_pack_key(&key),
            Some(("eu-north-1".into(), 1_764_000_000_000, index_len as u64))
        );
        let index = decode_pack_index(&key, &pack[pack.len() - index_len..]).expect("index");
        assert_eq!(index.len(), 2);
        for ((n, off, len), (want, (o, l))) in
            index.iter().zip(segs.iter().map(|s| &s.0).zip(&places))
        {
            assert_eq!((n, off, len), (want, o, l));
            let bytes = &pack[*off as usize..(*off + *len) as usize];
            assert!(decode(n, bytes, None).is_ok());
        }
        let refs = vec![PackRef {
            pack: key.clone(),
            offset: 0,
            len: places[0].1,
            segment: a.key(),
        }];
        let idx = name(Kind::Index, 1, 5);
        assert_eq!(ObjectName::parse(&idx.key()), Some(idx.clone()));
        assert_eq!(
            decode_index(&idx, &encode_index(&refs)).expect("index"),
            refs
        );
        let mut bad = encode_index(&refs);
        bad[3] ^= 1;
        assert!(decode_index(&idx, &bad).is_err());
    }
}
