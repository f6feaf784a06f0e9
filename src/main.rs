//! `hemvist`: one binary for the control plane, the nodes, the demo and the operator's verbs.

mod audit;
mod backups;
mod bench;
mod branches;
mod client;
mod dev;
mod export;
mod migrate;
mod moves;
mod nodes;
mod operations;
mod ops;
mod out;
mod rollouts;
mod table;
mod tokens;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "hemvist",
    version,
    about = "Many small SQLite tenants, each kept in its home region"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole system on one machine: a control plane and three nodes in three regions.
    Dev(dev::DevArgs),
    /// Run the control plane.
    Control {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a node.
    Node {
        #[arg(long)]
        config: PathBuf,
    },
    /// List regions and their health.
    Regions(ApiArgs),
    /// List nodes and their health; drain a node (its orgs move off it live) or undrain it.
    Nodes {
        #[command(subcommand)]
        command: Option<nodes::NodesCommand>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create, list, show and move orgs.
    Orgs {
        #[command(subcommand)]
        command: OrgsVerb,
    },
    /// Manage an org's users.
    Users {
        #[command(subcommand)]
        command: ops::UsersCommand,
    },
    /// The tenant schema across the fleet: status, files, push, pin, unpin.
    Migrate {
        #[command(subcommand)]
        command: migrate::MigrateCommand,
    },
    /// Test environments branched from an org: create, list, show, keepalive, destroy.
    Branch {
        #[command(subcommand)]
        command: branches::BranchCommand,
    },
    /// Operations (moves): list, show, cancel.
    Ops {
        #[command(subcommand)]
        command: operations::OpsCommand,
    },
    /// The audit log: verify it against its signed checkpoints, read it.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Named admin tokens: create (shown once), list, revoke.
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
    /// An org's backups: generations, snapshots, the oldest and newest restore point.
    Backups(backups::BackupsArgs),
    /// Restore an org's database as it was at a point in time, into a file.
    Restore(backups::RestoreArgs),
    /// Benchmarks that print a table.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

/// `hemvist orgs ...`: the org's own verbs, and `move`, which starts an operation.
#[derive(Subcommand)]
enum OrgsVerb {
    #[command(flatten)]
    Org(ops::OrgsCommand),
    /// Move an org to another region (or node) while it serves: copy, fence, switch.
    Move(moves::MoveArgs),
    /// GDPR erasure: the org's database on every node, every backup in every region, its
    /// branches, its data key; a receipt in the audit log; its id never used again.
    Erase(branches::EraseArgs),
    /// Change the org's residency policy: refused while anything of it (its home, backups from
    /// a region it left, a branch) is where the new policy forbids.
    SetResidency(audit::SetResidencyArgs),
    /// GDPR export: a consistent copy of the org's data, made on its home node, with a
    /// manifest (rows per table, SHA-256, as of when).
    Export(export::ExportArgs),
}

/// How an operator's verb reaches the control plane.
#[derive(Args, Clone, Debug)]
pub struct ApiArgs {
    /// The control plane's admin API. Defaults to the running `hemvist dev`, if any.
    #[arg(long, env = "HEMVIST_CONTROL")]
    pub control: Option<String>,
    /// The admin bearer token. Defaults to the running `hemvist dev`'s, if any.
    #[arg(long, env = "HEMVIST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A CA file (PEM) the control plane's certificate must chain to, besides the system's
    /// roots. Defaults to the running `hemvist dev --tls`'s, if any.
    #[arg(long, env = "HEMVIST_CA")]
    pub ca: Option<PathBuf>,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm => {}
        }
        tracing::info!("stopping");
        t.cancel();
    });
    token
}

/// The line a supervisor (or a test) waits for: what the process bound, as JSON.
fn announce(what: serde_json::Value) {
    println!("hemvist-ready {what}");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    hemvist_net::tls::install_crypto();
    let result = match cli.command {
        Command::Dev(args) => {
            init_tracing();
            dev::run(args).await
        }
        Command::Control { config } => {
            init_tracing();
            run_control(config).await
        }
        Command::Node { config } => {
            init_tracing();
            run_node(config).await
        }
        Command::Regions(api) => ops::regions(&api).await,
        Command::Nodes { command, api } => nodes::nodes(command, &api).await,
        Command::Orgs {
            command: OrgsVerb::Org(command),
        } => ops::orgs(command).await,
        Command::Orgs {
            command: OrgsVerb::Move(args),
        } => moves::run(args).await,
        Command::Orgs {
            command: OrgsVerb::Erase(args),
        } => branches::erase(args).await,
        Command::Orgs {
            command: OrgsVerb::SetResidency(args),
        } => audit::set_residency(args).await,
        Command::Orgs {
            command: OrgsVerb::Export(args),
        } => export::export(args).await,
        Command::Users { command } => ops::users(command).await,
        Command::Ops { command } => operations::ops(command).await,
        Command::Branch { command } => branches::branch(command).await,
        Command::Migrate { command } => migrate::migrate(command).await,
        Command::Tokens { command } => tokens::tokens(command).await,
        Command::Audit { command } => audit::audit(command).await,
        Command::Backups(args) => backups::backups(args).await,
        Command::Restore(args) => backups::restore(args).await,
        Command::Bench { command } => tokio::task::spawn_blocking(move || bench::run(command))
            .await
            .context("benchmark task")
            .and_then(|r| r),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_control(config: PathBuf) -> anyhow::Result<()> {
    let config = hemvist_control::ControlConfig::load(&config)?;
    let shutdown = shutdown_on_signal();
    let (bound, task) = hemvist_control::start(config, shutdown).await?;
    announce(serde_json::json!({"api": bound.api.to_string(), "grpc": bound.grpc.to_string()}));
    if let Err(e) = task.await.context("control plane task")? {
        // Ends now, with the error: a replica that lost its lease must not linger while a call
        // to an unreachable store keeps the runtime from shutting down.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run_node(config: PathBuf) -> anyhow::Result<()> {
    let config = hemvist_node::NodeConfig::load(&config)?;
    let shutdown = shutdown_on_signal();
    let running = hemvist_node::start(config, shutdown).await?;
    announce(serde_json::json!({"http": running.addr.to_string(), "url": running.node.public_url}));
    running.task.await.context("node task")?
}
