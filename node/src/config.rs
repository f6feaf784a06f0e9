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
    /// The control plane's gRPC address, `https://host:port` (or `http://` on loopback, or with
    /// `insecure = true`).
    pub control_url: String,
    /// The other control replicas' gRPC addresses, when several share one store: the node
    /// dials them in turn until it finds the one that leads (the others say they do not).
    #[serde(default)]
    pub control_urls: Vec<String>,
    /// How the node checks the control plane's certificate, and proves its own (mutual TLS).
    #[serde(default)]
    pub control_tls: ControlTls,
    /// Allows `http://` to a control plane that is not on loopback. The join token, password
    /// hashes and data keys then cross the network in clear: only for a network that is itself
    /// private and encrypted.
    #[serde(default)]
    pub insecure: bool,
    pub join_token: String,
    /// Where the org users' HTTP pages listen.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How users reach this node; other nodes redirect here. Defaults to `https://{listen}` with
    /// `[tls]`, `http://{listen}` without. Behind a TLS proxy, set it to the proxy's `https://`
    /// URL: cookies are then `Secure` and redirects point there.
    #[serde(default)]
    pub public_url: Option<String>,
    /// TLS for the users' HTTP listener; plain HTTP if absent.
    #[serde(default)]
    pub tls: Option<hemvist_net::tls::ServerTls>,
    /// Timeouts and connection caps of the users' HTTP listener.
    #[serde(default)]
    pub limits: hemvist_net::Limits,
    /// How many password checks run at once, and how many failed sign-ins an account and a
    /// client address may have per minute.
    #[serde(default)]
    pub signin: crate::web::SigninLimits,
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
    /// A dropped tenant's files are kept in `trash/` this long (default 7 days), then deleted;
    /// each deletion is audited by the control plane.
    #[serde(default = "default_trash_grace_secs")]
    pub trash_grace_secs: u64,
    /// A write's idempotency key is remembered this long (default 24 h): a retry within it is
    /// given the first answer; the tenant's table of keys is pruned past it.
    #[serde(default = "default_idempotency_ttl_secs")]
    pub idempotency_ttl_secs: u64,
    /// Free space the node keeps under `data_dir` (MiB, default 256). Below it, tenants are
    /// read-only (writes answer 507), `/healthz` reports degraded, and the replicator
    /// checkpoints first; it recovers by itself once space is freed. 0 turns the check off.
    #[serde(default = "default_disk_headroom_mib")]
    pub disk_headroom_mib: u64,
    /// Continuous backup of every tenant to the region's object store; none if absent.
    #[serde(default)]
    pub backup: Option<crate::backup::store::BackupConfig>,
}

/// `[control_tls]`: all optional. Without `ca` the system's roots are trusted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlTls {
    /// PEM: the CA(s) the control plane's certificate must chain to.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM: this node's certificate and key, for a control plane that asks for them.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
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
fn default_idempotency_ttl_secs() -> u64 {
    24 * 3600
}
fn default_disk_headroom_mib() -> u64 {
    256
}
fn default_trash_grace_secs() -> u64 {
    7 * 24 * 3600
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

    /// Every control address this node knows: `control_url` first, then `control_urls`.
    pub fn control_addresses(&self) -> Vec<&str> {
        let mut all = vec![self.control_url.as_str()];
        for u in &self.control_urls {
            if !all.contains(&u.as_str()) {
                all.push(u);
            }
        }
        all
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for url in self.control_addresses() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("control_url {url:?} must be http(s)://host:port");
            }
            if url.starts_with("http://") && !self.insecure && !is_loopback(url) {
                bail!(
                    "control_url {url} is plain http:// to another machine: the join token and \
                     every org's data key would cross the network in clear. Use https://, or set \
                     insecure = true if the network itself is private and encrypted"
                );
            }
        }
        if self.control_tls.cert.is_some() != self.control_tls.key.is_some() {
            bail!("control_tls: cert and key go together");
        }
        self.limits.check()?;
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

/// Whether a URL's host is this machine (`localhost`, `127.0.0.0/8`, `::1`).
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

    #[test]
    fn plain_http_to_a_control_plane_off_loopback_needs_insecure() {
        let text = |url: &str, insecure: bool| {
            format!(
                "id = \"n-1\"\nregion = \"eu-north\"\ncontrol_url = \"{url}\"\n\
                 join_token = \"t\"\ndata_dir = \"/tmp/x\"\ninsecure = {insecure}\n"
            )
        };
        let check = |url: &str, insecure: bool| {
            toml::from_str::<NodeConfig>(&text(url, insecure))
                .unwrap()
                .validate()
        };
        for ok in [
            "http://127.0.0.1:7701",
            "http://localhost:7701",
            "http://[::1]:7701",
            "https://control.example:7701",
        ] {
            assert!(check(ok, false).is_ok(), "{ok}");
        }
        for far in ["http://10.0.0.5:7701", "http://control.example:7701"] {
            let err = check(far, false).unwrap_err().to_string();
            assert!(err.contains("insecure = true"), "{far}: {err}");
            assert!(check(far, true).is_ok(), "{far} with insecure");
        }
    }
}
