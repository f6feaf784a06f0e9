//! The `audit` table: an append-only, hash-chained log of every change of where data lives.
//! Each record's hash covers the previous record's hash and every field of its own, so changing,
//! removing or reordering any record breaks the chain from there on.

use super::sql::{params, OptionalExtension, Transaction};
use hemvist_proto::OrgId;
use sha2::{Digest, Sha256};

use super::db::Store;
use super::error::Result;
use crate::clock::now_ms;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Store {
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        org: Option<&OrgId>,
        detail: &serde_json::Value,
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        append_audit(&tx, actor, action, org, detail)?;
        Ok(tx.commit()?)
    }

    /// Recomputes the hash chain; returns the number of records, or the first broken one.
    pub fn verify_audit(&self) -> Result<std::result::Result<u64, i64>> {
        let check = self.check_audit_chain(&[])?;
        Ok(match check.first_fault {
            None => Ok(check.entries),
            Some((seq, _)) => Err(seq),
        })
    }

    /// Walks the whole chain in order: how many entries, its head, the first entry that is not
    /// what was written and why, and the stored hash at each of `at` (the seqs that signed
    /// checkpoints name), so a chain rewritten consistently can still be caught.
    pub fn check_audit_chain(&self, at: &[i64]) -> Result<ChainCheck> {
        let wanted: std::collections::HashSet<i64> = at.iter().copied().collect();
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at_ms, actor, action, org, detail, prev_hash, hash FROM audit ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut check = ChainCheck::default();
        let mut prev = GENESIS.to_string();
        let mut expected = 1i64;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let at: i64 = r.get(1)?;
            let actor: String = r.get(2)?;
            let action: String = r.get(3)?;
            let org: Option<String> = r.get(4)?;
            let detail: String = r.get(5)?;
            let prev_hash: String = r.get(6)?;
            let hash: String = r.get(7)?;
            if check.first_fault.is_none() {
                let fault = if seq != expected {
                    Some((expected, ChainFault::Missing { next_present: seq }))
                } else if prev_hash != prev {
                    Some((seq, ChainFault::Unlinked))
                } else if hash
                    != chain_hash(&prev, seq, at, &actor, &action, org.as_deref(), &detail)
                {
                    Some((seq, ChainFault::Altered))
                } else {
                    None
                };
                check.first_fault = fault;
            }
            if wanted.contains(&seq) {
                check.hashes.insert(seq, hash.clone());
            }
            check.head = Some((seq, hash.clone()));
            prev = hash;
            expected = seq + 1;
            check.entries += 1;
        }
        Ok(check)
    }

    /// The newest entry's seq and hash: what a checkpoint signs.
    pub fn audit_head(&self) -> Result<Option<(i64, String, i64)>> {
        let conn = self.lock();
        Ok(conn
            .query_row(
                "SELECT seq, hash, at_ms FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    /// Every entry of one action, oldest first: (org, time, detail).
    pub fn audit_of_action(
        &self,
        action: &str,
    ) -> Result<Vec<(Option<String>, i64, serde_json::Value)>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT org, at_ms, detail FROM audit WHERE action = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([action], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (org, at, detail) = row?;
            out.push((org, at, serde_json::from_str(&detail).unwrap_or_default()));
        }
        Ok(out)
    }

    /// The stored hash of entry `seq`, if it exists.
    pub fn audit_hash_at(&self, seq: i64) -> Result<Option<String>> {
        let conn = self.lock();
        Ok(conn
            .query_row("SELECT hash FROM audit WHERE seq = ?1", [seq], |r| r.get(0))
            .optional()?)
    }

    /// Entries oldest first: of one org or all, from a time on, after a seq (the cursor of the
    /// previous page), at most `limit`.
    pub fn audit_query(&self, q: &AuditFilter<'_>) -> Result<Vec<serde_json::Value>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at_ms, actor, action, org, detail FROM audit
             WHERE (CAST(?1 AS TEXT) IS NULL OR org = ?1) AND at_ms >= ?2 AND seq > ?3
             ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![q.org.map(OrgId::as_str), q.since_ms, q.after_seq, q.limit],
            entry_json,
        )?;
        Ok(rows.collect::<super::sql::Result<_>>()?)
    }

    /// The newest `limit` records of every org and of the fleet, oldest first.
    pub fn audit_recent(&self, limit: u32) -> Result<Vec<serde_json::Value>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at_ms, actor, action, org, detail FROM
               (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) AS newest ORDER BY seq",
        )?;
        let rows = stmt.query_map([limit], entry_json)?;
        Ok(rows.collect::<super::sql::Result<_>>()?)
    }

    /// The newest `limit` records of one org, oldest first (by its index, however long its
    /// trail).
    pub fn audit_recent_of(&self, org: &OrgId, limit: u32) -> Result<Vec<serde_json::Value>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at_ms, actor, action, org, detail FROM
               (SELECT * FROM audit WHERE org = ?1 ORDER BY seq DESC LIMIT ?2) AS newest ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![org.as_str(), limit], entry_json)?;
        Ok(rows.collect::<super::sql::Result<_>>()?)
    }

    pub fn audit_for_org(&self, org: &OrgId) -> Result<Vec<serde_json::Value>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at_ms, actor, action, detail FROM audit WHERE org = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([org.as_str()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, actor, action, detail) = row?;
            let detail: serde_json::Value =
                serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail));
            out.push(serde_json::json!({
                "seq": seq, "at_ms": at, "actor": actor, "action": action, "detail": detail
            }));
        }
        Ok(out)
    }
}

/// One entry as the API shows it, from a row of (seq, at_ms, actor, action, org, detail).
fn entry_json(r: &super::sql::Row) -> super::sql::Result<serde_json::Value> {
    let detail: String = r.get(5)?;
    let detail: serde_json::Value =
        serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail));
    Ok(serde_json::json!({
        "seq": r.get::<_, i64>(0)?, "at_ms": r.get::<_, i64>(1)?,
        "actor": r.get::<_, String>(2)?, "action": r.get::<_, String>(3)?,
        "org": r.get::<_, Option<String>>(4)?, "detail": detail
    }))
}

/// What `audit_query` selects.
pub struct AuditFilter<'a> {
    pub org: Option<&'a OrgId>,
    pub since_ms: i64,
    pub after_seq: i64,
    pub limit: u32,
}

/// The result of walking the chain (see `check_audit_chain`).
#[derive(Debug, Default)]
pub struct ChainCheck {
    pub entries: u64,
    pub head: Option<(i64, String)>,
    /// The first entry that is not as written, and how.
    pub first_fault: Option<(i64, ChainFault)>,
    /// The stored hash at each asked-for seq that exists.
    pub hashes: std::collections::HashMap<i64, String>,
}

/// How an entry differs from what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainFault {
    /// This seq is absent: the chain jumps from the one before to `next_present`.
    Missing { next_present: i64 },
    /// Its link to the entry before is broken: an entry before it was removed, replaced or
    /// moved.
    Unlinked,
    /// Its own fields no longer give its hash: it was edited after it was written.
    Altered,
}

/// Appends one record inside the caller's transaction, so it commits with the change it records.
pub(super) fn append_audit(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    org: Option<&OrgId>,
    detail: &serde_json::Value,
) -> Result<()> {
    let (seq, prev): (i64, String) = tx
        .query_row(
            "SELECT seq + 1, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((1, GENESIS.to_string()));
    let at = now_ms();
    let detail = detail.to_string();
    let org = org.map(OrgId::as_str);
    let hash = chain_hash(&prev, seq, at, actor, action, org, &detail);
    tx.execute(
        "INSERT INTO audit (seq, at_ms, actor, action, org, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![seq, at, actor, action, org, detail, prev, hash],
    )?;
    Ok(())
}

fn chain_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    org: Option<&str>,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &seq.to_string(),
        &at.to_string(),
        actor,
        action,
        org.unwrap_or(""),
        detail,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
