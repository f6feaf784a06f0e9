//! Prometheus text exposition of a node's counters and gauges. Counters only grow; every name is
//! `hemvist_*` with its unit in it; gauges are read from the node's parts at scrape time, never
//! kept in step by hand.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
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
    pub search_micros: Counter,
    pub commands_ok: Counter,
    pub commands_failed: Counter,
    pub link_connects: Counter,
    pub link_refused: Counter,
    pub link_up: AtomicU64,
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
    pub backup: Option<std::sync::Arc<crate::backup::replicator::Replicator>>,
    pub http: std::sync::Arc<hemvist_net::ListenerStats>,
    /// Password checks running or waiting for a worker.
    pub signin_checks: u64,
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
        line("hemvist_node_up", "gauge", "1 while the node runs.", 1);
        line(
            "hemvist_tenants_hosted",
            "gauge",
            "Orgs this node hosts.",
            g.hosted,
        );
        line(
            "hemvist_tenants_open",
            "gauge",
            "Tenants with open database files.",
            g.open_tenants,
        );
        line(
            "hemvist_tenant_opens_total",
            "counter",
            "Tenant databases opened.",
            g.tenant_opens,
        );
        line(
            "hemvist_tenant_evictions_total",
            "counter",
            "Tenants closed to stay under max_open_tenants.",
            g.tenant_evictions,
        );
        line(
            "hemvist_placements_cached",
            "gauge",
            "Orgs in the routing cache.",
            g.placements,
        );
        line(
            "hemvist_lease_live",
            "gauge",
            "1 while the node holds a live lease.",
            g.lease_live as u64,
        );
        line(
            "hemvist_control_link_up",
            "gauge",
            "1 while the stream to the control plane is open.",
            self.link_up.load(Ordering::Relaxed),
        );
        line(
            "hemvist_control_link_connects_total",
            "counter",
            "Sessions opened with the control plane.",
            self.link_connects.get(),
        );
        line(
            "hemvist_control_link_refused_total",
            "counter",
            "Sessions the control plane refused (wrong join token).",
            self.link_refused.get(),
        );
        line(
            "hemvist_commands_ok_total",
            "counter",
            "Commands applied.",
            self.commands_ok.get(),
        );
        line(
            "hemvist_commands_failed_total",
            "counter",
            "Commands refused or failed.",
            self.commands_failed.get(),
        );
        line(
            "hemvist_http_requests_total",
            "counter",
            "HTTP requests for org pages.",
            self.requests.get(),
        );
        line(
            "hemvist_http_served_total",
            "counter",
            "Org pages served here.",
            self.served.get(),
        );
        line(
            "hemvist_http_redirected_total",
            "counter",
            "Requests redirected to the org's home node.",
            self.redirected.get(),
        );
        line(
            "hemvist_http_not_found_total",
            "counter",
            "Requests for unknown orgs.",
            self.not_found.get(),
        );
        line(
            "hemvist_http_bad_requests_total",
            "counter",
            "Requests refused as malformed.",
            self.bad_requests.get(),
        );
        line(
            "hemvist_http_forbidden_total",
            "counter",
            "Requests refused because the session belongs to another org.",
            self.forbidden.get(),
        );
        line(
            "hemvist_csrf_refused_total",
            "counter",
            "Form posts refused by the CSRF check.",
            self.csrf_refused.get(),
        );
        line(
            "hemvist_origin_refused_total",
            "counter",
            "Form posts refused because they did not come from this node's pages.",
            self.origin_refused.get(),
        );
        line(
            "hemvist_signin_failures_total",
            "counter",
            "Sign-ins refused for a wrong email or password.",
            self.signin_failures.get(),
        );
        line(
            "hemvist_signin_throttled_total",
            "counter",
            "Sign-ins refused unchecked: too many failures for the account or the address.",
            self.signin_throttled.get(),
        );
        line(
            "hemvist_signin_rejected_busy_total",
            "counter",
            "Sign-ins refused unchecked: every password-check place was taken.",
            self.signin_rejected_busy.get(),
        );
        line(
            "hemvist_signin_checks",
            "gauge",
            "Password checks running or waiting for a worker.",
            g.signin_checks,
        );
        line(
            "hemvist_search_index_builds_total",
            "counter",
            "In-memory search indexes built from a tenant's database.",
            g.search_index_builds,
        );
        line(
            "hemvist_search_index_catch_ups_total",
            "counter",
            "Times a search index read the changes made since it last looked.",
            g.search_index_catch_ups,
        );
        line(
            "hemvist_searches_total",
            "counter",
            "Searches answered.",
            self.searches.get(),
        );
        let _ = writeln!(
            out,
            "# HELP hemvist_search_seconds_total Time spent answering searches.\n\
             # TYPE hemvist_search_seconds_total counter\n\
             hemvist_search_seconds_total {:.6}",
            self.search_micros.get() as f64 / 1e6
        );
        if let Some(b) = &g.backup {
            out.push_str(&b.render());
        }
        out.push_str(&g.http.render("hemvist_http"));
        out
    }
}
