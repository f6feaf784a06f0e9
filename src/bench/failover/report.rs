//! The printed result: the configuration, one table for failover (with the naive baseline
//! beside it) and one row for the drain, and what each column means.

use std::time::Duration;

use super::plane::Timing;
use super::{DrainResult, FailoverArgs, FailoverResult};

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn at(v: &[Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

pub fn print(
    args: &FailoverArgs,
    t: Timing,
    failovers: &[(usize, anyhow::Result<FailoverResult>)],
    drain: Option<&(usize, anyhow::Result<DrainResult>)>,
    took: Duration,
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("hemvist bench failover");
    println!(
        "config: 1 region, 2 nodes (hemvist node processes), control plane in-process; \
         lease_ttl_ms {}, heartbeat_interval_ms {}, failover_grace_ms {}, backup interval_ms {}; \
         {} rows per org; SeaweedFS ({}) on loopback; {cores} cores; run took {:.0} s",
        t.lease_ttl_ms,
        t.heartbeat_interval_ms,
        t.failover_grace_ms,
        t.backup_interval_ms,
        args.rows,
        args.weed.display(),
        took.as_secs_f64()
    );
    let detect = Duration::from_millis(t.lease_ttl_ms + t.failover_grace_ms);
    println!();
    println!("Failover (node A SIGKILLed; its orgs restored on node B from the region's store)");
    println!(
        "| orgs | detect (lease+grace) | first op started | first serving | p50 serving | last serving | restore (last - detect) | all ops done | HTTP at B | rows acked | rows lost | naive: sequential restore (total) | naive per org (p50) | naive rows lost |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, r) in failovers {
        match r {
            Ok(r) => {
                let last = r.serving.last().copied().unwrap_or_default();
                let (nt, np, nl) = match &r.naive {
                    Some(Ok(nv)) => {
                        let mut per = nv.per_org.clone();
                        per.sort();
                        (secs(nv.total), secs(at(&per, 0.5)), nv.lost.to_string())
                    }
                    Some(Err(e)) => (format!("failed: {e:#}"), "-".into(), "-".into()),
                    None => ("(skipped)".into(), "-".into(), "-".into()),
                };
                println!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {nt} | {np} | {nl} |",
                    r.orgs,
                    secs(detect),
                    secs(r.started),
                    secs(r.serving.first().copied().unwrap_or_default()),
                    secs(at(&r.serving, 0.5)),
                    secs(last),
                    secs(last.saturating_sub(detect)),
                    secs(r.all_done),
                    r.http_ok,
                    r.http_checked,
                    r.acked,
                    r.lost,
                );
            }
            Err(e) => println!("| {n} | FAILED: {e:#} |"),
        }
    }
    for (_, r) in failovers {
        if let Ok(FailoverResult {
            http_note: Some(note),
            ..
        }) = r
        {
            println!("HTTP check: {note}");
        }
    }
    if let Some((n, r)) = drain {
        println!();
        println!(
            "Drain (POST /nodes/A/drain on a live node; orgs leave by live moves, 4 at a time)"
        );
        println!("| orgs | drain time | orgs/s | move p50 | move max | moves not done | rows acked | rows lost |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        match r {
            Ok(r) => println!(
                "| {} | {} | {:.1} | {} | {} | {} | {} | {} |",
                r.orgs,
                secs(r.total),
                r.orgs as f64 / r.total.as_secs_f64().max(1e-9),
                secs(at(&r.moves, 0.5)),
                secs(r.moves.last().copied().unwrap_or_default()),
                r.not_done,
                r.acked,
                r.lost
            ),
            Err(e) => println!("| {n} | FAILED: {e:#} |"),
        }
    }
    let setups: Vec<String> = failovers
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|r| format!("{} orgs {:.0} s", r.orgs, r.setup.as_secs_f64()))
        .chain(
            drain
                .and_then(|(_, r)| r.as_ref().ok())
                .map(|r| format!("drain {} orgs {:.0} s", r.orgs, r.setup.as_secs_f64())),
        )
        .collect();
    println!();
    println!(
        "Setup (create, write, ship; not measured above): {}",
        setups.join(", ")
    );
    println!();
    println!("Columns, all times from the kill (SIGKILL of node A) unless said:");
    println!("- detect (lease+grace): the configured lease_ttl_ms + failover_grace_ms, the most the control plane waits before it calls a silent node dead (the lease runs from A's last heartbeat, up to heartbeat_interval_ms before the kill).");
    println!(
        "- first op started: when the control plane started the first failover (its own clock)."
    );
    println!("- first / p50 / last serving: per org, when node B reported hosting the restored org (the failover op's detail.serving_ms); the org's users are served from then on.");
    println!("- restore (last - detect): last serving minus detect: the time spent restoring from the store and re-homing, for all orgs.");
    println!("- all ops done: when the last failover op reached phase done (after the new home's first backup).");
    println!("- HTTP at B: orgs (first, middle, last) whose page GET /o/ORG/ at node B answered 200 or 303 to sign-in (not 307/503), and which the control plane places on B.");
    println!("- rows acked / lost: contacts acknowledged (303) through the sign-in and contact forms before the kill, and how many of them are missing from node B's tenant files (read after B stopped).");
    println!("- naive: no peer fails SQLite tenants over by itself (Litestream has no failover; LiteFS fails over one cluster's primary, behind Consul), so the baseline is an operator's script running `hemvist restore ORG --out FILE` for each org, one after another, after the failover (the store then holds B's backups too): total time, per-org p50, rows missing from the restored files. It leaves out noticing the death and pointing users at the files, which the failover columns include.");
    println!("- drain time: POST /nodes/A/drain -> node A holds 0 tenants and every org's move has finished; orgs/s = orgs / drain time; move p50/max: each move's started -> finished (control plane clock); rows lost: acknowledged rows missing from B's files.");
}
