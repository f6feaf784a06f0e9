//! The in-memory search index of one open tenant: every contact's folded words, each word's
//! contacts, and the contacts as shown. Built from the tenant's database on the first search
//! after the tenant opens, kept up to date by reading `contact_changes`, and dropped with the
//! tenant when it closes, so an idle tenant holds none of it.
//!
//! Invariant: no query walks the contact book. A prefix is a range of a sorted vocabulary; one
//! word reads at most the contacts it shows (plus [`COUNT_LIMIT`] to count them); several words
//! read at most [`CANDIDATES`] contacts of the most selective word.
//!
//! One thing, kept in one file: the index and the queries it answers; about a fifth of it is
//! its tests.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use hashbrown::{HashMap, HashSet};
use std::ops::Bound;

use rusqlite::{Connection, OptionalExtension};

use super::Hit;
use crate::text;

/// Counts stop here: "200+".
pub const COUNT_LIMIT: usize = 200;
/// At most this many contacts of the most selective word are ranked for a search of several
/// words, the newest first.
pub const CANDIDATES: usize = 1_000;

/// The searchable fields, in the order `folded` stores them, and what a match in each weighs.
const WEIGHTS: [u32; 6] = [10, 4, 3, 2, 1, 1]; // name, company, city, email, phone, notes
const FIELD_END: char = '\u{1}';

struct Entry {
    hit: Hit,
    updated_ms: i64,
    /// Folded words, each followed by a space; each field ends with [`FIELD_END`].
    folded: Box<str>,
}

impl Entry {
    fn fields(&self) -> impl Iterator<Item = &str> {
        self.folded.split_terminator(FIELD_END)
    }

    fn name_words(&self) -> impl Iterator<Item = &str> {
        self.fields()
            .next()
            .unwrap_or_default()
            .split_terminator(' ')
    }

    fn all_words(&self) -> impl Iterator<Item = &str> {
        self.fields().flat_map(|f| f.split_terminator(' '))
    }
}

type Postings = BTreeMap<Box<str>, Vec<u32>>;

pub struct Index {
    /// By slot; a slot is given once, in the order contacts were first seen (so a higher slot is
    /// a newer contact), and emptied when the contact is deleted.
    entries: Vec<Option<Entry>>,
    slots: HashMap<i64, u32>,
    /// Every word of every field, and the slots (ascending) of the contacts that have it.
    words: Postings,
    /// Only the words of names: a short prefix lists names that start with it first.
    names: Postings,
    /// (updated_ms, id): what an empty search shows, most recently changed first.
    recent: BTreeSet<(i64, i64)>,
    /// The last `contact_changes.seq` applied.
    seq: i64,
    /// The node's data version of the org when this index was last brought up to date.
    pub version: u64,
}

/// What a query found: (total, whether the total is exact, the hits asked for).
pub type Found = (u64, bool, Vec<Hit>);

const SELECT: &str =
    "SELECT id, name, email, company, city, phone, notes, updated_ms FROM contacts";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let hit = Hit {
        id: r.get(0)?,
        name: r.get(1)?,
        email: r.get(2)?,
        company: r.get(3)?,
        city: r.get(4)?,
        phone: r.get(5)?,
    };
    let notes: String = r.get(6)?;
    let mut folded = String::new();
    for field in [
        &hit.name,
        &hit.company,
        &hit.city,
        &hit.email,
        &hit.phone,
        &notes,
    ] {
        text::fold_into(field, &mut folded);
        folded.push(FIELD_END);
    }
    Ok(Entry {
        hit,
        updated_ms: r.get(7)?,
        folded: folded.into_boxed_str(),
    })
}

fn last_seq(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'contact_changes'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The words of `map` that start with `prefix`, in order, with their postings.
fn prefixed<'a>(map: &'a Postings, prefix: &'a str) -> impl Iterator<Item = &'a Vec<u32>> + 'a {
    map.range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(w, _)| w.starts_with(prefix))
        .map(|(_, p)| p)
}

/// The union of `lists` (each ascending), highest first, without repeats, skipping `skip`.
fn newest_first<'a>(
    lists: impl Iterator<Item = &'a Vec<u32>>,
    skip: &HashSet<u32>,
) -> impl Iterator<Item = u32> + 'a {
    let lists: Vec<&'a Vec<u32>> = lists.collect();
    let mut heap: BinaryHeap<(u32, usize, usize)> = lists
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.last().map(|&s| (s, i, l.len() - 1)))
        .collect();
    let skip = skip.clone();
    let mut last = None;
    std::iter::from_fn(move || loop {
        let (slot, i, pos) = heap.pop()?;
        if pos > 0 {
            heap.push((lists[i][pos - 1], i, pos - 1));
        }
        if last == Some(slot) || skip.contains(&slot) {
            continue;
        }
        last = Some(slot);
        return Some(slot);
    })
}

fn link(map: &mut Postings, word: &str, slot: u32) {
    let list = match map.get_mut(word) {
        Some(l) => l,
        None => map.entry(word.into()).or_default(),
    };
    match list.last() {
        None => list.push(slot),
        Some(&l) if l < slot => list.push(slot),
        Some(_) => {
            if let Err(at) = list.binary_search(&slot) {
                list.insert(at, slot);
            }
        }
    }
}

fn unlink(map: &mut Postings, word: &str, slot: u32) {
    if let Some(list) = map.get_mut(word) {
        if let Ok(at) = list.binary_search(&slot) {
            list.remove(at);
        }
        if list.is_empty() {
            map.remove(word);
        }
    }
}

/// How well a contact matches every term, or `None` if some term matches none of its words.
/// A name weighs most; a whole word twice a prefix. One pass over the folded bytes, no
/// allocation: this runs for every candidate of a search of several words.
fn score(folded: &str, terms: &[String]) -> Option<u32> {
    let bytes = folded.as_bytes();
    let mut best = [0u32; super::MAX_TERMS];
    let terms = &terms[..terms.len().min(super::MAX_TERMS)];
    let (mut field, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == FIELD_END as u8 {
            field += 1;
            i += 1;
            continue;
        }
        let mut end = i;
        while end < bytes.len() && bytes[end] != b' ' {
            end += 1;
        }
        let word = &bytes[i..end];
        let weight = WEIGHTS.get(field).copied().unwrap_or(1);
        for (b, t) in best.iter_mut().zip(terms) {
            if word.first() == t.as_bytes().first() && word.starts_with(t.as_bytes()) {
                *b = (*b).max(if word.len() == t.len() {
                    weight * 2
                } else {
                    weight
                });
            }
        }
        i = end + 1;
    }
    let best = &best[..terms.len()];
    if best.contains(&0) {
        return None;
    }
    Some(best.iter().sum())
}

impl Index {
    /// Reads the whole contact book, in one snapshot.
    pub fn build(conn: &Connection, version: u64) -> rusqlite::Result<Index> {
        let tx = conn.unchecked_transaction()?;
        let seq = last_seq(&tx)?;
        let mut entries = Vec::new();
        {
            let mut stmt = tx.prepare(&format!("{SELECT} ORDER BY id"))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                entries.push(Some(entry(r)?));
            }
        }
        tx.finish()?;
        // Postings gathered in hash maps, then sorted once: far cheaper than ordered inserts.
        let mut words: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut names: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut slots = HashMap::with_capacity(entries.len());
        let mut recent = BTreeSet::new();
        for (slot, e) in entries.iter().flatten().enumerate() {
            let slot = slot as u32;
            for w in e.all_words() {
                let list = words.entry(w).or_default();
                if list.last() != Some(&slot) {
                    list.push(slot);
                }
            }
            for w in e.name_words() {
                let list = names.entry(w).or_default();
                if list.last() != Some(&slot) {
                    list.push(slot);
                }
            }
            slots.insert(e.hit.id, slot);
            recent.insert((e.updated_ms, e.hit.id));
        }
        let sorted = |m: HashMap<&str, Vec<u32>>| -> Postings {
            m.into_iter().map(|(w, p)| (Box::from(w), p)).collect()
        };
        let (words, names) = (sorted(words), sorted(names));
        Ok(Index {
            entries,
            slots,
            words,
            names,
            recent,
            seq,
            version,
        })
    }

    /// Applies every change since the index last looked. `false`: it is too far behind (the
    /// change log was pruned past it, or the file was replaced) and must be built again.
    pub fn catch_up(&mut self, conn: &Connection, version: u64) -> rusqlite::Result<bool> {
        let tx = conn.unchecked_transaction()?;
        let newest = last_seq(&tx)?;
        if newest < self.seq {
            return Ok(false);
        }
        if newest > self.seq {
            let oldest: Option<i64> = tx
                .prepare_cached("SELECT MIN(seq) FROM contact_changes")?
                .query_row([], |r| r.get(0))?;
            if oldest.is_none_or(|o| o > self.seq + 1) {
                return Ok(false);
            }
            let changed: Vec<i64> = tx
                .prepare_cached(
                    "SELECT DISTINCT contact_id FROM contact_changes WHERE seq > ?1 AND seq <= ?2",
                )?
                .query_map([self.seq, newest], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut one = tx.prepare_cached(&format!("{SELECT} WHERE id = ?1"))?;
            for id in changed {
                match one.query_row([id], entry).optional()? {
                    Some(e) => self.upsert(e),
                    None => self.remove(id),
                }
            }
        }
        tx.finish()?;
        self.seq = newest;
        self.version = version;
        Ok(true)
    }

    fn upsert(&mut self, e: Entry) {
        let id = e.hit.id;
        let slot = match self.slots.get(&id) {
            Some(&slot) => {
                self.unlink_slot(slot);
                slot
            }
            None => {
                let slot = self.entries.len() as u32;
                self.entries.push(None);
                self.slots.insert(id, slot);
                slot
            }
        };
        for w in e.all_words() {
            link(&mut self.words, w, slot);
        }
        for w in e.name_words() {
            link(&mut self.names, w, slot);
        }
        self.recent.insert((e.updated_ms, id));
        self.entries[slot as usize] = Some(e);
    }

    fn remove(&mut self, id: i64) {
        if let Some(slot) = self.slots.remove(&id) {
            self.unlink_slot(slot);
            self.entries[slot as usize] = None;
        }
    }

    fn unlink_slot(&mut self, slot: u32) {
        let Some(old) = self.entries[slot as usize].take() else {
            return;
        };
        for w in old.all_words() {
            unlink(&mut self.words, w, slot);
        }
        for w in old.name_words() {
            unlink(&mut self.names, w, slot);
        }
        self.recent.remove(&(old.updated_ms, old.hit.id));
        self.entries[slot as usize] = Some(old);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Roughly the memory the index holds, in bytes.
    pub fn bytes(&self) -> usize {
        let entries: usize = self
            .entries
            .iter()
            .flatten()
            .map(|e| {
                let h = &e.hit;
                std::mem::size_of::<Entry>()
                    + e.folded.len()
                    + h.name.len()
                    + h.email.len()
                    + h.company.len()
                    + h.city.len()
                    + h.phone.len()
            })
            .sum();
        let postings = |m: &Postings| -> usize {
            m.iter().map(|(w, p)| w.len() + p.capacity() * 4 + 64).sum()
        };
        entries + postings(&self.words) + postings(&self.names) + self.slots.len() * 24
    }

    fn hit(&self, slot: u32) -> Option<Hit> {
        self.entries
            .get(slot as usize)?
            .as_ref()
            .map(|e| e.hit.clone())
    }

    /// An empty search: the most recently changed contacts.
    pub fn recent(&self, offset: usize, want: usize) -> Found {
        let hits = self
            .recent
            .iter()
            .rev()
            .skip(offset)
            .take(want)
            .filter_map(|(_, id)| self.slots.get(id).and_then(|&s| self.hit(s)))
            .collect();
        (self.len() as u64, true, hits)
    }

    /// One word: contacts with a name word starting with it, alphabetically by that word; then,
    /// if names run out, the other contacts that have such a word anywhere, newest first.
    pub fn one_word(&self, term: &str, offset: usize, want: usize) -> Found {
        let mut counted = HashSet::new();
        'count: for list in prefixed(&self.words, term) {
            for &slot in list {
                counted.insert(slot);
                if counted.len() > COUNT_LIMIT {
                    break 'count;
                }
            }
        }
        let (total, exact) = if counted.len() > COUNT_LIMIT {
            (COUNT_LIMIT as u64, false)
        } else {
            (counted.len() as u64, true)
        };
        let needed = offset + want;
        let mut order = Vec::with_capacity(needed);
        let mut taken = HashSet::with_capacity(needed * 2);
        'names: for list in prefixed(&self.names, term) {
            for &slot in list {
                if taken.insert(slot) {
                    order.push(slot);
                    if order.len() >= needed {
                        break 'names;
                    }
                }
            }
        }
        if order.len() < needed {
            let rest: Vec<u32> = newest_first(prefixed(&self.words, term), &taken)
                .take(needed - order.len())
                .collect();
            order.extend(rest);
        }
        let hits = order
            .into_iter()
            .skip(offset)
            .filter_map(|s| self.hit(s))
            .collect();
        (total, exact, hits)
    }

    /// Several words: every contact that has a word starting with each of them, best first.
    /// Only the newest [`CANDIDATES`] contacts of the most selective word are ranked; the other
    /// words, where their ranges are small enough, become bitmaps that reject a candidate before
    /// it is scored.
    pub fn several_words(&self, terms: &[String], offset: usize, want: usize) -> Found {
        const SIZE_CAP: usize = 50 * CANDIDATES;
        let size = |t: &str| {
            let mut n = 0;
            for list in prefixed(&self.words, t) {
                n += list.len();
                if n >= SIZE_CAP {
                    break;
                }
            }
            n
        };
        let sizes: Vec<usize> = terms.iter().map(|t| size(t)).collect();
        let Some((driver, &driver_size)) = sizes.iter().enumerate().min_by_key(|(_, n)| **n) else {
            return (0, true, Vec::new());
        };
        let scan = driver_size.min(CANDIDATES);
        let filters: Vec<Vec<u64>> = terms
            .iter()
            .zip(&sizes)
            .enumerate()
            .filter(|&(i, (_, &n))| i != driver && n < SIZE_CAP && n <= 20 * scan)
            .map(|(_, (t, _))| {
                let mut bits = vec![0u64; self.entries.len().div_ceil(64)];
                for list in prefixed(&self.words, t) {
                    for &s in list {
                        bits[s as usize / 64] |= 1 << (s % 64);
                    }
                }
                bits
            })
            .collect();
        let mut scanned = 0;
        let mut kept: Vec<(u32, u32)> = Vec::new();
        for slot in
            newest_first(prefixed(&self.words, &terms[driver]), &HashSet::new()).take(CANDIDATES)
        {
            scanned += 1;
            let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
            if !filters.iter().all(|f| f[word] & bit != 0) {
                continue;
            }
            if let Some(e) = &self.entries[slot as usize] {
                if let Some(s) = score(&e.folded, terms) {
                    kept.push((s, slot));
                }
            }
        }
        let exact = scanned < CANDIDATES;
        let total = kept.len() as u64;
        let needed = (offset + want).min(kept.len());
        let order = |a: &(u32, u32), b: &(u32, u32)| {
            let name = |s: u32| {
                self.entries[s as usize]
                    .as_ref()
                    .map(|e| e.hit.name.as_str())
            };
            b.0.cmp(&a.0)
                .then_with(|| name(a.1).cmp(&name(b.1)))
                .then(a.1.cmp(&b.1))
        };
        if needed > 0 && needed < kept.len() {
            kept.select_nth_unstable_by(needed - 1, order);
            kept.truncate(needed);
        }
        kept.sort_unstable_by(order);
        let hits = kept
            .into_iter()
            .skip(offset)
            .filter_map(|(_, s)| self.hit(s))
            .collect();
        (total, exact, hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenants::TenantStore;
    use hemvist_proto::OrgId;

    fn store() -> (tempfile::TempDir, TenantStore, OrgId) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TenantStore::new(dir.path(), 4).expect("store");
        let org = OrgId::parse("acme").expect("org");
        store
            .create(&org, &crate::tenants::schema::Schema::builtin(), 0)
            .expect("create");
        (dir, store, org)
    }

    fn add(store: &TenantStore, org: &OrgId, name: &str, company: &str, city: &str) -> i64 {
        store
            .write(org, |tx| {
                tx.execute(
                    "INSERT INTO contacts (name, company, city, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, 0, (SELECT COUNT(*) FROM contacts))",
                    [name, company, city],
                )?;
                Ok(tx.last_insert_rowid())
            })
            .expect("insert")
    }

    fn build(store: &TenantStore, org: &OrgId) -> Index {
        store.read(org, |c| Index::build(c, 0)).expect("build")
    }

    fn names(found: &Found) -> Vec<&str> {
        found.2.iter().map(|h| h.name.as_str()).collect()
    }

    fn terms(ts: &[&str]) -> Vec<String> {
        ts.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn one_word_lists_names_first_then_other_fields_newest_first() {
        let (_dir, store, org) = store();
        add(&store, &org, "Sven Berg", "Acme", "Stockholm");
        add(&store, &org, "Åsa Öberg", "Svea Bygg", "Malmö");
        add(&store, &org, "Anna Lind", "Nordic", "Sundsvall");
        add(&store, &org, "Bo Svensson", "Acme", "Lund");
        let index = build(&store, &org);
        let found = index.one_word("sv", 0, 10);
        // Names alphabetically by the matching word (sven, svensson), then other fields' matches
        // (Svea), newest first; "Sundsvall" has "sv" inside a word, which is no prefix.
        assert_eq!(names(&found), ["Sven Berg", "Bo Svensson", "Åsa Öberg"]);
        assert_eq!((found.0, found.1), (3, true));
        assert_eq!(names(&index.one_word("asa", 0, 10)), ["Åsa Öberg"]);
        assert_eq!(
            names(&index.one_word("sv", 1, 2)),
            ["Bo Svensson", "Åsa Öberg"]
        );
        assert!(index.one_word("zz", 0, 10).2.is_empty());
        assert_eq!(names(&index.recent(0, 2)), ["Bo Svensson", "Anna Lind"]);
    }

    #[test]
    fn several_words_need_every_word_and_rank_names_first() {
        let (_dir, store, org) = store();
        add(&store, &org, "Anna Svensson", "Acme", "Lund");
        add(&store, &org, "Anna Berg", "Svea AB", "Lund");
        add(&store, &org, "Anna Lind", "Acme", "Sundsvall");
        add(&store, &org, "Bo Svensson", "Acme", "Lund");
        let index = build(&store, &org);
        let found = index.several_words(&terms(&["anna", "sv"]), 0, 10);
        // A name match weighs most (Svensson), then company (Svea), then city (Sundsvall
        // only has "sv" inside a word, which is not a prefix: no match).
        assert_eq!(names(&found), ["Anna Svensson", "Anna Berg"]);
        assert_eq!((found.0, found.1), (2, true));
        assert_eq!(
            names(&index.several_words(&terms(&["acme", "lund"]), 0, 10)),
            ["Anna Svensson", "Bo Svensson"]
        );
        assert!(index
            .several_words(&terms(&["anna", "zz"]), 0, 10)
            .2
            .is_empty());
    }

    #[test]
    fn catch_up_applies_inserts_edits_and_deletes() {
        let (_dir, store, org) = store();
        let id = add(&store, &org, "Åsa Öberg", "Fika", "Göteborg");
        let mut index = build(&store, &org);
        add(&store, &org, "Bertil Åberg", "Fika", "Lund");
        store
            .write(&org, |tx| {
                tx.execute("UPDATE contacts SET city = 'Uppsala' WHERE id = ?1", [id])
            })
            .expect("edit");
        assert!(store
            .read(&org, |c| index.catch_up(c, 3))
            .expect("catch up"));
        assert_eq!(index.version, 3);
        assert_eq!(names(&index.one_word("uppsala", 0, 10)), ["Åsa Öberg"]);
        assert!(index.one_word("goteborg", 0, 10).2.is_empty());
        assert_eq!(names(&index.one_word("aberg", 0, 10)), ["Bertil Åberg"]);
        store
            .write(&org, |tx| {
                tx.execute("DELETE FROM contacts WHERE id = ?1", [id])
            })
            .expect("delete");
        assert!(store
            .read(&org, |c| index.catch_up(c, 4))
            .expect("catch up"));
        assert!(index.one_word("asa", 0, 10).2.is_empty());
        assert_eq!(index.len(), 1);
        assert_eq!(names(&index.recent(0, 10)), ["Bertil Åberg"]);
    }

    #[test]
    fn an_index_behind_the_pruned_change_log_asks_to_be_rebuilt() {
        let (_dir, store, org) = store();
        add(&store, &org, "Åsa Öberg", "Fika", "Göteborg");
        let mut index = build(&store, &org);
        store
            .write(&org, |tx| {
                for i in 0..6_000 {
                    tx.execute(
                        "INSERT INTO contacts (name, created_ms, updated_ms) VALUES (?1, 0, 0)",
                        [format!("Person {i}")],
                    )?;
                }
                Ok(())
            })
            .expect("bulk insert");
        assert!(!store
            .read(&org, |c| index.catch_up(c, 1))
            .expect("catch up"));
        let rebuilt = build(&store, &org);
        assert_eq!(rebuilt.len(), 6_001);
    }

    #[test]
    fn scores_prefer_names_and_whole_words() {
        let mut folded = String::new();
        for f in ["Anna Svensson", "Svea", "", "", "", ""] {
            text::fold_into(f, &mut folded);
            folded.push(FIELD_END);
        }
        assert_eq!(score(&folded, &terms(&["anna"])), Some(20));
        assert_eq!(score(&folded, &terms(&["ann"])), Some(10));
        assert_eq!(score(&folded, &terms(&["sve"])), Some(10));
        assert_eq!(score(&folded, &terms(&["svea"])), Some(8));
        assert_eq!(score(&folded, &terms(&["anna", "x"])), None);
    }
}
