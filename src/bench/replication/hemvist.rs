//! hemvist's side of a fleet run: a `hemvist bench replication-node` process hosting the
//! tenants, measured idle and under writes.
//!
//! Keeps true: the measured process does nothing but what `hemvist node` does for backups (and
//! its own writes, which are measured on their own thread).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;

use super::lag::lags;
use super::meter::Meter;
use super::procs::{log_tail, thread_cpu_secs, Guard};
use super::report::{row, Row};
use super::requests::Replicator;
use super::setup::{Bench, ACCESS_KEY, BUCKET, SECRET_KEY};
use super::workload::now_us;

/// A `hemvist bench replication-node` process and its lines.
pub struct NodeProcess {
    pub guard: Guard,
    pub stdin: ChildStdin,
    pub lines: mpsc::Receiver<String>,
    pub log: PathBuf,
}

impl NodeProcess {
    pub fn start(
        b: &Bench,
        data: &Path,
        tenants: usize,
        writers: usize,
        prefix: &str,
        big_mb: u64,
    ) -> anyhow::Result<NodeProcess> {
        let log = data.with_extension("log");
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "replication-node", "--data"])
            .arg(data)
            .args(["--tenants", &tenants.to_string()])
            .args(["--writers", &writers.to_string()])
            .args(["--seconds", &b.args.seconds.to_string()])
            .args(["--endpoint", &b.endpoint])
            .args(["--bucket", BUCKET, "--prefix", prefix])
            .args(["--wait-secs", &b.args.wait_secs.to_string()])
            .args(["--big-mb", &big_mb.to_string()])
            .env("HEMVIST_S3_ACCESS_KEY_ID", ACCESS_KEY)
            .env("HEMVIST_S3_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start hemvist bench replication-node")?;
        let stdin = child.stdin.take().context("node stdin")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(NodeProcess {
            guard: Guard {
                child,
                what: "hemvist bench replication-node",
            },
            stdin,
            lines,
            log,
        })
    }

    pub fn line(&self, limit: Duration) -> anyhow::Result<String> {
        self.lines.recv_timeout(limit).map_err(|_| {
            anyhow::anyhow!(
                "the hemvist node process said nothing for {} s or exited: {}",
                limit.as_secs(),
                log_tail(&self.log)
            )
        })
    }

    pub fn send(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.stdin, "{command}").context("tell the hemvist node process")
    }

    /// Asks the process to stop (its replicator makes one last pass) and waits for it.
    pub fn stop(mut self) {
        let _ = self.send("stop");
        self.guard.wait_exit(Duration::from_secs(40));
    }
}

pub fn ready(line: &str) -> anyhow::Result<serde_json::Value> {
    let json = line
        .strip_prefix("ready ")
        .with_context(|| format!("expected a ready line, got {line:?}"))?;
    Ok(serde_json::from_str(json)?)
}

/// hemvist at `n` tenants: its idle and write rows, and a note on its first uploads.
pub fn run_hemvist(b: &Bench, n: usize) -> anyhow::Result<(Vec<Row>, String)> {
    let prefix = format!("hv-{n}");
    let writers = (n / 10).max(1);
    eprintln!("bench: hemvist, {n} tenants: hosting and first snapshots");
    let mut node = NodeProcess::start(b, &b.work.join(&prefix), n, writers, &prefix, 0)?;
    let ready = ready(&node.line(Duration::from_secs(b.args.wait_secs + 600))?)?;
    let dirty = ready["dirty"].as_u64().unwrap_or(0);
    let writer_tid = ready["writer_tid"].as_u64().map(|t| t as u32);
    let note = format!(
        "hemvist, {n} tenants: hosted and first snapshot of every tenant stored in {:.1} s{}",
        ready["seconds"].as_f64().unwrap_or(0.0),
        if dirty > 0 {
            format!(" (not finished: {dirty} tenants still waiting after --wait-secs)")
        } else {
            String::new()
        }
    );
    let pid = node.guard.pid();
    eprintln!("bench: hemvist, {n} tenants: idle phase");
    let meter = Meter::start(pid, b.ticks)?;
    std::thread::sleep(Duration::from_secs(b.args.seconds));
    let idle = row(
        b,
        Replicator::Hemvist,
        n,
        "idle",
        &prefix,
        meter.stop(b.ticks, &mut node.guard, &node.log)?,
        None,
    );

    eprintln!("bench: hemvist, {n} tenants: write phase ({writers} writers)");
    let mut meter = Meter::start(pid, b.ticks)?;
    // The replication node makes its INSERTs on one thread: measured on its own too.
    if let Some(tid) = writer_tid {
        meter.writer = Some((tid, thread_cpu_secs(pid, tid, b.ticks)?));
    }
    node.send("write")?;
    let mut commits = Vec::new();
    loop {
        let line = node.line(Duration::from_secs(b.args.seconds + 120))?;
        if line.starts_with("written ") {
            break;
        }
        let mut parts = line.split_whitespace().skip(1);
        if let (Some(org), Some(at)) = (parts.next(), parts.next().and_then(|t| t.parse().ok())) {
            commits.push((org.to_string(), at));
        }
    }
    let sampled = meter.stop(b.ticks, &mut node.guard, &node.log)?;
    std::thread::sleep(Duration::from_secs(b.args.grace_secs));
    let deadline = now_us();
    let lag = b
        .proxy
        .with_log(|log| lags(log, Replicator::Hemvist, &prefix, &commits, deadline));
    let write = row(
        b,
        Replicator::Hemvist,
        n,
        "writes",
        &prefix,
        sampled,
        Some(lag),
    );
    node.stop();
    Ok((vec![idle, write], note))
}
