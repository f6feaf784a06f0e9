//! `hemvist bench migrate`: a fleet-wide schema migration in canary waves, timed end to end,
//! beside the loop a user of plain SQLite files would write (`sqlite3 FILE < migration.sql`
//! for each tenant file, one after another), on the same data, in the same run, on the same
//! machine.
//!
//! A real system runs in this process on loopback: SeaweedFS, one control plane and one node
//! in each of three regions (eu-north, eu-central, us-east), backups on. The orgs are created
//! through the admin API and spread over the regions; each gets its contacts through its
//! node's write path and is shipped to its region's store; every tenant file is then copied at
//! the old version. The rollout is started as an operator would (the file sent, then `POST
//! /migrations/rollouts` with a canary, waves, a bake and a concurrency) and followed until it
//! is done; the fleet is checked (every tenant at the new version, the migration's check true
//! in every file). The system stops, and the naive loops migrate the copies.
//!
//! The migration is an expand of the contacts table that touches every row: a column added,
//! backfilled from each contact's notes (the update fires the table's triggers: the full-text
//! index and the change log), and indexed, with a check that every contact got its note.
//!
//! The files follow the run: [`system`], [`tenants`] (create, fill, ship, copy), [`rollout`]
//! (start, follow, where the time went, the check), [`naive`], [`report`].

mod cpu;
mod naive;
mod report;
mod rollout;
mod system;
mod tenants;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hemvist_proto::migration::{self, MigrationFile};

use super::moves::system::Work;
use system::System;

/// The migration a run rolls out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Migration {
    /// An expand of the contacts table that touches every row: a column added, backfilled from
    /// each contact's notes (the update fires the table's triggers: the full-text index and the
    /// change log), and indexed, with a check that every contact got its note.
    Note,
    /// A simple `ALTER TABLE ADD COLUMN` (a change of the schema only), with a check.
    AddColumn,
    /// An index built over every contact, with a check.
    Index,
}

impl Migration {
    /// The file's name after its number (the number is the one after the built-in files).
    fn name(self) -> &'static str {
        match self {
            Migration::Note => "contact_note",
            Migration::AddColumn => "contact_tag",
            Migration::Index => "contacts_by_company",
        }
    }

    /// What the report says it does.
    pub fn describe(self) -> &'static str {
        match self {
            Migration::Note => "add a column, backfill every row, index it; a check",
            Migration::AddColumn => "ALTER TABLE ADD COLUMN; a check",
            Migration::Index => "CREATE INDEX over every contact; a check",
        }
    }

    /// The file (see `migrations/0001_contacts.sql` for the table).
    fn sql(self) -> &'static str {
        match self {
            Migration::Note => "\
-- A one-line note per contact for the contact list: the start of its notes.
-- Expand only: a nullable column the running app ignores, backfilled, then indexed.
ALTER TABLE contacts ADD COLUMN note TEXT;
UPDATE contacts SET note = substr(notes, 1, 80) WHERE note IS NULL;
CREATE INDEX contacts_by_note ON contacts(note);
-- check: SELECT count(*) = (SELECT count(*) FROM contacts) FROM contacts WHERE note IS NOT NULL
",
            Migration::AddColumn => "\
-- A tag per contact, set by hand later. Expand only: a nullable column the running app ignores.
ALTER TABLE contacts ADD COLUMN tag TEXT;
-- check: SELECT count(*) = 1 FROM pragma_table_info('contacts') WHERE name = 'tag'
",
            Migration::Index => "\
-- Contacts by company and name, for a company filter.
CREATE INDEX contacts_by_company ON contacts(company, name);
-- check: SELECT count(*) = 1 FROM sqlite_master WHERE type = 'index' AND name = 'contacts_by_company'
",
        }
    }
}

#[derive(Args)]
pub struct MigrateArgs {
    /// Tenants (orgs) in the fleet, spread over the three regions.
    #[arg(long, default_value_t = 2000)]
    pub tenants: usize,
    /// Contacts per tenant.
    #[arg(long, default_value_t = 200)]
    pub rows: u64,
    /// The migration rolled out.
    #[arg(long, value_enum, default_value = "note")]
    pub migration: Migration,
    /// Regions, one node each (1: eu-north only, 2: and eu-central, 3: and us-east).
    #[arg(long, default_value_t = 3)]
    pub regions: usize,
    /// The rollout's waves after the canary, counts or shares of all orgs (as `migrate apply
    /// --waves`).
    #[arg(long, value_delimiter = ',', default_value = "1,5%,25%,100%")]
    pub waves: Vec<String>,
    /// The canary: a count or a share, chosen across regions by the rollout.
    #[arg(long, default_value = "3")]
    pub canary: String,
    /// How long each wave bakes before the next: 1s, 500ms, 30s.
    #[arg(long, default_value = "1s")]
    pub bake: String,
    /// Tenants migrated at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Orgs being created at once.
    #[arg(long, default_value_t = 16)]
    pub create_parallel: usize,
    /// The nodes' backup interval (`[backup] interval_ms`).
    #[arg(long, default_value_t = 1000)]
    pub backup_interval_ms: u64,
    /// The sqlite3 command for the naive loop (scripts/bench-migrate installs one if missing;
    /// without one the loop runs in this process and the report says so).
    #[arg(long, default_value = "sqlite3")]
    pub sqlite3: PathBuf,
    /// The `weed` executable (SeaweedFS); scripts/bench-migrate installs one.
    #[arg(long)]
    pub weed: PathBuf,
    /// Where the working folder goes (the system's temporary folder by default).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the working folder (databases, copies, the store's files, the system's log).
    #[arg(long)]
    pub keep: bool,
}

/// Everything the report needs.
pub struct Measured {
    pub file_name: String,
    pub bake_ms: u64,
    pub sqlite3: Option<String>,
    pub weed: String,
    pub created: tenants::Created,
    pub filled: Duration,
    pub shipped: Duration,
    pub copied: Duration,
    pub copies: tenants::Copies,
    pub rolled: Result<rollout::Rolled, String>,
    pub loops: Vec<naive::Loop>,
    pub excerpts: Vec<String>,
    /// CPU time by whom while each measured step ran.
    pub cpu: Vec<(String, cpu::Used)>,
    pub took: Duration,
}

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.tenants > 0, "--tenants must be at least 1");
    anyhow::ensure!(args.tenants <= 99_999, "--tenants takes at most 99999");
    let bake_ms = crate::rollouts::duration_ms(&args.bake)?;
    let target = migration::builtin().len() as u32 + 1;
    anyhow::ensure!(
        (1..=system::REGIONS.len()).contains(&args.regions),
        "--regions takes 1 to {}",
        system::REGIONS.len()
    );
    let migration_sql = args.migration.sql();
    let file_name = format!("{target:04}_{}.sql", args.migration.name());
    let file = MigrationFile::parse(&file_name, migration_sql.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let check_sql = file.check.clone().context("the migration has no check")?;

    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = parent.join(format!("hemvist-bench-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    // Dropped last: the system below stops before its files go.
    let work = Work {
        path,
        keep: args.keep,
    };
    eprintln!("bench: working in {}", work.path.display());
    let sql_file = work.path.join(&file_name);
    std::fs::write(&sql_file, migration_sql)
        .with_context(|| format!("write {}", sql_file.display()))?;
    let sqlite3 = naive::sqlite3_version(&args.sqlite3);
    if sqlite3.is_none() {
        eprintln!(
            "bench: {} does not run; the naive loop runs in this process (rusqlite)",
            args.sqlite3.display()
        );
    }

    let started = Instant::now();
    let sys = System::start(&args, &work.path)?;
    let fleet = tenants::fleet(args.tenants, args.regions)?;
    eprintln!(
        "bench: creating {} orgs over {} regions, {} at once",
        fleet.len(),
        args.regions,
        args.create_parallel
    );
    let mut used = Vec::new();
    let meter = cpu::Meter::start();
    let created = tenants::create(&sys, &fleet, args.create_parallel)?;
    used.push(("create orgs".to_string(), meter.stop()));
    eprintln!(
        "bench: {} orgs ready in {:.1} s; writing {} contacts to each",
        fleet.len(),
        created.total.as_secs_f64(),
        args.rows
    );
    let meter = cpu::Meter::start();
    let filled = tenants::fill(&sys, &fleet, args.rows)?;
    used.push(("fill".to_string(), meter.stop()));
    eprintln!(
        "bench: filled in {:.1} s; waiting for every tenant's backup",
        filled.as_secs_f64()
    );
    let shipped = tenants::settle_backups(&sys, &fleet)?;
    eprintln!(
        "bench: shipped in {:.1} s; copying every tenant file for the naive loops",
        shipped.as_secs_f64()
    );
    let t = Instant::now();
    let copies = tenants::copy_out(&sys, &fleet, &work.path.join("naive"), 3)?;
    let copied = t.elapsed();
    eprintln!("bench: copied in {:.1} s", copied.as_secs_f64());
    rollout::push(&sys, &file_name, migration_sql)?;
    eprintln!(
        "bench: rolling {file_name} out to {} tenants (canary {}, waves {}, bake {}, concurrency {})",
        fleet.len(),
        args.canary,
        args.waves.join(","),
        args.bake,
        args.concurrency
    );
    let meter = cpu::Meter::start();
    let rolled = rollout::run(&sys, &args, bake_ms, target);
    used.push(("hemvist rollout".to_string(), meter.stop()));
    let rolled = rolled.and_then(|mut r| {
        if r.phase == "done" {
            let t = Instant::now();
            r.check = Some(rollout::check(&sys, &fleet, target, &check_sql)?);
            eprintln!("bench: fleet checked in {:.1} s", t.elapsed().as_secs_f64());
        }
        Ok(r)
    });
    let rolled = rolled.map_err(|e| {
        eprintln!("bench: the rollout FAILED: {e:#}");
        format!("{e:#}")
    });
    let excerpts = sys.log_excerpts();
    let weed = sys.weed_version();
    let t = Instant::now();
    sys.stop();
    eprintln!(
        "bench: system stopped in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    eprintln!("bench: the naive loops, {} files each", fleet.len());
    let mut loops = Vec::new();
    let first = copies.files(0, &fleet);
    let meter = cpu::Meter::start();
    let mut naive = match &sqlite3 {
        Some(_) => naive::sqlite3_loop(&args.sqlite3, &first, &sql_file)?,
        None => naive::rusqlite_loop(
            "rusqlite execute_batch (no sqlite3 command here)".into(),
            &first,
            migration_sql,
            None,
        )?,
    };
    used.push((naive.label.clone(), meter.stop()));
    naive::check(&mut naive, &first, &check_sql);
    loops.push(naive);
    for (i, (label, sync)) in [
        ("rusqlite execute_batch, SQLite defaults", None),
        ("rusqlite execute_batch, synchronous=NORMAL", Some("NORMAL")),
    ]
    .into_iter()
    .enumerate()
    {
        let files = copies.files(i + 1, &fleet);
        let meter = cpu::Meter::start();
        let mut l = naive::rusqlite_loop(label.into(), &files, migration_sql, sync)?;
        used.push((label.to_string(), meter.stop()));
        naive::check(&mut l, &files, &check_sql);
        loops.push(l);
    }

    report::print(
        &args,
        &Measured {
            file_name,
            bake_ms,
            sqlite3,
            weed,
            created,
            filled,
            shipped,
            copied,
            copies,
            rolled,
            loops,
            excerpts,
            cpu: used,
            took: started.elapsed(),
        },
    );
    Ok(())
}
