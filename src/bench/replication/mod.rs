//! `hemvist bench replication`: what continuous backup costs with many tenants, hemvist's
//! replicator beside Litestream, on the same kind of tenant databases, against the same
//! S3-compatible server (SeaweedFS `weed mini` on loopback), in the same run.
//!
//! Both replicators reach the store only through a counting proxy in this process, which logs
//! every request (method, key, start and completion), so requests are counted the same way for
//! both, whatever each one says about itself. For each tenant count, each replicator is measured
//! in two phases: idle (no writes) and a light write load (10 % of tenants write one small row a
//! second each), for requests per minute, CPU, memory and open files of the replicating process,
//! and, under writes, how long a committed write takes to reach the store (replication lag).
//! Then one large tenant is restored by each.
//!
//! The files follow the run: [`setup`] (what every run shares), [`workload`], [`meter`],
//! [`requests`] and [`lag`] (reading the proxy's log), [`hemvist`] and [`litestream`] (one
//! side each), [`restore`], [`report`]; [`proxy`] and [`procs`] are the tools they use.

mod hemvist;
mod lag;
mod litestream;
mod meter;
pub mod node;
pub(crate) mod procs;
mod proxy;
mod report;
mod requests;
mod restore;
mod setup;
mod workload;

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use object_store::ObjectStore;

pub use setup::ReplicationArgs;

use hemvist::run_hemvist;
use litestream::run_litestream;
use procs::{log_tail, Weed};
use proxy::Proxy;
use report::write_log;
use requests::Replicator;
use restore::run_restores;
use setup::{make_template, store, Bench, Work, ACCESS_KEY, BUCKET, SECRET_KEY};

pub fn run(args: ReplicationArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Handle::current();
    let path =
        std::env::temp_dir().join(format!("hemvist-bench-replication-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    // Dropped last: every process below is stopped before its files go.
    let work = Work {
        path,
        keep: args.keep,
    };
    eprintln!("bench: working in {}", work.path.display());
    let weed = Weed::start(
        &args.weed,
        &work.path.join("weed"),
        BUCKET,
        ACCESS_KEY,
        SECRET_KEY,
    )?;
    let proxy = rt.block_on(Proxy::start(&weed.s3))?;
    let bench = Bench {
        args: &args,
        work: &work.path,
        proxy: &proxy,
        endpoint: format!("http://{}", proxy.addr),
        ticks: procs::ticks_per_sec(),
        template: make_template(&work.path)?,
    };
    // The bucket answers through the proxy before anything is measured (weed creates it
    // shortly after its S3 port opens).
    let probe = store(&bench, "probe")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = rt.block_on(probe.list_with_delimiter(None)) {
        if Instant::now() > deadline {
            bail!("the bucket did not appear: {e}: {}", log_tail(&weed.log));
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let fleet: &[usize] = if args.restore_only {
        &[]
    } else {
        &args.tenants
    };
    for &n in fleet {
        for replicator in [Replicator::Hemvist, Replicator::Litestream] {
            let ran = match replicator {
                Replicator::Hemvist => run_hemvist(&bench, n),
                Replicator::Litestream => run_litestream(&bench, n),
            };
            match ran {
                Ok((r, note)) => {
                    rows.extend(r);
                    notes.push(note);
                }
                Err(e) => notes.push(format!("{}, {n} tenants: FAILED: {e:#}", replicator.name())),
            }
        }
    }
    let restores = if args.big_mb > 0 {
        run_restores(&bench).unwrap_or_else(|e| vec![format!("restore: FAILED: {e:#}")])
    } else {
        Vec::new()
    };
    drop(weed);
    if args.keep {
        let path = work.path.join("requests.tsv");
        proxy.with_log(|log| write_log(log, &path))?;
    }
    report::print(&args, &rows, &notes, &restores);
    Ok(())
}
