//! What can go wrong in the store, kept as a kind the caller can act on: each variant says
//! whether retrying can help, and maps to one shared [`ErrorKind`] at the edge.

use hemvist_proto::{ErrorKind, HemvistError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another connection holds the database; retrying later can help.
    #[error("control store: busy: {0}")]
    Busy(super::sql::Error),
    /// A write broke a uniqueness or reference rule.
    #[error("control store: conflict: {0}")]
    Conflict(super::sql::Error),
    /// A write that depends on a row no longer as required (an operation's parent ended).
    #[error("control store: conflict: {0}")]
    Stale(String),
    /// A row holds what this binary cannot read (a malformed id, an unknown command kind or
    /// state): retrying cannot help.
    #[error("control store: corrupt row: {0}")]
    Corrupt(String),
    /// The database was written by a newer binary.
    #[error("control store schema version {found} is newer than this binary knows ({known})")]
    TooNew { found: i64, known: usize },
    /// A schema migration failed; the database stays at the version before it.
    #[error("apply control store migration {version}: {source}")]
    Migration {
        version: usize,
        source: super::sql::Error,
    },
    /// This replica is no longer the leader: nothing it writes is accepted.
    #[error("control store: {0}")]
    Fenced(String),
    /// Any other database or file error.
    #[error("control store: {0}")]
    Sqlite(super::sql::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A stored error kind's name read back; a name this binary does not know is a corrupt row.
pub(super) fn stored_error_kind(name: Option<String>) -> Result<Option<ErrorKind>> {
    name.map(|k| {
        ErrorKind::parse(&k).ok_or_else(|| StoreError::corrupt(format!("unknown error kind {k:?}")))
    })
    .transpose()
}

impl StoreError {
    pub(super) fn corrupt(e: impl std::fmt::Display) -> Self {
        StoreError::Corrupt(e.to_string())
    }

    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Busy(_))
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Busy(_) | StoreError::Fenced(_) => ErrorKind::Unavailable,
            StoreError::Conflict(_) | StoreError::Stale(_) => ErrorKind::Conflict,
            StoreError::Corrupt(_)
            | StoreError::TooNew { .. }
            | StoreError::Migration { .. }
            | StoreError::Sqlite(_) => ErrorKind::Internal,
        }
    }
}

impl From<super::sql::Error> for StoreError {
    fn from(e: super::sql::Error) -> Self {
        if let super::sql::Error::Fenced(m) = e {
            StoreError::Fenced(m)
        } else if e.is_busy() {
            StoreError::Busy(e)
        } else if e.is_constraint() {
            StoreError::Conflict(e)
        } else if e.is_corrupt_value() {
            StoreError::Corrupt(e.to_string())
        } else {
            StoreError::Sqlite(e)
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        super::sql::Error::from(e).into()
    }
}

impl From<StoreError> for HemvistError {
    fn from(e: StoreError) -> Self {
        HemvistError::new(e.kind(), e.to_string())
    }
}
