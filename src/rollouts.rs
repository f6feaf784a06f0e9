//! `hemvist migrate apply|pause|resume|abort|rollback`: a rollout of the tenant schema across
//! the fleet, in canary waves, driven by the control plane (persisted: it goes on if this verb
//! stops). `apply` first sends the folder's files (`--dir`, default the built-in set); with
//! `--wait` it follows the rollout: a progress bar on a terminal, JSON lines with `--json`.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use hemvist_proto::OrgId;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::client::Client;
use crate::migrate::{push, read_dir, DirArgs};
use crate::operations::{self, OperationId};
use crate::ops::{error_of, print_json, s};
use crate::out::outln;
use crate::ApiArgs;

const POLL: Duration = Duration::from_millis(300);

#[derive(Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// The version to reach (default: the newest file).
    #[arg(long)]
    pub to: Option<u32>,
    /// The canary: org ids (acme,globex), a count (3) or a share (2%). Default: the first wave,
    /// chosen across regions.
    #[arg(long)]
    pub canary: Option<String>,
    /// Wave sizes after the canary, counts or shares of all orgs.
    #[arg(long, value_delimiter = ',', default_value = "1,5%,25%,100%")]
    pub waves: Vec<String>,
    /// How long each wave's tenants are watched (errors on their nodes) before the next: 30s,
    /// 2m, 500ms.
    #[arg(long, default_value = "30s")]
    pub bake: String,
    /// Tenants migrated at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Run every tenant's migration and roll it back: what would fail, and nothing changed.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the rollout until it is done (exit 0), halted or aborted (exit 1).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args)]
pub struct RolloutIdArgs {
    /// The rollout's operation id (`hemvist ops list`).
    pub id: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args)]
pub struct ResumeArgs {
    /// The rollout's operation id (`hemvist ops list`).
    pub id: String,
    /// Send this folder's files first and go on to its newest version (a fixing file).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// The version to go on to (default: the rollout's, or with --dir the folder's newest).
    #[arg(long)]
    pub to: Option<u32>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args)]
pub struct RollbackArgs {
    pub org: String,
    /// Confirm: every write to the org since its restore point is lost.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `30s`, `2m`, `500ms`, `1h` as milliseconds.
pub fn duration_ms(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("\"{s}\" is not a duration like 30s, 2m or 500ms"))?;
    let per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => bail!("\"{s}\" is not a duration like 30s, 2m or 500ms"),
    };
    Ok(n.saturating_mul(per))
}

pub async fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.api)?;
    let files = read_dir(args.dir.dir.as_deref())?;
    push(&client, &files).await?;
    let body = json!({
        "to": args.to,
        "canary": args.canary,
        "waves": args.waves,
        "bake_ms": duration_ms(&args.bake)?,
        "concurrency": args.concurrency,
        "dry_run": args.dry_run,
    });
    let started: Value = client.post("/migrations/rollouts", &body).await?;
    let id = OperationId::parse(started["id"].as_str().unwrap_or_default())?;
    let d = &started["detail"];
    if !args.wait {
        if args.api.json {
            return print_json(&started);
        }
        outln!(
            "rollout {id} started{}: {} orgs to version {}, canary {}",
            if args.dry_run { " (dry run)" } else { "" },
            d["order"].as_array().map_or(0, Vec::len),
            s(d, "target"),
            canary(d)
        );
        outln!(
            "  follow it: hemvist ops show {id}   pause/resume/abort: hemvist migrate pause {id}"
        );
        return Ok(());
    }
    follow(&client, &id, args.api.json).await
}

fn canary(d: &Value) -> String {
    let n = d["waves"][0].as_u64().unwrap_or(0) as usize;
    let orgs: Vec<&str> = d["order"]
        .as_array()
        .map(|a| a.iter().take(n).filter_map(Value::as_str).collect())
        .unwrap_or_default();
    orgs.join(", ")
}

async fn follow(client: &Client, id: &OperationId, json: bool) -> anyhow::Result<()> {
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let mut last = String::new();
    loop {
        let op = operations::fetch(client, id).await?;
        let d = &op["detail"];
        let p = &d["progress"];
        let total = d["order"].as_array().map_or(0, Vec::len) as u64;
        let done = ["migrated", "at_target", "held_back"]
            .iter()
            .map(|k| p[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
        let line = format!(
            "{} wave {}/{}: {} migrated, {} in flight, {} deferred, {} held back",
            s(&op, "phase"),
            d["wave"].as_u64().unwrap_or(0) + 1,
            d["waves"].as_array().map_or(0, Vec::len),
            p["migrated"].as_u64().unwrap_or(0),
            p["in_flight"].as_u64().unwrap_or(0) + p["queued"].as_u64().unwrap_or(0),
            p["deferred"].as_u64().unwrap_or(0),
            p["held_back"].as_u64().unwrap_or(0),
        );
        if line != last {
            match &bar {
                Some(b) => {
                    b.set_length(total);
                    b.set_position(done);
                    b.set_message(line.clone());
                }
                None if json => outln!(
                    "{}",
                    json!({"phase": op["phase"], "wave": d["wave"], "progress": p})
                ),
                None => outln!("{line}"),
            }
            last = line;
        }
        let phase = s(&op, "phase");
        if !op["finished_ms"].is_null() || phase == "halted" {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return outcome(&op, json);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn outcome(op: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{op}");
    }
    let d = &op["detail"];
    let id = s(op, "id");
    match op["phase"].as_str() {
        Some("done") => {
            if !json {
                outln!(
                    "rollout {id} done{}: version {}; {} migrated, {} already there, {} held back",
                    if d["dry_run"] == true {
                        " (dry run: nothing changed)"
                    } else {
                        ""
                    },
                    s(d, "target"),
                    s(&d["progress"], "migrated"),
                    s(&d["progress"], "at_target"),
                    s(&d["progress"], "held_back")
                );
            }
            Ok(())
        }
        Some("halted") => {
            let h = &d["halted"];
            bail!(
                "rollout {id} HALTED: org {} on {}{}{}: {}\n  the tenant is as it was (its \
                 transaction rolled back). `hemvist migrate resume {id}` tries it again, \
                 `hemvist migrate abort {id}` stops here",
                s(h, "org"),
                s(h, "node"),
                h["file"]
                    .as_str()
                    .map(|f| format!(", file {f}"))
                    .unwrap_or_default(),
                h["statement"]
                    .as_str()
                    .map(|st| format!(", statement `{st}`"))
                    .unwrap_or_default(),
                s(h, "error")
            )
        }
        other => bail!(
            "rollout {id} ended {}: {}",
            other.unwrap_or("-"),
            error_of(op)
        ),
    }
}

pub async fn control(verb: &str, args: RolloutIdArgs) -> anyhow::Result<()> {
    let id = OperationId::parse(&args.id)?;
    let path = match verb {
        "abort" => format!("/operations/{id}/cancel"),
        v => format!("/operations/{id}/{v}"),
    };
    let op: Value = Client::new(&args.api)?.post(&path, &json!({})).await?;
    if args.api.json {
        return print_json(&op);
    }
    outln!("rollout {id} is {}", s(&op, "phase"));
    Ok(())
}

pub async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let id = OperationId::parse(&args.id)?;
    let client = Client::new(&args.api)?;
    let mut to = args.to;
    if let Some(dir) = &args.dir {
        let files = read_dir(Some(dir))?;
        push(&client, &files).await?;
        to = to.or(files.last().map(|f| f.version));
    }
    let op: Value = client
        .post(&format!("/operations/{id}/resume"), &json!({"to": to}))
        .await?;
    if args.api.json {
        return print_json(&op);
    }
    outln!(
        "rollout {id} is {} (to version {})",
        s(&op, "phase"),
        s(&op["detail"], "target")
    );
    Ok(())
}

pub async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let org = OrgId::parse(&args.org)?;
    let op: Value = Client::new(&args.api)?
        .post(
            &format!("/orgs/{org}/rollback"),
            &json!({"confirm": args.yes}),
        )
        .await?;
    if args.api.json {
        return print_json(&op);
    }
    outln!(
        "rollback {} started: {}",
        s(&op, "id"),
        s(&op["detail"], "warning")
    );
    Ok(())
}
