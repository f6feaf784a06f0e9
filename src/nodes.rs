//! `hemvist nodes [list]`, `nodes drain NODE [--wait]`, `nodes undrain NODE`: the fleet's nodes,
//! and taking one out of service with its orgs moved off it live (the control plane does the
//! moving; these verbs ask and watch). Node ids are checked before they go into a path.

use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use hemvist_proto::NodeId;
use serde_json::Value;

use crate::client::Client;
use crate::ops::print_json;
use crate::out::outln;
use crate::ApiArgs;

#[derive(Subcommand)]
pub enum NodesCommand {
    /// Every node, its health and its tenants (the default).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move every org off a live node to other nodes of its region, each by a live move (no
    /// acknowledged write lost); the node takes no new org until undrained.
    Drain {
        node: String,
        /// Wait until no org is left on the node, printing how many are left.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (the drain goes on).
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The node takes orgs again.
    Undrain {
        node: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn nodes(command: Option<NodesCommand>, api: &ApiArgs) -> anyhow::Result<()> {
    match command {
        None => crate::ops::nodes(api).await,
        Some(NodesCommand::List { api }) => crate::ops::nodes(&api).await,
        Some(NodesCommand::Drain {
            node,
            wait,
            timeout_secs,
            api,
        }) => {
            let node = NodeId::parse(&node)?;
            let client = Client::new(&api)?;
            let view: Value = client
                .post(&format!("/nodes/{node}/drain"), &Value::Null)
                .await?;
            if api.json && !wait {
                return print_json(&view);
            }
            outln!(
                "draining {node}: {} orgs to move",
                view["orgs_left"].as_u64().unwrap_or(0)
            );
            if wait {
                wait_drained(&client, &node, &api, Duration::from_secs(timeout_secs)).await?;
            }
            Ok(())
        }
        Some(NodesCommand::Undrain { node, api }) => {
            let node = NodeId::parse(&node)?;
            let view: Value = Client::new(&api)?
                .post(&format!("/nodes/{node}/undrain"), &Value::Null)
                .await?;
            if api.json {
                return print_json(&view);
            }
            outln!("{node} takes orgs again");
            Ok(())
        }
    }
}

async fn wait_drained(
    client: &Client,
    node: &NodeId,
    api: &ApiArgs,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut last = None;
    loop {
        let nodes: Vec<Value> = client.get("/nodes").await?;
        let Some(n) = nodes.iter().find(|n| n["id"] == node.as_str()) else {
            bail!("node {node} is gone from the control plane's list");
        };
        // Drained once nothing is placed there and no move off it is still releasing its copy.
        let ops: Vec<Value> = client.get("/operations").await?;
        let releasing = ops
            .iter()
            .filter(|o| {
                o["finished_ms"].is_null()
                    && o["detail"]["from_node"] == node.as_str()
                    && ["switching", "releasing", "recovering", "returning"]
                        .iter()
                        .any(|p| o["phase"] == *p)
            })
            .count() as u64;
        // Before its switch an org is still placed on the node (and counted in `tenants`).
        let left = n["tenants"].as_u64().unwrap_or(0) + releasing;
        if last != Some(left) {
            if api.json {
                outln!("{}", serde_json::json!({"node": node, "orgs_left": left}));
            } else {
                outln!("{node}: {left} orgs left");
            }
            last = Some(left);
        }
        if left == 0 {
            if !api.json {
                outln!(
                    "{node} is drained in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{node} still holds {left} orgs after {limit:?}; the drain goes on");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
