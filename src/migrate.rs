//! `hemvist migrate`: the tenant schema across the fleet. The control plane holds the migration
//! files and decides each org's version; these verbs send it files (`--dir DIR`, by default the
//! set built into this binary, the repository's `migrations/`), show where the fleet stands,
//! and pin orgs a rollout must leave alone.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use hemvist_proto::migration::{self, MigrationFile};
use serde_json::{json, Value};

use crate::client::Client;
use crate::ops::{print_json, s};
use crate::out::outln;
use crate::{table, ApiArgs};

#[derive(Args, Clone)]
pub struct DirArgs {
    /// A folder of `NNNN_name.sql` files (default: the files built into this binary).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum MigrateCommand {
    /// Tenants per schema version, per region and node; tenants that ran edited files, tenants
    /// behind, orgs not reported yet, and pinned orgs.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The migration files the control plane holds, and whether the folder's files match.
    Files {
        #[command(flatten)]
        dir: DirArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send the folder's files the control plane does not hold yet (a held file with another
    /// checksum is refused, and nothing is stored).
    Push {
        #[command(flatten)]
        dir: DirArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Hold an org at its schema version: rollouts leave it alone until `unpin`.
    Pin {
        org: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Let rollouts migrate the org again.
    Unpin {
        org: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send the folder's files, then roll the schema out in canary waves (persisted: it goes on
    /// in the control plane whatever happens to this command).
    Apply(crate::rollouts::ApplyArgs),
    /// Pause a rollout: nothing new is sent until `resume`.
    Pause(crate::rollouts::RolloutIdArgs),
    /// Resume a paused or halted rollout (a halted one tries its failed tenants again); with
    /// --dir, after sending a newer, fixing file, to its version.
    Resume(crate::rollouts::ResumeArgs),
    /// Abort a rollout: no tenant is migrated after it; migrated ones stay migrated.
    Abort(crate::rollouts::RolloutIdArgs),
    /// Restore an org to before its last migration (every write since is lost: needs --yes).
    Rollback(crate::rollouts::RollbackArgs),
}

/// The folder's migration files (or the built-in ones), checked and in order.
pub fn read_dir(dir: Option<&Path>) -> anyhow::Result<Vec<MigrationFile>> {
    let Some(dir) = dir else {
        return Ok(migration::builtin());
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "sql") {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        files.push(MigrationFile::parse(&name, &bytes).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    files.sort_by_key(|f| f.version);
    migration::check_sequence(&files).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    anyhow::ensure!(
        !files.is_empty(),
        "{} holds no NNNN_name.sql file",
        dir.display()
    );
    Ok(files)
}

/// Sends the files to the control plane; what it stored and what it held already.
pub async fn push(client: &Client, files: &[MigrationFile]) -> anyhow::Result<Value> {
    let body = json!({
        "files": files
            .iter()
            .map(|f| json!({"file": f.file_name(), "sql": f.sql}))
            .collect::<Vec<_>>()
    });
    client.post("/migrations", &body).await
}

pub async fn migrate(command: MigrateCommand) -> anyhow::Result<()> {
    match command {
        MigrateCommand::Apply(args) => crate::rollouts::apply(args).await,
        MigrateCommand::Pause(args) => crate::rollouts::control("pause", args).await,
        MigrateCommand::Resume(args) => crate::rollouts::resume(args).await,
        MigrateCommand::Abort(args) => crate::rollouts::control("abort", args).await,
        MigrateCommand::Rollback(args) => crate::rollouts::rollback(args).await,
        MigrateCommand::Status { api } => {
            let status: Value = Client::new(&api)?.get("/migrations/status").await?;
            if api.json {
                return print_json(&status);
            }
            print_status(&status);
            Ok(())
        }
        MigrateCommand::Files { dir, api } => {
            let local = read_dir(dir.dir.as_deref())?;
            let held: Value = Client::new(&api)?.get("/migrations").await?;
            if api.json {
                return print_json(&held);
            }
            let files = held["files"].as_array().cloned().unwrap_or_default();
            let rows: Vec<Vec<String>> = files
                .iter()
                .map(|f| {
                    let here = local
                        .iter()
                        .find(|l| Some(l.version as u64) == f["version"].as_u64());
                    let matches = match here {
                        Some(l) if l.checksum == s(f, "checksum") => "same".to_string(),
                        Some(_) => "EDITED (another checksum)".to_string(),
                        None => "not in the folder".to_string(),
                    };
                    vec![
                        s(f, "file"),
                        s(f, "checksum")[..12.min(s(f, "checksum").len())].to_string(),
                        if f["check"].is_null() {
                            String::new()
                        } else {
                            s(f, "check")
                        },
                        matches,
                    ]
                })
                .collect();
            table::print(&["FILE", "CHECKSUM", "CHECK", "FOLDER"], &rows);
            let newer: Vec<String> = local
                .iter()
                .filter(|l| l.version as usize > files.len())
                .map(|l| l.file_name())
                .collect();
            if !newer.is_empty() {
                outln!(
                    "\nnot held yet: {} (`hemvist migrate push` sends them)",
                    newer.join(", ")
                );
            }
            outln!(
                "current version (new orgs start at it): {}",
                s(&held, "current")
            );
            Ok(())
        }
        MigrateCommand::Push { dir, api } => {
            let files = read_dir(dir.dir.as_deref())?;
            let answer = push(&Client::new(&api)?, &files).await?;
            if api.json {
                return print_json(&answer);
            }
            let added = answer["added"].as_array().map_or(0, Vec::len);
            outln!(
                "{added} file(s) stored, {} already held",
                answer["known"].as_array().map_or(0, Vec::len)
            );
            Ok(())
        }
        MigrateCommand::Pin { org, reason, api } => {
            let answer: Value = Client::new(&api)?
                .post(
                    &format!("/orgs/{}/pin", hemvist_proto::OrgId::parse(&org)?),
                    &json!({"reason": reason}),
                )
                .await?;
            if api.json {
                return print_json(&answer);
            }
            outln!("org {org} is pinned: rollouts leave it at its version");
            Ok(())
        }
        MigrateCommand::Unpin { org, api } => {
            let answer: Value = Client::new(&api)?
                .post(
                    &format!("/orgs/{}/unpin", hemvist_proto::OrgId::parse(&org)?),
                    &json!({}),
                )
                .await?;
            if api.json {
                return print_json(&answer);
            }
            outln!("org {org} is not pinned");
            Ok(())
        }
    }
}

fn print_status(v: &Value) {
    outln!(
        "schema: new orgs start at version {}; the control plane holds files up to {}; {} tenants",
        s(v, "current"),
        s(v, "newest"),
        s(v, "tenants")
    );
    let versions = v["versions"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|c| {
            let join = |m: &Value| {
                m.as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, n)| format!("{k} {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            vec![
                s(c, "version"),
                s(c, "tenants"),
                join(&c["regions"]),
                join(&c["nodes"]),
            ]
        })
        .collect();
    table::print(&["VERSION", "TENANTS", "BY REGION", "BY NODE"], &rows);
    for m in v["mismatched"].as_array().cloned().unwrap_or_default() {
        outln!(
            "EDITED FILES: {} tenant(s) at version {} ran other files than the held ones \
             (fingerprint {}): {}",
            s(&m, "count"),
            s(&m, "version"),
            s(&m, "fingerprint"),
            list(&m)
        );
    }
    for (key, what) in [
        ("behind", "behind the version they are held at"),
        ("unreported", "not reported by their node yet"),
    ] {
        let g = &v[key];
        if g["count"].as_u64().unwrap_or(0) > 0 {
            outln!("{} tenant(s) {what}: {}", s(g, "count"), list(g));
        }
    }
    if !v["rollout"].is_null() {
        let r = &v["rollout"];
        outln!(
            "newest rollout: {} ({}, to version {})",
            s(r, "id"),
            s(r, "phase"),
            s(r, "target")
        );
    }
    for f in v["failures"].as_array().cloned().unwrap_or_default() {
        outln!(
            "FAILED: {} on {}{}{}: {}",
            s(&f, "org"),
            s(&f, "node"),
            f["file"]
                .as_str()
                .map(|x| format!(", {x}"))
                .unwrap_or_default(),
            f["statement"]
                .as_str()
                .map(|x| format!(", at `{x}`"))
                .unwrap_or_default(),
            s(&f, "error")
        );
    }
    let pinned = v["pinned"].as_array().cloned().unwrap_or_default();
    for p in pinned {
        outln!(
            "pinned: {} ({}, by {})",
            s(&p, "org"),
            s(&p, "reason"),
            s(&p, "pinned_by")
        );
    }
}

fn list(g: &Value) -> String {
    let orgs: Vec<String> = g["orgs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let more = g["count"].as_u64().unwrap_or(0) as usize - orgs.len();
    if more > 0 {
        format!("{} and {more} more", orgs.join(", "))
    } else {
        orgs.join(", ")
    }
}
