//! Migrating a hosted tenant, as the control plane asks: under the tenant's one writer, in one
//! transaction that holds SQLite's write lock from before the restore point is taken until the
//! migration commits (or rolls back), so no write lands between the point and the migration.
//!
//! Keeps true:
//! - only a tenant hosted here at the command's generation or a newer one is migrated, and only
//!   while the write gate is open (lease, no fence, no newer owner, disk headroom), checked
//!   again inside the transaction, as for every write;
//! - every answer carries a report: where the tenant stood, the restore point (the generation
//!   it is hosted at, the LSN last shipped of it at that generation, the wall-clock time the
//!   write lock was taken), how long the transaction took, and on failure the file, the
//!   statement and SQLite's error; a failure and a dry run roll everything back;
//! - the restore point holds every write committed before it: the tenant's pending writes are
//!   shipped first, and the point is taken only once, holding the write lock, nothing committed
//!   is left unshipped (a rollback restores exactly up to it). If that cannot be had within
//!   [`SETTLE`] (the store is slow or away, the data key has not come), the point is taken as it
//!   stands, logged: writes committed before it and shipped after it are not in it;
//! - a committed migration is recorded in `node.db` (version, fingerprint, and its answer, so
//!   the same command sent again is answered the same) before it is acknowledged; its tenant is
//!   closed (nothing derived from its old shape survives) and marked for shipping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hemvist_proto::{ErrorKind, Generation, HemvistError, OrgId};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::backup::replicator::Replicator;
use crate::clock::now_ms;
use crate::gate::WriteGate;
use crate::state::{Hosted, NodeState};
use crate::tenants::schema::{self, FailedFile, Schema, TenantSchema};
use crate::tenants::TenantStore;

/// How long a migration waits for the tenant's committed writes to be in the store, so that
/// its restore point holds them.
pub const SETTLE: Duration = Duration::from_secs(5);

/// What the control plane asked.
#[derive(Debug, Clone)]
pub struct MigrateRequest {
    /// The command's id: a re-sent command is answered as it was the first time.
    pub command: String,
    pub org: OrgId,
    pub generation: Generation,
    /// The target version and every file up to it.
    pub schema: Schema,
    /// Run it all, then roll back: the report says what would happen.
    pub dry_run: bool,
}

/// The tenant's backup position just before a migration: what a rollback restores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePoint {
    /// The generation the tenant is hosted at.
    pub generation: u64,
    /// The LSN after the last object shipped of it at that generation (0: none yet, or this
    /// node has no backups). Every write committed before it is shipped by then, unless that
    /// took longer than [`SETTLE`] (see the module doc).
    pub lsn: u64,
    /// Wall-clock ms, taken holding the write lock, before anything changed.
    pub ms: i64,
}

/// What a migration did, failed or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub from_version: u32,
    /// The version now (`from_version` after a failure or a dry run).
    pub to_version: u32,
    pub restore: RestorePoint,
    /// The file that failed, when one did.
    pub failed: Option<FailedFile>,
    /// How long the transaction took.
    pub micros: u64,
    /// The fingerprint of the files the tenant ran, after.
    pub fingerprint: String,
}

/// A migration's answer: always a report, and what the tenant has now or why it failed.
#[derive(Debug, Clone)]
pub struct Migration {
    pub report: Report,
    pub outcome: Result<TenantSchema, HemvistError>,
}

pub struct Migrator {
    tenants: Arc<TenantStore>,
    hosted: Arc<NodeState>,
    gate: Arc<WriteGate>,
    backup: Option<Arc<Replicator>>,
}

impl Migrator {
    pub fn new(
        tenants: Arc<TenantStore>,
        hosted: Arc<NodeState>,
        gate: Arc<WriteGate>,
        backup: Option<Arc<Replicator>>,
    ) -> Self {
        Migrator {
            tenants,
            hosted,
            gate,
            backup,
        }
    }

    /// Migrates the org's tenant to `req.schema` (see the module doc). A tenant at or above the
    /// version runs nothing and succeeds.
    pub fn migrate(&self, req: &MigrateRequest) -> Migration {
        let org = &req.org;
        let _span = tracing::info_span!("migrate", %org, generation = %req.generation,
            to = req.schema.version(), dry_run = req.dry_run)
        .entered();
        let hosted = match self.hosted.hosted(org) {
            Some(h) if h.generation >= req.generation => h,
            _ => {
                return self.refused(
                    Some(org),
                    HemvistError::new(
                        ErrorKind::Fenced,
                        format!("org {org} is not hosted here at {}", req.generation),
                    ),
                )
            }
        };
        if let Some(answer) = self.answered(req, &hosted) {
            return answer;
        }
        if let Err(e) = self.gate.check(org) {
            return self.refused(Some(org), e);
        }
        let deadline = Instant::now() + SETTLE;
        let ran = loop {
            if !req.dry_run && !self.settled(org, hosted.generation) {
                self.ship_pending(org, deadline);
            }
            let last_try = req.dry_run || Instant::now() >= deadline;
            match self
                .tenants
                .with_writer(org, |conn| Ok(self.run(conn, req, &hosted, last_try)))
            {
                // Written between the shipment and the lock: ship that too.
                Ok(None) => continue,
                Ok(Some(ran)) => break ran,
                Err(e) => return self.refused(Some(org), e),
            }
        };
        let (migration, committed) = ran;
        let r = &migration.report;
        match &migration.outcome {
            Ok(_) => tracing::info!(
                from = r.from_version,
                to = r.to_version,
                micros = r.micros,
                restore_lsn = r.restore.lsn,
                restore_ms = r.restore.ms,
                "migrated tenant"
            ),
            Err(e) => {
                tracing::warn!(from = r.from_version, error = %e, "migration failed; rolled back")
            }
        }
        if committed {
            // A node that dies here migrated the tenant and told nobody: asked again, it finds
            // the tenant there already.
            if let Err(e) = crate::failpoints::check("node.migrate.committed") {
                tracing::warn!(error = %e, "failpoint");
            }
            self.committed(org, req, &migration.report);
        } else if let (Ok(now), false) = (&migration.outcome, req.dry_run) {
            // Nothing to commit, but what node.db says may be older (a fingerprint from
            // before fingerprints were kept): the next state report carries the tenant's own.
            if (now.version, now.fingerprint.as_str())
                != (hosted.schema_version, hosted.schema_fingerprint.as_str())
            {
                if let Err(e) = self
                    .hosted
                    .set_schema(org, now.version, &now.fingerprint, None)
                {
                    tracing::warn!(error = %e, "could not record the tenant's schema in node.db");
                }
            }
        }
        migration
    }

    /// The answer to an org's migration refused before its transaction: the tenant as this node
    /// last knew it, and why.
    pub fn refused(&self, org: Option<&OrgId>, error: HemvistError) -> Migration {
        let held = org.and_then(|o| self.hosted.hosted(o));
        let version = held.as_ref().map_or(0, |h| h.schema_version);
        Migration {
            report: Report {
                from_version: version,
                to_version: version,
                fingerprint: held.map(|h| h.schema_fingerprint).unwrap_or_default(),
                ..Report::default()
            },
            outcome: Err(error),
        }
    }

    /// The answer kept for this very command, if it is the last migration that changed the org
    /// and the tenant is still what it left (not restored to an older point since).
    fn answered(&self, req: &MigrateRequest, hosted: &Hosted) -> Option<Migration> {
        let answer = self.hosted.migration_answer(&req.org, &req.command)?;
        let report: Report = match serde_json::from_str(&answer) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "a kept migration answer does not parse; migrating again");
                return None;
            }
        };
        if (report.to_version, report.fingerprint.as_str())
            != (hosted.schema_version, hosted.schema_fingerprint.as_str())
        {
            return None;
        }
        Some(Migration {
            outcome: Ok(TenantSchema {
                version: report.to_version,
                fingerprint: report.fingerprint.clone(),
            }),
            report,
        })
    }

    /// Whether every committed write of the tenant is in the store (trivially so without
    /// backups: there is nothing to roll back to then).
    fn settled(&self, org: &OrgId, generation: Generation) -> bool {
        self.backup
            .as_ref()
            .is_none_or(|b| b.settled(org, generation.get()))
    }

    /// Asks for a pass over the tenant and waits for it, until `deadline` at most.
    fn ship_pending(&self, org: &OrgId, deadline: Instant) {
        let Some(b) = &self.backup else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if !left.is_zero() {
            let mark = b.mark_dirty(org);
            if let Err(e) = b.wait_durable(org, mark, left) {
                tracing::debug!(error = %e, "the tenant's pending writes are not shipped yet");
            }
        }
    }

    /// The transaction, on the tenant's writer connection; whether it committed. `None`: not
    /// tried, as the tenant holds writes not yet shipped (and this is not the `last_try`).
    fn run(
        &self,
        conn: &Connection,
        req: &MigrateRequest,
        hosted: &Hosted,
        last_try: bool,
    ) -> Option<(Migration, bool)> {
        let org = &req.org;
        let mut report = Report {
            from_version: hosted.schema_version,
            to_version: hosted.schema_version,
            fingerprint: hosted.schema_fingerprint.clone(),
            ..Report::default()
        };
        let tx = match Transaction::new_unchecked(conn, TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let error = tenant_error(org, "begin the migration", &e);
                return Some((self.refused(Some(org), error), false));
            }
        };
        // Holding the write lock: nothing commits between here and the migration's end.
        if let Err(e) = self.gate.check_now(org) {
            return Some((self.refused(Some(org), e), false));
        }
        let settled = req.dry_run || self.settled(org, hosted.generation);
        if !settled && !last_try {
            return None;
        }
        if !settled {
            tracing::warn!(
                "the tenant's committed writes were not all shipped within {} s: its restore \
                 point is what was shipped, and a rollback to it loses the rest",
                SETTLE.as_secs()
            );
        }
        report.restore = self.restore_point(org, hosted.generation);
        let started = Instant::now();
        let step = schema::migrate(&tx, &req.schema, report.restore.ms);
        let (outcome, committed) = match step {
            Err(f) => {
                drop(tx);
                if f.from != TenantSchema::default() {
                    report.from_version = f.from.version;
                    report.fingerprint = f.from.fingerprint;
                }
                report.to_version = report.from_version;
                report.failed = f.file.map(|f| *f);
                let error = HemvistError::new(
                    f.error.kind,
                    format!(
                        "{}; rolled back: org {org}'s tenant is unchanged at version {}",
                        f.error.message, report.from_version
                    ),
                );
                (Err(error), false)
            }
            Ok(m) if req.dry_run || !m.changed => {
                // A dry run, or nothing to do (the tenant is at or above the version).
                let undone = tx.rollback();
                report.from_version = m.from.version;
                report.to_version = m.from.version;
                report.fingerprint = m.from.fingerprint.clone();
                match undone {
                    Ok(()) => (Ok(m.from), false),
                    Err(e) => (Err(tenant_error(org, "roll back", &e)), false),
                }
            }
            Ok(m) => {
                report.from_version = m.from.version;
                match tx.commit() {
                    Ok(()) => {
                        report.to_version = m.to.version;
                        report.fingerprint = m.to.fingerprint.clone();
                        (Ok(m.to), true)
                    }
                    Err(e) => {
                        report.to_version = m.from.version;
                        report.fingerprint = m.from.fingerprint;
                        (Err(tenant_error(org, "commit the migration", &e)), false)
                    }
                }
            }
        };
        report.micros = started.elapsed().as_micros() as u64;
        Some((Migration { report, outcome }, committed))
    }

    fn restore_point(&self, org: &OrgId, generation: Generation) -> RestorePoint {
        let lsn = self
            .backup
            .as_ref()
            .and_then(|b| b.shipped(org))
            .filter(|s| s.generation == generation.get())
            .map_or(0, |s| s.lsn);
        RestorePoint {
            generation: generation.get(),
            lsn,
            ms: now_ms(),
        }
    }

    /// What a committed migration owes the node: its record, its tenant closed, a shipment.
    fn committed(&self, org: &OrgId, req: &MigrateRequest, report: &Report) {
        let answer = (report.to_version != report.from_version)
            .then(|| serde_json::to_string(report).ok())
            .flatten();
        if let Err(e) = self.hosted.set_schema(
            org,
            report.to_version,
            &report.fingerprint,
            answer.as_deref().map(|a| (req.command.as_str(), a)),
        ) {
            // The tenant is migrated either way; the next host reads its version from it.
            tracing::error!(error = %e, "could not record a committed migration in node.db");
        }
        self.tenants.close(org);
        if let Some(b) = &self.backup {
            b.mark_dirty(org);
        }
    }
}

fn tenant_error(org: &OrgId, what: &str, e: &rusqlite::Error) -> HemvistError {
    HemvistError::new(schema::kind_of(e), format!("tenant {org}: {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use hemvist_proto::migration::{self, MigrationFile};
    use hemvist_proto::RegionId;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::hosting::{HostRequest, Hosting};

    /// A node's hosting and migrations over a folder, without backups, with a live lease.
    struct Parts {
        hosting: Hosting,
        migrator: Migrator,
        state: Arc<NodeState>,
        tenants: Arc<TenantStore>,
        org: OrgId,
        _dir: tempfile::TempDir,
    }

    fn builtin(n: usize) -> Schema {
        let files: Vec<MigrationFile> = migration::builtin().into_iter().take(n).collect();
        Schema::new(n as u32, files).unwrap()
    }

    /// The built-in files up to 4, then `fifth` as version 5.
    fn with_fifth(name: &str, sql: &str) -> Schema {
        let mut files: Vec<MigrationFile> = migration::builtin().into_iter().take(4).collect();
        files.push(MigrationFile::parse(&format!("0005_{name}.sql"), sql.as_bytes()).unwrap());
        Schema::new(5, files).unwrap()
    }

    /// A tenant hosted at generation 2, created at version 3.
    fn parts() -> Parts {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(NodeState::open(&dir.path().join("node.db")).unwrap());
        let tenants = Arc::new(TenantStore::new(dir.path(), 2).unwrap());
        let gate = Arc::new(WriteGate::new(state.clone()));
        gate.lease
            .renew(std::time::Instant::now(), Duration::from_secs(60));
        let hosting = Hosting::new(
            RegionId::parse("eu-north").unwrap(),
            tenants.clone(),
            state.clone(),
            None,
        );
        let org = OrgId::parse("acme").unwrap();
        hosting
            .host(&HostRequest {
                org: org.clone(),
                generation: Generation::new(2).unwrap(),
                name: "Acme".into(),
                allowed_regions: vec!["eu-north".into()],
                sync: false,
                data_key: None,
                expect_backup: false,
                moved_here: false,
                schema: builtin(3),
            })
            .unwrap();
        Parts {
            hosting,
            migrator: Migrator::new(tenants.clone(), state.clone(), gate, None),
            state,
            tenants,
            org,
            _dir: dir,
        }
    }

    fn request(p: &Parts, command: &str, schema: Schema, dry_run: bool) -> MigrateRequest {
        MigrateRequest {
            command: command.into(),
            org: p.org.clone(),
            generation: Generation::new(2).unwrap(),
            schema,
            dry_run,
        }
    }

    /// The tenant as it is on disk: the SHA-256 of its main file once every committed frame is
    /// in it (nothing of an uncommitted transaction ever is), and its logical content.
    #[derive(Debug, PartialEq, Eq)]
    struct Snapshot {
        sha256: String,
        schema: Vec<String>,
        ran: Vec<(u32, String, Option<String>)>,
        user_version: u32,
    }

    fn snapshot(p: &Parts) -> Snapshot {
        p.tenants
            .with_writer(&p.org, |c| {
                let busy: i64 = c
                    .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(busy, 0, "the checkpoint finished");
                let read = || -> rusqlite::Result<Snapshot> {
                    Ok(Snapshot {
                        sha256: hex::encode(Sha256::digest(
                            std::fs::read(p.tenants.path(&p.org)).unwrap(),
                        )),
                        schema: c
                            .prepare("SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY name")?
                            .query_map([], |r| r.get(0))?
                            .collect::<Result<_, _>>()?,
                        ran: c
                            .prepare("SELECT version, name, checksum FROM schema_migrations ORDER BY version")?
                            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                            .collect::<Result<_, _>>()?,
                        user_version: schema::current_version(c)?,
                    })
                };
                Ok(read().unwrap())
            })
            .unwrap()
    }

    /// Counts the commits on the tenant's writer from now on.
    fn count_commits(p: &Parts) -> Arc<AtomicUsize> {
        let commits = Arc::new(AtomicUsize::new(0));
        let seen = commits.clone();
        p.tenants
            .with_writer(&p.org, |c| {
                c.commit_hook(Some(move || {
                    seen.fetch_add(1, Ordering::SeqCst);
                    false
                }))
                .unwrap();
                Ok(())
            })
            .unwrap();
        commits
    }

    fn has_table(p: &Parts, name: &str) -> bool {
        p.tenants
            .read(&p.org, |c| {
                c.prepare("SELECT 1 FROM sqlite_schema WHERE name = ?1")?
                    .exists([name])
            })
            .unwrap()
    }

    #[test]
    fn two_files_are_applied_in_one_transaction_after_a_restore_point() {
        let p = parts();
        let commits = count_commits(&p);
        let before = now_ms();
        let done = p.migrator.migrate(&request(&p, "c-1", builtin(5), false));
        let to = done.outcome.unwrap();
        assert_eq!(
            to,
            TenantSchema {
                version: 5,
                fingerprint: builtin(5).fingerprint()
            }
        );
        let r = &done.report;
        assert_eq!(
            (r.from_version, r.to_version, r.failed.as_ref()),
            (3, 5, None)
        );
        assert_eq!(r.fingerprint, builtin(5).fingerprint());
        assert_eq!(commits.load(Ordering::SeqCst), 1, "one transaction");
        assert_eq!(
            (r.restore.generation, r.restore.lsn),
            (2, 0),
            "no backups: nothing shipped"
        );
        assert!(r.restore.ms >= before && r.restore.ms <= now_ms());
        assert!(has_table(&p, "contact_changes") && has_table(&p, "idempotency_keys"));
        assert_eq!(snapshot(&p).user_version, 5);
        // What the next state report carries.
        let h = p.state.hosted(&p.org).unwrap();
        assert_eq!(
            (h.schema_version, h.schema_fingerprint),
            (5, builtin(5).fingerprint())
        );
    }

    #[test]
    fn a_failing_statement_in_the_second_file_leaves_the_tenant_byte_for_byte_unchanged() {
        let p = parts();
        let before = snapshot(&p);
        let commits = count_commits(&p);
        let broken = with_fifth(
            "notes",
            "CREATE TABLE notes (x);\nINSERT INTO nosuch VALUES (1);\n",
        );
        let done = p.migrator.migrate(&request(&p, "c-1", broken, false));
        let e = done.outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        for part in [
            "0005_notes.sql",
            "INSERT INTO nosuch VALUES (1);",
            "no such table: nosuch",
        ] {
            assert!(e.message.contains(part), "{part}: {e}");
        }
        let r = &done.report;
        assert_eq!((r.from_version, r.to_version), (3, 3));
        let failed = r.failed.clone().unwrap();
        assert_eq!((failed.version, failed.name.as_str()), (5, "notes"));
        assert_eq!(failed.statement, "INSERT INTO nosuch VALUES (1);");
        assert_eq!(failed.error, "no such table: nosuch");
        assert_eq!(commits.load(Ordering::SeqCst), 0, "nothing was committed");
        assert!(
            !has_table(&p, "contact_changes") && !has_table(&p, "notes"),
            "neither file"
        );
        assert_eq!(snapshot(&p), before);
        assert_eq!(p.state.hosted(&p.org).unwrap().schema_version, 3);
    }

    #[test]
    fn a_failing_check_leaves_the_tenant_unchanged_and_says_what_it_answered() {
        let p = parts();
        let before = snapshot(&p);
        let checked = with_fifth(
            "flags",
            "CREATE TABLE flags (x);\n-- check: SELECT count(*) FROM flags\n",
        );
        let done = p.migrator.migrate(&request(&p, "c-1", checked, false));
        let e = done.outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        let failed = done.report.failed.unwrap();
        assert_eq!(
            failed.error,
            "check failed: SELECT count(*) FROM flags answered 0"
        );
        assert_eq!(failed.statement, "SELECT count(*) FROM flags");
        assert!(
            e.message.contains("0005_flags.sql") && e.message.contains("answered 0"),
            "{e}"
        );
        assert_eq!(snapshot(&p), before);
    }

    #[test]
    fn a_dry_run_changes_nothing_and_reports_what_would_happen() {
        let p = parts();
        let before = snapshot(&p);
        let done = p.migrator.migrate(&request(&p, "c-1", builtin(5), true));
        assert_eq!(done.outcome.unwrap().version, 3);
        let r = &done.report;
        assert_eq!(
            (r.from_version, r.to_version, r.failed.as_ref()),
            (3, 3, None)
        );
        assert_eq!(r.fingerprint, builtin(3).fingerprint());
        assert_eq!(snapshot(&p), before);
        assert_eq!(p.state.hosted(&p.org).unwrap().schema_version, 3);
        // One that would fail says so, and changes nothing either.
        let broken = with_fifth("notes", "SELEC 1;\n");
        let tried = p.migrator.migrate(&request(&p, "c-2", broken, true));
        assert!(tried.outcome.is_err());
        assert_eq!(tried.report.failed.unwrap().statement, "SELEC 1;");
        assert_eq!(snapshot(&p), before);
    }

    #[test]
    fn a_migration_is_idempotent_and_a_resent_command_is_answered_the_same() {
        let p = parts();
        let first = p.migrator.migrate(&request(&p, "c-1", builtin(5), false));
        assert!(first.outcome.is_ok());
        let commits = count_commits(&p);
        let again = p.migrator.migrate(&request(&p, "c-1", builtin(5), false));
        assert_eq!(
            again.report, first.report,
            "the same answer, restore point included"
        );
        let other = p.migrator.migrate(&request(&p, "c-2", builtin(5), false));
        assert_eq!(other.outcome.unwrap().version, 5);
        assert_eq!((other.report.from_version, other.report.to_version), (5, 5));
        let lower = p.migrator.migrate(&request(&p, "c-3", builtin(4), false));
        assert_eq!((lower.report.from_version, lower.report.to_version), (5, 5));
        assert_eq!(commits.load(Ordering::SeqCst), 0, "nothing ran");
        // The kept answer survives a restart of the node's state.
        drop(p.migrator);
        let state = NodeState::open(&p._dir.path().join("node.db")).unwrap();
        assert_eq!(state.hosted(&p.org).unwrap().schema_version, 5);
        assert!(state.migration_answer(&p.org, "c-1").is_some());
        assert!(state.migration_answer(&p.org, "c-2").is_none());
    }

    #[test]
    fn only_a_tenant_hosted_here_at_the_generation_or_newer_is_migrated() {
        let p = parts();
        let mut req = request(&p, "c-1", builtin(4), false);
        req.generation = Generation::new(3).unwrap();
        let refused = p.migrator.migrate(&req);
        assert_eq!(refused.outcome.unwrap_err().kind, ErrorKind::Fenced);
        assert_eq!(
            (refused.report.from_version, refused.report.to_version),
            (3, 3)
        );
        req.generation = Generation::new(1).unwrap();
        let done = p.migrator.migrate(&req);
        assert_eq!(done.outcome.unwrap().version, 4);
        assert_eq!(
            done.report.restore.generation, 2,
            "the generation it is hosted at"
        );
        p.hosting
            .drop_tenant(&p.org, Generation::new(2).unwrap())
            .unwrap();
        let gone = p.migrator.migrate(&request(&p, "c-2", builtin(5), false));
        assert_eq!(gone.outcome.unwrap_err().kind, ErrorKind::Fenced);
    }

    #[test]
    fn a_tenant_that_ran_an_edited_file_is_not_migrated() {
        let p = parts();
        let before = snapshot(&p);
        let mut files: Vec<MigrationFile> = migration::builtin();
        files[0] =
            MigrationFile::parse("0001_contacts.sql", format!("{} ", files[0].sql).as_bytes())
                .unwrap();
        let done = p
            .migrator
            .migrate(&request(&p, "c-1", Schema::new(5, files).unwrap(), false));
        let e = done.outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("version 1"), "{e}");
        assert_eq!(done.report.failed.unwrap().version, 1);
        assert_eq!(snapshot(&p), before);
    }
}
