//! `hemvist bench erase`: the GDPR erasure of an org with many backup objects in two regions
//! (its own objects under its prefix in each region's store, and its segments in the shared
//! packs), timed from `POST /orgs/{id}/erase` to the operation's end, with the objects left
//! and the DELETE requests the nodes made; beside the floor of deleting the same number of
//! objects with one bulk delete per region, straight to the store. Then a residency change of
//! another org with as many objects in eu-north only (`set-residency --move-to eu-central`):
//! its time, split into the live move and the purge of eu-north, and what is left there.
//!
//! The system is `bench move`'s (SeaweedFS, a control plane and two nodes in this process, one
//! store per region), with a small `snapshot_after_bytes` so that each backup pass of a write
//! makes a snapshot of its own: the org is written in eu-north pass by pass, moved to
//! eu-central, and written there the same way.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use hemvist_proto::OrgId;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{json, Value};

use super::moves::fill;
use super::moves::system::{System, SystemArgs, Work};

#[derive(Args)]
pub struct EraseArgs {
    /// Backup objects to make in each of the two regions, about.
    #[arg(long, default_value_t = 500)]
    pub objects_per_region: usize,
    /// The `weed` executable (SeaweedFS); scripts/bench-erase installs one.
    #[arg(long)]
    pub weed: std::path::PathBuf,
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    #[arg(long)]
    pub keep: bool,
}

async fn count(store: &std::sync::Arc<dyn ObjectStore>, prefix: &str) -> anyhow::Result<usize> {
    let p = ObjectPath::from(prefix);
    Ok(store.list(Some(&p)).try_collect::<Vec<_>>().await?.len())
}

/// Writes `org` on its node until its prefix in `store` holds `objects` more objects, one
/// backup pass per write (each a snapshot, as `snapshot_after_bytes` is small).
fn write_objects(
    sys: &System,
    org: &OrgId,
    store: &std::sync::Arc<dyn ObjectStore>,
    objects: usize,
) -> anyhow::Result<usize> {
    let node = sys.node_hosting(org)?;
    let backup = node.backup.as_ref().context("no backups")?;
    let prefix = format!("tenants/{org}/");
    let start = sys.rt.block_on(count(store, &prefix))?;
    let mut i = 0u64;
    loop {
        let have = sys.rt.block_on(count(store, &prefix))?;
        if have >= start + objects {
            return Ok(have);
        }
        for _ in 0..20 {
            i += 1;
            node.writer
                .write(org, |tx| {
                    tx.execute(
                        "INSERT INTO contacts (name, email, company, city, phone, notes, created_ms, updated_ms)
                         VALUES (?1, '', '', '', '', ?2, 0, 0)",
                        rusqlite::params![format!("Erase Me {i}"), "x".repeat(8_000)],
                    )?;
                    Ok(())
                })
                .context("write")?;
            let mark = backup.mark_dirty(org);
            backup.wait_durable(org, mark, Duration::from_secs(60))?;
        }
    }
}

pub fn run(args: EraseArgs) -> anyhow::Result<()> {
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = parent.join(format!("hemvist-bench-erase-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    let work = Work {
        path,
        keep: args.keep,
    };
    eprintln!("bench: working in {}", work.path.display());
    let sys = System::start(
        &SystemArgs {
            weed: args.weed.clone(),
            backup_interval_ms: 1_000,
            idle_close_ms: 60_000,
            snapshot_after_bytes: Some(4 * 1024),
        },
        &work.path,
    )?;
    let stores = sys.stores.clone();
    let org = OrgId::parse("erase-bench")?;
    sys.create_org(&org, "eu-north")?;
    fill::fill(sys.node_hosting(&org)?, &org, 1)?;
    eprintln!(
        "bench: writing {} objects in eu-north",
        args.objects_per_region
    );
    let north = write_objects(&sys, &org, &stores[0].1, args.objects_per_region)?;
    let op: Value = sys.post(&format!("/orgs/{org}/move"), &json!({"to": "eu-central"}))?;
    let id = op["id"].as_str().context("no move id")?.to_string();
    sys.wait_for("the move", Duration::from_secs(300), || {
        let v: Value = sys.get(&format!("/operations/{id}")).ok()?;
        (v["phase"] == "done").then_some(())
    })?;
    eprintln!(
        "bench: moved; writing {} objects in eu-central",
        args.objects_per_region
    );
    let central = write_objects(&sys, &org, &stores[1].1, args.objects_per_region)?;
    let prefix = format!("tenants/{org}/");
    let before: Vec<usize> = stores
        .iter()
        .map(|(_, s)| sys.rt.block_on(count(s, &prefix)))
        .collect::<anyhow::Result<_>>()?;
    let packs_before: usize = stores
        .iter()
        .map(|(_, s)| sys.rt.block_on(count(s, "packs/")))
        .collect::<anyhow::Result<Vec<_>>>()?
        .iter()
        .sum();
    let deletes = || -> u64 {
        sys.nodes
            .iter()
            .filter_map(|n| n.node.backup.as_ref())
            .map(|r| r.metrics.deletes.load(Relaxed))
            .sum()
    };
    let deletes_before = deletes();
    eprintln!("bench: erasing ({north} + {central} objects)");
    let t = Instant::now();
    let op: Value = sys.post(
        &format!("/orgs/{org}/erase"),
        &json!({"confirm": org.as_str()}),
    )?;
    let id = op["id"].as_str().context("no erase id")?.to_string();
    let ended: Value = sys.wait_for("the erasure", Duration::from_secs(600), || {
        let v: Value = sys.get(&format!("/operations/{id}")).ok()?;
        (!v["finished_ms"].is_null()).then_some(v)
    })?;
    let took = t.elapsed();
    if ended["phase"] != "done" {
        bail!(
            "the erasure ended in {}: {}",
            ended["phase"],
            ended["error"]
        );
    }
    let deleted = deletes() - deletes_before;
    let after: Vec<usize> = stores
        .iter()
        .map(|(_, s)| sys.rt.block_on(count(s, &prefix)))
        .collect::<anyhow::Result<_>>()?;

    // A residency change of another org that lived only in eu-north: carried to eu-central,
    // then everything of it deleted from eu-north (`set-residency --move-to`).
    let res = OrgId::parse("residency-bench")?;
    sys.create_org(&res, "eu-north")?;
    fill::fill(sys.node_hosting(&res)?, &res, 1)?;
    eprintln!(
        "bench: writing {} objects in eu-north for a residency change",
        args.objects_per_region
    );
    let res_north = write_objects(&sys, &res, &stores[0].1, args.objects_per_region)?;
    let res_deletes_before = deletes();
    let t = Instant::now();
    let op: Value = sys.post(
        &format!("/orgs/{res}/residency"),
        &json!({"policy": "eu-central", "move_to": "eu-central"}),
    )?;
    let id = op["id"]
        .as_str()
        .context("no residency change id")?
        .to_string();
    let changed: Value = sys.wait_for("the residency change", Duration::from_secs(600), || {
        let v: Value = sys.get(&format!("/operations/{id}")).ok()?;
        (!v["finished_ms"].is_null()).then_some(v)
    })?;
    let res_took = t.elapsed();
    if changed["phase"] != "done" {
        bail!(
            "the residency change ended in {}: {}",
            changed["phase"],
            changed["error"]
        );
    }
    let child = changed["children"][0]["id"]
        .as_str()
        .context("the change ran no move")?
        .to_string();
    let moved: Value = sys.get(&format!("/operations/{child}"))?;
    let ms = |v: &Value| v.as_i64().unwrap_or(0);
    let move_ms = ms(&moved["finished_ms"]) - ms(&moved["started_ms"]);
    let purge_ms = ms(&changed["detail"]["purged_ms"]) - ms(&moved["finished_ms"]);
    let res_deleted = deletes() - res_deletes_before;
    let res_left = sys
        .rt
        .block_on(count(&stores[0].1, &format!("tenants/{res}/")))?;
    let res_packed_left = sys
        .rt
        .block_on(crate::backups::packed_by_org(&stores[0].1))?
        .get(res.as_str())
        .map_or(0, |p| p.segments);

    // The floor: as many objects of another prefix, deleted with one bulk delete per region.
    let floor_org = "floor";
    for (_, s) in &stores {
        sys.rt.block_on(async {
            futures::stream::iter(0..before.iter().copied().max().unwrap_or(0))
                .map(|i| {
                    let s = s.clone();
                    async move {
                        s.put(
                            &ObjectPath::from(format!("tenants/{floor_org}/o{i:06}")),
                            vec![0u8; 1024].into(),
                        )
                        .await
                    }
                })
                .buffer_unordered(32)
                .try_collect::<Vec<_>>()
                .await
        })?;
    }
    let t = Instant::now();
    for (_, s) in &stores {
        sys.rt.block_on(async {
            let p = ObjectPath::from(format!("tenants/{floor_org}/"));
            let listed = s.list(Some(&p)).map_ok(|m| m.location).boxed();
            s.delete_stream(listed).try_collect::<Vec<_>>().await
        })?;
    }
    let floor = t.elapsed();
    let weed = sys.weed_version();
    sys.stop();

    println!(
        "hemvist bench erase: a control plane and two nodes (eu-north, eu-central) in this \
         process, one store per region on SeaweedFS {weed} on loopback\n"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>12} {:>12}",
        "way", "objects", "time", "DELETEs", "left after"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>12} {:>12}",
        "hemvist orgs erase (POST -> operation done)",
        before.iter().sum::<usize>(),
        format!("{:.2} s", took.as_secs_f64()),
        deleted,
        after.iter().sum::<usize>()
    );
    println!(
        "{:<44} {:>10} {:>10} {:>12} {:>12}",
        "floor: LIST + bulk DELETE per region",
        before.iter().copied().max().unwrap_or(0) * stores.len(),
        format!("{:.2} s", floor.as_secs_f64()),
        "-",
        "-"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>12} {:>12}",
        "hemvist orgs set-residency --move-to",
        res_north,
        format!("{:.2} s", res_took.as_secs_f64()),
        res_deleted,
        res_left + res_packed_left as usize
    );
    println!(
        "\nset-residency --move-to: another org with {res_north} objects in eu-north only, \
         carried to eu-central by a live move ({:.2} s) and then deleted from eu-north ({:.2} s, \
         its files, its objects and its packed segments); objects and \"left after\" are \
         eu-north's (left after: objects under its prefix plus segments its packs still name).",
        move_ms as f64 / 1000.0,
        purge_ms as f64 / 1000.0
    );
    println!(
        "\nobjects: under the org's prefix in eu-north and eu-central before ({} and {}); the \
         {} packs the two nodes wrote meanwhile hold its small segments, released by the erasure \
         (a pack holding nothing else is deleted, one other tenants still need is scrubbed of \
         it) and sealed with its destroyed key. DELETEs: what the nodes' replicators counted (a bulk \
         request counts its keys). The erasure also destroyed the org's data key and wrote its \
         receipt.",
        before[0], before[1], packs_before
    );
    Ok(())
}
