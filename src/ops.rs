//! The operator's verbs: `regions`, `nodes`, `orgs create|list|show|rebuild`, and the small
//! readers of the API's JSON the verbs share (`orgs move` is in `moves`).

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Subcommand;
use hemvist_proto::OrgId;
use serde_json::Value;

use crate::client::Client;
use crate::out::outln;
use crate::{table, ApiArgs};

#[derive(Subcommand)]
pub enum OrgsCommand {
    /// Place a new org: by explicit region, by the client's IP (GeoIP), or in the default region.
    Create {
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, conflicts_with = "ip")]
        region: Option<String>,
        /// The client's IP address, placed through the GeoIP database.
        #[arg(long)]
        ip: Option<String>,
        /// Where the org's data may live: jurisdictions or regions, comma-separated (`EU`).
        #[arg(long)]
        residency: Option<String>,
        /// `async` (default: in object storage within the replication interval) or `sync`
        /// (a write is acknowledged once it is in object storage).
        #[arg(long)]
        durability: Option<String>,
        /// Wait until the node hosts it.
        #[arg(long)]
        wait: bool,
        /// Also create the org's first user with this email (implies --wait).
        #[arg(long)]
        admin_email: Option<String>,
        /// The first user's name.
        #[arg(long)]
        admin_name: Option<String>,
        /// The first user's password; default HEMVIST_PASSWORD, else one is generated and printed.
        #[arg(long, env = "HEMVIST_PASSWORD", hide_env_values = true)]
        admin_password: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Let the org's node rebuild it from backups that reach only an older point than the one
    /// known (a damaged or lost object): with --accept-older, the newest reachable point is
    /// taken on the next attempt, and the acceptance is audited.
    Rebuild {
        id: String,
        /// Take the newest point the backups reach, older than the known one.
        #[arg(long)]
        accept_older: bool,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List orgs with their placement, by id, a page at a time.
    List {
        /// Orgs per page (1 to 10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this org id (the last one of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Every page, not only the first.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One org in detail: placement, generation, schema version, past locations, commands,
    /// audit trail.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Add a user to an org (stored in the org's own database, in its home region).
    Add {
        org: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: Option<String>,
        /// Default HEMVIST_PASSWORD, else one is generated and printed.
        #[arg(long, env = "HEMVIST_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn generate_password() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 16];
    hemvist_proto::random::fill(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect())
}

pub async fn users(command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Add {
            org,
            email,
            name,
            password,
            api,
        } => {
            let org = OrgId::parse(&org)?;
            let (password, generated) = match password {
                Some(p) => (p, false),
                None => (generate_password()?, true),
            };
            let body = serde_json::json!({"email": email, "name": name.unwrap_or_default(), "password": password});
            let mut added: Value = Client::new(&api)?
                .post(&format!("/orgs/{org}/users"), &body)
                .await?;
            if api.json {
                if generated {
                    added["password"] = Value::String(password);
                }
                return print_json(&added);
            }
            outln!(
                "user {} added to org {} ({})",
                s(&added, "email"),
                s(&added, "org"),
                s(&added, "state")
            );
            if generated {
                outln!("  password: {password}   (generated; shown once)");
            }
            Ok(())
        }
    }
}

/// A field of an API answer as text; `-` when absent or null.
pub(crate) fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// A time in milliseconds as the verbs print it (RFC 3339, UTC); `-` when absent or null.
pub(crate) fn time(v: &Value) -> String {
    v.as_i64()
        .map(hemvist_node::backup::format_time)
        .unwrap_or_else(|| "-".into())
}

/// A refusal's kind and message, as the verbs print one; empty when there is none.
pub(crate) fn error_of(v: &Value) -> String {
    match (v["error_kind"].as_str(), v["error"].as_str()) {
        (Some(kind), Some(e)) => format!("{kind}: {e}"),
        (_, e) => e.unwrap_or("").to_string(),
    }
}

pub(crate) fn print_json(v: &Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn regions(api: &ApiArgs) -> anyhow::Result<()> {
    let regions: Vec<Value> = Client::new(api)?.get("/regions").await?;
    if api.json {
        return print_json(&Value::Array(regions));
    }
    let rows: Vec<Vec<String>> = regions
        .iter()
        .map(|r| {
            let countries = r
                .get("countries")
                .and_then(|c| c.as_array())
                .map(|c| {
                    c.iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                s(r, "id")
                    + if r["default"] == Value::Bool(true) {
                        " *"
                    } else {
                        ""
                    },
                s(r, "name"),
                s(r, "jurisdiction"),
                countries,
                format!("{}/{}", s(r, "healthy_nodes"), s(r, "nodes")),
                s(r, "object_store"),
            ]
        })
        .collect();
    table::print(
        &[
            "REGION",
            "NAME",
            "JURISDICTION",
            "COUNTRIES",
            "HEALTHY/NODES",
            "OBJECT STORE",
        ],
        &rows,
    );
    Ok(())
}

pub async fn nodes(api: &ApiArgs) -> anyhow::Result<()> {
    let nodes: Vec<Value> = Client::new(api)?.get("/nodes").await?;
    if api.json {
        return print_json(&Value::Array(nodes));
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let health = if n["healthy"] == Value::Bool(true) {
                "healthy"
            } else if n["connected"] == Value::Bool(true) {
                "lease expired"
            } else {
                "disconnected"
            };
            vec![
                s(n, "id"),
                s(n, "region"),
                health.into(),
                format!("{}/{}", s(n, "tenants"), s(n, "capacity")),
                s(n, "public_url"),
            ]
        })
        .collect();
    table::print(&["NODE", "REGION", "STATE", "TENANTS", "URL"], &rows);
    Ok(())
}

/// The org's backup position as `orgs show` prints it.
fn backup_line(org: &Value) -> String {
    let r = &org["replication"];
    if r.is_null() {
        return "no position reported (backups off, or nothing written yet)".into();
    }
    let shipped = r["shipped_ms"].as_i64().unwrap_or(0);
    format!(
        "generation {} LSN {} shipped {}, lag {:.1} s",
        s(r, "generation"),
        s(r, "lsn"),
        if shipped > 0 {
            hemvist_node::backup::format_time(shipped)
        } else {
            "never".into()
        },
        org["replication_lag_ms"].as_i64().unwrap_or(0) as f64 / 1000.0
    )
}

/// Where the org has lived, and when: one row per placement, the last one open ("now"), each
/// one with the operation that moved the org there (none for its first placement).
fn print_locations(locations: &[Value]) {
    let rows: Vec<Vec<String>> = locations
        .iter()
        .map(|l| {
            vec![
                s(l, "region"),
                s(l, "node_id"),
                s(l, "generation"),
                time(&l["from_ms"]),
                if l["to_ms"].is_null() {
                    "now".into()
                } else {
                    time(&l["to_ms"])
                },
                s(l, "operation"),
            ]
        })
        .collect();
    table::print(
        &["REGION", "NODE", "GEN", "FROM", "TO", "MOVED HERE BY"],
        &rows,
    );
}

pub async fn orgs(command: OrgsCommand) -> anyhow::Result<()> {
    match command {
        OrgsCommand::Create {
            id,
            name,
            region,
            ip,
            residency,
            durability,
            wait,
            admin_email,
            admin_name,
            admin_password,
            api,
        } => {
            let wait = wait || admin_email.is_some();
            let client = Client::new(&api)?;
            let body = serde_json::json!({
                "id": id, "name": name, "region": region, "ip": ip, "residency": residency,
                "durability": durability,
            });
            let mut created: Value = client.post("/orgs", &body).await?;
            if wait {
                let deadline = Instant::now() + Duration::from_secs(60);
                while created["org"]["ready"] != Value::Bool(true) {
                    if Instant::now() > deadline {
                        bail!("org {id} was placed but its node has not confirmed hosting it within 60 s");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    created["org"] = client.get(&format!("/orgs/{id}")).await?;
                }
            }
            let mut user = Value::Null;
            let mut generated = None;
            if let Some(email) = admin_email {
                let password = match admin_password {
                    Some(p) => p,
                    None => {
                        let p = generate_password()?;
                        generated = Some(p.clone());
                        p
                    }
                };
                let body = serde_json::json!({"email": email, "name": admin_name.unwrap_or_default(), "password": password});
                user = client.post(&format!("/orgs/{id}/users"), &body).await?;
            }
            if api.json {
                if !user.is_null() {
                    created["user"] = user;
                    if let Some(p) = &generated {
                        created["user"]["password"] = Value::String(p.clone());
                    }
                }
                return print_json(&created);
            }
            let org = &created["org"];
            let verb = if created["created"] == Value::Bool(true) {
                "created"
            } else {
                "already exists, unchanged:"
            };
            outln!(
                "org {} {verb} in {} on node {} at generation {}",
                s(org, "id"),
                s(org, "home_region"),
                s(org, "node"),
                s(org, "generation")
            );
            outln!("  why: {}", s(org, "placement_reason"));
            outln!("  residency: {}", s(org, "residency"));
            if let Some(url) = org.get("node_url").and_then(|u| u.as_str()) {
                outln!("  url: {url}/o/{}/", s(org, "id"));
            }
            if !user.is_null() {
                outln!(
                    "  first user: {} ({})",
                    s(&user, "email"),
                    s(&user, "state")
                );
                if let Some(p) = generated {
                    outln!("  password: {p}   (generated; shown once)");
                }
            }
            Ok(())
        }
        OrgsCommand::Rebuild {
            id,
            accept_older,
            reason,
            api,
        } => {
            let id = OrgId::parse(&id)?;
            if !accept_older {
                bail!(
                    "a rebuild of {id} from backups that reach only an older point loses what \
                     is after it: pass --accept-older to take that point (see `hemvist orgs \
                     show {id}` for what its node said is missing)"
                );
            }
            let body = serde_json::json!({ "reason": reason });
            let accepted: Value = Client::new(&api)?
                .post(&format!("/orgs/{id}/accept-older"), &body)
                .await?;
            if api.json {
                return print_json(&accepted);
            }
            outln!(
                "accepted: the next rebuild of {id} on node {} restores the newest point its \
                 backups reach (audited as org.accepted_older)",
                s(&accepted["accepted"], "node")
            );
            if let Some(refusal) = accepted["accepted"]["refusal"].as_str() {
                outln!("  the node said: {refusal}");
            }
            Ok(())
        }
        OrgsCommand::List {
            limit,
            after,
            all,
            api,
        } => {
            if !(1..=10_000).contains(&limit) {
                bail!("--limit {limit}: a page holds 1 to 10000 orgs");
            }
            let client = Client::new(&api)?;
            let mut after = after.map(|a| OrgId::parse(&a)).transpose()?;
            let mut orgs: Vec<Value> = Vec::new();
            let more = loop {
                let cursor = after
                    .as_ref()
                    .map(|a| format!("&after={a}"))
                    .unwrap_or_default();
                let page: Vec<Value> = client.get(&format!("/orgs?limit={limit}{cursor}")).await?;
                let full = page.len() == limit;
                after = page
                    .last()
                    .and_then(|o| o["id"].as_str())
                    .map(OrgId::parse)
                    .transpose()?
                    .or(after);
                orgs.extend(page);
                if !full || !all {
                    break full;
                }
            };
            // On stderr, so a script reading the page (`--json`) reads only orgs, and hears
            // that there are more.
            if let (true, Some(last)) = (more, &after) {
                eprintln!("more: hemvist orgs list --after {last} (or --all)");
            }
            if api.json {
                return print_json(&Value::Array(orgs));
            }
            let rows: Vec<Vec<String>> = orgs
                .iter()
                .map(|o| {
                    vec![
                        s(o, "id"),
                        s(o, "name"),
                        s(o, "home_region"),
                        s(o, "node"),
                        s(o, "generation"),
                        s(o, "schema_version"),
                        if o["ready"] == Value::Bool(true) {
                            "ready"
                        } else {
                            "pending"
                        }
                        .into(),
                        s(o, "residency"),
                    ]
                })
                .collect();
            table::print(
                &[
                    "ORG",
                    "NAME",
                    "REGION",
                    "NODE",
                    "GEN",
                    "SCHEMA",
                    "STATE",
                    "RESIDENCY",
                ],
                &rows,
            );
            Ok(())
        }
        OrgsCommand::Show { id, api } => {
            let id = OrgId::parse(&id)?;
            let org: Value = Client::new(&api)?.get(&format!("/orgs/{id}")).await?;
            if api.json {
                return print_json(&org);
            }
            let rows = [
                ("org", s(&org, "id")),
                ("name", s(&org, "name")),
                ("home region", s(&org, "home_region")),
                ("residency", s(&org, "residency")),
                ("durability", s(&org, "durability")),
                ("node", s(&org, "node")),
                ("url", s(&org, "node_url")),
                ("generation", s(&org, "generation")),
                ("schema version", s(&org, "schema_version")),
                (
                    "state",
                    if org["ready"] == Value::Bool(true) {
                        "ready".into()
                    } else {
                        "pending".into()
                    },
                ),
                ("placed because", s(&org, "placement_reason")),
                ("backup", backup_line(&org)),
            ];
            for (k, v) in rows {
                outln!("{k:<16}{v}");
            }
            if let Some(locations) = org["locations"].as_array() {
                outln!("\nlocations (oldest first):");
                print_locations(locations);
            }
            if let Some(cmds) = org["commands"].as_array() {
                outln!("\ncommands:");
                for c in cmds {
                    outln!(
                        "  {:<40} {:<8} attempts {} {}",
                        s(c, "id"),
                        s(c, "state"),
                        s(c, "attempts"),
                        error_of(c)
                    );
                }
            }
            if let Some(audit) = org["audit"].as_array() {
                outln!("\naudit:");
                for a in audit {
                    outln!(
                        "  #{} {} {} {}",
                        s(a, "seq"),
                        s(a, "action"),
                        s(a, "actor"),
                        a["detail"]
                    );
                }
            }
            Ok(())
        }
    }
}
