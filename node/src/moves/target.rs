//! A move, on its target: the org's backups are copied from the source (through the source
//! node, see `remote`) into a staging file beside where the tenant will live, then tailed; when
//! the source is fenced, the copy is finished at exactly the source's final position, verified,
//! and put in place, unhosted, until the control plane switches the org here and sends `host`.
//!
//! Keeps true: nothing is served from a copy; a copy that cannot reach the final position
//! exactly is an error (the move rolls back), never a shorter database; the staging file and its
//! position (`{org}.moving`, `{org}.moving.json`) survive a restart, so a copy resumes where it
//! stood; a rolled-back copy leaves nothing behind but the trash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hemvist_proto::{DataKey, Generation, HemvistError, OrgId};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::remote::SourceObjects;
use crate::backup::restore::{self, Catalog, SegmentError, WireCatalog};
use crate::clock::now_ms;
use crate::failpoints;
use crate::state::NodeState;
use crate::tenants::TenantStore;

/// How often a copy looks for what the source shipped since.
const TAIL_EVERY: Duration = Duration::from_millis(200);
/// A copy failing this long without a good round stops (a `MoveIn` starts it again).
const GIVE_UP_MS: i64 = 10 * 60 * 1000;
/// A staged copy larger than this is checked with `quick_check` when finished (the full
/// `integrity_check` ran when it was first restored, and every segment since is verified).
const FULL_CHECK_BYTES: u64 = 64 * 1024 * 1024;

/// Where a copy stands, as the control plane hears it.
#[derive(Debug, Clone)]
pub struct Progress {
    pub operation: String,
    pub org: OrgId,
    /// "copying", "caught_up" or "failed".
    pub state: &'static str,
    pub lsn: u64,
    pub bytes: u64,
    pub error: Option<HemvistError>,
}

/// The staged copy's position, persisted beside it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Staged {
    operation: String,
    generation: u64,
    lsn: u64,
    /// When the last object applied was shipped: a catch-up asks for what came after.
    #[serde(default)]
    since_ms: i64,
    bytes: u64,
}

/// What a move asks of its target.
#[derive(Clone)]
pub struct CopyRequest {
    pub operation: String,
    pub org: OrgId,
    pub generation: Generation,
    pub source_url: String,
    pub secret: String,
    pub data_key: DataKey,
}

impl std::fmt::Debug for CopyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CopyRequest({}, {}, ..)", self.operation, self.org)
    }
}

struct Copy {
    req: Mutex<CopyRequest>,
    /// One catch-up at a time: the tail and `finish` share the staging file.
    staging: tokio::sync::Mutex<()>,
    stop: CancellationToken,
}

/// The moves this node is the target of.
pub struct Incoming {
    tenants: Arc<TenantStore>,
    state: Arc<NodeState>,
    client: reqwest::Client,
    copies: Mutex<HashMap<OrgId, Arc<Copy>>>,
    progress: Mutex<HashMap<String, Progress>>,
    /// Woken when there is progress to report.
    pub reported: tokio::sync::Notify,
}

fn staging_path(tenant: &Path) -> PathBuf {
    tenant.with_extension("moving")
}

fn marker_path(tenant: &Path, what: &str) -> PathBuf {
    tenant.with_extension(format!("{what}.json"))
}

fn read_marker(path: &Path) -> Option<Staged> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_marker(path: &Path, staged: &Staged) -> Result<(), HemvistError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec(staged).unwrap_or_default())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| HemvistError::internal(format!("write {}: {e}", path.display())))
}

/// Renames the finished copy into place and makes the rename durable (the folder is synced).
fn put_in_place(staging: &Path, tenant: &Path) -> Result<(), HemvistError> {
    std::fs::rename(staging, tenant).map_err(unavailable)?;
    if let Some(dir) = tenant.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(unavailable)?;
    }
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::unavailable(format!("{e:#}"))
}

/// The source's catalog of the moved org (`since_ms`: only what a copy staged up to then needs).
async fn source_catalog(
    source: &SourceObjects,
    org: &OrgId,
    since_ms: Option<i64>,
) -> Result<Catalog, HemvistError> {
    let path = match since_ms {
        Some(t) => format!("catalog?since_ms={t}"),
        None => "catalog".to_string(),
    };
    let wire: WireCatalog =
        serde_json::from_value(source.get_json(&path).await.map_err(unavailable)?)
            .map_err(|e| unavailable(format!("the move source's catalog: {e}")))?;
    Catalog::from_wire(org, wire).map_err(unavailable)
}

/// The newest position any object of `generation` reaches.
fn newest_end(catalog: &Catalog, generation: u64) -> u64 {
    catalog
        .objects
        .iter()
        .filter(|o| o.0.generation == generation)
        .map(|o| o.0.end)
        .max()
        .unwrap_or(0)
}

impl Incoming {
    pub fn new(
        tenants: Arc<TenantStore>,
        state: Arc<NodeState>,
        client: reqwest::Client,
    ) -> Incoming {
        Incoming {
            tenants,
            state,
            client,
            copies: Mutex::default(),
            progress: Mutex::default(),
            reported: tokio::sync::Notify::new(),
        }
    }

    /// Starts (or, with a new secret, refreshes) the copy; it runs on its own task.
    pub fn start(self: &Arc<Self>, req: CopyRequest) -> Result<(), HemvistError> {
        if self.state.hosted(&req.org).is_some() {
            return Err(HemvistError::conflict(format!(
                "org {} is already hosted here",
                req.org
            )));
        }
        let tenant = self.tenants.path(&req.org);
        if read_marker(&marker_path(&tenant, "moved"))
            .is_some_and(|m| m.operation == req.operation && tenant.is_file())
        {
            // Finished already (the ack was lost): nothing more to copy.
            return Ok(());
        }
        let mut copies = self.copies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = copies.get(&req.org) {
            let mut current = c.req.lock().unwrap_or_else(|p| p.into_inner());
            if current.operation == req.operation && !c.stop.is_cancelled() {
                *current = req;
                return Ok(());
            }
            c.stop.cancel();
        }
        let copy = Arc::new(Copy {
            req: Mutex::new(req.clone()),
            staging: tokio::sync::Mutex::new(()),
            stop: CancellationToken::new(),
        });
        copies.insert(req.org.clone(), copy.clone());
        let me = self.clone();
        tokio::runtime::Handle::try_current()
            .map_err(|_| HemvistError::internal("a copy needs the runtime"))?
            .spawn(async move { me.tail(copy).await });
        tracing::info!(org = %req.org, operation = %req.operation, source = %req.source_url, "copying a moving org");
        Ok(())
    }

    /// Progress not yet reported, by operation.
    pub fn take_progress(&self) -> Vec<Progress> {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect()
    }

    fn report(&self, p: Progress) {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(p.operation.clone(), p);
        self.reported.notify_one();
    }

    async fn tail(&self, copy: Arc<Copy>) {
        let mut last_error: Option<String> = None;
        let mut failing_since: Option<i64> = None;
        loop {
            let req = copy.req.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let round = {
                let _g = copy.staging.lock().await;
                if copy.stop.is_cancelled() {
                    return;
                }
                self.catch_up(&req, false).await
            };
            match round {
                Ok((staged, newest)) => {
                    last_error = None;
                    failing_since = None;
                    self.report(Progress {
                        operation: req.operation.clone(),
                        org: req.org.clone(),
                        state: if staged.lsn >= newest {
                            "caught_up"
                        } else {
                            "copying"
                        },
                        lsn: staged.lsn,
                        bytes: staged.bytes,
                        error: None,
                    });
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert(now_ms());
                    if now_ms() - since > GIVE_UP_MS {
                        // The move is long over (or its control plane forgot it): stop asking.
                        tracing::warn!(org = %req.org, operation = %req.operation, error = %e,
                            "move's copy: failing for 10 minutes; giving up until asked again");
                        copy.stop.cancel();
                        return;
                    }
                    if last_error.as_deref() != Some(e.message.as_str()) {
                        tracing::warn!(org = %req.org, operation = %req.operation, error = %e, "move's copy: will try again");
                    }
                    last_error = Some(e.message.clone());
                    self.report(Progress {
                        operation: req.operation.clone(),
                        org: req.org.clone(),
                        state: "failed",
                        lsn: 0,
                        bytes: 0,
                        error: Some(e),
                    });
                }
            }
            tokio::select! {
                _ = copy.stop.cancelled() => return,
                _ = tokio::time::sleep(TAIL_EVERY) => {}
            }
        }
    }

    /// One round: the source's catalog, then whatever takes the staged copy to its newest
    /// point (a full restore if nothing usable is staged, else the segments after it). Returns
    /// the staged position and the newest one the source has.
    async fn catch_up(&self, req: &CopyRequest, full: bool) -> Result<(Staged, u64), HemvistError> {
        let source = SourceObjects::new(
            self.client.clone(),
            &req.source_url,
            req.org.as_str(),
            req.secret.clone(),
        );
        let tenant = self.tenants.path(&req.org);
        let staging = staging_path(&tenant);
        let marker = marker_path(&tenant, "moving");
        let generation = req.generation.get();
        let staged = read_marker(&marker)
            .filter(|s| s.operation == req.operation && s.generation == generation)
            .filter(|_| staging.is_file());
        // With something staged, only what came since; the whole catalog if that does not
        // reach the newest point the source has.
        let since = staged.as_ref().map(|s| s.since_ms).filter(|_| !full);
        let mut catalog = source_catalog(&source, &req.org, since).await?;
        if let Some(s) = &staged {
            let reached = catalog
                .chain(generation, s.lsn, i64::MAX, &[])
                .last()
                .map_or(s.lsn, |l| l.0.end);
            if reached < newest_end(&catalog, generation) {
                catalog = source_catalog(&source, &req.org, None).await?;
            }
        }
        let Some(newest) = catalog.plan_in(generation) else {
            return Err(HemvistError::unavailable(format!(
                "the source has no backup of {} at {} yet",
                req.org, req.generation
            )));
        };
        let newest_lsn = newest_end(&catalog, generation);
        let store: Arc<dyn ObjectStore> = Arc::new(source);
        if let Some(dir) = tenant.parent() {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let key = Some(&req.data_key);
        let staged = match staged {
            Some(s) if s.lsn >= newest_lsn => s,
            Some(s) if !catalog.chain(generation, s.lsn, i64::MAX, &[]).is_empty() => {
                let segments = catalog.chain(generation, s.lsn, i64::MAX, &[]);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&staging)
                    .map_err(unavailable)?;
                let downloaded = restore::write_segments(&store, &catalog, &segments, &file, key)
                    .await
                    .map_err(|e| match e {
                        SegmentError::Damaged { index, reason } => {
                            HemvistError::unavailable(format!(
                                "the source's backup object {} is unusable: {reason}",
                                segments[index].0.key()
                            ))
                        }
                        SegmentError::Other(e) => unavailable(e),
                    })?;
                file.sync_all().map_err(unavailable)?;
                let last = segments.last().map(|l| &l.0);
                let s = Staged {
                    lsn: last.map_or(s.lsn, |l| l.end),
                    since_ms: last.map_or(s.since_ms, |l| l.time_ms),
                    bytes: s.bytes + downloaded,
                    ..s
                };
                write_marker(&marker, &s)?;
                s
            }
            previous => {
                // Nothing staged, or the source moved past what is staged by a snapshot.
                let _ = std::fs::remove_file(&staging);
                let restored = restore::restore(&store, &catalog, &newest, &staging, key)
                    .await
                    .map_err(unavailable)?;
                tracing::info!(
                    org = %req.org,
                    downloaded = restored.downloaded,
                    fetch_and_apply_ms = restored.fetch_and_apply.as_millis() as u64,
                    integrity_check_ms = restored.integrity_check.as_millis() as u64,
                    "copy staged from the source's backups"
                );
                failpoints::check("node.move.copied")?;
                let s = Staged {
                    operation: req.operation.clone(),
                    generation,
                    lsn: restored.lsn,
                    since_ms: restored.time_ms,
                    bytes: previous.map_or(0, |p| p.bytes) + restored.downloaded,
                };
                write_marker(&marker, &s)?;
                s
            }
        };
        Ok((staged, newest_lsn))
    }

    /// Takes the copy to exactly `lsn`, verifies it and puts it where the tenant lives,
    /// unhosted. Asking again after it succeeded answers the same.
    pub async fn finish(
        &self,
        operation: &str,
        org: &OrgId,
        lsn: u64,
    ) -> Result<(u64, u64), HemvistError> {
        let tenant = self.tenants.path(org);
        let moved = marker_path(&tenant, "moved");
        if let Some(done) = read_marker(&moved).filter(|m| m.operation == operation && m.lsn == lsn)
        {
            // Finished before (the ack was lost), or stopped between the marker and the rename.
            let staging = staging_path(&tenant);
            if !tenant.is_file() && staging.is_file() {
                put_in_place(&staging, &tenant)?;
            }
            if tenant.is_file() {
                self.state.set_arriving(org, true);
                return Ok((done.lsn, done.bytes));
            }
        }
        let copy = self
            .copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(org)
            .cloned()
            .ok_or_else(|| {
                HemvistError::unavailable(format!("no copy of {org} is under way here"))
            })?;
        let req = copy.req.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if req.operation != operation {
            return Err(HemvistError::conflict(format!(
                "the copy of {org} here belongs to {}, not {operation}",
                req.operation
            )));
        }
        let _g = copy.staging.lock().await;
        let mut staged = None;
        for attempt in 0..3 {
            // Past the first try, the whole catalog: what came since may hide behind a clock.
            let (s, newest) = self.catch_up(&req, attempt > 0).await?;
            if s.lsn > lsn || newest > lsn {
                return Err(HemvistError::internal(format!(
                    "the source of {org} has backups past its final position {lsn} \
                     (staged {}, newest {newest}): refusing to finish",
                    s.lsn
                )));
            }
            if s.lsn == lsn {
                staged = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Some(staged) = staged else {
            return Err(HemvistError::unavailable(format!(
                "the copy of {org} cannot reach the source's final position {lsn}"
            )));
        };
        failpoints::check("node.move.finish")?;
        let staging = staging_path(&tenant);
        let verdict = tokio::task::spawn_blocking({
            let staging = staging.clone();
            move || -> Result<String, HemvistError> {
                let big =
                    std::fs::metadata(&staging).map(|m| m.len()).unwrap_or(0) > FULL_CHECK_BYTES;
                let conn = rusqlite::Connection::open_with_flags(
                    &staging,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .map_err(unavailable)?;
                let pragma = if big {
                    "PRAGMA quick_check"
                } else {
                    "PRAGMA integrity_check"
                };
                conn.query_row(pragma, [], |r| r.get(0))
                    .map_err(unavailable)
            }
        })
        .await
        .map_err(|_| HemvistError::internal("the check task failed"))??;
        if verdict != "ok" {
            return Err(HemvistError::internal(format!(
                "the copy of {org} at {lsn} fails its check: {verdict}"
            )));
        }
        if tenant.exists() {
            if self.state.hosted(org).is_some() {
                return Err(HemvistError::conflict(format!(
                    "org {org} is hosted here already; the copy is not put in its place"
                )));
            }
            // An unhosted file where the tenant would live is a leftover (a drop or a rollback
            // cut short): nothing serves it. It goes to the trash, not away.
            let label = format!("leftover-{}", now_ms());
            let kept = self.tenants.retire(org, &label)?;
            tracing::warn!(%org, to = ?kept, "a leftover file was where the copy goes; moved to trash");
        }
        // The marker first: a stop between it and the rename is finished by the next ask, and
        // a rollback knows the file is this move's.
        write_marker(&moved, &staged)?;
        put_in_place(&staging, &tenant)?;
        let _ = std::fs::remove_file(marker_path(&tenant, "moving"));
        copy.stop.cancel();
        self.state.set_arriving(org, true);
        failpoints::check("node.move.finished")?;
        tracing::info!(%org, operation, lsn, bytes = staged.bytes, "copy finished at the source's final position");
        Ok((staged.lsn, staged.bytes))
    }

    /// The move is over here. Rolled back: what was copied goes (a file put in place but never
    /// hosted goes to the trash). Done: only the bookkeeping goes.
    pub fn end(&self, org: &OrgId, rolled_back: bool) -> Result<(), HemvistError> {
        let copy = self
            .copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(org);
        self.state.set_arriving(org, false);
        // A round under way finishes before its files go (it would write them again).
        let _round = copy.as_ref().map(|c| {
            c.stop.cancel();
            c.staging.blocking_lock()
        });
        let tenant = self.tenants.path(org);
        let _ = std::fs::remove_file(staging_path(&tenant));
        let _ = std::fs::remove_file(marker_path(&tenant, "moving"));
        let moved = marker_path(&tenant, "moved");
        if rolled_back && moved.exists() && self.state.hosted(org).is_none() {
            let label = format!("rolled-back-{}", now_ms());
            self.tenants.retire(org, &label)?;
            tracing::info!(%org, "rolled-back copy moved to trash");
        }
        let _ = std::fs::remove_file(moved);
        Ok(())
    }
}
