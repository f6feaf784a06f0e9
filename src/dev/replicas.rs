//! `hemvist dev --ha`'s control plane: three replicas of `hemvist control`, each its own
//! process (so one can be killed: `kill -9` the leader and watch another take over), on the
//! local PostgreSQL. A replica that exits is started again after a second, as a supervisor
//! (systemd, Kubernetes) would; it comes back as a follower. Secrets reach them through the
//! environment, never through their config files.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hemvist_control::ControlConfig;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Secrets;

/// One replica, as dev.json and the welcome show it.
#[derive(Serialize, Clone)]
pub struct ReplicaJson {
    pub name: String,
    pub api: String,
    pub grpc: String,
    /// Its process id now (it changes when the replica is started again).
    pub pid: u32,
}

pub struct Replicas {
    pub list: Vec<(ReplicaJson, Arc<AtomicU32>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Replicas {
    /// Starts one supervised process per address pair (admin API, gRPC).
    pub fn start(
        data: &Path,
        base: &ControlConfig,
        secrets: &Secrets,
        addrs: &[(SocketAddr, SocketAddr)],
        scheme: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Replicas> {
        let exe = std::env::current_exe().context("find the hemvist executable")?;
        let logs = data.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mut list = Vec::new();
        let mut tasks = Vec::new();
        for (i, (api, grpc)) in addrs.iter().enumerate() {
            let name = format!("r{}", i + 1);
            let mut config = base.clone();
            config.api_listen = *api;
            config.grpc_listen = *grpc;
            config.replica.name = Some(name.clone());
            config.replica.api_url = Some(format!("{scheme}://{api}"));
            config.replica.grpc_url = Some(format!("{scheme}://{grpc}"));
            config.admin_token = "from HEMVIST_ADMIN_TOKEN".into();
            config.join_token = "from HEMVIST_JOIN_TOKEN".into();
            config.audit.signing_key = None;
            let path = data.join("config").join(format!("control-{name}.toml"));
            std::fs::create_dir_all(data.join("config"))?;
            std::fs::write(
                &path,
                format!(
                    "# Written by `hemvist dev --ha`: replica {name}, started as `hemvist control \
                     --config` with its secrets in the environment.\n{}",
                    toml::to_string(&config)?
                ),
            )?;
            let pid = Arc::new(AtomicU32::new(0));
            let env = vec![
                ("HEMVIST_ADMIN_TOKEN", secrets.admin_token.clone()),
                ("HEMVIST_JOIN_TOKEN", secrets.join_token.clone()),
                (
                    "HEMVIST_AUDIT_SIGNING_KEY",
                    secrets.audit_signing_key.clone().unwrap_or_default(),
                ),
            ];
            tasks.push(tokio::spawn(supervise(
                exe.clone(),
                path,
                logs.join(format!("control-{name}.log")),
                env,
                name.clone(),
                pid.clone(),
                shutdown.clone(),
            )));
            list.push((
                ReplicaJson {
                    name,
                    api: format!("{scheme}://{api}"),
                    grpc: format!("{scheme}://{grpc}"),
                    pid: 0,
                },
                pid,
            ));
        }
        Ok(Replicas { list, tasks })
    }

    /// The replicas with their current process ids.
    pub fn json(&self) -> Vec<ReplicaJson> {
        self.list
            .iter()
            .map(|(r, pid)| ReplicaJson {
                pid: pid.load(Ordering::Relaxed),
                ..r.clone()
            })
            .collect()
    }

    /// Waits for every replica to stop (after shutdown).
    pub async fn stopped(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn supervise(
    exe: std::path::PathBuf,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
    name: String,
    pid: Arc<AtomicU32>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let err = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(replica = %name, error = %e, "cannot open the replica's log");
                return;
            }
        };
        let spawned = tokio::process::Command::new(&exe)
            .arg("control")
            .arg("--config")
            .arg(&config)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(replica = %name, error = %e, "cannot start a control replica");
                return;
            }
        };
        pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        tokio::select! {
            status = child.wait() => {
                tracing::warn!(replica = %name, status = ?status.ok(), log = %log.display(), "control replica exited; starting it again in 1 s");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            _ = shutdown.cancelled() => {
                if let Some(id) = child.id() {
                    let _ = tokio::process::Command::new("kill").arg(id.to_string()).status().await;
                }
                if tokio::time::timeout(Duration::from_secs(8), child.wait()).await.is_err() {
                    let _ = child.start_kill();
                }
                return;
            }
        }
    }
}
