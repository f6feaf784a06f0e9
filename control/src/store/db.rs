//! The one SQLite connection behind [`Store`] and the schema's versions. The schema version is
//! `PRAGMA user_version`: the number of files in `migrations/` applied, each in its own
//! transaction with the version bump, so a crash mid-migration leaves the version before it.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;

use super::error::{Result, StoreError};

/// Applied in order; the Nth entry takes the schema from version N-1 to N. Never edit or
/// reorder one that has shipped: existing databases only run the ones after their version.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_org_durability.sql"),
    include_str!("migrations/0003_org_data_key.sql"),
    include_str!("migrations/0004_system_and_backups.sql"),
    include_str!("migrations/0005_admin_tokens.sql"),
    include_str!("migrations/0006_command_error_kind.sql"),
    include_str!("migrations/0007_operations.sql"),
    include_str!("migrations/0008_moves.sql"),
    include_str!("migrations/0009_known_positions.sql"),
    include_str!("migrations/0010_node_drain.sql"),
    include_str!("migrations/0011_schema_files.sql"),
    include_str!("migrations/0012_branches.sql"),
    include_str!("migrations/0013_erasures.sql"),
    include_str!("migrations/0014_operation_parent.sql"),
    include_str!("migrations/0015_org_lookups.sql"),
];

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.lock();
        let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current < 0 || current as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                found: current,
                known: MIGRATIONS.len(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i + 1;
            let failed = |source| StoreError::Migration { version, source };
            let tx = conn.transaction().map_err(failed)?;
            tx.execute_batch(sql).map_err(failed)?;
            tx.pragma_update(None, "user_version", version as i64)
                .map_err(failed)?;
            tx.commit().map_err(failed)?;
        }
        Ok(())
    }
}

/// A store in a fresh folder of its own, for tests; the folder is left for the OS to clean.
#[cfg(test)]
pub(super) fn temp_store() -> (Store, std::path::PathBuf) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hemvist-store-{}-{}-{}",
        std::process::id(),
        crate::clock::now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.db");
    (Store::open(&path).unwrap(), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let (store, path) = temp_store();
        drop(store);
        let reopened = Store::open(&path).unwrap();
        let version: i64 = reopened
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        reopened
            .lock()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(reopened);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
