//! Prometheus text exposition of the control plane's counters and gauges. Counters only grow
//! (from start); gauges are not kept but computed from the store and the sessions at each scrape.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Metrics {
    pub orgs_created: Counter,
    pub refused_joins: Counter,
    pub api_requests: Counter,
    pub api_errors: Counter,
    pub api_unauthorized: Counter,
    /// The two listeners' connection counts.
    pub api_connections: std::sync::Arc<hemvist_net::ListenerStats>,
    pub grpc_connections: std::sync::Arc<hemvist_net::ListenerStats>,
}

pub struct Gauges {
    pub orgs: u64,
    pub nodes_known: u64,
    pub nodes_healthy: u64,
    pub commands_open: u64,
    pub replication_lag_max_ms: u64,
    pub replication_behind: u64,
}

impl Metrics {
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        line(
            "hemvist_replication_lag_max_ms",
            "gauge",
            "The largest backup lag any node reports for an org (oldest unshipped write).",
            g.replication_lag_max_ms,
        );
        line(
            "hemvist_replication_orgs_behind",
            "gauge",
            "Orgs whose oldest unshipped write is more than 5 s old.",
            g.replication_behind,
        );
        line(
            "hemvist_control_up",
            "gauge",
            "1 while the control plane runs.",
            1,
        );
        line(
            "hemvist_orgs",
            "gauge",
            "Orgs in the control plane's store.",
            g.orgs,
        );
        line(
            "hemvist_nodes_known",
            "gauge",
            "Nodes that ever registered.",
            g.nodes_known,
        );
        line(
            "hemvist_nodes_healthy",
            "gauge",
            "Nodes connected with a live lease.",
            g.nodes_healthy,
        );
        line(
            "hemvist_commands_open",
            "gauge",
            "Commands sent to nodes and not yet acknowledged.",
            g.commands_open,
        );
        line(
            "hemvist_orgs_created_total",
            "counter",
            "Orgs created since start.",
            self.orgs_created.get(),
        );
        line(
            "hemvist_node_joins_refused_total",
            "counter",
            "Node sessions refused for a wrong join token.",
            self.refused_joins.get(),
        );
        line(
            "hemvist_admin_requests_total",
            "counter",
            "Admin API requests.",
            self.api_requests.get(),
        );
        line(
            "hemvist_admin_errors_total",
            "counter",
            "Admin API requests answered with an error.",
            self.api_errors.get(),
        );
        line(
            "hemvist_admin_unauthorized_total",
            "counter",
            "Admin API requests refused for a missing or wrong token.",
            self.api_unauthorized.get(),
        );
        out.push_str(&self.api_connections.render("hemvist_admin"));
        out.push_str(&self.grpc_connections.render("hemvist_grpc"));
        out
    }
}
