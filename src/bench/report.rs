//! `hemvist bench report`: the residency report and `audit verify` for a fleet of N orgs
//! (default 10,000) in three regions, each with its placement history, its audit entries and
//! a signed checkpoint, over the admin API of a control plane in this process. Beside it, the
//! floor: the same rows read with plain SQL from the same store file, nothing computed.
//!
//! The store is filled through the store's own functions (the path `orgs create` takes, less
//! the node's round trip), so its rows, chain and history are the real ones. Everything binds
//! 127.0.0.1; the admin token is made up per run and never printed.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ReportArgs {
    /// Orgs in the fleet.
    #[arg(long, default_value_t = 10_000)]
    orgs: usize,
    /// Runs of each measurement (the median is shown).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let root = std::env::temp_dir().join(format!("hemvist-bench-report-{}", std::process::id()));
    let result = measure(&args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn measure(args: &ReportArgs, root: &std::path::Path) -> anyhow::Result<()> {
    struct Dir<'a>(&'a std::path::Path);
    impl Dir<'_> {
        fn path(&self) -> &std::path::Path {
            self.0
        }
    }
    let dir = Dir(root);
    let data = dir.path().join("control");
    std::fs::create_dir_all(&data)?;
    let regions = super::fleet::regions(dir.path())?;

    // The fleet, straight into the store.
    let fill = Instant::now();
    super::fleet::fill(&data.join("control.db"), &regions, args.orgs, |i| {
        format!("Org {i}")
    })?;
    let fill = fill.elapsed();

    let token = hemvist_proto::random::hex(24)?;
    let config = super::fleet::control_config(dir.path(), &data, regions, &token)?;
    let rt = tokio::runtime::Runtime::new()?;
    let shutdown = CancellationToken::new();
    let (bound, task) = rt.block_on(hemvist_control::start(config, shutdown.clone()))?;
    let base = format!("http://{}/api/v1", bound.api);
    hemvist_net::tls::install_crypto();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let get = |path: &str| {
        let (http, url, token) = (http.clone(), format!("{base}{path}"), token.clone());
        rt.block_on(async move {
            let t = Instant::now();
            let resp = http.get(url).bearer_auth(token).send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            anyhow::ensure!(
                status.is_success(),
                "{status}: {}",
                String::from_utf8_lossy(&body)
            );
            Ok::<_, anyhow::Error>((t.elapsed(), body.len(), body))
        })
    };
    // Until the first checkpoint covers the chain.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, _, body) = get("/audit/verify")?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if v["checkpoints"]["newest"]["seq"] == v["head_seq"] {
            anyhow::ensure!(v["ok"] == true, "the chain does not verify: {v}");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no checkpoint: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut rows = Vec::new();
    let one = format!("/audit/report?org=org-{:05}&format=json", args.orgs / 2);
    for (what, path) in [
        ("audit verify (chain + checkpoints)", "/audit/verify"),
        ("report, JSON", "/audit/report?format=json"),
        ("report, CSV", "/audit/report?format=csv"),
        ("report, HTML", "/audit/report?format=html"),
        ("report of one org, JSON", one.as_str()),
    ] {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..args.runs.max(1) {
            let (t, n, body) = get(path)?;
            if path.contains("format=json") && !path.contains("org=") {
                let r: serde_json::Value = serde_json::from_slice(&body)?;
                anyhow::ensure!(
                    r["orgs"].as_array().map(Vec::len) == Some(args.orgs),
                    "the report has {} orgs",
                    r["orgs"].as_array().map(Vec::len).unwrap_or(0)
                );
            }
            times.push(t);
            size = n;
        }
        rows.push(vec![
            what.to_string(),
            format!("{:.0} ms", median(times).as_secs_f64() * 1000.0),
            format!("{:.1} MiB", size as f64 / 1_048_576.0),
        ]);
    }
    shutdown.cancel();
    let _ = rt.block_on(task);

    // The floor: the same rows, read with plain SQL, nothing computed or rendered.
    let conn = rusqlite::Connection::open(data.join("control.db"))?;
    let mut times = Vec::new();
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        let mut n = 0usize;
        for table in ["orgs", "placement_history", "audit"] {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {table}"))
                .context(table)?;
            let cols = stmt.column_count();
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                for c in 0..cols {
                    let _ = r.get_ref(c)?;
                }
                n += 1;
            }
        }
        std::hint::black_box(n);
        times.push(t.elapsed());
    }
    rows.push(vec![
        "floor: SELECT * of orgs, placement_history, audit".into(),
        format!("{:.0} ms", median(times).as_secs_f64() * 1000.0),
        "-".into(),
    ]);
    println!(
        "\nresidency report and audit verify: {} orgs in 3 regions (filled in {:.1} s), median of {} runs, over the admin API\n",
        args.orgs,
        fill.as_secs_f64(),
        args.runs.max(1)
    );
    crate::table::print(&["WHAT", "TIME", "SIZE"], &rows);
    Ok(())
}
