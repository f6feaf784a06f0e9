//! What every run shares: the arguments, the working folder, the store (SeaweedFS behind the
//! counting proxy) and its one identity, and the template tenant database.
//!
//! Keeps true: both replicators reach the store only through the proxy, with the same bucket
//! and credentials; the working folder outlives every process that writes into it.

use std::path::{Path, PathBuf};

use clap::Args;
use hemvist_node::backup::store::BackupConfig;
use hemvist_node::tenants::TenantStore;
use hemvist_proto::OrgId;
use object_store::ObjectStore;

use super::proxy::Proxy;

#[derive(Args)]
pub struct ReplicationArgs {
    /// Tenant counts to measure, each with both replicators.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub tenants: Vec<usize>,
    /// Length of each phase (idle, then writes), in seconds.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// The `weed` executable (SeaweedFS); scripts/bench-replication installs one.
    #[arg(long)]
    pub weed: PathBuf,
    /// The `litestream` executable; scripts/bench-replication installs one.
    #[arg(long)]
    pub litestream: PathBuf,
    /// Size of the tenant restored at the end, in MB (0: no restore measurement).
    #[arg(long, default_value_t = 100)]
    pub big_mb: u64,
    /// The longest to wait for a replicator's first upload of every tenant, in seconds.
    #[arg(long, default_value_t = 600)]
    pub wait_secs: u64,
    /// After the write phase, how long a write may still take to be shipped before it counts
    /// as unshipped, in seconds.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
    /// Measure only the restore of one large tenant (no fleet phases).
    #[arg(long)]
    pub restore_only: bool,
    /// Keep the working folder (databases, logs, the store's files) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// The one bucket, and the credentials of the one identity of the loopback store.
pub const BUCKET: &str = "bench";
pub const ACCESS_KEY: &str = "AKBENCHREPLICATION";
pub const SECRET_KEY: &str = "bench-replication-secret-key";

/// The working folder, removed when dropped unless kept.
pub struct Work {
    pub path: PathBuf,
    pub keep: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// What every run shares.
pub struct Bench<'a> {
    pub args: &'a ReplicationArgs,
    pub work: &'a Path,
    pub proxy: &'a Proxy,
    /// The proxy's URL: the S3 endpoint both replicators are given.
    pub endpoint: String,
    pub ticks: f64,
    /// An empty tenant database (current schema), copied for Litestream's tenants.
    pub template: PathBuf,
}

/// An S3 store through the proxy, rooted at `prefix` in the bucket.
pub fn store(b: &Bench, prefix: &str) -> anyhow::Result<std::sync::Arc<dyn ObjectStore>> {
    BackupConfig {
        url: format!("s3://{BUCKET}/{prefix}"),
        endpoint: Some(b.endpoint.clone()),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SECRET_KEY.into()),
        ..BackupConfig::local(&b.work.join("unused"))
    }
    .open()
}

/// An empty tenant database at the current schema, created the way a node creates one, with
/// its WAL checkpointed into the file so a copy of the file alone is the whole database.
pub fn make_template(work: &Path) -> anyhow::Result<PathBuf> {
    let store = TenantStore::new(&work.join("template"), 1)?;
    let org = OrgId::parse("template")?;
    let schema = hemvist_node::tenants::schema::Schema::new(
        hemvist_proto::migration::builtin().len() as u32,
        hemvist_proto::migration::builtin(),
    )?;
    store.create(&org, &schema, hemvist_node::now_ms())?;
    let path = store.path(&org);
    let conn = rusqlite::Connection::open(&path)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(path)
}
