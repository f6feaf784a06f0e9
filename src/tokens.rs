//! `hemvist tokens create|list|revoke`: the admin API's named tokens. A new token is printed
//! once and never again; the control plane keeps only its hash.

use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::out::outln;
use crate::ApiArgs;

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Make a named admin token (shown once).
    Create {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The tokens, revoked ones included (never their values).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a token: it opens nothing from now on.
    Revoke {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn tokens(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create { name, api } => {
            let client = Client::new(&api)?;
            let made: Value = client
                .post("/tokens", &serde_json::json!({ "name": name }))
                .await?;
            if api.json {
                outln!("{}", serde_json::to_string_pretty(&made)?);
            } else {
                outln!(
                    "token {} made; it is shown only now:",
                    made["name"].as_str().unwrap_or("")
                );
                outln!("{}", made["token"].as_str().unwrap_or(""));
            }
        }
        TokensCommand::List { api } => {
            let client = Client::new(&api)?;
            let all: Vec<Value> = client.get("/tokens").await?;
            if api.json {
                outln!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            let time = |v: &Value| {
                v.as_i64()
                    .map(hemvist_node::backup::format_time)
                    .unwrap_or_else(|| "-".into())
            };
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|t| {
                    vec![
                        t["name"].as_str().unwrap_or("").to_string(),
                        t["created_by"].as_str().unwrap_or("").to_string(),
                        time(&t["created_ms"]),
                        time(&t["revoked_ms"]),
                    ]
                })
                .collect();
            crate::table::print(&["NAME", "CREATED BY", "CREATED", "REVOKED"], &rows);
        }
        TokensCommand::Revoke { name, api } => {
            let client = Client::new(&api)?;
            let t: Value = client
                .post(&format!("/tokens/{name}/revoke"), &serde_json::json!({}))
                .await?;
            if api.json {
                outln!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                outln!("token {} revoked", t["name"].as_str().unwrap_or(""));
            }
        }
    }
    Ok(())
}
