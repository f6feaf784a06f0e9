//! The catalog: every backup object of one org a restore can use — its own objects, the packed
//! segments its index objects list, and the packed segments of the newest packs that no index
//! lists yet.
//!
//! Keeps true: a packed segment shipped but not yet indexed is still found (the scan of recent
//! packs covers a few times `INDEX_EVERY_MS`, the longest a segment waits for its index), and
//! what cannot be read is remembered as damaged with what can still be told of it (an index's
//! range from its name, a pack's segments from what is left of its index), never dropped
//! silently: a plan that stops before it is short, not complete.

use std::sync::Arc;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use hemvist_proto::OrgId;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::backup::format::{self, Kind, ObjectName};

/// Every backup object of one org: snapshots and segments, with their sizes. A segment that
/// lives in a pack has its place in `packed`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub objects: Vec<(ObjectName, u64)>,
    /// Segment key -> (pack key, offset).
    pub packed: std::collections::HashMap<String, (String, u64)>,
    /// What could not be read while listing (a damaged pack index, say).
    pub warnings: Vec<String>,
    /// The objects behind those warnings that may hold some of the org's history.
    pub damaged: Vec<DamagedObject>,
}

/// A backup object that could not be read while listing, and what it may hold of the org.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DamagedObject {
    pub key: String,
    pub reason: String,
    /// When it was written (from its name).
    pub time_ms: i64,
    /// The org's segments it is known to hold (generation, first LSN, LSN after, time).
    pub holds: Vec<HeldRange>,
    /// Whether `holds` is all of the org it may hold; if not, it may hold any of the org's
    /// writes up to `time_ms`.
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeldRange {
    pub generation: u64,
    pub start: u64,
    pub end: u64,
    pub time_ms: i64,
}

impl From<&ObjectName> for HeldRange {
    fn from(n: &ObjectName) -> Self {
        HeldRange {
            generation: n.generation,
            start: n.start,
            end: n.end,
            time_ms: n.time_ms,
        }
    }
}

/// Packs newer than this before a node's newest pack may hold segments no index lists yet.
const TAIL_WINDOW_MS: i64 = 3 * format::INDEX_EVERY_MS;

/// The names under the org's prefix alone (one LIST): enough to know the LSNs in use.
pub async fn listed(
    store: &Arc<dyn ObjectStore>,
    org: &OrgId,
) -> anyhow::Result<Vec<(ObjectName, u64)>> {
    let prefix = ObjectPath::from(format::tenant_prefix(org));
    let metas: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .with_context(|| format!("list the backups of {org}"))?;
    Ok(metas
        .into_iter()
        .filter_map(|m| ObjectName::parse(m.location.as_ref()).map(|n| (n, m.size)))
        .filter(|(n, _)| &n.org == org)
        .collect())
}

/// Everything a restore of the org can use: its own objects, the packed segments its index
/// objects list, and the packed segments of the last minute or so that no index lists yet.
pub async fn catalog(store: &Arc<dyn ObjectStore>, org: &OrgId) -> anyhow::Result<Catalog> {
    catalog_with(store, org, true).await
}

/// As [`catalog`]; without `scan_packs`, only what the org's index objects list (to check
/// that they alone reach the newest point).
pub async fn catalog_with(
    store: &Arc<dyn ObjectStore>,
    org: &OrgId,
    scan_packs: bool,
) -> anyhow::Result<Catalog> {
    let mut catalog = listed_and_indexed(store, org, i64::MIN).await?;
    if scan_packs {
        scan_recent_packs(store, org, &mut catalog).await?;
    }
    catalog.sort();
    Ok(catalog)
}

/// The catalog as the node that ships the org knows it: what its prefix holds and its index
/// objects list (only those written since `index_since_ms`), plus `pending`, the packed
/// segments it shipped that no index lists yet — instead of scanning every node's recent packs.
/// The caller reads `pending` before this lists, so a segment indexed meanwhile is in one or
/// both. A move's source answers its target with it.
pub async fn catalog_known(
    store: &Arc<dyn ObjectStore>,
    org: &OrgId,
    index_since_ms: i64,
    pending: &[format::PackRef],
) -> anyhow::Result<Catalog> {
    let mut catalog = listed_and_indexed(store, org, index_since_ms).await?;
    for r in pending {
        catalog.add_packed(&r.segment, &r.pack, r.offset, r.len);
    }
    catalog.sort();
    Ok(catalog)
}

/// The org's own objects (one LIST) and the packed segments its index objects written since
/// `index_since_ms` list (one GET each).
async fn listed_and_indexed(
    store: &Arc<dyn ObjectStore>,
    org: &OrgId,
    index_since_ms: i64,
) -> anyhow::Result<Catalog> {
    let names = listed(store, org).await?;
    let mut catalog = Catalog::default();
    let mut indexes = Vec::new();
    for (name, size) in names {
        match name.kind {
            Kind::Index if name.time_ms >= index_since_ms => indexes.push(name),
            Kind::Index => {}
            _ => catalog.objects.push((name, size)),
        }
    }
    let read: Vec<(ObjectName, anyhow::Result<Vec<format::PackRef>>)> =
        futures::stream::iter(indexes.into_iter().map(|name| {
            let store = store.clone();
            async move {
                let got = async {
                    let bytes = store
                        .get(&ObjectPath::from(name.key()))
                        .await?
                        .bytes()
                        .await?;
                    format::decode_index(&name, &bytes)
                }
                .await;
                (name, got)
            }
        }))
        .buffer_unordered(8)
        .collect()
        .await;
    for (name, refs) in read {
        match refs {
            Ok(refs) => {
                for r in refs {
                    catalog.add_packed(&r.segment, &r.pack, r.offset, r.len);
                }
            }
            Err(e) => {
                catalog
                    .warnings
                    .push(format!("index {} unreadable: {e:#}", name.key()));
                // Its name still says which of the org's LSNs it lists.
                catalog.damaged.push(DamagedObject {
                    key: name.key(),
                    reason: format!("{e:#}"),
                    time_ms: name.time_ms,
                    holds: vec![HeldRange::from(&name)],
                    complete: true,
                });
            }
        }
    }
    Ok(catalog)
}

/// What reading a pack's index found.
enum TailRead {
    Index(Vec<(ObjectName, u64, u64)>),
    /// The pack is gone since it was listed.
    Gone,
    /// The store failed (retrying may help).
    Failed(anyhow::Error),
    /// The index fails its checks: what is left of it (names, whether they are all).
    Damaged {
        reason: String,
        salvaged: (Vec<ObjectName>, bool),
    },
}

/// What can still be told of a damaged pack index from `tail` (the bytes read where the index
/// should be, starting at `from` in the pack): the segment names of the entries that are whole,
/// and whether they are provably all (they cover the pack from 0 to where the index starts,
/// each starting where the one before ends).
fn salvage_pack_index(tail: &[u8], from: u64) -> (Vec<ObjectName>, bool) {
    const START: &[u8] = b"[[\"tenants/";
    let Some(at) = tail.windows(START.len()).position(|w| w == START) else {
        return (Vec::new(), false);
    };
    let index_start = from + at as u64;
    let mut names = Vec::new();
    let mut covered = 0u64;
    let mut contiguous = true;
    let mut rest = &tail[at + 1..];
    // Entries are `["key",offset,len]` separated by `,`, the list closed by `]`; keys hold no
    // `]`, so each entry ends at the first one.
    while let Some(end) = rest.iter().position(|b| *b == b']') {
        let Ok((key, offset, len)) = serde_json::from_slice::<(String, u64, u64)>(&rest[..=end])
        else {
            break;
        };
        let Some(name) = ObjectName::parse(&key) else {
            break;
        };
        contiguous &= offset == covered;
        covered = offset.saturating_add(len);
        names.push(name);
        match rest.get(end + 1) {
            Some(b',') => rest = &rest[end + 2..],
            _ => break,
        }
    }
    // Segments lie before the index: entries covering all of that are all of them, even when
    // the index itself is cut short.
    let complete = contiguous && !names.is_empty() && covered == index_start;
    (names, complete)
}

/// Whether any pack of the node is at or after `time_ms`.
async fn pack_at_or_after(
    store: &Arc<dyn ObjectStore>,
    node: &ObjectPath,
    time_ms: i64,
) -> anyhow::Result<bool> {
    let offset = ObjectPath::from(format!("{node}/{time_ms:013}"));
    let mut listing = store.list_with_offset(Some(node), &offset);
    Ok(listing.next().await.transpose()?.is_some())
}

/// The packs written shortly before each node's newest one (or now): their indexes are read
/// (one ranged GET each) for segments of `org` that no index object lists yet.
async fn scan_recent_packs(
    store: &Arc<dyn ObjectStore>,
    org: &OrgId,
    catalog: &mut Catalog,
) -> anyhow::Result<()> {
    let nodes = store
        .list_with_delimiter(Some(&ObjectPath::from("packs")))
        .await
        .context("list the nodes that write packs")?
        .common_prefixes;
    for node in nodes {
        if !pack_at_or_after(store, &node, 0).await? {
            continue;
        }
        // The newest pack's time, to the second, by bisection over LISTs with an offset.
        let (mut lo, mut hi) = (0i64, crate::clock::now_ms() + 86_400_000);
        while hi - lo > 1_000 {
            let mid = lo + (hi - lo) / 2;
            if pack_at_or_after(store, &node, mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let from = ObjectPath::from(format!("{node}/{:013}", (lo - TAIL_WINDOW_MS).max(0)));
        let packs: Vec<object_store::ObjectMeta> = store
            .list_with_offset(Some(&node), &from)
            .try_collect()
            .await?;
        let tails: Vec<(String, i64, TailRead)> =
            futures::stream::iter(packs.into_iter().filter_map(|m| {
                let key = m.location.to_string();
                let (_, time_ms, index_len) = format::parse_pack_key(&key)?;
                Some((key, time_ms, m.size, index_len))
            }))
            .map(|(key, time_ms, size, index_len)| {
                let store = store.clone();
                async move {
                    let from = size.saturating_sub(index_len);
                    let got = match store
                        .get_range(&ObjectPath::from(key.as_str()), from..size)
                        .await
                    {
                        // Listed, then removed (its retention ended): nothing of it is needed.
                        Err(object_store::Error::NotFound { .. }) => TailRead::Gone,
                        Err(e) => TailRead::Failed(anyhow::Error::new(e)),
                        Ok(tail) if index_len > size => TailRead::Damaged {
                            reason: "shorter than its index".to_string(),
                            salvaged: salvage_pack_index(&tail, from),
                        },
                        Ok(tail) => match format::decode_pack_index(&key, &tail) {
                            Ok(entries) => TailRead::Index(entries),
                            Err(e) => TailRead::Damaged {
                                // The key is said once, by whoever names the object.
                                reason: format!("{e:#}")
                                    .trim_start_matches(&format!("{key}: "))
                                    .to_string(),
                                salvaged: salvage_pack_index(&tail, from),
                            },
                        },
                    };
                    (key, time_ms, got)
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        for (key, time_ms, read) in tails {
            match read {
                TailRead::Index(entries) => {
                    for (name, offset, len) in entries.into_iter().filter(|e| &e.0.org == org) {
                        catalog.add_packed(&name.key(), &key, offset, len);
                    }
                }
                TailRead::Gone => {}
                TailRead::Failed(e) => {
                    return Err(e.context(format!("read the index of pack {key}")));
                }
                TailRead::Damaged { reason, salvaged } => {
                    catalog.warnings.push(format!("{key}: {reason}"));
                    let (names, complete) = salvaged;
                    let holds: Vec<HeldRange> = names
                        .iter()
                        .filter(|n| &n.org == org)
                        .map(HeldRange::from)
                        .collect();
                    // A pack whose whole index is told and holds nothing of the org is no loss
                    // to it.
                    if complete && holds.is_empty() {
                        continue;
                    }
                    catalog.damaged.push(DamagedObject {
                        key,
                        reason,
                        time_ms,
                        holds,
                        complete,
                    });
                }
            }
        }
    }
    Ok(())
}

/// What a catalog holds from one generation on (a `probe`'s answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldFrom {
    /// Objects of that generation or newer; a damaged object that may hold some counts too.
    pub objects: u64,
    /// The newest (generation, LSN after) among them, if any.
    pub newest: Option<(u64, u64)>,
    /// Of them, the snapshots found whole (a restore of the generation starts from one).
    pub snapshots: u64,
}

impl Catalog {
    /// What the catalog holds of `generation` or newer. A damaged object whose contents cannot
    /// all be told counts as holding some: whoever asks must not conclude there is nothing.
    pub fn held_from(&self, generation: u64) -> HeldFrom {
        let mut held = HeldFrom {
            snapshots: self
                .objects
                .iter()
                .filter(|(n, _)| n.generation >= generation && n.kind == Kind::Snapshot)
                .count() as u64,
            ..HeldFrom::default()
        };
        let positions = self
            .objects
            .iter()
            .filter(|(n, _)| n.generation >= generation)
            .map(|(n, _)| (n.generation, n.end))
            .chain(
                self.damaged
                    .iter()
                    .flat_map(|d| &d.holds)
                    .filter(|h| h.generation >= generation)
                    .map(|h| (h.generation, h.end)),
            );
        for position in positions {
            held.objects += 1;
            held.newest = held.newest.max(Some(position));
        }
        held.objects += self
            .damaged
            .iter()
            .filter(|d| !d.complete && !d.holds.iter().any(|h| h.generation >= generation))
            .count() as u64;
        held
    }

    /// Objects in the order plans read them: by generation, then position.
    fn sort(&mut self) {
        self.objects.sort_by(|a, b| {
            (a.0.generation, a.0.start, a.0.end, a.0.time_ms).cmp(&(
                b.0.generation,
                b.0.start,
                b.0.end,
                b.0.time_ms,
            ))
        });
    }

    fn add_packed(&mut self, segment: &str, pack: &str, offset: u64, len: u64) {
        if self.packed.contains_key(segment) {
            return;
        }
        if let Some(name) = ObjectName::parse(segment) {
            self.packed
                .insert(segment.to_string(), (pack.to_string(), offset));
            self.objects.push((name, len));
        }
    }
}

/// A catalog as it crosses from a move's source to its target: object keys with their sizes,
/// and where the packed ones are.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct WireCatalog {
    pub objects: Vec<(String, u64)>,
    pub packed: std::collections::HashMap<String, (String, u64)>,
}

impl Catalog {
    /// Only what belongs to `generation` (what a move copies).
    pub fn to_wire(&self, generation: u64) -> WireCatalog {
        let objects: Vec<(String, u64)> = self
            .objects
            .iter()
            .filter(|o| o.0.generation == generation)
            .map(|(n, size)| (n.key(), *size))
            .collect();
        let packed = objects
            .iter()
            .filter_map(|(k, _)| self.packed.get(k).map(|p| (k.clone(), p.clone())))
            .collect();
        WireCatalog { objects, packed }
    }

    /// The catalog a source sent, for `org`: a name that is not an object of `org`, or a packed
    /// place for an object the list does not hold, is refused.
    pub fn from_wire(org: &OrgId, wire: WireCatalog) -> anyhow::Result<Catalog> {
        let mut catalog = Catalog::default();
        for (key, size) in wire.objects {
            let name = ObjectName::parse(&key)
                .filter(|n| &n.org == org)
                .with_context(|| format!("{key:?} is not a backup object of {org}"))?;
            catalog.objects.push((name, size));
        }
        for (key, place) in wire.packed {
            anyhow::ensure!(
                catalog.objects.iter().any(|o| o.0.key() == key),
                "a packed place for {key:?}, which the catalog does not list"
            );
            anyhow::ensure!(
                format::parse_pack_key(&place.0).is_some(),
                "{:?} is not a pack",
                place.0
            );
            catalog.packed.insert(key, place);
        }
        Ok(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(org: &str, start: u64, end: u64) -> ObjectName {
        ObjectName {
            org: OrgId::parse(org).unwrap(),
            generation: 1,
            kind: Kind::Segment,
            start,
            end,
            time_ms: 1_000 + start as i64,
        }
    }

    /// What a restore finds of a pack cut short by `cut` bytes: the tail it reads and salvages.
    fn salvage_cut(pack: &[u8], index_len: usize, cut: usize) -> (Vec<ObjectName>, bool) {
        let size = pack.len() - cut;
        let from = size.saturating_sub(index_len);
        salvage_pack_index(&pack[from..size], from as u64)
    }

    #[test]
    fn what_is_held_from_a_generation_counts_only_it_and_newer_and_never_misses_a_damaged_object() {
        let at = |generation: u64, start: u64, end: u64| ObjectName {
            generation,
            ..segment("fika", start, end)
        };
        let mut catalog = Catalog {
            objects: vec![(at(1, 0, 4), 10), (at(1, 4, 9), 10), (at(3, 0, 2), 10)],
            ..Catalog::default()
        };
        assert_eq!(
            catalog.held_from(3),
            HeldFrom {
                objects: 1,
                newest: Some((3, 2)),
                snapshots: 0,
            }
        );
        catalog.objects.push((
            ObjectName {
                kind: Kind::Snapshot,
                ..at(3, 2, 2)
            },
            10,
        ));
        assert_eq!(catalog.held_from(3).snapshots, 1);
        assert_eq!(catalog.held_from(1).snapshots, 1);
        catalog.objects.pop();
        assert_eq!(catalog.held_from(4), HeldFrom::default());
        // A damaged object whose contents cannot all be told may hold the generation asked.
        catalog.damaged.push(DamagedObject {
            key: "packs/x".to_string(),
            reason: "checksum".to_string(),
            time_ms: 5_000,
            holds: vec![HeldRange::from(&at(1, 9, 12))],
            complete: false,
        });
        assert_eq!(catalog.held_from(4).objects, 1);
        assert_eq!(catalog.held_from(4).newest, None);
        catalog.damaged[0].holds = vec![HeldRange::from(&at(4, 0, 7))];
        assert_eq!(
            catalog.held_from(4),
            HeldFrom {
                objects: 1,
                newest: Some((4, 7)),
                snapshots: 0,
            }
        );
    }

    #[test]
    fn a_damaged_pack_index_still_tells_what_it_held_when_it_can() {
        let segments = vec![
            (segment("fika", 0, 4), vec![7u8; 300]),
            (segment("acme", 0, 9), vec![8u8; 200]),
            (segment("fika", 4, 6), vec![9u8; 100]),
        ];
        let (pack, index_len, _) = format::encode_pack(&segments);
        // Only the checksum and the end of the last entry lost: the first two are told, and as
        // the third is cut, they are not all.
        let (names, complete) = salvage_cut(&pack, index_len, 64);
        assert_eq!(names, vec![segments[0].0.clone(), segments[1].0.clone()]);
        assert!(!complete);
        // The checksum alone lost (the index whole): every entry, provably all.
        let (names, complete) = salvage_cut(&pack, index_len, 32);
        assert_eq!(names.len(), 3);
        assert!(complete);
        // The index gone entirely: nothing can be told.
        assert_eq!(
            salvage_cut(&pack, index_len, index_len + 10),
            (vec![], false)
        );
    }
}
