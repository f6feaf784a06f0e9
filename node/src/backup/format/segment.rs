//! The single-body object: `header | body | sha256(header | body)`, the body LZ4-compressed and,
//! with the org's data key, sealed (`nonce | XChaCha20-Poly1305(body)`, the header as
//! associated data). Every WAL segment is one (its body: `(page number u32, page)` pairs), and
//! so is a snapshot written before snapshots were chunked (its body: the database file).
//!
//! Keeps true: nothing of a body is used before the checksum, then the header against the name
//! it was read under, then the seal, have all passed; the SHA-256 covers the sealed bytes, so
//! damage is named without the key.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use hemvist_proto::DataKey;
use sha2::{Digest, Sha256};

use super::crypto::{self, NONCE, TAG};
use super::header::{header, valid_page_size, HEADER_LEN, MAGIC, SEALED};
use super::keys::{Kind, ObjectName};
use crate::backup::{be32, be64};

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
    seal_body(h, &raw, key)
}

/// `header` followed by `raw` compressed (and sealed), then the checksum of it all.
fn seal_body(mut out: Vec<u8>, raw: &[u8], key: Option<&DataKey>) -> Vec<u8> {
    let compressed = lz4_flex::block::compress(raw);
    match key {
        None => out.extend_from_slice(&compressed),
        Some(key) => {
            let sealed = crypto::seal(key, &out, &compressed);
            out.extend_from_slice(&sealed);
        }
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Checks and decodes a single-body object (`bytes` at least a header and a checksum long).
pub fn decode_single(
    name: &ObjectName,
    bytes: &[u8],
    key: Option<&DataKey>,
) -> anyhow::Result<Decoded> {
    let (content, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(content).as_slice() != sum {
        bail!("{}: checksum mismatch (the object is damaged)", name.key());
    }
    let be32 = |at: usize| be32(content, at);
    let be64 = |at: usize| be64(content, at);
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
    if !valid_page_size(page_size) {
        bail!("{}: bad page size {page_size}", name.key());
    }
    let opened;
    let compressed = if sealed {
        let Some(key) = key else {
            bail!(
                "{}: sealed with the org's data key, and no key was given (an org whose key was destroyed is erased)",
                name.key()
            );
        };
        let body = &content[HEADER_LEN..];
        if body.len() < NONCE + TAG {
            bail!("{}: sealed body too short", name.key());
        }
        opened = crypto::open(key, &content[..HEADER_LEN], body)
            .with_context(|| format!("{}: cannot be opened with this data key", name.key()))?;
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
