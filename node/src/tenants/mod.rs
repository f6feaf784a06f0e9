//! The tenant store: one SQLite file per org, in WAL mode, opened lazily.
//!
//! Invariant: a node can host far more orgs than it can hold open. Only the most recently used
//! `max_open` tenants have open connections; an idle tenant holds no file handle and no timer.
//! Each open tenant has one writer connection (so one writer per tenant in this process) and a
//! small pool of reader connections, so reads go in parallel with each other and with the writer,
//! and its in-memory search index once someone searches: everything an open tenant holds goes
//! when it closes, so a replaced or reopened file never meets a stale index.
//!
//! A tenant is created at exactly the schema it is told, as a copy of that schema's
//! [`template`], and put in place only once the copy is whole and checked; an existing tenant's
//! schema is checked, never changed, by [`TenantStore::adopt`] (only `schema::migrate` changes
//! it, under the tenant's writer). A tenant's file is replaced by another only under its writer,
//! with its WAL checkpointed into it first, by one rename ([`TenantStore::replace`]).
//!
//! Reads and writes that fail in SQLite are counted per org in the [`TenantHealth`] the store is
//! given, if any: the heartbeat reports them.

pub mod mask;
pub mod schema;
pub mod sweeper;
pub mod template;
#[cfg(test)]
mod tests;
pub mod trash;

/// The extensions of the staging files made beside a tenant's path (`{org}.{ext}`): a
/// template's copy, a restore, a rollback, a move's copy, a branch's unmasked and masked copy.
pub const STAGING_EXTENSIONS: [&str; 7] = [
    "from-template",
    "from-backup",
    "restoring",
    "rolling-back",
    "moving",
    "branching",
    "masked",
];

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hemvist_proto::{HemvistError, OrgId};
use lru::LruCache;
use rusqlite::functions::FunctionFlags;
use rusqlite::{Connection, OpenFlags};

use crate::health::TenantHealth;
use schema::{Schema, TenantSchema};
use template::Templates;

/// Readers kept per open tenant; more may be opened under load, only this many are kept.
const READERS_PER_TENANT: usize = 16;

/// Set when the node backs up: then only the replicator checkpoints, after shipping.
static CHECKPOINTS_BY_BACKUP: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Hands checkpointing of every tenant opened from now on to the replicator.
pub fn checkpoints_by_backup() {
    CHECKPOINTS_BY_BACKUP.store(true, Ordering::Relaxed);
}

pub struct TenantStore {
    root: PathBuf,
    templates: Templates,
    open: Mutex<LruCache<OrgId, Arc<Tenant>>>,
    pub opens: AtomicU64,
    pub evictions: AtomicU64,
    /// Where reads and writes that fail in SQLite are counted.
    health: Option<Arc<TenantHealth>>,
}

/// What a domain module keeps beside an open tenant.
pub type Derived = Box<dyn std::any::Any + Send + Sync>;

pub struct Tenant {
    org: OrgId,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    last_used: Mutex<Instant>,
    health: Option<Arc<TenantHealth>>,
    /// In-memory state derived from the tenant's data (the search index, built by the first
    /// search), dropped with the tenant when it closes. The store does not know its type.
    pub derived: RwLock<Option<Derived>>,
}

fn db_error(org: &OrgId, e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("tenant {org}: {e}"))
}

/// A failure in SQLite of a read or write of `org`: counted, then as [`db_error`].
fn sqlite_error(health: Option<&TenantHealth>, org: &OrgId, e: rusqlite::Error) -> HemvistError {
    if let Some(h) = health {
        h.sqlite_error(org);
    }
    db_error(org, e)
}

impl TenantStore {
    pub fn new(data_dir: &Path, max_open: usize) -> anyhow::Result<Self> {
        let root = data_dir.join("tenants");
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            templates: Templates::new(data_dir),
            open: Mutex::new(LruCache::new(
                NonZeroUsize::new(max_open).unwrap_or(NonZeroUsize::MIN),
            )),
            opens: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            health: None,
        })
    }

    /// The same store, counting the reads and writes that fail in SQLite in `health`.
    pub fn counting_errors_in(mut self, health: Arc<TenantHealth>) -> Self {
        self.health = Some(health);
        self
    }

    /// The one place a tenant's file path is built. Safe because an `OrgId` is a checked slug;
    /// files are spread over subfolders by the first two characters so no folder gets huge.
    pub fn path(&self, org: &OrgId) -> PathBuf {
        let shard: String = org.as_str().chars().take(2).collect();
        self.root.join(shard).join(format!("{org}.db"))
    }

    pub fn exists(&self, org: &OrgId) -> bool {
        // (The staging files beside a tenant's path are named in `STAGING_EXTENSIONS`.)
        self.path(org).is_file()
    }

    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<OrgId, Arc<Tenant>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the tenant's database at exactly `schema`: a copy of the schema's template (built
    /// the first time, its rows applied at `now_ms`), switched to WAL and checked against the
    /// schema under a staging name, synced, then renamed into place. Refuses if the tenant has a
    /// file already (a host checks that one with [`TenantStore::adopt`]). Callers create one org
    /// at a time (its commands run in order), so nothing else puts a file at its path meanwhile.
    pub fn create(
        &self,
        org: &OrgId,
        schema: &Schema,
        now_ms: i64,
    ) -> Result<TenantSchema, HemvistError> {
        let path = self.path(org);
        if path.exists() {
            return Err(HemvistError::conflict(format!(
                "tenant {org} has a database here already"
            )));
        }
        let template = self.templates.get(schema, now_ms)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| db_error(org, e))?;
        }
        let staged = path.with_extension("from-template");
        let held = stage(&template, &staged)
            .map_err(|e| db_error(org, format!("copy {}: {e}", template.display())));
        let wanted = TenantSchema {
            version: schema.version(),
            fingerprint: schema.fingerprint(),
        };
        match held {
            Ok(held) if held == wanted => {}
            Ok(held) => {
                let _ = std::fs::remove_file(&staged);
                self.templates.discard(schema);
                return Err(db_error(
                    org,
                    format!(
                        "the template {} holds version {} ({}), not {} ({}); it is removed, \
                         and built again at the next try",
                        template.display(),
                        held.version,
                        held.fingerprint,
                        wanted.version,
                        wanted.fingerprint
                    ),
                ));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                return Err(e);
            }
        }
        std::fs::rename(&staged, &path).map_err(|e| db_error(org, e))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| db_error(org, e))?;
        }
        Ok(wanted)
    }

    /// Checks an existing tenant's schema against `schema` and records what an earlier release
    /// did not (see [`schema::adopt`]), under the tenant's writer; never migrates it. What the
    /// tenant has.
    pub fn adopt(&self, org: &OrgId, schema: &Schema) -> Result<TenantSchema, HemvistError> {
        self.with_writer(org, |conn| {
            schema::adopt(conn, schema)
                .map_err(|e| HemvistError::new(e.kind, format!("tenant {org}: {}", e.message)))
        })
    }

    /// The tenant if it is open now (counts as a use); never opens a file.
    pub fn open_tenant(&self, org: &OrgId) -> Option<Arc<Tenant>> {
        let t = self.lock().get(org).cloned()?;
        *t.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Some(t)
    }

    /// The tenant, opened if it is not open yet.
    pub fn tenant(&self, org: &OrgId) -> Result<Arc<Tenant>, HemvistError> {
        if let Some(t) = self.lock().get(org) {
            *t.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            return Ok(t.clone());
        }
        let path = self.path(org);
        if !path.is_file() {
            return Err(HemvistError::not_found(format!(
                "tenant {org} has no database here"
            )));
        }
        let writer = open_existing(&path, false)
            .map_err(|e| sqlite_error(self.health.as_deref(), org, e))?;
        let tenant = Arc::new(Tenant {
            org: org.clone(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            path,
            last_used: Mutex::new(Instant::now()),
            health: self.health.clone(),
            derived: RwLock::new(None),
        });
        self.opens.fetch_add(1, Ordering::Relaxed);
        let mut open = self.lock();
        if let Some(t) = open.get(org) {
            // Someone opened it meanwhile; use theirs so there stays one writer.
            return Ok(t.clone());
        }
        if let Some((_, _evicted)) = open.push(org.clone(), tenant.clone()) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(tenant)
    }

    /// Runs `f` on a read-only connection of the tenant.
    pub fn read<T>(
        &self,
        org: &OrgId,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HemvistError> {
        self.tenant(org)?.read(f)
    }

    /// As [`TenantStore::write`], with `check` run first inside the write transaction (holding
    /// the database's write lock): a write it refuses changes nothing.
    pub fn write_checked<T>(
        &self,
        org: &OrgId,
        check: impl FnOnce() -> Result<(), HemvistError>,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, HemvistError> {
        let tenant = self.tenant(org)?;
        let failed = |e| sqlite_error(self.health.as_deref(), org, e);
        let mut conn = tenant.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed)?;
        // Checked holding SQLite's write lock, not only this handle's mutex: a handle evicted
        // from the cache and reopened has a mutex of its own, but the database has one writer.
        check()?;
        let out = f(&tx).map_err(failed)?;
        tx.commit().map_err(failed)?;
        Ok(out)
    }

    /// Runs `f` in a write transaction on the tenant's single writer connection. Callers decide
    /// whether this node may write at all (generation and lease); see `writes::Writer`.
    pub fn write<T>(
        &self,
        org: &OrgId,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, HemvistError> {
        self.write_checked(org, || Ok(()), f)
    }

    /// Waits until no write is under way in the tenant's database, whichever connection holds
    /// it (a write transaction is begun and rolled back): every write that got its lock before
    /// has committed (or failed) when this returns.
    pub fn write_barrier(&self, org: &OrgId) -> Result<(), HemvistError> {
        self.with_writer(org, |conn| {
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
                .map_err(|e| sqlite_error(self.health.as_deref(), org, e))
        })
    }

    /// Runs `f` on the tenant's writer connection, with no transaction: nothing else writes
    /// while it runs. The replicator ships the last frames and checkpoints this way.
    pub fn with_writer<T>(
        &self,
        org: &OrgId,
        f: impl FnOnce(&Connection) -> Result<T, HemvistError>,
    ) -> Result<T, HemvistError> {
        let tenant = self.tenant(org)?;
        let conn = tenant.writer.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// Closes every tenant unused for `idle`: an idle tenant holds no file handle. Returns how
    /// many were closed.
    pub fn close_idle(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let mut open = self.lock();
        let stale: Vec<OrgId> = open
            .iter()
            .filter(|(_, t)| {
                now.duration_since(*t.last_used.lock().unwrap_or_else(|p| p.into_inner())) >= idle
            })
            .map(|(org, _)| org.clone())
            .collect();
        for org in &stale {
            open.pop(org);
        }
        stale.len()
    }

    /// Closes the tenant's connections (once in-flight work finishes).
    pub fn close(&self, org: &OrgId) {
        self.lock().pop(org);
    }

    /// Moves a tenant's files out of service into `trash/`, never deleting them.
    pub fn retire(&self, org: &OrgId, label: &str) -> Result<Option<PathBuf>, HemvistError> {
        self.close(org);
        let path = self.path(org);
        if !path.exists() {
            return Ok(None);
        }
        let trash = self.trash_dir();
        std::fs::create_dir_all(&trash).map_err(|e| db_error(org, e))?;
        let dest = trash.join(format!("{org}.{label}.db"));
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", path.display()));
            if side.exists() {
                let _ =
                    std::fs::rename(&side, PathBuf::from(format!("{}{suffix}", dest.display())));
            }
        }
        std::fs::rename(&path, &dest).map_err(|e| db_error(org, e))?;
        Ok(Some(dest))
    }

    /// Puts `staged` (a whole database, checked, nothing beside it) where the org's tenant
    /// lives; the tenant's files, if any, go to `trash/` under `label`. Under the tenant's
    /// writer and SQLite's write lock on its file: its WAL is checkpointed into the file first,
    /// so the file alone is the whole tenant; the file is linked into the trash and its WAL and
    /// shared memory are moved there (connections still open on the old file keep theirs and
    /// never meet the new file's); then `staged` is renamed over it. Whenever a crash stops
    /// this, the tenant's path holds the old database whole or the staged one: the rename is
    /// the commit. `commit` runs right after it, still under the writer, to record what the
    /// file now is before any write takes the lock; its error is returned, though the file is
    /// replaced. Before the rename, any failure leaves the tenant as it was. Where the trash
    /// keeps the old file.
    pub fn replace<T>(
        &self,
        org: &OrgId,
        staged: &Path,
        label: &str,
        commit: impl FnOnce() -> Result<T, HemvistError>,
    ) -> Result<(T, Option<PathBuf>), HemvistError> {
        let path = self.path(org);
        if !path.is_file() {
            self.close(org);
            // Side files without their database would be taken for the new one's.
            for suffix in ["-wal", "-shm"] {
                let side = with_suffix(&path, suffix);
                if side.exists() {
                    let trash = self.trash_dir();
                    std::fs::create_dir_all(&trash).map_err(|e| db_error(org, e))?;
                    let dest = with_suffix(&trash.join(format!("{org}.{label}.db")), suffix);
                    std::fs::rename(&side, dest).map_err(|e| db_error(org, e))?;
                }
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| db_error(org, e))?;
            }
            std::fs::rename(staged, &path).map_err(|e| db_error(org, e))?;
            sync_dir(&path).map_err(|e| db_error(org, e))?;
            self.close(org);
            return Ok((commit()?, None));
        }
        let tenant = self.tenant(org)?;
        let conn = tenant.writer.lock().unwrap_or_else(|p| p.into_inner());
        let unavailable = |what: &str, e: rusqlite::Error| {
            HemvistError::unavailable(format!("tenant {org}: {what}: {e}; nothing was replaced"))
        };
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(|e| unavailable("checkpoint", e))?;
        if busy != 0 {
            return Err(HemvistError::unavailable(format!(
                "tenant {org}: a reader kept its checkpoint from finishing; nothing was replaced"
            )));
        }
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| unavailable("take the write lock", e))?;
        let done = self.swap(org, &path, staged, label).and_then(|trashed| {
            self.close(org);
            commit().map(|t| (t, Some(trashed)))
        });
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::warn!(%org, error = %e, "could not release the replaced tenant's write lock");
        }
        done
    }

    /// The files part of [`TenantStore::replace`], holding the write lock.
    fn swap(
        &self,
        org: &OrgId,
        path: &Path,
        staged: &Path,
        label: &str,
    ) -> Result<PathBuf, HemvistError> {
        let failed = |e: std::io::Error| {
            HemvistError::unavailable(format!("tenant {org}: {e}; nothing was replaced"))
        };
        let wal = with_suffix(path, "-wal");
        if std::fs::metadata(&wal).map_or(0, |m| m.len()) > 0 {
            // Another handle of the tenant wrote between the checkpoint and the lock.
            return Err(HemvistError::unavailable(format!(
                "tenant {org} was written while it was being replaced; nothing was replaced"
            )));
        }
        let trash = self.trash_dir();
        std::fs::create_dir_all(&trash).map_err(failed)?;
        let dest = trash.join(format!("{org}.{label}.db"));
        if dest.exists() {
            return Err(HemvistError::conflict(format!(
                "{} exists already; nothing was replaced",
                dest.display()
            )));
        }
        if std::fs::hard_link(path, &dest).is_err() {
            // Another file system (or none that links): a copy, synced.
            std::fs::copy(path, &dest)
                .and_then(|_| std::fs::File::open(&dest)?.sync_all())
                .map_err(failed)?;
        }
        let mut moved = Vec::new();
        let mut side_moves = ["-wal", "-shm"].into_iter().try_for_each(|suffix| {
            let side = with_suffix(path, suffix);
            if side.exists() {
                std::fs::rename(&side, with_suffix(&dest, suffix))?;
                moved.push(suffix);
            }
            Ok(())
        });
        if side_moves.is_ok() {
            side_moves = sync_dir(&dest).and_then(|()| std::fs::rename(staged, path));
        }
        if let Err(e) = side_moves {
            // The old file never left its path: give it back its side files.
            for suffix in moved {
                let _ = std::fs::rename(with_suffix(&dest, suffix), with_suffix(path, suffix));
            }
            let _ = std::fs::remove_file(&dest);
            return Err(failed(e));
        }
        if let Err(e) = sync_dir(path) {
            // Renamed already: the new file is the tenant's, if not yet surely on disk.
            tracing::warn!(%org, error = %e, "could not sync the folder of a replaced tenant");
        }
        Ok(dest)
    }
}

/// `path` with `suffix` after its name (`x.db` -> `x.db-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Syncs the folder holding `file`, so a rename into it survives a power cut.
fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

impl Tenant {
    /// Runs `f` on a read-only connection of this tenant, from its pool or newly opened.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HemvistError> {
        let conn = {
            let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            pool.pop()
        };
        let failed = |e| sqlite_error(self.health.as_deref(), &self.org, e);
        let conn = match conn {
            Some(c) => c,
            None => open_existing(&self.path, true).map_err(failed)?,
        };
        let result = f(&conn).map_err(failed);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READERS_PER_TENANT {
            pool.push(conn);
        }
        result
    }
}

/// Copies `template` to `staged` as a tenant file: in WAL mode (the one per-tenant setting a
/// file keeps; the others are set by each connection), synced, nothing beside it. What it holds.
fn stage(template: &Path, staged: &Path) -> anyhow::Result<TenantSchema> {
    for side in ["", "-wal", "-shm"] {
        let leftover = PathBuf::from(format!("{}{side}", staged.display()));
        if leftover.exists() {
            std::fs::remove_file(&leftover)?;
        }
    }
    std::fs::copy(template, staged)?;
    let conn = Connection::open_with_flags(
        staged,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The switch need not sync: the whole file is synced once below.
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let held = schema::read(&conn)?;
    // The last connection to close checkpoints its (empty) WAL and removes it.
    conn.close().map_err(|(_, e)| e)?;
    std::fs::File::open(staged)?.sync_all()?;
    Ok(held)
}

fn open_existing(path: &Path, reader: bool) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn, reader)?;
    Ok(conn)
}

/// The functions the tenant schema uses (a migration may call them, so every connection that
/// writes has them).
fn functions(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "hv_name_words",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let name: String = ctx.get::<Option<String>>(0)?.unwrap_or_default();
            serde_json::to_string(&crate::text::words(&name))
                .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
        },
    )
}

fn configure(conn: &Connection, reader: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    // Closing a tenant must not checkpoint: the WAL frames stay until the replicator has
    // shipped them and checkpoints itself (see `crate::backup`). Nothing but the replicator
    // checkpoints a tenant when backups are on.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    if !reader && CHECKPOINTS_BY_BACKUP.load(Ordering::Relaxed) {
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    functions(conn)?;
    // Reads map the file instead of copying pages through syscalls; cheap for idle tenants,
    // since the mapping goes when the connection closes.
    conn.pragma_update(None, "mmap_size", 256 * 1024 * 1024)?;
    if reader {
        conn.pragma_update(None, "query_only", true)?;
    } else {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    Ok(())
}
