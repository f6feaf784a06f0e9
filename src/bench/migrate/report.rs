//! The tables the benchmark prints: the setup, the rollout beside the naive loops, the waves;
//! what the columns mean; a verdict per target; what the system logged that looked wrong.

use std::time::Duration;

use super::super::stats;
use super::naive::Loop;
use super::rollout::Rolled;
use super::system::REGIONS;
use super::{Measured, MigrateArgs};
use crate::out::outln;

/// A duration in the unit that shows it best.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 {
        format!("{s:.1} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.01 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

fn triple(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let s = stats(v.to_vec());
    format!("{} / {} / {}", secs(s.p50), secs(s.p99), secs(s.max))
}

fn p50(v: &[Duration]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        secs(stats(v.to_vec()).p50)
    }
}

fn kb(bytes: u64) -> String {
    format!("{:.0} KB", bytes as f64 / 1024.0)
}

fn per_tenant(total: Duration, n: usize) -> Duration {
    if n == 0 {
        Duration::ZERO
    } else {
        total / n as u32
    }
}

fn rate(n: usize, total: Duration) -> String {
    if total.is_zero() {
        "-".into()
    } else {
        format!("{:.0}", n as f64 / total.as_secs_f64())
    }
}

/// The bakes the rollout waited through (every wave's but the last's).
fn bakes(r: &Rolled) -> Duration {
    r.waves.iter().filter_map(|w| w.bake).sum()
}

/// Tenants whose migration failed: by the rollout's progress, or by its commands.
fn failed(r: &Rolled) -> usize {
    let commands = r
        .states
        .iter()
        .filter(|(s, _)| s == "failed")
        .map(|(_, n)| *n)
        .sum::<usize>();
    (r.progress["failed"].as_u64().unwrap_or(0) as usize).max(commands)
}

fn at_target(r: &Rolled) -> Option<usize> {
    r.check.as_ref().map(|c| {
        c.versions
            .iter()
            .filter(|(v, _)| *v == r.target)
            .map(|(_, n)| *n)
            .sum()
    })
}

fn rollout_row(args: &MigrateArgs, r: &Rolled) -> Vec<String> {
    let n = args.tenants;
    let checked = match &r.check {
        Some(c) => format!(
            "{} of {} at v{} (status); {} of {} files pass",
            at_target(r).unwrap_or(0),
            n,
            r.target,
            c.files_at_target,
            c.files_checked
        ),
        None => "-".into(),
    };
    vec![
        format!("hemvist rollout ({})", r.phase),
        n.to_string(),
        secs(r.wall),
        format!(
            "{} ({} without bakes)",
            secs(per_tenant(r.wall, n)),
            secs(per_tenant(r.wall.saturating_sub(bakes(r)), n))
        ),
        format!("{} (node tx)", triple(&r.tx)),
        rate(n, r.wall),
        failed(r).to_string(),
        checked,
    ]
}

fn loop_row(n: usize, l: &Loop) -> Vec<String> {
    vec![
        l.label.clone(),
        l.each.len().to_string(),
        secs(l.total),
        secs(per_tenant(l.total, l.each.len())),
        triple(&l.each),
        rate(l.each.len(), l.total),
        l.failed.to_string(),
        format!("{} of {n} files pass", l.checked_ok),
    ]
}

pub fn print(args: &MigrateArgs, m: &Measured) {
    let n = args.tenants;
    let cpus = std::thread::available_parallelism().map_or(0, |c| c.get());
    let size_p50 = {
        let mut b = m.copies.bytes.clone();
        b.sort();
        b.get(b.len() / 2).copied().unwrap_or(0)
    };
    let bounds = match &m.rolled {
        Ok(r) => format!("{:?}", r.bounds),
        Err(_) => "-".into(),
    };
    outln!(
        "hemvist bench migrate: {n} tenants over {} (one node each, in this process; backups \
         every {} ms to SeaweedFS {} on loopback), {} contacts each ({} rows in all; tenant \
         file p50 {} at v{}); {} ({}); canary \
         {}, waves {} -> ends at {bounds}, bake {} ms, concurrency {}; {cpus} CPUs; {:.0} s in all",
        REGIONS[..args.regions.clamp(1, REGIONS.len())]
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>()
            .join(", "),
        args.backup_interval_ms,
        m.weed,
        args.rows,
        m.copies.rows,
        kb(size_p50),
        m.copies.version,
        m.file_name,
        args.migration.describe(),
        args.canary,
        args.waves.join(","),
        m.bake_ms,
        args.concurrency,
        m.took.as_secs_f64()
    );
    outln!();
    let c = &m.created;
    crate::table::print(
        &[
            "setup (not in the rollout's time)",
            "total",
            "per tenant p50 / p99 / max",
            "notes",
        ],
        &[
            vec![
                format!(
                    "create orgs (POST /orgs -> ready, {} at once)",
                    args.create_parallel
                ),
                secs(c.total),
                triple(&c.ready),
                format!(
                    "{}/s; POST answered p50 {}, node hosting p50 {}; by quarter {}",
                    rate(n, c.total),
                    p50(&c.answered),
                    p50(&c.hosted),
                    c.quarters()
                        .into_iter()
                        .map(secs)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ],
            vec![
                format!("fill ({} contacts each, node write path)", args.rows),
                secs(m.filled),
                secs(per_tenant(m.filled, n)),
                "wall / tenants".into(),
            ],
            vec![
                "ship every tenant to S3".into(),
                secs(m.shipped),
                "-".into(),
                "until each tenant's writes were durable".into(),
            ],
            vec![
                "copy every tenant file (for the naive loops)".into(),
                secs(m.copied),
                secs(per_tenant(m.copied, n)),
                "under its writer, checkpointed, then twice more".into(),
            ],
        ],
    );
    outln!();
    let mut rows = Vec::new();
    match &m.rolled {
        Ok(r) => rows.push(rollout_row(args, r)),
        Err(e) => rows.push(vec![
            "hemvist rollout".into(),
            n.to_string(),
            format!("FAILED: {e}"),
        ]),
    }
    rows.extend(m.loops.iter().map(|l| loop_row(n, l)));
    crate::table::print(
        &[
            "way",
            "tenants",
            "wall",
            "per tenant (wall / tenants)",
            "per-tenant time p50 / p99 / max",
            "tenants/s",
            "failed",
            "checked after",
        ],
        &rows,
    );
    if let Ok(r) = &m.rolled {
        outln!();
        let mut waves: Vec<Vec<String>> = r
            .waves
            .iter()
            .map(|w| {
                vec![
                    if w.index == 0 {
                        "0 (canary)".into()
                    } else {
                        w.index.to_string()
                    },
                    w.tenants.to_string(),
                    secs(w.starts_at),
                    secs(w.waving),
                    w.commands.map(secs).unwrap_or("-".into()),
                    rate(w.tenants, w.waving),
                    w.bake.map(secs).unwrap_or("-".into()),
                ]
            })
            .collect();
        waves.push(vec![
            "finishing".into(),
            "-".into(),
            "-".into(),
            r.finishing.map(secs).unwrap_or("-".into()),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
        crate::table::print(
            &[
                "wave",
                "tenants",
                "starts at",
                "waving",
                "first send -> last answer",
                "tenants/s waving",
                "bake after",
            ],
            &waves,
        );
        let busy: Duration = r.command.iter().sum();
        let waving: Duration = r.waves.iter().map(|w| w.waving).sum();
        outln!(
            "\nrollout {}: POST -> done seen {} (the operation's own record: {}); waving {} in \
             all, bakes {}, finishing {}; per tenant, command sent -> answer recorded p50 / \
             p99 / max {}, node transaction {}; on average {:.1} commands in flight while \
             waving (concurrency {}); {} sends beyond the first; commands {}; the replicators \
             stored {} snapshots, {:.1} MB meanwhile.",
            r.id,
            secs(r.wall),
            r.recorded.map(secs).unwrap_or("-".into()),
            secs(waving),
            secs(bakes(r)),
            r.finishing.map(secs).unwrap_or("-".into()),
            triple(&r.command),
            triple(&r.tx),
            if waving.is_zero() {
                0.0
            } else {
                busy.as_secs_f64() / waving.as_secs_f64()
            },
            args.concurrency,
            r.resends,
            r.states
                .iter()
                .map(|(s, n)| format!("{n} {s}"))
                .collect::<Vec<_>>()
                .join(", "),
            r.backups.0,
            r.backups.1 as f64 / 1e6
        );
        if let Some(e) = &r.error {
            outln!("rollout error: {e}");
        }
        if let Some(c) = &r.check {
            if c.behind > 0 || c.unreported > 0 || !c.files_bad.is_empty() {
                outln!(
                    "after the rollout: {} behind, {} unreported; files: {}",
                    c.behind,
                    c.unreported,
                    c.files_bad.join("; ")
                );
            }
        }
    }
    for l in &m.loops {
        if let Some(e) = &l.first_error {
            outln!("{}: {} failed; the first: {e}", l.label, l.failed);
        }
    }
    if let Ok(r) = &m.rolled {
        if r.bounds.len() < args.waves.len() + 1 {
            outln!(
                "\nThe control plane keeps a wave only if it reaches further than the one before \
                 (the canary counts): --canary {} --waves {} became the waves ending at {:?}.",
                args.canary,
                args.waves.join(","),
                r.bounds
            );
        }
    }
    outln!(
        "\nper tenant (wall / tenants): the whole run's wall time shared out, the measure the \
         targets compare; for the rollout it includes the bakes ((waves - 1) x bake = {} x {} \
         ms here) and the driver's pace. per-tenant time: the rollout's is the transaction its \
         node reported (`micros`: BEGIN IMMEDIATE to COMMIT, with the check and the \
         bookkeeping), the loops' is each file's own wall time (for sqlite3 with the process \
         start). The naive loops ran after the system stopped, on copies taken at v{} before \
         the rollout, one file after another; sqlite3 {} runs each statement as its own \
         transaction, the check line is a comment to it, nothing records the version; the \
         rusqlite loops use this binary's SQLite {} (the node's), `execute_batch` of the same \
         file. The wave table's times come from the audit log's phase entries; first send -> \
         last answer from the control plane's commands table.",
        m.rolled
            .as_ref()
            .map_or(0, |r| r.waves.len().saturating_sub(1)),
        m.bake_ms,
        m.copies.version,
        m.sqlite3
            .as_deref()
            .unwrap_or("(not found: the first loop ran in-process)"),
        rusqlite::version()
    );
    outln!();
    crate::table::print(
        &[
            "CPUs busy on average while",
            "wall",
            "the machine",
            "this process (control, nodes, bench; waited children)",
            "SeaweedFS",
            "other processes",
        ],
        &m.cpu
            .iter()
            .map(|(what, u)| {
                let (all, ours, weed, others) = u.cpus();
                vec![
                    what.clone(),
                    secs(u.wall),
                    format!("{all:.2} of {cpus}"),
                    format!("{ours:.2}"),
                    format!("{weed:.2}"),
                    format!("{others:.2}"),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let noisy: Vec<&str> = m
        .cpu
        .iter()
        .filter(|(_, u)| u.cpus().3 > 0.2)
        .map(|(w, _)| w.as_str())
        .collect();
    if !noisy.is_empty() {
        outln!(
            "NOTE: other processes on this machine took more than 0.2 CPUs on average during: \
             {}; those timings are not of a quiet machine.",
            noisy.join(", ")
        );
    }
    outln!();
    verdicts(args, m);
    if !m.excerpts.is_empty() {
        outln!("\nWarnings and errors the system logged (each kind once):");
        for line in &m.excerpts {
            outln!("  {line}");
        }
    }
}

fn verdicts(args: &MigrateArgs, m: &Measured) {
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let n = args.tenants;
    let Ok(r) = &m.rolled else {
        outln!("2,000 tenants in < 60 s with waves and checks on: NOT met (the rollout failed).");
        outln!("hemvist per tenant no slower than the naive loop: NOT met (the rollout failed).");
        return;
    };
    let all = r.phase == "done"
        && failed(r) == 0
        && at_target(r) == Some(n)
        && r.check.as_ref().is_some_and(|c| c.files_at_target == n);
    let fast = r.wall < Duration::from_secs(60);
    outln!(
        "2,000 tenants in < 60 s with waves and checks on: {}. {n} tenants {} in {} ({} waves, \
         of it {} baking), {} failed, {} of {n} at v{} after{}.",
        if n == 2000 {
            met(all && fast)
        } else {
            "not measured (another fleet size)"
        },
        r.phase,
        secs(r.wall),
        r.waves.len(),
        secs(bakes(r)),
        failed(r),
        at_target(r).unwrap_or(0),
        r.target,
        match n.cmp(&2000) {
            std::cmp::Ordering::Less =>
                "; fewer than 2,000 tenants in this run, so not the target as asked",
            std::cmp::Ordering::Greater =>
                "; more than 2,000 tenants in this run: the target is for 2,000",
            std::cmp::Ordering::Equal => "",
        }
    );
    let ours = per_tenant(r.wall, n);
    let Some(naive) = m.loops.first() else {
        return;
    };
    let theirs = per_tenant(naive.total, naive.each.len());
    let others: Vec<String> = m.loops[1..]
        .iter()
        .map(|l| {
            format!(
                "{} {} ({:.2}x)",
                l.label,
                secs(per_tenant(l.total, l.each.len())),
                ours.as_secs_f64() / per_tenant(l.total, l.each.len()).as_secs_f64().max(1e-9)
            )
        })
        .collect();
    outln!(
        "hemvist per tenant no slower than the naive loop per tenant (wall time / tenants, \
         both): {}. hemvist {} vs `{}` {} ({:.2}x the naive loop's); without the bakes hemvist \
         {}. Beside the in-process loops: {}.",
        met(all && ours <= theirs),
        secs(ours),
        naive.label,
        secs(theirs),
        ours.as_secs_f64() / theirs.as_secs_f64().max(1e-9),
        secs(per_tenant(r.wall.saturating_sub(bakes(r)), n)),
        others.join("; ")
    );
}
