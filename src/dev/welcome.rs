//! What `hemvist dev` tells its user: `dev.json` for scripts (URLs, the admin token, the CA of a
//! `--tls` demo, the demo logins) and the same on the terminal.

use serde::Serialize;

use super::DEMO_PASSWORD;

#[derive(Serialize)]
pub struct DevJson {
    pub control_url: String,
    pub control_grpc: String,
    pub admin_token: String,
    /// The CA that signed every certificate of a `--tls` demo.
    pub ca_file: Option<String>,
    pub data_dir: String,
    pub geoip: Option<String>,
    /// With `--ha`: the control plane's replicas (one leads) and their PostgreSQL.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<super::replicas::ReplicaJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<String>,
    pub nodes: Vec<NodeJson>,
    pub orgs: Vec<OrgJson>,
}

#[derive(Serialize)]
pub struct NodeJson {
    pub id: String,
    pub region: String,
    pub region_name: String,
    pub url: String,
    /// The region's object store, where this node backs up (`hemvist backups` reads it).
    pub backup_url: Option<String>,
}

#[derive(Serialize)]
pub struct OrgJson {
    pub id: String,
    pub name: String,
    pub region: String,
    pub node: String,
    pub url: String,
    pub contacts: u64,
    pub login: Login,
}

#[derive(Serialize)]
pub struct Login {
    pub email: String,
    pub password: String,
}

/// The demo's sign-in password, the same for every demo org; printed and in dev.json.
pub fn print_welcome(dev: &DevJson) {
    println!();
    println!(
        "hemvist dev is running. Ctrl-C stops it; data stays in {}",
        dev.data_dir
    );
    println!();
    println!(
        "  control plane  {}   (admin token in {}/dev.json)",
        dev.control_url, dev.data_dir
    );
    println!(
        "  dashboard      {}/   (sign in with that token)",
        dev.control_url
    );
    for r in &dev.replicas {
        println!(
            "  replica {:<10} {}   gRPC {}   pid {}",
            r.name, r.api, r.grpc, r.pid
        );
    }
    if let Some(pg) = &dev.postgres {
        println!(
            "  store          {pg}   (kill -9 the leading replica's pid: another takes over within 3 s; \
             curl <replica>/healthz says which leads)"
        );
    }
    for n in &dev.nodes {
        println!(
            "  node {:<13} {}   {} ({})",
            n.id, n.url, n.region, n.region_name
        );
    }
    println!();
    println!("  demo orgs:");
    for o in &dev.orgs {
        println!(
            "    {:<10} {:<16} {:<10} {:>6} contacts  {}",
            o.id, o.name, o.region, o.contacts, o.url
        );
    }
    println!();
    println!("  demo logins (password {DEMO_PASSWORD}):");
    for o in &dev.orgs {
        println!("    {:<10} {}", o.id, o.login.email);
    }
    match &dev.geoip {
        Some(g) => println!("\n  GeoIP: {g}"),
        None => println!(
            "\n  GeoIP: none found, so orgs created by IP go to the default region eu-central \
             (run scripts/setup to install one)"
        ),
    }
    if let (Some(org), Some(other)) = (
        dev.orgs.first(),
        dev.nodes.iter().find(|n| n.region != dev.orgs[0].region),
    ) {
        println!("\n  try:");
        println!(
            "    open {}   (sign in as {} / {})",
            org.url, org.login.email, org.login.password
        );
        println!(
            "    curl -i {}/o/{}/      # wrong region: 307 to {}'s home node",
            other.url, org.id, org.id
        );
        println!("    cargo run --release -- orgs list");
        println!(
            "    cargo run --release -- orgs create acme --name \"Acme AB\" --ip 81.230.1.1 --wait"
        );
        println!("    cargo run --release -- nodes");
    }
    println!();
    let _ = std::io::Write::flush(&mut std::io::stdout());
}
