//! Every process's `/metrics` is valid exposition, as Prometheus's own Python parser reads it
//! (`prometheus-client`, which `scripts/setup` installs into `.deps/python`): the control
//! plane's and a node's, in both formats they serve; the values operators and the other tests
//! read are there, as integers where they count; and a node's histograms (users' request
//! latency by route, backup lag) fill as traffic and backups happen.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_NORTH};
use support::s3::S3;
use support::session::sign_in;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

#[test]
fn control_plane_and_node_metrics_parse_as_prometheus_exposition() {
    let c = Cluster::start(&[EU_NORTH]);
    c.create_org_ready("gauge-ab", json!({"region": "eu-north"}));
    let eu = c.node_url("eu-north");
    for path in [
        "/o/gauge-ab/",
        "/o/gauge-ab/signin",
        "/o/no-such-org/",
        "/healthz",
    ] {
        c.get(&format!("{eu}{path}"));
    }
    assert_eq!(c.admin("GET", "/orgs/gauge-ab", None).0, 200);
    assert_eq!(c.admin("GET", "/no-such-route", None).0, 404);

    // The control plane, as a client that asks for nothing in particular gets it.
    let control = c.control_url();
    let (content_type, text) = scrape(&control, None);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let families = parse(&text, "text");
    assert_eq!(kind(&families, "hemvist_orgs"), "gauge");
    assert_eq!(value(&families, "hemvist_orgs", &[]), 1.0);
    assert_eq!(kind(&families, "hemvist_admin_requests"), "counter");
    assert_eq!(
        kind(&families, "hemvist_admin_connections_accepted"),
        "counter"
    );
    assert_eq!(kind(&families, "hemvist_grpc_connections_open"), "gauge");
    assert_eq!(
        kind(&families, "hemvist_admin_request_duration_seconds"),
        "histogram"
    );
    let show = [("method", "GET"), ("route", "/api/v1/orgs/{id}")];
    assert!(
        value(
            &families,
            "hemvist_admin_request_duration_seconds_count",
            &show
        ) >= 1.0
    );
    let create = [("method", "POST"), ("route", "/api/v1/orgs")];
    assert!(
        value(
            &families,
            "hemvist_admin_request_duration_seconds_count",
            &create
        ) >= 1.0
    );
    assert_eq!(
        kind(&families, "hemvist_replication_reported_lag_seconds"),
        "histogram"
    );

    // ... as Prometheus asks for it: OpenMetrics, which the stricter parser reads.
    let (content_type, text) = scrape(&control, Some(OPENMETRICS));
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(
        text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1,
        "{text}"
    );
    let families = parse(&text, "openmetrics");
    assert_eq!(value(&families, "hemvist_orgs", &[]), 1.0);
    assert_eq!(kind(&families, "hemvist_node_joins_refused"), "counter");

    // A node's.
    let (content_type, text) = scrape(&eu, None);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let families = parse(&text, "text");
    assert_eq!(kind(&families, "hemvist_tenants_hosted"), "gauge");
    assert_eq!(value(&families, "hemvist_tenants_hosted", &[]), 1.0);
    assert_eq!(
        kind(&families, "hemvist_http_connections_accepted"),
        "counter"
    );

    let (content_type, text) = scrape(&eu, Some(OPENMETRICS));
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let families = parse(&text, "openmetrics");
    assert_eq!(value(&families, "hemvist_tenants_hosted", &[]), 1.0);
    assert_eq!(kind(&families, "hemvist_http_bad_requests"), "counter");

    // The lines the other scenarios read stay `name integer`.
    assert_eq!(c.metric(&control, "hemvist_orgs"), 1);
    assert!(c.metric(&control, "hemvist_admin_requests_total") >= 2);
    assert_eq!(c.metric(&control, "hemvist_node_joins_refused_total"), 0);
    assert!(c.metric(&control, "hemvist_admin_connections_accepted_total") >= 1);
    assert_eq!(c.metric(&eu, "hemvist_tenants_hosted"), 1);
    assert!(c.metric(&eu, "hemvist_http_connections_accepted_total") >= 1);
    assert_eq!(c.metric(&eu, "hemvist_http_bad_requests_total"), 0);
    assert_eq!(c.metric(&eu, "hemvist_search_index_builds_total"), 0);
}

#[test]
fn node_histograms_time_the_users_requests_by_route_and_the_backup_lag_of_each_pass() {
    let s3 = S3::start();
    let c = Cluster::start_with_node_config(&[EU_NORTH], &s3.node_backup_toml(300));
    c.create_org_ready("lagom", json!({"region": "eu-north"}));
    c.add_user("lagom", "ada@lagom.example", "correct horse battery");
    let eu = c.node_url("eu-north");
    let u = sign_in(&eu, "lagom", "ada@lagom.example", "correct horse battery").expect("sign in");
    for name in ["Ada", "Bertil"] {
        let (status, _, body) = u.post("/contacts", &[("name", name), ("city", "Uppsala")], None);
        assert_eq!(status, 303, "adding {name}: {body}");
    }
    assert_eq!(u.get("/?q=Ada").0, 200);
    // A method outside the usual few is counted under `other`, on the route it asked for.
    let odd = support::session::client()
        .request(
            reqwest::Method::from_bytes(b"PROPFIND").expect("method"),
            format!("{eu}/o/lagom/"),
        )
        .send()
        .expect("PROPFIND answers");
    assert_eq!(odd.status().as_u16(), 405);
    c.wait_for("a backup pass that found the writes", || {
        let families = parse(&scrape(&eu, None).1, "text");
        let shipped = value(&families, "hemvist_backup_dirty_tenants", &[]) == 0.0;
        let observed = families.get("hemvist_backup_lag_seconds").is_some();
        (shipped && observed).then_some(())
    });

    for (accept, format) in [(None, "text"), (Some(OPENMETRICS), "openmetrics")] {
        let families = parse(&scrape(&eu, accept).1, format);
        let latency = "hemvist_http_request_duration_seconds";
        assert_eq!(kind(&families, latency), "histogram", "{format}");
        for (method, route) in [
            ("GET", "/o/{org}/signin"),
            ("POST", "/o/{org}/signin"),
            ("POST", "/o/{org}/contacts"),
            ("GET", "/o/{org}/"),
            ("other", "/o/{org}/"),
        ] {
            let count = histogram(&families, latency, &[("method", method), ("route", route)]);
            assert!(
                count >= 1.0,
                "{format}: {method} {route} timed {count} times"
            );
        }
        let posts = histogram(
            &families,
            latency,
            &[("method", "POST"), ("route", "/o/{org}/contacts")],
        );
        assert_eq!(posts, 2.0, "{format}");
        // Routes are patterns: no org id, no path a client typed, is a label value.
        let routes = families[latency]["samples"].as_array().expect("samples");
        assert!(
            routes
                .iter()
                .all(|s| !s[1]["route"].as_str().unwrap_or_default().contains("lagom")),
            "{format}: {routes:?}"
        );

        let lag = "hemvist_backup_lag_seconds";
        assert_eq!(kind(&families, lag), "histogram", "{format}");
        let passes = histogram(&families, lag, &[]);
        assert!(passes >= 1.0, "{format}: {passes} passes");
        // A pass starts by the interval (300 ms) after the oldest write: far under a minute.
        let (_, within_a_minute) = buckets(&families, lag, &[])
            .into_iter()
            .find(|(le, _)| *le == 60.0)
            .expect("a 60 s bucket");
        assert_eq!(within_a_minute, passes, "{format}");
    }
}

#[test]
fn the_node_lag_gauge_grows_while_the_store_hangs_and_hanging_puts_count_as_failures() {
    let s3 = S3::start();
    let backup = format!("{}put_timeout_ms = 500\n", s3.node_backup_toml(200));
    let c = Cluster::start_with_node_config(&[EU_NORTH], &backup);
    c.create_org_ready("hangs", json!({"region": "eu-north"}));
    c.add_user("hangs", "ada@hangs.example", "correct horse battery");
    let eu = c.node_url("eu-north");
    let u = sign_in(&eu, "hangs", "ada@hangs.example", "correct horse battery").expect("sign in");
    let shipped = |c: &Cluster| {
        c.wait_for("everything shipped", || {
            let clean = c.metric(&eu, "hemvist_backup_dirty_tenants") == 0;
            (clean && c.metric(&eu, "hemvist_backup_lag_ms") == 0).then_some(())
        })
    };
    assert_eq!(u.post("/contacts", &[("name", "Ada")], None).0, 303);
    shipped(&c);

    // The store hangs: no answer at all, so no pass ends while it does.
    s3.faults.hang.store(true, Ordering::SeqCst);
    let failures = c.metric(&eu, "hemvist_backup_put_failures_total");
    assert_eq!(u.post("/contacts", &[("name", "Bertil")], None).0, 303);
    let first = c.wait_for("the lag gauge to pass a second", || {
        let lag = c.metric(&eu, "hemvist_backup_lag_ms");
        (lag >= 1_000).then_some(lag)
    });
    c.wait_for("hanging uploads to count as failures", || {
        (c.metric(&eu, "hemvist_backup_put_failures_total") >= failures + 2).then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let later = c.metric(&eu, "hemvist_backup_lag_ms");
    assert!(
        later >= first + 400,
        "the lag keeps growing while the store hangs: {first} ms, then {later} ms"
    );
    assert_eq!(c.metric(&eu, "hemvist_backup_dirty_tenants"), 1);

    // The store answers again: the write is shipped and the lag falls back to nothing.
    s3.faults.hang.store(false, Ordering::SeqCst);
    shipped(&c);
}

/// (Content-Type, body) of `{base}/metrics`.
fn scrape(base: &str, accept: Option<&str>) -> (String, String) {
    let http = support::http().build().expect("HTTP client");
    let mut req = http.get(format!("{base}/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let resp = req.send().expect("GET /metrics answers");
    assert_eq!(resp.status().as_u16(), 200, "{base}/metrics");
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (content_type, resp.text().expect("metrics body"))
}

/// Reads `text` with prometheus-client's parser for `format` (`text` or `openmetrics`) and
/// refuses what Prometheus would refuse on a scrape and the parser lets through: a family or a
/// series twice. Returns {family: {"type", "samples": [[name, labels, value]]}}.
fn parse(text: &str, format: &str) -> Value {
    const SCRIPT: &str = r#"
import json, sys
fmt = sys.argv[1]
if fmt == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
out, series = {}, set()
for family in text_string_to_metric_families(sys.stdin.read()):
    if family.name in out:
        raise ValueError("family %s twice" % family.name)
    samples = []
    for s in family.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key in series:
            raise ValueError("series %r twice" % (key,))
        series.add(key)
        samples.append([s.name, s.labels, s.value])
    out[family.name] = {"type": family.type, "samples": samples}
json.dump(out, sys.stdout)
"#;
    let deps = Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/python");
    let mut python = Command::new("python3")
        .args(["-c", SCRIPT, format])
        .env("PYTHONPATH", &deps)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (scripts/setup installs the parser)");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to the parser");
    let out = python.wait_with_output().expect("parser finishes");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client"),
        "prometheus-client is not in {}: run scripts/setup",
        deps.display()
    );
    assert!(
        out.status.success(),
        "the {format} parser refuses these metrics: {stderr}\n{text}"
    );
    serde_json::from_slice(&out.stdout).expect("parser output is JSON")
}

fn kind<'a>(families: &'a Value, name: &str) -> &'a str {
    families[name]["type"]
        .as_str()
        .unwrap_or_else(|| panic!("no family {name} in {families}"))
}

/// The buckets of the histogram `name`'s series with (at least) these labels, as (upper
/// bound, cumulative count).
fn buckets(families: &Value, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let samples = families[name]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {name} in {families}"));
    let bucket = format!("{name}_bucket");
    samples
        .iter()
        .filter(|s| s[0] == bucket.as_str() && labels.iter().all(|(k, v)| s[1][k] == *v))
        .map(|s| {
            let le = s[1]["le"].as_str().expect("le label");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            (le, s[2].as_f64().expect("bucket count"))
        })
        .collect()
}

/// Checks that the histogram `name`'s series with (at least) these labels is sane (bounds
/// increasing, counts never falling, `+Inf` equal to the count, a sum that is not negative
/// and, when nothing fell above the largest bound, at most that bound per observation) and
/// returns its count.
fn histogram(families: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    let buckets = buckets(families, name, labels);
    let show = format!("{name} {labels:?} buckets {buckets:?}");
    assert!(buckets.len() >= 2, "{show}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{show}"
    );
    let (largest, under_largest) = buckets[buckets.len() - 2];
    let (last, in_all) = buckets[buckets.len() - 1];
    assert_eq!(last, f64::INFINITY, "{show}");
    let count = value(families, &format!("{name}_count"), labels);
    assert_eq!(in_all, count, "{show}");
    let sum = value(families, &format!("{name}_sum"), labels);
    assert!(sum >= 0.0, "{show}: sum {sum}");
    if under_largest == count {
        assert!(sum <= largest * count, "{show}: sum {sum}");
    }
    count
}

/// The value of the series `name` with (at least) these labels.
fn value(families: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .as_object()
        .into_iter()
        .flat_map(|f| f.values())
        .flat_map(|f| f["samples"].as_array().into_iter().flatten())
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][k] == *v))
        .and_then(|s| s[2].as_f64())
        .unwrap_or_else(|| panic!("no series {name} {labels:?} in {families}"))
}
