//! The one SQLite connection behind [`Store`] and the schema's versions. The schema version is
//! `PRAGMA user_version`: the number of files in `migrations/` applied, each in its own
//! transaction with the version bump, so a crash mid-migration leaves the version before it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::sql::{Conn, EngineKind};

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
    include_str!("migrations/0016_leader.sql"),
];

pub struct Store {
    conn: Mutex<Conn>,
}

/// Where a store lives: a SQLite file, or a PostgreSQL database (several control replicas
/// share one). Its `Debug` never shows a connection string, which may hold a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Postgres(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Location {
    /// `postgres://…` or `postgresql://…` is a database; anything else a file path.
    pub fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_string())
        } else {
            Location::File(PathBuf::from(s))
        }
    }

    /// What a log line or an error may say of it: the file, or the database's host and name
    /// without user or password.
    pub fn describe(&self) -> String {
        match self {
            Location::File(p) => p.display().to_string(),
            Location::Postgres(url) => {
                let rest = url.split_once("://").map_or("", |(_, r)| r);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
                format!("postgres://{rest}")
            }
        }
    }
}

/// The PostgreSQL table that holds the schema version (SQLite keeps it in `user_version`).
const PG_VERSION_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS hemvist_schema (one INTEGER PRIMARY KEY CHECK (one = 1), version BIGINT NOT NULL);
     INSERT INTO hemvist_schema (one, version) VALUES (1, 0) ON CONFLICT (one) DO NOTHING";
/// Replicas starting together take turns migrating (a session-level advisory lock).
const PG_MIGRATION_LOCK: i64 = 0x6865_6d76_6973_7401;

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let store = Store {
            conn: Mutex::new(Conn::sqlite(conn)),
        };
        store.migrate()?;
        Ok(store)
    }

    /// A store on PostgreSQL (`postgres://user@host:port/db`; the password, if any, from the
    /// URL or the environment's `PGPASSWORD`).
    pub fn connect(url: &str) -> Result<Self> {
        let store = Store {
            conn: Mutex::new(Conn::postgres(url)?),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn at(location: &Location) -> Result<Self> {
        match location {
            Location::File(p) => Store::open(p),
            Location::Postgres(url) => Store::connect(url),
        }
    }

    pub fn engine(&self) -> EngineKind {
        self.lock().kind()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        // A panic while holding the lock cannot leave the database half-written (transactions
        // roll back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.lock();
        let postgres = conn.kind() == EngineKind::Postgres;
        if postgres {
            // Locked first: replicas starting together would race even to create the table.
            conn.query_row(
                "SELECT pg_advisory_lock(?1)::text",
                [PG_MIGRATION_LOCK],
                |_| Ok(()),
            )?;
        }
        let result = if postgres {
            conn.execute_batch(PG_VERSION_TABLE)
                .map_err(StoreError::from)
                .and_then(|()| self.migrate_locked(&mut conn, postgres))
        } else {
            self.migrate_locked(&mut conn, postgres)
        };
        if postgres {
            conn.query_row(
                "SELECT pg_advisory_unlock(?1)::text",
                [PG_MIGRATION_LOCK],
                |_| Ok(()),
            )?;
        }
        result
    }

    fn migrate_locked(&self, conn: &mut Conn, postgres: bool) -> Result<()> {
        let current: i64 = match conn.as_sqlite() {
            Some(c) => c.pragma_query_value(None, "user_version", |r| r.get(0))?,
            None => conn.query_row("SELECT version FROM hemvist_schema", [], |r| r.get(0))?,
        };
        if current < 0 || current as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                found: current,
                known: MIGRATIONS.len(),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = i + 1;
            let failed = |source| StoreError::Migration { version, source };
            let sql = conn.migration(sql);
            let tx = conn.transaction().map_err(failed)?;
            tx.execute_batch(&sql).map_err(failed)?;
            if postgres {
                tx.execute("UPDATE hemvist_schema SET version = ?1", [version as i64])
                    .map_err(failed)?;
            } else if let Some(c) = tx.as_sqlite() {
                c.pragma_update(None, "user_version", version as i64)
                    .map_err(|e| failed(e.into()))?;
            }
            tx.commit().map_err(failed)?;
        }
        Ok(())
    }
}

/// A store in a fresh folder of its own, for tests; the folder is left for the OS to clean.
/// With `HEMVIST_TEST_POSTGRES` set (a server's URL, as `scripts/postgres start` prints it),
/// a fresh database on that server instead, so the store's tests run on both engines.
#[cfg(test)]
pub(super) fn temp_store() -> (Store, std::path::PathBuf) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    if let Ok(server) = std::env::var("HEMVIST_TEST_POSTGRES") {
        let url = fresh_database(&server, &format!("store_{}_{n}", std::process::id())).unwrap();
        return (Store::connect(&url).unwrap(), PathBuf::from(url));
    }
    let dir = std::env::temp_dir().join(format!(
        "hemvist-store-{}-{}-{n}",
        std::process::id(),
        crate::clock::now_ms(),
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.db");
    (Store::open(&path).unwrap(), path)
}

/// Creates database `name` (dropped first if a run before left it) on the server at `server`
/// and answers its URL. For tests and `hemvist dev --ha`.
pub fn fresh_database(server: &str, name: &str) -> Result<String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Stale(format!("{name:?} is no database name")));
    }
    let admin = Conn::postgres(server)?;
    admin.execute_batch(&format!("DROP DATABASE IF EXISTS {name}"))?;
    admin.execute_batch(&format!("CREATE DATABASE {name}"))?;
    Ok(database_url(server, name))
}

/// The URL of database `name` on the server `server` names.
pub fn database_url(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').unwrap_or((server, ""));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let (store, path) = temp_store();
        let location = Location::parse(&path.to_string_lossy());
        drop(store);
        let reopened = Store::at(&location).unwrap();
        let set_version = |store: &Store, v: i64| {
            let conn = store.lock();
            match conn.as_sqlite() {
                Some(c) => c.pragma_update(None, "user_version", v).unwrap(),
                None => {
                    conn.execute("UPDATE hemvist_schema SET version = ?1", [v])
                        .unwrap();
                }
            }
        };
        let version: i64 = {
            let conn = reopened.lock();
            match conn.as_sqlite() {
                Some(c) => c
                    .pragma_query_value(None, "user_version", |r| r.get(0))
                    .unwrap(),
                None => conn
                    .query_row("SELECT version FROM hemvist_schema", [], |r| r.get(0))
                    .unwrap(),
            }
        };
        assert_eq!(version as usize, MIGRATIONS.len());
        set_version(&reopened, 99);
        drop(reopened);
        assert!(matches!(
            Store::at(&location),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
