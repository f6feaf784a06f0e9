//! A real hemvist cluster for tests: the built `hemvist` binary as separate processes (a control
//! plane and one node per region) on loopback ports chosen at run time, with verbs so that a test
//! reads as a story. Processes are killed when the cluster is dropped; if the test failed, the
//! tail of every process's log is printed.
//!
//! One thing in one file (the harness: processes, their configs, and the verbs over them), so
//! it is longer than most.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_hemvist");
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const JOIN_TOKEN: &str = "test-join-token-0123456789";

/// The real MaxMind-format database `scripts/setup` installs (set by `scripts/test`).
pub fn npm_geoip() -> PathBuf {
    let path = std::env::var_os("HEMVIST_TEST_GEOIP")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(
                ".deps/node_modules/@ip-location-db/geo-whois-asn-country-mmdb/geo-whois-asn-country.mmdb",
            )
        });
    assert!(
        path.is_file(),
        "GeoIP database {} is missing: run scripts/setup (scripts/test does)",
        path.display()
    );
    path
}

pub struct Region {
    pub id: &'static str,
    pub jurisdiction: &'static str,
    pub countries: &'static [&'static str],
}

pub const EU_NORTH: Region = Region {
    id: "eu-north",
    jurisdiction: "EU",
    countries: &["SE", "NO", "FI", "DK"],
};
pub const EU_CENTRAL: Region = Region {
    id: "eu-central",
    jurisdiction: "EU",
    countries: &["DE", "AT", "CH", "NL"],
};
pub const US_EAST: Region = Region {
    id: "us-east",
    jurisdiction: "US",
    countries: &["US", "CA"],
};

struct Proc {
    child: Child,
    log: PathBuf,
    ready: Value,
}

pub struct NodeProc {
    pub id: String,
    pub region: String,
    pub url: String,
    addr: SocketAddr,
    config: PathBuf,
    proc: Option<Proc>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    control_config: PathBuf,
    control: Option<Proc>,
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    pub nodes: BTreeMap<String, NodeProc>,
    http: reqwest::blocking::Client,
    starts: u32,
    /// Appended to every node's config.
    node_extra: String,
    /// Every link over TLS with these files (CA, certificate, key).
    tls: Option<TlsFiles>,
    /// The control plane's PostgreSQL database, when the suite runs on PostgreSQL.
    pub store_url: Option<String>,
    /// Environment every start of the control plane gets (besides a start's own).
    control_env: Vec<(String, String)>,
    /// A single control plane on PostgreSQL: each start waits until it leads (a replica of
    /// `start_replicated` may start as a follower).
    wait_to_lead: bool,
}

/// The control plane's own store, when a constructor names one (else SQLite, or the suite's
/// PostgreSQL), and the environment its every start gets.
#[derive(Default)]
struct StoreSetup {
    url: Option<String>,
    env: Vec<(String, String)>,
}

/// The store the control plane names for every region.
struct RegionStore {
    url: String,
    endpoint: String,
}

#[derive(Clone)]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Nodes must present a client certificate.
    mutual: bool,
}

fn spawn(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Proc {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info,h2=warn,tower=warn,hyper=warn")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn hemvist");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(json) = line.strip_prefix("hemvist-ready ") {
                let _ = tx.send(json.to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(json) => Proc {
            child,
            log: log.to_path_buf(),
            ready: serde_json::from_str(&json).expect("ready line is JSON"),
        },
        Err(_) => {
            let _ = child.kill();
            panic!(
                "hemvist {args:?} did not become ready:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

fn addr(v: &Value, key: &str) -> SocketAddr {
    v[key]
        .as_str()
        .expect("address")
        .parse()
        .expect("socket address")
}

impl Cluster {
    /// A control plane and one node per region; the first region is the default.
    pub fn start(regions: &[Region]) -> Cluster {
        Self::start_with_geoip(regions, Some(npm_geoip()))
    }

    pub fn start_with_geoip(regions: &[Region], geoip: Option<PathBuf>) -> Cluster {
        Self::start_with(regions, geoip, "")
    }

    /// As `start`, with `node_extra` appended to every node's config (a `[backup]` section).
    pub fn start_with_node_config(regions: &[Region], node_extra: &str) -> Cluster {
        Self::start_with(regions, Some(npm_geoip()), node_extra)
    }

    /// As `start_with_node_config`, with every link over TLS: the control plane's listeners
    /// and the nodes' HTTP serve `ca`'s certificate, and nodes trust only `ca`.
    pub fn start_tls(regions: &[Region], ca: &super::tls::TestCa, node_extra: &str) -> Cluster {
        let tls = TlsFiles {
            ca: ca.ca.clone(),
            cert: ca.cert.clone(),
            key: ca.key.clone(),
            mutual: false,
        };
        Self::start_full(regions, Some(npm_geoip()), node_extra, Some(tls))
    }

    /// As `start_tls`, and nodes must also present a certificate from `ca` (mutual TLS on the
    /// gRPC listener); the nodes started here present `ca`'s certificate.
    pub fn start_mutual_tls(regions: &[Region], ca: &super::tls::TestCa) -> Cluster {
        let tls = TlsFiles {
            ca: ca.ca.clone(),
            cert: ca.cert.clone(),
            key: ca.key.clone(),
            mutual: true,
        };
        Self::start_full(regions, Some(npm_geoip()), "", Some(tls))
    }

    /// Nodes that back up to `s3` (every `interval_ms`), and a control plane that names `s3` as
    /// every region's store, so the operator's verbs find backups from the control plane alone.
    /// As `start_with_backup`, each region with a store of its own (a prefix of the bucket:
    /// `hemvist/{region}`), and `backup_extra` added to every node's `[backup]`.
    pub fn start_with_store_per_region(
        regions: &[Region],
        s3: &super::s3::S3,
        interval_ms: u64,
        backup_extra: &str,
    ) -> Cluster {
        let store = RegionStore {
            url: format!("s3://{}/hemvist/{{region}}", super::s3::BUCKET),
            endpoint: s3.endpoint.clone(),
        };
        let node = s3
            .node_backup_toml(interval_ms)
            .replace("/hemvist\"", "/hemvist/{region}\"");
        Self::start_full_with(
            regions,
            Some(npm_geoip()),
            &format!("{node}{backup_extra}"),
            None,
            Some(store),
        )
    }

    pub fn start_with_backup(regions: &[Region], s3: &super::s3::S3, interval_ms: u64) -> Cluster {
        let store = RegionStore {
            url: format!("s3://{}/hemvist", super::s3::BUCKET),
            endpoint: s3.endpoint.clone(),
        };
        Self::start_full_with(
            regions,
            Some(npm_geoip()),
            &s3.node_backup_toml(interval_ms),
            None,
            Some(store),
        )
    }

    /// A control plane on the PostgreSQL database `url`, started with `env` (each start), and
    /// one node per region.
    pub fn start_on_store(regions: &[Region], url: &str, env: &[(String, String)]) -> Cluster {
        let mut c = Self::start_full_with_control(
            regions,
            Some(npm_geoip()),
            "",
            None,
            None,
            "\n[replica]\nlease_ttl_ms = 1000\n",
            StoreSetup {
                url: Some(url.to_string()),
                env: env.to_vec(),
            },
        );
        // A single control plane: a restart waits until it leads again.
        c.wait_to_lead = true;
        c
    }

    /// As `start_with_backup`, with a control plane of `count` replicas on one fresh
    /// PostgreSQL database (the test's own server if `HEMVIST_TEST_POSTGRES` names none): the
    /// cluster's own control plane is replica `r1`, started first (so it leads); the others
    /// are returned, not yet started. Every node knows every replica's gRPC address.
    pub fn start_replicated(
        regions: &[Region],
        s3: &super::s3::S3,
        interval_ms: u64,
        count: usize,
        lease_ttl_ms: u64,
    ) -> (Cluster, Vec<Replica>) {
        let server = postgres_server();
        let name = format!("ha_{}_{}", std::process::id(), free_port());
        let url = hemvist_control::store::fresh_database(&server, &name)
            .unwrap_or_else(|e| panic!("a database on the test PostgreSQL: {e}"));
        let others: Vec<(SocketAddr, SocketAddr)> = (1..count)
            .map(|_| {
                (
                    format!("127.0.0.1:{}", free_port()).parse().unwrap(),
                    format!("127.0.0.1:{}", free_port()).parse().unwrap(),
                )
            })
            .collect();
        let urls: Vec<String> = others
            .iter()
            .map(|(_, grpc)| format!("\"http://{grpc}\""))
            .collect();
        let node_extra = format!(
            "control_urls = [{}]\n{}",
            urls.join(", "),
            s3.node_backup_toml(interval_ms)
        );
        let store = RegionStore {
            url: format!("s3://{}/hemvist", super::s3::BUCKET),
            endpoint: s3.endpoint.clone(),
        };
        let replica =
            |n: usize| format!("\n[replica]\nname = \"r{n}\"\nlease_ttl_ms = {lease_ttl_ms}\n");
        let c = Self::start_full_with_control(
            regions,
            Some(npm_geoip()),
            &node_extra,
            None,
            Some(store),
            &replica(1),
            StoreSetup {
                url: Some(url),
                env: Vec::new(),
            },
        );
        let text = std::fs::read_to_string(&c.control_config).unwrap();
        let replicas = others
            .into_iter()
            .enumerate()
            .map(|(i, (api, grpc))| {
                let n = i + 2;
                let config = c.dir.path().join(format!("control-r{n}.toml"));
                let mine = text
                    .replace(
                        &format!("api_listen = \"{}\"", c.api),
                        &format!("api_listen = \"{api}\""),
                    )
                    .replace(
                        &format!("grpc_listen = \"{}\"", c.grpc),
                        &format!("grpc_listen = \"{grpc}\""),
                    )
                    .replace(&replica(1), &replica(n));
                std::fs::write(&config, mine).unwrap();
                Replica {
                    name: format!("r{n}"),
                    config,
                    api,
                    grpc,
                    proc: None,
                }
            })
            .collect();
        (c, replicas)
    }

    /// Starts another control replica (with extra environment: failpoints, say).
    pub fn start_replica(&self, r: &mut Replica, env: &[(&str, &str)]) {
        assert!(r.proc.is_none(), "replica {} already running", r.name);
        let log = self.dir.path().join(format!("control-{}.log", r.name));
        r.proc = Some(spawn(
            &["control", "--config", r.config.to_str().unwrap()],
            &log,
            env,
        ));
    }

    /// The cluster's own control plane's process id (replica r1), if it runs.
    pub fn control_pid(&self) -> Option<u32> {
        self.control.as_ref().map(|p| p.child.id())
    }

    /// The cluster's own control plane (replica r1) has exited; its exit status.
    pub fn control_exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.control.as_mut()?.child.try_wait().ok().flatten();
        if status.is_some() {
            self.control = None;
        }
        status
    }

    fn start_with(regions: &[Region], geoip: Option<PathBuf>, node_extra: &str) -> Cluster {
        Self::start_full(regions, geoip, node_extra, None)
    }

    /// Every listener (control plane and nodes) with these `[limits]` (the table's body).
    pub fn start_with_limits(regions: &[Region], limits: &str) -> Cluster {
        let table = format!("\n[limits]\n{limits}");
        Self::start_full_with_control(
            regions,
            Some(npm_geoip()),
            &table,
            None,
            None,
            &table,
            StoreSetup::default(),
        )
    }

    fn start_full(
        regions: &[Region],
        geoip: Option<PathBuf>,
        node_extra: &str,
        tls: Option<TlsFiles>,
    ) -> Cluster {
        Self::start_full_with(regions, geoip, node_extra, tls, None)
    }

    fn start_full_with(
        regions: &[Region],
        geoip: Option<PathBuf>,
        node_extra: &str,
        tls: Option<TlsFiles>,
        store: Option<RegionStore>,
    ) -> Cluster {
        Self::start_full_with_control(
            regions,
            geoip,
            node_extra,
            tls,
            store,
            "",
            StoreSetup::default(),
        )
    }

    fn start_full_with_control(
        regions: &[Region],
        geoip: Option<PathBuf>,
        node_extra: &str,
        tls: Option<TlsFiles>,
        store: Option<RegionStore>,
        control_extra: &str,
        on: StoreSetup,
    ) -> Cluster {
        let StoreSetup {
            url: store_url,
            env: control_env,
        } = on;
        let dir = tempfile::Builder::new()
            .prefix("hemvist-test-")
            .tempdir()
            .expect("tempdir");
        let mut config = format!(
            "api_listen = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n\
             data_dir = {:?}\nadmin_token = \"{ADMIN_TOKEN}\"\njoin_token = \"{JOIN_TOKEN}\"\n\
             default_region = \"{}\"\nlease_ttl_ms = 3000\nheartbeat_interval_ms = 300\ncommand_retry_ms = 500\n",
            dir.path().join("control").display().to_string(),
            regions[0].id
        );
        // A single control plane on PostgreSQL is one replica: a restart waits out its
        // predecessor's lease, kept short here.
        let single_on_postgres = store_url.is_none();
        let store_url = store_url.or_else(postgres_store);
        let single_on_postgres = single_on_postgres && store_url.is_some();
        if let Some(url) = &store_url {
            config.push_str(&format!("store = {url:?}\n"));
        }
        if let Some(g) = geoip {
            config.push_str(&format!("geoip = {:?}\n", g.display().to_string()));
        }
        if let Some(t) = &tls {
            // The nodes serve HTTPS with the test CA's certificate (exports are fetched there).
            config.push_str(&format!(
                "node_ca_file = {:?}\n",
                t.ca.display().to_string()
            ));
        }
        for r in regions {
            let (url, endpoint) = match &store {
                Some(s) => (
                    s.url.replace("{region}", r.id),
                    format!("object_store_endpoint = {:?}\n", s.endpoint),
                ),
                None => (format!("file:///dev/null/{}", r.id), String::new()),
            };
            config.push_str(&format!(
                "\n[[regions]]\nid = \"{}\"\nname = \"{}\"\njurisdiction = \"{}\"\ncountries = {:?}\n\
                 object_store = {url:?}\n{endpoint}",
                r.id, r.id, r.jurisdiction, r.countries
            ));
        }
        if let Some(t) = &tls {
            config.push_str(&format!(
                "\n[tls]\ncert = {:?}\nkey = {:?}\n",
                t.cert.display().to_string(),
                t.key.display().to_string()
            ));
            if t.mutual {
                config.push_str(&format!("client_ca = {:?}\n", t.ca.display().to_string()));
            }
        }
        config.push_str(control_extra);
        if single_on_postgres {
            config.push_str("\n[replica]\nlease_ttl_ms = 1000\n");
        }
        let control_config = dir.path().join("control.toml");
        std::fs::write(&control_config, config).expect("write control config");
        let http = super::http()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        let mut cluster = Cluster {
            dir,
            control_config,
            control: None,
            api: "127.0.0.1:0".parse().unwrap(),
            grpc: "127.0.0.1:0".parse().unwrap(),
            nodes: BTreeMap::new(),
            http,
            starts: 0,
            node_extra: node_extra.to_string(),
            tls,
            store_url,
            wait_to_lead: single_on_postgres,
            control_env,
        };
        cluster.start_control();
        for r in regions {
            cluster.add_node(&format!("{}-1", r.id), r.id, JOIN_TOKEN);
        }
        cluster.wait_nodes_healthy(regions.len());
        cluster
    }

    /// A connection to the control plane's store, whichever engine it is on (for tests that
    /// tamper with it or look at what it holds).
    pub fn store_conn(&self) -> hemvist_control::store::sql::Conn {
        use hemvist_control::store::sql::Conn;
        match &self.store_url {
            Some(url) => Conn::postgres(url).expect("connect to the control store"),
            None => {
                let db = rusqlite::Connection::open(self.dir.path().join("control/control.db"))
                    .expect("open control.db");
                db.busy_timeout(Duration::from_secs(10)).unwrap();
                Conn::sqlite(db)
            }
        }
    }

    /// Everything the control plane's store holds at rest, as bytes: the SQLite file, or on
    /// PostgreSQL every row of every table as text.
    pub fn store_bytes(&self) -> Vec<u8> {
        if self.store_url.is_none() {
            return std::fs::read(self.dir.path().join("control/control.db")).unwrap();
        }
        let db = self.store_conn();
        let tables: Vec<String> = db
            .prepare(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|t| t.unwrap())
            .collect();
        assert!(tables.iter().any(|t| t == "audit"), "tables: {tables:?}");
        let mut out = Vec::new();
        for t in tables {
            let rows = db
                .prepare(&format!("SELECT CAST(t.* AS TEXT) FROM {t} t"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(0))
                .unwrap();
            for r in rows {
                out.extend_from_slice(r.unwrap().as_bytes());
                out.push(b'\n');
            }
        }
        out
    }

    pub fn control_url(&self) -> String {
        format!("{}://{}", self.scheme(), self.api)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The CA every certificate of a TLS cluster chains to.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|t| t.ca.clone())
    }

    fn log(&mut self, name: &str) -> PathBuf {
        self.starts += 1;
        self.dir.path().join(format!("{name}.log"))
    }

    pub fn start_control(&mut self) {
        self.start_control_with_env(&[]);
    }

    /// Starts the control plane with extra environment (failpoints, say).
    pub fn start_control_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.control.is_none(), "control plane already running");
        let log = self.log("control");
        let mut all: Vec<(&str, &str)> = self
            .control_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.extend_from_slice(env);
        let p = spawn(
            &["control", "--config", self.control_config.to_str().unwrap()],
            &log,
            &all,
        );
        let (api, grpc) = (addr(&p.ready, "api"), addr(&p.ready, "grpc"));
        if self.api.port() == 0 {
            // Pin the ports chosen at first start, so a restart comes back at the same address.
            let text = std::fs::read_to_string(&self.control_config).unwrap();
            let text = text
                .replace(
                    "api_listen = \"127.0.0.1:0\"",
                    &format!("api_listen = \"{api}\""),
                )
                .replace(
                    "grpc_listen = \"127.0.0.1:0\"",
                    &format!("grpc_listen = \"{grpc}\""),
                );
            std::fs::write(&self.control_config, text).unwrap();
        }
        self.api = api;
        self.grpc = grpc;
        self.control = Some(p);
        if self.wait_to_lead {
            // On PostgreSQL it serves once it holds the lease (its predecessor's, if killed,
            // runs out first).
            let http = super::http()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap();
            let url = format!("{}/healthz", self.control_url());
            self.wait_for("the control plane to lead", || {
                let text = http.get(&url).send().ok()?.text().ok()?;
                (text.trim() == "ok").then_some(())
            });
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill_control(&mut self) {
        if let Some(mut p) = self.control.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// Waits (up to 30 s) for the control plane to exit on its own (a failpoint crashed it);
    /// whether it did.
    pub fn wait_control_exit(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(p) = self.control.as_mut() {
                if p.child.try_wait().ok().flatten().is_some() {
                    self.control = None;
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Appends to the control plane's config (takes effect at its next start).
    pub fn add_control_config(&self, extra: &str) {
        let mut text = std::fs::read_to_string(&self.control_config).unwrap();
        text = match text.find("\n[[regions]]") {
            Some(at) => format!("{}{extra}\n{}", &text[..at], &text[at..]),
            None => format!("{extra}\n{text}"),
        };
        std::fs::write(&self.control_config, text).unwrap();
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) a region's node process, as a partition would.
    pub fn signal_node(&self, region: &str, signal: &str) {
        let pid = self.nodes[&self.node_id_in(region)]
            .proc
            .as_ref()
            .expect("node running")
            .child
            .id();
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    pub fn restart_control(&mut self) {
        self.kill_control();
        self.start_control();
    }

    /// Starts a node process; it registers with the control plane on its own.
    pub fn add_node(&mut self, id: &str, region: &str, join_token: &str) {
        let ca = self.tls.as_ref().map(|t| t.ca.clone());
        self.add_node_trusting(id, region, join_token, ca.as_deref());
    }

    /// As `add_node`, with the node checking the control plane's certificate against `ca`
    /// (in a TLS cluster).
    pub fn add_node_trusting(
        &mut self,
        id: &str,
        region: &str,
        join_token: &str,
        ca: Option<&Path>,
    ) {
        let data = self.dir.path().join("nodes").join(id);
        let config = self.dir.path().join(format!("node-{id}.toml"));
        let mut text = format!(
            "id = \"{id}\"\nregion = \"{region}\"\ncontrol_url = \"{}://{}\"\n\
             join_token = \"{join_token}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             max_open_tenants = 4\nidle_close_ms = 1000\n{}",
            self.scheme(),
            self.grpc,
            data.display().to_string(),
            self.node_extra.replace("{region}", region)
        );
        if let Some(t) = &self.tls {
            let ca = ca.unwrap_or(&t.ca);
            let client = if t.mutual {
                format!(
                    "cert = {:?}\nkey = {:?}\n",
                    t.cert.display().to_string(),
                    t.key.display().to_string()
                )
            } else {
                String::new()
            };
            text.push_str(&format!(
                "\n[control_tls]\nca = {:?}\n{client}\n[tls]\ncert = {:?}\nkey = {:?}\n",
                ca.display().to_string(),
                t.cert.display().to_string(),
                t.key.display().to_string()
            ));
        }
        std::fs::write(&config, text).unwrap();
        let log = self.log(&format!("node-{id}"));
        let p = spawn(&["node", "--config", config.to_str().unwrap()], &log, &[]);
        let addr = addr(&p.ready, "http");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\"")),
        )
        .unwrap();
        self.nodes.insert(
            id.to_string(),
            NodeProc {
                id: id.into(),
                region: region.into(),
                url: p.ready["url"].as_str().unwrap().to_string(),
                addr,
                config,
                proc: Some(p),
            },
        );
    }

    /// The URL of the (first) node in a region.
    pub fn node_url(&self, region: &str) -> String {
        self.nodes
            .values()
            .find(|n| n.region == region)
            .map(|n| n.url.clone())
            .unwrap_or_else(|| panic!("no node in {region}"))
    }

    /// The URL of the node with this id.
    pub fn url_of(&self, id: &str) -> String {
        self.nodes[id].url.clone()
    }

    fn node_id_in(&self, region: &str) -> String {
        self.nodes
            .values()
            .find(|n| n.region == region)
            .map(|n| n.id.clone())
            .unwrap_or_else(|| panic!("no node in {region}"))
    }

    /// The node's configuration file (scenarios may change it before a restart).
    pub fn node_config(&self, region: &str) -> PathBuf {
        self.nodes[&self.node_id_in(region)].config.clone()
    }

    /// Everything the node has logged, all its starts.
    pub fn node_log(&self, region: &str) -> String {
        let id = self.node_id_in(region);
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    /// Everything the control plane has logged, all its starts.
    pub fn control_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("control.log")).unwrap_or_default()
    }

    /// The node's data folder (its tenants and its own state).
    pub fn node_data(&self, region: &str) -> PathBuf {
        self.dir.path().join("nodes").join(self.node_id_in(region))
    }

    pub fn kill_node(&mut self, region: &str) {
        let id = self.node_id_in(region);
        self.kill_node_id(&id);
    }

    /// SIGKILL of the node with this id (a region may have several).
    pub fn kill_node_id(&mut self, id: &str) {
        let node = self.nodes.get_mut(id).unwrap();
        if let Some(mut p) = node.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub fn start_node(&mut self, region: &str) {
        self.start_node_with_env(region, &[]);
    }

    /// Starts a stopped node with extra environment, such as `HEMVIST_FAILPOINTS`.
    pub fn start_node_with_env(&mut self, region: &str, env: &[(&str, &str)]) {
        let id = self.node_id_in(region);
        self.start_node_id_with_env(&id, env);
    }

    /// Starts the stopped node with this id, on its old address.
    pub fn start_node_id_with_env(&mut self, id: &str, env: &[(&str, &str)]) {
        let log = self.log(&format!("node-{id}"));
        let node = self.nodes.get_mut(id).unwrap();
        assert!(node.proc.is_none(), "node {id} is running");
        let p = spawn(
            &["node", "--config", node.config.to_str().unwrap()],
            &log,
            env,
        );
        assert_eq!(
            addr(&p.ready, "http"),
            node.addr,
            "node came back on its old address"
        );
        node.proc = Some(p);
    }

    /// Starts a stopped node on a port the system picks; returns its new URL.
    pub fn start_node_on_new_port(&mut self, region: &str) -> String {
        let id = self.node_id_in(region);
        let log = self.log(&format!("node-{id}"));
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.proc.is_none(), "node {id} is running");
        let text = std::fs::read_to_string(&node.config).unwrap();
        let text = text.replace(
            &format!("listen = \"{}\"", node.addr),
            "listen = \"127.0.0.1:0\"",
        );
        std::fs::write(&node.config, &text).unwrap();
        let p = spawn(
            &["node", "--config", node.config.to_str().unwrap()],
            &log,
            &[],
        );
        node.addr = addr(&p.ready, "http");
        node.url = p.ready["url"].as_str().unwrap().to_string();
        std::fs::write(
            &node.config,
            text.replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{}\"", node.addr),
            ),
        )
        .unwrap();
        node.proc = Some(p);
        node.url.clone()
    }

    /// Waits for a node process to exit by itself (a crash); true if it did within 20 s.
    pub fn wait_node_exit(&mut self, region: &str) -> bool {
        let id = self.node_id_in(region);
        self.wait_node_id_exit(&id)
    }

    /// As [`Cluster::wait_node_exit`], for the node called `id`.
    pub fn wait_node_id_exit(&mut self, id: &str) -> bool {
        let node = self.nodes.get_mut(id).unwrap();
        let Some(mut p) = node.proc.take() else {
            return true;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = p.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        node.proc = Some(p);
        false
    }

    pub fn restart_node(&mut self, region: &str) {
        self.kill_node(region);
        self.start_node(region);
    }

    // --- admin API -------------------------------------------------------------------------

    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.admin_with_token(method, path, body, Some(ADMIN_TOKEN))
    }

    pub fn admin_with_token(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let url = format!("{}/api/v1{path}", self.control_url());
        let mut req = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "DELETE" => self.http.delete(url),
            other => panic!("method {other}"),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().expect("admin API answers");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn create_org(&self, body: Value) -> (u16, Value) {
        self.admin("POST", "/orgs", Some(body))
    }

    /// Creates an org that must succeed, and waits until its node hosts it.
    pub fn create_org_ready(&self, id: &str, extra: Value) -> Value {
        let mut body = json!({"id": id, "name": format!("Org {id}")});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let (status, created) = self.create_org(body);
        assert_eq!(status, 201, "create {id}: {created}");
        self.wait_org_ready(id)
    }

    pub fn wait_org_ready(&self, id: &str) -> Value {
        self.wait_for(&format!("org {id} ready"), || {
            let (status, org) = self.admin("GET", &format!("/orgs/{id}"), None);
            (status == 200 && org["ready"] == true).then_some(org)
        })
    }

    pub fn wait_nodes_healthy(&self, n: usize) {
        self.wait_for(&format!("{n} healthy nodes"), || {
            let (status, nodes) = self.admin("GET", "/nodes", None);
            let healthy = nodes
                .as_array()
                .map(|a| a.iter().filter(|n| n["healthy"] == true).count())
                .unwrap_or(0);
            (status == 200 && healthy >= n).then_some(())
        });
    }

    /// Polls `f` every 50 ms until it gives a value; fails the test after 45 s (a loaded
    /// machine's fsyncs can take seconds each).
    pub fn wait_for<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // --- users' HTTP -----------------------------------------------------------------------

    /// GET without following redirects: (status, Location, body).
    pub fn get(&self, url: &str) -> (u16, Option<String>, String) {
        let resp = self.http.get(url).send().expect("GET answers");
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (status, location, resp.text().unwrap_or_default())
    }

    /// Adds a user to an org through the admin API; waits until the node has stored it.
    pub fn add_user(&self, org: &str, email: &str, password: &str) {
        let (status, body) = self.admin(
            "POST",
            &format!("/orgs/{org}/users"),
            Some(json!({"email": email, "name": "Test User", "password": password})),
        );
        assert_eq!(status, 201, "add user to {org}: {body}");
    }

    /// Makes the node read an org's database: a sign-in attempt with a wrong password (401),
    /// through the real form (its server-issued token, from the node's own origin).
    pub fn touch_tenant(&self, region: &str, org: &str) -> u16 {
        let base = self.node_url(region);
        let form = self
            .http
            .get(format!("{base}/o/{org}/signin"))
            .send()
            .expect("sign-in form");
        let cookie = form
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("hv_signin="))
            .map(|v| v.split(';').next().unwrap_or_default().to_string())
            .unwrap_or_default();
        let token = super::session::csrf_in(&form.text().unwrap_or_default()).unwrap_or_default();
        let resp = self
            .http
            .post(format!("{base}/o/{org}/signin"))
            .header("cookie", cookie)
            .header("origin", &base)
            .form(&[
                ("_csrf", token.as_str()),
                ("email", "nobody@example.com"),
                ("password", "wrong-password"),
            ])
            .send()
            .expect("sign-in answers");
        resp.status().as_u16()
    }

    pub fn metric(&self, base_url: &str, name: &str) -> u64 {
        let (status, _, text) = self.get(&format!("{base_url}/metrics"));
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing at {base_url}"))
    }

    /// Runs the `hemvist` CLI against this cluster: (exit success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .env("HEMVIST_CONTROL", self.control_url())
            .env("HEMVIST_TOKEN", ADMIN_TOKEN)
            .env("HEMVIST_DATA", self.dir.path())
            .envs(self.ca_file().map(|ca| ("HEMVIST_CA", ca)))
            .output()
            .expect("run hemvist CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Sends a request line byte for byte (no client-side URL normalization) and returns the status.
pub fn raw_status(addr: &str, method: &str, path: &[u8], headers: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path);
    req.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    req.extend_from_slice(body);
    let _ = s.write_all(&req);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no HTTP status for {:?}: {head:?}",
                String::from_utf8_lossy(path)
            )
        })
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut logs = Vec::new();
        if let Some(mut p) = self.control.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
            logs.push(p.log);
        }
        for n in self.nodes.values_mut() {
            if let Some(mut p) = n.proc.take() {
                let _ = p.child.kill();
                let _ = p.child.wait();
                logs.push(p.log);
            }
        }
        if std::thread::panicking() {
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {} (last 40 lines) ----", log.display());
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// With `HEMVIST_TEST_POSTGRES` set (a server's URL, as `scripts/postgres start` prints it),
/// a fresh database on it for one cluster's control plane: the suite runs on PostgreSQL.
pub fn postgres_store() -> Option<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let server = std::env::var("HEMVIST_TEST_POSTGRES").ok()?;
    let name = format!(
        "cluster_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    Some(
        hemvist_control::store::fresh_database(&server, &name)
            .unwrap_or_else(|e| panic!("a database on the test PostgreSQL: {e}")),
    )
}

/// Another control replica of a replicated cluster (see `Cluster::start_replicated`).
pub struct Replica {
    pub name: String,
    config: PathBuf,
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    proc: Option<Proc>,
}

impl Replica {
    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// Whether it has exited (then forgets the process); its exit status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.proc.as_mut()?.child.try_wait().ok().flatten();
        if status.is_some() {
            self.proc = None;
        }
        status
    }

    pub fn running(&self) -> bool {
        self.proc.is_some()
    }

    pub fn log(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The PostgreSQL server the tests use: `HEMVIST_TEST_POSTGRES`, or one this test process
/// starts (`scripts/postgres`, which stops it when the process ends).
pub fn postgres_server() -> String {
    postgres_server_with(None)
}

/// A PostgreSQL server of this test's own that also speaks TLS with `cert` and `key`.
pub fn postgres_server_tls(cert: &Path, key: &Path) -> String {
    postgres_server_with(Some((cert, key)))
}

fn postgres_server_with(tls: Option<(&Path, &Path)>) -> String {
    if let Some((cert, key)) = tls {
        let dir = std::env::temp_dir().join(format!(
            "hemvist-test-pg-tls-{}-{}",
            std::process::id(),
            free_port()
        ));
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres"))
            .arg("start")
            .arg(&dir)
            .arg(cert)
            .arg(key)
            .output()
            .expect("run scripts/postgres");
        assert!(
            out.status.success(),
            "scripts/postgres start (TLS): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    static SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("HEMVIST_TEST_POSTGRES") {
                return url;
            }
            let dir = std::env::temp_dir().join(format!("hemvist-test-pg-{}", std::process::id()));
            let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres"))
                .arg("start")
                .arg(&dir)
                .output()
                .expect("run scripts/postgres");
            assert!(
                out.status.success(),
                "scripts/postgres start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .clone()
}
