//! A tenant schema migration file as hemvist ships it: `NNNN_name.sql`, ordered by its number,
//! immutable once shipped. Its checksum is the SHA-256 of its bytes, so a file edited after
//! tenants ran it is told apart from the one they ran. A file may carry a check, a query that
//! must answer true after its SQL, in the same transaction:
//!
//! ```sql
//! -- check: SELECT count(*) = 0 FROM contacts WHERE email IS NULL
//! ```
//!
//! The control plane keeps the files it was given and sends their SQL inside its commands, so a
//! node runs exactly what the control plane holds, never what it was built with.

use sha2::{Digest, Sha256};

use crate::HemvistError;

/// The largest migration file accepted.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// The highest version a file may have.
pub const MAX_VERSION: u32 = 9_999;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationFile {
    pub version: u32,
    /// The file's name without its number and `.sql` (`contacts` for `0001_contacts.sql`).
    pub name: String,
    pub sql: String,
    /// SHA-256 of the file's bytes, 64 lowercase hex digits.
    pub checksum: String,
    /// The check query, when the file has one.
    pub check: Option<String>,
}

impl MigrationFile {
    /// Reads a file named `NNNN_name.sql` (letters, digits and `_` after the number).
    pub fn parse(file_name: &str, bytes: &[u8]) -> Result<MigrationFile, HemvistError> {
        let shown: String = file_name
            .chars()
            .take(80)
            .flat_map(char::escape_default)
            .collect();
        let bad = |why: &str| HemvistError::invalid(format!("migration file \"{shown}\": {why}"));
        let stem = file_name
            .strip_suffix(".sql")
            .ok_or_else(|| bad("a migration file is named NNNN_name.sql"))?;
        let (number, name) = stem
            .split_once('_')
            .ok_or_else(|| bad("a migration file is named NNNN_name.sql"))?;
        let version: u32 = number
            .parse()
            .ok()
            .filter(|v| (1..=MAX_VERSION).contains(v) && number.len() == 4)
            .ok_or_else(|| bad("its number must be four digits, 0001 to 9999"))?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(bad(
                "its name after the number is 1 to 64 of a-z, 0-9 and _",
            ));
        }
        if bytes.len() > MAX_FILE_BYTES {
            return Err(HemvistError::new(
                crate::ErrorKind::TooLarge,
                format!(
                    "migration file \"{shown}\" is {} bytes; at most {MAX_FILE_BYTES}",
                    bytes.len()
                ),
            ));
        }
        let sql = std::str::from_utf8(bytes)
            .map_err(|_| bad("it is not UTF-8"))?
            .to_string();
        if sql.trim().is_empty() {
            return Err(bad("it is empty"));
        }
        let checks: Vec<&str> = sql
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("-- check:"))
            .map(str::trim)
            .collect();
        let check = match checks.as_slice() {
            [] => None,
            [one] if !one.is_empty() => Some(one.to_string()),
            [_] => return Err(bad("its `-- check:` line has no query")),
            _ => return Err(bad("it has more than one `-- check:` line")),
        };
        Ok(MigrationFile {
            version,
            name: name.to_string(),
            checksum: checksum(bytes),
            sql,
            check,
        })
    }

    /// `0001_contacts.sql`.
    pub fn file_name(&self) -> String {
        format!("{:04}_{}.sql", self.version, self.name)
    }
}

/// SHA-256 of a file's bytes, hex.
pub fn checksum(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One short digest of a list of (version, checksum), in order: two tenants with the same
/// fingerprint ran the same files.
pub fn fingerprint<'a>(applied: impl IntoIterator<Item = (u32, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (v, c) in applied {
        h.update(format!("{v}:{c}\n"));
    }
    hex::encode(&h.finalize()[..8])
}

/// Files in order of version, each version once, numbered 1, 2, 3, ... without a gap.
pub fn check_sequence(files: &[MigrationFile]) -> Result<(), HemvistError> {
    for (i, f) in files.iter().enumerate() {
        if f.version as usize != i + 1 {
            return Err(HemvistError::invalid(format!(
                "migration {} comes where version {} should: versions are 1, 2, 3, ... without \
                 a gap or a repeat",
                f.file_name(),
                i + 1
            )));
        }
    }
    Ok(())
}

include!(concat!(env!("OUT_DIR"), "/builtin_migrations.rs"));

/// The migration files built into this binary: the same files as the repository's
/// `migrations/`, in order.
pub fn builtin() -> Vec<MigrationFile> {
    BUILTIN
        .iter()
        .map(|(file, bytes)| {
            MigrationFile::parse(file, bytes.as_bytes())
                .unwrap_or_else(|e| panic!("built-in migration {file}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_with_its_checksum_and_check() {
        let f = MigrationFile::parse(
            "0007_emails.sql",
            b"ALTER TABLE contacts ADD COLUMN email TEXT;\n-- check: SELECT count(*) >= 0 FROM contacts\n",
        )
        .unwrap();
        assert_eq!((f.version, f.name.as_str()), (7, "emails"));
        assert_eq!(
            f.check.as_deref(),
            Some("SELECT count(*) >= 0 FROM contacts")
        );
        assert_eq!(f.checksum.len(), 64);
        assert_eq!(f.file_name(), "0007_emails.sql");
        // One byte more is another file.
        let g = MigrationFile::parse("0007_emails.sql", b"ALTER TABLE contacts ADD COLUMN email TEXT; \n-- check: SELECT count(*) >= 0 FROM contacts\n").unwrap();
        assert_ne!(f.checksum, g.checksum);
    }

    #[test]
    fn bad_names_and_bodies_are_refused_saying_why() {
        for (name, body, why) in [
            ("7_x.sql", "SELECT 1;", "four digits"),
            ("0000_x.sql", "SELECT 1;", "four digits"),
            ("0001_X.sql", "SELECT 1;", "a-z"),
            ("0001_x.txt", "SELECT 1;", "NNNN_name.sql"),
            ("0001_x.sql", "  \n", "empty"),
            ("0001_x.sql", "-- check:\nSELECT 1;", "no query"),
            ("0001_x.sql", "-- check: 1\n-- check: 2", "more than one"),
            ("../0001_x.sql", "SELECT 1;", "four digits"),
        ] {
            let e = MigrationFile::parse(name, body.as_bytes()).unwrap_err();
            assert!(e.message.contains(why), "{name}: {e}");
        }
    }

    #[test]
    fn the_built_in_files_are_a_sequence() {
        let files = builtin();
        assert!(files.len() >= 5);
        check_sequence(&files).unwrap();
        assert_ne!(
            fingerprint(files.iter().map(|f| (f.version, f.checksum.as_str()))),
            fingerprint(
                files
                    .iter()
                    .take(2)
                    .map(|f| (f.version, f.checksum.as_str()))
            )
        );
    }
}
