//! The residency report, end to end: real control plane and node processes in three regions,
//! a real S3-compatible server with one store per region. An org moved eu-north → eu-central,
//! with a branch, is reported with both intervals to the millisecond (exactly the placement
//! history's), its branch and its move, and "compliant"; an object planted under its prefix in
//! us-east's store is reported by `--verify-stores` as a violation; the HTML form is checked in
//! headless Chromium (it renders, makes no request beyond itself, and prints).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::browser;
use support::cluster::{Cluster, EU_CENTRAL, EU_NORTH, US_EAST};
use support::s3::S3;

fn report(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["audit", "report"];
    all.extend_from_slice(args);
    c.cli_s3(&all)
}

#[test]
fn a_moved_org_is_reported_to_the_millisecond_and_a_planted_object_is_a_violation() {
    let s3 = S3::start();
    let c = Cluster::start_with_store_per_region(&[EU_NORTH, EU_CENTRAL, US_EAST], &s3, 300, "");
    c.create_org_ready("norrsken", json!({"region": "eu-north", "residency": "EU"}));
    c.create_org_ready("liberty", json!({"region": "us-east", "residency": "US"}));
    let (ok, out, err) = c.cli(&["branch", "create", "norrsken", "--name", "qa", "--wait"]);
    assert!(ok, "branch create: {out}\n{err}");
    let id = c.move_org("norrsken", "eu-central");
    let op = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(op["phase"], "done", "{op}");

    let (ok, out, err) = report(&c, &["--org", "norrsken"]);
    assert!(ok, "audit report: {out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["orgs"].as_array().unwrap().len(), 1, "{r}");
    let o = &r["orgs"][0];
    assert_eq!(o["verdict"], "compliant", "{o}");
    assert_eq!(o["policy"], "EU", "{o}");
    // Both homes, exactly as the placement history has them.
    let (_, shown) = c.admin("GET", "/orgs/norrsken", None);
    let locations = shown["locations"].as_array().unwrap();
    let primaries: Vec<&Value> = o["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "primary")
        .collect();
    assert_eq!(primaries.len(), 2, "{o}");
    assert_eq!(locations.len(), 2, "{shown}");
    for (p, l) in primaries.iter().zip(locations) {
        assert_eq!(p["region"], l["region"], "{p} {l}");
        assert_eq!(p["from_ms"], l["from_ms"], "{p} {l}");
        assert_eq!(p["to_ms"], l["to_ms"], "{p} {l}");
    }
    assert_eq!(primaries[0]["region"], "eu-north");
    assert_eq!(primaries[1]["region"], "eu-central");
    assert_eq!(
        primaries[0]["to_ms"], primaries[1]["from_ms"],
        "no gap, no overlap"
    );
    assert!(primaries[1]["to_ms"].is_null());
    let kinds: Vec<&str> = o["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    for k in ["backups", "secondary", "branch"] {
        assert!(kinds.contains(&k), "no {k} interval: {o}");
    }
    assert_eq!(o["branches"], json!(["norrsken--qa"]), "{o}");
    let m = &o["moves"][0];
    assert_eq!(
        (m["from_region"].as_str(), m["to_region"].as_str()),
        (Some("eu-north"), Some("eu-central"))
    );
    assert_eq!(m["outcome"], "done");
    assert!(m["requested_by"].is_string());

    // The whole fleet, as CSV: a header and a row per interval of both orgs.
    let (ok, out, _) = report(&c, &["--format", "csv"]);
    assert!(ok);
    assert!(out.starts_with("org,verdict,policy,kind,region"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("liberty,compliant,US,primary,us-east")),
        "{out}"
    );

    // The stores agree with the ledger...
    let (ok, out, err) = report(&c, &["--org", "norrsken", "--verify-stores"]);
    assert!(ok, "verify-stores: {out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["stores_verified"], true);
    let stores = r["orgs"][0]["stores"].as_array().unwrap();
    assert!(
        stores
            .iter()
            .any(|s| s["region"] == "eu-central" && s["objects"].as_u64() > Some(0)),
        "{r}"
    );
    // ...until an object of the org turns up in us-east's store, where it never lived.
    let planted = s3
        .bucket_dir
        .join("hemvist/us-east/tenants/norrsken/g0000000001/snap/planted.hvb");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, b"not supposed to be here").unwrap();
    let (ok, out, _) = report(&c, &["--org", "norrsken", "--verify-stores"]);
    assert!(!ok, "a violation exits 1: {out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let o = &r["orgs"][0];
    assert_eq!(o["verdict"], "violation", "{o}");
    let violations = o["violations"].to_string();
    assert!(
        violations.contains("us-east") && violations.contains("tenants/norrsken/"),
        "{violations}"
    );
    std::fs::remove_file(&planted).unwrap();

    // A policy that forbids where its backups and its branch still are is refused, naming them.
    let (ok, out, err) = c.cli(&["orgs", "set-residency", "norrsken", "eu-central"]);
    assert!(!ok, "a narrowing past its backups was accepted: {out}");
    assert!(
        err.contains("eu-north") && err.contains("backups") && err.contains("norrsken--qa"),
        "{err}"
    );
    // (Nothing changed: the policy history below has the creation and the widening only.)
    let (ok, _, err) = c.cli(&[
        "orgs",
        "set-residency",
        "norrsken",
        "eu-central",
        "--move-to",
        "eu-central",
    ]);
    // Carrying it over is refused too while its branch is where the new policy forbids.
    assert!(
        !ok && err.contains("norrsken--qa") && err.contains("destroy it first"),
        "{err}"
    );
    // Widening is allowed, audited, and the report shows the policy over time.
    let (ok, out, err) = c.cli(&[
        "orgs",
        "set-residency",
        "norrsken",
        "EU,US",
        "--reason",
        "US office",
    ]);
    assert!(ok, "{out}\n{err}");
    let (ok, out, _) = c.cli(&["audit", "log", "--org", "norrsken", "--json"]);
    assert!(ok);
    let log: Vec<Value> = serde_json::from_str(&out).unwrap();
    let change = log
        .iter()
        .find(|e| e["action"] == "org.residency_changed")
        .expect("audited");
    assert_eq!(change["detail"]["reason"], "US office", "{change}");
    let (ok, out, err) = report(&c, &["--org", "norrsken"]);
    assert!(ok, "{out}\n{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    let history = r["orgs"][0]["policy_history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{r}");
    assert_eq!(history[0][1], "EU");
    assert_eq!(r["orgs"][0]["policy"], "EU + US");
    assert_eq!(r["orgs"][0]["verdict"], "compliant");

    // The page for an auditor, in a real browser.
    let html = c.dir.path().join("report.html");
    let (ok, out, err) = report(
        &c,
        &[
            "--org",
            "norrsken",
            "--format",
            "html",
            "--out",
            html.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}\n{err}");
    let (chromium, node_modules) = browser::prerequisites();
    browser::run_script(
        "report.cjs",
        &[
            ("HEMVIST_REPORT", html.display().to_string()),
            ("HEMVIST_ORG", "norrsken".into()),
            (
                "HEMVIST_ARTIFACTS",
                browser::artifacts().display().to_string(),
            ),
            ("NODE_PATH", node_modules.display().to_string()),
            ("CHROMIUM", chromium.display().to_string()),
        ],
        Duration::from_secs(120),
    );
}
