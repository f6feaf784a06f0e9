//! Failover of a dead node, with real processes and a real S3-compatible server: a node holding
//! a sync org and an async org under writers is killed (-9); once its lease has been gone for
//! the grace period, both orgs serve from the region's other node, restored from the region's
//! store: the sync org with every acknowledged write, the async one with all but at most its
//! backup interval's. The dead node, restarted, is fenced and its stale copies go to its trash.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_NORTH, JOIN_TOKEN};
use support::s3::S3;
use support::session::{sign_in, UserSession};
use support::story::names_in;

const PASSWORD: &str = "correct horse battery";
const INTERVAL_MS: u64 = 300;
const GRACE_MS: u64 = 6_000;

/// Every write a writer tried: (name, status or 0, when it was answered).
type Tried = Vec<(String, u16, Instant)>;

fn start_writer(
    user: UserSession,
    prefix: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Tried>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut tried = Vec::new();
        let mut i = 0;
        while !flag.load(Ordering::Relaxed) {
            let name = format!("{prefix} {i:05}");
            i += 1;
            let status = user
                .try_post("/contacts", &[("name", &name), ("city", "Luleå")])
                .unwrap_or(0);
            tried.push((name, status, Instant::now()));
            std::thread::sleep(Duration::from_millis(20));
        }
        tried
    });
    (stop, thread)
}

fn failover_of(c: &Cluster, org: &str) -> Value {
    let (status, ops) = c.admin("GET", "/operations", None);
    assert_eq!(status, 200, "{ops}");
    ops.as_array()
        .and_then(|a| {
            a.iter()
                .find(|o| o["kind"] == "failover" && o["org"] == org)
                .cloned()
        })
        .unwrap_or(Value::Null)
}

fn wait_failover_done(c: &Cluster, org: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let op = failover_of(c, org);
        if op["phase"] == "done" {
            return op;
        }
        assert!(op["phase"] != "failed", "failover of {org} failed: {op:#}");
        assert!(
            Instant::now() < deadline,
            "{org} not failed over within {limit:?}: {op:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tenant_file(c: &Cluster, node: &str, org: &str) -> std::path::PathBuf {
    c.dir
        .path()
        .join("nodes")
        .join(node)
        .join("tenants")
        .join(&org[..2])
        .join(format!("{org}.db"))
}

#[test]
fn a_dead_nodes_orgs_serve_from_another_node_of_the_region_and_the_node_comes_back_fenced() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH], &s3, INTERVAL_MS);
    c.add_control_config(&format!("failover_grace_ms = {GRACE_MS}"));
    c.restart_control();
    c.wait_nodes_healthy(1);
    for (org, durability) in [("syncorg", "sync"), ("asyncorg", "async")] {
        let o = c.create_org_ready(org, json!({"region": "eu-north", "durability": durability}));
        assert_eq!(o["node"], "eu-north-1");
        c.add_user(org, &format!("ada@{org}.example"), PASSWORD);
    }
    c.add_node("eu-north-2", "eu-north", JOIN_TOKEN);
    c.wait_nodes_healthy(2);

    let old = c.url_of("eu-north-1");
    let writers: Vec<_> = ["syncorg", "asyncorg"]
        .into_iter()
        .map(|org| {
            let user =
                sign_in(&old, org, &format!("ada@{org}.example"), PASSWORD).expect("sign in");
            (org, start_writer(user, "before"))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));
    c.kill_node_id("eu-north-1");
    let killed = Instant::now();

    let mut ended = Vec::new();
    for (org, _) in &writers {
        ended.push(wait_failover_done(&c, org, Duration::from_secs(90)));
    }
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_millis(GRACE_MS),
        "failed over after {took:?}, inside the grace period"
    );
    let mut tried = Vec::new();
    for (org, (stop, thread)) in writers {
        stop.store(true, Ordering::Relaxed);
        tried.push((org, thread.join().expect("writer")));
    }

    let new = c.url_of("eu-north-2");
    for ((org, tried), op) in tried.iter().zip(&ended) {
        let shown = c.org(org).expect("org");
        assert_eq!(shown.node, "eu-north-2", "{org}");
        assert!(
            shown.generation > op["detail"]["from_generation"].as_u64().unwrap(),
            "{org} at a new generation: {op:#}"
        );
        // The new node serves it: the user signs in there and writes.
        let user = sign_in(&new, org, &format!("ada@{org}.example"), PASSWORD)
            .unwrap_or_else(|s| panic!("sign in to {org} at its new node: {s}"));
        assert_eq!(
            user.try_post("/contacts", &[("name", "after 00000"), ("city", "Kiruna")]),
            Some(303),
            "{org} takes writes at its new node"
        );
        let names = names_in(&tenant_file(&c, "eu-north-2", org));
        let acked: Vec<&(String, u16, Instant)> = tried.iter().filter(|t| t.1 == 303).collect();
        assert!(
            acked.len() > 20,
            "{org}: writes were acknowledged before the kill"
        );
        let must_have: Vec<&str> = if *org == "syncorg" {
            acked.iter().map(|t| t.0.as_str()).collect()
        } else {
            // Async: at most the backup interval (and a pass's upload) may be lost.
            let margin = Duration::from_millis(INTERVAL_MS + 1_000);
            acked
                .iter()
                .filter(|t| {
                    killed
                        .checked_duration_since(t.2)
                        .is_some_and(|d| d > margin)
                })
                .map(|t| t.0.as_str())
                .collect()
        };
        let missing: Vec<&&str> = must_have
            .iter()
            .filter(|n| !names.iter().any(|have| have == *n))
            .collect();
        assert!(
            missing.is_empty(),
            "{org} lost acknowledged writes: {missing:?} ({} acked)",
            acked.len()
        );
        // Nothing that was never tried, and nothing twice.
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len(), "{org}: a write is there twice");
        assert!(
            names
                .iter()
                .all(|n| n == "after 00000" || tried.iter().any(|t| &t.0 == n)),
            "{org}: a write nobody made"
        );
    }

    // The dead node comes back: fenced by generation, its copies to its trash, no stale answer,
    // and no data shipped (it is given no data key for an org placed elsewhere): no pack, no
    // snapshot, no segment. (Dropping a copy writes index objects for segments its packs already
    // hold, so the old generation's backups stay findable for their retention.)
    let from_old = |s3: &S3| -> Vec<String> {
        let mut v: Vec<String> = s3
            .objects("hemvist")
            .into_iter()
            .map(|p| p.display().to_string())
            .filter(|p| !p.contains("/idx/"))
            .filter(|p| {
                p.contains("packs/eu-north-1/")
                    || ended.iter().any(|op| {
                        let g = op["detail"]["from_generation"].as_u64().unwrap();
                        p.contains(&format!("g{g:010}"))
                    })
            })
            .collect();
        v.sort();
        v
    };
    let shipped_before = from_old(&s3);
    c.start_node_id_with_env("eu-north-1", &[]);
    // At once, before it has heard from the control plane: out of touch far longer than its
    // lease, it does not trust its cache, so it serves none of its old orgs' pages.
    for org in ["syncorg", "asyncorg"] {
        let (status, _, _) = c.get(&format!("{old}/o/{org}/signin"));
        assert!(
            status == 503 || status == 307,
            "the restarted node answered {status} for {org}: a stale page"
        );
    }
    c.wait_nodes_healthy(2);
    for org in ["syncorg", "asyncorg"] {
        c.wait_for(&format!("{org}'s stale copy leaves eu-north-1"), || {
            (!tenant_file(&c, "eu-north-1", org).exists()).then_some(())
        });
        let (status, location, _) = c.get(&format!("{old}/o/{org}/"));
        assert_eq!(status, 307, "the old node sends {org}'s users on");
        assert!(
            location.as_deref().is_some_and(|l| l.starts_with(&new)),
            "{org} sent to {location:?}, not {new}"
        );
    }
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
    assert_eq!(
        from_old(&s3),
        shipped_before,
        "the fenced node shipped nothing more under its old generation"
    );
    let trash = c.dir.path().join("nodes").join("eu-north-1").join("trash");
    let kept = std::fs::read_dir(&trash).map(|d| d.count()).unwrap_or(0);
    assert!(
        kept >= 2,
        "the stale copies are kept in trash/, not deleted"
    );

    // Audited, and counted.
    let (_, shown) = c.admin("GET", "/orgs/syncorg", None);
    let audit = &shown["audit"];
    let text = audit.to_string();
    assert!(
        text.contains("failover.restoring") && text.contains("failover.done"),
        "{audit:#}"
    );
    let done = c.metric(
        &c.control_url(),
        "hemvist_failovers_total{outcome=\"done\"}",
    );
    assert_eq!(done, 2);
}

#[test]
fn a_control_plane_that_dies_in_the_middle_of_a_failover_resumes_it() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH], &s3, INTERVAL_MS);
    c.add_control_config(&format!("failover_grace_ms = {GRACE_MS}"));
    c.restart_control();
    c.wait_nodes_healthy(1);
    c.create_org_ready("acme", json!({"region": "eu-north", "durability": "sync"}));
    c.add_user("acme", "ada@acme.example", PASSWORD);
    let old = c.url_of("eu-north-1");
    let user = sign_in(&old, "acme", "ada@acme.example", PASSWORD).expect("sign in");
    for i in 0..5 {
        let name = format!("before {i:05}");
        assert_eq!(
            user.try_post("/contacts", &[("name", &name), ("city", "Umeå")]),
            Some(303)
        );
    }
    c.add_node("eu-north-2", "eu-north", JOIN_TOKEN);
    c.wait_nodes_healthy(2);

    // The control plane stops right after it has recorded the new placement, before any node
    // was told to host the org there.
    c.kill_control();
    c.start_control_with_env(&[("HEMVIST_FAILPOINTS", "control.failover.restoring=crash")]);
    c.wait_nodes_healthy(2);
    c.kill_node_id("eu-north-1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.wait_control_exit() {
        assert!(
            Instant::now() < deadline,
            "the control plane reached the failpoint"
        );
    }
    c.start_control();
    let op = wait_failover_done(&c, "acme", Duration::from_secs(60));
    assert_eq!(op["detail"]["to_node"], "eu-north-2", "{op:#}");
    let shown = c.org("acme").expect("org");
    assert_eq!(shown.node, "eu-north-2");
    let names = names_in(&tenant_file(&c, "eu-north-2", "acme"));
    assert_eq!(names.len(), 5, "every acknowledged sync write: {names:?}");
    let user = sign_in(
        &c.url_of("eu-north-2"),
        "acme",
        "ada@acme.example",
        PASSWORD,
    )
    .expect("sign in at the new node");
    assert_eq!(
        user.try_post("/contacts", &[("name", "after 00000"), ("city", "Umeå")]),
        Some(303)
    );
}
