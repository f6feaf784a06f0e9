//! Purging an org: a pack shared with another tenant keeps every byte of the other tenant and
//! none of the org's, a second purge changes nothing, and a purge stopped after releasing the
//! org's segments still scrubs them when asked again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hemvist_proto::{DataKey, NodeId, OrgId};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;

use super::{scrub, Replicator, Shipped};
use crate::backup::format::{self, Kind, ObjectName, PackRef};
use crate::backup::restore;
use crate::backup::store::BackupConfig;
use crate::backup::wal::WalPos;
use crate::clock::now_ms;
use crate::disk::Disk;
use crate::state::NodeState;
use crate::tenants::TenantStore;

const PAGE: u32 = 4096;

/// A node's replicator over `dir` (its data folder and, beside it, a `file://` store); opened
/// again over the same `dir`, it is that node after a restart.
fn node(dir: &Path) -> Replicator {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data folder");
    Replicator::new(
        &data,
        BackupConfig::local(&dir.join("store")),
        NodeId::parse("n1").expect("node id"),
        Arc::new(TenantStore::new(&data, 8).expect("tenants")),
        Arc::new(NodeState::open(&data.join("node.db")).expect("node.db")),
        Arc::new(Disk::new(&data, 0)),
    )
    .expect("replicator")
}

fn org(name: &str) -> OrgId {
    OrgId::parse(name).expect("org")
}

fn name(org: &OrgId, kind: Kind, start: u64, end: u64, time_ms: i64) -> ObjectName {
    ObjectName {
        org: org.clone(),
        generation: 1,
        kind,
        start,
        end,
        time_ms,
    }
}

/// The bytes of a database holding `rows` rows.
fn database(dir: &Path, rows: i64) -> Vec<u8> {
    let path = dir.join(format!("rows-{rows}.sqlite"));
    let db = rusqlite::Connection::open(&path).expect("open");
    db.execute_batch("PRAGMA page_size = 4096; CREATE TABLE t (x INTEGER);")
        .expect("schema");
    for x in 0..rows {
        db.execute("INSERT INTO t VALUES (?1)", [x])
            .expect("insert");
    }
    drop(db);
    std::fs::read(&path).expect("read")
}

fn pages(db: &[u8]) -> BTreeMap<u32, Vec<u8>> {
    db.chunks(PAGE as usize)
        .enumerate()
        .map(|(i, p)| (i as u32 + 1, p.to_vec()))
        .collect()
}

/// A record as a pass leaves it: its packed segments not yet listed in an index.
fn shipped(pending: Vec<PackRef>) -> Shipped {
    Shipped {
        generation: 1,
        lsn: 6,
        wal: WalPos::default(),
        page_size: PAGE,
        snapshot_lsn: Some(5),
        since_snapshot: 0,
        shipped_ms: now_ms(),
        pending,
        snapshot_ms: 0,
    }
}

/// One pack this node shipped, and where each org's segment in it is.
struct Shipment {
    pack: String,
    acme: PackRef,
    fika: Option<PackRef>,
    /// Fika's segment as it was shipped, and its org's key.
    fika_bytes: Vec<u8>,
    fika_key: DataKey,
}

/// Ships a segment of acme (sealed with a key that lives on) in one pack, with, if `shared`, a
/// segment of fika, whose snapshot is its own object (one row; the segment makes it two).
async fn ship(rep: &Replicator, dir: &Path, shared: bool) -> Shipment {
    let (acme, fika) = (org("acme"), org("fika"));
    let fika_key = DataKey([2u8; 32]);
    let t = now_ms() - 2_000;
    let acme_seg = name(&acme, Kind::Segment, 1, 2, t);
    let acme_pages: BTreeMap<u32, Vec<u8>> = [(1, vec![0xab; PAGE as usize])].into();
    let acme_bytes =
        format::encode_segment(&acme_seg, PAGE, 1, &acme_pages, Some(&DataKey([1u8; 32])));
    let mut segments = vec![(acme_seg, acme_bytes)];
    let snap = name(&fika, Kind::Snapshot, 5, 5, t);
    let one_row = database(dir, 1);
    let snap_bytes = format::encode_snapshot(&snap, PAGE, &one_row, Some(&fika_key));
    rep.up().put(&snap, snap_bytes).await.expect("snapshot");
    let fika_seg = name(&fika, Kind::Segment, 5, 6, t + 1_000);
    let two_rows = database(dir, 2);
    let db_pages = (two_rows.len() / PAGE as usize) as u32;
    let fika_bytes = format::encode_segment(
        &fika_seg,
        PAGE,
        db_pages,
        &pages(&two_rows),
        Some(&fika_key),
    );
    if shared {
        segments.push((fika_seg, fika_bytes.clone()));
    }
    let refs = rep
        .packs
        .store(rep.up(), &rep.db, &rep.node_id, segments)
        .await
        .expect("pack");
    rep.db
        .persist(&acme, Some(&shipped(vec![refs[0].clone()])))
        .expect("acme");
    let fika_ref = refs.get(1).cloned();
    if let Some(r) = &fika_ref {
        rep.db
            .persist(&fika, Some(&shipped(vec![r.clone()])))
            .expect("fika");
    }
    Shipment {
        pack: refs[0].pack.clone(),
        acme: refs[0].clone(),
        fika: fika_ref,
        fika_bytes,
        fika_key,
    }
}

async fn read(rep: &Replicator, key: &str) -> Option<Vec<u8>> {
    match rep.store.get(&ObjectPath::from(key)).await {
        Err(object_store::Error::NotFound { .. }) => None,
        got => Some(got.expect("get").bytes().await.expect("bytes").to_vec()),
    }
}

fn place<'a>(bytes: &'a [u8], r: &PackRef) -> &'a [u8] {
    &bytes[r.offset as usize..(r.offset + r.len) as usize]
}

/// The pack holds nothing of acme and all of fika, at the same places, its index whole.
fn assert_scrubbed(pack: &[u8], s: &Shipment, len: usize) {
    let fika = s.fika.as_ref().expect("shared");
    assert_eq!(pack.len(), len, "the pack keeps its length");
    assert!(
        place(pack, &s.acme).iter().all(|b| *b == 0),
        "acme's bytes are zeros"
    );
    assert_eq!(
        place(pack, fika),
        s.fika_bytes,
        "fika's bytes are as shipped"
    );
    let (_, _, index_len) = format::parse_pack_key(&s.pack).expect("pack key");
    let tail = &pack[pack.len() - index_len as usize..];
    let entries = format::raw_index(&s.pack, tail).expect("the checksum verifies");
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[0],
        (format::SCRUBBED.into(), s.acme.offset, s.acme.len)
    );
    assert_eq!(ObjectName::parse(&entries[0].0), None);
    assert_eq!(entries[1], (fika.segment.clone(), fika.offset, fika.len));
    let named = format::decode_pack_index(&s.pack, tail).expect("index");
    assert_eq!(named.len(), 1);
    assert_eq!(named[0].0.key(), fika.segment);
}

/// Fika still restores from the scrubbed pack (its segment found by the scan of recent packs,
/// which reads the rewritten index), to its two rows.
async fn assert_fika_restores(rep: &Replicator, dir: &Path, s: &Shipment) {
    let catalog = restore::catalog(&rep.store, &org("fika"))
        .await
        .expect("catalog");
    let plan = catalog.plan(now_ms(), &[]).expect("a plan");
    assert_eq!(plan.segments.len(), 1, "the packed segment is in the plan");
    let out = dir.join("fika-restored.sqlite");
    restore::restore(&rep.store, &catalog, &plan, &out, Some(&s.fika_key))
        .await
        .expect("restore");
    let db = rusqlite::Connection::open(&out).expect("open");
    let rows: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn a_purge_scrubs_the_org_out_of_a_pack_another_tenant_still_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = node(dir.path());
    let s = ship(&rep, dir.path(), true).await;
    let len = read(&rep, &s.pack).await.expect("pack").len();

    assert_eq!(
        rep.purge(&org("acme")).await.expect("purge"),
        1,
        "its index"
    );
    let pack = read(&rep, &s.pack)
        .await
        .expect("fika still needs the pack");
    assert_scrubbed(&pack, &s, len);
    assert!(restore::listed(&rep.store, &org("acme"))
        .await
        .expect("list")
        .is_empty());
    let acme = restore::catalog(&rep.store, &org("acme"))
        .await
        .expect("catalog");
    assert!(acme.objects.is_empty(), "{:?}", acme.objects);
    assert_fika_restores(&rep, dir.path(), &s).await;

    // Asked again (the control plane re-sends the command): nothing more to do.
    let puts = rep.metrics.puts.load(Ordering::Relaxed);
    assert_eq!(rep.purge(&org("acme")).await.expect("again"), 0);
    assert_eq!(
        rep.metrics.puts.load(Ordering::Relaxed),
        puts,
        "nothing written"
    );
    assert_eq!(read(&rep, &s.pack).await.expect("pack"), pack);
    assert!(rep.db.scrub_due(&org("acme")).expect("rows").is_empty());
}

#[tokio::test]
async fn a_purge_stopped_after_releasing_still_scrubs_when_asked_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = node(dir.path());
    let s = ship(&rep, dir.path(), true).await;
    let len = read(&rep, &s.pack).await.expect("pack").len();

    // The first purge records what to scrub and releases it all, then the node stops.
    scrub::record(rep.up(), &rep.db, &org("acme"))
        .await
        .expect("record");
    rep.release_all(&org("acme")).await.expect("release");
    drop(rep);
    let pack = read(&node(dir.path()), &s.pack).await.expect("pack");
    assert!(
        place(&pack, &s.acme).iter().any(|b| *b != 0),
        "not scrubbed yet"
    );

    // Nothing in the store says any more where acme's segment is; backup.db does.
    let rep = node(dir.path());
    assert!(restore::listed(&rep.store, &org("acme"))
        .await
        .expect("list")
        .is_empty());
    assert_eq!(rep.purge(&org("acme")).await.expect("purge"), 0);
    assert_scrubbed(&read(&rep, &s.pack).await.expect("pack"), &s, len);
    assert!(rep.db.scrub_due(&org("acme")).expect("rows").is_empty());
    assert_fika_restores(&rep, dir.path(), &s).await;
}

#[tokio::test]
async fn a_pack_deleted_with_its_last_segment_is_not_written_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rep = node(dir.path());
    let s = ship(&rep, dir.path(), false).await;

    let puts = rep.metrics.puts.load(Ordering::Relaxed);
    assert_eq!(rep.purge(&org("acme")).await.expect("purge"), 1);
    assert_eq!(read(&rep, &s.pack).await, None, "gone with acme's segment");
    // Only acme's index was written: the scrub found the pack gone and wrote nothing.
    assert_eq!(rep.metrics.puts.load(Ordering::Relaxed), puts + 1);
    assert!(rep.db.scrub_due(&org("acme")).expect("rows").is_empty());
}
