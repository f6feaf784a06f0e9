//! Hosting: which orgs this node keeps a tenant for, at which generation.
//!
//! Keeps true: an org is hosted only in a region its residency policy lists (the node's second
//! line of defense, whatever the control plane says); a generation older than the one held can
//! never take an org back; hosting is idempotent; a dropped tenant's file goes to `trash/`, not
//! away; a tenant rebuilt from backups reaches the newest position the store shows and the
//! control plane was told of, or is refused naming what is missing, unless an operator
//! accepted the older point (a new history never starts silently over a gap); a new tenant is
//! created at exactly the schema the control plane sent, and an existing one (found here,
//! restored, moved here) is only checked against it, never migrated, and hosted at its own
//! version. A rollback to a restore point replaces the local file under a new generation
//! ([`rollback`]).

mod branch;
mod rollback;

pub use branch::BranchSource;

use std::sync::Arc;

use hemvist_proto::{DataKey, ErrorKind, Generation, HemvistError, OrgId, RegionId};

use crate::backup::replicator::Replicator;
use crate::backup::restore;
use crate::clock::now_ms;
use crate::failpoints;
use crate::state::{Hosted, NodeState};
use crate::tenants::schema::Schema;
use crate::tenants::TenantStore;

/// What the control plane asked this node to host.
#[derive(Clone)]
pub struct HostRequest {
    pub org: OrgId,
    pub generation: Generation,
    pub name: String,
    pub allowed_regions: Vec<String>,
    /// Writes are acknowledged only once they are in object storage.
    pub sync: bool,
    /// The org's data key, which seals its backups.
    pub data_key: Option<DataKey>,
    /// The control plane has seen backups of this org: if there is no local file, one of them
    /// must be restored; finding none is an error, never an empty tenant.
    pub expect_backup: bool,
    /// A move put the org's file here: host exactly that file, or fail.
    pub moved_here: bool,
    /// The schema the control plane holds the org at: a new tenant is created at it; an
    /// existing one is checked against its files.
    pub schema: Schema,
}

/// What a rebuild from backups must reach, and whether an operator accepted less.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreBar {
    /// The newest position the control plane was told was shipped.
    pub known: Option<restore::Known>,
    /// An operator accepted the newest reachable point though it is older (audited there).
    pub accept_older: bool,
}

pub struct Hosting {
    region: RegionId,
    tenants: Arc<TenantStore>,
    hosted: Arc<NodeState>,
    backup: Option<Arc<Replicator>>,
}

impl Hosting {
    pub fn new(
        region: RegionId,
        tenants: Arc<TenantStore>,
        hosted: Arc<NodeState>,
        backup: Option<Arc<Replicator>>,
    ) -> Self {
        Hosting {
            region,
            tenants,
            hosted,
            backup,
        }
    }

    /// Hosts an org at a generation: idempotent, refuses what residency forbids and what a
    /// newer generation already owns.
    pub fn host(&self, req: &HostRequest) -> Result<Hosted, HemvistError> {
        self.host_with(req, &RestoreBar::default())
    }

    /// As [`Hosting::host`]; a tenant rebuilt from backups must reach `bar`.
    pub fn host_with(&self, req: &HostRequest, bar: &RestoreBar) -> Result<Hosted, HemvistError> {
        self.admit(req)?;
        failpoints::check("node.host")?;
        if req.moved_here && !self.tenants.exists(&req.org) {
            return Err(HemvistError::unavailable(format!(
                "org {} was moved here, but its copy is not where it was put: refusing to \
                 restore an older point or create an empty tenant",
                req.org
            )));
        }
        if !self.tenants.exists(&req.org)
            && !self.restore_from_backup(&req.org, req.data_key.as_ref(), bar)?
            && req.expect_backup
        {
            // Creating an empty tenant here would silently replace the org's data with nothing
            // (a wrong store configured, a bucket emptied): refuse, and keep refusing.
            return Err(HemvistError::unavailable(format!(
                "org {} has backups, but this node has no file of it and finds none in {}: \
                 refusing to create an empty tenant (is backup.url right?)",
                req.org,
                self.backup.as_ref().map_or(
                    "its store (this node has no [backup])".to_string(),
                    |b| b.config.url.clone()
                )
            )));
        }
        let schema = if self.tenants.exists(&req.org) {
            let held = self.tenants.adopt(&req.org, &req.schema)?;
            if held.version != req.schema.version() {
                tracing::info!(org = %req.org, version = held.version, held_at = req.schema.version(),
                    "hosting a tenant at its own schema version, not the one the control plane holds it at");
            }
            held
        } else if req.schema.version() == 0 {
            return Err(HemvistError::invalid(format!(
                "org {} is new here, and the host names no schema (version 0, no migration \
                 files): is the control plane older than this node?",
                req.org
            )));
        } else {
            self.tenants.create(&req.org, &req.schema, now_ms())?
        };
        failpoints::check("node.host.after_create")?;
        let hosted = Hosted {
            generation: req.generation,
            schema_version: schema.version,
            schema_fingerprint: schema.fingerprint,
            name: req.name.clone(),
            sync: req.sync,
            data_key: req.data_key.clone(),
        };
        self.hosted.set_hosted(&req.org, &hosted, now_ms())?;
        // Only now: a pass that found the tenant not hosted yet would ship nothing and forget
        // it, and an org never written to would have no backup at all (no move could copy it).
        if let Some(b) = &self.backup {
            b.mark_dirty(&req.org);
        }
        tracing::info!(org = %req.org, generation = %req.generation,
            schema_version = hosted.schema_version, schema_fingerprint = %hosted.schema_fingerprint,
            "hosting tenant");
        Ok(hosted)
    }

    /// What every host checks first: the org's residency allows this region, and this node
    /// holds no newer generation of it.
    fn admit(&self, req: &HostRequest) -> Result<(), HemvistError> {
        if !req
            .allowed_regions
            .iter()
            .any(|r| r == self.region.as_str())
        {
            return Err(HemvistError::new(
                ErrorKind::Residency,
                format!(
                    "org {} may not be stored in region {} (allowed: {})",
                    req.org,
                    self.region,
                    if req.allowed_regions.is_empty() {
                        "none given".to_string()
                    } else {
                        req.allowed_regions.join(", ")
                    }
                ),
            ));
        }
        if let Some(h) = self.hosted.hosted(&req.org) {
            if h.generation > req.generation {
                return Err(HemvistError::new(
                    ErrorKind::Fenced,
                    format!(
                        "org {} is hosted here at {}, newer than {}",
                        req.org, h.generation, req.generation
                    ),
                ));
            }
        }
        Ok(())
    }

    /// An org assigned here with no local file: if its region's backups hold it, the newest
    /// restore point becomes the local file (blocking; runs on the command thread), provided it
    /// reaches everything the store shows and `bar` knows (or an operator accepted less).
    /// Whether one was restored.
    fn restore_from_backup(
        &self,
        org: &OrgId,
        key: Option<&DataKey>,
        bar: &RestoreBar,
    ) -> Result<bool, HemvistError> {
        let Some(b) = &self.backup else {
            return Ok(false);
        };
        if b.store_is_foreign() {
            return Err(HemvistError::unavailable(format!(
                "org {org} has no local file, and the backup store belongs to another hemvist \
                 system: nothing is restored from it"
            )));
        }
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| HemvistError::internal("restore needs the runtime"))?;
        let path = self.tenants.path(org);
        let restored = handle.block_on(async {
            let catalog = restore::catalog(&b.store, org).await?;
            let plan = catalog.plan(i64::MAX, &[]);
            let short = catalog.shortfall(plan.as_ref(), i64::MAX, bar.known.as_ref());
            let plan = match plan {
                Some(plan) if short.is_empty() || bar.accept_older => plan,
                // Nothing at all to restore and nothing known: a new org.
                None if short.is_empty() => return Ok(Restore::Nothing),
                None => return Ok(Restore::NoneFound(short)),
                _ => return Ok(Restore::Short(short)),
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let staged = path.with_extension("from-backup");
            let _ = std::fs::remove_file(&staged);
            let done = restore::restore(&b.store, &catalog, &plan, &staged, key).await?;
            std::fs::rename(&staged, &path)?;
            Ok::<_, anyhow::Error>(Restore::Done(done, short))
        });
        match restored {
            Ok(Restore::Done(r, short)) if !short.is_empty() => {
                tracing::warn!(%org, generation = r.generation, lsn = r.lsn,
                    time = %crate::backup::format_time(r.time_ms), %short,
                    "restored an older point than is known, as an operator accepted");
                Ok(true)
            }
            Ok(Restore::Done(r, _)) => {
                tracing::info!(%org, generation = r.generation, lsn = r.lsn, time = %crate::backup::format_time(r.time_ms),
                    "restored tenant from backup");
                Ok(true)
            }
            Ok(Restore::Nothing) => Ok(false),
            // The way out first: the control plane keeps the start of a long message.
            Ok(Restore::Short(short)) => Err(HemvistError::unavailable(format!(
                "org {org} has no local file, and its backups do not reach the newest position \
                 known, so no new history is started over the gap (to take the older point: \
                 `hemvist orgs rebuild {org} --accept-older`, audited); {short}"
            ))),
            // Nothing an operator can accept either: never an empty tenant for a known org.
            Ok(Restore::NoneFound(short)) => Err(HemvistError::unavailable(format!(
                "org {org} has backups, but this node has no file of it and finds none in {}: \
                 refusing to create an empty tenant (is backup.url right?); {short}",
                b.config.url
            ))),
            Err(e) => Err(HemvistError::unavailable(format!(
                "org {org} has no local file and its backup could not be restored: {e:#}"
            ))),
        }
    }

    /// Stops hosting an org at `generation` or older; its files go to `trash/`, not away.
    pub fn drop_tenant(&self, org: &OrgId, generation: Generation) -> Result<(), HemvistError> {
        let Some(h) = self.hosted.hosted(org) else {
            return Ok(());
        };
        if h.generation > generation {
            return Ok(());
        }
        if let Some(b) = &self.backup {
            // What it shipped stays findable (indexed) before it is forgotten; a failure here
            // fails the drop, which is asked again.
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|_| HemvistError::internal("dropping a tenant needs the runtime"))?;
            handle.block_on(b.index_org(org))?;
        }
        self.hosted.remove_hosted(org)?;
        if let Some(b) = &self.backup {
            b.forget(org)?;
        }
        let label = format!("g{}-{}", h.generation.get(), now_ms());
        let moved = self.tenants.retire(org, &label)?;
        tracing::info!(%org, generation = %h.generation, to = ?moved, "dropped tenant");
        Ok(())
    }
}

/// How a rebuild from backups went.
enum Restore {
    Done(restore::Restored, restore::Shortfall),
    Nothing,
    /// Refused: it would fall short.
    Short(restore::Shortfall),
    /// Refused: backups are known to exist, and this node's store shows none at all.
    NoneFound(restore::Shortfall),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::WriteGate;
    use crate::search::DataVersions;
    use crate::writes::Writer;
    use hemvist_proto::NodeId;
    use std::time::{Duration, Instant};

    /// A node's hosting and write path over a folder, without backups.
    struct Parts {
        hosting: Hosting,
        writer: Writer,
        gate: Arc<WriteGate>,
        state: Arc<NodeState>,
        tenants: Arc<TenantStore>,
    }

    fn parts(dir: &std::path::Path) -> Parts {
        let state = Arc::new(NodeState::open(&dir.join("node.db")).unwrap());
        let tenants = Arc::new(TenantStore::new(dir, 2).unwrap());
        let gate = Arc::new(WriteGate::new(state.clone()));
        let versions = Arc::new(DataVersions::default());
        Parts {
            hosting: Hosting::new(
                RegionId::parse("eu-north").unwrap(),
                tenants.clone(),
                state.clone(),
                None,
            ),
            writer: Writer::new(tenants.clone(), state.clone(), gate.clone(), versions, None),
            gate,
            state,
            tenants,
        }
    }

    fn req(org: &str, generation: u64, allowed: &[&str]) -> HostRequest {
        HostRequest {
            org: OrgId::parse(org).unwrap(),
            generation: Generation::new(generation).unwrap(),
            name: org.into(),
            allowed_regions: allowed.iter().map(|s| s.to_string()).collect(),
            sync: false,
            data_key: None,
            expect_backup: false,
            moved_here: false,
            schema: Schema::builtin(),
        }
    }

    fn insert(p: &Parts, org: &OrgId) -> Result<usize, HemvistError> {
        p.writer.write(org, |tx| {
            tx.execute(
                "INSERT INTO contacts (name, created_ms, updated_ms) VALUES ('Åsa', 0, 0)",
                [],
            )
        })
    }

    #[test]
    fn writes_need_the_current_generation_and_a_live_lease() {
        let dir = tempfile::tempdir().unwrap();
        let n = parts(dir.path());
        let org = OrgId::parse("acme").unwrap();
        n.hosting.host(&req("acme", 3, &["eu-north"])).unwrap();

        let err = insert(&n, &org).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable, "no lease yet: {err}");
        n.gate.lease.renew(Instant::now(), Duration::from_secs(5));
        assert_eq!(insert(&n, &org).unwrap(), 1);

        // An expired lease pauses writes again.
        let dir2 = tempfile::tempdir().unwrap();
        let m = parts(dir2.path());
        m.hosting.host(&req("acme", 3, &["eu-north"])).unwrap();
        m.gate.lease.renew(Instant::now(), Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(insert(&m, &org).unwrap_err().kind, ErrorKind::Unavailable);

        // Once the node learns a newer generation lives elsewhere, it is fenced.
        n.state
            .apply_placements(
                false,
                vec![(
                    org.clone(),
                    crate::state::Placement {
                        region: RegionId::parse("us-east").unwrap(),
                        node_id: NodeId::parse("us-east-1").unwrap(),
                        node_url: "http://127.0.0.1:10".into(),
                        generation: Generation::new(4).unwrap(),
                    },
                )],
                vec![],
            )
            .unwrap();
        assert_eq!(insert(&n, &org).unwrap_err().kind, ErrorKind::Fenced);
        // And an older grant can never take the org back.
        assert_eq!(
            n.hosting
                .host(&req("acme", 2, &["eu-north"]))
                .unwrap_err()
                .kind,
            ErrorKind::Fenced
        );
    }

    #[test]
    fn a_write_that_waited_while_its_org_was_hosted_anew_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let n = parts(dir.path());
        let org = OrgId::parse("acme").unwrap();
        n.hosting.host(&req("acme", 1, &["eu-north"])).unwrap();
        n.gate.lease.renew(Instant::now(), Duration::from_secs(60));
        // Holding the tenant's writer, as a rollback replacing its file does, until the org
        // is hosted at generation 2.
        let (tenants, state, org2) = (n.tenants.clone(), n.state.clone(), org.clone());
        let (held, waiting) = std::sync::mpsc::channel();
        let rehost = std::thread::spawn(move || {
            tenants
                .with_writer(&org2, |_| {
                    held.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(300));
                    let mut h = state.hosted(&org2).unwrap();
                    h.generation = Generation::new(2).unwrap();
                    state.set_hosted(&org2, &h, 0)
                })
                .unwrap();
        });
        waiting.recv().unwrap();
        let e = insert(&n, &org).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
        assert!(e.message.contains("hosted again"), "{e}");
        rehost.join().unwrap();
        assert_eq!(insert(&n, &org).unwrap(), 1, "at the new generation");
    }

    #[test]
    fn a_rollback_this_node_cannot_do_is_refused_and_changes_nothing() {
        use crate::migrate::RestorePoint;
        let dir = tempfile::tempdir().unwrap();
        let n = parts(dir.path());
        let org = OrgId::parse("acme").unwrap();
        n.hosting.host(&req("acme", 1, &["eu-north"])).unwrap();
        n.gate.lease.renew(Instant::now(), Duration::from_secs(60));
        insert(&n, &org).unwrap();
        let point = |generation| RestorePoint {
            generation,
            lsn: 7,
            ms: 1,
        };
        let refused = |generation, to: RestorePoint, allowed: &[&str]| {
            n.hosting
                .roll_back(&req("acme", generation, allowed), &to)
                .unwrap_err()
        };
        // No backups to restore from.
        let e = refused(2, point(1), &["eu-north"]);
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        assert!(e.message.contains("no [backup]"), "{e}");
        // A restore point that is not older than the generation it would be hosted under.
        for (generation, to) in [(2, 0), (2, 2), (1, 1)] {
            let e = refused(generation, point(to), &["eu-north"]);
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{generation} {to}: {e}");
        }
        assert_eq!(
            refused(2, point(1), &["us-east"]).kind,
            ErrorKind::Residency
        );
        // Hosted at the generation already, and not by this rollback: no answer of the file.
        n.hosting.host(&req("acme", 2, &["eu-north"])).unwrap();
        let e = refused(2, point(1), &["eu-north"]);
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
        assert!(e.message.contains("not as its rollback"), "{e}");
        assert_eq!(n.state.hosted(&org).unwrap().generation.get(), 2);
        let count: i64 = n
            .tenants
            .read(&org, |c| {
                c.query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
            })
            .unwrap();
        assert_eq!(count, 1);
        assert!(!dir.path().join("trash").exists());
    }

    #[test]
    fn residency_is_refused_by_the_node_too_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let n = parts(dir.path());
        for allowed in [&["us-east"][..], &[][..]] {
            let err = n.hosting.host(&req("yankee", 1, allowed)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Residency);
        }
        let org = OrgId::parse("yankee").unwrap();
        assert!(!n.tenants.path(&org).exists());
        assert!(n.state.hosted(&org).is_none());
    }

    #[test]
    fn hosting_is_idempotent_and_dropping_keeps_the_file_in_trash() {
        let dir = tempfile::tempdir().unwrap();
        let n = parts(dir.path());
        let org = OrgId::parse("acme").unwrap();
        n.hosting.host(&req("acme", 1, &["eu-north"])).unwrap();
        n.gate.lease.renew(Instant::now(), Duration::from_secs(5));
        insert(&n, &org).unwrap();
        let again = n.hosting.host(&req("acme", 1, &["eu-north"])).unwrap();
        assert_eq!(again.schema_version, Schema::builtin().version());
        assert_eq!(again.schema_fingerprint, Schema::builtin().fingerprint());
        let count: i64 = n
            .tenants
            .read(&org, |c| {
                c.query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
            })
            .unwrap();
        assert_eq!(count, 1, "hosting again kept the data");

        // A drop for an older generation than the one held is ignored.
        n.hosting.host(&req("acme", 2, &["eu-north"])).unwrap();
        n.hosting
            .drop_tenant(&org, Generation::new(1).unwrap())
            .unwrap();
        assert!(n.state.hosted(&org).is_some());
        n.hosting
            .drop_tenant(&org, Generation::new(2).unwrap())
            .unwrap();
        assert!(n.state.hosted(&org).is_none());
        assert!(!n.tenants.path(&org).exists());
        let trash: Vec<_> = std::fs::read_dir(dir.path().join("trash"))
            .unwrap()
            .collect();
        assert!(
            !trash.is_empty(),
            "the dropped tenant's file is kept in trash/"
        );
    }
}
