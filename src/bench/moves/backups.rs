//! Keeping the store to what the newest point needs, between moves, so that ten moves of a
//! 1 GB tenant fit on a small disk: in both regions' stores, the org's objects of older
//! generations, and of its current generation those before its newest snapshot, are deleted
//! (what retention deletes once they leave its window; it keeps seven days by default, and a
//! region the org moved away from prunes nothing more). Then SeaweedFS is asked to reclaim the
//! space. Never while a move is open: a target may be reading any of them.

use std::time::Duration;

use futures::TryStreamExt;
use hemvist_node::backup::format::{tenant_prefix, Kind, ObjectName};
use hemvist_proto::OrgId;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::system::System;

#[derive(Debug, Clone, Copy, Default)]
pub struct Pruned {
    pub objects: usize,
    pub bytes: u64,
    /// The most the org held in both stores together, seen before a pruning.
    pub peak_bytes: u64,
}

impl Pruned {
    pub fn add(&mut self, other: Pruned) {
        self.objects += other.objects;
        self.bytes += other.bytes;
        self.peak_bytes = self.peak_bytes.max(other.peak_bytes);
    }
}

pub fn prune(sys: &System, org: &OrgId) -> anyhow::Result<Pruned> {
    let shown = sys.org(org)?;
    let generation = shown["generation"].as_u64().unwrap_or(0);
    let home = shown["home_region"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let prefix = ObjectPath::from(tenant_prefix(org));
    let mut listed = Vec::new();
    for (region, store) in &sys.stores {
        let metas: Vec<object_store::ObjectMeta> =
            sys.rt.block_on(store.list(Some(&prefix)).try_collect())?;
        for m in metas {
            if let Some(name) = ObjectName::parse(m.location.as_ref()) {
                listed.push((region.as_str() == home, store, name, m));
            }
        }
    }
    let newest = listed
        .iter()
        .filter(|(at_home, _, n, _)| {
            *at_home && n.generation == generation && n.kind == Kind::Snapshot
        })
        .map(|(_, _, n, _)| n.end)
        .max();
    let mut out = Pruned {
        peak_bytes: listed.iter().map(|(_, _, _, m)| m.size).sum(),
        ..Default::default()
    };
    for (at_home, store, name, meta) in &listed {
        let expired = name.generation < generation
            || (*at_home
                && name.generation == generation
                && newest.is_some_and(|lsn| match name.kind {
                    Kind::Snapshot => name.end < lsn,
                    Kind::Segment | Kind::Index => name.end <= lsn,
                }));
        if expired {
            sys.rt.block_on(store.delete(&meta.location))?;
            out.objects += 1;
            out.bytes += meta.size;
        }
    }
    if out.objects > 0 {
        reclaim(sys);
    }
    Ok(out)
}

/// Asks SeaweedFS's master to compact the volumes deleted objects left garbage in.
fn reclaim(sys: &System) {
    let Some(master) = &sys.master else { return };
    let url = format!("{master}/vol/vacuum?garbageThreshold=0.01");
    let _ = sys.rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()?;
        http.get(url).send().await?.bytes().await
    });
}
