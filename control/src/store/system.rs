//! The system's own facts: its id, made once with the store and never changed.

use super::sql::OptionalExtension;

use super::db::Store;
use super::error::Result;

impl Store {
    /// This system's id, made (from `fresh`) the first time it is asked for.
    pub fn system_id(&self, fresh: impl FnOnce() -> String) -> Result<String> {
        let conn = self.lock();
        if let Some(id) = conn
            .query_row("SELECT value FROM system WHERE key = 'id'", [], |r| {
                r.get(0)
            })
            .optional()?
        {
            return Ok(id);
        }
        let id = fresh();
        conn.execute(
            "INSERT INTO system (key, value) VALUES ('id', ?1) ON CONFLICT(key) DO NOTHING",
            [&id],
        )?;
        Ok(
            conn.query_row("SELECT value FROM system WHERE key = 'id'", [], |r| {
                r.get(0)
            })?,
        )
    }
}
