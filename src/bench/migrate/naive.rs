//! The loops a user would write instead, on copies of the same tenant files taken at the old
//! version, one file after another with the nodes out of the way (the system has stopped when
//! they run):
//!
//! - `sqlite3 FILE < migration.sql` per file: a process per tenant, SQLite's default settings
//!   (synchronous FULL), each statement its own transaction, the `-- check:` line a comment;
//! - the same file run in this process with rusqlite (`execute_batch`), no process spawned,
//!   also with SQLite's defaults: the first loop without the spawn;
//! - as the second, with `synchronous = NORMAL`, as the node's writer runs: the same work
//!   without the spawn and without the fsyncs the node does not do either.
//!
//! Afterwards (not timed) every file is checked with the migration's check.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// One loop's outcome.
#[derive(Debug, Default)]
pub struct Loop {
    pub label: String,
    pub total: Duration,
    /// Per file, in order.
    pub each: Vec<Duration>,
    pub failed: usize,
    pub first_error: Option<String>,
    /// Files whose check answered true afterwards.
    pub checked_ok: usize,
}

/// The sqlite3 command's version line, if it runs at all.
pub fn sqlite3_version(exe: &Path) -> Option<String> {
    let out = Command::new(exe).arg("-version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `sqlite3 FILE < sql_file` for each file, one after another.
pub fn sqlite3_loop(exe: &Path, files: &[PathBuf], sql_file: &Path) -> anyhow::Result<Loop> {
    let mut out = Loop {
        label: format!("sqlite3 FILE < {}", file_name(sql_file)),
        ..Loop::default()
    };
    let started = Instant::now();
    for f in files {
        let t = Instant::now();
        let input = std::fs::File::open(sql_file)
            .with_context(|| format!("open {}", sql_file.display()))?;
        let ran = Command::new(exe)
            .arg(f)
            .stdin(Stdio::from(input))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("run {}", exe.display()))?;
        out.each.push(t.elapsed());
        if !ran.status.success() || !ran.stderr.is_empty() {
            out.failed += 1;
            out.first_error.get_or_insert_with(|| {
                format!(
                    "{}: {} {}",
                    f.display(),
                    ran.status,
                    String::from_utf8_lossy(&ran.stderr).trim()
                )
            });
        }
    }
    out.total = started.elapsed();
    Ok(out)
}

/// The file run with rusqlite in this process, one file after another; `synchronous` set on
/// each connection when given.
pub fn rusqlite_loop(
    label: String,
    files: &[PathBuf],
    sql: &str,
    synchronous: Option<&str>,
) -> anyhow::Result<Loop> {
    let mut out = Loop {
        label,
        ..Loop::default()
    };
    let started = Instant::now();
    for f in files {
        let t = Instant::now();
        let ran = (|| -> rusqlite::Result<()> {
            let conn = rusqlite::Connection::open(f)?;
            if let Some(s) = synchronous {
                conn.pragma_update(None, "synchronous", s)?;
            }
            conn.execute_batch(sql)?;
            conn.close().map_err(|(_, e)| e)
        })();
        out.each.push(t.elapsed());
        if let Err(e) = ran {
            out.failed += 1;
            out.first_error
                .get_or_insert_with(|| format!("{}: {e}", f.display()));
        }
    }
    out.total = started.elapsed();
    Ok(out)
}

/// Counts the files whose `check` query answers true (not timed).
pub fn check(out: &mut Loop, files: &[PathBuf], check_sql: &str) {
    out.checked_ok = files
        .iter()
        .filter(|f| {
            // Read-write: a WAL-mode file without its -shm cannot be opened read-only.
            rusqlite::Connection::open(f)
                .and_then(|c| c.query_row(check_sql, [], |r| r.get::<_, i64>(0)))
                .is_ok_and(|v| v != 0)
        })
        .count();
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}
