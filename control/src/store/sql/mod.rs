//! The SQL the store speaks, over either engine: embedded SQLite (the default) or PostgreSQL
//! (several control replicas on one database). [`Conn`] offers the few calls the store makes
//! (`execute`, `query_row`, `prepare(..).query_map`, transactions), named as rusqlite names
//! them; statements are written once, in the two dialects' common part ([`dialect`] rewrites
//! what PostgreSQL says differently), and every parameter and column is a [`Value`].
//!
//! Keeps true: a transaction that is not committed is rolled back when dropped; a row is read
//! whole before the caller sees it, so a caller's closure never runs inside the engine.

mod dialect;
mod postgres;
mod sqlite;
mod value;

pub(crate) use value::params;
pub use value::{Params, Row, ToValue, Value};

/// What a statement can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `query_row` found no row (`.optional()` makes it `None`).
    #[error("no row")]
    NoRows,
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused the statement: its SQLSTATE and message.
    #[error("PostgreSQL {code}: {message}")]
    Postgres { code: String, message: String },
    /// The database cannot be reached now (retrying later can help).
    #[error("{0}")]
    Gone(String),
    /// A value is not what it was read or sent as.
    #[error("{0}")]
    Value(String),
}

impl Error {
    /// Another writer holds the database: retrying later can help.
    pub fn is_busy(&self) -> bool {
        match self {
            Error::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            // Serialization failure, deadlock, lock not available.
            Error::Postgres { code, .. } => matches!(code.as_str(), "40001" | "40P01" | "55P03"),
            Error::Gone(_) => true,
            _ => false,
        }
    }

    /// A write broke a uniqueness, reference or check rule.
    pub fn is_constraint(&self) -> bool {
        match self {
            Error::Sqlite(e) => {
                e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
            }
            Error::Postgres { code, .. } => code.starts_with("23"),
            _ => false,
        }
    }

    /// A row holds what cannot be read as asked.
    pub fn is_corrupt_value(&self) -> bool {
        match self {
            Error::Value(_) => true,
            Error::Sqlite(e) => matches!(
                e,
                rusqlite::Error::FromSqlConversionFailure(..)
                    | rusqlite::Error::InvalidColumnType(..)
                    | rusqlite::Error::IntegralValueOutOfRange(..)
            ),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// `query_row(..).optional()`: no row is `None`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

enum Engine {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Pg),
}

/// Which engine a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Sqlite,
    Postgres,
}

/// One connection to the store's database.
pub struct Conn {
    engine: Engine,
}

impl Conn {
    pub fn sqlite(conn: rusqlite::Connection) -> Conn {
        Conn {
            engine: Engine::Sqlite(conn),
        }
    }

    pub fn postgres(url: &str) -> Result<Conn> {
        Ok(Conn {
            engine: Engine::Postgres(postgres::Pg::connect(url)?),
        })
    }

    pub fn kind(&self) -> EngineKind {
        match self.engine {
            Engine::Sqlite(_) => EngineKind::Sqlite,
            Engine::Postgres(_) => EngineKind::Postgres,
        }
    }

    /// The SQLite connection itself, for what only SQLite has (its pragmas).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Sqlite(c) => Some(c),
            Engine::Postgres(_) => None,
        }
    }

    fn rows(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        match &self.engine {
            Engine::Sqlite(c) => sqlite::rows(c, sql, &params),
            Engine::Postgres(p) => p.rows(sql, params),
        }
    }

    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        let params = params.values()?;
        match &self.engine {
            Engine::Sqlite(c) => sqlite::execute(c, sql, &params),
            Engine::Postgres(p) => p.execute(sql, params),
        }
    }

    /// Statements separated by semicolons, without parameters, as they are.
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.engine {
            Engine::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Engine::Postgres(p) => p.batch(sql),
        }
    }

    /// A schema migration, written for SQLite, as this engine needs it.
    pub fn migration(&self, sql: &str) -> String {
        match self.engine {
            Engine::Sqlite(_) => sql.to_string(),
            Engine::Postgres(_) => dialect::migration_to_postgres(sql),
        }
    }

    /// The first row; [`Error::NoRows`] if there is none.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: impl Params,
        f: impl FnOnce(&Row) -> Result<T>,
    ) -> Result<T> {
        let rows = self.rows(sql, params.values()?)?;
        f(rows.first().ok_or(Error::NoRows)?)
    }

    pub fn prepare<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        Ok(Statement {
            conn: self,
            sql: sql.to_string(),
        })
    }

    /// The same as [`Conn::prepare`]: both engines cache statements by their text.
    pub fn prepare_cached<'c>(&'c self, sql: &str) -> Result<Statement<'c>> {
        self.prepare(sql)
    }

    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.execute_batch("BEGIN")?;
        Ok(Transaction {
            conn: self,
            done: false,
        })
    }
}

/// A statement to run (its text; the engine caches what it prepared).
pub struct Statement<'c> {
    conn: &'c Conn,
    sql: String,
}

impl Statement<'_> {
    pub fn query_map<T>(
        &mut self,
        params: impl Params,
        mut f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.conn.rows(&self.sql, params.values()?)?;
        Ok(rows.iter().map(&mut f).collect::<Vec<_>>().into_iter())
    }

    pub fn query(&mut self, params: impl Params) -> Result<Rows> {
        Ok(Rows {
            rows: self.conn.rows(&self.sql, params.values()?)?.into_iter(),
            current: None,
        })
    }

    pub fn execute(&mut self, params: impl Params) -> Result<usize> {
        self.conn.execute(&self.sql, params)
    }
}

/// A query's rows, one at a time.
pub struct Rows {
    rows: std::vec::IntoIter<Row>,
    current: Option<Row>,
}

impl Rows {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<&Row>> {
        self.current = self.rows.next();
        Ok(self.current.as_ref())
    }
}

/// A transaction: committed by [`Transaction::commit`], rolled back if dropped before.
pub struct Transaction<'c> {
    conn: &'c mut Conn,
    done: bool,
}

impl Transaction<'_> {
    /// Commits; a commit that fails is rolled back (on drop), so the connection is never left
    /// inside a transaction.
    pub fn commit(mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        self.done = true;
        Ok(())
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "control store: rollback failed");
            }
        }
    }
}
