//! The `audit` table: an append-only, hash-chained log of every change of where data lives.
//! Each record's hash covers the previous record's hash and every field of its own, so changing,
//! removing or reordering any record breaks the chain from there on.

use hemvist_proto::OrgId;
use rusqlite::{params, OptionalExtension, Transaction};
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
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at_ms, actor, action, org, detail, prev_hash, hash FROM audit ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        let mut prev = GENESIS.to_string();
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let at: i64 = r.get(1)?;
            let actor: String = r.get(2)?;
            let action: String = r.get(3)?;
            let org: Option<String> = r.get(4)?;
            let detail: String = r.get(5)?;
            let prev_hash: String = r.get(6)?;
            let hash: String = r.get(7)?;
            let want = chain_hash(&prev, seq, at, &actor, &action, org.as_deref(), &detail);
            if prev_hash != prev || hash != want {
                return Ok(Err(seq));
            }
            prev = hash;
            n += 1;
        }
        Ok(Ok(n))
    }

    /// The newest `limit` records of every org and of the fleet, oldest first.
    pub fn audit_recent(&self, limit: u32) -> Result<Vec<serde_json::Value>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, at_ms, actor, action, org, detail FROM
               (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq",
        )?;
        let rows = stmt.query_map([limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, actor, action, org, detail) = row?;
            let detail: serde_json::Value =
                serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail));
            out.push(serde_json::json!({
                "seq": seq, "at_ms": at, "actor": actor, "action": action, "org": org,
                "detail": detail
            }));
        }
        Ok(out)
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
