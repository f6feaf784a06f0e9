//! CPU, memory and open files of the replicating process over one phase.
//!
//! Keeps true: a phase's numbers come from a process that lived through it (a dead process's
//! numbers would mean nothing), read from /proc at its start and end.

use std::path::Path;
use std::time::Instant;

use super::procs::{cpu_secs, open_files, rss_mib, thread_cpu_secs, Guard};
use super::workload::now_us;

/// CPU, memory and open files of one process over one phase.
pub struct Meter {
    pub pid: u32,
    pub cpu: f64,
    pub at: Instant,
    pub from_us: i64,
    /// The writing thread (hemvist's write phase) and its CPU at the start.
    pub writer: Option<(u32, f64)>,
}

pub struct Sampled {
    pub cpu_pct: f64,
    /// Of which the writing thread (hemvist's write phase: its INSERTs run on the main thread).
    pub writer_pct: Option<f64>,
    pub rss_mib: f64,
    pub open_files: usize,
    pub from_us: i64,
    pub to_us: i64,
}

impl Meter {
    pub fn start(pid: u32, ticks: f64) -> anyhow::Result<Meter> {
        Ok(Meter {
            pid,
            writer: None,
            cpu: cpu_secs(pid, ticks)?,
            at: Instant::now(),
            from_us: now_us(),
        })
    }

    /// The phase's numbers; fails (with the end of its log) if the process has died, since a
    /// dead process's numbers would mean nothing.
    pub fn stop(self, ticks: f64, process: &mut Guard, log: &Path) -> anyhow::Result<Sampled> {
        process.check_alive(log)?;
        let cpu = cpu_secs(self.pid, ticks)?;
        let wall = self.at.elapsed().as_secs_f64();
        let writer_pct = match self.writer {
            Some((tid, before)) => {
                Some((thread_cpu_secs(self.pid, tid, ticks)? - before) / wall * 100.0)
            }
            None => None,
        };
        Ok(Sampled {
            writer_pct,
            cpu_pct: (cpu - self.cpu) / wall * 100.0,
            rss_mib: rss_mib(self.pid),
            open_files: open_files(self.pid),
            from_us: self.from_us,
            to_us: now_us(),
        })
    }
}
