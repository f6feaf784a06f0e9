//! `hemvist bench move`: how long writes pause while an org moves between regions, how long a
//! move takes and what it copies, for tenants of several sizes under a steady write load, beside
//! the naive way a user of SQLite would move the same file (stop writes, `VACUUM INTO`, copy,
//! open), in the same run on the same machine.
//!
//! A real system runs in this process on loopback: one control plane and two nodes, eu-north
//! and eu-central (both EU), each backing up to its own prefix of one SeaweedFS bucket. Per
//! size: an org is created, filled through the node's write path, and backed up; a user signs
//! in and writes through the real form at a steady rate, following the old home's 307s and
//! retrying its 503s, with every write's first attempt and acknowledgement recorded; the org
//! moves back and forth; then every acknowledged write is looked for in the tenant's final
//! database, and the naive baseline runs on the same file.
//!
//! The files follow the run: [`system`] (the processes and the admin API), [`fill`],
//! [`session`] and [`writer`] (the user's writes), [`moving`] (one move, driven and timed),
//! [`backups`] (keeping the store to what the newest point needs), [`measure`] (what the
//! writes say about each move, and the lost-write check), [`naive`], [`report`].

mod backups;
pub(crate) mod fill;
mod measure;
mod moving;
mod naive;
mod report;
pub(crate) mod session;
pub(crate) mod system;
mod writer;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hemvist_proto::OrgId;

use measure::{check_writes, per_move, slow_writes, summarize, SizeResult};
use system::{System, Work};

#[derive(Args)]
pub struct MoveArgs {
    /// Tenant sizes to measure, in MB (of database file).
    #[arg(long, value_delimiter = ',', default_value = "1,100,1024")]
    pub sizes_mb: Vec<u64>,
    /// Moves per size, alternating eu-north -> eu-central -> eu-north ...
    #[arg(long, default_value_t = 10)]
    pub moves: usize,
    /// The steady write load, in writes per second (one user, one write at a time).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Runs of the naive baseline (and of the raw copy) per size.
    #[arg(long, default_value_t = 3)]
    pub naive_runs: usize,
    /// The nodes' backup interval (`[backup] interval_ms`).
    #[arg(long, default_value_t = 1000)]
    pub backup_interval_ms: u64,
    /// The `weed` executable (SeaweedFS); scripts/bench-move installs one.
    #[arg(long)]
    pub weed: PathBuf,
    /// Where the working folder goes (the system's temporary folder by default). It needs
    /// about six times the largest size free; on a small disk, a tmpfs such as /dev/shm.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep every backup object (by default, between moves, objects no restore of the newest
    /// point needs are deleted, as retention would once they leave its window).
    #[arg(long)]
    pub keep_backups: bool,
    /// Keep the working folder (databases, the store's files, the system's log).
    #[arg(long)]
    pub keep: bool,
}

pub fn run(args: MoveArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1");
    anyhow::ensure!(!args.sizes_mb.is_empty(), "--sizes-mb names no size");
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let largest = args.sizes_mb.iter().copied().max().unwrap_or(0);
    system::check_room(&parent, largest)?;
    let path = parent.join(format!("hemvist-bench-move-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    // Dropped last: the system below stops before its files go.
    let work = Work {
        path,
        keep: args.keep,
    };
    eprintln!("bench: working in {}", work.path.display());
    let started = Instant::now();
    let sys = System::start(&(&args).into(), &work.path)?;
    let mut results = Vec::new();
    for (i, &mb) in args.sizes_mb.iter().enumerate() {
        let org = OrgId::parse(&format!("move-bench-{}", i + 1))?;
        match run_size(&args, &sys, &org, mb) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("bench: {mb} MB: FAILED: {e:#}");
                results.push(SizeResult::failed(mb, format!("{e:#}")));
            }
        }
    }
    let excerpts = sys.log_excerpts();
    let weed = sys.weed_version();
    sys.stop();
    report::print(&args, &weed, &results, &excerpts, started.elapsed());
    Ok(())
}

/// One size: fill, back up, write steadily through the moves, check, then the naive baseline.
fn run_size(args: &MoveArgs, sys: &System, org: &OrgId, mb: u64) -> anyhow::Result<SizeResult> {
    eprintln!("bench: {mb} MB: creating {org} in eu-north and filling it");
    let password = hemvist_proto::random::hex(12)?;
    let email = format!("writer@{org}.example");
    sys.create_org(org, "eu-north")?;
    let t = Instant::now();
    let file_bytes = fill::fill(sys.node_hosting(org)?, org, mb)?;
    sys.add_user(org, &email, &password)?;
    fill::settle_backups(sys, org)?;
    eprintln!(
        "bench: {mb} MB: {:.1} MB in the file, backed up, in {:.1} s",
        file_bytes as f64 / (1u64 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let mut pruned = backups::Pruned::default();
    if !args.keep_backups {
        pruned.add(backups::prune(sys, org)?);
    }

    let prefix = format!("bench {mb}mb");
    let login = writer::Login {
        base: sys.home_url(org)?,
        org: org.to_string(),
        email,
        password,
    };
    let before = sys.backup_totals();
    let writing = writer::Writer::start(login, prefix.clone(), args.rate)?;
    // Steady writes before the first move: what a write costs when nothing moves.
    std::thread::sleep(Duration::from_secs(3));
    let mut moves = Vec::new();
    for i in 0..args.moves {
        let to = sys.other_region(org)?;
        eprintln!("bench: {mb} MB: move {}/{} to {to}", i + 1, args.moves);
        let m = moving::move_once(sys, org, &to)?;
        eprintln!(
            "bench: {mb} MB: move {}: {} in {:.1} s{}",
            i + 1,
            m.phase,
            m.total.as_secs_f64(),
            m.control_pause_ms
                .map(|p| format!(", control pause {p} ms"))
                .unwrap_or_default()
        );
        let ended = m.ended();
        moves.push(m);
        if !args.keep_backups {
            pruned.add(backups::prune(sys, org)?);
        }
        if !ended {
            eprintln!("bench: {mb} MB: a move did not end; no further moves of this size");
            break;
        }
        // Apart, so that one move's pause never runs into the next one's.
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(1));
    let written = writing.stop();
    let after = sys.backup_totals();
    let home = sys.node_hosting(org)?;
    let writes = &written.records;
    let check = check_writes(home, org, &prefix, writes)?;
    let measured = per_move(&moves, writes);
    let summary = summarize(&moves, writes);
    let slow = slow_writes(&moves, &written, &sys.node_names());
    drop(written);

    eprintln!("bench: {mb} MB: naive baseline ({} runs)", args.naive_runs);
    let tenant = home.tenants.path(org);
    let naive = naive::run(&tenant, &sys.work.join("naive"), args.naive_runs)?;
    Ok(SizeResult {
        mb,
        file_bytes,
        asked: args.moves,
        moves,
        measured,
        check: Some(check),
        writes: summary,
        slow,
        backups: (after.0 - before.0, after.1 - before.1),
        naive: Some(naive),
        pruned,
        error: None,
    })
}
