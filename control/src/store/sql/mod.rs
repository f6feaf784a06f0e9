//! The SQL the store speaks, over either engine: embedded SQLite (the default) or PostgreSQL
//! (several control replicas on one database). [`Conn`] offers the few calls the store makes
//! (`execute`, `query_row`, `prepare(..).query_map`, transactions), named as rusqlite names
//! them; statements are written once, in the two dialects' common part ([`dialect`] rewrites
//! what PostgreSQL says differently), and every parameter and column is a [`Value`].
//!
//! Keeps true: a transaction that is not committed is rolled back when dropped; a row is read
//! whole before the caller sees it, so a caller's closure never runs inside the engine.

mod dialect;
mod pg_tls;
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
    /// This replica no longer holds the leader's lease: its write was refused.
    #[error("{0}")]
    Fenced(String),
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
    /// The leader's token every write must still hold (see `store/leader.rs`); none on a
    /// store that no replica leads (a single control plane).
    fence: Option<i64>,
    in_tx: std::cell::Cell<bool>,
}

/// The first word of a statement that changes something.
fn writes(sql: &str) -> bool {
    let word = sql.split_whitespace().next().unwrap_or("");
    ["INSERT", "UPDATE", "DELETE", "REPLACE"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

impl Conn {
    pub fn sqlite(conn: rusqlite::Connection) -> Conn {
        Conn {
            engine: Engine::Sqlite(conn),
            fence: None,
            in_tx: Default::default(),
        }
    }

    pub fn postgres(url: &str) -> Result<Conn> {
        Ok(Conn {
            engine: Engine::Postgres(postgres::Pg::connect(url)?),
            fence: None,
            in_tx: Default::default(),
        })
    }

    /// The database's own clock, in milliseconds since the epoch, as an SQL expression.
    pub fn now_sql(&self) -> &'static str {
        match self.kind() {
            EngineKind::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            EngineKind::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
        }
    }

    /// Every write from now on first checks that `token` still holds a live leader's lease.
    pub fn fence(&mut self, token: Option<i64>) {
        self.fence = token;
    }

    /// Inside a transaction: fails unless the fencing token still holds a live lease. On
    /// PostgreSQL the lease row stays share-locked until the transaction ends, so no other
    /// replica can take the lease while this one's write is in flight.
    fn check_fence(&self) -> Result<()> {
        let Some(token) = self.fence else {
            return Ok(());
        };
        let lock = match self.kind() {
            EngineKind::Postgres => " FOR SHARE",
            EngineKind::Sqlite => "",
        };
        let now = self.now_sql();
        let (held, live): (i64, i64) = self
            .rows(
                &format!(
                    "SELECT token, CASE WHEN expires_ms > {now} THEN 1 ELSE 0 END FROM leader WHERE one = 1{lock}"
                ),
                Vec::new(),
            )?
            .first()
            .map(|r| Ok::<_, Error>((r.get(0)?, r.get(1)?)))
            .transpose()?
            .unwrap_or((-1, 0));
        if held != token {
            return Err(Error::Fenced(format!(
                "this control replica is no longer the leader (its token {token}, the lease's {held})"
            )));
        }
        if live == 0 {
            return Err(Error::Fenced(format!(
                "this control replica's leader lease (token {token}) has run out"
            )));
        }
        Ok(())
    }

    /// Runs `f` as its own fenced transaction when this connection is fenced and not inside
    /// one already; as it is otherwise.
    fn fenced<T>(&self, write: bool, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if !write || self.fence.is_none() || self.in_tx.get() {
            return f();
        }
        self.execute_batch("BEGIN")?;
        let result = self.check_fence().and_then(|()| f());
        let committed = result.and_then(|v| self.execute_batch("COMMIT").map(|()| v));
        if committed.is_err() {
            // A failed statement or COMMIT: never leave the connection inside a transaction.
            let _ = self.execute_batch("ROLLBACK");
        }
        committed
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
        self.fenced(writes(sql), || match &self.engine {
            Engine::Sqlite(c) => sqlite::rows(c, sql, &params),
            Engine::Postgres(p) => p.rows(sql, params),
        })
    }

    pub fn execute(&self, sql: &str, params: impl Params) -> Result<usize> {
        let params = params.values()?;
        self.fenced(true, || self.execute_unfenced(sql, params))
    }

    /// A write that does not check the fence: only the leader lease's own.
    pub fn execute_unfenced(&self, sql: &str, params: Vec<Value>) -> Result<usize> {
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

    /// Begins a transaction; on a fenced connection, it fails at once unless this replica
    /// still leads.
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        self.execute_batch("BEGIN")?;
        self.in_tx.set(true);
        let tx = Transaction {
            conn: self,
            done: false,
        };
        tx.check_fence()?;
        Ok(tx)
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
        self.conn.in_tx.set(false);
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
            self.conn.in_tx.set(false);
        }
    }
}
