//! CPU time while a step is measured: the whole machine's (`/proc/stat`), this process's (the
//! control plane, the nodes and the bench, with the children it has waited for: the sqlite3
//! loop's processes) and SeaweedFS's, so the report can say how much of the machine other
//! processes took meanwhile. On a shared machine that is the difference between a slow system
//! and a busy neighbour.

use std::time::{Duration, Instant};

use super::super::replication::procs::{cpu_secs, ticks_per_sec};

/// CPU seconds so far: the machine's busy time, this process's, SeaweedFS's.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    machine: f64,
    ours: f64,
    weed: f64,
}

/// What a step used: wall time, and CPU seconds by whom.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    pub wall: Duration,
    pub machine: f64,
    pub ours: f64,
    pub weed: f64,
}

impl Used {
    /// CPU seconds of every other process on the machine.
    pub fn others(&self) -> f64 {
        (self.machine - self.ours - self.weed).max(0.0)
    }

    /// Average CPUs busy: (machine, ours, weed, others).
    pub fn cpus(&self) -> (f64, f64, f64, f64) {
        let w = self.wall.as_secs_f64().max(1e-9);
        (
            self.machine / w,
            self.ours / w,
            self.weed / w,
            self.others() / w,
        )
    }
}

pub struct Meter {
    start: Sample,
    ticks: f64,
}

fn machine_busy(ticks: f64) -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    (at(0) + at(1) + at(2) + at(5) + at(6) + at(7)) / ticks
}

/// This process's CPU time and that of the children it has waited for.
fn own(ticks: f64) -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|v| v.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    // utime, stime, cutime, cstime are fields 14 to 17; the first after the name is field 3.
    (11..=14)
        .map(|i| fields.get(i).copied().unwrap_or(0.0))
        .sum::<f64>()
        / ticks
}

/// The `weed` processes this one started.
fn weed(ticks: f64) -> f64 {
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "weed" {
                total += cpu_secs(pid, ticks).unwrap_or(0.0);
            }
        }
    }
    total
}

fn sample(ticks: f64) -> Sample {
    Sample {
        at: Instant::now(),
        machine: machine_busy(ticks),
        ours: own(ticks),
        weed: weed(ticks),
    }
}

impl Meter {
    pub fn start() -> Meter {
        let ticks = ticks_per_sec();
        Meter {
            start: sample(ticks),
            ticks,
        }
    }

    pub fn stop(&self) -> Used {
        let end = sample(self.ticks);
        Used {
            wall: end.at - self.start.at,
            machine: end.machine - self.start.machine,
            ours: end.ours - self.start.ours,
            weed: (end.weed - self.start.weed).max(0.0),
        }
    }
}
