//! Idempotent writes. A write that carries a key (the `Idempotency-Key` header, or the hidden
//! field every write form of the node's pages has) is recorded with that key in the SAME
//! SQLite transaction as the write itself, in the tenant's `idempotency_keys` table: so a retry
//! after a crash, a timeout or a 503 for a committed `sync` write finds the record exactly when
//! the write happened, and is given the first answer instead of writing again. The same key with
//! another request (another body, route or user) is refused; records live a bounded time (the
//! node's `idempotency_ttl_secs`) and are pruned by later writes, so the table stays bounded.
//!
//! A write without a key still works, as before, and is not deduplicated: older pages still open
//! in a browser and scripts written before keys existed keep working.

use hemvist_proto::{HemvistError, OrgId};
use rusqlite::{params, OptionalExtension, Transaction};
use sha2::{Digest, Sha256};

/// The longest key accepted (a UUID is 36 characters, 32 random bytes in base64 are 44).
pub const MAX_KEY_CHARS: usize = 255;

/// Expired records removed per write: a backlog drains faster than writes add to it, and no
/// single write pays for all of it.
const PRUNE_BATCH: i64 = 64;

/// A client's idempotency key, checked: 1 to [`MAX_KEY_CHARS`] characters out of letters,
/// digits and `-_.~:+/=` (UUIDs, hex, base64 and base64url all fit). A key quoted as an HTTP
/// structured-field string (`"abc"`, as the IETF draft writes it) is taken without its quotes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(String);

impl std::fmt::Debug for Key {
    // A client may put anything in a key; it stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    pub fn parse(raw: &str) -> Result<Key, HemvistError> {
        let raw = raw.trim();
        let raw = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or(raw);
        if raw.is_empty() {
            return Err(HemvistError::invalid("the idempotency key is empty"));
        }
        if raw.chars().count() > MAX_KEY_CHARS {
            return Err(HemvistError::invalid(format!(
                "the idempotency key is longer than {MAX_KEY_CHARS} characters"
            )));
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~:+/=".contains(c))
        {
            return Err(HemvistError::invalid(
                "the idempotency key may hold only letters, digits and - _ . ~ : + / =",
            ));
        }
        Ok(Key(raw.to_string()))
    }

    /// A new random key, for a form the node serves.
    pub fn fresh() -> Result<Key, HemvistError> {
        Ok(Key(hemvist_proto::random::hex(16)?))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a retry must match: the key, and a digest of the request it first came with.
pub struct Claim {
    key_hash: [u8; 32],
    request_hash: [u8; 32],
    ttl_ms: i64,
}

impl Claim {
    /// `parts` name the request (the route, who sends it, every field written); each is
    /// length-prefixed so no two different lists digest alike. A record is kept `ttl_ms`.
    pub fn new(key: &Key, parts: &[&str], ttl_ms: i64) -> Claim {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        Claim {
            key_hash: Sha256::digest(key.0.as_bytes()).into(),
            request_hash: h.finalize().into(),
            ttl_ms: ttl_ms.max(0),
        }
    }
}

/// What the first request with a key was told; a retry is told the same. `location` is relative
/// to the org's root (`contacts/7?saved=1`), so a branch or a move of the file still points home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// JSON.
    pub body: String,
    pub location: String,
}

/// How a write with a claim went.
#[derive(Debug)]
pub enum Once<T> {
    /// Written now (and the key recorded, if there was one).
    Written(T),
    /// The key was seen with this same request: nothing written, this is the first answer.
    Replayed(Answer),
    /// The key was seen with another request: nothing written.
    Reused,
}

/// Runs `write` in `tx` once per key: unless `claim`'s key is recorded (and not expired), the
/// write runs and, if `answer` gives its answer, the key is recorded with it in `tx`. A write
/// that `answer` says wrote nothing (`None`) leaves no record, so its retry runs again. Expired
/// records are pruned a batch at a time.
pub fn once<T>(
    tx: &Transaction<'_>,
    claim: Option<&Claim>,
    now_ms: i64,
    write: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    answer: impl FnOnce(&T) -> Option<Answer>,
) -> rusqlite::Result<Once<T>> {
    let Some(claim) = claim else {
        return write(tx).map(Once::Written);
    };
    let oldest_kept = now_ms.saturating_sub(claim.ttl_ms);
    let seen = tx
        .prepare_cached(
            "SELECT request_hash, status, body, location FROM idempotency_keys
             WHERE key_hash = ?1 AND created_ms >= ?2",
        )?
        .query_row(params![&claim.key_hash[..], oldest_kept], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                Answer {
                    status: r.get(1)?,
                    body: r.get(2)?,
                    location: r.get(3)?,
                },
            ))
        })
        .optional()?;
    if let Some((request_hash, first)) = seen {
        return Ok(if request_hash == claim.request_hash {
            Once::Replayed(first)
        } else {
            Once::Reused
        });
    }
    tx.prepare_cached(
        "DELETE FROM idempotency_keys WHERE key_hash IN (
           SELECT key_hash FROM idempotency_keys WHERE created_ms < ?1
           ORDER BY created_ms LIMIT ?2)",
    )?
    .execute(params![oldest_kept, PRUNE_BATCH])?;
    let out = write(tx)?;
    if let Some(a) = answer(&out) {
        // REPLACE: an expired record of the same key may not have been pruned yet.
        tx.prepare_cached(
            "INSERT OR REPLACE INTO idempotency_keys
               (key_hash, request_hash, status, body, location, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            &claim.key_hash[..],
            &claim.request_hash[..],
            a.status,
            a.body,
            a.location,
            now_ms
        ])?;
    }
    Ok(Once::Written(out))
}

/// How many key records a tenant holds (for tests and operators: the table stays bounded).
pub fn recorded(conn: &rusqlite::Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM idempotency_keys", [], |r| r.get(0))
}

/// The error a reused key is answered with (422 at the HTTP edge).
pub fn reused(org: &OrgId) -> String {
    format!(
        "this idempotency key was already used in org {org} for another request; \
         send this request with a new key"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let keys = hemvist_proto::migration::builtin()
            .into_iter()
            .find(|m| m.name == "idempotency_keys")
            .expect("the migration");
        conn.execute_batch(&keys.sql).unwrap();
        conn.execute_batch("CREATE TABLE t (v TEXT)").unwrap();
        conn
    }

    fn put(conn: &mut rusqlite::Connection, claim: Option<&Claim>, now: i64, v: &str) -> Once<i64> {
        let tx = conn.transaction().unwrap();
        let v = v.to_string();
        let out = once(
            &tx,
            claim,
            now,
            |tx| {
                tx.execute("INSERT INTO t (v) VALUES (?1)", [&v])?;
                Ok(tx.last_insert_rowid())
            },
            |id| {
                Some(Answer {
                    status: 201,
                    body: format!("{{\"id\":{id}}}"),
                    location: format!("t/{id}"),
                })
            },
        )
        .unwrap();
        tx.commit().unwrap();
        out
    }

    fn rows(conn: &rusqlite::Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_retry_gets_the_first_answer_and_writes_nothing() {
        let mut conn = db();
        let key = Key::parse("k-1").unwrap();
        let claim = Claim::new(&key, &["create", "a"], 1_000);
        assert!(matches!(
            put(&mut conn, Some(&claim), 10, "a"),
            Once::Written(1)
        ));
        match put(&mut conn, Some(&claim), 20, "a") {
            Once::Replayed(a) => assert_eq!((a.status, a.location.as_str()), (201, "t/1")),
            other => panic!("{other:?}"),
        }
        assert_eq!(rows(&conn), 1);
        let other_body = Claim::new(&key, &["create", "b"], 1_000);
        assert!(matches!(
            put(&mut conn, Some(&other_body), 30, "b"),
            Once::Reused
        ));
        let other_key = Claim::new(&Key::parse("k-2").unwrap(), &["create", "a"], 1_000);
        assert!(matches!(
            put(&mut conn, Some(&other_key), 40, "a"),
            Once::Written(2)
        ));
        assert!(matches!(put(&mut conn, None, 50, "a"), Once::Written(3)));
        assert_eq!(rows(&conn), 3);
    }

    #[test]
    fn records_expire_and_are_pruned_by_later_writes() {
        let mut conn = db();
        for i in 0..100 {
            let claim = Claim::new(&Key::parse(&format!("k{i}")).unwrap(), &["x"], 1_000);
            put(&mut conn, Some(&claim), i, "x");
        }
        assert_eq!(recorded(&conn).unwrap(), 100);
        // Past its time a key is new again: its write runs.
        let again = Claim::new(&Key::parse("k0").unwrap(), &["x"], 1_000);
        assert!(matches!(
            put(&mut conn, Some(&again), 5_000, "x"),
            Once::Written(_)
        ));
        let next = Claim::new(&Key::parse("later").unwrap(), &["x"], 1_000);
        put(&mut conn, Some(&next), 5_001, "x");
        assert_eq!(
            recorded(&conn).unwrap(),
            2,
            "only the live records are left"
        );
    }

    #[test]
    fn keys_are_checked() {
        for ok in [
            "8e03978e-40d5-43e8-bc93-6894a57f9324",
            "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
            "YWJj+/=",
            "a",
        ] {
            assert!(Key::parse(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_KEY_CHARS + 1);
        for bad in ["", "\"\"", "a b", "ä", "a\nb", "<x>", long.as_str()] {
            assert!(Key::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Key::parse("\"q\"").unwrap().as_str(), "q");
        assert_ne!(Key::fresh().unwrap(), Key::fresh().unwrap());
        assert_eq!(format!("{:?}", Key::parse("secret").unwrap()), "Key(..)");
    }
}
