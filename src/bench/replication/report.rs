//! The table and the notes the benchmark prints, and the request log it keeps on request.
//!
//! Keeps true: every figure is computed from one phase's own window of the proxy's log and
//! process numbers, the same way for both replicators, and says in the printed notes how.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::lag::Lag;
use super::meter::Sampled;
use super::proxy::Logged;
use super::requests::{backed_up, Replicator};
use super::setup::{Bench, ReplicationArgs};

/// One line of the table.
pub struct Row {
    pub replicator: Replicator,
    pub tenants: usize,
    pub phase: &'static str,
    pub sampled: Sampled,
    /// Requests completed in the phase, by kind.
    pub requests: BTreeMap<String, usize>,
    pub failed: usize,
    pub backed_up: usize,
    pub lag: Option<Lag>,
}

impl Row {
    pub fn minutes(&self) -> f64 {
        (self.sampled.to_us - self.sampled.from_us) as f64 / 60e6
    }

    pub fn per_minute(&self) -> f64 {
        self.requests.values().sum::<usize>() as f64 / self.minutes()
    }

    pub fn cells(&self) -> Vec<String> {
        let order = ["PUT", "GET", "LIST", "HEAD", "DELETE", "POST"];
        let mut kinds: Vec<(&String, &usize)> = self.requests.iter().collect();
        kinds.sort_by_key(|(k, _)| order.iter().position(|o| o == k).unwrap_or(order.len()));
        let by_kind: Vec<String> = kinds
            .iter()
            .map(|(k, n)| format!("{k} {}", rate(**n as f64 / self.minutes())))
            .collect();
        let seconds = self.minutes() * 60.0;
        vec![
            self.replicator.name().into(),
            self.tenants.to_string(),
            self.phase.into(),
            if by_kind.is_empty() {
                "none".into()
            } else {
                by_kind.join(" · ")
            },
            rate(self.per_minute()),
            self.failed.to_string(),
            match self.sampled.writer_pct {
                Some(w) => format!(
                    "{:.1} % ({:.1} % w/o its writes)",
                    self.sampled.cpu_pct,
                    self.sampled.cpu_pct - w
                ),
                None => format!("{:.1} %", self.sampled.cpu_pct),
            },
            format!("{:.0}", self.sampled.rss_mib),
            self.sampled.open_files.to_string(),
            format!("{}/{}", self.backed_up, self.tenants),
            self.lag
                .as_ref()
                .map(|l| format!("{:.0}", l.writes as f64 / seconds))
                .unwrap_or_default(),
            self.lag.as_ref().map(|l| lag_ms(l.p50)).unwrap_or_default(),
            self.lag.as_ref().map(|l| lag_ms(l.p99)).unwrap_or_default(),
        ]
    }
}

pub fn rate(per_minute: f64) -> String {
    if per_minute > 0.0 && per_minute < 10.0 {
        format!("{per_minute:.1}")
    } else {
        format!("{per_minute:.0}")
    }
}

pub fn lag_ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// A measured phase's line: the proxy's requests that completed within it, the process's
/// numbers, the tenants with an object under `prefix` by its end.
pub fn row(
    b: &Bench,
    replicator: Replicator,
    tenants: usize,
    phase: &'static str,
    prefix: &str,
    sampled: Sampled,
    lag: Option<Lag>,
) -> Row {
    let mut requests = BTreeMap::new();
    let mut failed = 0;
    let backed_up = b.proxy.with_log(|log| {
        for r in log
            .iter()
            .filter(|r| r.end_us >= sampled.from_us && r.end_us <= sampled.to_us)
        {
            *requests.entry(r.kind().to_string()).or_insert(0) += 1;
            // A missing key is an ordinary answer to a lookup; anything else is a failure.
            if !r.ok() && r.status != 404 {
                failed += 1;
            }
        }
        backed_up(log, replicator, prefix, sampled.to_us).len()
    });
    Row {
        replicator,
        tenants,
        phase,
        sampled,
        requests,
        failed,
        backed_up,
        lag,
    }
}

/// Every request the proxy saw, one a line, for a kept working folder.
pub fn write_log(log: &[Logged], path: &Path) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "start_us\tend_us\tkind\tstatus\tpath\tquery\tpack_orgs"
    )?;
    for r in log {
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            r.start_us,
            r.end_us,
            r.kind(),
            r.status,
            r.path,
            r.query,
            r.pack_orgs.join(",")
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The version a tool reports (`weed version`: "version 8000GB 4.48 pypi linux amd64").
pub fn version(exe: &Path) -> String {
    Command::new(exe)
        .arg("version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.split_whitespace()
                .find(|w| w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('.'))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// Prints the table, what its columns mean, the notes of the run and the restore lines.
pub fn print(args: &ReplicationArgs, rows: &[Row], notes: &[String], restores: &[String]) {
    println!(
        "hemvist bench replication: tenants {:?}, {} s per phase, 10 % of tenants writing one row \
         a second each; S3: SeaweedFS {} on loopback, through a counting proxy; Litestream {}",
        args.tenants,
        args.seconds,
        version(&args.weed),
        version(&args.litestream),
    );
    println!();
    crate::table::print(
        &[
            "replicator",
            "tenants",
            "phase",
            "requests/min by method",
            "req/min",
            "failed",
            "CPU",
            "RSS MiB",
            "open files",
            "backed up",
            "writes/s",
            "lag p50",
            "lag p99",
        ],
        &rows.iter().map(Row::cells).collect::<Vec<_>>(),
    );
    let unshipped: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.lag.as_ref().map(|l| {
                format!(
                    "{} at {}: {} of {}",
                    r.replicator.name(),
                    r.tenants,
                    l.unshipped,
                    l.writes
                )
            })
        })
        .collect();
    println!(
        "\nRequests: per minute over the phase, as the proxy saw them (LIST = GET of the bucket); \
         failed = requests of the phase answered other than 2xx or 404. CPU: user + system \
         time of the replicating process over the phase / wall time (100 % = one core); RSS \
         and open files at the phase's end. Backed up: tenants with at least one object in the \
         store by then. The idle phase starts as soon as every tenant has its first object in \
         the store."
    );
    println!(
        "hemvist runs as its own process (hemvist bench replication-node) and makes its writes \
         itself, so its CPU includes the INSERTs (conservative for hemvist); Litestream's writes \
         are made by the benchmark process and not counted in its CPU. hemvist runs with a \
         node's defaults: every object sealed with the org's data key, tenants' files closed \
         after 60 s unused (so its open files right after the first snapshots include up to \
         1024 tenants)."
    );
    println!(
        "Lag: commit → completion of the first successful PUT that started after the commit and \
         carries the tenant (hemvist: a key under tenants/{{org}}/ or a pack whose index lists the \
         tenant; Litestream: a key under the tenant's file path). A write with none by {} s after \
         the phase counts as lag = (phase end + {} s) − commit; such writes: {}.",
        args.grace_secs,
        args.grace_secs,
        if unshipped.is_empty() {
            "none measured".into()
        } else {
            unshipped.join(", ")
        }
    );
    for note in notes {
        println!("{note}");
    }
    if !restores.is_empty() {
        println!();
        for line in restores {
            println!("{line}");
        }
    }
    let writes = |r: Replicator, n: usize| {
        rows.iter()
            .find(|row| row.replicator == r && row.tenants == n && row.phase == "writes")
    };
    let compared = [1000]
        .into_iter()
        .chain(args.tenants.iter().rev().copied())
        .find(|&n| {
            writes(Replicator::Hemvist, n).is_some() && writes(Replicator::Litestream, n).is_some()
        });
    if let Some(n) = compared {
        if let (Some(h), Some(l)) = (
            writes(Replicator::Hemvist, n),
            writes(Replicator::Litestream, n),
        ) {
            let ratio = |a: f64, b: f64| {
                if b > 0.0 {
                    format!("{:.2}x", a / b)
                } else {
                    "n/a (Litestream at 0)".into()
                }
            };
            println!(
                "\nhemvist / Litestream at {n} tenants under writes: requests {} ({} vs {} per \
                 minute), CPU {} ({:.1} % vs {:.1} %)",
                ratio(h.per_minute(), l.per_minute()),
                rate(h.per_minute()),
                rate(l.per_minute()),
                ratio(h.sampled.cpu_pct, l.sampled.cpu_pct),
                h.sampled.cpu_pct,
                l.sampled.cpu_pct
            );
            if let Some(w) = h.sampled.writer_pct {
                let alone = h.sampled.cpu_pct - w;
                println!(
                    "  without the writing thread (its INSERTs): hemvist {alone:.1} % vs \
                     Litestream {:.1} %, {}",
                    l.sampled.cpu_pct,
                    ratio(alone, l.sampled.cpu_pct)
                );
            }
        }
    }
}
