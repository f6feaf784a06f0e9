//! Disk pressure as a state, not a crash. A node keeps `disk_headroom_mib` free under its data
//! folder: below it, its tenants are read-only (writes are refused with
//! [`ErrorKind::StorageFull`], reads, search and sign-in go on), `/healthz` says degraded, and
//! the replicator checkpoints every tenant it has shipped, so the WAL shrinks first. The
//! headroom is what keeps those working: a checkpoint, `backup.db`, `node.db` and a reader's
//! shared-memory file all need a little space, and tenants' writes must not take it.
//!
//! Keeps true: the state is read from the file system (`statvfs`), never kept in step by hand,
//! so it ends by itself when space is freed. It is at most [`FRESH_MS`] old when a write is
//! checked; leaving it takes a little more than the headroom ([`Disk::is_low`]), so writes do
//! not flap on and off at the edge.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use hemvist_proto::{ErrorKind, HemvistError};

use crate::clock::now_ms;

/// A free-space reading older than this is taken again before a write is checked.
pub const FRESH_MS: i64 = 250;

pub struct Disk {
    dir: PathBuf,
    headroom: u64,
    free: AtomicU64,
    checked_ms: AtomicI64,
    low: AtomicBool,
    /// Writes refused because the node was below its headroom.
    pub refused: AtomicU64,
    /// Whether the last reading failed (logged once per failure streak).
    unreadable: AtomicBool,
}

impl Disk {
    /// Watches the file system `dir` lives on, keeping `headroom` bytes free.
    pub fn new(dir: &Path, headroom: u64) -> Self {
        let disk = Disk {
            dir: dir.to_path_buf(),
            headroom,
            free: AtomicU64::new(u64::MAX),
            checked_ms: AtomicI64::new(i64::MIN),
            low: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            unreadable: AtomicBool::new(false),
        };
        disk.refresh();
        disk
    }

    pub fn headroom(&self) -> u64 {
        self.headroom
    }

    /// Reads the free space now; the bytes available to this process (`u64::MAX` if the file
    /// system cannot tell, in which case the last state is kept).
    pub fn refresh(&self) -> u64 {
        self.checked_ms.store(now_ms(), Ordering::Relaxed);
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => {
                if self.unreadable.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %self.dir.display(), "free space is readable again");
                }
                s.f_bavail.saturating_mul(s.f_frsize)
            }
            Err(e) => {
                if !self.unreadable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.dir.display(), error = %e,
                        "cannot read the free space of the data folder; keeping the last state");
                }
                return self.free.load(Ordering::Relaxed);
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let was_low = self.low.load(Ordering::Relaxed);
        // Leaving the state takes an eighth more than entering it.
        let low = if was_low {
            free < self.headroom.saturating_add(self.headroom / 8)
        } else {
            free < self.headroom
        };
        if low != was_low {
            self.low.store(low, Ordering::Relaxed);
            if low {
                tracing::error!(dir = %self.dir.display(), free_bytes = free, headroom_bytes = self.headroom,
                    "storage full: below the free-space headroom; tenants are read-only until space is freed");
            } else {
                tracing::info!(dir = %self.dir.display(), free_bytes = free,
                    "storage is back above the headroom; tenants take writes again");
            }
        }
        free
    }

    fn refresh_if_stale(&self) {
        if now_ms() - self.checked_ms.load(Ordering::Relaxed) >= FRESH_MS {
            self.refresh();
        }
    }

    /// The free bytes as last read.
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Whether the node is below its headroom (read again if the reading is stale).
    pub fn is_low(&self) -> bool {
        self.refresh_if_stale();
        self.low.load(Ordering::Relaxed)
    }

    /// Whether a tenant may be written now, or why not.
    pub fn check_writable(&self) -> Result<(), HemvistError> {
        if self.is_low() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(storage_full());
        }
        Ok(())
    }

    /// A write failed; if for want of space, the state is read again at once (so the next write
    /// is refused without touching the database) and the error says so.
    pub fn classify(&self, e: HemvistError) -> HemvistError {
        if e.kind == ErrorKind::Internal && is_out_of_space(&e.message) {
            self.refresh();
            self.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "a write failed for want of space");
            return storage_full();
        }
        e
    }
}

/// What a writer hears while the node is below its headroom.
pub fn storage_full() -> HemvistError {
    HemvistError::new(
        ErrorKind::StorageFull,
        "this server's storage is full: changes cannot be saved right now. Reading and \
         searching still work; writes resume by themselves once space is freed",
    )
}

/// Whether an error's text is SQLite's `SQLITE_FULL` or the OS's `ENOSPC`. Tenant errors reach
/// here as text (`tenants` keeps its own error type out of its callers).
pub fn is_out_of_space(message: &str) -> bool {
    message.contains("database or disk is full") || message.contains("No space left on device")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_the_headroom_writes_are_refused_and_leaving_takes_a_little_more() {
        let dir = tempfile::tempdir().unwrap();
        let free = Disk::new(dir.path(), 0).refresh();
        assert!(free > 0 && free < u64::MAX, "{free}");

        let roomy = Disk::new(dir.path(), 1);
        assert!(roomy.check_writable().is_ok());

        let tight = Disk::new(dir.path(), free.saturating_mul(2));
        let e = tight.check_writable().unwrap_err();
        assert_eq!(e.kind, ErrorKind::StorageFull);
        assert_eq!(e.kind.http_status(), 507);
        assert_eq!(tight.refused.load(Ordering::Relaxed), 1);

        // Low, at a headroom just under the free space: it stays low until an eighth more.
        let edge = Disk::new(dir.path(), free / 2);
        edge.low.store(true, Ordering::Relaxed);
        edge.refresh();
        assert!(
            !edge.low.load(Ordering::Relaxed),
            "far above: leaves the state"
        );
        let edge = Disk::new(dir.path(), free - free / 20);
        edge.low.store(true, Ordering::Relaxed);
        edge.refresh();
        assert!(
            edge.low.load(Ordering::Relaxed),
            "within an eighth: stays low"
        );
    }

    #[test]
    fn out_of_space_errors_become_storage_full_and_others_pass() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Disk::new(dir.path(), 1);
        let full = disk.classify(HemvistError::internal(
            "tenant acme: database or disk is full",
        ));
        assert_eq!(full.kind, ErrorKind::StorageFull);
        let other = disk.classify(HemvistError::internal("tenant acme: no such table"));
        assert_eq!(other.kind, ErrorKind::Internal);
        let conflict = disk.classify(HemvistError::conflict("database or disk is full"));
        assert_eq!(conflict.kind, ErrorKind::Conflict);
    }
}
