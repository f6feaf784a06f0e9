//! The processes the benchmark runs (SeaweedFS, Litestream, the hemvist node), stopped when
//! dropped, and what `/proc` says about a process: CPU time, memory, open files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A child process: asked to stop (SIGTERM) when dropped, killed if it has not after 10 s.
pub struct Guard {
    pub child: Child,
    pub what: &'static str,
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of its log if the process has exited.
    pub fn check_alive(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}): {}", self.what, log_tail(log));
        }
        Ok(())
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if !self.wait_exit(Duration::from_secs(10)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a log, to say why something failed.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(15);
    format!("(from {})\n{}", log.display(), lines[from..].join("\n"))
}

/// A port on 127.0.0.1 that is free, and so is the one 10000 above it (SeaweedFS puts each
/// server's gRPC there). The listeners are returned so that no two picks collide; drop them
/// just before starting the server.
fn free_port_pair() -> anyhow::Result<(u16, Vec<std::net::TcpListener>)> {
    for _ in 0..200 {
        let a = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = a.local_addr()?.port();
        let Some(grpc) = port.checked_add(10_000) else {
            continue;
        };
        if let Ok(b) = std::net::TcpListener::bind(("127.0.0.1", grpc)) {
            return Ok((port, vec![a, b]));
        }
    }
    bail!("no free pair of ports (p, p + 10000) on 127.0.0.1")
}

/// `weed mini` on loopback: master, volume, filer and S3 gateway in one process, with one
/// identity and one bucket.
pub struct Weed {
    /// Stops the server when the `Weed` is dropped.
    _guard: Guard,
    /// `http://127.0.0.1:PORT`, the S3 gateway.
    pub s3: String,
    pub log: PathBuf,
}

impl Weed {
    pub fn start(
        exe: &Path,
        dir: &Path,
        bucket: &str,
        key: &str,
        secret: &str,
    ) -> anyhow::Result<Weed> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let config = dir.join("s3.json");
        std::fs::write(
            &config,
            serde_json::json!({"identities": [{
                "name": "bench",
                "credentials": [{"accessKey": key, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        )?;
        let mut held = Vec::new();
        let mut port = || -> anyhow::Result<u16> {
            let (p, listeners) = free_port_pair()?;
            held.extend(listeners);
            Ok(p)
        };
        let (s3, master, volume, filer, admin) = (port()?, port()?, port()?, port()?, port()?);
        let log = dir.join("weed.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(exe);
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            // Without these it binds and advertises the machine's non-loopback address.
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-admin.port={admin}"))
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
            ])
            // Its unix sockets go into the working folder, not /tmp.
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-bucket={bucket}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        drop(held);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let mut guard = Guard {
            child,
            what: "weed mini",
        };
        let url = format!("http://127.0.0.1:{s3}");
        // Up once its S3 port answers HTTP at all (403 without credentials).
        let deadline = Instant::now() + Duration::from_secs(60);
        let rt = tokio::runtime::Handle::current();
        loop {
            guard.check_alive(&log)?;
            if rt.block_on(reqwest::get(&url)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "weed mini did not answer on {url} within 60 s: {}",
                    log_tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(Weed {
            _guard: guard,
            s3: url,
            log,
        })
    }
}

/// A process's CPU time so far, in seconds (user + system).
pub fn cpu_secs(pid: u32, ticks_per_sec: f64) -> anyhow::Result<f64> {
    stat_cpu_secs(&format!("/proc/{pid}/stat"), pid, ticks_per_sec)
}

/// One thread's CPU time so far (its main thread has the process's id).
pub fn thread_cpu_secs(pid: u32, tid: u32, ticks_per_sec: f64) -> anyhow::Result<f64> {
    stat_cpu_secs(&format!("/proc/{pid}/task/{tid}/stat"), pid, ticks_per_sec)
}

fn stat_cpu_secs(path: &str, pid: u32, ticks_per_sec: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    // The command name is in parentheses and may hold spaces; the fields follow its end.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    // utime and stime are fields 14 and 15; the first after the name is field 3.
    Ok((field(11)? + field(12)?) / ticks_per_sec)
}

/// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`; 100 on Linux in practice).
pub fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
