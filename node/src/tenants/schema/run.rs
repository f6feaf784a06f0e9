//! Running one migration file inside the caller's transaction: statement by statement, so a
//! failure names the statement SQLite refused, then the file's check, which must answer a single
//! true value (a non-zero integer).
//!
//! Keeps true: a file never ends the transaction it runs in nor reaches another database (its
//! BEGIN, COMMIT, ROLLBACK, ATTACH and DETACH are refused while it runs, and the connection is
//! checked to be still inside the transaction after every statement).

use std::sync::{Arc, Mutex};

use hemvist_proto::migration::MigrationFile;
use hemvist_proto::{ErrorKind, HemvistError};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode};

use super::statements;

/// The most of a statement a report carries.
const MAX_STATEMENT_CHARS: usize = 500;
/// The most of a statement an error message quotes.
const QUOTED_CHARS: usize = 200;

/// The file that failed, the statement (or check) SQLite refused, and its error.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailedFile {
    pub version: u32,
    /// The file's name without number and `.sql`.
    pub name: String,
    /// Empty when no statement failed (the file itself was refused).
    pub statement: String,
    pub error: String,
}

/// Runs `file`'s statements (not its check) on `conn`, inside the caller's transaction.
pub fn statements_of(
    conn: &Connection,
    file: &MigrationFile,
) -> Result<(), (FailedFile, HemvistError)> {
    let guard = Guard::install(conn).map_err(|e| {
        let error = e.to_string();
        failure(file, "", error.clone(), ErrorKind::Internal, error)
    })?;
    for statement in statements::split(&file.sql) {
        let ran = conn.execute_batch(statement);
        if let Some(refused) = guard.refused() {
            return Err(failure(
                file,
                statement,
                format!(
                    "{refused}: a migration runs inside the node's transaction, with its \
                     bookkeeping"
                ),
                ErrorKind::InvalidArgument,
                format!("statement {} is refused", quote(statement)),
            ));
        }
        if let Err(e) = ran {
            let error = e.to_string();
            return Err(failure(
                file,
                statement,
                error.clone(),
                kind_of(&e),
                format!("statement {} failed: {error}", quote(statement)),
            ));
        }
        if conn.is_autocommit() {
            return Err(failure(
                file,
                statement,
                "it ended the migration's transaction".into(),
                ErrorKind::InvalidArgument,
                format!("statement {} ended the transaction", quote(statement)),
            ));
        }
    }
    Ok(())
}

/// Runs `file`'s check, if it has one, on `conn`.
pub fn check_of(conn: &Connection, file: &MigrationFile) -> Result<(), (FailedFile, HemvistError)> {
    if let Some(query) = &file.check {
        if let Err((error, kind)) = check(conn, query) {
            return Err(failure(file, query, error.clone(), kind, error));
        }
    }
    Ok(())
}

/// The check's single value, which must be a non-zero integer; otherwise what it answered.
fn check(conn: &Connection, query: &str) -> Result<(), (String, ErrorKind)> {
    let sql = |e: rusqlite::Error| (format!("check {} failed: {e}", quote(query)), kind_of(&e));
    let mut stmt = conn.prepare(query).map_err(sql)?;
    let columns = stmt.column_count();
    let mut rows = stmt.query([]).map_err(sql)?;
    let answer = match rows.next().map_err(sql)? {
        None => "no row".to_string(),
        Some(_) if columns != 1 => format!("{columns} columns"),
        Some(row) => {
            let value: Value = row.get(0).map_err(sql)?;
            match (value, rows.next().map_err(sql)?.is_some()) {
                (_, true) => "more than one row".to_string(),
                (Value::Integer(n), false) if n != 0 => return Ok(()),
                (Value::Integer(n), false) => n.to_string(),
                (Value::Null, false) => "NULL".to_string(),
                (Value::Real(f), false) => f.to_string(),
                (Value::Text(t), false) => format!("'{}'", shorten(&t, 80)),
                (Value::Blob(b), false) => format!("a blob of {} bytes", b.len()),
            }
        }
    };
    Err((
        format!("check failed: {query} answered {answer}"),
        ErrorKind::InvalidArgument,
    ))
}

fn failure(
    file: &MigrationFile,
    statement: &str,
    error: String,
    kind: ErrorKind,
    what: String,
) -> (FailedFile, HemvistError) {
    (
        FailedFile {
            version: file.version,
            name: file.name.clone(),
            statement: shorten(statement, MAX_STATEMENT_CHARS),
            error,
        },
        HemvistError::new(kind, format!("{}: {what}", file.file_name())),
    )
}

/// What a failed statement says about whom to blame: the file (most errors), or the node
/// (its disk, its file, a lock), where retrying can help.
pub fn kind_of(e: &rusqlite::Error) -> ErrorKind {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => ErrorKind::StorageFull,
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Unavailable,
        Some(
            ErrorCode::SystemIoFailure
            | ErrorCode::DatabaseCorrupt
            | ErrorCode::NotADatabase
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly,
        ) => ErrorKind::Internal,
        _ => ErrorKind::InvalidArgument,
    }
}

fn shorten(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn quote(statement: &str) -> String {
    let short = shorten(statement, QUOTED_CHARS);
    let more = if short.len() < statement.len() {
        "..."
    } else {
        ""
    };
    format!("\"{short}{more}\"")
}

/// The authorizer a file runs under, removed when dropped; it remembers what it refused.
struct Guard<'c> {
    conn: &'c Connection,
    refused: Arc<Mutex<Option<&'static str>>>,
}

impl<'c> Guard<'c> {
    fn install(conn: &'c Connection) -> rusqlite::Result<Guard<'c>> {
        let refused = Arc::new(Mutex::new(None));
        let seen = refused.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let what = match ctx.action {
                AuthAction::Transaction { .. } => "a migration may not begin, commit or roll back",
                AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
                    "a migration may not attach or detach a database"
                }
                _ => return Authorization::Allow,
            };
            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(what);
            Authorization::Deny
        }))?;
        Ok(Guard { conn, refused })
    }

    fn refused(&self) -> Option<&'static str> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let none: Option<fn(AuthContext<'_>) -> Authorization> = None;
        if let Err(e) = self.conn.authorizer(none) {
            tracing::warn!(error = %e, "could not remove a migration's authorizer");
        }
    }
}
