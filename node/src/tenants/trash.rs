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
