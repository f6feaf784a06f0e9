//! Templates: creating a tenant is a file copy, not the schema's work. There is one SQLite file
//! per schema (its version and the fingerprint of its files) in `templates/`, built the first
//! time a tenant is created at that schema by running the files on an empty database in one
//! transaction ([`schema::migrate`], as any migration).
//!
//! Keeps true: a template is whole or absent (built under a temporary name, synced, renamed into
//! place, its folder synced); it is one self-contained file (rollback journal, not WAL, so
//! nothing lies beside it); and it holds what its name says, `v{version}-{fingerprint}.db`
//! (a copy is checked against its schema before it becomes a tenant). A tenant copied from one
//! ran its files when the template was built: its rows' `applied_ms` say so.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hemvist_proto::HemvistError;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use super::schema::{self, Schema};

pub struct Templates {
    dir: PathBuf,
    /// One build at a time: two tenants created at a new schema at once wait for one template.
    building: Mutex<()>,
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("{what} {}: {e}", path.display()))
}

impl Templates {
    pub fn new(data_dir: &Path) -> Templates {
        Templates {
            dir: data_dir.join("templates"),
            building: Mutex::new(()),
        }
    }

    fn path(&self, schema: &Schema) -> PathBuf {
        self.dir.join(format!(
            "v{:04}-{}.db",
            schema.version(),
            schema.fingerprint()
        ))
    }

    /// The template of `schema`, built now (its rows applied at `now_ms`) if there is none. A
    /// file that fails is named with its statement, and no template is left.
    pub fn get(&self, schema: &Schema, now_ms: i64) -> Result<PathBuf, HemvistError> {
        let path = self.path(schema);
        if path.is_file() {
            return Ok(path);
        }
        let _one = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if !path.is_file() {
            self.build(schema, &path, now_ms)?;
            tracing::info!(version = schema.version(), path = %path.display(), "built a tenant template");
        }
        Ok(path)
    }

    /// Forgets a template that does not hold what its name says: the next use builds it again.
    pub fn discard(&self, schema: &Schema) {
        let _one = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.path(schema);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a bad template");
        }
    }

    fn build(&self, schema: &Schema, path: &Path, now_ms: i64) -> Result<(), HemvistError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| failed("create", &self.dir, e))?;
        let staged = path.with_extension("building");
        for leftover in [
            staged.clone(),
            PathBuf::from(format!("{}-journal", staged.display())),
        ] {
            if leftover.exists() {
                std::fs::remove_file(&leftover).map_err(|e| failed("remove", &leftover, e))?;
            }
        }
        let conn = Connection::open_with_flags(
            &staged,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| failed("create", &staged, e))?;
        super::functions(&conn).map_err(|e| failed("open", &staged, e))?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| failed("open", &staged, e))?;
        let tx = Transaction::new_unchecked(&conn, TransactionBehavior::Immediate)
            .map_err(|e| failed("build", &staged, e))?;
        let ran = schema::migrate(&tx, schema, now_ms);
        let built = match ran {
            Ok(_) => tx.commit().map_err(|e| failed("build", &staged, e)),
            Err(f) => {
                drop(tx);
                Err(HemvistError::new(
                    f.error.kind,
                    format!(
                        "the schema at version {} cannot be created: {}",
                        schema.version(),
                        f.error.message
                    ),
                ))
            }
        };
        let closed = conn.close().map_err(|(_, e)| failed("close", &staged, e));
        if let Err(e) = built.and(closed) {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
        std::fs::File::open(&staged)
            .and_then(|f| f.sync_all())
            .map_err(|e| failed("sync", &staged, e))?;
        std::fs::rename(&staged, path).map_err(|e| failed("rename", &staged, e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| failed("sync", &self.dir, e))
    }
}
