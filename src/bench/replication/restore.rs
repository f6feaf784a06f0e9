//! The restore measurement: one large tenant backed up by each replicator and restored from
//! the store, beside a raw GET of the largest object and the floor of writing the same file.
//!
//! Keeps true: each restore is compared with figures taken in the same run on the same
//! machine (the raw GET's throughput, the write floor), so its share means the same anywhere.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hemvist_node::backup::restore;
use hemvist_node::tenants::TenantStore;
use hemvist_proto::OrgId;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::hemvist::{ready, NodeProcess};
use super::litestream::{start_litestream, wait_backed_up};
use super::procs::log_tail;
use super::requests::puts;
use super::setup::{store, Bench, ACCESS_KEY, BUCKET, SECRET_KEY};
use super::workload::{data_key, now_us, org_name};

pub fn mb_per_s(bytes: u64, took: Duration) -> String {
    format!("{:.0} MB/s", bytes as f64 / 1e6 / took.as_secs_f64())
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Downloads the largest object under `store`'s root whose key starts with `under`: (key,
/// size, time).
pub async fn largest_get(
    store: &std::sync::Arc<dyn ObjectStore>,
    under: Option<&ObjectPath>,
) -> anyhow::Result<(String, u64, Duration)> {
    use futures::TryStreamExt;
    let metas: Vec<object_store::ObjectMeta> = store.list(under).try_collect().await?;
    let largest = metas
        .into_iter()
        .max_by_key(|m| m.size)
        .context("no objects to download")?;
    let t = Instant::now();
    let bytes = store.get(&largest.location).await?.bytes().await?;
    Ok((
        largest.location.to_string(),
        bytes.len() as u64,
        t.elapsed(),
    ))
}

/// How long writing `source`'s bytes to a new file `to` and syncing it takes on this machine,
/// with the bytes already in memory: the least any restore producing that file can take.
pub fn write_floor(source: &Path, to: &Path) -> anyhow::Result<(u64, Duration)> {
    let bytes = std::fs::read(source).context("read the restored file")?;
    let t = Instant::now();
    let mut file = std::fs::File::create(to)?;
    for piece in bytes.chunks(4 << 20) {
        file.write_all(piece)?;
    }
    file.sync_all()?;
    let took = t.elapsed();
    drop(file);
    std::fs::remove_file(to)?;
    Ok((bytes.len() as u64, took))
}

/// One tenant of about `big_mb` MB, backed up by each replicator and restored from the store.
pub fn run_restores(b: &Bench) -> anyhow::Result<Vec<String>> {
    let rt = tokio::runtime::Handle::current();
    let mb_wanted = b.args.big_mb;
    let org = OrgId::parse(&org_name(1))?;
    let mut lines = Vec::new();

    eprintln!("bench: restore: a {mb_wanted} MB tenant backed up by hemvist");
    let data = b.work.join("hv-big");
    let node = NodeProcess::start(b, &data, 1, 0, "hv-big", mb_wanted)?;
    let ready = ready(&node.line(Duration::from_secs(b.args.wait_secs + 600))?)?;
    if ready["dirty"].as_u64().unwrap_or(0) > 0 {
        bail!("hemvist did not store the large tenant within --wait-secs");
    }
    node.stop();
    let hv = store(b, "hv-big")?;
    let prefix = ObjectPath::from(format!("tenants/{org}"));
    let (key, size, took) = rt.block_on(largest_get(&hv, Some(&prefix)))?;
    lines.push(format!(
        "hemvist raw GET of the tenant's largest object ({key}, {}): {:.2} s, {}",
        mb(size),
        took.as_secs_f64(),
        mb_per_s(size, took)
    ));
    let out = b.work.join("restored-hemvist.db");
    let t = Instant::now();
    let restored = rt.block_on(async {
        let catalog = restore::catalog(&hv, &org).await?;
        let plan = catalog
            .plan(i64::MAX, &[])
            .context("no restore point for the large tenant")?;
        restore::restore(&hv, &catalog, &plan, &out, Some(&data_key(1))).await
    })?;
    let total = t.elapsed();
    let restore_rate = restored.db_bytes as f64 / restored.fetch_and_apply.as_secs_f64();
    let get_rate = size as f64 / took.as_secs_f64();
    lines.push(format!(
        "hemvist restore: {} database from {} downloaded ({} object{}): fetch + verify + \
         apply (fsync included) {:.2} s = {} of database, {:.0} % of the raw GET's throughput; \
         with listing, integrity_check and rename {:.2} s",
        mb(restored.db_bytes),
        mb(restored.downloaded),
        restored.objects,
        if restored.objects == 1 { "" } else { "s" },
        restored.fetch_and_apply.as_secs_f64(),
        mb_per_s(restored.db_bytes, restored.fetch_and_apply),
        100.0 * restore_rate / get_rate,
        total.as_secs_f64()
    ));
    lines.push(format!(
        "hemvist restore: PRAGMA integrity_check {:.2} s",
        restored.integrity_check.as_secs_f64()
    ));
    let (floor_bytes, floor) = write_floor(&out, &b.work.join("floor.db"))?;
    let floor_rate = floor_bytes as f64 / floor.as_secs_f64();
    lines.push(format!(
        "floor: the restored file's {} written from memory to a new file and fsynced, nothing \
         else: {:.2} s = {}, {:.0} % of the raw GET's throughput (what writing this file alone \
         costs here); the restore reached {:.0} % of it",
        mb(floor_bytes),
        floor.as_secs_f64(),
        mb_per_s(floor_bytes, floor),
        100.0 * floor_rate / get_rate,
        100.0 * restore_rate / floor_rate
    ));

    eprintln!("bench: restore: the same database backed up by Litestream");
    let source = TenantStore::new(&data, 1)?.path(&org);
    {
        let conn = rusqlite::Connection::open(&source)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    let root = b.work.join("lt-big");
    let copy = TenantStore::new(&root, 1)?.path(&org);
    if let Some(dir) = copy.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(&source, &copy)?;
    let (mut guard, log) = start_litestream(b, &root, "lt-big")?;
    let limit = Duration::from_secs(b.args.wait_secs);
    let (have, _) = wait_backed_up(b, &mut guard, &log, "lt-big", 1, limit)?;
    if have == 0 {
        bail!(
            "Litestream stored nothing of the large tenant within --wait-secs: {}",
            log_tail(&log)
        );
    }
    // Until its uploads settle: 3 s without a new PUT.
    let started = Instant::now();
    loop {
        let last = b.proxy.with_log(|log| {
            puts(log, "lt-big", i64::MAX)
                .map(|r| r.end_us)
                .max()
                .unwrap_or(0)
        });
        if now_us() - last > 3_000_000 || started.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(guard);
    let lt = store(b, "lt-big")?;
    let (key, size, took) = rt.block_on(largest_get(&lt, None))?;
    lines.push(format!(
        "Litestream raw GET of the tenant's largest object ({key}, {}): {:.2} s, {}",
        mb(size),
        took.as_secs_f64(),
        mb_per_s(size, took)
    ));
    // The database's path in the bucket: the key up to its `.db` part.
    let db_key: Vec<&str> = key
        .split('/')
        .scan(false, |done, part| {
            if *done {
                return None;
            }
            *done = part.ends_with(".db");
            Some(part)
        })
        .collect();
    let url = format!(
        "s3://{BUCKET}/lt-big/{}?endpoint={}&forcePathStyle=true&region=us-east-1",
        db_key.join("/"),
        b.endpoint
    );
    let out = b.work.join("restored-litestream.db");
    let t = Instant::now();
    let restored = Command::new(&b.args.litestream)
        .args(["restore", "-o"])
        .arg(&out)
        .arg(&url)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .output()
        .context("run litestream restore")?;
    let took = t.elapsed();
    if !restored.status.success() {
        bail!(
            "litestream restore failed: {}",
            String::from_utf8_lossy(&restored.stderr)
        );
    }
    let db_bytes = std::fs::metadata(&out)?.len();
    let t = Instant::now();
    let verdict: String =
        rusqlite::Connection::open(&out)?.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    let check = t.elapsed();
    lines.push(format!(
        "Litestream restore (litestream restore -o, one process, no integrity check): {} \
         database in {:.2} s = {}",
        mb(db_bytes),
        took.as_secs_f64(),
        mb_per_s(db_bytes, took)
    ));
    lines.push(format!(
        "Litestream's restored file: PRAGMA integrity_check (run by the benchmark) {:.2} s: {verdict}",
        check.as_secs_f64()
    ));
    Ok(lines)
}
