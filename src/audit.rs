//! `hemvist audit verify|log`: the audit chain checked against its signed checkpoints, and
//! read, by org and time.

use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::out::outln;
use crate::ApiArgs;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every entry of the chain, then the chain against every signed checkpoint; name the
    /// first bad entry. Exits 1 when anything is wrong.
    Verify {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The residency report: per org, its policy, every region that held its data with exact
    /// intervals (primary, a move's copy, backups, branches), its moves, and a verdict.
    Report {
        /// Only this org (and its branches).
        #[arg(long)]
        org: Option<String>,
        /// Intervals overlapping this range only: RFC 3339 or milliseconds since 1970.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// json, csv, or html (a page to hand to an auditor).
        #[arg(long, default_value = "json")]
        format: String,
        /// Write it here instead of to stdout.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Also LIST every region's store for each org's objects: any the ledger does not
        /// explain is a violation. Store credentials as for `hemvist backups`.
        #[arg(long)]
        verify_stores: bool,
        #[command(flatten)]
        store: crate::backups::StoreArgs,
    },
    /// Read the log, oldest first.
    Log {
        /// Only this org's entries.
        #[arg(long)]
        org: Option<String>,
        /// From this time on: RFC 3339 (2026-12-02T21:00:00Z) or milliseconds since 1970.
        #[arg(long)]
        since: Option<String>,
        /// At most this many entries (every one when a filter is given, paged).
        #[arg(long, default_value_t = 1_000)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { api } => verify(&api).await,
        AuditCommand::Log {
            org,
            since,
            limit,
            api,
        } => log(&api, org, since, limit).await,
        AuditCommand::Report {
            org,
            from,
            to,
            format,
            out,
            verify_stores,
            store,
        } => report(org, from, to, &format, out, verify_stores, &store).await,
    }
}

async fn verify(api: &ApiArgs) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let v: Value = client.get("/audit/verify").await?;
    let ok = v["ok"].as_bool() == Some(true);
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!(
            "{}: {} entries, newest {}",
            if ok { "ok" } else { "DAMAGED" },
            v["entries"],
            v["head_seq"]
        );
        if let Some(bad) = v["first_bad"].as_object() {
            outln!(
                "first bad entry: {} ({})",
                bad["seq"],
                bad["problem"].as_str().unwrap_or("")
            );
        }
        for p in v["problems"].as_array().into_iter().flatten().skip(1) {
            outln!("also: {}", p.as_str().unwrap_or(""));
        }
        match v["checkpoints"].as_object() {
            Some(c) => {
                outln!(
                    "checkpoints: {} in {} ({} signed by key {})",
                    c["found"],
                    c["store"].as_str().unwrap_or(""),
                    c["trusted"],
                    c["public_key"].as_str().unwrap_or("")
                );
                if let Some(n) = c["newest"].as_object() {
                    outln!(
                        "checked against: {} (entry {}, signed {}, lock {} until {})",
                        n["name"].as_str().unwrap_or(""),
                        n["seq"],
                        n["signed_at"].as_str().unwrap_or(""),
                        n["lock_mode"].as_str().unwrap_or("none"),
                        n["locked_until"].as_str().unwrap_or("-")
                    );
                }
            }
            None => outln!("checkpoints: none configured"),
        }
        for w in v["warnings"].as_array().into_iter().flatten() {
            outln!("warning: {}", w.as_str().unwrap_or(""));
        }
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

async fn log(
    api: &ApiArgs,
    org: Option<String>,
    since: Option<String>,
    limit: u32,
) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let mut entries: Vec<Value> = Vec::new();
    if org.is_none() && since.is_none() {
        entries = client
            .get(&format!("/audit?limit={}", limit.min(10_000)))
            .await?;
    } else {
        let mut after = 0i64;
        while (entries.len() as u32) < limit {
            let mut q = format!(
                "/audit?after={after}&limit={}",
                (limit - entries.len() as u32).min(10_000)
            );
            if let Some(o) = &org {
                q.push_str(&format!("&org={}", encode(o)));
            }
            if let Some(s) = &since {
                q.push_str(&format!("&since={}", encode(s)));
            }
            let page: Vec<Value> = client.get(&q).await?;
            let Some(last) = page.last().and_then(|e| e["seq"].as_i64()) else {
                break;
            };
            after = last;
            entries.extend(page);
        }
    }
    if api.json {
        outln!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e["seq"].to_string(),
                e["at_ms"]
                    .as_i64()
                    .map(hemvist_node::backup::format_time)
                    .unwrap_or_default(),
                e["actor"].as_str().unwrap_or("").to_string(),
                e["action"].as_str().unwrap_or("").to_string(),
                e["org"].as_str().unwrap_or("-").to_string(),
                e["detail"].to_string(),
            ]
        })
        .collect();
    crate::table::print(&["SEQ", "AT", "ACTOR", "ACTION", "ORG", "DETAIL"], &rows);
    Ok(())
}

/// Percent-encoding for a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn report(
    org: Option<String>,
    from: Option<String>,
    to: Option<String>,
    format: &str,
    out: Option<std::path::PathBuf>,
    verify_stores: bool,
    store: &crate::backups::StoreArgs,
) -> anyhow::Result<()> {
    use hemvist_control::audit::report::Report;
    if !["json", "csv", "html"].contains(&format) {
        anyhow::bail!("--format {format}: use json, csv or html");
    }
    let client = Client::new(&store.api)?;
    let mut q = String::from("/audit/report?format=json");
    for (k, v) in [("org", &org), ("from", &from), ("to", &to)] {
        if let Some(v) = v {
            q.push_str(&format!("&{k}={}", encode(v)));
        }
    }
    let mut report: Report = client.get(&q).await?;
    if verify_stores {
        crate::backups::verify_stores(&mut report, store).await?;
    }
    let text = match format {
        "csv" => report.csv(),
        "html" => report.html(),
        _ => serde_json::to_string_pretty(&report)?,
    };
    match out {
        Some(path) => {
            std::fs::write(&path, text)?;
            eprintln!(
                "{}: {} orgs, {} compliant, {} with violations",
                path.display(),
                report.orgs.len(),
                report.compliant,
                report.violations
            );
        }
        None => outln!("{text}"),
    }
    if report.violations > 0 || !report.verification.ok {
        std::process::exit(1);
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct SetResidencyArgs {
    /// The org.
    pub org: String,
    /// The new policy: `EU`, `EU,US`, `eu-north,eu-central`, or `anywhere`.
    pub policy: String,
    /// Why (kept in the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    /// Carry the org to this region (one the new policy allows) and delete its backups where
    /// the new policy forbids, as one audited operation.
    #[arg(long)]
    pub move_to: Option<String>,
    /// With --move-to: follow the operation until it is done (exit 0) or rolled back (exit 1).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `hemvist orgs set-residency ORG POLICY`: refused, naming every place the new policy
/// forbids, while anything of the org is there.
pub async fn set_residency(args: SetResidencyArgs) -> anyhow::Result<()> {
    let org = hemvist_proto::OrgId::parse(&args.org)?;
    let client = Client::new(&args.api)?;
    let done: Value = client
        .post(
            &format!("/orgs/{org}/residency"),
            &serde_json::json!({"policy": args.policy, "reason": args.reason, "move_to": args.move_to}),
        )
        .await?;
    if done["kind"].as_str() != Some("set-residency") {
        if args.api.json {
            outln!("{}", serde_json::to_string_pretty(&done)?);
        } else {
            outln!(
                "org {org}'s residency is now {}",
                done["residency"].as_str().unwrap_or("")
            );
        }
        return Ok(());
    }
    let id = crate::operations::OperationId::parse(done["id"].as_str().unwrap_or_default())?;
    if !args.wait {
        if args.api.json {
            outln!("{}", serde_json::to_string_pretty(&done)?);
        } else {
            outln!(
                "residency change {id} started: org {org} from {} to {}, carried to {}",
                done["detail"]["from_policy"].as_str().unwrap_or(""),
                done["detail"]["to_policy"].as_str().unwrap_or(""),
                done["detail"]["move_to"].as_str().unwrap_or("")
            );
            outln!("  follow it: hemvist ops show {id}   (hemvist ops cancel {id} stops it before the org is carried over)");
        }
        return Ok(());
    }
    let ended = crate::operations::follow_phases(&client, &id, args.api.json, true).await?;
    if args.api.json {
        outln!("{ended}");
    }
    if ended["phase"].as_str() != Some("done") {
        anyhow::bail!(
            "{id} ended in phase {}: {}",
            ended["phase"].as_str().unwrap_or("?"),
            ended["error"].as_str().unwrap_or("no reason given")
        );
    }
    if !args.api.json {
        let purged: Vec<String> = ended["detail"]["purged"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r[0].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        outln!(
            "org {org}'s residency is now {}; it lives in {}{}",
            ended["detail"]["to_policy"].as_str().unwrap_or(""),
            ended["detail"]["move_to"].as_str().unwrap_or(""),
            if purged.is_empty() {
                String::new()
            } else {
                format!("; its backups were deleted from {}", purged.join(", "))
            }
        );
    }
    Ok(())
}
