//! A node's configuration file (TOML). A config that loads is checked: ids parsed, URLs of a
//! scheme the node speaks, limits that make sense; nothing later re-validates it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hemvist_proto::{NodeId, RegionId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    pub region: RegionId,
    /// The control plane's gRPC address, `http://host:port`.
    pub control_url: String,
    pub join_token: String,
    /// Where the org users' HTTP pages listen.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How users reach this node; other nodes redirect here. Defaults to `http://{listen}`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Tenant databases and the node's own state live here.
    pub data_dir: PathBuf,
    /// How many tenants this node is willing to host.
    #[serde(default = "default_capacity")]
    pub capacity: u64,
    /// Upper bound of tenants with open database files at once; the least recently used close.
    #[serde(default = "default_max_open")]
    pub max_open_tenants: usize,
    /// A tenant unused for this long has its files closed.
    #[serde(default = "default_idle_close_ms")]
    pub idle_close_ms: u64,
    /// Continuous backup of every tenant to the region's object store; none if absent.
    #[serde(default)]
    pub backup: Option<crate::backup::store::BackupConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7710))
}
fn default_capacity() -> u64 {
    100_000
}
fn default_max_open() -> usize {
    1_024
}
fn default_idle_close_ms() -> u64 {
    60_000
}

impl NodeConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let mut config: NodeConfig =
            toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        if let Ok(t) = std::env::var("HEMVIST_JOIN_TOKEN") {
            config.join_token = t;
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.control_url.starts_with("http://") || self.control_url.starts_with("https://")) {
            bail!("control_url must be http(s)://host:port");
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("public_url must start with http:// or https://");
            }
        }
        if self.max_open_tenants == 0 {
            bail!("max_open_tenants must be at least 1");
        }
        if let Some(b) = &self.backup {
            b.validate()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod config_examples {
    use super::*;

    #[test]
    fn deploy_examples_are_valid() {
        for name in ["node-eu-north-1.toml", "node-us-east-1.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy")
                .join(name);
            let config = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(name.contains(config.region.as_str()));
        }
    }
}
