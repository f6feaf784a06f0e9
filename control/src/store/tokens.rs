//! Named admin tokens, kept as their SHA-256 only: the store can tell a presented token's hash
//! from another's, never give a token back.

use super::sql::{params, OptionalExtension};
use serde::Serialize;

use super::db::Store;
use super::error::Result;

#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    pub name: String,
    pub created_ms: i64,
    pub created_by: String,
    pub revoked_ms: Option<i64>,
}

fn token_row(r: &super::sql::Row) -> super::sql::Result<TokenRecord> {
    Ok(TokenRecord {
        name: r.get(0)?,
        created_ms: r.get(1)?,
        created_by: r.get(2)?,
        revoked_ms: r.get(3)?,
    })
}

impl Store {
    /// A new token under `name`; a name already taken (revoked or not) is a conflict.
    pub fn create_token(
        &self,
        name: &str,
        sha256_hex: &str,
        created_by: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.lock().execute(
            "INSERT INTO admin_tokens (name, sha256, created_ms, created_by) VALUES (?1, ?2, ?3, ?4)",
            params![name, sha256_hex, now_ms, created_by],
        )?;
        Ok(())
    }

    /// The live (not revoked) token with this hash.
    pub fn live_token(&self, sha256_hex: &str) -> Result<Option<TokenRecord>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT name, created_ms, created_by, revoked_ms FROM admin_tokens
                 WHERE sha256 = ?1 AND revoked_ms IS NULL",
                [sha256_hex],
                token_row,
            )
            .optional()?)
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, created_ms, created_by, revoked_ms FROM admin_tokens ORDER BY name",
        )?;
        let rows = stmt.query_map([], token_row)?;
        Ok(rows.collect::<super::sql::Result<_>>()?)
    }

    /// Revokes a token; whether it was live.
    pub fn revoke_token(&self, name: &str, now_ms: i64) -> Result<bool> {
        Ok(self.lock().execute(
            "UPDATE admin_tokens SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
            params![name, now_ms],
        )? > 0)
    }
}
