//! The control plane's Prometheus metrics, through prometheus-client. Counters and histograms
//! live here (or, for what nodes report, in [`Replication`](crate::replication::Replication))
//! and count from start; gauges are not kept but computed from the store and the sessions at
//! each scrape. A scrape builds one registry from the live handles and that scrape's gauges and
//! encodes it once, in the format the scraper asks for.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use hemvist_net::metrics::Latency;
pub use hemvist_net::metrics::{Format, RouteLabels};

pub struct Metrics {
    pub orgs_created: Counter,
    pub refused_joins: Counter,
    pub api_requests: Counter,
    pub api_errors: Counter,
    pub api_unauthorized: Counter,
    /// How long admin API requests take to answer, by [`RouteLabels`].
    pub api_latency: Latency,
    /// The two listeners' connection counts.
    pub api_connections: Arc<hemvist_net::ListenerStats>,
    pub grpc_connections: Arc<hemvist_net::ListenerStats>,
    /// Moves ended, by outcome (`done`, `rolled_back`).
    pub moves: Family<OutcomeLabels, Counter>,
    /// The write pause of each move, from its fence to its new home serving.
    pub move_pause: Histogram,
    /// Bytes the targets of finished moves copied.
    pub move_bytes: Counter,
    /// Failovers ended, by outcome (`done`, `failed`).
    pub failovers: Family<OutcomeLabels, Counter>,
    /// Each failed-over org's outage, from its dead node's last heartbeat to its new node
    /// serving.
    pub failover_outage: Histogram,
    /// Tenant migrations nodes reported, by outcome (`done`, `failed`, `unchanged`).
    pub migrations: Family<OutcomeLabels, Counter>,
    /// Signed checkpoints of the audit chain written, and attempts that failed.
    pub audit_checkpoints: Counter,
    pub audit_checkpoint_failures: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

impl Metrics {
    pub fn record_move(&self, outcome: &str, bytes: u64) {
        self.moves
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
        self.move_bytes.inc_by(bytes);
    }

    pub fn record_failover(&self, outcome: &str, outage_ms: Option<i64>) {
        self.failovers
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
        if let Some(ms) = outage_ms {
            self.failover_outage.observe(ms.max(0) as f64 / 1000.0);
        }
    }

    pub fn record_migration(&self, outcome: &str) {
        self.migrations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn record_move_pause(&self, pause_ms: Option<i64>) {
        if let Some(ms) = pause_ms {
            self.move_pause.observe(ms.max(0) as f64 / 1000.0);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let moves = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["done", "rolled_back"] {
            let _ = moves.get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            });
        }
        let failovers = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["done", "failed"] {
            let _ = failovers.get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            });
        }
        let migrations = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["done", "failed", "unchanged"] {
            let _ = migrations.get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            });
        }
        Metrics {
            migrations,
            failovers,
            failover_outage: Histogram::new([
                1.0, 5.0, 15.0, 30.0, 60.0, 90.0, 120.0, 300.0, 600.0,
            ]),
            orgs_created: Counter::default(),
            refused_joins: Counter::default(),
            api_requests: Counter::default(),
            api_errors: Counter::default(),
            api_unauthorized: Counter::default(),
            api_latency: hemvist_net::metrics::latency(),
            api_connections: Arc::default(),
            grpc_connections: Arc::default(),
            moves,
            move_pause: Histogram::new([0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0]),
            move_bytes: Counter::default(),
            audit_checkpoints: Counter::default(),
            audit_checkpoint_failures: Counter::default(),
        }
    }
}

/// What a scrape reads from the store and the sessions.
pub struct Gauges {
    pub orgs: u64,
    pub nodes_known: u64,
    pub nodes_healthy: u64,
    pub commands_open: u64,
    pub replication_lag_max_ms: u64,
    pub replication_behind: u64,
    pub operations_stalled: u64,
    /// The version new orgs start at.
    pub schema_current: u64,
    /// The running rollout's tenants not yet migrated (0 without one).
    pub rollout_pending: u64,
    /// Live branches, and those inside their warning window (about to expire).
    pub branches: u64,
    pub branches_expiring: u64,
}

impl Metrics {
    /// The exposition of every metric in `format`, with this scrape's gauges and the lag
    /// histogram of what nodes reported.
    pub fn render(&self, g: &Gauges, replication_lag: &Histogram, format: Format) -> String {
        let registry = self.registry(g, replication_lag);
        hemvist_net::metrics::encode(&registry, format)
    }

    fn registry(&self, g: &Gauges, replication_lag: &Histogram) -> Registry {
        let mut r = Registry::default();
        let gauge = hemvist_net::metrics::gauge;
        r.register(
            "hemvist_replication_lag_max_ms",
            "The largest backup lag any node reports for an org (oldest unshipped write)",
            gauge(g.replication_lag_max_ms),
        );
        r.register(
            "hemvist_schema_current_version",
            "The tenant schema version new orgs start at",
            gauge(g.schema_current),
        );
        r.register(
            "hemvist_rollout_pending_tenants",
            "Tenants the running schema rollout has still to migrate (0 without a rollout)",
            gauge(g.rollout_pending),
        );
        r.register(
            "hemvist_branches",
            "Live branches (test copies of orgs), each with an expiry",
            gauge(g.branches),
        );
        r.register(
            "hemvist_branches_expiring",
            "Live branches inside their warning window: destroyed at expiry unless kept alive",
            gauge(g.branches_expiring),
        );
        r.register(
            "hemvist_audit_checkpoints",
            "Signed checkpoints of the audit chain written to the checkpoint store since start",
            self.audit_checkpoints.clone(),
        );
        r.register(
            "hemvist_audit_checkpoint_failures",
            "Attempts to write an audit checkpoint that failed or were refused (the store refused or did not answer, or the chain no longer holds what the last checkpoint signed)",
            self.audit_checkpoint_failures.clone(),
        );
        r.register(
            "hemvist_tenant_migrations",
            "Tenant schema migrations nodes reported since start, by outcome (done, failed, unchanged: a dry run, or a tenant there already)",
            self.migrations.clone(),
        );
        r.register(
            "hemvist_operations_stalled",
            "Operations waiting past their phase's limit in a phase they cannot leave backwards (ops show says for what)",
            gauge(g.operations_stalled),
        );
        r.register(
            "hemvist_replication_orgs_behind",
            "Orgs whose oldest unshipped write is more than 5 s old",
            gauge(g.replication_behind),
        );
        r.register_with_unit(
            "hemvist_replication_reported_lag",
            "Backup lag of an org's position as its node reports it (age of the oldest unshipped write, 0 when all is shipped)",
            Unit::Seconds,
            replication_lag.clone(),
        );
        r.register(
            "hemvist_control_up",
            "1 while the control plane runs",
            gauge(1),
        );
        r.register(
            "hemvist_orgs",
            "Orgs in the control plane's store",
            gauge(g.orgs),
        );
        r.register(
            "hemvist_nodes_known",
            "Nodes that ever registered",
            gauge(g.nodes_known),
        );
        r.register(
            "hemvist_nodes_healthy",
            "Nodes connected with a live lease",
            gauge(g.nodes_healthy),
        );
        r.register(
            "hemvist_commands_open",
            "Commands sent to nodes and not yet acknowledged",
            gauge(g.commands_open),
        );
        // Counters are registered without `_total` and help without its final period: the
        // encoder adds both.
        r.register(
            "hemvist_orgs_created",
            "Orgs created since start",
            self.orgs_created.clone(),
        );
        r.register(
            "hemvist_node_joins_refused",
            "Node sessions refused for a wrong join token",
            self.refused_joins.clone(),
        );
        r.register(
            "hemvist_admin_requests",
            "Admin API requests",
            self.api_requests.clone(),
        );
        r.register(
            "hemvist_admin_errors",
            "Admin API requests answered with an error",
            self.api_errors.clone(),
        );
        r.register(
            "hemvist_admin_unauthorized",
            "Admin API requests refused for a missing or wrong token",
            self.api_unauthorized.clone(),
        );
        r.register_with_unit(
            "hemvist_admin_request_duration",
            "Time to answer a request of the admin API (and /healthz, /metrics), by method and route",
            Unit::Seconds,
            self.api_latency.clone(),
        );
        r.register(
            "hemvist_moves",
            "Moves ended since start, by outcome (done, rolled_back)",
            self.moves.clone(),
        );
        r.register_with_unit(
            "hemvist_move_pause",
            "Write pause of each move, from its fence until its new home serves",
            Unit::Seconds,
            self.move_pause.clone(),
        );
        r.register_with_unit(
            "hemvist_move_copied",
            "Bytes the targets of finished moves copied",
            Unit::Bytes,
            self.move_bytes.clone(),
        );
        r.register(
            "hemvist_failovers",
            "Failovers of orgs off dead nodes ended since start, by outcome (done, failed)",
            self.failovers.clone(),
        );
        r.register_with_unit(
            "hemvist_failover_outage",
            "Each failed-over org's outage, from its dead node's last heartbeat to its new node serving",
            Unit::Seconds,
            self.failover_outage.clone(),
        );
        self.api_connections.register(&mut r, "hemvist_admin");
        self.grpc_connections.register(&mut r, "hemvist_grpc");
        r
    }
}

/// The buckets of [`Replication`](crate::replication::Replication)'s lag histogram: the
/// async target is 1 s; 5 s makes an org "behind".
pub fn replication_lag_histogram() -> Histogram {
    hemvist_net::metrics::lag_histogram()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            orgs: 4,
            nodes_known: 2,
            nodes_healthy: 1,
            commands_open: 0,
            replication_lag_max_ms: 1_500,
            replication_behind: 0,
            operations_stalled: 0,
            schema_current: 5,
            rollout_pending: 0,
            branches: 2,
            branches_expiring: 1,
        }
    }

    #[test]
    fn names_and_integer_values_are_those_the_operators_read() {
        let m = Metrics::default();
        m.refused_joins.inc();
        m.api_latency
            .get_or_create(&RouteLabels {
                method: "GET".into(),
                route: "/api/v1/orgs/{id}".into(),
            })
            .observe(0.003);
        let lag = replication_lag_histogram();
        lag.observe(1.5);
        let text = m.render(&gauges(), &lag, Format::Prometheus);
        for line in [
            "hemvist_orgs 4",
            "hemvist_replication_lag_max_ms 1500",
            "hemvist_node_joins_refused_total 1",
            "hemvist_orgs_created_total 0",
            "hemvist_control_up 1",
            "hemvist_branches 2",
            "hemvist_branches_expiring 1",
            "hemvist_audit_checkpoints_total 0",
            "hemvist_audit_checkpoint_failures_total 0",
            "hemvist_moves_total{outcome=\"rolled_back\"} 0",
            "hemvist_failovers_total{outcome=\"failed\"} 0",
            "hemvist_admin_connections_open 0",
            "hemvist_grpc_connections_accepted_total 0",
            "hemvist_replication_reported_lag_seconds_count 1",
            "hemvist_admin_request_duration_seconds_bucket{method=\"GET\",route=\"/api/v1/orgs/{id}\",le=\"0.004\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("_total_total"), "{text}");
        let helps = text.lines().filter(|l| l.starts_with("# HELP "));
        assert!(
            helps
                .clone()
                .all(|l| l.ends_with('.') && !l.ends_with("..")),
            "{text}"
        );
        assert_eq!(helps.count(), 37, "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn openmetrics_when_asked_for_it_ending_in_one_eof() {
        let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(accept)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);

        let text =
            Metrics::default().render(&gauges(), &replication_lag_histogram(), Format::OpenMetrics);
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.contains("# TYPE hemvist_node_joins_refused counter\n"));
        assert!(text.contains("# UNIT hemvist_replication_reported_lag_seconds seconds\n"));
    }
}
