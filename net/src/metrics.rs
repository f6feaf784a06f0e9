//! What every process's `/metrics` shares: one registry encoded once, in the format the scraper
//! asks for, and the request-latency histogram's series (method and route pattern, never a path,
//! so no org id becomes a label value and a client cannot mint series).

use axum::extract::{MatchedPath, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The two text formats a scraper may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4, what a client that asks for nothing in particular gets.
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it (as Prometheus itself does), else the
    /// Prometheus text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A value read at scrape time, as a gauge.
pub fn gauge(v: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

/// The whole registry, once, in `format`.
pub fn encode(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    let encoded = match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
    };
    // Writing to a String fails only if a metric's encoding does, which ours cannot.
    debug_assert!(encoded.is_ok(), "encode metrics: {encoded:?}");
    out
}

/// A request's series in a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

impl RouteLabels {
    /// The request's method (the usual few, else `other`) and its matched route's pattern (or
    /// `unmatched`).
    pub fn of(req: &Request) -> RouteLabels {
        use axum::http::Method;
        let method = match *req.method() {
            Method::GET
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::HEAD => req.method().as_str(),
            _ => "other",
        };
        RouteLabels {
            method: method.to_string(),
            route: req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str())
                .to_string(),
        }
    }
}

/// Request latencies by [`RouteLabels`], from 0.5 ms to about 4 s.
pub type Latency = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub fn latency() -> Latency {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14)))
}

/// How far backups are behind, from 0.1 s to 5 min.
pub fn lag_histogram() -> Histogram {
    Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(accept)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        let r = Registry::default();
        assert!(encode(&r, Format::OpenMetrics).ends_with("# EOF\n"));
        assert!(!encode(&r, Format::Prometheus).contains("# EOF"));
    }
}
