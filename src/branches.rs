//! `hemvist branch create|list|show|keepalive|destroy`: test environments branched from an org;
//! and `hemvist orgs erase`, which destroys an org as a branch is destroyed, everywhere. Each is
//! an operation in the control plane; these verbs ask and, with `--wait`, watch (stopping the
//! watching stops nothing).

use std::path::Path;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use hemvist_proto::OrgId;
use serde_json::{json, Value};

use crate::client::Client;
use crate::operations::{self, OperationId};
use crate::ops::{error_of, print_json, s, time};
use crate::out::outln;
use crate::rollouts::duration_ms;
use crate::ApiArgs;

#[derive(Subcommand)]
pub enum BranchCommand {
    /// Branch ORG into a new org ORG--NAME: its backups at a point in time, masked, in a region
    /// its residency policy allows, destroyed at its expiry unless kept alive.
    Create(CreateArgs),
    /// Live branches: parent, point in time, region, owner, expiry, last used.
    List {
        /// Only the branches of this org.
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One branch.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Push a branch's expiry out (by its TTL, or --for).
    Keepalive {
        id: String,
        /// How far from now: 30m, 2h, 3d (at most the policy's maximum).
        #[arg(long = "for")]
        for_: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Destroy a branch now: its file, its backups, its placement, its users.
    Destroy {
        id: String,
        /// Follow the destruction until it is done.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args)]
pub struct CreateArgs {
    /// The org to branch.
    pub org: String,
    /// The branch's name: the new org is ORG--NAME.
    #[arg(long)]
    pub name: String,
    /// How long it lives unless kept alive: 30m, 8h, 7d (the policy's default if absent).
    #[arg(long)]
    pub ttl: Option<String>,
    /// The parent's point in time: RFC 3339 in UTC (2026-11-25T08:05:59Z), milliseconds, or
    /// `now` (the default).
    #[arg(long, default_value = "now")]
    pub at: String,
    /// A mask file (TOML: `[table]` then `column = "rule"`; rules fake_name, fake_email, hash,
    /// null, keep, shuffle).
    #[arg(long)]
    pub mask: Option<std::path::PathBuf>,
    /// A region the parent's residency policy allows (default: the parent's home).
    #[arg(long)]
    pub region: Option<String>,
    /// The parent's users: `copy` (default; their sessions are not), `none`, or a file of the
    /// branch's own users instead (TOML: `[[user]]` with `email`, `name`, `password`; implies
    /// --wait: they are added once the branch serves, each audited).
    #[arg(long, default_value = "copy")]
    pub users: String,
    /// A signed-in user's use keeps the branch alive.
    #[arg(long)]
    pub keepalive_on_use: bool,
    /// Follow the creation until the branch serves (exit 0) or it failed (exit 1).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args)]
pub struct EraseArgs {
    /// The org to erase.
    pub org: String,
    /// The org's id again: erasure cannot be undone.
    #[arg(long)]
    pub confirm: String,
    /// Follow the erasure until it is done.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn erase(args: EraseArgs) -> anyhow::Result<()> {
    let org = OrgId::parse(&args.org)?;
    let client = Client::new(&args.api)?;
    let op: Value = client
        .post(
            &format!("/orgs/{org}/erase"),
            &json!({"confirm": args.confirm}),
        )
        .await?;
    finish(&client, op, args.wait, args.api.json, "erased").await
}

pub async fn branch(command: BranchCommand) -> anyhow::Result<()> {
    match command {
        BranchCommand::Create(args) => create(args).await,
        BranchCommand::List { org, api } => list(org, &api).await,
        BranchCommand::Show { id, api } => {
            let id = OrgId::parse(&id)?;
            let client = Client::new(&api)?;
            let b: Value = client.get(&format!("/branches/{id}")).await?;
            if api.json {
                return print_json(&b);
            }
            show(&b);
            Ok(())
        }
        BranchCommand::Keepalive { id, for_, api } => {
            let id = OrgId::parse(&id)?;
            let client = Client::new(&api)?;
            let body = match for_ {
                Some(f) => json!({ "for_ms": duration_ms(&f)? }),
                None => json!({}),
            };
            let b: Value = client
                .post(&format!("/branches/{id}/keepalive"), &body)
                .await?;
            if api.json {
                return print_json(&b);
            }
            outln!("branch {id} now expires at {}", time(&b["expires_ms"]));
            Ok(())
        }
        BranchCommand::Destroy { id, wait, api } => {
            let id = OrgId::parse(&id)?;
            let client = Client::new(&api)?;
            let op: Value = client.delete(&format!("/branches/{id}")).await?;
            finish(&client, op, wait, api.json, "destroyed").await
        }
    }
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let org = OrgId::parse(&args.org)?;
    let client = Client::new(&args.api)?;
    let at_ms = match args.at.trim() {
        "now" | "" => None,
        t => Some(hemvist_node::backup::parse_time(t).map_err(anyhow::Error::msg)?),
    };
    let mask = match &args.mask {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("read the mask {}", path.display()))?,
        ),
        None => None,
    };
    let ttl_ms = args.ttl.as_deref().map(duration_ms).transpose()?;
    let own_users = match args.users.as_str() {
        "copy" | "none" => None,
        file => Some(users_file(Path::new(file))?),
    };
    let body = json!({
        "name": args.name,
        "ttl_ms": ttl_ms,
        "at_ms": at_ms,
        "mask": mask,
        "region": args.region,
        "users": if own_users.is_some() { "none" } else { args.users.as_str() },
        "keepalive_on_use": args.keepalive_on_use,
    });
    let op: Value = client.post(&format!("/orgs/{org}/branches"), &body).await?;
    let branch = s(&op, "org");
    finish(
        &client,
        op,
        args.wait || own_users.is_some(),
        args.api.json,
        "made",
    )
    .await?;
    for u in own_users.unwrap_or_default() {
        let _: Value = client
            .post(&format!("/orgs/{branch}/users"), &u)
            .await
            .with_context(|| format!("add {} to branch {branch}", u["email"]))?;
        if !args.api.json {
            outln!(
                "  user {} added to {branch}",
                u["email"].as_str().unwrap_or("-")
            );
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    user: Vec<UserEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    email: String,
    name: String,
    password: String,
}

/// The users of `--users FILE`, as `POST /orgs/{id}/users` bodies.
fn users_file(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "--users {}: not copy or none, and not a readable file",
            path.display()
        )
    })?;
    let parsed: UsersFile = toml::from_str(&text)
        .with_context(|| format!("{}: [[user]] with email, name, password", path.display()))?;
    if parsed.user.is_empty() {
        bail!("{} names no [[user]]", path.display());
    }
    Ok(parsed
        .user
        .into_iter()
        .map(|u| json!({"email": u.email, "name": u.name, "password": u.password}))
        .collect())
}

/// Prints a started operation, or follows it to its end.
async fn finish(
    client: &Client,
    op: Value,
    wait: bool,
    json: bool,
    what: &str,
) -> anyhow::Result<()> {
    let id = OperationId::parse(op["id"].as_str().unwrap_or_default())?;
    let org = s(&op, "org");
    if !wait {
        if json {
            return print_json(&op);
        }
        outln!(
            "{} {id} started for branch {org}, phase {}",
            s(&op, "kind"),
            s(&op, "phase")
        );
        outln!("  follow it: hemvist ops show {id}");
        return Ok(());
    }
    let ended = operations::follow_phases(client, &id, json, false).await?;
    if json {
        outln!("{ended}");
    }
    match ended["phase"].as_str() {
        Some("done") => {
            if !json {
                outln!(
                    "{} {org} {what} ({id})",
                    if what == "erased" { "org" } else { "branch" }
                );
                if what == "made" {
                    if let Ok(b) = client.get::<Value>(&format!("/branches/{org}")).await {
                        show(&b);
                    }
                }
            }
            Ok(())
        }
        _ => bail!(
            "{id} ended in phase {}: {}",
            s(&ended, "phase"),
            error_of(&ended)
        ),
    }
}

fn show(b: &Value) {
    let rows = [
        ("branch", s(b, "id")),
        ("state", s(b, "state")),
        ("parent", s(b, "parent")),
        ("as of", time(&b["at_ms"])),
        ("region", s(b, "region")),
        ("node", s(b, "node")),
        (
            "serves at",
            b["node_url"]
                .as_str()
                .map(|u| format!("{u}/o/{}/", s(b, "id")))
                .unwrap_or_else(|| "-".into()),
        ),
        ("owner", s(b, "owner")),
        ("expires", time(&b["expires_ms"])),
        ("keepalive on use", s(b, "keepalive_on_use")),
        ("masked", s(b, "masked")),
        ("users", s(b, "users")),
        ("last used", time(&b["last_used_ms"])),
        (
            "size",
            b["size_bytes"]
                .as_u64()
                .map(crate::operations::size)
                .unwrap_or_else(|| "-".into()),
        ),
    ];
    for (k, v) in rows {
        outln!("{k:>16}  {v}");
    }
}

async fn list(org: Option<String>, api: &ApiArgs) -> anyhow::Result<()> {
    let client = Client::new(api)?;
    let path = match org {
        Some(o) => format!("/branches?org={}", OrgId::parse(&o)?),
        None => "/branches".to_string(),
    };
    let all: Vec<Value> = client.get(&path).await?;
    if api.json {
        return print_json(&Value::Array(all));
    }
    if all.is_empty() {
        outln!("no branches");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|b| {
            vec![
                s(b, "id"),
                s(b, "state"),
                s(b, "parent"),
                time(&b["at_ms"]),
                s(b, "region"),
                s(b, "owner"),
                time(&b["expires_ms"]),
                b["size_bytes"]
                    .as_u64()
                    .map(crate::operations::size)
                    .unwrap_or_else(|| "-".into()),
                time(&b["last_used_ms"]),
            ]
        })
        .collect();
    crate::table::print(
        &[
            "BRANCH",
            "STATE",
            "PARENT",
            "AS OF",
            "REGION",
            "OWNER",
            "EXPIRES",
            "LAST USED",
        ],
        &rows,
    );
    Ok(())
}
