//! Contact search, designed so that no keystroke costs work proportional to the contact book.
//!
//! The query is reduced to at most [`MAX_TERMS`] folded words (letters and digits only, so no
//! FTS5 syntax survives), each used as a prefix; FTS5 prefix indexes up to 12 characters make
//! each of them one doclist that can be read lazily. Then:
//! - one word (what a user types first): the contacts whose name has a word starting with it,
//!   alphabetically by that word, straight from the `name_words` index; then, if names run out,
//!   the other matches (company, city, email...), newest first;
//! - several words: the newest [`CANDIDATES`] contacts matching the selective (longer) words,
//!   filtered by the short ones and ranked by where each word matched (name first).
//!
//! Counts stop at [`COUNT_LIMIT`] ("200+"), and every query runs under a deadline enforced by
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
/// Contacts read for a query of several words, newest first.
const CANDIDATES: usize = 100;
const COUNT_LIMIT: usize = 200;
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

type Found = (u64, bool, Vec<Hit>);
type CacheKey = (OrgId, Vec<String>, usize);

/// Recent answers per org, valid until the org's next write. Typing makes the same short
/// prefixes come back again and again; every write through `Node::write` bumps the org's data
/// version, so a cached answer never outlives a change (a new contact is searchable at once).
pub struct SearchCache {
    entries: std::sync::Mutex<lru::LruCache<CacheKey, (u64, std::sync::Arc<Found>)>>,
    versions: std::sync::Mutex<std::collections::HashMap<OrgId, u64>>,
    pub hits: std::sync::atomic::AtomicU64,
    pub misses: std::sync::atomic::AtomicU64,
}

impl Default for SearchCache {
    fn default() -> Self {
        Self {
            entries: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(4_096).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            versions: Default::default(),
            hits: Default::default(),
            misses: Default::default(),
        }
    }
}

impl SearchCache {
    fn version(&self, org: &OrgId) -> u64 {
        let v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        v.get(org).copied().unwrap_or(0)
    }

    /// Called after every committed write of the org.
    pub fn bump(&self, org: &OrgId) {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        *v.entry(org.clone()).or_insert(0) += 1;
    }

    fn get(&self, key: &CacheKey, version: u64) -> Option<std::sync::Arc<Found>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some((v, found)) if *v == version => Some(found.clone()),
            _ => None,
        }
    }

    fn put(&self, key: CacheKey, version: u64, found: std::sync::Arc<Found>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.put(key, (version, found));
    }
}

pub fn search(node: &Node, org: &OrgId, raw: &str, page: usize) -> Result<Results, HemvistError> {
    use std::sync::atomic::Ordering::Relaxed;
    let query = parse(raw)?;
    let page = page.min(MAX_PAGE);
    // Read the version before the query: a write that commits meanwhile bumps it past ours.
    let version = node.search_cache.version(org);
    let key = (org.clone(), query.terms.clone(), page);
    let found = match node.search_cache.get(&key, version) {
        Some(found) => {
            node.search_cache.hits.fetch_add(1, Relaxed);
            found
        }
        None => {
            node.search_cache.misses.fetch_add(1, Relaxed);
            let deadline = Instant::now() + DEADLINE;
            let q = query.clone();
            let outcome = node.tenants.read(org, move |conn| {
                conn.progress_handler(2_000, Some(move || Instant::now() > deadline));
                let result = run(conn, &q, page);
                conn.progress_handler(0, None::<fn() -> bool>);
                result
            });
            let found = std::sync::Arc::new(outcome.map_err(|e| {
                if e.message.contains("interrupted") {
                    HemvistError::unavailable("the search took too long; try a longer search")
                } else {
                    e
                }
            })?);
            node.search_cache.put(key, version, found.clone());
            found
        }
    };
    let (total, total_exact, mut hits) = (found.0, found.1, found.2.clone());
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

/// The search itself on an open connection (no deadline): (total, total is exact, hits).
pub fn run(conn: &Connection, q: &Query, page: usize) -> rusqlite::Result<(u64, bool, Vec<Hit>)> {
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
    if q.terms.len() == 1 {
        let fts = format!("\"{}\"*", q.terms[0]);
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
        let hits = by_name_prefix(conn, &q.terms[0], &fts, offset, want)?;
        return Ok((total, exact, hits));
    }
    several_words(conn, q, offset, want)
}

/// Several words: the newest [`CANDIDATES`] contacts that match the longer words (the selective
/// ones) are read once, filtered by the short words and ranked here, so neither a broad
/// one-letter word nor a many-word ranking makes SQLite walk a huge doclist.
fn several_words(
    conn: &Connection,
    q: &Query,
    offset: usize,
    want: usize,
) -> rusqlite::Result<(u64, bool, Vec<Hit>)> {
    let (long, short): (Vec<&String>, Vec<&String>) =
        q.terms.iter().partition(|t| t.chars().count() >= 3);
    let in_fts = if long.is_empty() { &short } else { &long };
    let fts = in_fts
        .iter()
        .map(|t| format!("\"{t}\"*"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM contacts_fts f JOIN contacts c ON c.id = f.rowid
         WHERE contacts_fts MATCH ?1 ORDER BY f.rowid DESC LIMIT ?2"
    ))?;
    let mut scanned = 0;
    let mut kept: Vec<(u32, Hit)> = Vec::new();
    let mut rows = stmt.query(params![fts, CANDIDATES])?;
    while let Some(r) = rows.next()? {
        scanned += 1;
        let h = hit(r)?;
        if let Some(score) = score(&h, &q.terms) {
            kept.push((score, h));
        }
    }
    let exhausted = scanned < CANDIDATES;
    kept.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.1.name.cmp(&b.1.name))
            .then(a.1.id.cmp(&b.1.id))
    });
    let total = kept.len() as u64;
    let hits = kept
        .into_iter()
        .skip(offset)
        .take(want)
        .map(|(_, h)| h)
        .collect();
    Ok((total, exhausted, hits))
}

/// How well a contact matches every term, or `None` if some term matches no field shown (a
/// match only in the notes ranks last but still counts). Names weigh most; a whole word more
/// than a prefix.
fn score(h: &Hit, terms: &[String]) -> Option<u32> {
    let fields: [(&str, u32); 5] = [
        (&h.name, 10),
        (&h.company, 4),
        (&h.city, 3),
        (&h.email, 2),
        (&h.phone, 1),
    ];
    let words: Vec<(Vec<String>, u32)> = fields.iter().map(|(f, w)| (text::words(f), *w)).collect();
    let mut total = 0;
    for t in terms {
        let mut best = 0;
        for (ws, weight) in &words {
            for w in ws {
                if w == t {
                    best = best.max(weight * 2);
                } else if w.starts_with(t.as_str()) {
                    best = best.max(*weight);
                }
            }
        }
        if best == 0 && t.chars().count() < 3 {
            return None;
        }
        total += best;
    }
    Some(total)
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
