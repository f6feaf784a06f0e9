//! Contact search, designed so that no keystroke costs work proportional to the contact book.
//!
//! The query is reduced to at most [`MAX_TERMS`] folded words (letters and digits only, so no
//! query syntax of any kind survives), each used as a prefix, and answered from the tenant's
//! in-memory [`index::Index`]:
//! - no word: the most recently changed contacts;
//! - one word (what a user types first): the contacts whose name has a word starting with it,
//!   alphabetically by that word; then, if names run out, the other matches (company, city,
//!   email, phone, notes), newest first;
//! - several words: contacts that have a word starting with each, ranked by where each matched
//!   (name first, a whole word above a prefix), among the newest [`index::CANDIDATES`] contacts
//!   of the most selective word.
//!
//! Counts stop at [`index::COUNT_LIMIT`] ("200+"). A search never runs SQL while the index is
//! current: the async handler answers it in place ([`search_ready`]); only building the index
//! (the first search after the tenant opens) or catching up after a write reads the database,
//! on a blocking thread ([`search`]).

pub mod index;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};

use hemvist_proto::{ErrorKind, HemvistError, OrgId};
use serde::Serialize;

use crate::tenants::{Derived, TenantStore};
use crate::text;
use index::{Found, Index};

pub const MAX_QUERY_CHARS: usize = 200;
pub const MAX_TERMS: usize = 8;
pub const MAX_TERM_CHARS: usize = 40;
pub const PAGE_SIZE: usize = 20;
pub const MAX_PAGE: usize = 50;

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

/// Each org's data version in this process: bumped after every committed write through
/// `Node::write`, so an index built at an older version knows it must catch up.
#[derive(Default)]
pub struct DataVersions {
    versions: Mutex<HashMap<OrgId, u64>>,
    pub index_builds: AtomicU64,
    pub index_catch_ups: AtomicU64,
}

impl DataVersions {
    pub fn get(&self, org: &OrgId) -> u64 {
        let v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        v.get(org).copied().unwrap_or(0)
    }

    /// Called after every committed write of the org.
    pub fn bump(&self, org: &OrgId) {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        *v.entry(org.clone()).or_insert(0) += 1;
    }
}

/// The search on an index: (total, total is exact, hits of the page plus one).
pub fn run(index: &Index, q: &Query, page: usize) -> Found {
    let want = PAGE_SIZE + 1;
    let offset = page * PAGE_SIZE;
    match q.terms.as_slice() {
        [] => index.recent(offset, want),
        [one] => index.one_word(one, offset, want),
        several => index.several_words(several, offset, want),
    }
}

fn results(raw: &str, query: Query, page: usize, found: Found) -> Results {
    let (total, total_exact, mut hits) = found;
    let has_more = hits.len() > PAGE_SIZE && page < MAX_PAGE;
    hits.truncate(PAGE_SIZE);
    Results {
        query: raw.to_string(),
        terms: query.terms,
        total,
        total_exact,
        page,
        hits,
        has_more,
    }
}

/// The search index kept beside an open tenant, if one was built.
fn index_in(slot: &Option<Derived>) -> Option<&Index> {
    slot.as_ref().and_then(|d| d.downcast_ref::<Index>())
}

/// Answers from the org's index if it is open, current and not being updated; `None` means
/// the caller must use [`search`] on a blocking thread. Never blocks and never touches SQLite.
pub fn search_ready(
    tenants: &TenantStore,
    versions: &DataVersions,
    org: &OrgId,
    raw: &str,
    page: usize,
) -> Option<Result<Results, HemvistError>> {
    let query = match parse(raw) {
        Ok(q) => q,
        Err(e) => return Some(Err(e)),
    };
    let page = page.min(MAX_PAGE);
    let tenant = tenants.open_tenant(org)?;
    let version = versions.get(org);
    let slot = match tenant.derived.try_read() {
        Ok(slot) => slot,
        Err(TryLockError::WouldBlock) => return None,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
    };
    let index = index_in(&slot).filter(|i| i.version == version)?;
    let found = run(index, &query, page);
    Some(Ok(results(raw, query, page, found)))
}

/// Answers a search, first building the org's index or bringing it up to date if needed.
/// Blocking: call it off the async runtime.
pub fn search(
    tenants: &TenantStore,
    versions: &DataVersions,
    org: &OrgId,
    raw: &str,
    page: usize,
) -> Result<Results, HemvistError> {
    let query = parse(raw)?;
    let page = page.min(MAX_PAGE);
    let tenant = tenants.tenant(org)?;
    // Read the version before looking at the database: a write that commits meanwhile bumps
    // it past ours, and the next search catches up again.
    let version = versions.get(org);
    {
        let slot = tenant.derived.read().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = index_in(&slot).filter(|i| i.version == version) {
            let found = run(index, &query, page);
            return Ok(results(raw, query, page, found));
        }
    }
    let mut slot = tenant.derived.write().unwrap_or_else(|p| p.into_inner());
    let current = match slot.take().and_then(|d| d.downcast::<Index>().ok()) {
        Some(index) if index.version == version => *index,
        Some(mut index) => {
            let caught_up = tenant.read(|c| index.catch_up(c, version))?;
            versions.index_catch_ups.fetch_add(1, Ordering::Relaxed);
            if caught_up {
                *index
            } else {
                versions.index_builds.fetch_add(1, Ordering::Relaxed);
                tenant.read(|c| Index::build(c, version))?
            }
        }
        None => {
            versions.index_builds.fetch_add(1, Ordering::Relaxed);
            tenant.read(|c| Index::build(c, version))?
        }
    };
    let found = run(&current, &query, page);
    *slot = Some(Box::new(current));
    Ok(results(raw, query, page, found))
}
