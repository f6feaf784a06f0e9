//! The operator's verbs for moves and operations, with real processes: `orgs move` to a region
//! the org's residency policy forbids is refused with the policy named and changes nothing; an
//! operation id that is malformed or unknown gets a clear error, never a request elsewhere; and
//! `orgs move --wait` follows a real move through every phase to its end, for scripts and for
//! people.

mod support;

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_CENTRAL, EU_NORTH, US_EAST};
use support::s3::S3;

/// A move's phases, in order, when nothing goes wrong.
const PHASES: [&str; 6] = [
    "copying",
    "fencing",
    "finishing",
    "switching",
    "releasing",
    "done",
];

/// `hemvist ARGS --json`, which must succeed: its output, parsed.
fn cli_json(c: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = c.cli(&all);
    assert!(ok, "hemvist {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("hemvist {args:?} printed {out:?}: {e}"))
}

#[test]
fn a_move_outside_the_residency_policy_is_refused_and_changes_nothing() {
    let c = Cluster::start(&[EU_NORTH, US_EAST]);
    c.create_org_ready("fika", json!({"region": "eu-north", "residency": "EU"}));

    let (ok, out, err) = c.cli(&[
        "orgs", "move", "fika", "--to", "us-east", "--reason", "cheaper", "--wait",
    ]);
    assert!(!ok, "the move was accepted: {out}");
    assert!(
        err.contains("residency (422)") && err.contains("residency policy"),
        "{err}"
    );
    assert!(err.contains("us-east") && err.contains("EU"), "{err}");
    assert!(!err.contains(support::cluster::ADMIN_TOKEN), "{err}");

    // Still at home, with one location and no operation ever started.
    let (ok, shown, err) = c.cli(&["orgs", "show", "fika"]);
    assert!(ok, "{err}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("home region") && l.ends_with("eu-north")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("node") && l.ends_with("eu-north-1")),
        "{shown}"
    );
    let locations: Vec<&str> = shown
        .lines()
        .skip_while(|l| !l.starts_with("locations"))
        .skip(2)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(locations.len(), 1, "{shown}");
    assert!(
        locations[0].starts_with("eu-north") && locations[0].contains("now"),
        "{shown}"
    );
    let org = cli_json(&c, &["orgs", "show", "fika"]);
    assert_eq!(org["home_region"], "eu-north");
    assert_eq!(org["locations"].as_array().map(Vec::len), Some(1), "{org}");
    assert!(org["locations"][0]["to_ms"].is_null(), "{org}");
    assert!(
        !org["audit"].to_string().contains("move."),
        "a move was audited: {}",
        org["audit"]
    );
    assert_eq!(cli_json(&c, &["ops", "list"]), json!([]));
    let (ok, listed, err) = c.cli(&["ops", "list"]);
    assert!(ok, "{err}");
    assert_eq!(listed.lines().count(), 1, "only the header: {listed}");
}

#[test]
fn malformed_and_unknown_operation_ids_get_clear_errors() {
    let c = Cluster::start(&[EU_NORTH]);
    c.create_org_ready("acme", json!({"region": "eu-north"}));

    // Refused before any request: a path like this must never reach another route.
    for bad in ["../orgs/acme", "move acme", "move-acme-1?x=1", ""] {
        let (ok, out, err) = c.cli(&["ops", "show", bad]);
        assert!(!ok, "ops show {bad:?} printed {out}");
        assert!(
            err.contains("invalid operation id") && err.contains("letters, digits and '-'"),
            "ops show {bad:?}: {err}"
        );
        assert!(!out.contains("acme"), "ops show {bad:?} showed {out}");
    }
    let long = "a".repeat(129);
    let (ok, _, err) = c.cli(&["ops", "show", &long]);
    assert!(!ok && err.contains("invalid operation id"), "{err}");
    // The control plane refuses the same ids on its own.
    let (status, body) = c.admin("GET", "/operations/move_acme", None);
    assert_eq!(status, 400, "{body}");

    let (ok, _, err) = c.cli(&["ops", "show", "move-acme-000000000000"]);
    assert!(
        !ok && err.contains("no operation move-acme-000000000000"),
        "{err}"
    );
    let (ok, out, err) = c.cli(&["ops", "cancel", "move-acme-000000000000"]);
    assert!(!ok, "cancel of an unknown operation printed {out}");
    assert!(
        err.contains("not_found (404)") && err.contains("no operation"),
        "{err}"
    );
    let (ok, _, err) = c.cli(&["ops", "cancel", "../../orgs/acme/move"]);
    assert!(!ok && err.contains("invalid operation id"), "{err}");
    assert_eq!(cli_json(&c, &["ops", "list"]), json!([]));
}

#[test]
fn a_move_followed_with_wait_shows_every_phase_and_ends_done() {
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL], &s3, 300);
    c.create_org_ready("acme", json!({"region": "eu-north", "residency": "EU"}));
    c.add_user("acme", "ada@acme.example", "correct horse battery");

    // For scripts: a JSON line per change, then the final record.
    let (ok, out, err) = c.cli(&[
        "orgs",
        "move",
        "acme",
        "--to",
        "eu-central",
        "--reason",
        "closer to its users",
        "--wait",
        "--json",
    ]);
    assert!(ok, "the move failed: {err}\n{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    let (last, changes) = lines.split_last().expect("lines");
    let id = last["id"]
        .as_str()
        .expect("the final record's id")
        .to_string();
    assert_eq!(last["phase"], "done", "{last}");
    assert!(last["finished_ms"].is_i64(), "{last}");
    assert_eq!(last["detail"]["to_region"], "eu-central");
    assert_eq!(last["detail"]["reason"], "closer to its users");
    assert!(last["detail"]["pause_ms"].is_i64(), "{last}");
    assert!(changes.iter().all(|l| l["operation"] == id.as_str()));
    // Every phase once, in order: seen, or passed between two looks.
    let phases: Vec<&str> = changes
        .iter()
        .flat_map(|l| {
            let passed = l["passed"].as_array().expect("passed");
            passed.iter().chain([&l["phase"]])
        })
        .filter_map(Value::as_str)
        .fold(Vec::new(), |mut all, p| {
            if all.last() != Some(&p) {
                all.push(p);
            }
            all
        });
    assert!(PHASES.ends_with(&phases), "{phases:?}");
    assert_eq!(phases.first(), Some(&"copying"), "{phases:?}");

    // The org lives in Frankfurt now, brought there by this move; its Stockholm span is closed.
    let org = cli_json(&c, &["orgs", "show", "acme"]);
    assert_eq!(org["home_region"], "eu-central");
    let spans = org["locations"].as_array().expect("locations");
    assert_eq!(spans.len(), 2, "{org}");
    assert_eq!(spans[0]["region"], "eu-north");
    assert!(spans[0]["operation"].is_null() && !spans[0]["to_ms"].is_null());
    assert_eq!(spans[1]["operation"], id.as_str());
    assert!(spans[1]["to_ms"].is_null() && spans[1]["region"] == "eu-central");
    let (ok, shown, err) = c.cli(&["ops", "show", &id]);
    assert!(ok, "{err}");
    for expected in ["phase           done", "write pause", "fence", "finish"] {
        assert!(shown.contains(expected), "{expected:?} missing: {shown}");
    }
    let (ok, _, err) = c.cli(&["ops", "cancel", &id]);
    assert!(!ok && err.contains("conflict (409)"), "{err}");

    // For people (here, a log: stderr is not a terminal): a line per phase, then a summary.
    let (ok, out, err) = c.cli(&["orgs", "move", "acme", "--to", "eu-north", "--wait"]);
    assert!(ok, "the move back failed: {err}\n{out}");
    let shown: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|w| w.strip_suffix(':'))
        .collect();
    assert_eq!(shown, PHASES, "{out}");
    assert!(
        out.contains("org acme moved from eu-central (eu-central-1) to eu-north (eu-north-1)"),
        "{out}"
    );
    assert!(out.contains("writes paused"), "{out}");
    let listed = cli_json(&c, &["ops", "list"]);
    let phases: Vec<&str> = listed
        .as_array()
        .expect("operations")
        .iter()
        .filter_map(|o| o["phase"].as_str())
        .collect();
    assert_eq!(phases, ["done", "done"], "{listed}");
}
