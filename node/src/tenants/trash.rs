//! The trash: a dropped tenant's files wait in `trash/` for a grace period (an operator's way
//! back), then are deleted. Keeps true: nothing younger than the grace period is deleted, and
//! every deletion is returned to the caller, who has it audited by the control plane.

use std::path::PathBuf;
use std::time::Duration;

use hemvist_proto::OrgId;

use super::TenantStore;

/// One dropped tenant whose files were deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    pub org: OrgId,
    /// `g{generation}-{dropped_ms}`, as `retire` named it (or `g{generation}-rolled-back-{ms}`,
    /// a file a rollback replaced).
    pub label: String,
    pub dropped_ms: i64,
}

impl TenantStore {
    pub(super) fn trash_dir(&self) -> PathBuf {
        self.root.parent().unwrap_or(&self.root).join("trash")
    }

    /// Deletes every file of `org` here for good, not to the trash: its database with what lies
    /// beside it, any staging file of a restore, a move or a branch, and what the trash keeps of
    /// it (a destroyed branch leaves nothing behind). How many files went.
    pub fn destroy(&self, org: &OrgId) -> std::io::Result<usize> {
        self.close(org);
        let path = self.path(org);
        let mut gone = 0;
        let mut remove = |p: PathBuf| -> std::io::Result<()> {
            match std::fs::remove_file(&p) {
                Ok(()) => {
                    gone += 1;
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        };
        for ext in super::STAGING_EXTENSIONS.iter().chain(["db"].iter()) {
            let base = path.with_extension(ext);
            for side in ["", "-wal", "-shm", "-journal"] {
                remove(PathBuf::from(format!("{}{side}", base.display())))?;
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.trash_dir()) {
            let prefix = format!("{org}.");
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    remove(entry.path())?;
                }
            }
        }
        Ok(gone)
    }

    /// Deletes the trashed tenants dropped more than `grace` before `now_ms`.
    pub fn purge_trash(&self, grace: Duration, now_ms: i64) -> Vec<Purged> {
        let Ok(entries) = std::fs::read_dir(self.trash_dir()) else {
            return Vec::new();
        };
        let cutoff = now_ms - grace.as_millis() as i64;
        let mut purged: Vec<Purged> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(found) = parse(&name) else {
                continue;
            };
            if found.dropped_ms > cutoff {
                continue;
            }
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %name, error = %e, "could not delete a trashed file");
                continue;
            }
            if !purged.contains(&found) {
                purged.push(found);
            }
        }
        purged
    }
}

/// `{org}.g{generation}-{dropped_ms}.db`, with `-wal` or `-shm` after it for the side files.
fn parse(name: &str) -> Option<Purged> {
    let stem = ["-wal", "-shm", ""]
        .iter()
        .find_map(|s| name.strip_suffix(&format!(".db{s}")))?;
    let (org, label) = stem.split_once('.')?;
    let dropped_ms = label.strip_prefix('g')?.rsplit_once('-')?.1.parse().ok()?;
    Some(Purged {
        org: OrgId::parse(org).ok()?,
        label: label.to_string(),
        dropped_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destroyed_tenant_leaves_no_file_and_its_parent_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = TenantStore::new(dir.path(), 2).unwrap();
        let qa = OrgId::parse("acme--qa").unwrap();
        let acme = OrgId::parse("acme").unwrap();
        std::fs::create_dir_all(store.path(&qa).parent().unwrap()).unwrap();
        for p in [
            store.path(&qa),
            store.path(&qa).with_extension("db-wal"),
            store.path(&qa).with_extension("branching"),
            store.path(&acme),
        ] {
            std::fs::write(p, b"x").unwrap();
        }
        let trash = store.trash_dir();
        std::fs::create_dir_all(&trash).unwrap();
        std::fs::write(trash.join("acme--qa.g3-1000.db"), b"x").unwrap();
        std::fs::write(trash.join("acme.g2-1000.db"), b"x").unwrap();
        assert_eq!(store.destroy(&qa).unwrap(), 4);
        assert!(!store.exists(&qa) && store.exists(&acme));
        assert!(trash.join("acme.g2-1000.db").exists());
        assert_eq!(store.destroy(&qa).unwrap(), 0, "again: nothing left");
    }

    #[test]
    fn only_what_is_older_than_the_grace_period_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = TenantStore::new(dir.path(), 2).unwrap();
        let trash = store.trash_dir();
        std::fs::create_dir_all(&trash).unwrap();
        for f in [
            "old.g3-1000.db",
            "old.g3-1000.db-wal",
            "young.g4-9000.db",
            "notes.txt",
        ] {
            std::fs::write(trash.join(f), b"x").unwrap();
        }
        let purged = store.purge_trash(Duration::from_millis(5_000), 10_000);
        assert_eq!(
            purged,
            vec![Purged {
                org: OrgId::parse("old").unwrap(),
                label: "g3-1000".into(),
                dropped_ms: 1000,
            }]
        );
        let mut left: Vec<String> = std::fs::read_dir(&trash)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "young.g4-9000.db"]);
        assert!(store
            .purge_trash(Duration::from_millis(5_000), 10_000)
            .is_empty());
    }
}
