//! The replicator's counters, gauges and lag histogram, and how they join the node's
//! Prometheus registry.
//!
//! Keeps true: every number is read from the job that does the work (an upload counts itself
//! when the store has answered), never estimated; each is named `hemvist_backup_*`.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub struct BackupMetrics {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub put_failures: AtomicU64,
    pub snapshots: AtomicU64,
    pub segments: AtomicU64,
    pub checkpoints: AtomicU64,
    pub deletes: AtomicU64,
    /// The age of the oldest unshipped write at every pass that found something dirty.
    lag: Histogram,
}

impl Default for BackupMetrics {
    fn default() -> Self {
        BackupMetrics {
            puts: AtomicU64::default(),
            put_bytes: AtomicU64::default(),
            put_failures: AtomicU64::default(),
            snapshots: AtomicU64::default(),
            segments: AtomicU64::default(),
            checkpoints: AtomicU64::default(),
            deletes: AtomicU64::default(),
            // The async target is 1 s; the control plane calls an org behind at 5 s.
            lag: hemvist_net::metrics::lag_histogram(),
        }
    }
}

impl BackupMetrics {
    /// A pass's lag: the age of the oldest unshipped write it found (`None`: nothing dirty).
    pub fn record_lag(&self, oldest_ms: Option<u64>) {
        if let Some(ms) = oldest_ms {
            self.lag.observe(ms as f64 / 1e3);
        }
    }

    /// Adds these metrics to `r`, with the count of tenants now dirty and the age of the oldest
    /// write not yet shipped, now (ms; 0 when nothing waits): read at the scrape, so it grows
    /// while the store is away, whether or not a pass ends.
    pub fn register(&self, r: &mut Registry, dirty_tenants: usize, lag_ms: u64) {
        let get = |a: &AtomicU64| ConstCounter::new(a.load(Ordering::Relaxed));
        let gauge = hemvist_net::metrics::gauge;
        let counters = [
            ("hemvist_backup_puts", "Objects uploaded", &self.puts),
            (
                "hemvist_backup_put_bytes",
                "Bytes uploaded",
                &self.put_bytes,
            ),
            (
                "hemvist_backup_put_failures",
                "Uploads that failed (and were retried)",
                &self.put_failures,
            ),
            (
                "hemvist_backup_snapshots",
                "Snapshots uploaded",
                &self.snapshots,
            ),
            (
                "hemvist_backup_segments",
                "WAL segments uploaded",
                &self.segments,
            ),
            (
                "hemvist_backup_checkpoints",
                "Checkpoints after shipping",
                &self.checkpoints,
            ),
            (
                "hemvist_backup_deletes",
                "Expired backup objects removed",
                &self.deletes,
            ),
        ];
        for (name, help, v) in counters {
            r.register(name, help, get(v));
        }
        r.register(
            "hemvist_backup_dirty_tenants",
            "Tenants with writes not yet shipped",
            gauge(dirty_tenants as u64),
        );
        r.register(
            "hemvist_backup_lag_ms",
            "Age of the oldest write not yet in object storage, now (0 when none waits)",
            gauge(lag_ms),
        );
        r.register_with_unit(
            "hemvist_backup_lag",
            "Age of the oldest unshipped write at each pass that found one",
            Unit::Seconds,
            self.lag.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pass_with_something_dirty_observes_its_lag() {
        let m = BackupMetrics::default();
        m.puts.fetch_add(2, Ordering::Relaxed);
        m.record_lag(Some(1_500));
        m.record_lag(Some(300));
        m.record_lag(None);
        let mut r = Registry::default();
        m.register(&mut r, 3, 0);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &r).unwrap();
        for line in [
            "hemvist_backup_puts_total 2",
            "hemvist_backup_dirty_tenants 3",
            "hemvist_backup_lag_ms 0",
            "hemvist_backup_lag_seconds_count 2",
            "hemvist_backup_lag_seconds_bucket{le=\"0.5\"} 1",
            "hemvist_backup_lag_seconds_bucket{le=\"2\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
