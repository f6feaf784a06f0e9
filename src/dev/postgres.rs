//! `hemvist dev --ha`'s PostgreSQL: a local cluster made with Debian's `initdb` (installed by
//! `apt-get install postgresql`), kept across restarts, listening on 127.0.0.1 only, with
//! trust authentication for its one local user. PostgreSQL refuses to run as root, so as root
//! it runs as the `postgres` user, in a folder of its own under the system's temporary folder.
//! It is stopped when `hemvist dev` stops.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A running local cluster.
pub struct LocalPostgres {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    /// Its files (the cluster in `data/`, the server's log).
    pub folder: PathBuf,
    /// `postgres://hemvist@127.0.0.1:PORT/postgres`.
    pub server_url: String,
}

fn find_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort();
    if let Some(b) = found.pop() {
        return Ok(b);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir);
        if p.join("initdb").is_file() && p.join("pg_ctl").is_file() {
            return Ok(p.to_path_buf());
        }
    }
    bail!(
        "hemvist dev --ha needs PostgreSQL's initdb and pg_ctl: install them \
         (on Debian: apt-get install postgresql)"
    )
}

/// Whether this process runs as root (`/proc/self` belongs to the process's user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl LocalPostgres {
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .output()
            .with_context(|| format!("run {}", exe.display()))
    }

    /// Starts the cluster whose files are kept for the data folder `data` (made on first use),
    /// on `port` of 127.0.0.1.
    pub fn start(data: &Path, port: u16) -> anyhow::Result<LocalPostgres> {
        let bin = find_bin()?;
        let as_postgres = is_root();
        let dir = if as_postgres {
            // The postgres user must reach its folder; the data folder may be under /root.
            let key = data
                .display()
                .to_string()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                });
            std::env::temp_dir().join(format!("hemvist-dev-postgres-{key:016x}"))
        } else {
            data.join("postgres")
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let pg = LocalPostgres {
            bin,
            data: dir.join("data"),
            as_postgres,
            folder: dir.clone(),
            server_url: format!("postgres://hemvist@127.0.0.1:{port}/postgres"),
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .context("chown the PostgreSQL folder")?
                .success();
            if !ok {
                bail!("could not give {} to the postgres user", dir.display());
            }
        }
        let data_s = pg.data.display().to_string();
        if !pg.data.join("PG_VERSION").is_file() {
            tracing::info!(folder = %dir.display(), "dev --ha: making a local PostgreSQL cluster");
            let out = pg.run(
                "initdb",
                &[
                    "-D",
                    &data_s,
                    "-A",
                    "trust",
                    "-U",
                    "hemvist",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ],
            )?;
            if !out.status.success() {
                bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let log = dir.join("server.log").display().to_string();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            dir.display()
        );
        let out = pg.run(
            "pg_ctl",
            &[
                "-D", &data_s, "-l", &log, "-w", "-t", "60", "-o", &options, "start",
            ],
        )?;
        if !out.status.success() {
            bail!(
                "pg_ctl start (is port {port} free? try --port-base): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(pg)
    }

    /// The database `name` on this cluster (made if it is missing; kept if it is there).
    pub fn database(&self, name: &str) -> anyhow::Result<String> {
        let admin = hemvist_control::store::sql::Conn::postgres(&self.server_url)?;
        let exists = admin
            .query_row(
                "SELECT count(*) FROM pg_database WHERE datname = ?1",
                [name],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if exists == 0 {
            admin
                .execute_batch(&format!("CREATE DATABASE {name}"))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(hemvist_control::store::database_url(&self.server_url, name))
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "fast", "stop"]);
    }
}
