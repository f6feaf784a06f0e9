//! Making a branch's copy its own: its mask applied (see [`hemvist_proto::mask`]), the
//! parent's sessions and idempotency keys (and with `users = none`, its users) removed (zeroed
//! where they lay: `secure_delete`), and, when anything was masked, its full-text indexes
//! rebuilt from the masked rows and the result written to a fresh file by `VACUUM INTO`, which
//! holds only live rows: no free page, no old index segment, no journal keeps an unmasked
//! value. With nothing masked the copy itself becomes the branch's file.
//!
//! Keeps true: the rules are keyed by the branch's own key, so they are deterministic per
//! branch (the same value masks to the same result everywhere in one branch) and differ between
//! branches; a mask naming a table or column the copy does not have is refused before anything
//! changes; the unmasked copy is only ever the `staged` file, which the caller removes.

use std::path::Path;

use hemvist_proto::mask::{ColumnShape, Mask, Rule};
use hemvist_proto::HemvistError;
use hmac::{Hmac, Mac};
use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;
use sha2::Sha256;

/// What was done, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub struct Masked {
    pub columns: usize,
    pub rows_changed: usize,
}

const FIRST: [&str; 24] = [
    "Alex", "Britt", "Carmen", "Dana", "Elis", "Frej", "Greta", "Hugo", "Ines", "Jon", "Kim",
    "Lina", "Mats", "Nora", "Olle", "Pia", "Quinn", "Rut", "Sam", "Tove", "Ulf", "Vera", "Wim",
    "Yara",
];
const LAST: [&str; 24] = [
    "Alm", "Berg", "Dahl", "Ek", "Falk", "Gran", "Holm", "Ivarsson", "Jung", "Kvist", "Lind",
    "Mark", "Nord", "Ost", "Palm", "Ros", "Sand", "Strand", "Torn", "Ulv", "Vik", "Wall", "Ygg",
    "Zorn",
];

/// The branch's masking key: derived from its data key, never stored, never sent.
fn masking_key(branch_key: &[u8; 32]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(branch_key).expect("any key length");
    mac.update(b"hemvist branch mask v1");
    mac.finalize().into_bytes().into()
}

fn keyed(key: &[u8; 32], what: &str, value: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(what.as_bytes());
    mac.update(&[0]);
    mac.update(value);
    mac.finalize().into_bytes().into()
}

fn fake_name(key: &[u8; 32], value: &str) -> String {
    let h = keyed(key, "name", value.as_bytes());
    format!(
        "{} {} {:03}",
        FIRST[h[0] as usize % FIRST.len()],
        LAST[h[1] as usize % LAST.len()],
        u16::from_le_bytes([h[2], h[3]]) % 1000
    )
}

fn fake_email(key: &[u8; 32], value: &str) -> String {
    let h = keyed(key, "email", value.to_lowercase().as_bytes());
    let local = format!("user-{}", hex::encode(&h[..5]));
    match value.rsplit_once('@') {
        Some((_, domain)) if !domain.is_empty() => format!("{local}@{domain}"),
        _ => format!("{local}@example.invalid"),
    }
}

fn hashed(key: &[u8; 32], value: &[u8]) -> String {
    hex::encode(&keyed(key, "hash", value)[..8])
}

fn failed(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("masking the branch: {e}"))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The columns of `table` in `conn`, `None` if there is no such table.
pub fn columns(conn: &Connection, table: &str) -> Option<Vec<ColumnShape>> {
    let mut stmt = conn
        .prepare("SELECT name, \"notnull\", pk, type FROM pragma_table_info(?1)")
        .ok()?;
    let cols: Vec<ColumnShape> = stmt
        .query_map([table], |r| {
            Ok(ColumnShape {
                name: r.get(0)?,
                not_null: r.get::<_, i64>(1)? != 0,
                primary_key: r.get::<_, i64>(2)? != 0,
            })
        })
        .ok()?
        .filter_map(Result::ok)
        .collect();
    (!cols.is_empty()).then_some(cols)
}

/// The declared type of a column, upper case ("" if none).
fn declared_type(conn: &Connection, table: &str, column: &str) -> String {
    conn.query_row(
        "SELECT upper(type) FROM pragma_table_info(?1) WHERE name = ?2 COLLATE NOCASE",
        [table, column],
        |r| r.get(0),
    )
    .unwrap_or_default()
}

/// Masks `staged` in place (one transaction) and writes the result to `out` (which must not
/// exist) by `VACUUM INTO`; with nothing masked, `staged` is renamed to `out`. `users`: `copy`
/// keeps the parent's users, `none` removes them; their sessions go either way.
pub fn make_own(
    staged: &Path,
    out: &Path,
    mask: &Mask,
    users: &str,
    branch_key: &[u8; 32],
) -> Result<Masked, HemvistError> {
    let conn = Connection::open(staged).map_err(failed)?;
    mask.check(|t| columns(&conn, t))?;
    let key = masking_key(branch_key);
    register(&conn, key).map_err(failed)?;
    super::functions(&conn).map_err(failed)?;
    // Whatever is deleted or overwritten is zeroed in the file, not only unlinked.
    conn.pragma_update(None, "secure_delete", "ON")
        .map_err(failed)?;
    let mut done = Masked::default();
    let tx = conn.unchecked_transaction().map_err(failed)?;
    // The masked tables' triggers are set aside while their rows are rewritten (and put back,
    // as they were, in the same transaction): they keep indexes in step row by row, and every
    // index is built again from the masked rows below anyway.
    let mut triggers: Vec<String> = Vec::new();
    for table in mask.tables.keys() {
        let mut stmt = tx
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1")
            .map_err(failed)?;
        let found: Vec<(String, String)> = stmt
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(failed)?
            .collect::<Result<_, _>>()
            .map_err(failed)?;
        drop(stmt);
        for (name, sql) in found {
            tx.execute_batch(&format!("DROP TRIGGER {}", quote(&name)))
                .map_err(failed)?;
            triggers.push(sql);
        }
    }
    for (table, rules) in &mask.tables {
        for (column, rule) in rules {
            let (t, c) = (quote(table), quote(column));
            let sql = match rule {
                Rule::Keep => continue,
                Rule::FakeName => {
                    format!("UPDATE {t} SET {c} = hv_mask_name({c}) WHERE {c} IS NOT NULL")
                }
                Rule::FakeEmail => {
                    format!("UPDATE {t} SET {c} = hv_mask_email({c}) WHERE {c} IS NOT NULL")
                }
                Rule::Hash => {
                    format!("UPDATE {t} SET {c} = hv_mask_hash({c}) WHERE {c} IS NOT NULL")
                }
                Rule::Null => {
                    let not_null = columns(&tx, table)
                        .and_then(|cs| cs.into_iter().find(|x| x.name.eq_ignore_ascii_case(column)))
                        .is_some_and(|x| x.not_null);
                    let empty = if !not_null {
                        "NULL"
                    } else if declared_type(&tx, table, column).contains("INT")
                        || declared_type(&tx, table, column).contains("REAL")
                    {
                        "0"
                    } else {
                        "''"
                    };
                    format!("UPDATE {t} SET {c} = {empty}")
                }
                Rule::Shuffle => shuffle_sql(&t, &c),
            };
            done.rows_changed += tx
                .execute_batch(&sql)
                .map(|_| tx.changes() as usize)
                .map_err(|e| {
                    HemvistError::invalid(format!(
                        "mask: {table}.{column} = {}: {e}",
                        rule.as_str()
                    ))
                })?;
            done.columns += 1;
        }
    }
    for sql in &triggers {
        tx.execute_batch(sql).map_err(failed)?;
    }
    tx.execute_batch("DELETE FROM sessions;").map_err(failed)?;
    if users == "none" {
        tx.execute_batch("DELETE FROM users;").map_err(failed)?;
    }
    let has_idempotency: bool = tx
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'idempotency_keys'",
            [],
            |r| r.get(0),
        )
        .map_err(failed)?;
    if has_idempotency {
        tx.execute_batch("DELETE FROM idempotency_keys;")
            .map_err(failed)?;
    }
    if mask.is_empty() {
        // Nothing masked: what was deleted (sessions, keys) is zeroed where it lay
        // (`secure_delete`), so the copy itself becomes the branch's file.
        tx.commit().map_err(failed)?;
        conn.close().map_err(|(_, e)| failed(e))?;
        std::fs::rename(staged, out).map_err(failed)?;
        return Ok(done);
    }
    // Every full-text index is built again from the rows as they are now: the old segments,
    // which hold the unmasked terms, are gone.
    let fts: Vec<String> = {
        let mut stmt = tx
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND sql LIKE 'CREATE VIRTUAL TABLE%USING fts5%' ORDER BY name",
            )
            .map_err(failed)?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .map_err(failed)?
            .collect::<Result<Vec<String>, _>>()
            .map_err(failed)?;
        names
    };
    for f in fts {
        let q = quote(&f);
        tx.execute_batch(&format!("INSERT INTO {q}({q}) VALUES('rebuild');"))
            .map_err(failed)?;
    }
    tx.commit().map_err(failed)?;
    if out.exists() {
        std::fs::remove_file(out).map_err(failed)?;
    }
    conn.execute("VACUUM INTO ?1", [out.to_string_lossy()])
        .map_err(failed)?;
    drop(conn);
    Ok(done)
}

/// Deals a column's values out to other rows: rows in rowid order get the values in the order
/// of a keyed hash of their rowids (a permutation fixed by the branch's key).
fn shuffle_sql(t: &str, c: &str) -> String {
    format!(
        "CREATE TEMP TABLE hv_shuffle AS
           SELECT a.r AS r, b.v AS v FROM
             (SELECT rowid AS r, row_number() OVER (ORDER BY rowid) AS i FROM {t}) a
             JOIN (SELECT {c} AS v, row_number() OVER (ORDER BY hv_mask_rank(rowid)) AS i
                   FROM {t}) b USING (i);
         UPDATE {t} SET {c} = (SELECT v FROM temp.hv_shuffle WHERE r = {t}.rowid);
         DROP TABLE temp.hv_shuffle;"
    )
}

fn register(conn: &Connection, key: [u8; 32]) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("hv_mask_name", 1, flags, move |ctx| {
        let v: String = ctx.get::<Option<String>>(0)?.unwrap_or_default();
        Ok(fake_name(&key, &v))
    })?;
    conn.create_scalar_function("hv_mask_email", 1, flags, move |ctx| {
        let v: String = ctx.get::<Option<String>>(0)?.unwrap_or_default();
        Ok(fake_email(&key, &v))
    })?;
    conn.create_scalar_function("hv_mask_hash", 1, flags, move |ctx| {
        let v = ctx.get_raw(0);
        let bytes: Vec<u8> = match v {
            rusqlite::types::ValueRef::Null => Vec::new(),
            rusqlite::types::ValueRef::Integer(i) => i.to_string().into_bytes(),
            rusqlite::types::ValueRef::Real(f) => f.to_string().into_bytes(),
            rusqlite::types::ValueRef::Text(t) => t.to_vec(),
            rusqlite::types::ValueRef::Blob(b) => b.to_vec(),
        };
        Ok(hashed(&key, &bytes))
    })?;
    conn.create_scalar_function("hv_mask_rank", 1, flags, move |ctx| {
        let rowid: i64 = ctx.get(0)?;
        let h = keyed(&key, "shuffle", &rowid.to_le_bytes());
        Ok(i64::from_le_bytes(h[..8].try_into().expect("8 bytes")))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("t.db");
        let conn = Connection::open(&path).unwrap();
        super::super::functions(&conn).unwrap();
        conn.execute_batch(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL,
               city TEXT NOT NULL, notes TEXT NOT NULL DEFAULT '', phone TEXT);
             CREATE VIRTUAL TABLE contacts_fts USING fts5(name, email, content='contacts',
               content_rowid='id');
             CREATE TRIGGER contacts_au AFTER UPDATE ON contacts BEGIN
               INSERT INTO contacts_fts(contacts_fts, rowid, name, email)
                 VALUES ('delete', old.id, old.name, old.email);
               INSERT INTO contacts_fts(rowid, name, email) VALUES (new.id, new.name, new.email);
             END;
             CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);
             CREATE TABLE sessions (token_hash BLOB PRIMARY KEY, user_id INTEGER) WITHOUT ROWID;
             INSERT INTO users VALUES (1, 'ann@acme.se');
             INSERT INTO sessions VALUES (x'5e55101f5e55101f5e55101f5e55101f', 1);",
        )
        .unwrap();
        for i in 0..50 {
            conn.execute(
                "INSERT INTO contacts (name, email, city, notes, phone) VALUES (?1, ?2, ?3, 'secret note', '070')",
                [
                    format!("Zebulon Quixote{i}"),
                    format!("zq{i}@acme.se"),
                    format!("City{i}"),
                ],
            )
            .unwrap();
        }
        conn.execute_batch("INSERT INTO contacts_fts(contacts_fts) VALUES('rebuild');")
            .unwrap();
        path
    }

    #[test]
    fn each_rule_does_what_it_says_and_nothing_unmasked_is_left_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let staged = tenant(dir.path());
        let out = dir.path().join("branch.db");
        let mask = Mask::parse(
            "[contacts]\nname = \"fake_name\"\nemail = \"fake_email\"\nnotes = \"null\"\n\
             phone = \"null\"\ncity = \"shuffle\"\n",
        )
        .unwrap();
        let done = make_own(&staged, &out, &mask, "copy", &[7; 32]).unwrap();
        assert_eq!(done.columns, 5);
        let conn = Connection::open(&out).unwrap();
        let rows: Vec<(String, String, String, String, Option<String>)> = conn
            .prepare("SELECT name, email, city, notes, phone FROM contacts ORDER BY id")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 50);
        let mut cities: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
        let moved = rows
            .iter()
            .enumerate()
            .filter(|(i, r)| r.2 != format!("City{i}"))
            .count();
        assert!(moved > 40, "shuffled: {moved} of 50 moved");
        cities.sort();
        let mut want: Vec<String> = (0..50).map(|i| format!("City{i}")).collect();
        want.sort();
        assert_eq!(cities, want, "a shuffle keeps the column's values");
        for r in &rows {
            assert!(!r.0.contains("Zebulon"), "{}", r.0);
            assert!(
                r.1.ends_with("@acme.se") && r.1.starts_with("user-"),
                "{}",
                r.1
            );
            assert_eq!(r.3, "", "NOT NULL: the empty value");
            assert_eq!(r.4, None);
        }
        let hits: i64 = conn
            .query_row(
                "SELECT count(*) FROM contacts_fts WHERE contacts_fts MATCH 'zebulon'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(hits, 0, "the full-text index knows only masked names");
        let triggers: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'contacts'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(triggers, 1, "the triggers set aside are back");
        let sessions: i64 = conn
            .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sessions, 0);
        drop(conn);
        let bytes = std::fs::read(&out).unwrap();
        for needle in ["Zebulon", "zq1@acme", "secret note"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} is still in the file"
            );
        }

        // The same branch key: the same result; another: another.
        let staged2 = tenant(&dir.path().join("b").tap_mkdir());
        let out2 = dir.path().join("branch2.db");
        make_own(&staged2, &out2, &mask, "none", &[7; 32]).unwrap();
        let first = |p: &Path| -> String {
            Connection::open(p)
                .unwrap()
                .query_row("SELECT email FROM contacts WHERE id = 1", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(first(&out), first(&out2));
        let users: i64 = Connection::open(&out2)
            .unwrap()
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(users, 0, "users = none");
        let staged3 = tenant(&dir.path().join("c").tap_mkdir());
        let out3 = dir.path().join("branch3.db");
        make_own(&staged3, &out3, &mask, "copy", &[8; 32]).unwrap();
        assert_ne!(first(&out), first(&out3));

        // Nothing masked: the copy itself, its sessions zeroed where they lay.
        let staged5 = tenant(&dir.path().join("e").tap_mkdir());
        let out5 = dir.path().join("branch5.db");
        let nothing = Mask::parse("").unwrap();
        make_own(&staged5, &out5, &nothing, "copy", &[7; 32]).unwrap();
        assert!(!staged5.exists(), "renamed, not copied");
        let bytes = std::fs::read(&out5).unwrap();
        let token = [0x5e, 0x55, 0x10, 0x1f, 0x5e, 0x55, 0x10, 0x1f];
        assert!(
            !bytes.windows(8).any(|w| w == token),
            "a session's bytes are left"
        );
        assert!(
            bytes.windows(7).any(|w| w == b"Zebulon"),
            "unmasked, as asked"
        );

        let unknown = Mask::parse("[contacts]\nshoe_size = \"hash\"\n").unwrap();
        let staged4 = tenant(&dir.path().join("d").tap_mkdir());
        let err = make_own(
            &staged4,
            &dir.path().join("x.db"),
            &unknown,
            "copy",
            &[7; 32],
        )
        .unwrap_err();
        assert!(err.message.contains("shoe_size"), "{err}");
        assert!(!dir.path().join("x.db").exists());
    }

    trait TapMkdir {
        fn tap_mkdir(self) -> std::path::PathBuf;
    }

    impl TapMkdir for std::path::PathBuf {
        fn tap_mkdir(self) -> std::path::PathBuf {
            std::fs::create_dir_all(&self).unwrap();
            self
        }
    }
}
