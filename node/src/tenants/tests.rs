//! The tenant store on real files: a tenant's file replaced by another under its writer.

use std::path::Path;

use hemvist_proto::{ErrorKind, OrgId};

use super::schema::Schema;
use super::*;

fn store() -> (tempfile::TempDir, TenantStore, OrgId) {
    let dir = tempfile::tempdir().unwrap();
    let store = TenantStore::new(dir.path(), 4).unwrap();
    let org = OrgId::parse("acme").unwrap();
    store.create(&org, &Schema::builtin(), 0).unwrap();
    (dir, store, org)
}

fn insert(store: &TenantStore, org: &OrgId, n: usize) {
    for i in 0..n {
        store
            .write(org, |tx| {
                tx.execute(
                    "INSERT INTO contacts (name, created_ms, updated_ms) VALUES (?1, 0, 0)",
                    [format!("c{i}")],
                )
            })
            .unwrap();
    }
}

fn count(store: &TenantStore, org: &OrgId) -> i64 {
    store
        .read(org, |c| {
            c.query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
        })
        .unwrap()
}

fn count_in(file: &Path) -> i64 {
    rusqlite::Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
        .unwrap()
}

/// A whole copy of the tenant as it is now, nothing beside it, at `to`.
fn copy_of(store: &TenantStore, org: &OrgId, to: &Path) {
    store
        .with_writer(org, |c| {
            c.execute("VACUUM INTO ?1", [to.to_str().unwrap()])
                .map(|_| ())
                .map_err(|e| db_error(org, e))
        })
        .unwrap();
}

fn trash(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("trash"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_replaced_tenant_is_the_staged_file_and_the_old_one_is_whole_in_the_trash() {
    let (dir, store, org) = store();
    let staged = store.path(&org).with_extension("staged");
    copy_of(&store, &org, &staged);
    insert(&store, &org, 3);
    let wal = with_suffix(&store.path(&org), "-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the rows are in the WAL"
    );
    // A handle opened before, as a request in flight holds one, with a reader open.
    let old = store.tenant(&org).unwrap();
    let read_old = |t: &Tenant| -> i64 {
        t.read(|c| c.query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0)))
            .unwrap()
    };
    assert_eq!(read_old(&old), 3);

    let (answer, trashed) = store
        .replace(&org, &staged, "g1-rolled-back-5", || Ok(42))
        .unwrap();
    assert_eq!(answer, 42);
    let trashed = trashed.unwrap();
    assert_eq!(count(&store, &org), 0, "the tenant is the staged copy");
    assert!(!staged.exists());
    assert_eq!(
        count_in(&trashed),
        3,
        "the old file is whole, its WAL checkpointed in"
    );
    assert_eq!(
        trash(dir.path()),
        [
            "acme.g1-rolled-back-5.db",
            "acme.g1-rolled-back-5.db-shm",
            "acme.g1-rolled-back-5.db-wal"
        ]
    );

    // The connections open before still read (and could only write) the old file...
    assert_eq!(read_old(&old), 3);
    old.writer
        .lock()
        .unwrap()
        .execute(
            "INSERT INTO contacts (name, created_ms, updated_ms) VALUES ('late', 0, 0)",
            [],
        )
        .unwrap();
    drop(old);
    // ...which the tenant never sees; it takes writes of its own, in a WAL of its own.
    assert_eq!(count(&store, &org), 0);
    insert(&store, &org, 2);
    assert_eq!(count(&store, &org), 2);
    assert_eq!(count_in(&trashed), 4);

    // The trash empties it in time, as any dropped tenant.
    let purged = store.purge_trash(Duration::ZERO, 10);
    assert_eq!(purged.len(), 1);
    assert_eq!(
        (purged[0].label.as_str(), purged[0].dropped_ms),
        ("g1-rolled-back-5", 5)
    );
}

#[test]
fn a_replace_that_fails_before_its_rename_leaves_the_tenant_as_it_was() {
    let (dir, store, org) = store();
    insert(&store, &org, 3);
    let missing = store.path(&org).with_extension("nothing-here");
    let mut committed = false;
    let e = store
        .replace(&org, &missing, "g1-rolled-back-5", || {
            committed = true;
            Ok(())
        })
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("nothing was replaced"), "{e}");
    assert!(!committed);
    assert!(trash(dir.path()).is_empty(), "{:?}", trash(dir.path()));
    assert!(
        with_suffix(&store.path(&org), "-wal").exists(),
        "its WAL is back"
    );
    assert_eq!(count(&store, &org), 3);
    insert(&store, &org, 1);
    assert_eq!(count(&store, &org), 4);
}

#[test]
fn a_tenant_with_no_file_gets_the_staged_one_and_no_stale_side_file() {
    let (dir, store, org) = store();
    let staged = store.path(&org).with_extension("staged");
    copy_of(&store, &org, &staged);
    store.retire(&org, "g1-0").unwrap();
    // A WAL left without its database would be applied to the new one.
    let wal = with_suffix(&store.path(&org), "-wal");
    std::fs::write(&wal, b"stale").unwrap();
    let ((), trashed) = store
        .replace(&org, &staged, "g1-rolled-back-7", || Ok(()))
        .unwrap();
    assert_eq!(trashed, None);
    assert!(!wal.exists());
    assert!(trash(dir.path()).contains(&"acme.g1-rolled-back-7.db-wal".to_string()));
    assert_eq!(count(&store, &org), 0);
    insert(&store, &org, 1);
    assert_eq!(count(&store, &org), 1);
}
