//! Moves under faults, with real processes and a real S3-compatible server: the control plane
//! killed right after it records each phase, the source and the target killed at each of their
//! steps, a source stopped past its lease during the fence, a store unreachable during the
//! copy. Each time the move completes or rolls back (and says which), no acknowledged write is
//! lost, and the old node never acknowledges a write after its fence.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::cluster::{Cluster, EU_CENTRAL, EU_NORTH};
use support::s3::S3;
use support::session::sign_in;
use support::story::{acked, assert_old_home_answers, names_in, Writer};

const PASSWORD: &str = "correct horse battery";
const EMAIL: &str = "ada@acme.example";
const INTERVAL_MS: u64 = 300;

/// A two-region cluster with backups, and an org with a user in eu-north.
fn cluster(s3: &S3, stall_ms: u64) -> Cluster {
    let mut c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL], s3, INTERVAL_MS);
    c.add_control_config(&format!("move_stall_ms = {stall_ms}"));
    c.restart_control();
    c.wait_nodes_healthy(2);
    c.create_org_ready("acme", json!({"region": "eu-north", "residency": "EU"}));
    c.add_user("acme", EMAIL, PASSWORD);
    c
}

fn other(region: &str) -> &'static str {
    if region == "eu-north" {
        "eu-central"
    } else {
        "eu-north"
    }
}

/// Asks for a move without expecting an answer (the control plane may die answering).
fn request_move(c: &Cluster, to: &str) {
    let _ = support::http()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .post(format!("{}/api/v1/orgs/acme/move", c.control_url()))
        .bearer_auth(support::cluster::ADMIN_TOKEN)
        .json(&json!({"to": to}))
        .send();
}

/// The org's one operation that has not ended, or its newest.
fn the_move(c: &Cluster) -> Value {
    c.wait_for("the move's operation", || {
        let (status, ops) = c.admin("GET", "/operations", None);
        (status == 200)
            .then(|| ops.as_array().and_then(|a| a.first().cloned()))
            .flatten()
    })
}

fn home(c: &Cluster) -> String {
    c.org("acme").expect("org").home_region
}

/// Every acknowledged write is at the org's home exactly once, and nothing else is.
fn assert_exactly(c: &Cluster, acked: &mut [String]) {
    acked.sort();
    let region = home(c);
    let names = names_in(&c.tenant_file(&region, "acme"));
    assert_eq!(names.len(), acked.len(), "count at {region}");
    assert_eq!(
        names, acked,
        "the home holds exactly the acknowledged writes"
    );
}

#[test]
fn a_control_plane_killed_after_recording_each_phase_resumes_the_move() {
    let s3 = S3::start();
    let mut c = cluster(&s3, 12_000);
    let mut all_acked = Vec::new();
    for phase in ["copying", "fencing", "finishing", "switching", "releasing"] {
        let from = home(&c);
        let to = other(&from);
        let point = format!("control.move.{phase}=crash");
        c.kill_control();
        c.start_control_with_env(&[("HEMVIST_FAILPOINTS", &point)]);
        c.wait_nodes_healthy(2);
        let user = sign_in(&c.node_url(&from), "acme", EMAIL, PASSWORD).expect("sign in");
        let writing = Writer::start(user, phase);
        std::thread::sleep(Duration::from_millis(300));
        request_move(&c, to);
        assert!(
            c.wait_control_exit(),
            "the control plane crashed at {phase}"
        );
        c.start_control();
        let op = the_move(&c);
        let id = op["id"].as_str().unwrap().to_string();
        let ended = c.wait_operation_end(&id, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
        let answers = writing.stop();
        assert_eq!(ended["phase"], "done", "killed at {phase}: {ended:#}");
        assert_eq!(home(&c), to, "killed at {phase}");
        assert_old_home_answers(&answers, &c.node_url(to));
        all_acked.extend(acked(&answers));
        assert_exactly(&c, &mut all_acked);
    }
}

#[test]
fn a_source_or_target_killed_at_each_step_comes_back_and_the_move_completes() {
    let s3 = S3::start();
    let mut c = cluster(&s3, 15_000);
    let mut all_acked = Vec::new();
    // (which node dies, where)
    for (side, point) in [
        ("target", "node.move.copied"),
        ("source", "node.fence.fenced"),
        ("source", "node.fence.shipped"),
        ("target", "node.move.finish"),
        ("target", "node.move.finished"),
    ] {
        let from = home(&c);
        let to = other(&from);
        let victim = if side == "source" {
            from.clone()
        } else {
            to.to_string()
        };
        c.kill_node(&victim);
        let spec = format!("{point}=crash");
        c.start_node_with_env(&victim, &[("HEMVIST_FAILPOINTS", &spec)]);
        c.wait_nodes_healthy(2);
        let user = sign_in(&c.node_url(&from), "acme", EMAIL, PASSWORD).expect("sign in");
        let writing = Writer::start(user, "w");
        std::thread::sleep(Duration::from_millis(300));
        let id = c.move_org("acme", to);
        assert!(c.wait_node_exit(&victim), "{side} crashed at {point}");
        c.start_node(&victim);
        let ended = c.wait_operation_end(&id, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
        let answers = writing.stop();
        assert_eq!(
            ended["phase"], "done",
            "{side} killed at {point}: {ended:#}"
        );
        assert_eq!(home(&c), to);
        assert_old_home_answers(&answers, &c.node_url(to));
        all_acked.extend(acked(&answers));
        assert_exactly(&c, &mut all_acked);
    }
}

#[test]
fn a_source_stopped_past_its_lease_during_the_fence_rolls_back_with_one_writer() {
    let s3 = S3::start();
    let mut c = cluster(&s3, 4_000);
    c.kill_node("eu-north");
    c.start_node_with_env(
        "eu-north",
        &[("HEMVIST_FAILPOINTS", "node.fence.fenced=sleep:1500")],
    );
    c.wait_nodes_healthy(2);
    let generation = c.org("acme").unwrap().generation;
    let user = sign_in(&c.node_url("eu-north"), "acme", EMAIL, PASSWORD).expect("sign in");
    let writing = Writer::start(user, "w");
    std::thread::sleep(Duration::from_millis(300));
    let id = c.move_org("acme", "eu-central");
    c.wait_for("the fence", || {
        (c.operation(&id)["phase"] == "fencing").then_some(())
    });
    c.signal_node("eu-north", "-STOP");
    // The fence cannot be confirmed; the move gives up on it, and must not hand the org over.
    let rolling = c.wait_for("the rollback", || {
        let op = c.operation(&id);
        (op["phase"] == "rolling_back").then_some(op)
    });
    assert!(
        rolling["error"].as_str().unwrap().contains("did not fence"),
        "{rolling:#}"
    );
    // Past its lease (3 s) while stopped.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        c.org("acme").unwrap().node,
        "eu-north-1",
        "never handed over"
    );
    c.signal_node("eu-north", "-CONT");
    let ended = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    assert_eq!(ended["detail"]["rolled_back_from"], "fencing");
    // The source takes writes again once its fence is lifted.
    c.wait_for("writes acknowledged again", || {
        let user = sign_in(&c.node_url("eu-north"), "acme", EMAIL, PASSWORD).ok()?;
        (user.try_post("/contacts", &[("name", "after"), ("city", "Lund")]) == Some(303))
            .then_some(())
    });
    let answers = writing.stop();
    let org = c.org("acme").unwrap();
    assert_eq!(org.home_region, "eu-north");
    assert_eq!(
        org.generation, generation,
        "no new generation was handed out"
    );
    assert!(
        !c.tenant_file("eu-central", "acme").exists(),
        "the target kept nothing in place"
    );
    let mut all: Vec<String> = acked(&answers);
    all.push("after".into());
    assert_exactly(&c, &mut all);
}

#[test]
fn an_unreachable_store_stalls_the_copy_which_resumes_or_rolls_back() {
    let s3 = S3::start();
    // The fence may take half of this, and it ships everything the store missed while down:
    // 2 s was too little on a loaded two-core machine.
    let c = cluster(&s3, 8_000);
    let user = sign_in(&c.node_url("eu-north"), "acme", EMAIL, PASSWORD).expect("sign in");
    let early = c.write_n(&user, "early", 20, Duration::ZERO);
    assert_eq!(early.acked.len(), 20);
    let mut all = early
        .names()
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();

    // Down longer than the move may stall: it rolls back, and the org serves where it was.
    s3.faults
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let id = c.move_org("acme", "eu-central");
    let ended = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    assert_eq!(ended["detail"]["rolled_back_from"], "copying");
    let more = c.write_n(&user, "while down", 5, Duration::ZERO);
    assert_eq!(more.acked.len(), 5, "the source serves after the rollback");
    all.extend(more.names().iter().map(|s| s.to_string()));

    // Down for less: the copy waits, then resumes, and the move completes.
    let id = c.move_org("acme", "eu-central");
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(c.operation(&id)["phase"], "copying");
    s3.faults
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let ended = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    assert_eq!(home(&c), "eu-central");
    assert_exactly(&c, &mut all);
}

#[test]
fn a_target_that_dies_for_good_rolls_the_move_back_and_the_source_keeps_serving() {
    let s3 = S3::start();
    let mut c = cluster(&s3, 3_000);
    c.kill_node("eu-central");
    c.start_node_with_env(
        "eu-central",
        &[("HEMVIST_FAILPOINTS", "node.move.copied=crash")],
    );
    c.wait_nodes_healthy(2);
    let user = sign_in(&c.node_url("eu-north"), "acme", EMAIL, PASSWORD).expect("sign in");
    let writing = Writer::start(user, "w");
    std::thread::sleep(Duration::from_millis(300));
    let id = c.move_org("acme", "eu-central");
    // While it copies, `orgs show` names the move and where the second copy is prepared.
    let (_, shown) = c.admin("GET", "/orgs/acme", None);
    assert_eq!(shown["operation"]["id"], id.as_str(), "{shown}");
    assert_eq!(shown["operation"]["detail"]["to_node"], "eu-central-1");
    assert!(c.wait_node_exit("eu-central"), "the target died");
    let ended = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    assert_eq!(ended["detail"]["rolled_back_from"], "copying");
    let answers = writing.stop();
    assert!(
        answers.iter().all(|a| a.1 == 303),
        "the source never stopped serving: {answers:?}"
    );
    let (_, shown) = c.admin("GET", "/orgs/acme", None);
    assert!(shown["operation"].is_null(), "{shown}");
    assert_eq!(shown["node"], "eu-north-1");
    assert_exactly(&c, &mut acked(&answers));
    assert_eq!(
        c.metric(
            &c.control_url(),
            "hemvist_moves_total{outcome=\"rolled_back\"}"
        ),
        1
    );
}

#[test]
fn a_new_home_that_dies_after_its_first_backup_ends_the_move_and_is_failed_over() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL], &s3, INTERVAL_MS);
    c.add_control_config("move_stall_ms = 4000\nfailover_grace_ms = 6000");
    c.restart_control();
    c.wait_nodes_healthy(2);
    c.create_org_ready(
        "acme",
        json!({"region": "eu-north", "residency": "EU", "durability": "sync"}),
    );
    c.add_user("acme", EMAIL, PASSWORD);
    c.add_node("eu-central-2", "eu-central", support::cluster::JOIN_TOKEN);
    // The move's new home dies for good when told to release the move: after its first backup.
    c.kill_node_id("eu-central-1");
    c.start_node_id_with_env(
        "eu-central-1",
        &[("HEMVIST_FAILPOINTS", "node.move.end=crash")],
    );
    c.wait_nodes_healthy(3);

    let user = sign_in(&c.node_url("eu-north"), "acme", EMAIL, PASSWORD).expect("sign in");
    let writing = Writer::start(user, "w");
    std::thread::sleep(Duration::from_millis(500));
    let (status, op) = c.admin(
        "POST",
        "/orgs/acme/move",
        Some(json!({"to": "eu-central", "node": "eu-central-1"})),
    );
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().expect("operation id").to_string();
    // Waiting on a dead new home past the phase's limit raises the alarm, saying for what.
    let stalled = c.wait_for("the stalled alarm", || {
        let op = c.operation(&id);
        (!op["stalled"].is_null()).then_some(op)
    });
    assert_eq!(stalled["phase"], "releasing", "{stalled:#}");
    let waiting = stalled["stalled"]["waiting_for"].as_str().unwrap_or("");
    assert!(waiting.contains("eu-central-1"), "{waiting}");
    assert_eq!(c.metric(&c.control_url(), "hemvist_operations_stalled"), 1);
    let (ok, out, err) = c.cli(&["ops", "show", &id]);
    assert!(ok && out.contains("STALLED"), "{out}{err}");
    let answers = writing.stop();

    let ended = c.wait_operation_end(&id, Duration::from_secs(60));
    assert_eq!(ended["phase"], "done", "{ended:#}");
    let note = ended["detail"]["note"].as_str().unwrap_or("");
    assert!(note.contains("died after its first backup"), "{ended:#}");
    let failover = c.wait_for("the failover", || {
        let (_, ops) = c.admin("GET", "/operations", None);
        ops.as_array()?
            .iter()
            .find(|o| o["kind"] == "failover" && o["phase"] == "done")
            .cloned()
    });
    assert_eq!(
        failover["detail"]["to_node"], "eu-central-2",
        "{failover:#}"
    );
    let shown = c.org("acme").expect("org");
    assert_eq!(
        (shown.home_region.as_str(), shown.node.as_str()),
        ("eu-central", "eu-central-2")
    );
    assert_eq!(c.metric(&c.control_url(), "hemvist_operations_stalled"), 0);

    // Every write acknowledged anywhere is at the org's last home, once; and it takes more.
    let mut acked = acked(&answers);
    assert!(acked.len() > 10, "writes were acknowledged: {answers:?}");
    let user = sign_in(&c.url_of("eu-central-2"), "acme", EMAIL, PASSWORD).expect("sign in");
    assert_eq!(
        user.try_post("/contacts", &[("name", "after"), ("city", "Bonn")]),
        Some(303)
    );
    acked.push("after".to_string());
    acked.sort();
    let file = c.dir.path().join("nodes/eu-central-2/tenants/ac/acme.db");
    assert_eq!(names_in(&file), acked, "exactly the acknowledged writes");
}

/// A sync org moving to eu-central-1, which dies for good at `failpoint` (its first snapshot
/// of the new generation, before it is stored or right after, so never reported), with
/// eu-central-2 beside it to look in the region's store. The move's operation once it has
/// ended, and every answer the writer at the old home got until then and a little after.
fn new_home_dies_before_its_first_backup_is_reported(
    c: &mut Cluster,
    failpoint: &str,
) -> (Value, Vec<support::story::Answer>) {
    c.add_control_config("move_stall_ms = 4000\nfailover_grace_ms = 6000");
    c.restart_control();
    c.wait_nodes_healthy(2);
    c.create_org_ready(
        "acme",
        json!({"region": "eu-north", "residency": "EU", "durability": "sync"}),
    );
    c.add_user("acme", EMAIL, PASSWORD);
    c.add_node("eu-central-2", "eu-central", support::cluster::JOIN_TOKEN);
    c.kill_node_id("eu-central-1");
    c.start_node_id_with_env("eu-central-1", &[("HEMVIST_FAILPOINTS", failpoint)]);
    c.wait_nodes_healthy(3);

    let user = sign_in(&c.node_url("eu-north"), "acme", EMAIL, PASSWORD).expect("sign in");
    let writing = Writer::start(user, "w");
    assert!(writing.wait_acked(10), "the old home takes writes first");
    let (status, op) = c.admin(
        "POST",
        "/orgs/acme/move",
        Some(json!({"to": "eu-central", "node": "eu-central-1"})),
    );
    assert_eq!(status, 202, "{op}");
    let id = op["id"].as_str().expect("operation id").to_string();
    assert!(c.wait_node_id_exit("eu-central-1"), "the new home died");
    let ended = c.wait_operation_end(&id, Duration::from_secs(90));
    // Writers go on a little: wherever the org now is, the old home says so or takes them.
    std::thread::sleep(Duration::from_millis(1_500));
    (ended, writing.stop())
}

#[test]
fn a_new_home_dead_before_its_first_snapshot_is_stored_returns_the_org_to_its_source() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL], &s3, INTERVAL_MS);
    let (ended, answers) =
        new_home_dies_before_its_first_backup_is_reported(&mut c, "node.backup.snapshot=crash");
    assert_eq!(ended["phase"], "rolled_back", "{ended:#}");
    let error = ended["error"].as_str().unwrap_or("");
    assert!(error.contains("back on eu-north-1"), "{ended:#}");
    let detail = &ended["detail"];
    assert_eq!(detail["probed"]["objects"], 0, "{ended:#}");
    assert!(
        detail["recovering_from"] == "switching" || detail["recovering_from"] == "releasing",
        "{ended:#}"
    );
    // The probe was asked of the other node of the new region, and answered.
    let probe = ended["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["kind"] == "probe").cloned())
        .unwrap_or_default();
    assert_eq!(probe["node_id"], "eu-central-2", "{ended:#}");
    assert_eq!(probe["state"], "done", "{ended:#}");

    // The source serves under a generation newer than the dead home's, and takes writes.
    let shown = c.org("acme").expect("org");
    assert_eq!(
        (shown.home_region.as_str(), shown.node.as_str()),
        ("eu-north", "eu-north-1")
    );
    let dead_generation = detail["to_generation"].as_u64().expect("generation");
    let (_, org) = c.admin("GET", "/orgs/acme", None);
    assert!(
        org["generation"].as_u64().unwrap_or(0) > dead_generation,
        "{org:#} after {dead_generation}"
    );
    let mut acked = acked(&answers);
    let after_return = answers
        .iter()
        .skip_while(|a| a.1 == 303)
        .filter(|a| a.1 == 303)
        .count();
    assert!(after_return > 0, "writes are taken again: {answers:?}");
    // Nothing was acknowledged that is not there, nothing is there twice.
    assert_exactly(&c, &mut acked);
    assert_eq!(c.metric(&c.control_url(), "hemvist_operations_stalled"), 0);
    assert_eq!(
        c.metric(
            &c.control_url(),
            "hemvist_moves_total{outcome=\"rolled_back\"}"
        ),
        1
    );
}

#[test]
fn a_new_home_dead_right_after_storing_its_first_snapshot_is_failed_over_from_that_store() {
    let s3 = S3::start();
    let mut c = Cluster::start_with_backup(&[EU_NORTH, EU_CENTRAL], &s3, INTERVAL_MS);
    let (ended, answers) = new_home_dies_before_its_first_backup_is_reported(
        &mut c,
        "node.backup.snapshot.stored=crash",
    );
    assert_eq!(ended["phase"], "done", "{ended:#}");
    let note = ended["detail"]["note"].as_str().unwrap_or("");
    assert!(note.contains("store holds"), "{ended:#}");
    assert!(
        ended["detail"]["probed"]["snapshots"].as_u64().unwrap_or(0) > 0,
        "{ended:#}"
    );
    let failover = c.wait_for("the failover", || {
        let (_, ops) = c.admin("GET", "/operations", None);
        ops.as_array()?
            .iter()
            .find(|o| o["kind"] == "failover" && o["phase"] == "done")
            .cloned()
    });
    assert_eq!(
        failover["detail"]["to_node"], "eu-central-2",
        "{failover:#}"
    );
    let shown = c.org("acme").expect("org");
    assert_eq!(
        (shown.home_region.as_str(), shown.node.as_str()),
        ("eu-central", "eu-central-2")
    );
    // Every write the old home acknowledged is at the new one, once; and it takes more.
    let mut acked = acked(&answers);
    let user = sign_in(&c.url_of("eu-central-2"), "acme", EMAIL, PASSWORD).expect("sign in");
    assert_eq!(
        user.try_post("/contacts", &[("name", "after"), ("city", "Bonn")]),
        Some(303)
    );
    acked.push("after".to_string());
    acked.sort();
    let file = c.dir.path().join("nodes/eu-central-2/tenants/ac/acme.db");
    assert_eq!(names_in(&file), acked, "exactly the acknowledged writes");
}
