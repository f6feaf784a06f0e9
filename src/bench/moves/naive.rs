//! The naive move the SQLite hosting tools leave to their users, on the same tenant file: stop
//! writes, `VACUUM INTO` a file, copy it to the target's folder, open it there and check it.
//! Its downtime is all of that (writes are already stopped when it starts: the writer has
//! ended). Beside it, the raw copy of the tenant's file alone, the floor a move's total time is
//! compared with.
//!
//! The check is the one a move's target runs on its copy: `integrity_check` up to 64 MiB,
//! `quick_check` above. Nothing is fsynced (neither here nor in the raw copy): the page cache
//! takes the files, which flatters both.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

const FULL_CHECK_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Naive {
    pub downtime: Vec<Duration>,
    pub vacuum: Vec<Duration>,
    pub copy: Vec<Duration>,
    pub check: Vec<Duration>,
    pub raw: Vec<Duration>,
    /// The vacuumed file's size.
    pub bytes: u64,
}

pub fn run(tenant: &Path, dir: &Path, runs: usize) -> anyhow::Result<Naive> {
    let mut out = Naive::default();
    for i in 0..runs {
        let source = dir.join(format!("run-{i}/source"));
        let target = dir.join(format!("run-{i}/target"));
        std::fs::create_dir_all(&source)?;
        std::fs::create_dir_all(&target)?;
        let (exported, copied) = (source.join("tenant.db"), target.join("tenant.db"));

        let t0 = Instant::now();
        let live = rusqlite::Connection::open_with_flags(
            tenant,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .with_context(|| format!("open {}", tenant.display()))?;
        live.execute("VACUUM INTO ?1", [exported.to_string_lossy()])
            .context("VACUUM INTO")?;
        drop(live);
        let t1 = Instant::now();
        let bytes = std::fs::copy(&exported, &copied).context("copy the exported file")?;
        let t2 = Instant::now();
        let opened = rusqlite::Connection::open(&copied).context("open the copy")?;
        let pragma = if bytes > FULL_CHECK_BYTES {
            "PRAGMA quick_check"
        } else {
            "PRAGMA integrity_check"
        };
        let verdict: String = opened.query_row(pragma, [], |r| r.get(0))?;
        ensure!(verdict == "ok", "the naive copy fails its check: {verdict}");
        drop(opened);
        let t3 = Instant::now();

        out.downtime.push(t3 - t0);
        out.vacuum.push(t1 - t0);
        out.copy.push(t2 - t1);
        out.check.push(t3 - t2);
        out.bytes = bytes;
        std::fs::remove_dir_all(dir.join(format!("run-{i}")))?;

        let raw = dir.join("raw.db");
        let t = Instant::now();
        std::fs::copy(tenant, &raw).context("raw copy of the tenant's file")?;
        out.raw.push(t.elapsed());
        std::fs::remove_file(&raw)?;
    }
    Ok(out)
}
