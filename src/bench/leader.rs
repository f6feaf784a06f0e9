//! `hemvist bench leader`: how long the control plane is gone when its leading replica is
//! killed. Three `hemvist control` replicas (separate processes of this binary, supervised as
//! `hemvist dev --ha` does: a killed one is started again, as a follower) share a local
//! PostgreSQL; one node runs in this process and knows all three. Per trial the leader is
//! SIGKILLed, then, timed from the kill:
//! - **new leader**: another replica answers `/healthz` as the leader;
//! - **write accepted**: a new org is accepted through a follower (its answer is 503 until a
//!   replica leads);
//! - **operations resumed**: the node hosts that org, so the new leader's reconciler runs and
//!   the node's session has moved to it.
//!
//! The floor is the lease's time to live: a dead leader's lease must run out before anyone
//! may lead. Neon's storage controller, the peer, cannot run here; its leader lease
//! works the same way.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use hemvist_control::ControlConfig;
use hemvist_node::backup::store::BackupConfig;
use hemvist_node::NodeConfig;
use hemvist_proto::{NodeId, OrgId, RegionId};
use tokio_util::sync::CancellationToken;

use super::{ms, stats};
use crate::dev::postgres::LocalPostgres;
use crate::dev::replicas::Replicas;

#[derive(Args)]
pub struct LeaderArgs {
    /// Leader kills to time.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// The replicas' `[replica] lease_ttl_ms`.
    #[arg(long, default_value_t = 3000)]
    pub lease_ttl_ms: u64,
    /// Where the working folder goes (the system's temporary folder by default).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

fn free() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

struct Trial {
    leader: Duration,
    accepted: Duration,
    hosted: Duration,
}

pub fn run(args: LeaderArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.trials > 0, "--trials must be at least 1");
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = parent.join(format!("hemvist-bench-leader-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let rt = tokio::runtime::Runtime::new()?;
    let trials = rt
        .block_on(measure(&args, &work))
        .with_context(|| format!("the replicas' logs are in {}", work.join("logs").display()))?;
    let _ = std::fs::remove_dir_all(&work);
    report(&args, &trials);
    Ok(())
}

async fn measure(args: &LeaderArgs, work: &std::path::Path) -> anyhow::Result<Vec<Trial>> {
    let pg = LocalPostgres::start(work, free()?.port())?;
    let store = hemvist_control::store::fresh_database(&pg.server_url, "bench_leader")?;
    let secrets = crate::dev::Secrets::new()?;
    let objects = work.join("objects");
    std::fs::create_dir_all(&objects)?;
    let mut config: ControlConfig = toml::from_str(&format!(
        "data_dir = {:?}\nadmin_token = \"-\"\njoin_token = \"-\"\ndefault_region = \"eu-north\"\n\
         lease_ttl_ms = 3000\nheartbeat_interval_ms = 500\ncommand_retry_ms = 1000\n\
         [[regions]]\nid = \"eu-north\"\nname = \"Stockholm\"\njurisdiction = \"EU\"\n\
         countries = [\"SE\"]\nobject_store = {:?}\n",
        work.join("control").display().to_string(),
        format!("file://{}", objects.display()),
    ))?;
    config.store = Some(store);
    config.replica.lease_ttl_ms = args.lease_ttl_ms;
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3)
        .map(|_| Ok((free()?, free()?)))
        .collect::<anyhow::Result<_>>()?;
    let shutdown = CancellationToken::new();
    let replicas = Replicas::start(work, &config, &secrets, &addrs, "http", &shutdown)?;
    let node_addr = free()?;
    let node = hemvist_node::start(
        NodeConfig {
            id: NodeId::parse("eu-north-1")?,
            region: RegionId::parse("eu-north")?,
            control_url: format!("http://{}", addrs[0].1),
            control_urls: addrs[1..]
                .iter()
                .map(|a| format!("http://{}", a.1))
                .collect(),
            control_tls: Default::default(),
            insecure: false,
            join_token: secrets.join_token().to_string(),
            listen: node_addr,
            public_url: Some(format!("http://{node_addr}")),
            tls: None,
            limits: Default::default(),
            signin: Default::default(),
            data_dir: work.join("node"),
            capacity: 100_000,
            max_open_tenants: 1_024,
            idle_close_ms: 60_000,
            trash_grace_secs: 3600,
            idempotency_ttl_secs: 3600,
            disk_headroom_mib: 16,
            backup: Some(BackupConfig::local(&objects)),
        },
        shutdown.clone(),
    )
    .await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let apis: Vec<String> = addrs.iter().map(|a| format!("http://{}", a.0)).collect();
    let result = async {
        let mut trials = Vec::new();
        for i in 0..args.trials {
            let leader = wait_leader(&http, &apis, Duration::from_secs(60)).await?;
            // The node is connected to the leader before each kill.
            wait_hosted_org(&http, &apis, &secrets, &node.node, &format!("warm-{i}")).await?;
            let pid = replicas.json()[leader].pid;
            let killed = Instant::now();
            std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()?;
            // Any replica may lead next, the killed one too once its supervisor restarts it.
            let new = wait_leader(&http, &apis, Duration::from_secs(60)).await?;
            let t_leader = killed.elapsed();
            let id = format!("after-{i}");
            // Written through a replica that does not lead (and was not killed).
            let front = (0..apis.len())
                .find(|j| *j != new && *j != leader)
                .unwrap_or(new);
            let t_accepted = create_org(&http, &apis[front], &secrets, &id, killed).await?;
            let org = OrgId::parse(&id)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while node.node.state.hosted(&org).is_none() {
                if Instant::now() > deadline {
                    bail!("trial {i}: {id} was not hosted within 60 s of the kill");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let t_hosted = killed.elapsed();
            eprintln!(
                "bench: leader kill {}: new leader {}, write accepted {}, operations resumed {}",
                i + 1,
                ms(t_leader),
                ms(t_accepted),
                ms(t_hosted)
            );
            trials.push(Trial {
                leader: t_leader,
                accepted: t_accepted,
                hosted: t_hosted,
            });
            // The killed replica is started again (as a follower) before the next trial.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Ok::<_, anyhow::Error>(trials)
    }
    .await;
    shutdown.cancel();
    let _ = node.task.await;
    replicas.stopped().await;
    let folder = pg.folder.clone();
    drop(pg);
    let _ = std::fs::remove_dir_all(folder);
    result
}

/// The index of the replica (of `apis`) that answers `/healthz` as the leader.
async fn wait_leader(
    http: &reqwest::Client,
    apis: &[String],
    limit: Duration,
) -> anyhow::Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        for (i, a) in apis.iter().enumerate() {
            if let Ok(r) = http.get(format!("{a}/healthz")).send().await {
                if r.text().await.is_ok_and(|t| t.trim() == "ok") {
                    return Ok(i);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no replica led within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Creates an org through `api`, retrying while no replica leads; when it was accepted,
/// counted from `since`.
async fn create_org(
    http: &reqwest::Client,
    api: &str,
    secrets: &crate::dev::Secrets,
    id: &str,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http
            .post(format!("{api}/api/v1/orgs"))
            .bearer_auth(secrets.admin_token())
            .json(&serde_json::json!({"id": id, "name": id, "region": "eu-north"}))
            .send()
            .await;
        if let Ok(r) = answer {
            let status = r.status().as_u16();
            if status == 201 || status == 200 || status == 202 {
                return Ok(since.elapsed());
            }
            if status != 503 && status != 502 {
                bail!(
                    "creating {id}: {status} {}",
                    r.text().await.unwrap_or_default()
                );
            }
        }
        if Instant::now() > deadline {
            bail!("creating {id}: no replica accepted it within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_hosted_org(
    http: &reqwest::Client,
    apis: &[String],
    secrets: &crate::dev::Secrets,
    node: &hemvist_node::Node,
    id: &str,
) -> anyhow::Result<()> {
    create_org(http, &apis[0], secrets, id, Instant::now()).await?;
    let org = OrgId::parse(id)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.state.hosted(&org).is_none() {
        if Instant::now() > deadline {
            bail!("{id} was not hosted within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn report(args: &LeaderArgs, trials: &[Trial]) {
    let row = |name: &str, v: Vec<Duration>| {
        let s = stats(v);
        vec![name.to_string(), ms(s.p50), ms(s.p99), ms(s.max)]
    };
    println!(
        "hemvist bench leader: {} kills of the leading control replica of three on one local \
         PostgreSQL; lease time to live {} ms; one node\n",
        trials.len(),
        args.lease_ttl_ms
    );
    crate::table::print(
        &["from the kill to", "p50", "p99", "max"],
        &[
            row(
                "a new replica leads",
                trials.iter().map(|t| t.leader).collect(),
            ),
            row(
                "a write is accepted (through a follower)",
                trials.iter().map(|t| t.accepted).collect(),
            ),
            row(
                "operations resumed (a new org hosted on its node)",
                trials.iter().map(|t| t.hosted).collect(),
            ),
            vec![
                "floor: the lease's time to live".into(),
                ms(Duration::from_millis(args.lease_ttl_ms)),
                String::new(),
                String::new(),
            ],
        ],
    );
    let p99 = stats(trials.iter().map(|t| t.hosted).collect()).p99;
    println!(
        "\nFailover p99 < 10 s (kill -> operations resumed): {} ({}).",
        if p99 < Duration::from_secs(10) {
            "met"
        } else {
            "NOT met"
        },
        ms(p99)
    );
}
