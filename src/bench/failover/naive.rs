//! The naive baseline: what an operator's script does when a node dies and nothing fails over
//! by itself (Litestream has no failover; LiteFS fails over one cluster's primary, behind
//! Consul): restore each org's newest backup from the region's store, one after another, with
//! `hemvist restore ORG --out FILE` (this binary, asking the control plane for the store and
//! the data key, as an operator would). Timed from the first restore's start to the last one's
//! end: it leaves out noticing the death, and pointing users at the restored files.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::super::moves::system::{ACCESS_KEY, SECRET_KEY};
use super::load::{rows_lost, Loaded};
use super::plane::Plane;

pub struct Naive {
    pub total: Duration,
    pub per_org: Vec<Duration>,
    pub lost: u64,
}

pub fn run(plane: &Plane, loaded: &[Loaded], dir: &Path) -> anyhow::Result<Naive> {
    std::fs::create_dir_all(dir)?;
    let exe = std::env::current_exe().context("find this executable")?;
    let mut per_org = Vec::new();
    let t0 = Instant::now();
    for l in loaded {
        let out = dir.join(format!("{}.db", l.org));
        let t = Instant::now();
        let done = Command::new(&exe)
            .args(["restore", &l.org, "--out"])
            .arg(&out)
            .env("HEMVIST_CONTROL", &plane.api_url)
            .env("HEMVIST_TOKEN", &plane.admin_token)
            .env("HEMVIST_S3_ACCESS_KEY_ID", ACCESS_KEY)
            .env("HEMVIST_S3_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .output()
            .context("run hemvist restore")?;
        if !done.status.success() {
            bail!(
                "hemvist restore {} failed: {}",
                l.org,
                String::from_utf8_lossy(&done.stderr).trim()
            );
        }
        per_org.push(t.elapsed());
    }
    let total = t0.elapsed();
    let (_, lost) = rows_lost(loaded, |org| dir.join(format!("{org}.db")))?;
    Ok(Naive {
        total,
        per_org,
        lost,
    })
}
