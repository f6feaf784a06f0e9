//! What a tenant ran, as its own file records it: the rows of `schema_migrations` (version,
//! name, when, checksum) and `PRAGMA user_version`, read, checked against a [`Schema`], and
//! brought to this release's shape.
//!
//! Keeps true: rows are versions 1 to `user_version`, each once, or the tenant is refused; a row
//! from before checksums were kept (the table without the column, or a NULL) trusts the control
//! plane's file of its version on first sight, if the name is the file's (those files ran before
//! there were checksums to compare), and is recorded with that file's checksum.

use hemvist_proto::migration::{self, MigrationFile};
use hemvist_proto::HemvistError;
use rusqlite::{Connection, OptionalExtension};

use super::{current_version, Failed, FailedFile, Schema, TenantSchema};

/// One row of `schema_migrations`.
#[derive(Debug, Clone)]
pub(super) struct Ran {
    pub version: u32,
    pub name: String,
    /// None: it ran before this release, which keeps checksums.
    pub checksum: Option<String>,
    /// Its checksum was taken from the control plane's file (it had none), not yet recorded.
    pub taken: bool,
}

/// The shape of a tenant's `schema_migrations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    /// A tenant that never ran a file.
    Missing,
    /// From before checksums were kept: it lacks the column.
    Old,
    Current,
}

/// What the tenant ran, checked against a schema.
pub(super) struct Found {
    pub version: u32,
    pub ran: Vec<Ran>,
    pub table: Table,
}

impl Found {
    pub fn state(&self) -> TenantSchema {
        TenantSchema {
            version: self.version,
            fingerprint: migration::fingerprint(
                self.ran
                    .iter()
                    .map(|r| (r.version, r.checksum.as_deref().unwrap_or(""))),
            ),
        }
    }

    /// Whether recording what it ran needs a write (the column, or checksums taken).
    pub fn needs_upgrade(&self) -> bool {
        self.table == Table::Old || self.ran.iter().any(|r| r.taken)
    }
}

pub(super) const TABLE: &str = "CREATE TABLE schema_migrations (
   version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL, checksum TEXT)";

/// The rows of `schema_migrations` in order, and the table's shape.
pub(super) fn ran(conn: &Connection) -> rusqlite::Result<(Vec<Ran>, Table)> {
    let table: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if table.is_none() {
        return Ok((Vec::new(), Table::Missing));
    }
    let has_checksum = conn
        .prepare("SELECT 1 FROM pragma_table_info('schema_migrations') WHERE name = 'checksum'")?
        .exists([])?;
    let sql = if has_checksum {
        "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
    } else {
        "SELECT version, name, NULL FROM schema_migrations ORDER BY version"
    };
    let rows = conn
        .prepare(sql)?
        .query_map([], |r| {
            Ok(Ran {
                version: r.get(0)?,
                name: r.get(1)?,
                checksum: r.get(2)?,
                taken: false,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((
        rows,
        if has_checksum {
            Table::Current
        } else {
            Table::Old
        },
    ))
}

/// Reads what the tenant ran and checks it against `schema`: the bookkeeping is whole, and every
/// version both know ran the schema's file. A row from before checksums were kept takes the
/// schema's checksum (in memory; [`upgrade`] records it), if its name is the file's.
pub(super) fn examine(conn: &Connection, schema: &Schema) -> Result<Found, Failed> {
    let unread = |e: rusqlite::Error| Failed {
        from: TenantSchema::default(),
        file: None,
        error: HemvistError::internal(format!("read the tenant's schema: {e}")),
    };
    let version = current_version(conn).map_err(unread)?;
    let (mut ran, table) = ran(conn).map_err(unread)?;
    let mut found = Found {
        version,
        ran: Vec::new(),
        table,
    };
    let whole =
        ran.len() as u64 == u64::from(version) && ran.iter().zip(1..).all(|(r, v)| r.version == v);
    if !whole {
        let listed: Vec<String> = ran.iter().map(|r| r.version.to_string()).collect();
        found.ran = ran;
        return Err(Failed {
            from: found.state(),
            file: None,
            error: HemvistError::conflict(format!(
                "the tenant says it is at schema version {version}, but its schema_migrations \
                 lists versions [{}]: its bookkeeping is damaged; refused",
                listed.join(", ")
            )),
        });
    }
    let mut refusal = None;
    for r in &mut ran {
        let Some(file) = schema.file(r.version) else {
            continue;
        };
        match &r.checksum {
            Some(c) if c.eq_ignore_ascii_case(&file.checksum) => {}
            Some(c) => {
                refusal.get_or_insert_with(|| {
                    conflict(
                        file,
                        format!(
                            "the tenant ran version {} with checksum {c}, the control plane's \
                             {} has checksum {}: an edited migration file (a shipped file \
                             never changes; add a new one instead)",
                            r.version,
                            file.file_name(),
                            file.checksum
                        ),
                    )
                });
            }
            // Ran before checksums were kept: the only evidence is the name.
            None if r.name != file.name => {
                refusal.get_or_insert_with(|| {
                    conflict(
                        file,
                        format!(
                            "the tenant ran version {} as {:04}_{}.sql, the control plane's \
                             file is {}: another file",
                            r.version,
                            r.version,
                            r.name,
                            file.file_name()
                        ),
                    )
                });
            }
            None => {
                r.checksum = Some(file.checksum.clone());
                r.taken = true;
            }
        }
    }
    found.ran = ran;
    match refusal {
        Some((file, error)) => Err(Failed {
            from: found.state(),
            file: Some(Box::new(file)),
            error,
        }),
        None => Ok(found),
    }
}

fn conflict(file: &MigrationFile, message: String) -> (FailedFile, HemvistError) {
    (
        FailedFile {
            version: file.version,
            name: file.name.clone(),
            statement: String::new(),
            error: message.clone(),
        },
        HemvistError::conflict(message),
    )
}

/// Records what `found` says the tenant ran in this release's shape: the checksum column (on a
/// table from before it), and the checksums of rows from before it, taken from the control
/// plane's files on first sight (those ran before checksums were kept; the name matched).
pub(super) fn upgrade(conn: &Connection, found: &mut Found) -> rusqlite::Result<()> {
    if found.table == Table::Old {
        conn.execute_batch("ALTER TABLE schema_migrations ADD COLUMN checksum TEXT")?;
        found.table = Table::Current;
    }
    for r in found.ran.iter_mut().filter(|r| r.taken) {
        conn.execute(
            "UPDATE schema_migrations SET checksum = ?2 WHERE version = ?1 AND checksum IS NULL",
            rusqlite::params![r.version, r.checksum],
        )?;
        r.taken = false;
    }
    Ok(())
}
