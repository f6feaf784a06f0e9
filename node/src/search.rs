//! Contact search, designed so that no keystroke costs work proportional to the contact book.
//!
//! The query is reduced to at most [`MAX_TERMS`] folded words (letters and digits only, so no
//! FTS5 syntax survives), each used as a prefix. Then:
//! - at most [`RANK_LIMIT`] matches: all are ranked by bm25 (name weighted highest) — the
//!   full ranking, on a bounded set;
//! - more, for one word (a short prefix while typing): the contacts whose name has a word that
//!   starts with it, in alphabetical order, straight from the `name_words` index, then the rest;
//! - more, for several words: the newest matching contacts first.
//!
//! Counts stop at [`COUNT_LIMIT`] ("1000+"), and every query runs under a deadline enforced by
//! SQLite's progress handler.

use std::time::{Duration, Instant};

use hemvist_proto::{ErrorKind, HemvistError, OrgId};
use rusqlite::{params, Connection};
use serde::Serialize;

use crate::text;
use crate::Node;

pub const MAX_QUERY_CHARS: usize = 200;
pub const MAX_TERMS: usize = 8;
pub const MAX_TERM_CHARS: usize = 40;
pub const PAGE_SIZE: usize = 20;
pub const MAX_PAGE: usize = 50;
const RANK_LIMIT: usize = 500;
const COUNT_LIMIT: usize = 1000;
pub const DEADLINE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub terms: Vec<String>,
}

/// Parses what a user typed. Too long is a clear error; anything else becomes plain words.
pub fn parse(raw: &str) -> Result<Query, HemvistError> {
    if raw.chars().count() > MAX_QUERY_CHARS {
        return Err(HemvistError::new(
            ErrorKind::InvalidArgument,
            format!("the search is too long: at most {MAX_QUERY_CHARS} characters"),
        ));
    }
    let mut terms: Vec<String> = text::words(raw)
        .into_iter()
        .map(|w| w.chars().take(MAX_TERM_CHARS).collect())
        .collect();
    terms.dedup();
    terms.truncate(MAX_TERMS);
    Ok(Query { terms })
}

#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub company: String,
    pub city: String,
    pub phone: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub query: String,
    pub terms: Vec<String>,
    /// Exact when `total_exact`, otherwise a lower bound.
    pub total: u64,
    pub total_exact: bool,
    pub page: usize,
    pub hits: Vec<Hit>,
    pub has_more: bool,
}

fn hit(r: &rusqlite::Row<'_>) -> rusqlite::Result<Hit> {
    Ok(Hit {
        id: r.get(0)?,
        name: r.get(1)?,
        email: r.get(2)?,
        company: r.get(3)?,
        city: r.get(4)?,
        phone: r.get(5)?,
    })
}

const COLUMNS: &str = "c.id, c.name, c.email, c.company, c.city, c.phone";

pub fn search(node: &Node, org: &OrgId, raw: &str, page: usize) -> Result<Results, HemvistError> {
    let query = parse(raw)?;
    let page = page.min(MAX_PAGE);
    let deadline = Instant::now() + DEADLINE;
    let q = query.clone();
    let outcome = node.tenants.read(org, move |conn| {
        conn.progress_handler(2_000, Some(move || Instant::now() > deadline));
        let result = run(conn, &q, page);
        conn.progress_handler(0, None::<fn() -> bool>);
        result
    });
    let (total, total_exact, mut hits) = outcome.map_err(|e| {
        if e.message.contains("interrupted") {
            HemvistError::unavailable("the search took too long; try a longer search")
        } else {
            e
        }
    })?;
    let has_more = hits.len() > PAGE_SIZE && page < MAX_PAGE;
    hits.truncate(PAGE_SIZE);
    Ok(Results {
        query: raw.to_string(),
        terms: query.terms,
        total,
        total_exact,
        page,
        hits,
        has_more,
    })
}

fn run(conn: &Connection, q: &Query, page: usize) -> rusqlite::Result<(u64, bool, Vec<Hit>)> {
    let want = PAGE_SIZE + 1;
    let offset = page * PAGE_SIZE;
    if q.terms.is_empty() {
        let total: i64 = conn
            .prepare_cached("SELECT value FROM stats WHERE key = 'contacts'")?
            .query_row([], |r| r.get(0))?;
        let hits = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM contacts c ORDER BY c.updated_ms DESC, c.id DESC LIMIT ?1 OFFSET ?2"
            ))?
            .query_map(params![want, offset], hit)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        return Ok((total.max(0) as u64, true, hits));
    }
    let fts: String = q
        .terms
        .iter()
        .map(|t| format!("\"{t}\"*"))
        .collect::<Vec<_>>()
        .join(" ");
    let matches: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM contacts_fts WHERE contacts_fts MATCH ?1 LIMIT ?2)",
        )?
        .query_row(params![fts, COUNT_LIMIT + 1], |r| r.get(0))?;
    let matches = matches.max(0) as usize;
    let (total, exact) = if matches > COUNT_LIMIT {
        (COUNT_LIMIT as u64, false)
    } else {
        (matches as u64, true)
    };

    if matches <= RANK_LIMIT {
        let hits = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM contacts_fts f JOIN contacts c ON c.id = f.rowid
                 WHERE contacts_fts MATCH ?1
                 ORDER BY bm25(contacts_fts, 10.0, 3.0, 4.0, 2.0, 1.0, 0.5), c.id
                 LIMIT ?2 OFFSET ?3"
            ))?
            .query_map(params![fts, want, offset], hit)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        return Ok((total, exact, hits));
    }

    if q.terms.len() == 1 {
        let hits = by_name_prefix(conn, &q.terms[0], &fts, offset, want)?;
        return Ok((total, exact, hits));
    }

    let hits = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM contacts_fts f JOIN contacts c ON c.id = f.rowid
             WHERE contacts_fts MATCH ?1 ORDER BY f.rowid DESC LIMIT ?2 OFFSET ?3"
        ))?
        .query_map(params![fts, want, offset], hit)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((total, exact, hits))
}

/// Contacts with a name word starting with `prefix`, alphabetically by that word; then, if the
/// names run out, other matching contacts (company, city, ...), newest first.
fn by_name_prefix(
    conn: &Connection,
    prefix: &str,
    fts: &str,
    offset: usize,
    want: usize,
) -> rusqlite::Result<Vec<Hit>> {
    let upper = format!("{prefix}\u{10FFFF}");
    let needed = offset + want;
    let mut ids: Vec<i64> = Vec::with_capacity(needed);
    let mut seen = std::collections::HashSet::with_capacity(needed * 2);
    {
        let mut stmt = conn.prepare_cached(
            "SELECT contact_id FROM name_words WHERE word >= ?1 AND word < ?2 ORDER BY word, contact_id",
        )?;
        let mut rows = stmt.query(params![prefix, upper])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            if seen.insert(id) {
                ids.push(id);
                if ids.len() >= needed {
                    break;
                }
            }
        }
    }
    if ids.len() < needed {
        let mut stmt = conn.prepare_cached(
            "SELECT rowid FROM contacts_fts WHERE contacts_fts MATCH ?1 ORDER BY rowid DESC",
        )?;
        let mut rows = stmt.query([fts])?;
        while let Some(r) = rows.next()? {
            let id: i64 = r.get(0)?;
            if seen.insert(id) {
                ids.push(id);
                if ids.len() >= needed {
                    break;
                }
            }
        }
    }
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM contacts c WHERE c.id = ?1"))?;
    let mut hits = Vec::with_capacity(want);
    for id in ids.into_iter().skip(offset) {
        hits.push(stmt.query_row([id], hit)?);
    }
    Ok(hits)
}
