//! The control plane's configuration file (TOML). Regions are declared here, not discovered.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hemvist_proto::RegionId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Where the admin JSON API (and `/healthz`, `/metrics`) listens.
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// Where nodes dial in over gRPC.
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// Folder of the control plane's own files (its SQLite store, `control.db`, unless
    /// `store` names a database).
    pub data_dir: PathBuf,
    /// Where the control plane's state lives when not in `data_dir`: a PostgreSQL database,
    /// `postgres://user@host:port/dbname` (several replicas may share one). Its password, if
    /// any, comes from the environment's `PGPASSWORD`, never from this file.
    #[serde(default)]
    pub store: Option<String>,
    /// Bearer token of the admin API.
    pub admin_token: String,
    /// The token a node must present to join.
    pub join_token: String,
    /// Where a new org goes when neither a region nor a usable IP says otherwise.
    pub default_region: RegionId,
    /// A MaxMind-format IP→country database (GeoIP2/GeoLite2 Country or City, or compatible).
    #[serde(default)]
    pub geoip: Option<PathBuf>,
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// A command that was not acknowledged, or failed in a way retrying can fix, is sent again
    /// after this long.
    #[serde(default = "default_command_retry_ms")]
    pub command_retry_ms: u64,
    /// How long a move's step may stall before the move rolls back (before its switch): a
    /// copy failing or silent this long, a fence or a finish taking half of it.
    #[serde(default = "default_move_stall_ms")]
    pub move_stall_ms: u64,
    /// How long a node's lease may be gone before its orgs are failed over to another node of
    /// their region (counted from its last heartbeat, or from this control plane's start).
    #[serde(default = "default_failover_grace_ms")]
    pub failover_grace_ms: u64,
    pub regions: Vec<RegionConfig>,
    /// TLS for both listeners (one certificate for the control plane's host). With
    /// `client_ca`, nodes must also present a certificate from that CA on the gRPC listener, in
    /// addition to the join token. Plain text if absent (loopback, or behind a TLS proxy).
    #[serde(default)]
    pub tls: Option<hemvist_net::tls::ServerTls>,
    /// PEM: CA(s) the nodes' HTTPS certificates may chain to, besides the system's roots (the
    /// control plane fetches a GDPR export from the org's node over its public URL).
    #[serde(default)]
    pub node_ca_file: Option<PathBuf>,
    /// Timeouts and connection caps of both listeners.
    #[serde(default)]
    pub limits: hemvist_net::Limits,
    /// The branch policy: how long a branch may live before a keepalive, and when it warns.
    #[serde(default)]
    pub branches: BranchPolicy,
    /// Signed checkpoints of the audit chain, kept where the control plane's disk cannot
    /// reach them.
    #[serde(default)]
    pub audit: AuditConfig,
    /// With a PostgreSQL `store`: this replica, one of several of which one leads.
    #[serde(default)]
    pub replica: ReplicaConfig,
}

/// The `[audit]` section: who signs checkpoints of the audit chain, how often, and where they
/// are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The ed25519 signing key's 32-byte seed, 64 hex digits. Prefer the environment:
    /// `HEMVIST_AUDIT_SIGNING_KEY`. Never written out with the rest of the config.
    #[serde(default, skip_serializing)]
    pub signing_key: Option<String>,
    /// A new checkpoint is written this often while the chain grows (none while it does not).
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Where checkpoints are written. Without it, a truncated log cannot be told from a short
    /// one, and `audit verify` says so.
    #[serde(default)]
    pub checkpoints: Option<CheckpointStore>,
}

/// A bucket (with S3 Object Lock, ideally) or, for `hemvist dev`, a folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointStore {
    /// `s3://bucket[/prefix]` or `file:///folder`.
    pub url: String,
    /// The S3 endpoint, `https://host[:port]` or `http://host:port` (path-style requests).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default = "default_s3_region")]
    pub s3_region: String,
    /// PEM: CA(s) the endpoint's certificate may chain to, besides the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Prefer the environment: `HEMVIST_AUDIT_S3_ACCESS_KEY_ID`,
    /// `HEMVIST_AUDIT_S3_SECRET_ACCESS_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Object Lock on every checkpoint: `compliance` (no one can delete it before its time,
    /// not even the bucket's owner), `governance`, or `off` for stores without Object Lock.
    #[serde(default = "default_lock_mode")]
    pub lock: LockMode,
    /// How long each checkpoint is locked.
    #[serde(default = "default_lock_days")]
    pub lock_days: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Compliance,
    Governance,
    Off,
}

fn default_checkpoint_interval_ms() -> u64 {
    60_000
}
fn default_s3_region() -> String {
    "us-east-1".into()
}
fn default_lock_mode() -> LockMode {
    LockMode::Compliance
}
fn default_lock_days() -> u32 {
    7 * 365
}

/// How long branches live. Every branch has an expiry; this caps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchPolicy {
    /// The longest TTL a branch may be given (and a keepalive may push it out by), in seconds.
    #[serde(default = "default_branch_max_ttl_secs")]
    pub max_ttl_secs: u64,
    /// A branch created without a TTL lives this long.
    #[serde(default = "default_branch_ttl_secs")]
    pub default_ttl_secs: u64,
    /// From this long before its expiry a branch's pages, `branch list` and `/metrics` warn.
    #[serde(default = "default_branch_warn_secs")]
    pub warn_before_secs: u64,
}

impl Default for BranchPolicy {
    fn default() -> Self {
        BranchPolicy {
            max_ttl_secs: default_branch_max_ttl_secs(),
            default_ttl_secs: default_branch_ttl_secs(),
            warn_before_secs: default_branch_warn_secs(),
        }
    }
}

fn default_branch_max_ttl_secs() -> u64 {
    30 * 24 * 3600
}
fn default_branch_ttl_secs() -> u64 {
    24 * 3600
}
fn default_branch_warn_secs() -> u64 {
    3600
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub id: RegionId,
    /// For people: `Stockholm`.
    pub name: String,
    /// The legal area whose rules apply: `EU`, `US`, ...
    pub jurisdiction: String,
    /// ISO 3166-1 alpha-2 codes of the countries whose users this region serves.
    #[serde(default)]
    pub countries: Vec<String>,
    /// The region's own bucket, e.g. `s3://hemvist-eu-north` or `file:///var/lib/hemvist/objects`:
    /// what the region's nodes back up to (`[backup] url`), and where the operator's verbs read
    /// backups from.
    pub object_store: String,
    /// The S3 endpoint of an `s3://` store, `https://host[:port]`.
    #[serde(default)]
    pub object_store_endpoint: Option<String>,
    /// The region an `s3://` store's requests are signed for (`eu-north-1`); `us-east-1` if
    /// not given, which S3-compatible servers other than AWS accept.
    #[serde(default)]
    pub object_store_s3_region: Option<String>,
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7700))
}
fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7701))
}
fn default_lease_ttl_ms() -> u64 {
    10_000
}
fn default_heartbeat_ms() -> u64 {
    1_000
}
fn default_command_retry_ms() -> u64 {
    5_000
}
fn default_move_stall_ms() -> u64 {
    30_000
}
fn default_failover_grace_ms() -> u64 {
    60_000
}

/// Whether a URL's host is this machine (127.0.0.0/8, ::1, localhost).
fn loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// One control replica among several on one PostgreSQL store (`[replica]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaConfig {
    /// How this replica is named in the leader lease and the logs (default: `replica`).
    #[serde(default)]
    pub name: Option<String>,
    /// Where the other replicas forward admin requests to this one while it leads (default:
    /// its admin listener's address, over https with `[tls]`, else http).
    #[serde(default)]
    pub api_url: Option<String>,
    /// Where nodes reach this replica's gRPC listener (default: its address, as above).
    #[serde(default)]
    pub grpc_url: Option<String>,
    /// How long a leader's lease lasts unrenewed (renewed every third of it): the longest a
    /// dead leader's work waits before another replica takes it over.
    #[serde(default = "default_leader_ttl_ms")]
    pub lease_ttl_ms: u64,
}

fn default_leader_ttl_ms() -> u64 {
    5_000
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            name: None,
            api_url: None,
            grpc_url: None,
            lease_ttl_ms: default_leader_ttl_ms(),
        }
    }
}

impl ControlConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let mut config: ControlConfig =
            toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        // Secrets from the environment win, so config files need not carry them.
        if let Ok(t) = std::env::var("HEMVIST_ADMIN_TOKEN") {
            config.admin_token = t;
        }
        if let Ok(t) = std::env::var("HEMVIST_JOIN_TOKEN") {
            config.join_token = t;
        }
        if let Ok(k) = std::env::var("HEMVIST_AUDIT_SIGNING_KEY") {
            config.audit.signing_key = Some(k);
        }
        if let Some(store) = &mut config.audit.checkpoints {
            if let Ok(k) = std::env::var("HEMVIST_AUDIT_S3_ACCESS_KEY_ID") {
                store.access_key_id = Some(k);
            }
            if let Ok(k) = std::env::var("HEMVIST_AUDIT_S3_SECRET_ACCESS_KEY") {
                store.secret_access_key = Some(k);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Where the store is: `store` if set, else `control.db` in `data_dir`.
    pub fn store_location(&self) -> crate::store::Location {
        match &self.store {
            Some(s) => crate::store::Location::parse(s),
            None => crate::store::Location::File(self.data_dir.join("control.db")),
        }
    }

    /// A replica's addresses as the others and the nodes reach it: given, or its listeners'
    /// when they are reachable at all; and never plain http to another machine (admin tokens
    /// and cookies are forwarded to it).
    fn check_replica_urls(&self) -> anyhow::Result<()> {
        let r = &self.replica;
        for (what, url, listen) in [
            ("api_url", &r.api_url, self.api_listen),
            ("grpc_url", &r.grpc_url, self.grpc_listen),
        ] {
            match url {
                None if listen.ip().is_unspecified() => bail!(
                    "[replica] {what} must be set: the listener is on {listen}, an address the \
                     other replicas and the nodes cannot dial"
                ),
                Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => {
                    bail!("[replica] {what} {u:?} must be http(s)://host:port")
                }
                Some(u) if u.starts_with("http://") && !loopback(u) => bail!(
                    "[replica] {what} {u} is plain http:// to another machine: admin tokens and \
                     sessions are forwarded there. Use https:// (with [tls])"
                ),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(s) = &self.store {
            match crate::store::Location::parse(s) {
                crate::store::Location::Postgres(url) => {
                    let query = url.split_once('?').map_or("", |(_, q)| q);
                    if url.split_once("://").is_some_and(|(_, rest)| {
                        rest.split(['/', '?']).next().is_some_and(|auth| {
                            auth.rsplit_once('@')
                                .is_some_and(|(user, _)| user.contains(':'))
                        })
                    }) || query.split('&').any(|kv| kv.starts_with("password="))
                    {
                        bail!(
                            "store: the URL holds a password; give it in PGPASSWORD instead, \
                             so no file holds it"
                        );
                    }
                    let sslmode = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("sslmode="))
                        .unwrap_or("");
                    if !loopback(&url) && sslmode != "require" && sslmode != "disable" {
                        bail!(
                            "store: a database on another machine needs sslmode=require in its \
                             URL (or sslmode=disable, to say the network itself is private)"
                        );
                    }
                    self.check_replica_urls()?;
                }
                crate::store::Location::File(_) => bail!(
                    "store must be a postgres://user@host:port/dbname URL (the SQLite store is \
                     control.db in data_dir)"
                ),
            }
        }
        if self.regions.is_empty() {
            bail!("no regions configured: declare at least one [[regions]]");
        }
        let mut seen = HashSet::new();
        for r in &self.regions {
            if !seen.insert(&r.id) {
                bail!("region {} is declared twice", r.id);
            }
            if r.jurisdiction.trim().is_empty() {
                bail!("region {} has no jurisdiction", r.id);
            }
            for c in &r.countries {
                if c.len() != 2 || !c.chars().all(|ch| ch.is_ascii_uppercase()) {
                    bail!(
                        "region {}: {c:?} is not an ISO 3166-1 alpha-2 code like \"SE\"",
                        r.id
                    );
                }
            }
        }
        if !self.regions.iter().any(|r| r.id == self.default_region) {
            bail!(
                "default_region {} is not one of the regions",
                self.default_region
            );
        }
        let b = &self.branches;
        if b.max_ttl_secs == 0 || b.default_ttl_secs == 0 || b.default_ttl_secs > b.max_ttl_secs {
            bail!(
                "[branches]: default_ttl_secs ({}) must be at least 1 and at most max_ttl_secs ({})",
                b.default_ttl_secs,
                b.max_ttl_secs
            );
        }
        let a = &self.audit;
        if let Some(k) = &a.signing_key {
            if k.len() != 64 || !k.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("[audit] signing_key must be 64 hex digits (an ed25519 seed)");
            }
        }
        if let Some(store) = &a.checkpoints {
            if a.checkpoint_interval_ms < 100 {
                bail!("[audit] checkpoint_interval_ms must be at least 100");
            }
            if store.url.starts_with("s3://") {
                match &store.endpoint {
                    Some(e) if e.starts_with("https://") || e.starts_with("http://") => {}
                    _ => bail!(
                        "[audit.checkpoints] endpoint must be https:// or http:// for an s3:// url"
                    ),
                }
            } else if !store.url.starts_with("file://") {
                bail!("[audit.checkpoints] url must be s3://bucket[/prefix] or file:///folder");
            }
            if store.lock != LockMode::Off && store.lock_days == 0 {
                bail!("[audit.checkpoints] lock_days must be at least 1");
            }
        }
        if self.admin_token.len() < 16 || self.join_token.len() < 16 {
            bail!("admin_token and join_token must be at least 16 characters");
        }
        if crate::auth::tokens_equal(&self.admin_token, &self.join_token) {
            bail!("admin_token and join_token must differ: a node's token must not open the admin API");
        }
        if self.heartbeat_interval_ms == 0 || self.lease_ttl_ms < 2 * self.heartbeat_interval_ms {
            bail!("lease_ttl_ms must be at least twice heartbeat_interval_ms");
        }
        // A dead node's lease must have run out on the node itself (it stops acknowledging
        // writes) well before its orgs get another writer.
        if self.failover_grace_ms < 2 * self.lease_ttl_ms {
            bail!("failover_grace_ms must be at least twice lease_ttl_ms");
        }
        Ok(())
    }
}

#[cfg(test)]
mod config_examples {
    use super::*;

    #[test]
    fn deploy_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/control.toml");
        let config = ControlConfig::load(&path).expect("deploy/control.toml loads");
        assert_eq!(config.regions.len(), 3);
    }

    #[test]
    fn replica_example_is_valid_and_a_password_in_the_store_url_is_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/control-replica.toml");
        let config = ControlConfig::load(&path).expect("deploy/control-replica.toml loads");
        assert!(matches!(
            config.store_location(),
            crate::store::Location::Postgres(_)
        ));
        assert_eq!(config.replica.name.as_deref(), Some("control-a"));
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "postgres://hemvist@db",
            "postgres://hemvist:hunter2hunter2@db",
        );
        let with_password: ControlConfig = toml::from_str(&text).unwrap();
        let err = with_password.validate().unwrap_err().to_string();
        assert!(err.contains("PGPASSWORD"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the password is not repeated: {err}"
        );
        // What a log line says of the store holds no user or password.
        let described = crate::store::Location::parse(
            "postgres://hemvist:hunter2@db.example:5432/hemvist?sslmode=disable",
        )
        .describe();
        assert_eq!(described, "postgres://db.example:5432/hemvist");
        let base = std::fs::read_to_string(&path).unwrap();
        for (text, want) in [
            (
                base.replace("?sslmode=require", "?password=hunter2"),
                "PGPASSWORD",
            ),
            (base.replace("?sslmode=require", ""), "sslmode=require"),
            (
                base.replace("api_url = \"https://control-a.hemvist.example:7700\"\n", ""),
                "api_url must be set",
            ),
            (
                base.replace(
                    "https://control-a.hemvist.example:7701",
                    "http://control-a:7701",
                ),
                "plain http",
            ),
        ] {
            let config: ControlConfig = toml::from_str(&text).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let base = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/control.toml"),
        )
        .unwrap();
        let cases = [
            (
                base.replace(
                    "default_region = \"eu-central\"",
                    "default_region = \"mars\"",
                ),
                "default_region",
            ),
            (
                base.replace("countries = [\"US\"", "countries = [\"usa\""),
                "ISO",
            ),
            (
                base.replace("lease_ttl_ms = 10000", "lease_ttl_ms = 1000"),
                "lease_ttl_ms",
            ),
            (
                base.replace("id = \"us-east\"", "id = \"eu-north\""),
                "twice",
            ),
        ];
        for (text, want) in cases {
            let config: ControlConfig = toml::from_str(&text).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
