//! The header every backup object starts with, and the checksum every one ends with:
//! `HVB1 | kind u32 | page size u32 | db pages u32 | start u64 | end u64 | time ms u64 |
//! raw length u64`, big-endian.
//!
//! Keeps true: the header repeats the object's name (start, end, time), so bytes read under
//! another key are refused; the kind's top bit says whether the body is sealed, so a missing
//! key is told apart from damage before anything is opened.

use super::keys::{Kind, ObjectName};

pub const MAGIC: &[u8; 4] = b"HVB1";
/// Set in the kind when the body is sealed with the org's data key.
pub const SEALED: u32 = 0x8000_0000;
pub const HEADER_LEN: usize = 4 + 4 + 4 + 4 + 8 + 8 + 8 + 8;
/// The kind of a snapshot written in chunks (single-body snapshots are 1, segments 2).
pub const KIND_CHUNKED: u32 = 3;

pub fn header(
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

/// Whether `page_size` is one SQLite can have.
pub fn valid_page_size(page_size: u32) -> bool {
    (512..=65536).contains(&page_size) && page_size.is_power_of_two()
}
