//! Live moves, with real processes and a real S3-compatible server: an org under continuous
//! writes moves from Stockholm to Frankfurt; every acknowledged write is at the new home exactly
//! once, the old node answers writes only with 307 or 503 once it fenced, search finds the data
//! at once, and the old region's copy goes only after the new home's first backup.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_CENTRAL, EU_NORTH, US_EAST};
use support::s3::S3;
use support::session::sign_in;
use support::story::{acked, assert_old_home_answers, names_in, Writer};

const PASSWORD: &str = "correct horse battery";
const INTERVAL_MS: u64 = 300;

#[test]
fn an_org_under_writes_moves_to_another_region_and_loses_no_acknowledged_write() {
    move_under_writes("async");
}

#[test]
fn a_sync_org_under_writes_moves_and_loses_no_acknowledged_write() {
    move_under_writes("sync");
}

fn move_under_writes(durability: &str) {
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL], &s3, INTERVAL_MS);
    c.create_org_ready(
        "acme",
        json!({"region": "eu-north", "residency": "EU", "name": "Acme AB", "durability": durability}),
    );
    let email = "ada@acme.example";
    c.add_user("acme", email, PASSWORD);
    let before = c.org("acme").expect("org");
    assert_eq!(before.node, "eu-north-1");

    // Writes already there, then writes all through the move.
    let user = sign_in(&c.node_url("eu-north"), "acme", email, PASSWORD).expect("sign in");
    let early = c.write_n(&user, "early", 40, Duration::ZERO);
    assert_eq!(early.acked.len(), 40, "{:?}", early.refused);
    let writing = Writer::start(
        sign_in(&c.node_url("eu-north"), "acme", email, PASSWORD).expect("sign in"),
        "during",
    );
    std::thread::sleep(Duration::from_millis(800));

    let id = c.move_org("acme", "eu-central");
    let op = c.wait_operation_end(&id, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let answers = writing.stop();
    if std::env::var("MOVE_DEBUG").is_ok() {
        for l in c.control_log().lines().filter(|l| l.contains("move-acme")) {
            eprintln!("C {l}");
        }
        for r in ["eu-north", "eu-central"] {
            for l in c
                .node_log(r)
                .lines()
                .filter(|l| l.contains("move") || l.contains("fence") || l.contains("copy"))
            {
                eprintln!("{r} {l}");
            }
        }
    }
    assert_eq!(op["phase"], "done", "the move ended: {op:#}");
    let count = |s: u16| answers.iter().filter(|a| a.1 == s).count();
    eprintln!(
        "move {id}: {} writes during it: {} acknowledged, {} sent on (307), {} retryable (503); detail {}",
        answers.len(),
        count(303),
        count(307),
        count(503),
        op["detail"]
    );

    // The old node never acknowledged a write it no longer owned: after its first refusal,
    // every answer is a redirect to the new home or a retryable 503.
    let new_home = c.node_url("eu-central");
    assert_old_home_answers(&answers, &new_home);
    assert!(
        answers.iter().any(|a| a.1 == 307),
        "writes after the switch are sent to the new home"
    );

    // Every acknowledged write is at the new home, exactly once, and nothing else is.
    let mut all_acked: Vec<String> = early.names().iter().map(|s| s.to_string()).collect();
    all_acked.extend(acked(&answers));
    all_acked.sort();
    assert!(
        all_acked.len() > 45,
        "writes went on during the copy: {}",
        all_acked.len()
    );
    let after = c.org("acme").expect("org");
    assert_eq!(after.home_region, "eu-central");
    assert_eq!(
        after.durability, durability,
        "the durability moved with the org"
    );
    assert_eq!(after.node, "eu-central-1");
    assert!(after.generation > before.generation);
    let at_new_home = names_in(&c.tenant_file("eu-central", "acme"));
    assert_eq!(
        at_new_home, all_acked,
        "the new home holds exactly the acknowledged writes"
    );

    // Search at the new home finds them at once; the old node sends users there.
    let moved_user = sign_in(&new_home, "acme", email, PASSWORD).expect("sign in at the new home");
    let last = all_acked.last().unwrap().clone();
    let (status, found) = moved_user.json(&format!("/?q={}", last.replace(' ', "+")));
    assert_eq!(status, 200, "{found}");
    assert!(found.to_string().contains(&last), "{last} in {found}");
    let (status, location, _) = c.get(&format!("{}/o/acme/", c.node_url("eu-north")));
    assert_eq!(status, 307);
    assert!(location.unwrap().starts_with(&new_home));

    // The move's record: its phases audited, the pause measured, the past location kept.
    let detail = &op["detail"];
    assert_eq!(detail["from_node"], "eu-north-1");
    assert_eq!(detail["to_node"], "eu-central-1");
    assert!(detail["pause_ms"].as_i64().is_some(), "{detail}");
    assert!(detail["final_lsn"].as_u64().unwrap() > 0);
    let (_, show) = c.admin("GET", "/orgs/acme", None);
    let locations = show["locations"].as_array().expect("locations");
    assert_eq!(locations.len(), 2, "{locations:?}");
    assert_eq!(locations[0]["region"], "eu-north");
    assert!(locations[0]["to_ms"].as_i64().is_some());
    assert!(locations[0]["operation"].is_null(), "its first placement");
    assert_eq!(locations[1]["operation"], Value::String(id.clone()));
    assert_eq!(locations[1]["region"], "eu-central");
    assert!(locations[1]["to_ms"].is_null());
    let actions: Vec<&str> = show["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    for phase in [
        "move.started",
        "move.fencing",
        "move.finishing",
        "move.switching",
        "move.releasing",
        "move.done",
    ] {
        assert!(actions.contains(&phase), "{phase} audited: {actions:?}");
    }

    // Both generations' backups stay restorable: `backups` reads every region the org lived in.
    let out = std::process::Command::new(support::cluster::BIN)
        .args(["backups", "acme", "--json"])
        .env("HEMVIST_CONTROL", c.control_url())
        .env("HEMVIST_TOKEN", support::cluster::ADMIN_TOKEN)
        .env("HEMVIST_S3_ACCESS_KEY_ID", support::s3::ACCESS_KEY)
        .env("HEMVIST_S3_SECRET_ACCESS_KEY", support::s3::SECRET_KEY)
        .output()
        .expect("hemvist backups");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).expect("backups JSON");
    let generations: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["generation"].as_u64())
        .collect();
    assert!(
        generations.contains(&before.generation) && generations.contains(&after.generation),
        "{listed:#}"
    );
    assert!(listed.to_string().contains("eu-north"), "{listed}");

    // The source dropped its copy (to its trash) only after the new home's first backup.
    assert!(!c.tenant_file("eu-north", "acme").exists());
    let backup = after.backed_up_ms;
    assert!(backup.is_some());
    assert_eq!(
        c.metric(&c.control_url(), "hemvist_moves_total{outcome=\"done\"}"),
        1
    );
}

#[test]
fn a_move_outside_the_residency_policy_is_refused_and_changes_nothing() {
    let s3 = S3::start();
    let c = Cluster::start_with_backup(&[EU_NORTH, US_EAST], &s3, INTERVAL_MS);
    c.create_org_ready("acme", json!({"region": "eu-north", "residency": "EU"}));
    let (status, body) = c.admin("POST", "/orgs/acme/move", Some(json!({"to": "us-east"})));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["kind"], "residency");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("residency policy"),
        "{body}"
    );
    let (_, ops) = c.admin("GET", "/operations", None);
    assert_eq!(ops, json!([]), "no operation was started");
    let org = c.org("acme").unwrap();
    assert_eq!(org.node, "eu-north-1");
    for (to, want) in [("mars", 400), ("eu-north", 409)] {
        let (status, body) = c.admin("POST", "/orgs/acme/move", Some(json!({"to": to})));
        assert_eq!(status, want, "move to {to}: {body}");
    }
}

#[test]
fn the_old_regions_backups_stay_restorable_and_go_when_the_retention_window_has_passed_them() {
    let s3 = S3::start();
    let c = Cluster::start_with_store_per_region(
        &[EU_NORTH, EU_CENTRAL],
        &s3,
        INTERVAL_MS,
        "retention_secs = 4\n",
    );
    c.create_org_ready("acme", json!({"region": "eu-north", "residency": "EU"}));
    c.add_user("acme", "ada@acme.example", PASSWORD);
    let user = sign_in(
        &c.node_url("eu-north"),
        "acme",
        "ada@acme.example",
        PASSWORD,
    )
    .unwrap();
    assert_eq!(c.write_n(&user, "w", 30, Duration::ZERO).acked.len(), 30);
    let id = c.move_org("acme", "eu-central");
    assert_eq!(
        c.wait_operation_end(&id, Duration::from_secs(60))["phase"],
        "done"
    );
    let old = |what: &str| s3.objects(&format!("hemvist/eu-north/{what}"));
    assert!(
        !old("tenants/acme").is_empty(),
        "the old region keeps its backups: {:?}",
        s3.objects("hemvist")
    );
    // Past the retention window, the node that dropped the generation removes what it shipped.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(old("tenants/acme").is_empty() && old("packs/eu-north-1").is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the old region still holds {:?} and {:?}",
            old("tenants/acme"),
            old("packs/eu-north-1")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        !s3.objects("hemvist/eu-central/tenants/acme").is_empty(),
        "the new home's backups stay"
    );
    assert!(c
        .node_log("eu-north")
        .contains("removed the expired backups"));
}
