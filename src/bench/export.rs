//! `hemvist bench export`: the GDPR export of tenants of several sizes (default 100 MB and
//! 1 GB), as SQLite and as JSON lines, through the admin API to a file, while a writer writes to
//! the same tenant every 10 ms: the export's time, how much of it the node's consistent copy
//! took, and the writer's latency during the export beside before it (how long writers were
//! held). Beside it, the floors on the same file: `VACUUM INTO` alone, and a plain file copy.
//!
//! The system is `bench move`'s (SeaweedFS, a control plane and two nodes in this process).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hemvist_proto::OrgId;

use super::moves::fill;
use super::moves::system::{System, SystemArgs, Work};

#[derive(Args)]
pub struct ExportArgs {
    /// Tenant sizes, in MB of database file.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    pub sizes_mb: Vec<u64>,
    /// The `weed` executable (SeaweedFS); scripts/bench-export installs one.
    #[arg(long)]
    pub weed: PathBuf,
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub keep: bool,
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Writes a row every 10 ms, recording each write's latency, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    lat: Arc<Mutex<Vec<(Instant, Duration)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(node: Arc<hemvist_node::Node>, org: OrgId) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let lat = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), lat.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                let ok = node.writer.write(&org, |tx| {
                    tx.execute(
                        "INSERT INTO contacts (name, email, company, city, phone, notes, created_ms, updated_ms)
                         VALUES (?1, '', '', '', '', '', 0, 0)",
                        [format!("Export Load {i}")],
                    )
                });
                if ok.is_ok() {
                    l.lock().unwrap().push((t, t.elapsed()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Load {
            stop,
            lat,
            thread: Some(thread),
        }
    }

    /// Latencies of writes started in [from, to).
    fn between(&self, from: Instant, to: Instant) -> Vec<Duration> {
        self.lat
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, d)| *d)
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let largest = args.sizes_mb.iter().copied().max().unwrap_or(1);
    super::moves::system::check_room(&parent, largest)?;
    let path = parent.join(format!("hemvist-bench-export-{}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    let work = Work {
        path,
        keep: args.keep,
    };
    let sys = System::start(
        &SystemArgs {
            weed: args.weed.clone(),
            backup_interval_ms: 1000,
            idle_close_ms: 60_000,
            snapshot_after_bytes: None,
        },
        &work.path,
    )?;
    let mut rows = Vec::new();
    for &mb in &args.sizes_mb {
        let org = OrgId::parse(&format!("export-bench-{mb}"))?;
        eprintln!("bench: {mb} MB: creating {org} and filling it");
        sys.create_org(&org, "eu-north")?;
        let node = sys.node_hosting(&org)?.clone();
        let file_bytes = fill::fill(&node, &org, mb)?;
        fill::settle_backups(&sys, &org)?;
        let load = Load::start(node.clone(), org.clone());
        std::thread::sleep(Duration::from_secs(3));
        for format in ["sqlite", "jsonl"] {
            let before_from = Instant::now() - Duration::from_secs(2);
            let out = sys.work.join(format!("{org}.{format}"));
            let t = Instant::now();
            let (bytes, copy_ms) = sys.rt.block_on(async {
                let mut resp = sys
                    .control
                    .get_raw(&format!("/orgs/{org}/export?format={format}"))
                    .await?;
                let manifest: serde_json::Value = resp
                    .headers()
                    .get("x-hemvist-manifest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| serde_json::from_str(v).ok())
                    .context("no manifest")?;
                let mut f = std::io::BufWriter::new(std::fs::File::create(&out)?);
                let mut n = 0u64;
                while let Some(c) = resp.chunk().await? {
                    n += c.len() as u64;
                    f.write_all(&c)?;
                }
                f.flush()?;
                anyhow::ensure!(Some(n) == manifest["bytes"].as_u64(), "short export");
                Ok::<_, anyhow::Error>((n, manifest["copy_ms"].as_u64().unwrap_or(0)))
            })?;
            let took = t.elapsed();
            let done = Instant::now();
            let mut during = load.between(t, done);
            let mut before = load.between(before_from, t);
            std::fs::remove_file(&out)?;
            eprintln!(
                "bench: {mb} MB {format}: {} ({} writes during)",
                ms(took),
                during.len()
            );
            rows.push(vec![
                format!("{mb} MB"),
                format!("hemvist export, {format}"),
                ms(took),
                format!("{copy_ms} ms"),
                format!("{:.0} MB", bytes as f64 / 1e6),
                during.len().to_string(),
                format!(
                    "{} / {}",
                    ms(pct(&mut before, 0.99)),
                    ms(pct(&mut during, 0.99))
                ),
                ms(pct(&mut during, 1.0)),
            ]);
            std::thread::sleep(Duration::from_secs(2));
        }
        // Floors on the same file, the writer still running.
        let src = node.tenants.path(&org);
        for (what, f) in [
            ("floor: VACUUM INTO (no HTTP, nothing removed)", 0),
            ("floor: file copy (not consistent under writes)", 1),
        ] {
            let out = sys.work.join(format!("{org}.floor"));
            let t = Instant::now();
            if f == 0 {
                let conn = rusqlite::Connection::open_with_flags(
                    &src,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                conn.execute("VACUUM INTO ?1", [out.to_string_lossy()])?;
            } else {
                std::fs::copy(&src, &out)?;
            }
            let took = t.elapsed();
            let mut during = load.between(t, Instant::now());
            let bytes = std::fs::metadata(&out)?.len();
            std::fs::remove_file(&out)?;
            rows.push(vec![
                format!("{mb} MB"),
                what.into(),
                ms(took),
                "-".into(),
                format!("{:.0} MB", bytes as f64 / 1e6),
                during.len().to_string(),
                format!("- / {}", ms(pct(&mut during, 0.99))),
                ms(pct(&mut during, 1.0)),
            ]);
        }
        drop(load);
        eprintln!("bench: {mb} MB: file {:.0} MB", file_bytes as f64 / 1e6);
    }
    sys.stop();
    println!("\nGDPR export under a writer (a row every 10 ms), through the admin API to a file\n");
    crate::table::print(
        &[
            "TENANT",
            "WAY",
            "TIME",
            "OF IT COPY",
            "BYTES",
            "WRITES DURING",
            "WRITE P99 BEFORE / DURING",
            "WRITE MAX DURING",
        ],
        &rows,
    );
    Ok(())
}
