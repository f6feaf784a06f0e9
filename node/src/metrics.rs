//! A node's Prometheus metrics, through prometheus-client. Counters only grow and histograms
//! count from start; every name is `hemvist_*` with its unit in it; gauges are read from the
//! node's parts at scrape time, never kept in step by hand. A scrape builds one registry from
//! the live handles and that scrape's gauges and encodes it once, in the format the scraper
//! asks for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::registry::{Registry, Unit};

use hemvist_net::metrics::{gauge, Latency};
pub use hemvist_net::metrics::{Format, RouteLabels};

pub struct Metrics {
    pub requests: Counter,
    pub served: Counter,
    pub redirected: Counter,
    pub not_found: Counter,
    pub bad_requests: Counter,
    pub forbidden: Counter,
    pub csrf_refused: Counter,
    pub origin_refused: Counter,
    pub signin_failures: Counter,
    pub signin_throttled: Counter,
    pub signin_rejected_busy: Counter,
    pub searches: Counter,
    pub search_seconds: Counter<f64, AtomicU64>,
    pub commands_ok: Counter,
    pub commands_failed: Counter,
    pub link_connects: Counter,
    pub link_refused: Counter,
    pub link_up: AtomicU64,
    /// How long the users' HTTP requests take to answer, by [`RouteLabels`].
    pub http_latency: Latency,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Counter::default(),
            served: Counter::default(),
            redirected: Counter::default(),
            not_found: Counter::default(),
            bad_requests: Counter::default(),
            forbidden: Counter::default(),
            csrf_refused: Counter::default(),
            origin_refused: Counter::default(),
            signin_failures: Counter::default(),
            signin_throttled: Counter::default(),
            signin_rejected_busy: Counter::default(),
            searches: Counter::default(),
            search_seconds: Counter::default(),
            commands_ok: Counter::default(),
            commands_failed: Counter::default(),
            link_connects: Counter::default(),
            link_refused: Counter::default(),
            link_up: AtomicU64::new(0),
            http_latency: hemvist_net::metrics::latency(),
        }
    }
}

pub struct Gauges {
    pub hosted: u64,
    pub open_tenants: u64,
    pub placements: u64,
    pub lease_live: bool,
    pub tenant_opens: u64,
    pub tenant_evictions: u64,
    pub search_index_builds: u64,
    pub search_index_catch_ups: u64,
    pub backup: Option<Arc<crate::backup::replicator::Replicator>>,
    pub http: Arc<hemvist_net::ListenerStats>,
    /// Password checks running or waiting for a worker.
    pub signin_checks: u64,
    /// Free bytes under the data folder, the headroom kept, whether the node is below it, and
    /// the writes refused for it.
    pub disk_free_bytes: u64,
    pub disk_headroom_bytes: u64,
    pub storage_full: bool,
    pub writes_refused_storage_full: u64,
}

impl Metrics {
    /// The exposition of every metric in `format`, with this scrape's gauges.
    pub fn render(&self, g: &Gauges, format: Format) -> String {
        let registry = self.registry(g);
        hemvist_net::metrics::encode(&registry, format)
    }

    // Counters are registered without `_total` and help without its final period: the
    // encoder adds both.
    fn registry(&self, g: &Gauges) -> Registry {
        let mut r = Registry::default();
        r.register("hemvist_node_up", "1 while the node runs", gauge(1));
        r.register(
            "hemvist_tenants_hosted",
            "Orgs this node hosts",
            gauge(g.hosted),
        );
        r.register(
            "hemvist_tenants_open",
            "Tenants with open database files",
            gauge(g.open_tenants),
        );
        r.register(
            "hemvist_tenant_opens",
            "Tenant databases opened",
            ConstCounter::new(g.tenant_opens),
        );
        r.register(
            "hemvist_tenant_evictions",
            "Tenants closed to stay under max_open_tenants",
            ConstCounter::new(g.tenant_evictions),
        );
        r.register(
            "hemvist_placements_cached",
            "Orgs in the routing cache",
            gauge(g.placements),
        );
        r.register(
            "hemvist_lease_live",
            "1 while the node holds a live lease",
            gauge(g.lease_live as u64),
        );
        r.register(
            "hemvist_control_link_up",
            "1 while the stream to the control plane is open",
            gauge(self.link_up.load(Ordering::Relaxed)),
        );
        let counters: [(&str, &str, &Counter); 16] = [
            (
                "hemvist_control_link_connects",
                "Sessions opened with the control plane",
                &self.link_connects,
            ),
            (
                "hemvist_control_link_refused",
                "Sessions the control plane refused (wrong join token)",
                &self.link_refused,
            ),
            ("hemvist_commands_ok", "Commands applied", &self.commands_ok),
            (
                "hemvist_commands_failed",
                "Commands refused or failed",
                &self.commands_failed,
            ),
            (
                "hemvist_http_requests",
                "HTTP requests for org pages",
                &self.requests,
            ),
            ("hemvist_http_served", "Org pages served here", &self.served),
            (
                "hemvist_http_redirected",
                "Requests redirected to the org's home node",
                &self.redirected,
            ),
            (
                "hemvist_http_not_found",
                "Requests for unknown orgs",
                &self.not_found,
            ),
            (
                "hemvist_http_bad_requests",
                "Requests refused as malformed",
                &self.bad_requests,
            ),
            (
                "hemvist_http_forbidden",
                "Requests refused because the session belongs to another org",
                &self.forbidden,
            ),
            (
                "hemvist_csrf_refused",
                "Form posts refused by the CSRF check",
                &self.csrf_refused,
            ),
            (
                "hemvist_origin_refused",
                "Form posts refused because they did not come from this node's pages",
                &self.origin_refused,
            ),
            (
                "hemvist_signin_failures",
                "Sign-ins refused for a wrong email or password",
                &self.signin_failures,
            ),
            (
                "hemvist_signin_throttled",
                "Sign-ins refused unchecked: too many failures for the account or the address",
                &self.signin_throttled,
            ),
            (
                "hemvist_signin_rejected_busy",
                "Sign-ins refused unchecked: every password-check place was taken",
                &self.signin_rejected_busy,
            ),
            ("hemvist_searches", "Searches answered", &self.searches),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "hemvist_disk_free_bytes",
            "Bytes free for the node under its data folder",
            gauge(g.disk_free_bytes),
        );
        r.register(
            "hemvist_disk_headroom_bytes",
            "Free bytes the node keeps; below them its tenants are read-only",
            gauge(g.disk_headroom_bytes),
        );
        r.register(
            "hemvist_storage_full",
            "1 while the node is below its free-space headroom and takes no writes",
            gauge(g.storage_full as u64),
        );
        r.register(
            "hemvist_writes_refused_storage_full",
            "Writes refused because the node was below its free-space headroom",
            ConstCounter::new(g.writes_refused_storage_full),
        );
        r.register(
            "hemvist_signin_checks",
            "Password checks running or waiting for a worker",
            gauge(g.signin_checks),
        );
        r.register(
            "hemvist_search_index_builds",
            "In-memory search indexes built from a tenant's database",
            ConstCounter::new(g.search_index_builds),
        );
        r.register(
            "hemvist_search_index_catch_ups",
            "Times a search index read the changes made since it last looked",
            ConstCounter::new(g.search_index_catch_ups),
        );
        r.register_with_unit(
            "hemvist_search",
            "Time spent answering searches",
            Unit::Seconds,
            self.search_seconds.clone(),
        );
        r.register_with_unit(
            "hemvist_http_request_duration",
            "Time to answer a request on the users' HTTP listener, by method and route",
            Unit::Seconds,
            self.http_latency.clone(),
        );
        if let Some(b) = &g.backup {
            b.metrics.register(&mut r, b.dirty_count(), b.lag_ms());
        }
        g.http.register(&mut r, "hemvist_http");
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            hosted: 2,
            open_tenants: 1,
            placements: 3,
            lease_live: true,
            tenant_opens: 5,
            tenant_evictions: 0,
            search_index_builds: 1,
            search_index_catch_ups: 0,
            backup: None,
            http: Arc::default(),
            signin_checks: 0,
            disk_free_bytes: 1 << 30,
            disk_headroom_bytes: 1 << 28,
            storage_full: false,
            writes_refused_storage_full: 3,
        }
    }

    #[test]
    fn names_and_integer_values_are_those_the_tests_and_operators_read() {
        let m = Metrics::default();
        m.bad_requests.inc();
        m.searches.inc();
        m.search_seconds.inc_by(0.012_5);
        m.http_latency
            .get_or_create(&RouteLabels {
                method: "GET".into(),
                route: "/o/{org}/".into(),
            })
            .observe(0.003);
        let text = m.render(&gauges(), Format::Prometheus);
        for line in [
            "hemvist_node_up 1",
            "hemvist_tenants_hosted 2",
            "hemvist_tenants_open 1",
            "hemvist_lease_live 1",
            "hemvist_tenant_opens_total 5",
            "hemvist_http_bad_requests_total 1",
            "hemvist_searches_total 1",
            "hemvist_search_seconds_total 0.0125",
            "hemvist_search_index_builds_total 1",
            "hemvist_signin_checks 0",
            "hemvist_disk_free_bytes 1073741824",
            "hemvist_disk_headroom_bytes 268435456",
            "hemvist_storage_full 0",
            "hemvist_writes_refused_storage_full_total 3",
            "hemvist_http_connections_open 0",
            "hemvist_http_connections_accepted_total 0",
            "hemvist_http_request_duration_seconds_bucket{method=\"GET\",route=\"/o/{org}/\",le=\"0.004\"} 1",
            "hemvist_http_request_duration_seconds_count{method=\"GET\",route=\"/o/{org}/\"} 1",
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
        assert_eq!(helps.count(), 38, "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn openmetrics_when_asked_for_it_ending_in_one_eof() {
        let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(accept)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);

        let m = Metrics::default();
        // A family without series is left out: the histogram shows once a request was timed.
        let text = m.render(&gauges(), Format::OpenMetrics);
        assert!(!text.contains("hemvist_http_request_duration"), "{text}");
        m.http_latency
            .get_or_create(&RouteLabels {
                method: "other".into(),
                route: "unmatched".into(),
            })
            .observe(0.1);
        let text = m.render(&gauges(), Format::OpenMetrics);
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.contains("# TYPE hemvist_http_bad_requests counter\n"));
        assert!(text.contains("# UNIT hemvist_search_seconds seconds\n"));
        assert!(text.contains("# TYPE hemvist_http_request_duration_seconds histogram\n"));
    }
}
