//! The tenant schema, as the control plane decides it. A [`Schema`] is a version and every
//! migration file up to it, checked on receipt. A tenant records what it ran in its own file
//! (`schema_migrations`: version, name, when, checksum; and `PRAGMA user_version`), so the file
//! alone says what shape it has and which files made it.
//!
//! Keeps true:
//! - a tenant's schema changes only in [`migrate`]: every file it lacks, in order, each file's
//!   check after its SQL, and the bookkeeping, inside the caller's one transaction, so a failure
//!   the caller rolls back leaves the tenant as it was;
//! - a tenant that ran a version under another checksum than the control plane's file is
//!   refused by a migration (a conflict, naming the version and both checksums); a host serves
//!   it as it is and reports its fingerprint, so `migrate status` shows where edited files ran
//!   (a host never migrates: [`adopt`]);
//! - the bookkeeping says what the tenant is: its rows are versions 1 to `user_version`, each
//!   once; a tenant whose rows say otherwise is refused rather than guessed at.
//!
//! One job per file: [`bookkeeping`] (what a tenant ran, checked), [`run`] (one file, statement
//! by statement, then its check), [`statements`] (where a file's statements end).

mod bookkeeping;
mod run;
mod statements;
#[cfg(test)]
mod tests;

use hemvist_proto::migration::{self, MigrationFile};
use hemvist_proto::HemvistError;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use bookkeeping::{examine, ran, upgrade, Found, Ran, Table, TABLE};
pub use run::{kind_of, FailedFile};

/// A schema version and every migration file up to it, in order. Once you hold one, its files
/// are numbered 1 to its version without a gap, and each names a 64-hex-digit checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    files: Vec<MigrationFile>,
}

impl Schema {
    pub fn new(version: u32, mut files: Vec<MigrationFile>) -> Result<Schema, HemvistError> {
        migration::check_sequence(&files)?;
        if files.len() as u64 != u64::from(version) {
            return Err(HemvistError::invalid(format!(
                "schema version {version} came with {} migration files: every file up to the \
                 version is needed",
                files.len()
            )));
        }
        for f in &mut files {
            if f.checksum.len() != 64 || !f.checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(HemvistError::invalid(format!(
                    "migration {}: its checksum must be 64 hex digits (SHA-256)",
                    f.file_name()
                )));
            }
            f.checksum.make_ascii_lowercase();
        }
        Ok(Schema { files })
    }

    pub fn version(&self) -> u32 {
        self.files.len() as u32
    }

    pub fn files(&self) -> &[MigrationFile] {
        &self.files
    }

    /// What a tenant created at this schema reports.
    pub fn fingerprint(&self) -> String {
        migration::fingerprint(self.files.iter().map(|f| (f.version, f.checksum.as_str())))
    }

    fn file(&self, version: u32) -> Option<&MigrationFile> {
        self.files.get((version as usize).checked_sub(1)?)
    }

    /// The files built into this binary, for the node's own tests (the node runs what the
    /// control plane sends, never these).
    #[cfg(test)]
    pub fn builtin() -> Schema {
        let files = migration::builtin();
        Schema::new(files.len() as u32, files).expect("the built-in files are a schema")
    }
}

/// What a tenant has run: its version, and the fingerprint of its files (version and checksum
/// of each; a file it ran before checksums were kept, and that no schema it was given covers,
/// counts with an empty checksum).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSchema {
    pub version: u32,
    pub fingerprint: String,
}

/// A migration inside the caller's transaction: what the tenant had, and what it has now (in
/// the transaction, which the caller commits, or rolls back for a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub from: TenantSchema,
    pub to: TenantSchema,
    /// Something was written (files ran, or checksums were recorded): else there is nothing to
    /// commit.
    pub changed: bool,
}

/// Why a migration failed. The caller must roll its transaction back.
#[derive(Debug, Clone)]
pub struct Failed {
    /// What the tenant has (as far as it could be read; the default if not at all).
    pub from: TenantSchema,
    /// The file, statement and SQLite's error, when a file failed or was refused.
    pub file: Option<Box<FailedFile>>,
    pub error: HemvistError,
}

pub fn current_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// What the tenant has run, read only (the bookkeeping as it is; nothing is checked).
pub fn read(conn: &Connection) -> rusqlite::Result<TenantSchema> {
    let (ran, table) = ran(conn)?;
    Ok(Found {
        version: current_version(conn)?,
        ran,
        table,
    }
    .state())
}

/// Hosts an existing tenant's schema as it is, never migrating it: checks what it ran against
/// `schema` (refused on an edited file) and records the checksums a tenant of an earlier
/// release lacks, in a small transaction of its own (none when nothing is to be recorded).
/// What the tenant has, whatever its version (lower or higher than the schema's).
pub fn adopt(conn: &Connection, schema: &Schema) -> Result<TenantSchema, HemvistError> {
    let found = match examine(conn, schema) {
        Ok(found) => found,
        Err(f) if f.error.kind == hemvist_proto::ErrorKind::Conflict => {
            // Its users are still served; its fingerprint tells the operator, and no migration
            // runs on it until they agree again.
            tracing::warn!(error = %f.error, "tenant ran other migration files than the control plane holds; hosted as it is");
            return read(conn)
                .map_err(|e| HemvistError::internal(format!("read the tenant's schema: {e}")));
        }
        Err(f) => return Err(f.error),
    };
    if !found.needs_upgrade() {
        return Ok(found.state());
    }
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(|e| HemvistError::internal(format!("record the tenant's checksums: {e}")))?;
    // Read again holding the write lock: the first read had none.
    let mut found = examine(&tx, schema).map_err(|f| f.error)?;
    upgrade(&tx, &mut found)
        .and_then(|()| tx.commit())
        .map_err(|e| HemvistError::internal(format!("record the tenant's checksums: {e}")))?;
    Ok(found.state())
}

/// Migrates the tenant to `schema`'s version inside `tx`, the caller's transaction (which holds
/// the write lock: begun IMMEDIATE): checks what it ran (as [`adopt`]), records checksums it
/// lacks, then runs every file it lacks in order, statement by statement, each file's check
/// after it, recording each (applied at `now_ms`) and the version. A check that fails while a
/// later file of the same migration is still to run is asked again once every file has run
/// (a later file may be the fix of what it checks: a halted rollout resumed with a fixing file);
/// it must hold then. A tenant at or above the version runs nothing. The caller commits, or
/// rolls back (a dry run; any failure).
pub fn migrate(tx: &Transaction<'_>, schema: &Schema, now_ms: i64) -> Result<Migrated, Failed> {
    let mut found = examine(tx, schema)?;
    let from = found.state();
    let failed = |file, error| Failed {
        from: from.clone(),
        file,
        error,
    };
    let sqlite = |what: &str, e: rusqlite::Error| {
        failed(
            None,
            HemvistError::new(run::kind_of(&e), format!("{what}: {e}")),
        )
    };
    let upgraded = found.needs_upgrade();
    upgrade(tx, &mut found).map_err(|e| sqlite("record the tenant's checksums", e))?;
    let lacking = &schema.files()[(found.version as usize).min(schema.files().len())..];
    if lacking.is_empty() {
        return Ok(Migrated {
            to: from.clone(),
            from,
            changed: upgraded,
        });
    }
    if found.table == Table::Missing {
        tx.execute_batch(TABLE)
            .map_err(|e| sqlite("create schema_migrations", e))?;
    }
    let last = lacking.last().map(|f| f.version);
    let mut asked_again = Vec::new();
    for file in lacking {
        run::statements_of(tx, file).map_err(|(f, e)| failed(Some(Box::new(f)), e))?;
        if let Err((f, e)) = run::check_of(tx, file) {
            if Some(file.version) == last {
                return Err(failed(Some(Box::new(f)), e));
            }
            asked_again.push(file);
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_ms, checksum)
             VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![file.version, file.name, now_ms, file.checksum],
        )
        .map_err(|e| sqlite(&format!("record {}", file.file_name()), e))?;
        found.ran.push(Ran {
            version: file.version,
            name: file.name.clone(),
            checksum: Some(file.checksum.clone()),
            taken: false,
        });
        found.version = file.version;
    }
    for file in asked_again {
        run::check_of(tx, file).map_err(|(f, e)| {
            let e = HemvistError::new(
                e.kind,
                format!("{} (and still after every later file)", e.message),
            );
            failed(Some(Box::new(f)), e)
        })?;
    }
    tx.pragma_update(None, "user_version", found.version)
        .map_err(|e| sqlite("record the version", e))?;
    Ok(Migrated {
        from,
        to: found.state(),
        changed: true,
    })
}
