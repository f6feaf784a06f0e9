//! The control plane's store: embedded SQLite, schema versioned, migrations embedded.
//!
//! What is persisted, and why:
//! - `regions`: a copy of the configured regions, so history (orgs, audit) can be read against
//!   what the regions were when it was written.
//! - `nodes`: every node that ever registered (region, URL, capacity, last heartbeat), so
//!   placement survives a restart and `hemvist nodes` can show a node that went away.
//! - `orgs` + `placements`: the desired state. Which node hosts an org at which generation; the
//!   generation counter in `meta` only ever grows, so a generation is never issued twice, even
//!   across restarts.
//! - `commands`: every command sent to a node, with its state (`pending`, `sent`, `done`,
//!   `retry` after a failure that retrying can fix, `failed` after one it cannot), so that after
//!   a crash of either side the reconciler re-drives exactly what is unfinished, under the same
//!   ids.
//! - `observed`: what each node last said it hosts, so `orgs show` can tell desired from actual.
//! - `audit`: an append-only, hash-chained log of every change of where data lives.
//!
//! Leases are not persisted: after a restart every node is unhealthy until it heartbeats again.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hemvist_proto::{Generation, HemvistError, NodeId, OrgId, RegionId};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::RegionConfig;
use crate::residency::ResidencyPolicy;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta (key, value) VALUES ('next_generation', 1);
CREATE TABLE regions (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, jurisdiction TEXT NOT NULL,
  countries TEXT NOT NULL, object_store TEXT NOT NULL
);
CREATE TABLE nodes (
  id TEXT PRIMARY KEY, region TEXT NOT NULL, public_url TEXT NOT NULL,
  capacity INTEGER NOT NULL, version TEXT NOT NULL,
  first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL
);
CREATE TABLE orgs (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, home_region TEXT NOT NULL,
  residency TEXT NOT NULL, placement_reason TEXT NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE placements (
  org TEXT PRIMARY KEY REFERENCES orgs(id), node_id TEXT NOT NULL,
  generation INTEGER NOT NULL, updated_ms INTEGER NOT NULL
);
CREATE INDEX placements_by_node ON placements(node_id);
CREATE TABLE commands (
  id TEXT PRIMARY KEY, node_id TEXT NOT NULL, org TEXT NOT NULL, kind TEXT NOT NULL,
  generation INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  error TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, payload TEXT
);
CREATE INDEX commands_open ON commands(state, node_id);
CREATE TABLE observed (
  node_id TEXT NOT NULL, org TEXT NOT NULL, generation INTEGER NOT NULL,
  schema_version INTEGER NOT NULL, PRIMARY KEY (node_id, org)
);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  org TEXT, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
"#,
    // Durability per org: `async` (lag up to the replication interval) or `sync`.
    r#"
ALTER TABLE orgs ADD COLUMN durability TEXT NOT NULL DEFAULT 'async';
"#,
    // Per-org data keys (hex): nodes seal the org's backups with it; NULL once destroyed.
    r#"
ALTER TABLE orgs ADD COLUMN data_key TEXT;
"#,
];

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub region: RegionId,
    pub public_url: String,
    pub capacity: u64,
    pub version: String,
    pub last_seen_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrgRecord {
    pub id: OrgId,
    pub name: String,
    pub home_region: RegionId,
    pub residency: ResidencyPolicy,
    pub placement_reason: String,
    pub created_ms: i64,
    pub node_id: NodeId,
    pub generation: Generation,
    pub durability: String,
    /// Never serialized into views; sent to the org's node and to audited key requests only.
    pub data_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObservedRecord {
    pub node_id: NodeId,
    pub generation: Generation,
    pub schema_version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Host,
    Drop,
    AddUser,
}

impl CommandKind {
    fn as_str(self) -> &'static str {
        match self {
            CommandKind::Host => "host",
            CommandKind::Drop => "drop",
            CommandKind::AddUser => "add_user",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "drop" => CommandKind::Drop,
            "add_user" => CommandKind::AddUser,
            _ => CommandKind::Host,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CommandRecord {
    pub id: String,
    pub node_id: NodeId,
    pub org: OrgId,
    pub kind: CommandKind,
    pub generation: Generation,
    pub state: String,
    pub attempts: u32,
    pub error: Option<String>,
    pub updated_ms: i64,
    /// What the command carries beyond its kind (JSON); never shown by the API, as it may hold
    /// a password hash.
    #[serde(skip)]
    pub payload: Option<String>,
}

pub struct NewOrg {
    pub id: OrgId,
    pub name: String,
    pub home_region: RegionId,
    pub residency: ResidencyPolicy,
    pub placement_reason: String,
    pub node_id: NodeId,
    pub durability: String,
    pub data_key: String,
}

pub enum Created {
    New(OrgRecord),
    /// The same org with the same name already existed: creating it again changes nothing.
    Existing(OrgRecord),
}

pub struct Store {
    conn: Mutex<Connection>,
}

type Result<T> = std::result::Result<T, HemvistError>;

fn internal(e: impl std::fmt::Display) -> HemvistError {
    HemvistError::internal(format!("control store: {e}"))
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> anyhow::Result<()> {
        let mut conn = self.lock();
        let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if current as usize > MIGRATIONS.len() {
            anyhow::bail!(
                "control store schema version {current} is newer than this binary knows ({})",
                MIGRATIONS.len()
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)
                .with_context(|| format!("apply control store migration {}", i + 1))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn sync_regions(&self, regions: &[RegionConfig]) -> anyhow::Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for r in regions {
            tx.execute(
                "INSERT INTO regions (id, name, jurisdiction, countries, object_store)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, jurisdiction = ?3, countries = ?4,
                   object_store = ?5",
                params![
                    r.id.as_str(),
                    r.name,
                    r.jurisdiction,
                    r.countries.join(","),
                    r.object_store
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn upsert_node(&self, n: &NodeRecord) -> Result<()> {
        let now = now_ms();
        self.lock()
            .execute(
                "INSERT INTO nodes (id, region, public_url, capacity, version, first_seen_ms,
                   last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT(id) DO UPDATE SET region = ?2, public_url = ?3, capacity = ?4,
                   version = ?5, last_seen_ms = ?6",
                params![
                    n.id.as_str(),
                    n.region.as_str(),
                    n.public_url,
                    n.capacity as i64,
                    n.version,
                    now
                ],
            )
            .map_err(internal)?;
        Ok(())
    }

    pub fn node(&self, id: &NodeId) -> Result<Option<NodeRecord>> {
        Ok(self.nodes()?.into_iter().find(|n| &n.id == id))
    }

    pub fn touch_node(&self, id: &NodeId) -> Result<()> {
        self.lock()
            .execute(
                "UPDATE nodes SET last_seen_ms = ?2 WHERE id = ?1",
                params![id.as_str(), now_ms()],
            )
            .map_err(internal)?;
        Ok(())
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, region, public_url, capacity, version, last_seen_ms FROM nodes
                 ORDER BY region, id",
            )
            .map_err(internal)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(internal)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, region, public_url, capacity, version, last_seen_ms) =
                row.map_err(internal)?;
            out.push(NodeRecord {
                id: NodeId::try_from(id).map_err(internal)?,
                region: RegionId::try_from(region).map_err(internal)?,
                public_url,
                capacity: capacity.max(0) as u64,
                version,
                last_seen_ms,
            });
        }
        Ok(out)
    }

    /// Tenants placed on each node: the load placement balances.
    pub fn tenants_per_node(&self) -> Result<Vec<(NodeId, u64)>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT node_id, COUNT(*) FROM placements GROUP BY node_id")
            .map_err(internal)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(internal)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, n) = row.map_err(internal)?;
            out.push((NodeId::try_from(id).map_err(internal)?, n as u64));
        }
        Ok(out)
    }

    /// Creates the org and its first placement under a fresh generation, in one transaction,
    /// with its audit record. Creating the same org again is a no-op; a different org under the
    /// same id is a conflict.
    pub fn create_org(&self, new: &NewOrg) -> Result<Created> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(internal)?;
        if let Some(existing) = org_in(&tx, &new.id)? {
            let same = existing.name == new.name
                && (existing.residency == new.residency || new.residency.is_unrestricted());
            return if same {
                Ok(Created::Existing(existing))
            } else {
                Err(HemvistError::conflict(format!(
                    "org {} already exists as \"{}\" in {} with residency {}",
                    existing.id,
                    existing.name,
                    existing.home_region,
                    existing.residency.describe()
                )))
            };
        }
        let generation = next_generation(&tx)?;
        let now = now_ms();
        let residency = serde_json::to_string(&new.residency).map_err(internal)?;
        tx.execute(
            "INSERT INTO orgs (id, name, home_region, residency, placement_reason, created_ms, durability, data_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                new.id.as_str(),
                new.name,
                new.home_region.as_str(),
                residency,
                new.placement_reason,
                now,
                new.durability,
                new.data_key
            ],
        )
        .map_err(internal)?;
        tx.execute(
            "INSERT INTO placements (org, node_id, generation, updated_ms) VALUES (?1, ?2, ?3, ?4)",
            params![
                new.id.as_str(),
                new.node_id.as_str(),
                generation.get() as i64,
                now
            ],
        )
        .map_err(internal)?;
        append_audit(
            &tx,
            "control",
            "org.placed",
            Some(&new.id),
            &serde_json::json!({
                "region": new.home_region,
                "node": new.node_id,
                "generation": generation.get(),
                "residency": new.residency,
                "reason": new.placement_reason,
            }),
        )?;
        let created = org_in(&tx, &new.id)?.ok_or_else(|| internal("org vanished"))?;
        tx.commit().map_err(internal)?;
        Ok(Created::New(created))
    }

    pub fn org(&self, id: &OrgId) -> Result<Option<OrgRecord>> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(internal)?;
        org_in(&tx, id)
    }

    pub fn orgs(&self) -> Result<Vec<OrgRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!("{ORG_SELECT} ORDER BY o.id"))
            .map_err(internal)?;
        let rows = stmt.query_map([], org_row).map_err(internal)?;
        rows.map(|r| r.map_err(internal).and_then(check_org))
            .collect()
    }

    pub fn orgs_on_node(&self, node: &NodeId) -> Result<Vec<OrgRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!("{ORG_SELECT} WHERE p.node_id = ?1 ORDER BY o.id"))
            .map_err(internal)?;
        let rows = stmt.query_map([node.as_str()], org_row).map_err(internal)?;
        rows.map(|r| r.map_err(internal).and_then(check_org))
            .collect()
    }

    /// Records a command unless one with the same id exists; returns its current record.
    pub fn ensure_command(
        &self,
        node: &NodeId,
        org: &OrgId,
        kind: CommandKind,
        generation: Generation,
    ) -> Result<CommandRecord> {
        let id = format!("{}-{}-{}-{}", kind.as_str(), org, generation.get(), node);
        let now = now_ms();
        let conn = self.lock();
        conn.execute(
            "INSERT OR IGNORE INTO commands (id, node_id, org, kind, generation, state, created_ms,
               updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6)",
            params![
                id,
                node.as_str(),
                org.as_str(),
                kind.as_str(),
                generation.get() as i64,
                now
            ],
        )
        .map_err(internal)?;
        command_by_id(&conn, &id)?.ok_or_else(|| internal("command vanished"))
    }

    /// Records a one-off command with a payload under a caller-chosen stable id (so asking
    /// twice is one command); returns its current record.
    pub fn ensure_payload_command(
        &self,
        id: &str,
        node: &NodeId,
        org: &OrgId,
        kind: CommandKind,
        generation: Generation,
        payload: &str,
    ) -> Result<CommandRecord> {
        let now = now_ms();
        let conn = self.lock();
        conn.execute(
            "INSERT OR IGNORE INTO commands (id, node_id, org, kind, generation, state, created_ms,
               updated_ms, payload) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6, ?7)",
            params![
                id,
                node.as_str(),
                org.as_str(),
                kind.as_str(),
                generation.get() as i64,
                now,
                payload
            ],
        )
        .map_err(internal)?;
        command_by_id(&conn, id)?.ok_or_else(|| internal("command vanished"))
    }

    pub fn command(&self, id: &str) -> Result<Option<CommandRecord>> {
        command_by_id(&self.lock(), id)
    }

    pub fn mark_command_sent(&self, id: &str) -> Result<()> {
        self.lock()
            .execute(
                "UPDATE commands SET attempts = attempts + 1, updated_ms = ?2,
                   state = CASE WHEN state = 'pending' THEN 'sent' ELSE state END
                 WHERE id = ?1",
                params![id, now_ms()],
            )
            .map_err(internal)?;
        Ok(())
    }

    /// Applies a node's ack: the command is done, or failed with the node's reason.
    pub fn ack_command(
        &self,
        node: &NodeId,
        id: &str,
        error: Option<(&str, bool)>,
    ) -> Result<Option<CommandRecord>> {
        let conn = self.lock();
        let (state, err) = match error {
            None => ("done", None),
            Some((e, true)) => ("retry", Some(e)),
            Some((e, false)) => ("failed", Some(e)),
        };
        conn.execute(
            "UPDATE commands SET state = ?3, error = ?4, updated_ms = ?5
             WHERE id = ?1 AND node_id = ?2",
            params![id, node.as_str(), state, err, now_ms()],
        )
        .map_err(internal)?;
        command_by_id(&conn, id)
    }

    pub fn open_commands(&self, node: &NodeId) -> Result<Vec<CommandRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id FROM commands WHERE node_id = ?1 AND state IN ('pending', 'sent', 'retry')
                 ORDER BY created_ms",
            )
            .map_err(internal)?;
        let ids: Vec<String> = stmt
            .query_map([node.as_str()], |r| r.get(0))
            .map_err(internal)?
            .collect::<std::result::Result<_, _>>()
            .map_err(internal)?;
        ids.iter()
            .filter_map(|id| command_by_id(&conn, id).transpose())
            .collect()
    }

    pub fn nodes_with_open_commands(&self) -> Result<Vec<NodeId>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT DISTINCT node_id FROM commands WHERE state IN ('pending', 'sent', 'retry')",
            )
            .map_err(internal)?;
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(internal)?
            .collect::<std::result::Result<_, _>>()
            .map_err(internal)?;
        ids.into_iter()
            .map(|id| NodeId::try_from(id).map_err(internal))
            .collect()
    }

    pub fn count_orgs(&self) -> Result<u64> {
        self.lock()
            .query_row("SELECT COUNT(*) FROM orgs", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(internal)
    }

    pub fn commands_for_org(&self, org: &OrgId) -> Result<Vec<CommandRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT id FROM commands WHERE org = ?1 ORDER BY created_ms")
            .map_err(internal)?;
        let ids: Vec<String> = stmt
            .query_map([org.as_str()], |r| r.get(0))
            .map_err(internal)?
            .collect::<std::result::Result<_, _>>()
            .map_err(internal)?;
        ids.iter()
            .filter_map(|id| command_by_id(&conn, id).transpose())
            .collect()
    }

    pub fn count_open_commands(&self) -> Result<u64> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM commands WHERE state IN ('pending', 'sent', 'retry')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(internal)
    }

    /// Replaces what a node is known to host with its latest full report.
    pub fn replace_observed(
        &self,
        node: &NodeId,
        tenants: &[(OrgId, Generation, u32)],
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(internal)?;
        tx.execute("DELETE FROM observed WHERE node_id = ?1", [node.as_str()])
            .map_err(internal)?;
        for (org, generation, schema) in tenants {
            tx.execute(
                "INSERT INTO observed (node_id, org, generation, schema_version) VALUES (?1, ?2, ?3, ?4)",
                params![node.as_str(), org.as_str(), generation.get() as i64, schema],
            )
            .map_err(internal)?;
        }
        tx.commit().map_err(internal)
    }

    pub fn set_observed(
        &self,
        node: &NodeId,
        org: &OrgId,
        generation: Generation,
        schema: u32,
    ) -> Result<()> {
        self.lock()
            .execute(
                "INSERT INTO observed (node_id, org, generation, schema_version) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(node_id, org) DO UPDATE SET generation = ?3, schema_version = ?4",
                params![node.as_str(), org.as_str(), generation.get() as i64, schema],
            )
            .map_err(internal)?;
        Ok(())
    }

    pub fn remove_observed(&self, node: &NodeId, org: &OrgId) -> Result<()> {
        self.lock()
            .execute(
                "DELETE FROM observed WHERE node_id = ?1 AND org = ?2",
                params![node.as_str(), org.as_str()],
            )
            .map_err(internal)?;
        Ok(())
    }

    pub fn observed_on_node(&self, node: &NodeId) -> Result<Vec<(OrgId, Generation)>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT org, generation FROM observed WHERE node_id = ?1")
            .map_err(internal)?;
        let rows = stmt
            .query_map([node.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(internal)?;
        let mut out = Vec::new();
        for row in rows {
            let (org, g) = row.map_err(internal)?;
            out.push((
                OrgId::try_from(org).map_err(internal)?,
                Generation::new(g as u64).map_err(internal)?,
            ));
        }
        Ok(out)
    }

    pub fn observed_for_org(&self, org: &OrgId) -> Result<Vec<ObservedRecord>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT node_id, generation, schema_version FROM observed WHERE org = ?1")
            .map_err(internal)?;
        let rows = stmt
            .query_map([org.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, u32>(2)?,
                ))
            })
            .map_err(internal)?;
        let mut out = Vec::new();
        for row in rows {
            let (node, g, schema) = row.map_err(internal)?;
            out.push(ObservedRecord {
                node_id: NodeId::try_from(node).map_err(internal)?,
                generation: Generation::new(g as u64).map_err(internal)?,
                schema_version: schema,
            });
        }
        Ok(out)
    }

    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        org: Option<&OrgId>,
        detail: &serde_json::Value,
    ) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(internal)?;
        append_audit(&tx, actor, action, org, detail)?;
        tx.commit().map_err(internal)
    }

    /// Recomputes the hash chain; returns the number of records, or the first broken one.
    pub fn verify_audit(&self) -> Result<std::result::Result<u64, i64>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT seq, at_ms, actor, action, org, detail, prev_hash, hash FROM audit ORDER BY seq")
            .map_err(internal)?;
        let mut rows = stmt.query([]).map_err(internal)?;
        let mut prev = GENESIS.to_string();
        let mut n = 0;
        while let Some(r) = rows.next().map_err(internal)? {
            let seq: i64 = r.get(0).map_err(internal)?;
            let at: i64 = r.get(1).map_err(internal)?;
            let actor: String = r.get(2).map_err(internal)?;
            let action: String = r.get(3).map_err(internal)?;
            let org: Option<String> = r.get(4).map_err(internal)?;
            let detail: String = r.get(5).map_err(internal)?;
            let prev_hash: String = r.get(6).map_err(internal)?;
            let hash: String = r.get(7).map_err(internal)?;
            let want = chain_hash(&prev, seq, at, &actor, &action, org.as_deref(), &detail);
            if prev_hash != prev || hash != want {
                return Ok(Err(seq));
            }
            prev = hash;
            n += 1;
        }
        Ok(Ok(n))
    }

    pub fn audit_for_org(&self, org: &OrgId) -> Result<Vec<serde_json::Value>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT seq, at_ms, actor, action, detail FROM audit WHERE org = ?1 ORDER BY seq",
            )
            .map_err(internal)?;
        let rows = stmt
            .query_map([org.as_str()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(internal)?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, at, actor, action, detail) = row.map_err(internal)?;
            let detail: serde_json::Value =
                serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail));
            out.push(serde_json::json!({
                "seq": seq, "at_ms": at, "actor": actor, "action": action, "detail": detail
            }));
        }
        Ok(out)
    }
}

const ORG_SELECT: &str = "SELECT o.id, o.name, o.home_region, o.residency, o.placement_reason,
    o.created_ms, p.node_id, p.generation, o.durability, o.data_key FROM orgs o
    JOIN placements p ON p.org = o.id";

type OrgRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    String,
    Option<String>,
);

fn org_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OrgRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn check_org(row: OrgRow) -> Result<OrgRecord> {
    let (id, name, region, residency, reason, created_ms, node, generation, durability, data_key) =
        row;
    Ok(OrgRecord {
        id: OrgId::try_from(id).map_err(internal)?,
        name,
        home_region: RegionId::try_from(region).map_err(internal)?,
        residency: serde_json::from_str(&residency).map_err(internal)?,
        placement_reason: reason,
        created_ms,
        node_id: NodeId::try_from(node).map_err(internal)?,
        generation: Generation::new(generation as u64).map_err(internal)?,
        durability,
        data_key,
    })
}

fn org_in(tx: &Transaction<'_>, id: &OrgId) -> Result<Option<OrgRecord>> {
    tx.query_row(
        &format!("{ORG_SELECT} WHERE o.id = ?1"),
        [id.as_str()],
        org_row,
    )
    .optional()
    .map_err(internal)?
    .map(check_org)
    .transpose()
}

fn next_generation(tx: &Transaction<'_>) -> Result<Generation> {
    let n: i64 = tx
        .query_row(
            "UPDATE meta SET value = value + 1 WHERE key = 'next_generation' RETURNING value - 1",
            [],
            |r| r.get(0),
        )
        .map_err(internal)?;
    Generation::new(n as u64).map_err(internal)
}

fn command_by_id(conn: &Connection, id: &str) -> Result<Option<CommandRecord>> {
    let row = conn
        .query_row(
            "SELECT id, node_id, org, kind, generation, state, attempts, error, updated_ms, payload
             FROM commands WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, u32>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ))
            },
        )
        .optional()
        .map_err(internal)?;
    let Some((id, node, org, kind, generation, state, attempts, error, updated_ms, payload)) = row
    else {
        return Ok(None);
    };
    Ok(Some(CommandRecord {
        id,
        node_id: NodeId::try_from(node).map_err(internal)?,
        org: OrgId::try_from(org).map_err(internal)?,
        kind: CommandKind::parse(&kind),
        generation: Generation::new(generation as u64).map_err(internal)?,
        state,
        attempts,
        error,
        updated_ms,
        payload,
    }))
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn chain_hash(
    prev: &str,
    seq: i64,
    at: i64,
    actor: &str,
    action: &str,
    org: Option<&str>,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &seq.to_string(),
        &at.to_string(),
        actor,
        action,
        org.unwrap_or(""),
        detail,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn append_audit(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    org: Option<&OrgId>,
    detail: &serde_json::Value,
) -> Result<()> {
    let (seq, prev): (i64, String) = tx
        .query_row(
            "SELECT seq + 1, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(internal)?
        .unwrap_or((1, GENESIS.to_string()));
    let at = now_ms();
    let detail = detail.to_string();
    let org = org.map(OrgId::as_str);
    let hash = chain_hash(&prev, seq, at, actor, action, org, &detail);
    tx.execute(
        "INSERT INTO audit (seq, at_ms, actor, action, org, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![seq, at, actor, action, org, detail, prev, hash],
    )
    .map_err(internal)?;
    Ok(())
}
