//! `hemvist bench ...`: benchmarks that print one table each, to quote in notes.

mod branch;
mod dashboard;
mod erase;
mod export;
mod failover;
mod fleet;
mod hosting;
mod leader;
mod migrate;
mod moves;
mod replication;
mod report;
mod search;

use std::time::Duration;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Tenant hosting: create, cold open, warm read, open files, memory.
    Hosting(hosting::HostingArgs),
    /// The org users' search over HTTP, beside plain FTS5 and Datasette on the same data.
    Search(search::SearchArgs),
    /// Continuous backup to S3: hemvist's replicator beside Litestream, idle and under writes,
    /// at several tenant counts; then a large tenant restored by each.
    Replication(replication::ReplicationArgs),
    /// Live moves under a steady write load, at several tenant sizes: the write pause, the
    /// move's time and bytes, lost writes; beside the naive stop-vacuum-copy-open on the same
    /// tenants.
    Move(moves::MoveArgs),
    /// Failover of a dead node's orgs (1, 100, 1,000 of them) and a drain of 1,000, with rows
    /// lost; beside an operator's sequential restore of each org.
    Failover(failover::FailoverArgs),
    /// A fleet-wide schema migration in canary waves over three regions: the rollout's wall
    /// time, its waves and per-tenant times; beside `sqlite3 FILE < migration.sql` per tenant.
    Migrate(migrate::MigrateArgs),
    /// Branches: creation to first served request at several tenant sizes, with and without a
    /// mask, beside a plain restore and a file copy; and what 500 idle branches cost.
    Branch(branch::BranchArgs),
    /// GDPR erasure of an org with about 1,000 backup objects in two regions: time, DELETEs,
    /// objects left; beside a bulk delete of as many objects.
    Erase(erase::EraseArgs),
    /// The residency report (JSON, CSV, HTML) and `audit verify` for 10,000 orgs in three
    /// regions, beside reading the same rows with plain SQL.
    Report(report::ReportArgs),
    /// The operators' view of a large fleet (100,000 orgs): `orgs list` pages and one org over
    /// the admin API, the dashboard's org search as one types; beside plain SQL on the store.
    Dashboard(dashboard::DashboardArgs),
    /// The control plane's leader killed (three replicas on PostgreSQL), 10 times: until another
    /// replica leads, accepts a write, and resumes operations; beside the lease's floor.
    Leader(leader::LeaderArgs),
    /// GDPR export of 100 MB and 1 GB tenants (SQLite and JSON lines) under a writer: time,
    /// the node's copy, writers' latency; beside VACUUM INTO and a file copy.
    Export(export::ExportArgs),
    /// The hemvist node process `bench replication` measures (started by it, not by hand).
    #[command(hide = true)]
    ReplicationNode(replication::node::NodeArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Hosting(args) => hosting::run(args),
        BenchCommand::Search(args) => search::run(args),
        BenchCommand::Replication(args) => replication::run(args),
        BenchCommand::Move(args) => moves::run(args),
        BenchCommand::Failover(args) => failover::run(args),
        BenchCommand::Migrate(args) => migrate::run(args),
        BenchCommand::Branch(args) => branch::run(args),
        BenchCommand::Erase(args) => erase::run(args),
        BenchCommand::Report(args) => report::run(args),
        BenchCommand::Dashboard(args) => dashboard::run(args),
        BenchCommand::Export(args) => export::run(args),
        BenchCommand::Leader(args) => leader::run(args),
        BenchCommand::ReplicationNode(args) => replication::node::run(args),
    }
}

/// Polls `f` every 50 ms until it gives a value, or fails naming `what` after `limit`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

pub fn stats(mut v: Vec<Duration>) -> Stats {
    if v.is_empty() {
        return Stats {
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            max: Duration::ZERO,
            mean: Duration::ZERO,
        };
    }
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let total: Duration = v.iter().sum();
    Stats {
        p50: at(0.50),
        p99: at(0.99),
        max: *v.last().unwrap_or(&Duration::ZERO),
        mean: total / v.len() as u32,
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
