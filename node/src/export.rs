//! GDPR export of a tenant: a consistent copy of its database, made on its own node (its
//! region) with `VACUUM INTO` from a read transaction, so writers go on (WAL: a reader blocks
//! no writer), with what is not the org's to take removed (sessions, idempotency keys,
//! password hashes; zeroed where they lay, `secure_delete`); as that SQLite file or as JSON
//! lines (one `{"table", "row"}` per row of every table but full-text indexes). With a
//! manifest: schema version, rows per table, bytes, SHA-256, the time it is as of.
//!
//! Keeps true: the staging files live in the node's data folder only while being made; what
//! is handed out is an open file whose name is already removed, so nothing stays behind, even
//! if the requester goes away half-way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use hemvist_proto::{ErrorKind, HemvistError, OrgId};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::tenants::TenantStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sqlite,
    Jsonl,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, HemvistError> {
        match s {
            "sqlite" => Ok(Format::Sqlite),
            "jsonl" => Ok(Format::Jsonl),
            _ => Err(HemvistError::invalid(format!(
                "format {s:?}: use sqlite or jsonl"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Sqlite => "sqlite",
            Format::Jsonl => "jsonl",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub org: String,
    pub format: &'static str,
    pub schema_version: u32,
    /// Rows per table as exported.
    pub tables: BTreeMap<String, u64>,
    pub bytes: u64,
    pub sha256: String,
    /// The copy holds every write acknowledged before this time, and none after `copied_ms`.
    pub as_of_ms: i64,
    /// How long the consistent copy took (writers were not held meanwhile).
    pub copy_ms: u64,
    /// What was left out, and why.
    pub excluded: Vec<String>,
}

/// What is not the org's data to hand out.
const CLEARED: &[(&str, &str)] = &[
    ("DELETE FROM sessions", "sessions (sign-in credentials)"),
    (
        "DELETE FROM idempotency_keys",
        "idempotency keys (request bookkeeping)",
    ),
    (
        "UPDATE users SET password_hash = ''",
        "users' password hashes",
    ),
];

fn failed(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("export: {e}"))
}

/// Makes the export of `org` in `staging` (a folder of the node's data folder); returns the
/// open file (its name already removed) and its manifest.
pub fn export(
    tenants: &TenantStore,
    org: &OrgId,
    format: Format,
    staging: &Path,
) -> Result<(File, Manifest), HemvistError> {
    let src = tenants.path(org);
    if !src.is_file() {
        return Err(HemvistError::new(
            ErrorKind::NotFound,
            format!("{org} has no database on this node"),
        ));
    }
    std::fs::create_dir_all(staging).map_err(failed)?;
    let tag = hemvist_proto::random::hex(8)?;
    let copy = staging.join(format!("{org}-{tag}.db"));
    let out_jsonl = staging.join(format!("{org}-{tag}.jsonl"));
    let result = make(&src, &copy, &out_jsonl, org, format);
    let _ = std::fs::remove_file(&copy);
    let _ = std::fs::remove_file(&out_jsonl);
    result
}

fn make(
    src: &Path,
    copy: &Path,
    out_jsonl: &Path,
    org: &OrgId,
    format: Format,
) -> Result<(File, Manifest), HemvistError> {
    let started = Instant::now();
    let as_of_ms = now_ms();
    {
        let conn =
            Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(failed)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(failed)?;
        // The staging copy need not survive a crash (it is made again), and a forced flush of
        // a whole tenant's worth of pages would hold the tenant's own writers' fsyncs behind it.
        conn.pragma_update(None, "synchronous", "OFF")
            .map_err(failed)?;
        conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()])
            .map_err(failed)?;
    }
    let copy_ms = started.elapsed().as_millis() as u64;
    let conn = Connection::open(copy).map_err(failed)?;
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(failed)?;
    // Nothing of the staging copy is flushed to disk on purpose (see above).
    conn.pragma_update(None, "journal_mode", "MEMORY")
        .map_err(failed)?;
    conn.pragma_update(None, "synchronous", "OFF")
        .map_err(failed)?;
    let mut excluded = Vec::new();
    for (sql, what) in CLEARED {
        match conn.execute(sql, []) {
            Ok(_) => excluded.push(what.to_string()),
            Err(e) if e.to_string().contains("no such table") => {}
            Err(e) => return Err(failed(e)),
        }
    }
    let schema_version = crate::tenants::schema::current_version(&conn).map_err(failed)?;
    let (tables, virtuals) = tables(&conn)?;
    let is_index = |t: &str| {
        virtuals
            .iter()
            .any(|v| t == v || t.starts_with(&format!("{v}_")))
    };
    let mut counts = BTreeMap::new();
    for t in &tables {
        if format == Format::Jsonl && is_index(t) {
            continue;
        }
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| r.get(0))
            .map_err(failed)?;
        counts.insert(t.clone(), n as u64);
    }
    let path = match format {
        Format::Sqlite => {
            drop(conn);
            copy.to_path_buf()
        }
        Format::Jsonl => {
            excluded.push("full-text indexes (rebuilt from the rows)".into());
            let mut w = BufWriter::new(File::create(out_jsonl).map_err(failed)?);
            for t in counts.keys() {
                let mut stmt = conn
                    .prepare(&format!("SELECT * FROM \"{t}\""))
                    .map_err(failed)?;
                let cols: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
                let mut rows = stmt.query([]).map_err(failed)?;
                while let Some(r) = rows.next().map_err(failed)? {
                    let mut row = serde_json::Map::new();
                    for (i, c) in cols.iter().enumerate() {
                        let v = match r.get_ref(i).map_err(failed)? {
                            ValueRef::Null => serde_json::Value::Null,
                            ValueRef::Integer(n) => n.into(),
                            ValueRef::Real(f) => f.into(),
                            ValueRef::Text(s) => String::from_utf8_lossy(s).into_owned().into(),
                            ValueRef::Blob(b) => serde_json::json!({ "hex": hex::encode(b) }),
                        };
                        row.insert(c.clone(), v);
                    }
                    serde_json::to_writer(&mut w, &serde_json::json!({"table": t, "row": row}))
                        .map_err(failed)?;
                    w.write_all(b"\n").map_err(failed)?;
                }
            }
            w.flush().map_err(failed)?;
            out_jsonl.to_path_buf()
        }
    };
    let mut file = File::open(&path).map_err(failed)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(failed)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    // Handed out from the start, by an open file whose name is gone.
    let file = File::open(&path).map_err(failed)?;
    let _ = std::fs::remove_file(&path);
    Ok((
        file,
        Manifest {
            org: org.to_string(),
            format: format.as_str(),
            schema_version,
            tables: counts,
            bytes,
            sha256: hex::encode(h.finalize()),
            as_of_ms,
            copy_ms,
            excluded,
        },
    ))
}

/// The tables, and which of them are virtual (full-text indexes).
fn tables(conn: &Connection) -> Result<(Vec<String>, Vec<String>), HemvistError> {
    let mut stmt = conn
        .prepare(
            "SELECT name, coalesce(sql, '') FROM sqlite_master WHERE type = 'table'
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .map_err(failed)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .map_err(failed)?;
    let mut all = Vec::new();
    let mut virtuals = Vec::new();
    for r in rows {
        let (name, sql) = r.map_err(failed)?;
        if sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL TABLE") {
            virtuals.push(name.clone());
        }
        all.push(name);
    }
    Ok((all, virtuals))
}
