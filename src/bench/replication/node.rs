//! `hemvist bench replication-node`: the hemvist side of `bench replication`, in a process of
//! its own so that its CPU, memory and open files can be measured apart from the benchmark's.
//!
//! It opens a `Node` with backups to the given S3 endpoint, hosts N tenants, and runs the
//! replicator as `hemvist node` does. Talks to the benchmark over stdin and stdout:
//!
//! ```text
//! -> ready {"seconds": 3.2, "dirty": 0}   every tenant's first snapshot is stored (or time is up)
//! <- write                                 run the write phase
//! -> w ORG MICROS                          one per write: its commit time (µs since 1970)
//! -> written COUNT
//! <- stop (or end of input)                stop the replicator (one last pass) and exit
//! ```

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dev::demo::Rng;
use anyhow::Context;
use clap::Args;
use hemvist_node::backup::store::BackupConfig;
use hemvist_node::{HostRequest, Node, NodeConfig};
use hemvist_proto::{Generation, NodeId, OrgId, RegionId};
use tokio_util::sync::CancellationToken;

use super::workload::{data_key, now_us, org_name, paced, writer_orgs, INSERT};

#[derive(Args)]
pub struct NodeArgs {
    /// The node's data folder.
    #[arg(long)]
    data: PathBuf,
    /// Tenants to host (orgs t00001, t00002, ...).
    #[arg(long)]
    tenants: usize,
    /// Tenants written during the write phase, once a second each.
    #[arg(long)]
    writers: usize,
    /// Length of the write phase.
    #[arg(long)]
    seconds: u64,
    /// The S3 endpoint (the benchmark's counting proxy), `http://host:port`.
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    bucket: String,
    /// Everything goes under this prefix in the bucket.
    #[arg(long)]
    prefix: String,
    /// The longest to wait for the first snapshots before saying ready anyway.
    #[arg(long, default_value_t = 600)]
    wait_secs: u64,
    /// Fill the first tenant with about this many MB of text before the first snapshot (for
    /// the restore measurement).
    #[arg(long, default_value_t = 0)]
    big_mb: u64,
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Handle::current();
    // Credentials come from the environment (HEMVIST_S3_ACCESS_KEY_ID/SECRET_ACCESS_KEY); every
    // other setting is a node's default.
    let backup = BackupConfig {
        url: format!("s3://{}/{}", args.bucket, args.prefix),
        endpoint: Some(args.endpoint.clone()),
        ..BackupConfig::local(&args.data.join("unused"))
    };
    let config = NodeConfig {
        id: NodeId::parse("bench-1")?,
        region: RegionId::parse("eu-north")?,
        // Never dialled: this process starts no control link.
        control_url: "http://127.0.0.1:9".into(),
        control_urls: Vec::new(),
        join_token: "bench-replication-unused".into(),
        listen: "127.0.0.1:0".parse()?,
        public_url: None,
        control_tls: Default::default(),
        insecure: false,
        tls: None,
        limits: Default::default(),
        signin: Default::default(),
        data_dir: args.data.clone(),
        capacity: args.tenants as u64,
        max_open_tenants: 1_024,
        idle_close_ms: 60_000,
        trash_grace_secs: 7 * 24 * 3600,
        idempotency_ttl_secs: 24 * 3600,
        disk_headroom_mib: 256,
        backup: Some(backup),
    };
    let node = Arc::new(Node::open(config, "http://127.0.0.1:9".into())?);
    let replicator = node
        .backup
        .clone()
        .context("the node was opened without backups")?;
    let started = Instant::now();
    let orgs: Vec<OrgId> = (1..=args.tenants)
        .map(|i| OrgId::parse(&org_name(i)))
        .collect::<Result<_, _>>()?;
    let schema = hemvist_node::tenants::schema::Schema::new(
        hemvist_proto::migration::builtin().len() as u32,
        hemvist_proto::migration::builtin(),
    )?;
    for (i, org) in orgs.iter().enumerate() {
        node.hosting.host(&HostRequest {
            org: org.clone(),
            generation: Generation::FIRST,
            name: org.to_string(),
            allowed_regions: vec!["eu-north".into()],
            sync: false,
            data_key: Some(data_key(i + 1)),
            expect_backup: false,
            moved_here: false,
            schema: schema.clone(),
        })?;
    }
    if args.big_mb > 0 {
        let org = orgs.first().context("--big-mb needs at least one tenant")?;
        fill(&node, org, args.big_mb)?;
        replicator.mark_dirty(org);
    }
    let stop = CancellationToken::new();
    // As `hemvist node` runs it (`serve`), with the idle sweep that closes unused tenants.
    let replicating = rt.spawn(replicator.clone().run(stop.clone()));
    let sweeper = rt.spawn(node.close_idle_tenants(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    while replicator.dirty_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // This thread makes the write phase's INSERTs: its id lets the bench tell their CPU apart.
    let writer_tid: Option<u32> = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok());
    println!(
        "ready {}",
        serde_json::json!({
            "seconds": started.elapsed().as_secs_f64(),
            "dirty": replicator.dirty_count(),
            "writer_tid": writer_tid,
        })
    );

    let writers = writer_orgs(&orgs, args.writers);
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "write" => {
                // `Node::write` would refuse: it checks the lease, and no control plane grants
                // one here. The write itself is the same: the tenant's writer connection, then
                // the replicator is told, as `Node::write` does.
                let written = paced(writers.len(), args.seconds, |i| {
                    let org = &writers[i];
                    node.tenants.write(org, |tx| {
                        tx.execute(
                            INSERT,
                            rusqlite::params![format!("Bench Writer {i}"), hemvist_node::now_ms()],
                        )
                    })?;
                    let at = now_us();
                    replicator.mark_dirty(org);
                    println!("w {org} {at}");
                    Ok(())
                })?;
                println!("written {written}");
            }
            "stop" => break,
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    stop.cancel();
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(30), replicating).await;
        let _ = sweeper.await;
    });
    Ok(())
}

/// Fills `org` with about `mb` MB of random words in a table of its own, 1 MB a transaction.
fn fill(node: &Node, org: &OrgId, mb: u64) -> anyhow::Result<()> {
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ber", "gu", "sta", "vik", "en", "dal", "ro", "sund", "ha", "ne", "tor",
        "li", "an", "fjell", "by", "ström", "äng",
    ];
    let mut rng = Rng::new(5);
    node.tenants.write(org, |tx| {
        tx.execute(
            "CREATE TABLE IF NOT EXISTS bench_notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
            [],
        )
    })?;
    for _ in 0..mb {
        let rows: Vec<String> = (0..16)
            .map(|_| {
                let mut text = String::with_capacity(64 * 1024);
                while text.len() < 62_500 {
                    for _ in 0..1 + rng.next_u64() % 3 {
                        text.push_str(rng.pick(SYLLABLES));
                    }
                    text.push(' ');
                }
                text
            })
            .collect();
        node.tenants.write(org, |tx| {
            let mut stmt = tx.prepare("INSERT INTO bench_notes (body) VALUES (?1)")?;
            for row in &rows {
                stmt.execute([row])?;
            }
            Ok(())
        })?;
    }
    Ok(())
}
