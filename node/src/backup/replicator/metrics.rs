//! The replicator's counters and gauges, and their lines of the node's Prometheus metrics.
//!
//! Keeps true: every number is read from the job that does the work (an upload counts itself
//! when the store has answered), never estimated; each is named `hemvist_backup_*`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct BackupMetrics {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub put_failures: AtomicU64,
    pub snapshots: AtomicU64,
    pub segments: AtomicU64,
    pub checkpoints: AtomicU64,
    pub deletes: AtomicU64,
    /// The oldest unshipped write among dirty tenants, as of the last pass (ms; 0 = none).
    pub lag_ms: AtomicU64,
}

impl BackupMetrics {
    /// The Prometheus lines, with the count of tenants now dirty.
    pub fn render(&self, dirty_tenants: usize) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let metrics: [(&str, &str, &str, u64); 9] = [
            (
                "hemvist_backup_puts_total",
                "counter",
                "Objects uploaded.",
                get(&self.puts),
            ),
            (
                "hemvist_backup_put_bytes_total",
                "counter",
                "Bytes uploaded.",
                get(&self.put_bytes),
            ),
            (
                "hemvist_backup_put_failures_total",
                "counter",
                "Uploads that failed (and were retried).",
                get(&self.put_failures),
            ),
            (
                "hemvist_backup_snapshots_total",
                "counter",
                "Snapshots uploaded.",
                get(&self.snapshots),
            ),
            (
                "hemvist_backup_segments_total",
                "counter",
                "WAL segments uploaded.",
                get(&self.segments),
            ),
            (
                "hemvist_backup_checkpoints_total",
                "counter",
                "Checkpoints after shipping.",
                get(&self.checkpoints),
            ),
            (
                "hemvist_backup_deletes_total",
                "counter",
                "Expired backup objects removed.",
                get(&self.deletes),
            ),
            (
                "hemvist_backup_dirty_tenants",
                "gauge",
                "Tenants with writes not yet shipped.",
                dirty_tenants as u64,
            ),
            (
                "hemvist_backup_lag_ms",
                "gauge",
                "Age of the oldest unshipped write at the last pass.",
                get(&self.lag_ms),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, v) in metrics {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}
