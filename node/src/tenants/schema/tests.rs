//! The schema engine on real tenant files: created at exactly a version from a template, hosted
//! as it is (an edited file refused), tenants of an earlier release brought to this release's
//! bookkeeping, files that try to leave their transaction refused.

use hemvist_proto::migration::{self, MigrationFile};
use hemvist_proto::{ErrorKind, OrgId};
use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::*;
use crate::tenants::TenantStore;

fn builtin(n: usize) -> Schema {
    let files: Vec<MigrationFile> = migration::builtin().into_iter().take(n).collect();
    Schema::new(n as u32, files).unwrap()
}

fn store() -> (tempfile::TempDir, TenantStore, OrgId) {
    let dir = tempfile::tempdir().unwrap();
    let store = TenantStore::new(dir.path(), 4).unwrap();
    (dir, store, OrgId::parse("acme").unwrap())
}

fn tables(store: &TenantStore, org: &OrgId) -> Vec<String> {
    store
        .read(org, |c| {
            c.prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .unwrap()
}

fn rows(store: &TenantStore, org: &OrgId) -> Vec<(u32, String, Option<String>)> {
    store
        .read(org, |c| {
            c.prepare("SELECT version, name, checksum FROM schema_migrations ORDER BY version")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .unwrap()
}

#[test]
fn a_tenant_is_created_at_exactly_the_version_it_is_told_from_a_template() {
    let (dir, store, org) = store();
    let at3 = builtin(3);
    let made = store.create(&org, &at3, 7).unwrap();
    let beside: Vec<String> = std::fs::read_dir(store.path(&org).parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside, ["acme.db"], "one file, nothing staged or beside it");
    assert_eq!(made.version, 3);
    assert_eq!(made.fingerprint, at3.fingerprint());
    let names = tables(&store, &org);
    assert!(names.contains(&"contacts".to_string()) && names.contains(&"stats".to_string()));
    assert!(
        !names.contains(&"contact_changes".to_string()),
        "version 4 was not run"
    );
    let ran = rows(&store, &org);
    assert_eq!(ran.len(), 3);
    for ((v, name, checksum), f) in ran.iter().zip(at3.files()) {
        assert_eq!(
            (*v, name, checksum.as_deref()),
            (f.version, &f.name, Some(f.checksum.as_str()))
        );
    }
    let mode: String = store
        .read(&org, |c| {
            c.pragma_query_value(None, "journal_mode", |r| r.get(0))
        })
        .unwrap();
    assert_eq!(mode, "wal", "a tenant runs in WAL, as before");

    // One self-contained template per schema, reused.
    let templates: Vec<String> = std::fs::read_dir(dir.path().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(templates, [format!("v0003-{}.db", at3.fingerprint())]);
    let other = OrgId::parse("bolt").unwrap();
    assert_eq!(store.create(&other, &at3, 8).unwrap(), made);
    assert_eq!(
        std::fs::read_dir(dir.path().join("templates"))
            .unwrap()
            .count(),
        1
    );
    store
        .create(&OrgId::parse("cirkus").unwrap(), &builtin(5), 9)
        .unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path().join("templates"))
            .unwrap()
            .count(),
        2
    );

    // A tenant that has a file is never created over.
    let again = store.create(&org, &at3, 10).unwrap_err();
    assert_eq!(again.kind, ErrorKind::Conflict, "{again}");
}

#[test]
fn a_schema_whose_file_fails_creates_no_tenant_and_no_template() {
    let (dir, store, org) = store();
    let mut files: Vec<MigrationFile> = migration::builtin().into_iter().take(1).collect();
    files
        .push(MigrationFile::parse("0002_broken.sql", b"CREATE TABLE t (a);\nSELEC 1;\n").unwrap());
    let schema = Schema::new(2, files).unwrap();
    let e = store.create(&org, &schema, 0).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(
        e.message.contains("0002_broken.sql") && e.message.contains("SELEC 1;"),
        "{e}"
    );
    assert!(!store.exists(&org));
    let left: Vec<_> = std::fs::read_dir(dir.path().join("templates"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_tenant_that_ran_an_edited_file_is_hosted_as_it_is_and_its_migration_refused() {
    let (_dir, store, org) = store();
    store.create(&org, &builtin(3), 0).unwrap();
    let mut files: Vec<MigrationFile> = migration::builtin().into_iter().take(3).collect();
    let edited = format!("{}\n-- edited after it shipped\n", files[1].sql);
    let was = files[1].checksum.clone();
    files[1] = MigrationFile::parse("0002_users.sql", edited.as_bytes()).unwrap();
    let schema = Schema::new(3, files.clone()).unwrap();
    // Served as it is, and its fingerprint says it is not what the control plane holds.
    let hosted = store.adopt(&org, &schema).unwrap();
    assert_eq!(hosted.version, 3);
    assert_eq!(hosted.fingerprint, builtin(3).fingerprint());
    assert_ne!(hosted.fingerprint, schema.fingerprint());
    let mut more = files.clone();
    more.push(migration::builtin()[3].clone());
    let e = store
        .with_writer(&org, |conn| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).unwrap();
            Ok(migrate(&tx, &Schema::new(4, more.clone()).unwrap(), 0).unwrap_err())
        })
        .unwrap()
        .error;
    assert_eq!(e.kind, ErrorKind::Conflict);
    for part in [
        "version 2",
        was.as_str(),
        files[1].checksum.as_str(),
        "an edited migration file",
    ] {
        assert!(e.message.contains(part), "{part}: {e}");
    }
}

#[test]
fn a_host_reports_the_tenants_own_version_whatever_it_is() {
    let (_dir, store, org) = store();
    store.create(&org, &builtin(3), 0).unwrap();
    // Lower than the tenant's: the files both know are checked, nothing changes.
    assert_eq!(
        store.adopt(&org, &builtin(2)).unwrap(),
        TenantSchema {
            version: 3,
            fingerprint: builtin(3).fingerprint()
        }
    );
    // Higher: never migrated by a host.
    assert_eq!(store.adopt(&org, &builtin(5)).unwrap().version, 3);
    assert!(!tables(&store, &org).contains(&"contact_changes".to_string()));
}

/// A tenant as releases before checksums made it: the table without the column.
fn old_tenant(store: &TenantStore, org: &OrgId, n: usize) {
    let path = store.path(org);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let conn = Connection::open(&path).unwrap();
    super::super::functions(&conn).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE schema_migrations (
           version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)",
    )
    .unwrap();
    for f in migration::builtin().into_iter().take(n) {
        conn.execute_batch(&f.sql).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?1, ?2, 0)",
            rusqlite::params![f.version, f.name],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", f.version).unwrap();
    }
}

#[test]
fn a_tenant_from_before_checksums_is_upgraded_by_a_host_taking_the_files_on_first_sight() {
    let (_dir, store, org) = store();
    old_tenant(&store, &org, 5);
    assert_eq!(
        store.adopt(&org, &builtin(5)).unwrap(),
        TenantSchema {
            version: 5,
            fingerprint: builtin(5).fingerprint(),
        }
    );
    let recorded: Vec<Option<String>> = rows(&store, &org).into_iter().map(|r| r.2).collect();
    let sent: Vec<Option<String>> = builtin(5)
        .files()
        .iter()
        .map(|f| Some(f.checksum.clone()))
        .collect();
    assert_eq!(recorded, sent);

    // A file of another name under a version it ran is another file, checksum or not.
    let (_dir2, store2, org2) = self::store();
    old_tenant(&store2, &org2, 2);
    let mut files: Vec<MigrationFile> = migration::builtin().into_iter().take(2).collect();
    files[1] = MigrationFile::parse("0002_people.sql", files[1].sql.as_bytes()).unwrap();
    let e = store2
        .with_writer(&org2, |conn| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).unwrap();
            Ok(migrate(&tx, &Schema::new(2, files.clone()).unwrap(), 0).unwrap_err())
        })
        .unwrap()
        .error;
    assert!(
        e.message.contains("0002_users.sql") && e.message.contains("0002_people.sql"),
        "{e}"
    );
    let columns: i64 = store2
        .read(&org2, |c| {
            c.query_row(
                "SELECT COUNT(*) FROM pragma_table_info('schema_migrations')",
                [],
                |r| r.get(0),
            )
        })
        .unwrap();
    assert_eq!(columns, 3, "nothing was recorded: the table is as it was");
}

#[test]
fn a_tenant_from_before_checksums_is_upgraded_inside_the_migrations_transaction() {
    let (_dir, store, org) = store();
    old_tenant(&store, &org, 3);
    let run = |dry_run: bool| {
        store
            .with_writer(&org, |conn| {
                let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).unwrap();
                let m = migrate(&tx, &builtin(5), 42).map_err(|f| f.error)?;
                if dry_run { tx.rollback() } else { tx.commit() }.unwrap();
                Ok(m)
            })
            .unwrap()
    };
    let tried = run(true);
    assert_eq!((tried.from.version, tried.to.version), (3, 5));
    assert_eq!(tried.from.fingerprint, builtin(3).fingerprint());
    let has_column = |store: &TenantStore| {
        store
            .read(&org, |c| {
                c.prepare(
                    "SELECT 1 FROM pragma_table_info('schema_migrations') WHERE name = 'checksum'",
                )?
                .exists([])
            })
            .unwrap()
    };
    assert!(!has_column(&store), "rolled back with the rest");
    let done = run(false);
    assert_eq!(
        done.to,
        TenantSchema {
            version: 5,
            fingerprint: builtin(5).fingerprint()
        }
    );
    assert!(has_column(&store));
    assert!(rows(&store, &org).iter().all(|r| r.2.is_some()));
}

#[test]
fn a_list_of_files_is_a_schema_only_if_it_is_whole_and_in_order() {
    let files = migration::builtin();
    assert_eq!(Schema::new(5, files.clone()).unwrap().version(), 5);
    let e = Schema::new(4, files.clone()).unwrap_err();
    assert!(e.message.contains("every file up to"), "{e}");
    let gap: Vec<_> = files.iter().filter(|f| f.version != 2).cloned().collect();
    assert!(Schema::new(4, gap)
        .unwrap_err()
        .message
        .contains("without a gap"));
    let mut bad = files.clone();
    bad[0].checksum = "xyz".into();
    assert!(Schema::new(5, bad)
        .unwrap_err()
        .message
        .contains("64 hex digits"));
    assert_eq!(Schema::new(0, Vec::new()).unwrap().version(), 0);
}

#[test]
fn a_file_may_not_end_or_leave_its_transaction() {
    let (_dir, store, org) = store();
    store.create(&org, &builtin(1), 0).unwrap();
    for (sql, said) in [
        (
            "CREATE TABLE a (x);\nCOMMIT;\nCREATE TABLE b (x);\n",
            "commit or roll back",
        ),
        ("ATTACH ':memory:' AS other;\n", "attach or detach"),
    ] {
        let mut files: Vec<MigrationFile> = migration::builtin().into_iter().take(1).collect();
        files.push(MigrationFile::parse("0002_sneaky.sql", sql.as_bytes()).unwrap());
        let schema = Schema::new(2, files).unwrap();
        let failed = store
            .with_writer(&org, |conn| {
                let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).unwrap();
                Ok(migrate(&tx, &schema, 0).unwrap_err())
            })
            .unwrap();
        let file = failed.file.unwrap();
        assert_eq!(file.version, 2);
        assert!(file.error.contains(said), "{}", file.error);
        assert_eq!(failed.error.kind, ErrorKind::InvalidArgument);
        assert!(
            !tables(&store, &org).contains(&"a".to_string()),
            "nothing was committed"
        );
    }
}

#[test]
fn a_check_a_later_file_of_the_same_migration_fixes_holds_and_one_it_does_not_fails() {
    let (_dir, store, org) = store();
    store.create(&org, &builtin(5), 0).unwrap();
    store
        .write(&org, |tx| {
            tx.execute(
                "INSERT INTO contacts (name, city, created_ms, updated_ms) VALUES ('Nobody', 'Nowhere', 1, 1)",
                [],
            )?;
            Ok(())
        })
        .unwrap();
    let strict = MigrationFile::parse(
        "0006_regions.sql",
        b"ALTER TABLE contacts ADD COLUMN region TEXT;\n\
          -- check: SELECT count(*) = 0 FROM contacts WHERE region IS NULL\n",
    )
    .unwrap();
    let fix = MigrationFile::parse(
        "0007_fill_regions.sql",
        b"UPDATE contacts SET region = 'unknown' WHERE region IS NULL;\n",
    )
    .unwrap();
    let with = |extra: Vec<MigrationFile>| {
        let mut files = migration::builtin();
        files.extend(extra);
        Schema::new(files.len() as u32, files).unwrap()
    };
    let run = |schema: &Schema| {
        store
            .with_writer(&org, |conn| {
                let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).unwrap();
                let r = migrate(&tx, schema, 7);
                match &r {
                    Ok(_) => tx.commit().unwrap(),
                    Err(_) => tx.rollback().unwrap(),
                }
                Ok(r)
            })
            .unwrap()
    };
    // Alone, 0006's check fails on this tenant's data.
    let failed = run(&with(vec![strict.clone()])).unwrap_err();
    assert_eq!(failed.file.unwrap().version, 6);
    // With 0007 after it in the same migration, it holds once 0007 has run.
    let done = run(&with(vec![strict, fix])).map_err(|f| f.error).unwrap();
    assert_eq!((done.from.version, done.to.version), (5, 7));
}
