//! What a backup object is called: one function builds each kind of key and one parses it.
//!
//! Keeps true: every tenant object's key holds its org and generation (DESIGN invariant 1), and
//! listing order under a generation is LSN order (hex, zero-padded), so a LIST is a history.

use hemvist_proto::OrgId;

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
