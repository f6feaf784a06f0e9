//! The table the benchmark prints, a second one with where each move's time went, what the
//! columns mean, a verdict per target, and what the system logged that looked wrong.

use std::time::Duration;

use super::super::stats;
use super::measure::SizeResult;
use super::MoveArgs;
use crate::out::outln;

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

/// A duration in the unit that shows it best.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 0.01 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1u64 << 20) as f64)
}

fn size_name(mb: u64) -> String {
    if mb >= 1024 && mb.is_multiple_of(1024) {
        format!("{} GB", mb / 1024)
    } else {
        format!("{mb} MB")
    }
}

fn ms_durations(v: impl Iterator<Item = i64>) -> Vec<Duration> {
    v.map(|m| Duration::from_millis(m.max(0) as u64)).collect()
}

fn triple(v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let s = stats(v);
    format!("{}/{}/{}", ms(s.p50), ms(s.p99), ms(s.max))
}

/// What one size's row and verdicts need.
struct Figures {
    pause_p99: Option<Duration>,
    move_p50: Option<Duration>,
    move_max: Option<Duration>,
    raw_p50: Option<Duration>,
    naive_p50: Option<Duration>,
    lost: Option<usize>,
    done: usize,
}

fn figures(r: &SizeResult) -> Figures {
    let pauses: Vec<Duration> = r.measured.iter().map(|m| m.pause).collect();
    let totals: Vec<Duration> = r
        .moves
        .iter()
        .filter(|m| m.done())
        .map(|m| m.total)
        .collect();
    Figures {
        pause_p99: (!pauses.is_empty()).then(|| stats(pauses).p99),
        move_p50: (!totals.is_empty()).then(|| stats(totals.clone()).p50),
        move_max: (!totals.is_empty()).then(|| stats(totals).max),
        raw_p50: r
            .naive
            .as_ref()
            .filter(|n| !n.raw.is_empty())
            .map(|n| stats(n.raw.clone()).p50),
        naive_p50: r
            .naive
            .as_ref()
            .filter(|n| !n.downtime.is_empty())
            .map(|n| stats(n.downtime.clone()).p50),
        lost: r.check.as_ref().map(|c| c.lost.len()),
        done: r.moves.iter().filter(|m| m.done()).count(),
    }
}

fn main_row(r: &SizeResult) -> Vec<String> {
    let f = figures(r);
    let done: Vec<_> = r.moves.iter().filter(|m| m.done()).collect();
    let opt = |d: Option<Duration>, f: fn(Duration) -> String| d.map(f).unwrap_or("-".into());
    vec![
        size_name(r.mb),
        if r.file_bytes > 0 {
            mb(r.file_bytes)
        } else {
            "-".into()
        },
        format!("{}/{}", f.done, r.asked),
        triple(r.measured.iter().map(|m| m.pause).collect()),
        if r.measured.is_empty() {
            "-".into()
        } else {
            ms(r.measured.iter().map(|m| m.gap).max().unwrap_or_default())
        },
        {
            let p: Vec<Duration> = ms_durations(r.moves.iter().filter_map(|m| m.control_pause_ms));
            if p.is_empty() {
                "-".into()
            } else {
                ms(stats(p).p99)
            }
        },
        match (f.move_p50, f.move_max) {
            (Some(a), Some(b)) => format!("{} / {}", secs(a), secs(b)),
            _ => "-".into(),
        },
        opt(f.raw_p50, secs),
        if done.is_empty() {
            "-".into()
        } else {
            let mut bytes: Vec<u64> = done.iter().map(|m| m.bytes).collect();
            bytes.sort();
            mb(bytes[bytes.len() / 2])
        },
        match &r.check {
            Some(c) if c.duplicated.is_empty() => format!("{} of {}", c.lost.len(), c.acked),
            Some(c) => format!(
                "{} of {} (+{} twice)",
                c.lost.len(),
                c.acked,
                c.duplicated.len()
            ),
            None => "-".into(),
        },
        match &r.naive {
            Some(n) if !n.downtime.is_empty() => {
                let s = stats(n.downtime.clone());
                format!("{} / {}", secs(s.p50), secs(s.max))
            }
            _ => "-".into(),
        },
    ]
}

fn phase_row(r: &SizeResult) -> Vec<String> {
    let done: Vec<_> = r.moves.iter().filter(|m| m.done()).collect();
    let p50 = |v: Vec<Duration>| {
        if v.is_empty() {
            "-".into()
        } else {
            secs(stats(v).p50)
        }
    };
    let calm = if r.writes.calm.is_empty() {
        "-".into()
    } else {
        let s = stats(r.writes.calm.clone());
        format!("{}/{}", ms(s.p50), ms(s.p99))
    };
    vec![
        size_name(r.mb),
        p50(ms_durations(done.iter().filter_map(|m| m.copy_ms))),
        p50(ms_durations(done.iter().filter_map(|m| m.release_ms))),
        format!(
            "{} / {} / {}",
            r.measured.iter().map(|m| m.overlapping).sum::<usize>(),
            r.measured.iter().map(|m| m.redirected).sum::<usize>(),
            r.measured.iter().map(|m| m.unavailable).sum::<usize>()
        ),
        calm,
        format!("{:.1}", r.writes.rate),
        format!("{} / {}", r.backups.0, mb(r.backups.1)),
        mb(r.pruned.peak_bytes),
        match &r.naive {
            Some(n) if !n.downtime.is_empty() => format!(
                "{} + {} + {}",
                secs(stats(n.vacuum.clone()).p50),
                secs(stats(n.copy.clone()).p50),
                secs(stats(n.check.clone()).p50)
            ),
            _ => "-".into(),
        },
    ]
}

pub fn print(
    args: &MoveArgs,
    weed: &str,
    results: &[SizeResult],
    excerpts: &[String],
    took: Duration,
) {
    outln!(
        "hemvist bench move: sizes {:?} MB, {} moves each (eu-north <-> eu-central), {} writes/s \
         through the form, backups every {} ms to SeaweedFS {weed} on loopback; {} naive runs \
         per size; {:.0} s in all",
        args.sizes_mb,
        args.moves,
        args.rate,
        args.backup_interval_ms,
        args.naive_runs,
        took.as_secs_f64()
    );
    outln!();
    crate::table::print(
        &[
            "size",
            "file",
            "moves",
            "pause p50/p99/max ms",
            "ack gap max ms",
            "control pause p99 ms",
            "move time p50 / max",
            "raw copy",
            "bytes moved",
            "lost",
            "naive downtime p50 / max",
        ],
        &results.iter().map(main_row).collect::<Vec<_>>(),
    );
    outln!();
    crate::table::print(
        &[
            "size",
            "copy p50",
            "serving -> done p50",
            "writes in moves / sent on (307) / retried (503)",
            "calm write p50/p99 ms",
            "writes/s",
            "snapshots / uploaded",
            "store peak",
            "naive: vacuum + copy + check p50",
        ],
        &results.iter().map(phase_row).collect::<Vec<_>>(),
    );
    outln!(
        "\nMB = 2^20 bytes. moves: done / asked. pause: per move, the longest any write that \
         overlapped the move (request -> end seen) waited from its first attempt to its 303, \
         through the old home's held write, its 503s and the 307 to the new home; p99 of 10 \
         moves is their max. ack gap: the longest time between two acknowledgements during a \
         move. control pause: the control plane's detail.pause_ms (fencing -> new home \
         serving). move time: request -> done (the copy, the fence, the switch, and the new \
         home's first backup before the old copy is released), done moves only. copy: start -> \
         fencing; serving -> done: the new home's first backup and the release. raw copy: \
         std::fs::copy of the tenant's file. bytes moved: detail.bytes (what the target \
         downloaded: LZ4-compressed, sealed backup objects), median. lost: acknowledged writes \
         missing from the final database, of all acknowledged. naive downtime: VACUUM INTO + \
         copy + open and check, writes stopped throughout. calm write: latency of writes no \
         move overlapped. snapshots / uploaded: what both nodes' replicators stored while the \
         writer ran (every move ends with the new home's first snapshot). store peak: the org's objects in both stores together, at most, seen \
         between moves{}.",
        if args.keep_backups {
            ""
        } else {
            " (what older generations and snapshots left was deleted after each move)"
        }
    );

    for r in results {
        if let Some(e) = &r.error {
            outln!("{}: FAILED: {e}", size_name(r.mb));
        }
        for (i, m) in r.moves.iter().enumerate().filter(|(_, m)| !m.done()) {
            outln!(
                "{}: move {} to {} ({}) ended {}: {}",
                size_name(r.mb),
                i + 1,
                m.to,
                m.operation,
                m.phase,
                m.error.as_deref().unwrap_or("no error recorded")
            );
        }
        if let Some(c) = &r.check {
            if !c.lost.is_empty() {
                outln!(
                    "{}: LOST acknowledged writes: {}",
                    size_name(r.mb),
                    c.lost
                        .iter()
                        .take(10)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if !c.duplicated.is_empty() {
                outln!(
                    "{}: stored twice: {}",
                    size_name(r.mb),
                    c.duplicated
                        .iter()
                        .take(10)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            if c.unacked_stored > 0 {
                outln!(
                    "{}: {} writes stored though their answer never came",
                    size_name(r.mb),
                    c.unacked_stored
                );
            }
        }
        for line in &r.slow {
            outln!("{}: {line}", size_name(r.mb));
        }
        if !r.writes.failed.is_empty() {
            outln!(
                "{}: {} of {} writes not acknowledged: {}",
                size_name(r.mb),
                r.writes.sent - r.writes.acked,
                r.writes.sent,
                r.writes
                    .failed
                    .iter()
                    .map(|(s, n)| if *s == 0 {
                        format!("{n} given up after 30 s")
                    } else {
                        format!("{n} answered {s}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }

    outln!();
    verdicts(results);
    if !excerpts.is_empty() {
        outln!("\nWarnings and errors the system logged (each kind once):");
        for line in excerpts {
            outln!("  {line}");
        }
    }
}

fn verdicts(results: &[SizeResult]) {
    let measured: Vec<(&SizeResult, Figures)> = results
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| (r, figures(r)))
        .collect();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };

    let pauses: Vec<String> = measured
        .iter()
        .map(|(r, f)| {
            format!(
                "{} {} ms (naive downtime {})",
                size_name(r.mb),
                f.pause_p99.map(ms).unwrap_or("-".into()),
                f.naive_p50.map(secs).unwrap_or("-".into())
            )
        })
        .collect();
    let pause_ok = !measured.is_empty()
        && measured
            .iter()
            .all(|(_, f)| f.pause_p99.is_some_and(|p| p < Duration::from_secs(1)));
    outln!(
        "Write pause p99 < 1 s at every size: {}. p99 by size: {}.",
        met(pause_ok),
        pauses.join("; ")
    );

    let ratios: Vec<(String, Option<f64>)> = measured
        .iter()
        .map(|(r, f)| {
            let ratio = match (f.move_p50, f.raw_p50) {
                (Some(m), Some(raw)) if raw > Duration::ZERO => {
                    Some(m.as_secs_f64() / raw.as_secs_f64())
                }
                _ => None,
            };
            let done: Vec<_> = r.moves.iter().filter(|m| m.done()).collect();
            let part = |v: Vec<Duration>| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    secs(stats(v).p50)
                }
            };
            (
                format!(
                    "{} {} vs raw copy {} ({}; max {}; of it the copy {}, the new home's first \
                     backup and the release {})",
                    size_name(r.mb),
                    f.move_p50.map(secs).unwrap_or("-".into()),
                    f.raw_p50.map(secs).unwrap_or("-".into()),
                    ratio.map(|x| format!("{x:.0}x")).unwrap_or("-".into()),
                    f.move_max.map(secs).unwrap_or("-".into()),
                    part(ms_durations(done.iter().filter_map(|m| m.copy_ms))),
                    part(ms_durations(done.iter().filter_map(|m| m.release_ms))),
                ),
                ratio,
            )
        })
        .collect();
    let time_ok = !ratios.is_empty() && ratios.iter().all(|(_, r)| r.is_some_and(|x| x <= 2.0));
    outln!(
        "Total move time within 2x of the raw copy of the file: {}. Move time p50: {}.",
        met(time_ok),
        ratios
            .iter()
            .map(|(s, _)| s.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );

    let lost: usize = measured.iter().filter_map(|(_, f)| f.lost).sum();
    let checked = measured.iter().filter(|(_, f)| f.lost.is_some()).count();
    let acked: usize = measured
        .iter()
        .filter_map(|(r, _)| r.check.as_ref().map(|c| c.acked))
        .sum();
    let not_done: usize = measured.iter().map(|(r, f)| r.moves.len() - f.done).sum();
    outln!(
        "Zero acknowledged writes lost in every run: {}. {lost} lost of {acked} acknowledged, \
         over {checked} sizes{}.",
        met(lost == 0 && checked == measured.len() && checked > 0),
        if not_done > 0 {
            format!("; {not_done} moves did not finish as done (see above)")
        } else {
            String::new()
        }
    );
}
