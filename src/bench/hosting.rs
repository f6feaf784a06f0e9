//! `hemvist bench hosting`: what it costs a node to host many tenants. Creates N tenant files
//! through the real tenant store, then measures cold opens (file open + first query, with the
//! open-tenant bound in force), warm reads, open files and memory, and the idle sweep.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::replication::procs::{open_files, rss_mib};
use super::{ms, stats};

use crate::dev::demo::Rng;
use anyhow::Context;
use clap::Args;
use hemvist_node::tenants::TenantStore;
use hemvist_proto::OrgId;

#[derive(Args)]
pub struct HostingArgs {
    /// Tenants to create.
    #[arg(long, default_value_t = 10_000)]
    tenants: usize,
    /// The node's bound on open tenants.
    #[arg(long, default_value_t = 1_024)]
    max_open: usize,
    /// Cold and warm samples each.
    #[arg(long, default_value_t = 5_000)]
    samples: usize,
    /// Working folder (a temporary one by default; removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(args: HostingArgs) -> anyhow::Result<()> {
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = std::env::temp_dir().join(format!("hemvist-bench-{}", std::process::id()));
            temp.clone()
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let store = TenantStore::new(&dir, args.max_open)?;
    let orgs: Vec<OrgId> = (0..args.tenants)
        .map(|i| OrgId::parse(&format!("org-{i:06}")))
        .collect::<Result<_, _>>()?;
    let fds_before = open_files(std::process::id());

    let schema = hemvist_node::tenants::schema::Schema::new(
        hemvist_proto::migration::builtin().len() as u32,
        hemvist_proto::migration::builtin(),
    )?;
    let started = Instant::now();
    for org in &orgs {
        store.create(org, &schema, 0)?;
    }
    let create = started.elapsed();
    // Each tenant gets a row, so a "first query" reads real pages.
    for org in &orgs {
        store.write(org, |tx| {
            tx.execute(
                "INSERT INTO contacts (name, email, created_ms, updated_ms) VALUES ('Åsa Berg', 'asa@example.se', 0, 0)",
                [],
            )
        })?;
    }
    store.close_idle(Duration::ZERO);
    let mut rng = Rng::new(42);
    let mut cold = Vec::with_capacity(args.samples);
    let mut warm = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        let org = &orgs[(rng.next_u64() % orgs.len() as u64) as usize];
        store.close(org);
        let t = Instant::now();
        let n: i64 = store.read(org, |c| {
            c.query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
        })?;
        cold.push(t.elapsed());
        let t = Instant::now();
        let m: i64 = store.read(org, |c| {
            c.query_row("SELECT COUNT(*) FROM contacts", [], |r| r.get(0))
        })?;
        warm.push(t.elapsed());
        anyhow::ensure!(n == m, "tenant changed under the benchmark");
    }
    // Touch every tenant once, as a day of traffic would: the bound keeps files in check.
    let t = Instant::now();
    for org in &orgs {
        store.read(org, |c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))?;
    }
    let sweep_all = t.elapsed();
    let fds_busy = open_files(std::process::id()).saturating_sub(fds_before);
    let open_busy = store.open_count();
    let rss = rss_mib(std::process::id());
    let closed = store.close_idle(Duration::ZERO);
    let fds_idle = open_files(std::process::id()).saturating_sub(fds_before);

    let (c, w) = (stats(cold), stats(warm));
    println!(
        "hemvist bench hosting: {} tenants, max_open {}, {} samples",
        args.tenants, args.max_open, args.samples
    );
    println!();
    crate::table::print(
        &["measure", "value"],
        &[
            vec![
                "create tenant (file + schema)".into(),
                format!(
                    "{:.0} /s ({:.2} s total)",
                    args.tenants as f64 / create.as_secs_f64(),
                    create.as_secs_f64()
                ),
            ],
            vec!["cold open + first query p50".into(), ms(c.p50)],
            vec!["cold open + first query p99".into(), ms(c.p99)],
            vec!["cold open + first query max".into(), ms(c.max)],
            vec!["warm read p50".into(), ms(w.p50)],
            vec!["warm read p99".into(), ms(w.p99)],
            vec![
                "touch every tenant once".into(),
                format!(
                    "{:.0} tenants/s",
                    args.tenants as f64 / sweep_all.as_secs_f64()
                ),
            ],
            vec![
                "open tenants after touching all".into(),
                format!("{open_busy} (bound {})", args.max_open),
            ],
            vec!["open files after touching all".into(), fds_busy.to_string()],
            vec!["RSS after touching all".into(), format!("{rss:.1} MiB")],
            vec![
                "open files after idle sweep".into(),
                format!("{fds_idle} ({closed} tenants closed)"),
            ],
        ],
    );
    drop(store);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
