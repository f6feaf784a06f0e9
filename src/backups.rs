//! `hemvist backups ORG` and `hemvist restore ORG --at TIME`: read an org's backups straight from
//! the object stores of the regions it has lived in (the control plane names them; it is not
//! needed to restore from a store given by hand). An org that moved keeps its old region's
//! backups there, restorable, until they expire.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use hemvist_node::backup::marker;
use hemvist_node::backup::restore::{self, Catalog};
use hemvist_node::backup::store::BackupConfig;
use hemvist_node::backup::{format_time, parse_time};
use hemvist_node::NodeConfig;
use hemvist_proto::{DataKey, OrgId};
use object_store::ObjectStore;

use crate::client::Client;
use crate::out::outln;
use crate::ApiArgs;

/// Which object store holds the org's backups.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// The store: `s3://bucket[/prefix]` or `file:///folder`. Defaults to the store of the
    /// org's home region, as the control plane names it (or, with no control plane given, the
    /// running `hemvist dev` here).
    #[arg(long)]
    pub store: Option<String>,
    /// The S3 endpoint (`https://host[:port]` or `http://host:port`) for an `s3://` store;
    /// credentials come from HEMVIST_S3_ACCESS_KEY_ID and HEMVIST_S3_SECRET_ACCESS_KEY.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A CA file (PEM) the S3 endpoint's certificate may chain to, besides the system's roots.
    #[arg(long, env = "HEMVIST_STORE_CA")]
    pub store_ca: Option<PathBuf>,
    /// Use the `[backup]` section of this node config instead.
    #[arg(long)]
    pub node_config: Option<PathBuf>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct BackupsArgs {
    pub org: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    pub org: String,
    /// The point to restore: RFC 3339 in UTC (2026-11-25T08:05:59Z), milliseconds, or `now`.
    #[arg(long, default_value = "now")]
    pub at: String,
    /// Where to write the restored database (must not exist). Default: ORG-TIME.db here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use only what the org's index objects list, not a scan of the newest packs: shows
    /// whether the indexes alone reach the newest point.
    #[arg(long)]
    pub indexes_only: bool,
    /// Restore the newest point that can be reached even if it is older than what the store
    /// shows or the control plane was told was shipped (what is missing is printed).
    #[arg(long)]
    pub accept_older: bool,
    /// The org's data key (64 hex digits). Default: asked of the control plane, which audits
    /// the request. Backups sealed with a destroyed key cannot be restored: that is erasure.
    #[arg(long, env = "HEMVIST_DATA_KEY", hide_env_values = true)]
    pub key: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// A store that holds backups of the org, and the regions (with the times the org lived there)
/// it serves; several regions may share one store.
struct RegionStore {
    regions: Vec<String>,
    /// When the org lived in those regions: (from, to), `to` open for its current home.
    spans: Vec<(i64, Option<i64>)>,
    store: Arc<dyn ObjectStore>,
}

impl RegionStore {
    fn held_at(&self, at_ms: i64) -> bool {
        self.spans
            .iter()
            .any(|(from, to)| *from <= at_ms && to.is_none_or(|t| at_ms < t))
    }
}

/// The stores to read: the one given (`--store`, `--node-config`), or every region's the org has
/// lived in, as the control plane names them, its home first.
async fn open_stores(org: &OrgId, args: &StoreArgs) -> anyhow::Result<Vec<RegionStore>> {
    if let Some(path) = &args.node_config {
        let config = NodeConfig::load(path)?;
        let store = config
            .backup
            .with_context(|| format!("{} has no [backup] section", path.display()))?
            .open()?;
        return Ok(vec![given(store)]);
    }
    if let Some(url) = &args.store {
        let store = open_url(args, url.clone(), args.endpoint.clone(), None)?;
        check_system(&store, &args.api).await?;
        return Ok(vec![given(store)]);
    }
    let client = Client::new(&args.api)
        .context("no --store given, and no control plane to ask for the org's stores")?;
    let shown: serde_json::Value = client.get(&format!("/orgs/{org}")).await?;
    let regions: Vec<serde_json::Value> = client.get("/regions").await?;
    // Newest stay first; each region once, with every span it held the org.
    let mut lived: Vec<(String, i64, Option<i64>)> = shown["locations"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|s| {
                    (
                        s["region"].as_str().unwrap_or_default().to_string(),
                        s["from_ms"].as_i64().unwrap_or(0),
                        s["to_ms"].as_i64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if lived.is_empty() {
        let home = shown["home_region"].as_str().unwrap_or_default();
        lived.push((home.to_string(), i64::MIN, None));
    }
    lived.reverse();
    let mut out: Vec<(String, RegionStore)> = Vec::new();
    for (region, from, to) in lived {
        let r = regions
            .iter()
            .find(|r| r["id"] == region.as_str())
            .with_context(|| format!("the control plane lists no region {region}"))?;
        let url = r["object_store"]
            .as_str()
            .filter(|u| !u.is_empty())
            .with_context(|| format!("region {region} names no object store"))?
            .to_string();
        let endpoint = args
            .endpoint
            .clone()
            .or_else(|| r["object_store_endpoint"].as_str().map(str::to_string));
        let identity = format!("{url} {}", endpoint.clone().unwrap_or_default());
        if let Some((_, known)) = out.iter_mut().find(|(id, _)| *id == identity) {
            if !known.regions.contains(&region) {
                known.regions.push(region);
            }
            known.spans.push((from, to));
            continue;
        }
        let s3_region = r["object_store_s3_region"].as_str().map(str::to_string);
        let store = open_url(args, url, endpoint, s3_region)?;
        check_system(&store, &args.api).await?;
        out.push((
            identity,
            RegionStore {
                regions: vec![region],
                spans: vec![(from, to)],
                store,
            },
        ));
    }
    Ok(out.into_iter().map(|(_, s)| s).collect())
}

/// A store named by hand: it is asked about every time.
fn given(store: Arc<dyn ObjectStore>) -> RegionStore {
    RegionStore {
        regions: vec!["(given)".into()],
        spans: vec![(i64::MIN, None)],
        store,
    }
}

fn open_url(
    args: &StoreArgs,
    url: String,
    endpoint: Option<String>,
    s3_region: Option<String>,
) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let mut config = BackupConfig::local(std::path::Path::new(""));
    config.url = url;
    config.endpoint = endpoint;
    if let Some(r) = s3_region {
        config.s3_region = r;
    }
    config.ca_file = args.store_ca.clone();
    config.open()
}

/// Refuses a store that belongs to another hemvist system than the control plane asked (their
/// ids differ), before its objects are read with that control plane's keys.
async fn check_system(store: &Arc<dyn ObjectStore>, api: &ApiArgs) -> anyhow::Result<()> {
    let Ok(client) = Client::new(api) else {
        return Ok(()); // no control plane: nothing to compare with (restore --key)
    };
    let system: serde_json::Value = client.get("/system").await?;
    let ours = system["system_id"].as_str().unwrap_or_default();
    match marker::read(store.as_ref()).await? {
        Some(m) if m.system_id != ours => bail!(
            "this store belongs to another hemvist system ({}) than the control plane at {} \
             ({ours}): its backups cannot be read with that control plane's keys. Pass the \
             right --store, or the control plane that wrote it",
            m.system_id,
            client.base()
        ),
        Some(_) => Ok(()),
        None => {
            eprintln!(
                "note: this store names no hemvist system yet (no {}); its nodes write one when \
                 they connect",
                marker::MARKER_KEY
            );
            Ok(())
        }
    }
}

pub async fn backups(args: BackupsArgs) -> anyhow::Result<()> {
    let org = OrgId::parse(&args.org)?;
    let mut listed = Vec::new();
    let mut damaged = Vec::new();
    for rs in open_stores(&org, &args.store).await? {
        let catalog = restore::catalog(&rs.store, &org).await?;
        for g in catalog.summary() {
            listed.push((rs.regions.join(", "), g));
        }
        for d in catalog.damaged {
            damaged.push((rs.regions.join(", "), d));
        }
    }
    if args.store.api.json {
        let rows: Vec<serde_json::Value> = listed
            .iter()
            .map(|(regions, g)| {
                let mut v = serde_json::to_value(g).unwrap_or_default();
                v["regions"] = serde_json::json!(regions.split(", ").collect::<Vec<_>>());
                // What a restore of this store cannot read, and what it may hold.
                v["damaged"] = serde_json::json!(damaged
                    .iter()
                    .filter(|(r, _)| r == regions)
                    .map(|(_, d)| d)
                    .collect::<Vec<_>>());
                v
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if listed.is_empty() {
        bail!("no backups of {org} in its stores");
    }
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|(regions, g)| {
            vec![
                regions.clone(),
                g.generation.to_string(),
                g.snapshots.to_string(),
                g.segments.to_string(),
                format!("{:.1} MiB", g.bytes as f64 / 1_048_576.0),
                format_time(g.oldest_ms),
                format_time(g.newest_ms),
                g.newest_lsn.to_string(),
            ]
        })
        .collect();
    crate::table::print(
        &[
            "REGION",
            "GENERATION",
            "SNAPSHOTS",
            "SEGMENTS",
            "SIZE",
            "OLDEST",
            "NEWEST",
            "LSN",
        ],
        &rows,
    );
    outln!("\nrestore points start at each snapshot:");
    for (regions, g) in &listed {
        for t in &g.snapshot_times_ms {
            outln!(
                "  {regions}  generation {}  {}",
                g.generation,
                format_time(*t)
            );
        }
    }
    if !damaged.is_empty() {
        outln!("\ndamaged objects (a restore cannot read them):");
        for (regions, d) in &damaged {
            let held: Vec<String> = d
                .holds
                .iter()
                .map(|h| format!("generation {} LSN {}..{}", h.generation, h.start, h.end))
                .collect();
            outln!(
                "  {regions}  {}  {}  {}: holds {}{}",
                d.key,
                format_time(d.time_ms),
                d.reason,
                if held.is_empty() {
                    "nothing that can be told".to_string()
                } else {
                    held.join(", ")
                },
                if d.complete { "" } else { " (maybe more)" }
            );
        }
    }
    Ok(())
}

/// The newest backup position the control plane was told of, when one is asked (a restore
/// given `--store` and no control plane checks only what the store shows).
async fn known_position(org: &OrgId, args: &RestoreArgs) -> anyhow::Result<Option<restore::Known>> {
    let Ok(client) = Client::new(&args.store.api) else {
        return Ok(None);
    };
    let shown: serde_json::Value = match client.get(&format!("/orgs/{org}")).await {
        Ok(v) => v,
        Err(e) if args.accept_older => {
            eprintln!("warning: the control plane could not say how far {org} was shipped: {e:#}");
            return Ok(None);
        }
        Err(e) => {
            return Err(e.context(format!(
                "ask the control plane how far {org} was shipped (--accept-older restores \
                 without knowing)"
            )))
        }
    };
    let k = &shown["known_position"];
    Ok(match (k["generation"].as_u64(), k["lsn"].as_u64()) {
        (Some(generation), Some(lsn)) => Some(restore::Known {
            generation,
            lsn,
            reported_ms: k["reported_ms"].as_i64().unwrap_or(0),
        }),
        _ => None,
    })
}

/// The org's data key: `--key`, else the control plane's (when it answers).
async fn data_key(org: &OrgId, args: &RestoreArgs) -> anyhow::Result<Option<DataKey>> {
    if let Some(hex) = &args.key {
        return Ok(Some(DataKey::from_hex(hex)?));
    }
    let Ok(client) = Client::new(&args.store.api) else {
        return Ok(None);
    };
    match client
        .get::<serde_json::Value>(&format!("/orgs/{org}/data-key"))
        .await
    {
        Ok(v) => Ok(Some(DataKey::from_hex(
            v["data_key"].as_str().unwrap_or_default(),
        )?)),
        Err(e) if format!("{e:#}").contains("not_found") => bail!(
            "the control plane holds no data key for {org} ({e:#}): it was destroyed, so no \
             backup of {org} can be opened by anyone"
        ),
        Err(e) => Err(e.context(format!("get the data key of {org} from the control plane"))),
    }
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let org = OrgId::parse(&args.org)?;
    let at = parse_time(&args.at).map_err(anyhow::Error::msg)?;
    // The store of the region the org lived in at that time (its home, for "now").
    let stores = open_stores(&org, &args.store).await?;
    let chosen = stores.iter().position(|s| s.held_at(at)).unwrap_or(0);
    let Some(rs) = stores.into_iter().nth(chosen) else {
        bail!("no store holds backups of {org}");
    };
    let store = rs.store;
    // Asked before the store is listed, so everything it counts as shipped is listed too.
    let known = known_position(&org, &args).await?;
    let catalog: Catalog = restore::catalog_with(&store, &org, !args.indexes_only).await?;
    for w in &catalog.warnings {
        eprintln!("warning: {w}");
    }
    let plan = catalog.plan(at, &[]);
    let short = catalog.shortfall(plan.as_ref(), at, known.as_ref());
    let Some(plan) = plan else {
        if !short.is_empty() {
            bail!(
                "no restore point of {org} at or before {}, though backups are known ({short}): \
                 see `hemvist backups {org}`",
                format_time(at)
            );
        }
        bail!(
            "no restore point of {org} at or before {}: see `hemvist backups {org}`",
            format_time(at)
        );
    };
    if !short.is_empty() {
        if !args.accept_older {
            bail!(
                "the restore of {org} at {} would be older than what is known to exist, {short}. \
                 Pass --accept-older to restore that point anyway",
                format_time(at)
            );
        }
        eprintln!("warning: restoring an older point than is known (--accept-older), {short}");
    }
    let key = data_key(&org, &args).await?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("{org}-{}.db", plan.time_ms())));
    let done = restore::restore(&store, &catalog, &plan, &out, key.as_ref()).await?;
    if args.store.api.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "file": out.display().to_string(),
                "restored": done,
                "missing": short.missing,
            }))?
        );
        return Ok(());
    }
    outln!(
        "restored {org} as of {} (generation {}, LSN {}) into {}",
        format_time(done.time_ms),
        done.generation,
        done.lsn,
        out.display()
    );
    outln!(
        "  {} objects, {:.1} MiB downloaded, {:.1} MiB database",
        done.objects,
        done.downloaded as f64 / 1_048_576.0,
        done.db_bytes as f64 / 1_048_576.0
    );
    outln!(
        "  download + verify + apply  {:.1} ms\n  PRAGMA integrity_check     {:.1} ms (ok)",
        done.fetch_and_apply.as_secs_f64() * 1000.0,
        done.integrity_check.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// `audit report --verify-stores`: LISTs every region's store under each org's prefix (and its
/// branches'), and adds what it finds to the report; objects the ledger does not explain become
/// violations.
pub async fn verify_stores(
    report: &mut hemvist_control::audit::report::Report,
    args: &StoreArgs,
) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    use hemvist_control::audit::report::StoreFinding;
    let client = Client::new(&args.api)?;
    let regions: Vec<serde_json::Value> = client.get("/regions").await?;
    let mut stores = Vec::new();
    for r in &regions {
        let id = r["id"].as_str().unwrap_or_default().to_string();
        let Some(url) = r["object_store"].as_str().filter(|u| !u.is_empty()) else {
            continue;
        };
        let endpoint = args
            .endpoint
            .clone()
            .or_else(|| r["object_store_endpoint"].as_str().map(str::to_string));
        let s3_region = r["object_store_s3_region"].as_str().map(str::to_string);
        stores.push((id, open_url(args, url.to_string(), endpoint, s3_region)?));
    }
    let mut packed = Vec::with_capacity(stores.len());
    for (region, store) in &stores {
        packed.push(
            packed_by_org(store)
                .await
                .with_context(|| format!("reading the packs of {region}'s store"))?,
        );
    }
    for o in &mut report.orgs {
        let mut whose = vec![o.org.clone()];
        whose.extend(o.branches.iter().cloned());
        for id in whose {
            let org = OrgId::parse(&id)?;
            let prefix = hemvist_node::backup::format::tenant_prefix(&org);
            for ((region, _), packs) in stores.iter().zip(&packed) {
                if let Some(p) = packs.get(id.as_str()) {
                    o.add_store_finding(StoreFinding {
                        region: region.clone(),
                        prefix: format!("packs/ ({} packs shared with other tenants)", p.packs),
                        objects: p.segments,
                        bytes: p.bytes,
                        explained: o.explains(&id, region),
                    });
                }
            }
            for (region, store) in &stores {
                let path = object_store::path::Path::from(prefix.trim_end_matches('/'));
                let listed: Vec<_> = store.list(Some(&path)).try_collect().await?;
                let finding = StoreFinding {
                    region: region.clone(),
                    prefix: prefix.clone(),
                    objects: listed.len() as u64,
                    bytes: listed.iter().map(|m| m.size).sum(),
                    explained: o.explains(&id, region),
                };
                if finding.objects > 0 || id == o.org {
                    o.add_store_finding(finding);
                }
            }
        }
    }
    report.stores_verified = true;
    report.count();
    Ok(())
}

/// A pack's index: each segment's name, offset and length.
type PackIndex = Vec<(hemvist_node::backup::format::ObjectName, u64, u64)>;

/// What the packs of a store hold of one tenant.
#[derive(Default)]
pub(crate) struct Packed {
    pub packs: u64,
    pub segments: u64,
    pub bytes: u64,
}

/// Reads the index of every pack in `store` (one ranged GET each: the tail its key names) and
/// counts, per tenant, the packs and segments that hold its data. A scrubbed segment (an
/// erased or purged tenant's) names no tenant and counts for none.
pub(crate) async fn packed_by_org(
    store: &Arc<dyn ObjectStore>,
) -> anyhow::Result<std::collections::HashMap<String, Packed>> {
    use futures::{StreamExt, TryStreamExt};
    use hemvist_node::backup::format;
    use object_store::ObjectStoreExt;
    let listed: Vec<_> = store
        .list(Some(&object_store::path::Path::from("packs")))
        .try_collect()
        .await?;
    let indexes: Vec<Option<PackIndex>> = futures::stream::iter(listed)
        .map(|m| {
            let store = store.clone();
            async move {
                let key = m.location.to_string();
                let Some((_, _, index_len)) = format::parse_pack_key(&key) else {
                    return Ok(None);
                };
                let from = m.size.saturating_sub(index_len);
                let tail = match store.get_range(&m.location, from..m.size).await {
                    // Listed, then removed (its retention ended).
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    got => got?,
                };
                anyhow::Ok(Some(format::decode_pack_index(&key, &tail)?))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut by_org: std::collections::HashMap<String, Packed> = std::collections::HashMap::new();
    for entries in indexes.into_iter().flatten() {
        let mut seen_here: std::collections::HashSet<String> = std::collections::HashSet::new();
        for (name, _, len) in entries {
            let org = name.org.to_string();
            let p = by_org.entry(org.clone()).or_default();
            p.segments += 1;
            p.bytes += len;
            if seen_here.insert(org) {
                p.packs += 1;
            }
        }
    }
    Ok(by_org)
}
